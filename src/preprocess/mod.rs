//! Bytes -> normalised NCHW pixels, exactly as torchvision/timm evaluation transforms do
//! with PIL: decode, apply EXIF orientation, convert to RGB, resize the short side
//! (`Resize(int)`, PIL-style antialiasing), `CenterCrop`, `ToTensor`, `Normalize`.
//!
//! Pure: no file or network I/O, no globals. Decoding checks the declared size against a
//! pixel budget before allocating anything, so decompression bombs are refused cheaply.

mod bmp;
mod decode;
mod gif;
mod pnm;
pub mod resample;

use image::RgbImage;

pub use decode::{decode_rgb, jpeg_simd, DecodeError, NO_JPEG_SIMD};

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
}
