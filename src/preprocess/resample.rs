//! Pillow's resampling, reproduced exactly: separable convolution with antialiasing (the
//! filter support grows with the downscale factor), coefficients in 22-bit fixed point,
//! horizontal pass first, rounding and clipping to u8 after each pass. This is what
//! torchvision's `Resize` does to a PIL image, so crops match PyTorch's bit for bit.
//!
//! Only the output pixels inside a requested window are computed, so resizing a 1x20000
//! strip to a 256-pixel short side and then center-cropping costs the crop, not the
//! 5-million-pixel intermediate.

use image::RgbImage;

/// Pillow's PRECISION_BITS for 8-bit images.
const PRECISION_BITS: u32 = 32 - 8 - 2;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Filter {
    Bilinear,
    Bicubic,
}

impl Filter {
    fn support(self) -> f64 {
        match self {
            Filter::Bilinear => 1.0,
            Filter::Bicubic => 2.0,
        }
    }

    fn eval(self, x: f64) -> f64 {
        let x = x.abs();
        match self {
            Filter::Bilinear => {
                if x < 1.0 {
                    1.0 - x
                } else {
                    0.0
                }
            }
            Filter::Bicubic => {
                const A: f64 = -0.5;
                if x < 1.0 {
                    ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
                } else if x < 2.0 {
                    (((x - 5.0) * x + 8.0) * x - 4.0) * A
                } else {
                    0.0
                }
            }
        }
    }
}

/// Fixed-point weights for a run of output positions along one axis.
struct AxisCoeffs {
    /// First source index and number of taps, per output position.
    bounds: Vec<(usize, usize)>,
    ksize: usize,
    weights: Vec<i32>,
}

/// Pillow's `precompute_coeffs` + `normalize_coeffs_8bpc`, for output positions
/// `outputs` of a resize from `in_size` to `out_size`.
fn axis_coeffs(
    in_size: usize,
    out_size: usize,
    outputs: std::ops::Range<usize>,
    filter: Filter,
) -> AxisCoeffs {
    let scale = in_size as f64 / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = filter.support() * filterscale;
    let ksize = support.ceil() as usize * 2 + 1;
    let mut bounds = Vec::with_capacity(outputs.len());
    let mut weights = vec![0i32; outputs.len() * ksize];
    let mut k = vec![0f64; ksize];
    for (i, xx) in outputs.enumerate() {
        let center = (xx as f64 + 0.5) * scale;
        let ss = 1.0 / filterscale;
        // C's (int) cast truncates toward zero, as `as i64` does.
        let xmin = ((center - support + 0.5) as i64).max(0) as usize;
        let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
        let n = xmax.saturating_sub(xmin).min(ksize);
        let mut total = 0.0;
        for (x, kx) in k.iter_mut().enumerate().take(n) {
            let w = filter.eval((x as f64 + xmin as f64 - center + 0.5) * ss);
            *kx = w;
            total += w;
        }
        for (x, kx) in k.iter().enumerate().take(n) {
            let w = if total != 0.0 { kx / total } else { *kx };
            let fixed = w * (1u32 << PRECISION_BITS) as f64;
            weights[i * ksize + x] = if w < 0.0 {
                (-0.5 + fixed) as i32
            } else {
                (0.5 + fixed) as i32
            };
        }
        bounds.push((xmin, n));
    }
    AxisCoeffs {
        bounds,
        ksize,
        weights,
    }
}

fn clip8(acc: i64) -> u8 {
    (acc >> PRECISION_BITS).clamp(0, 255) as u8
}

/// A window of the resized image: columns `x.start..x.end`, rows `y.start..y.end`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Window {
    pub x: std::ops::Range<usize>,
    pub y: std::ops::Range<usize>,
}

