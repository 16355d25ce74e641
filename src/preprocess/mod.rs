//! Bytes -> normalised NCHW pixels, exactly as torchvision/timm evaluation transforms do
//! with PIL: decode, apply EXIF orientation, convert to RGB, resize the short side
//! (`Resize(int)`, PIL-style antialiasing), `CenterCrop`, `ToTensor`, `Normalize`.
//!
//! Pure: no file or network I/O, no globals. Decoding checks the declared size against a
//! pixel budget before allocating anything, so decompression bombs are refused cheaply.

pub mod resample;

use std::io::Cursor;

use image::{DynamicImage, ImageDecoder, ImageReader, RgbImage};

pub use resample::Filter as Interpolation;
use resample::Window;

pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

/// Default cap on decoded pixels (width x height): 100 megapixels.
pub const DEFAULT_MAX_PIXELS: u64 = 100_000_000;

/// Evaluation-time preprocessing, as timm's `pretrained_cfg` describes it.
#[derive(Debug, Clone, PartialEq)]
pub struct PreprocessConfig {
    /// Side of the square crop fed to the network.
    pub input_size: u32,
    /// The image's short side is resized to this before cropping.
    pub resize_size: u32,
    pub interpolation: Interpolation,
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

impl Default for PreprocessConfig {
    /// 256 -> 224 bilinear with ImageNet statistics: torchvision's classic recipe.
    fn default() -> Self {
        Self {
            input_size: 224,
            resize_size: 256,
            interpolation: Interpolation::Bilinear,
            mean: IMAGENET_MEAN,
            std: IMAGENET_STD,
        }
    }
}

/// timm's rule: the short side is resized to `floor(input_size / crop_pct)`.
pub fn resize_size_for(input_size: u32, crop_pct: f64) -> u32 {
    (input_size as f64 / crop_pct).floor() as u32
}

/// The crop sides classify takes (`--input-size`), and the resized short sides
/// (`--resize-size`, or `input_size / crop_pct`).
pub const INPUT_SIZES: std::ops::RangeInclusive<u32> = 8..=2048;
pub const RESIZE_SIZES: std::ops::RangeInclusive<u32> = 8..=8192;

/// Why `crop_pct` cannot be used, if it cannot: it divides the input size.
pub fn crop_pct_problem(crop_pct: f64) -> Option<String> {
    (!(crop_pct.is_finite() && crop_pct > 0.0))
        .then(|| format!("crop_pct {crop_pct} is not a positive number"))
}

/// Why a normalisation `mean` cannot be used, if it cannot: a value that is not a number.
pub fn mean_problem(mean: &[f32; 3]) -> Option<String> {
    mean.iter()
        .any(|m| !m.is_finite())
        .then(|| format!("mean {mean:?} is not three numbers"))
}

/// Why a normalisation `std` cannot be used, if it cannot: it divides, so every value must
/// be a positive number.
pub fn std_problem(std: &[f32; 3]) -> Option<String> {
    (!std.iter().all(|s| s.is_finite() && *s > 0.0))
        .then(|| format!("std {std:?} is not three positive numbers"))
}

impl PreprocessConfig {
    /// Refuse what would turn every image into noise or fail on the first one: a
    /// normalisation that divides by zero or by NaN, a crop or resize outside the sizes
    /// classify takes (a `crop_pct` near 0 asks for a short side of millions of pixels).
    pub fn check(&self) -> Result<(), String> {
        if !INPUT_SIZES.contains(&self.input_size) {
            return Err(format!(
                "input size {} is outside {INPUT_SIZES:?}",
                self.input_size
            ));
        }
        if !RESIZE_SIZES.contains(&self.resize_size) {
            return Err(format!(
                "the short side would be resized to {} pixels (input_size / crop_pct), \
                 outside {RESIZE_SIZES:?}",
                self.resize_size
            ));
        }
        match mean_problem(&self.mean).or_else(|| std_problem(&self.std)) {
            Some(problem) => Err(problem),
            None => Ok(()),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("empty input (0 bytes)")]
    Empty,
    #[error("not a recognised image format (supported: JPEG, PNG, GIF, WebP, BMP, TIFF)")]
    UnknownFormat,
    #[error("{0} images are not supported (supported: JPEG, PNG, GIF, WebP, BMP, TIFF)")]
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
}

/// Decode an image to 8-bit RGB with EXIF orientation applied, as PIL's `open` then
/// `convert("RGB")` do: greyscale is replicated, alpha is dropped (not composited),
/// palettes are expanded, 16-bit samples keep their high byte, CMYK JPEGs are converted
/// with PIL's formula; GIFs give their first frame. One deliberate difference: PIL clips a
/// 16-bit greyscale image (its mode `I;16`) to 255, which turns most of it white; here it
/// keeps its high byte like 16-bit colour does.
pub fn decode_rgb(bytes: &[u8], max_pixels: u64) -> Result<RgbImage, DecodeError> {
    if bytes.is_empty() {
        return Err(DecodeError::Empty);
    }
    let reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| DecodeError::Image(e.into()))?;
    let Some(format) = reader.format() else {
        return Err(match iso_media_brand(bytes) {
            Some(brand) => DecodeError::UnsupportedFormat(brand),
            None => DecodeError::UnknownFormat,
        });
    };
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
    Ok(rgb8_like_pil(img))
}

/// Refuse an image of no pixels, or of more than `max_pixels`, from its declared size.
fn check_size(width: u32, height: u32, max_pixels: u64) -> Result<(), DecodeError> {
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

/// torchvision's `Resize(int)` output size: short side to `size`, long side truncated.
pub fn resized_dims(width: u32, height: u32, size: u32) -> (usize, usize) {
    let (short, long) = if width <= height {
        (width, height)
    } else {
        (height, width)
    };
    let new_long = (size as f64 * long as f64 / short as f64) as usize;
    if width <= height {
        (size as usize, new_long)
    } else {
        (new_long, size as usize)
    }
}

/// Python's `round()` for a value that is an integer or half-integer: ties go to even.
fn round_half_even_halves(twice: i64) -> i64 {
    // `twice` is 2 * value; value = twice / 2.
    if twice % 2 == 0 {
        twice / 2
    } else {
        let down = twice.div_euclid(2);
        if down % 2 == 0 {
            down
        } else {
            down + 1
        }
    }
}

/// `Resize(resize_size)` then `CenterCrop(input_size)`, as torchvision computes them on a PIL
/// image (including its zero padding when the crop is larger than the resized image).
pub fn resize_center_crop(img: &RgbImage, cfg: &PreprocessConfig) -> RgbImage {
    let (rw, rh) = resized_dims(img.width(), img.height(), cfg.resize_size);
    let crop = cfg.input_size as usize;
    // torchvision pads with zeros (left/top get the floor half) if the crop is larger.
    let pad_left = crop.saturating_sub(rw) / 2;
    let pad_top = crop.saturating_sub(rh) / 2;
    let padded_w = rw.max(crop);
    let padded_h = rh.max(crop);
    let left = round_half_even_halves(padded_w as i64 - crop as i64) as usize;
    let top = round_half_even_halves(padded_h as i64 - crop as i64) as usize;
    // Window of the resized (unpadded) image that lands in the crop.
    let x0 = left.saturating_sub(pad_left);
    let y0 = top.saturating_sub(pad_top);
    let window = Window {
        x: x0..(left + crop - pad_left).min(rw),
        y: y0..(top + crop - pad_top).min(rh),
    };
    let part = resample::resize_window(img, rw, rh, &window, cfg.interpolation);
    if part.width() as usize == crop && part.height() as usize == crop {
        return part;
    }
    let mut out = RgbImage::new(crop as u32, crop as u32);
    let ox = (pad_left + x0) as i64 - left as i64;
    let oy = (pad_top + y0) as i64 - top as i64;
    image::imageops::replace(&mut out, &part, ox, oy);
    out
}

/// `ToTensor` + `Normalize`: CHW f32, computed in f32 as torchvision does.
pub fn normalize(crop: &RgbImage, cfg: &PreprocessConfig) -> Vec<f32> {
    let (w, h) = (crop.width() as usize, crop.height() as usize);
    let mut out = vec![0f32; 3 * w * h];
    for (i, p) in crop.pixels().enumerate() {
        for c in 0..3 {
            out[c * w * h + i] = (p.0[c] as f32 / 255.0 - cfg.mean[c]) / cfg.std[c];
        }
    }
    out
}

/// The whole transform: encoded bytes to a `3 x input_size x input_size` CHW tensor.
pub fn preprocess(
    bytes: &[u8],
    cfg: &PreprocessConfig,
    max_pixels: u64,
) -> Result<Vec<f32>, DecodeError> {
    let img = decode_rgb(bytes, max_pixels)?;
    Ok(normalize(&resize_center_crop(&img, cfg), cfg))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_refuses_what_would_be_noise() {
        let ok = PreprocessConfig::default();
        assert_eq!(ok.check(), Ok(()));
        let with = |f: &dyn Fn(&mut PreprocessConfig)| {
            let mut c = ok.clone();
            f(&mut c);
            c.check().unwrap_err()
        };
        assert!(with(&|c| c.std = [0.0; 3]).contains("std [0.0, 0.0, 0.0]"));
        assert!(with(&|c| c.std[1] = f32::NAN).contains("std"));
        assert!(with(&|c| c.mean[2] = f32::INFINITY).contains("mean"));
        assert!(with(&|c| c.resize_size = 0).contains("resized to 0 pixels"));
        assert!(with(&|c| c.resize_size = 8193).contains("8..=8192"));
        assert!(with(&|c| c.input_size = 4).contains("input size 4"));
        assert_eq!(crop_pct_problem(0.875), None);
        assert_eq!(crop_pct_problem(1.5), None);
        for bad in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            assert!(crop_pct_problem(bad).is_some(), "{bad}");
        }
    }

    #[test]
    fn resized_dims_follow_torchvision() {
        assert_eq!(resized_dims(451, 300, 256), (384, 256)); // int(256*451/300) = 384
        assert_eq!(resized_dims(300, 451, 256), (256, 384));
        assert_eq!(resized_dims(224, 224, 256), (256, 256));
        assert_eq!(resized_dims(1, 20000, 256), (256, 5_120_000));
    }

    #[test]
    fn python_round_ties_to_even() {
        assert_eq!(round_half_even_halves(1), 0); // round(0.5)
        assert_eq!(round_half_even_halves(3), 2); // round(1.5)
        assert_eq!(round_half_even_halves(5), 2); // round(2.5)
        assert_eq!(round_half_even_halves(32), 16);
    }

    #[test]
    fn huge_strip_costs_only_the_crop() {
        let img = RgbImage::from_pixel(1, 20000, image::Rgb([9, 99, 199]));
        let out = resize_center_crop(&img, &PreprocessConfig::default());
        assert_eq!(out.dimensions(), (224, 224));
        assert!(out.pixels().all(|p| p.0 == [9, 99, 199]));
    }

    #[test]
    fn small_image_upscales_then_crops() {
        let img = RgbImage::from_pixel(3, 2, image::Rgb([50, 60, 70]));
        let out = resize_center_crop(&img, &PreprocessConfig::default());
        assert_eq!(out.dimensions(), (224, 224));
        assert!(out.pixels().all(|p| p.0 == [50, 60, 70]));
    }

    #[test]
    fn crop_larger_than_image_pads_with_black() {
        let img = RgbImage::from_pixel(10, 10, image::Rgb([255, 255, 255]));
        let cfg = PreprocessConfig {
            input_size: 12,
            resize_size: 10,
            ..Default::default()
        };
        let out = resize_center_crop(&img, &cfg);
        assert_eq!(out.get_pixel(0, 0).0, [0, 0, 0]);
        assert_eq!(out.get_pixel(1, 1).0, [255, 255, 255]);
        assert_eq!(out.get_pixel(10, 10).0, [255, 255, 255]);
        assert_eq!(out.get_pixel(11, 11).0, [0, 0, 0]);
    }

    #[test]
    fn normalize_is_chw() {
        let img = RgbImage::from_fn(2, 1, |x, _| {
            image::Rgb([if x == 0 { 255 } else { 0 }, 0, 0])
        });
        let cfg = PreprocessConfig {
            mean: [0.0; 3],
            std: [1.0; 3],
            ..Default::default()
        };
        assert_eq!(normalize(&img, &cfg), vec![1.0, 0.0, 0.0, 0.0, 0.0, 0.0]);
    }

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
