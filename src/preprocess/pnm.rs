//! Netpbm images: PBM, PGM and PPM, binary and plain (`P1` to `P6`), read as PIL reads
//! them (its `PpmImagePlugin`). torchvision's `ImageFolder` takes `.ppm` and `.pgm`.

use image::RgbImage;

use super::decode::{check_size, DecodeError};

/// The whitespace PIL's reader knows in a Netpbm file (`bytes.split()`'s set).
const WHITESPACE: &[u8] = b" \t\n\x0b\x0c\r";

/// What a file's first bytes say it is, where they name a Netpbm format.
pub(super) enum Magic {
    /// `P1` to `P6`: read here.
    Readable(u8),
    /// A Netpbm relative this does not read (the name for the error).
    Unsupported(&'static str),
}

/// The Netpbm magic PIL matches: `P1` to `P6` (and `Pf`, a float map) followed by
/// whitespace or the end of the file; `P7` is PAM, which PIL does not read either.
pub(super) fn magic(bytes: &[u8]) -> Option<Magic> {
    let [b'P', kind, rest @ ..] = bytes else {
        return None;
    };
    if rest.first().is_some_and(|c| !WHITESPACE.contains(c)) {
        return None;
    }
    match kind {
        b'1'..=b'6' => Some(Magic::Readable(*kind)),
        b'f' | b'F' => Some(Magic::Unsupported("PFM (floating-point Netpbm)")),
        b'7' => Some(Magic::Unsupported("PAM")),
        _ => None,
    }
}

/// Decode a `P1` to `P6` file whose magic [`magic`] found. The pixels are PIL's:
/// - a sample `v` of a file whose maxval is `m` becomes `round(v / m * 255)`, ties to
///   even as Python rounds, and a binary sample above `m` becomes 255 (a plain one is
///   refused);
/// - a bitmap's 1 is black and its 0 white;
/// - a greymap whose maxval is over 255 (PIL's mode `I`, which its `convert("RGB")` clips
///   to white) keeps the high byte of `round(v / m * 65535)`, as a 16-bit greyscale PNG
///   does here (see [`super::decode_rgb`]).
///
/// Refused as PIL refuses them: a maxval outside 1 to 65535, a header token over 10
/// characters, pixel data that ends early, a plain sample that is not a number or is over
/// the maxval.
pub(super) fn decode(bytes: &[u8], kind: u8, max_pixels: u64) -> Result<RgbImage, DecodeError> {
    let format = match kind {
        b'1' | b'4' => "PBM",
        b'2' | b'5' => "PGM",
        _ => "PPM",
    };
    let malformed = |why: String| DecodeError::Malformed { format, why };
    let mut header = Header {
        bytes,
        pos: bytes.len().min(3),
    };
    let width = header.number().map_err(malformed)?;
    let height = header.number().map_err(malformed)?;
    let (width, height) = match (u32::try_from(width), u32::try_from(height)) {
        (Ok(w), Ok(h)) => (w, h),
        _ => return Err(malformed(format!("size {width}x{height} is too large"))),
    };
    let bitmap = matches!(kind, b'1' | b'4');
    let maxval = if bitmap {
        1
    } else {
        header.number().map_err(malformed)?
    };
    if !(1..=65535).contains(&maxval) {
        return Err(malformed(format!(
            "maxval {maxval} is not between 1 and 65535"
        )));
    }
    check_size(width, height, max_pixels)?;
    let data = bytes.get(header.pos..).unwrap_or_default();
    let channels = if matches!(kind, b'3' | b'6') { 3 } else { 1 };
    let count = width as usize * height as usize * channels;

    // A greymap over 8 bits is scaled to 16 and keeps its high byte; else scaled to 8.
    let wide = !bitmap && channels == 1 && maxval > 255;
    let out_max = if wide { 65535.0 } else { 255.0 };
    let scaled: Vec<u8> = (0..=maxval)
        .map(|v| {
            let s = (v as f64 / maxval as f64 * out_max).round_ties_even();
            if wide {
                (s as u32 >> 8) as u8
            } else {
                s as u8
            }
        })
        .collect();
    let top = *scaled.last().expect("maxval >= 1");
    let sample = |v: u64| scaled.get(v as usize).copied().unwrap_or(top);

    let values = match kind {
        b'4' => bits(data, width as usize, height as usize).map_err(malformed)?,
        b'5' | b'6' => {
            let size = if maxval < 256 { 1 } else { 2 };
            let Some(raw) = data.get(..count * size) else {
                return Err(malformed(cut_short(data.len(), count * size, "bytes")));
            };
            if size == 1 {
                raw.iter().map(|&v| sample(v.into())).collect()
            } else {
                raw.chunks_exact(2)
                    .map(|be| sample(u16::from_be_bytes([be[0], be[1]]).into()))
                    .collect()
            }
        }
        b'1' => plain_bits(data, count).map_err(malformed)?,
        _ => plain_numbers(data, count, maxval)
            .map_err(malformed)?
            .into_iter()
            .map(sample)
            .collect(),
    };
    let rgb = if channels == 3 {
        values
    } else {
        values.iter().flat_map(|&v| [v; 3]).collect()
    };
    Ok(RgbImage::from_raw(width, height, rgb).expect("one value per sample"))
}

/// The header after the magic, read token by token as PIL's `_read_token` does.
struct Header<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl Header<'_> {
    /// The next number: whitespace before it is skipped, a `#` comment runs to the end of
    /// its line (and may sit inside a token, which goes on after it), and the whitespace
    /// byte that ends it is consumed, so the pixel data starts right after.
    fn number(&mut self) -> Result<u64, String> {
        let mut token = Vec::new();
        while token.len() <= 10 {
            let Some(&c) = self.bytes.get(self.pos) else {
                break;
            };
            self.pos += 1;
            if WHITESPACE.contains(&c) {
                if token.is_empty() {
                    continue;
                }
                break;
            }
            if c == b'#' {
                while self
                    .bytes
                    .get(self.pos)
                    .is_some_and(|c| !b"\r\n".contains(c))
                {
                    self.pos += 1;
                }
                self.pos += 1;
                continue;
            }
            token.push(c);
        }
        if token.is_empty() {
            return Err("the header ends early".into());
        }
        if token.len() > 10 {
            return Err(format!(
                "header token `{}...` is too long",
                String::from_utf8_lossy(&token[..10])
            ));
        }
        parse_number(&token).ok_or_else(|| {
            format!(
                "header token `{}` is not a number",
                String::from_utf8_lossy(&token)
            )
        })
    }
}