/// Resize `src` to `out_w` x `out_h` as Pillow would and return only `window` of the result
/// (which must lie inside it).
pub fn resize_window(
    src: &RgbImage,
    out_w: usize,
    out_h: usize,
    window: &Window,
    filter: Filter,
) -> RgbImage {
    let (in_w, in_h) = (src.width() as usize, src.height() as usize);
    let horiz = axis_coeffs(in_w, out_w, window.x.clone(), filter);
    let vert = axis_coeffs(in_h, out_h, window.y.clone(), filter);
    let win_w = window.x.len();
    let win_h = window.y.len();

    // Source rows the vertical pass will read.
    let row_first = vert.bounds.iter().map(|b| b.0).min().unwrap_or(0);
    let row_last = vert.bounds.iter().map(|b| b.0 + b.1).max().unwrap_or(0);
    let src_raw = src.as_raw();
    let half = 1i64 << (PRECISION_BITS - 1);

    // Horizontal pass: source rows row_first..row_last, window columns.
    let tmp_h = row_last - row_first;
    let mut tmp = vec![0u8; tmp_h * win_w * 3];
    for ty in 0..tmp_h {
        let row = &src_raw[(row_first + ty) * in_w * 3..(row_first + ty + 1) * in_w * 3];
        for (tx, &(xmin, n)) in horiz.bounds.iter().enumerate() {
            let k = &horiz.weights[tx * horiz.ksize..tx * horiz.ksize + n];
            let mut acc = [half; 3];
            for (j, &w) in k.iter().enumerate() {
                let p = &row[(xmin + j) * 3..(xmin + j) * 3 + 3];
                for c in 0..3 {
                    acc[c] += p[c] as i64 * w as i64;
                }
            }
            let o = (ty * win_w + tx) * 3;
            for c in 0..3 {
                tmp[o + c] = clip8(acc[c]);
            }
        }
    }

    // Vertical pass over the intermediate.
    let mut out = vec![0u8; win_h * win_w * 3];
    for (oy, &(ymin, n)) in vert.bounds.iter().enumerate() {
        let k = &vert.weights[oy * vert.ksize..oy * vert.ksize + n];
        for ox in 0..win_w {
            let mut acc = [half; 3];
            for (j, &w) in k.iter().enumerate() {
                let o = ((ymin - row_first + j) * win_w + ox) * 3;
                for c in 0..3 {
                    acc[c] += tmp[o + c] as i64 * w as i64;
                }
            }
            let o = (oy * win_w + ox) * 3;
            for c in 0..3 {
                out[o + c] = clip8(acc[c]);
            }
        }
    }
    RgbImage::from_raw(win_w as u32, win_h as u32, out).expect("buffer sized to the window")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn full(w: usize, h: usize) -> Window {
        Window { x: 0..w, y: 0..h }
    }

    #[test]
    fn same_size_is_identity() {
        let img = RgbImage::from_fn(7, 5, |x, y| image::Rgb([x as u8 * 30, y as u8 * 40, 200]));
        for f in [Filter::Bilinear, Filter::Bicubic] {
            assert_eq!(resize_window(&img, 7, 5, &full(7, 5), f), img);
        }
    }

    #[test]
    fn constant_image_stays_constant() {
        let img = RgbImage::from_pixel(37, 53, image::Rgb([10, 128, 250]));
        for f in [Filter::Bilinear, Filter::Bicubic] {
            for (w, h) in [(20, 29), (100, 143), (1, 1)] {
                let out = resize_window(&img, w, h, &full(w, h), f);
                assert!(out.pixels().all(|p| p.0 == [10, 128, 250]), "{f:?} {w}x{h}");
            }
        }
    }

    #[test]
    fn window_equals_crop_of_full_resize() {
        let img = RgbImage::from_fn(41, 23, |x, y| {
            image::Rgb([(x * 7 + y) as u8, (y * 11) as u8, (x * y) as u8])
        });
        let fullres = resize_window(&img, 30, 17, &full(30, 17), Filter::Bicubic);
        let win = Window { x: 5..25, y: 3..14 };
        let part = resize_window(&img, 30, 17, &win, Filter::Bicubic);
        let crop = image::imageops::crop_imm(&fullres, 5, 3, 20, 11).to_image();
        assert_eq!(part, crop);
    }
}
