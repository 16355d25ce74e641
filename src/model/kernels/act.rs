//! The NHWC activation types every kernel reads and writes: [`Act`] (an owned activation),
//! [`View`] (a channel prefix of one), [`Pad2d`], the epilogue [`Activation`] and the
//! pre-activation [`Prologue`].

use candle_core::{Device, Result, Tensor};
use rayon::prelude::*;

/// Zero padding on each side of a 2-D input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pad2d {
    pub top: usize,
    pub bottom: usize,
    pub left: usize,
    pub right: usize,
}

impl Pad2d {
    pub fn uniform(p: usize) -> Self {
        Self {
            top: p,
            bottom: p,
            left: p,
            right: p,
        }
    }

    /// Output size of a `k`x`k` window with `stride` over `h` x `w`.
    pub(super) fn output_size(
        &self,
        h: usize,
        w: usize,
        k: usize,
        stride: usize,
    ) -> Result<(usize, usize)> {
        let (ph, pw) = (h + self.top + self.bottom, w + self.left + self.right);
        if ph < k || pw < k {
            candle_core::bail!("a {k}x{k} window does not fit a {h}x{w} input")
        }
        Ok(((ph - k) / stride + 1, (pw - k) / stride + 1))
    }
}

/// What an epilogue applies after the bias (and the residual, if any).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    Identity,
    Relu,
    Relu6,
}

impl Activation {
    /// In place over a slice, the `match` outside the loop so that each arm vectorises.
    #[inline(always)]
    pub(super) fn apply_all(self, xs: &mut [f32]) {
        match self {
            Activation::Identity => {}
            Activation::Relu => xs.iter_mut().for_each(|v| *v = v.max(0.0)),
            Activation::Relu6 => xs.iter_mut().for_each(|v| *v = v.clamp(0.0, 6.0)),
        }
    }
}

/// An f32 activation of `n` images, `h` x `w` pixels of `c` channels, stored NHWC: one row
/// of `c` values per pixel.
#[derive(Debug, Clone, PartialEq)]
pub struct Act {
    pub n: usize,
    pub h: usize,
    pub w: usize,
    pub c: usize,
    pub data: Vec<f32>,
}

impl Act {
    /// Rows (pixels over all images).
    pub fn rows(&self) -> usize {
        self.n * self.h * self.w
    }

    /// All channels, as a view.
    pub fn view(&self) -> View<'_> {
        self.prefix(self.c)
    }

    /// The first `c` channels of every pixel (what a DenseNet layer reads of its block).
    pub fn prefix(&self, c: usize) -> View<'_> {
        assert!(c <= self.c, "a prefix of {c} channels of {}", self.c);
        View {
            data: &self.data,
            n: self.n,
            h: self.h,
            w: self.w,
            c,
            stride: self.c,
        }
    }

    /// Transpose an NCHW tensor into NHWC, in parallel over image rows.
    pub fn from_nchw(x: &Tensor) -> Result<Self> {
        let (n, c, h, w) = x.dims4()?;
        let src = x.flatten_all()?.to_vec1::<f32>()?;
        let mut data = vec![0f32; n * h * w * c];
        data.par_chunks_mut(w * c)
            .enumerate()
            .for_each(|(row, dst)| {
                let (img, y) = (row / h, row % h);
                for ch in 0..c {
                    let plane = &src[((img * c + ch) * h + y) * w..][..w];
                    for (x, &v) in plane.iter().enumerate() {
                        dst[x * c + ch] = v;
                    }
                }
            });
        Ok(Self { n, h, w, c, data })
    }

    /// Back to an NCHW tensor (tests and debugging).
    pub fn to_nchw(&self, device: &Device) -> Result<Tensor> {
        Tensor::from_slice(&self.data, (self.n, self.h, self.w, self.c), device)?
            .permute((0, 3, 1, 2))?
            .contiguous()
    }

    /// The mean of every channel (after `pro`, if given) over each image's pixels: `(n, c)`,
    /// ready for a classifier.
    pub fn global_avg_pool(&self, pro: Option<Prologue>, device: &Device) -> Result<Tensor> {
        let (hw, c) = (self.h * self.w, self.c);
        let mut out = vec![0f32; self.n * c];
        out.par_chunks_mut(c)
            .zip(self.data.par_chunks(hw * c))
            .for_each(|(sum, image)| {
                let mut px_out = vec![0f32; c];
                for px in image.chunks_exact(c) {
                    let px = match pro {
                        Some(p) => {
                            p.apply(px, &mut px_out);
                            &px_out[..]
                        }
                        None => px,
                    };
                    for (s, &v) in sum.iter_mut().zip(px) {
                        *s += v;
                    }
                }
                let scale = 1.0 / hw as f32;
                sum.iter_mut().for_each(|s| *s *= scale);
            });
        Tensor::from_vec(out, (self.n, c), device)
    }
}

/// A read-only NHWC view: `c` channels of each pixel, pixels `stride` values apart.
#[derive(Debug, Clone, Copy)]
pub struct View<'a> {
    pub data: &'a [f32],
    pub n: usize,
    pub h: usize,
    pub w: usize,
    pub c: usize,
    pub stride: usize,
}

impl View<'_> {
    pub(super) fn pixel(&self, img: usize, y: usize, x: usize) -> &[f32] {
        &self.data[((img * self.h + y) * self.w + x) * self.stride..][..self.c]
    }
}

/// `relu(x * scale + shift)` per channel, applied to an input as a kernel reads it: a
/// pre-activation BatchNorm + ReLU (DenseNet) that never gets its own pass or buffer.
#[derive(Debug, Clone, Copy)]
pub struct Prologue<'a> {
    pub scale: &'a [f32],
    pub shift: &'a [f32],
}

impl Prologue<'_> {
    #[inline(always)]
    pub(super) fn apply(&self, src: &[f32], dst: &mut [f32]) {
        for (((o, &v), &a), &b) in dst.iter_mut().zip(src).zip(self.scale).zip(self.shift) {
            *o = (v * a + b).max(0.0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::kernels::testing::max_abs_diff;

    #[test]
    fn nhwc_round_trip() {
        let x = Tensor::randn(0f32, 1.0, (2, 3, 5, 4), &Device::Cpu).unwrap();
        let back = Act::from_nchw(&x).unwrap().to_nchw(&Device::Cpu).unwrap();
        assert_eq!(max_abs_diff(&x, &back), 0.0);
    }
}