/// A decimal token as Python's `int` reads one (digits, an optional `+`).
fn parse_number(token: &[u8]) -> Option<u64> {
    let digits = token.strip_prefix(b"+").unwrap_or(token);
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}

/// Why pixel data that ends early is refused: `have` of the `need` `unit`s it declares.
fn cut_short(have: usize, need: usize, unit: &str) -> String {
    format!("the pixel data is cut short ({have} of {need} {unit})")
}

/// A binary bitmap (`P4`): rows padded to whole bytes, the first pixel in the high bit.
fn bits(data: &[u8], width: usize, height: usize) -> Result<Vec<u8>, String> {
    let row = width.div_ceil(8);
    let Some(rows) = data.get(..row * height) else {
        return Err(cut_short(data.len(), row * height, "bytes"));
    };
    Ok(rows
        .chunks_exact(row)
        .flat_map(|r| {
            (0..width).map(move |x| {
                if r[x / 8] >> (7 - x % 8) & 1 == 1 {
                    0
                } else {
                    255
                }
            })
        })
        .collect())
}

/// Plain pixel data without its `#` comments (each up to and including its line end).
fn without_comments(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len());
    let mut in_comment = false;
    for &c in data {
        match (in_comment, c) {
            (false, b'#') => in_comment = true,
            (false, _) => out.push(c),
            (true, b'\n' | b'\r') => in_comment = false,
            (true, _) => {}
        }
    }
    out
}

/// A plain bitmap (`P1`): one `0` (white) or `1` (black) a pixel, whitespace optional.
/// Like PIL, every character is checked, also past the last pixel.
fn plain_bits(data: &[u8], count: usize) -> Result<Vec<u8>, String> {
    let digits: Vec<u8> = without_comments(data)
        .into_iter()
        .filter(|c| !WHITESPACE.contains(c))
        .collect();
    if let Some(bad) = digits.iter().find(|c| !matches!(c, b'0' | b'1')) {
        return Err(format!(
            "`{}` is not a bitmap pixel (0 or 1)",
            char::from(*bad)
        ));
    }
    if digits.len() < count {
        return Err(cut_short(digits.len(), count, "pixels"));
    }
    Ok(digits[..count]
        .iter()
        .map(|&c| if c == b'1' { 0 } else { 255 })
        .collect())
}

/// A plain greymap's or pixmap's samples (`P2`, `P3`): decimal numbers up to `maxval`.
fn plain_numbers(data: &[u8], count: usize, maxval: u64) -> Result<Vec<u64>, String> {
    let text = without_comments(data);
    let mut samples = Vec::with_capacity(count.min(text.len() / 2 + 1));
    for token in text
        .split(|c| WHITESPACE.contains(c))
        .filter(|t| !t.is_empty())
        .take(count)
    {
        let shown = String::from_utf8_lossy(&token[..token.len().min(11)]).into_owned();
        if token.len() > 10 {
            return Err(format!("sample `{shown}...` is too long"));
        }
        let v = parse_number(token).ok_or_else(|| format!("sample `{shown}` is not a number"))?;
        if v > maxval {
            return Err(format!("sample {v} is over the maxval {maxval}"));
        }
        samples.push(v);
    }
    if samples.len() < count {
        return Err(cut_short(samples.len(), count, "samples"));
    }
    Ok(samples)
}

#[cfg(test)]
mod tests {
    use crate::preprocess::{decode_rgb, DecodeError, DEFAULT_MAX_PIXELS};

    #[test]
    fn a_huge_declared_size_costs_nothing() {
        let bomb = b"P6\n60000 60000\n255\n\x01\x02\x03";
        assert!(matches!(
            decode_rgb(bomb, DEFAULT_MAX_PIXELS),
            Err(DecodeError::TooLarge { .. })
        ));
        // Past the pixel limit, the missing data is what is refused; nothing of the
        // declared size is allocated (10.8 GB).
        let err = decode_rgb(bomb, u64::MAX).unwrap_err().to_string();
        assert_eq!(
            err,
            "cannot decode PPM: the pixel data is cut short (3 of 10800000000 bytes)"
        );
        let plain = b"P3\n60000 60000\n255\n1 2 3";
        let err = decode_rgb(plain, u64::MAX).unwrap_err().to_string();
        assert!(err.ends_with("(3 of 10800000000 samples)"), "{err}");
    }

    #[test]
    fn sizes_past_u32_are_refused() {
        let err = decode_rgb(b"P5\n9999999999 1\n255\n", u64::MAX).unwrap_err();
        assert_eq!(
            err.to_string(),
            "cannot decode PGM: size 9999999999x1 is too large"
        );
    }
}
