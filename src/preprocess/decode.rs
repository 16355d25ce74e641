//! Encoded bytes -> 8-bit RGB, pixel for pixel what PIL's `open` then `convert("RGB")` give
//! (with `ImageOps.exif_transpose`), which is what torchvision's and timm's loaders feed the
//! network. The declared size is checked against a pixel budget before anything is
//! allocated.

use std::io::Cursor;

use image::{DynamicImage, ImageDecoder, ImageReader, RgbImage};

use super::{bmp, pnm};

#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("empty input (0 bytes)")]
    Empty,
    #[error(
        "not a recognised image format (supported: JPEG, PNG, GIF, WebP, BMP, TIFF, PPM/PGM/PBM)"
    )]
    UnknownFormat,
    #[error(
        "{0} images are not supported (supported: JPEG, PNG, GIF, WebP, BMP, TIFF, PPM/PGM/PBM)"
    )]
    UnsupportedFormat(&'static str),
    #[error("truncated JPEG (no end-of-image marker after the image data)")]
    TruncatedJpeg,
    #[error("image is {width}x{height} = {} pixels, over the limit of {max_pixels} (see --max-pixels)", *width as u64 * *height as u64)]
    TooLarge {
        width: u32,
        height: u32,
        max_pixels: u64,
    },
    #[error("image has zero width or height")]
    ZeroSized,
    #[error("cannot decode image: {0}")]
    Image(#[from] image::ImageError),
    #[error("cannot decode GIF: {0}")]
    Gif(#[from] gif::DecodingError),
    #[error("GIF holds no image")]
    NoGifFrame,
    #[error("cannot decode {format}: {why}")]
    Malformed { format: &'static str, why: String },
}

/// Decode an image to 8-bit RGB with EXIF orientation applied, as PIL's `open` then
/// `convert("RGB")` do: greyscale is replicated, alpha is dropped (not composited),
/// palettes are expanded, 16-bit samples keep their high byte, CMYK JPEGs are converted
/// with PIL's formula, 16-bit BMP samples are widened as PIL widens them; a GIF gives its
/// first frame as PIL composes it (`gif.rs`), a Netpbm file its samples as PIL
/// scales them (`pnm.rs`). One deliberate difference: PIL clips a 16-bit greyscale
/// image (its mode `I;16`, or `I` for a PGM) to 255, which turns most of it white; here it
/// keeps its high byte like 16-bit colour does.
pub fn decode_rgb(bytes: &[u8], max_pixels: u64) -> Result<RgbImage, DecodeError> {
    if bytes.is_empty() {
        return Err(DecodeError::Empty);
    }
    match pnm::magic(bytes) {
        Some(pnm::Magic::Readable(kind)) => return pnm::decode(bytes, kind, max_pixels),
        Some(pnm::Magic::Unsupported(name)) => return Err(DecodeError::UnsupportedFormat(name)),
        None => {}
    }
    let reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| DecodeError::Image(e.into()))?;
    let format = match reader.format() {
        // A `P1`-`P7` start that `pnm::magic` turned down (no whitespace after it): PIL
        // cannot identify such a file either.
        None | Some(image::ImageFormat::Pnm) => {
            return Err(match iso_media_brand(bytes) {
                Some(brand) => DecodeError::UnsupportedFormat(brand),
                None => DecodeError::UnknownFormat,
            })
        }
        Some(format) => format,
    };
    if format == image::ImageFormat::Gif {
        return super::gif::first_frame(bytes, max_pixels);
    }
    if format == image::ImageFormat::Jpeg && jpeg_is_truncated(bytes) {
        // libjpeg would pad the missing rows with grey and carry on; PIL refuses.
        return Err(DecodeError::TruncatedJpeg);
    }
    let mut limits = image::Limits::default();
    // Decoders may allocate a few buffers of the image's size; this bounds all of them.
    limits.max_alloc = Some(max_pixels.saturating_mul(16).max(1 << 26));
    let mut reader = reader;
    reader.limits(limits);
    let (mut img, orientation) = match reader.into_decoder() {
        Ok(mut decoder) => {
            let (width, height) = decoder.dimensions();
            check_size(width, height, max_pixels)?;
            let orientation = decoder.orientation().ok();
            let libjpeg = (format == image::ImageFormat::Jpeg)
                .then(|| decode_jpeg_like_pil(bytes, width, height))
                .flatten();
            let img = match libjpeg {
                Some(rgb) => DynamicImage::ImageRgb8(rgb),
                None => DynamicImage::from_decoder(decoder)?,
            };
            (img, orientation)
        }
        // A JPEG the `image` crate cannot even open (its decoder stops at arithmetic
        // coding's `DAC` header) but libjpeg, and so PIL, decodes: the size, the EXIF
        // orientation and the pixels all come from libjpeg.
        Err(e) => {
            let header = (format == image::ImageFormat::Jpeg)
                .then(|| libjpeg_header(bytes))
                .flatten();
            let Some((width, height, orientation)) = header else {
                return Err(e.into());
            };
            check_size(width, height, max_pixels)?;
            let rgb = decode_jpeg_like_pil(bytes, width, height).ok_or(e)?;
            (DynamicImage::ImageRgb8(rgb), orientation)
        }
    };
    if let Some(o) = orientation {
        img.apply_orientation(o);
    }
    let mut rgb = rgb8_like_pil(img);
    if format == image::ImageFormat::Bmp {
        bmp::sixteen_bit_like_pil(bytes, &mut rgb);
    }
    Ok(rgb)
}

/// Refuse an image of no pixels, or of more than `max_pixels`, from its declared size.
pub(super) fn check_size(width: u32, height: u32, max_pixels: u64) -> Result<(), DecodeError> {
    if width == 0 || height == 0 {
        return Err(DecodeError::ZeroSized);
    }
    if width as u64 * height as u64 > max_pixels {
        return Err(DecodeError::TooLarge {
            width,
            height,
            max_pixels,
        });
    }
    Ok(())
}

/// HEIC/AVIF files (ISO media with an image brand): named, so the error is useful.
fn iso_media_brand(bytes: &[u8]) -> Option<&'static str> {
    let brand = bytes.get(4..12)?;
    match brand {
        b"ftypheic" | b"ftypheix" | b"ftypmif1" | b"ftyphevc" => Some("HEIC"),
        b"ftypavif" | b"ftypavis" => Some("AVIF"),
        _ => None,
    }
}

/// A JPEG whose last scan is not followed by an end-of-image marker was cut short. In
/// entropy-coded data 0xFF is always stuffed, so 0xFFD9 only appears as a real marker.
fn jpeg_is_truncated(bytes: &[u8]) -> bool {
    let find_last = |marker: [u8; 2]| bytes.windows(2).rposition(|w| w == marker);
    match (find_last([0xff, 0xda]), find_last([0xff, 0xd9])) {
        (Some(sos), Some(eoi)) => eoi < sos,
        (Some(_), None) => true,
        (None, _) => false, // no scan at all: the decoder reports what is wrong
    }
}

unsafe extern "C" {
    /// libjpeg-turbo's own check (in mozjpeg-sys): non-zero when its SIMD inverse DCT was
    /// compiled in (NASM was found at build time) and this CPU runs it.
    fn jsimd_can_idct_islow() -> std::ffi::c_int;
}

/// What `classify serve` warns of at startup when [`jpeg_simd`] is false: decoding is a
/// server's second cost after the network.
pub const NO_JPEG_SIMD: &str = "JPEG decoding runs without its SIMD code, 2-3x slower \
    (this binary was built without NASM on x86-64; see the README's Install section)";

/// Whether JPEG decoding runs libjpeg-turbo's SIMD code (the same pixels, faster; see the
/// README's decoding figures). Cargo feature `jpeg-simd` (default) plus NASM at build time.
pub fn jpeg_simd() -> bool {
    // SAFETY: a pure query of libjpeg-turbo's CPU-feature state; no arguments.
    unsafe { jsimd_can_idct_islow() != 0 }
}

/// Decode a JPEG with libjpeg-turbo's algorithms (islow IDCT, fancy upsampling), which is
/// what PIL uses, so decoded pixels are identical to torchvision's; CMYK and YCCK as PIL
/// converts them. `None` for what this path does not handle (other colour spaces, corrupt
/// data): the caller falls back to the `image` crate, which reports errors properly.
fn decode_jpeg_like_pil(bytes: &[u8], width: u32, height: u32) -> Option<RgbImage> {
    use mozjpeg::ColorSpace;
    // libjpeg reports fatal errors by unwinding out of the C code; catch that here.
    std::panic::catch_unwind(|| {
        let d = mozjpeg::Decompress::new_mem(bytes).ok()?;
        let cmyk = match d.color_space() {
            ColorSpace::JCS_YCbCr | ColorSpace::JCS_GRAYSCALE | ColorSpace::JCS_RGB => false,
            // libjpeg turns YCCK into CMYK itself, as it does for PIL.
            ColorSpace::JCS_CMYK | ColorSpace::JCS_YCCK => true,
            _ => return None,
        };
        let mut started = if cmyk {
            d.to_colorspace(ColorSpace::JCS_CMYK).ok()?
        } else {
            d.rgb().ok()?
        };
        if (started.width(), started.height()) != (width as usize, height as usize) {
            return None;
        }
        let mut pixels = started.read_scanlines::<u8>().ok()?;
        started.finish().ok()?;
        if cmyk {
            pixels = pixels
                .chunks_exact(4)
                .flat_map(cmyk_to_rgb_like_pil)
                .collect();
        }
        RgbImage::from_raw(width, height, pixels)
    })
    .ok()
    .flatten()
}

/// A JPEG's size and EXIF orientation (its first APP1 Exif segment), read by libjpeg.
fn libjpeg_header(bytes: &[u8]) -> Option<(u32, u32, Option<image::metadata::Orientation>)> {
    std::panic::catch_unwind(|| {
        let d = mozjpeg::Decompress::with_markers(&[mozjpeg::Marker::APP(1)])
            .from_mem(bytes)
            .ok()?;
        let orientation = d.markers().find_map(|m| {
            let tiff = m.data.strip_prefix(b"Exif\0\0")?;
            image::metadata::Orientation::from_exif_chunk(tiff)
        });
        Some((d.width() as u32, d.height() as u32, orientation))
    })
    .ok()
    .flatten()
}

/// 8-bit RGB from any decoded image. 16-bit samples keep their high byte, as PIL reads
/// 16-bit PNG and TIFF; `image`'s own conversion rounds (`v / 257`), one level above PIL's
/// for a sample whose low byte is far from its high byte.
fn rgb8_like_pil(img: DynamicImage) -> RgbImage {
    fn high_bytes(width: u32, height: u32, samples: &[u16], channels: usize) -> RgbImage {
        let rgb = samples
            .chunks_exact(channels)
            .flat_map(|p| {
                let high = |c: usize| (p[c] >> 8) as u8;
                if channels >= 3 {
                    [high(0), high(1), high(2)]
                } else {
                    [high(0); 3]
                }
            })
            .collect();
        RgbImage::from_raw(width, height, rgb).expect("one RGB pixel per decoded pixel")
    }
    let (width, height) = (img.width(), img.height());
    match img {
        DynamicImage::ImageLuma16(i) => high_bytes(width, height, i.as_raw(), 1),
        DynamicImage::ImageLumaA16(i) => high_bytes(width, height, i.as_raw(), 2),
        DynamicImage::ImageRgb16(i) => high_bytes(width, height, i.as_raw(), 3),
        DynamicImage::ImageRgba16(i) => high_bytes(width, height, i.as_raw(), 4),
        other => other.into_rgb8(),
    }
}

/// PIL's conversion of a JPEG's CMYK samples, as libjpeg hands them over: PIL takes them as
/// Adobe's inverted CMYK (its raw mode `CMYK;I`, for every 4-channel JPEG), then
/// `cmyk2rgb`: each channel is `(255 - k) - (c * (255 - k)) / 255`, rounded as PIL does.
fn cmyk_to_rgb_like_pil(raw: &[u8]) -> [u8; 3] {
    let muldiv255 = |a: i32, b: i32| {
        let t = a * b + 128;
        ((t >> 8) + t) >> 8
    };
    let inverted = |i: usize| 255 - i32::from(raw[i]);
    let nk = 255 - inverted(3);
    [0, 1, 2].map(|c| (nk - muldiv255(inverted(c), nk)).clamp(0, 255) as u8)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::preprocess::DEFAULT_MAX_PIXELS;

    #[test]
    fn sixteen_bit_grey_keeps_its_high_byte() {
        // PIL would clip all but the first of these to 255 (white); the high byte is what
        // any viewer shows, and what PIL keeps for 16-bit colour (tests/preprocess.rs).
        let samples: Vec<u16> = (0..64u16).map(|i| i * 1031 + 255 - i).collect();
        let grey = image::ImageBuffer::<image::Luma<u16>, _>::from_raw(8, 8, samples.clone());
        let mut png = Cursor::new(Vec::new());
        DynamicImage::ImageLuma16(grey.unwrap())
            .write_to(&mut png, image::ImageFormat::Png)
            .unwrap();
        let rgb = decode_rgb(png.get_ref(), DEFAULT_MAX_PIXELS).unwrap();
        let want: Vec<u8> = samples.iter().flat_map(|&v| [(v >> 8) as u8; 3]).collect();
        assert_eq!(rgb.as_raw(), &want);
    }

    #[test]
    fn garbage_and_empty_are_errors() {
        assert!(matches!(
            decode_rgb(b"", DEFAULT_MAX_PIXELS),
            Err(DecodeError::Empty)
        ));
        assert!(matches!(
            decode_rgb(b"hello, this is text", DEFAULT_MAX_PIXELS),
            Err(DecodeError::UnknownFormat)
        ));
    }
}
