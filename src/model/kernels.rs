//! CPU kernels the models call where candle's generic path is slow. Each has a candle
//! fallback (used on other devices and as the reference in tests).
//!
//! Depthwise convolution: candle runs a grouped convolution as one convolution per group,
//! which for EfficientNet's 1152-channel depthwise layers means 1152 small convolutions and
//! copies per call. This computes all channels directly, in parallel over (image, channel).

use std::sync::atomic::{AtomicBool, Ordering};

use candle_core::{CpuStorage, CustomOp1, DType, Device, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

static STOCK_ONLY: AtomicBool = AtomicBool::new(false);

/// Use candle's stock operations everywhere instead of these kernels (for comparison:
/// `classify bench` measures both).
pub fn set_stock_only(stock: bool) {
    STOCK_ONLY.store(stock, Ordering::Relaxed);
}

fn use_custom_cpu(x: &Tensor) -> bool {
    !STOCK_ONLY.load(Ordering::Relaxed)
        && matches!(x.device(), Device::Cpu)
        && x.dtype() == DType::F32
}

/// Zero padding on each side of a 2-D input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pad2d {
    pub top: usize,
    pub bottom: usize,
    pub left: usize,
    pub right: usize,
}

struct DepthwiseConv {
    weight: Vec<f32>,
    bias: Vec<f32>,
    kernel: usize,
    stride: usize,
    pad: Pad2d,
}

impl CustomOp1 for DepthwiseConv {
    fn name(&self) -> &'static str {
        "depthwise-conv2d"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let CpuStorage::F32(data) = storage else {
            candle_core::bail!("depthwise-conv2d: only f32 is supported")
        };
        let Some((start, end)) = layout.contiguous_offsets() else {
            candle_core::bail!("depthwise-conv2d: input must be contiguous")
        };
        let x = &data[start..end];
        let (n, c, h, w) = layout.shape().dims4()?;
        let (k, s, p) = (self.kernel, self.stride, self.pad);
        let oh = (h + p.top + p.bottom - k) / s + 1;
        let ow = (w + p.left + p.right - k) / s + 1;
        let mut out = vec![0f32; n * c * oh * ow];
        out.par_chunks_mut(oh * ow)
            .enumerate()
            .for_each(|(plane, o)| {
                let ch = plane % c;
                let input = &x[plane * h * w..(plane + 1) * h * w];
                let wk = &self.weight[ch * k * k..(ch + 1) * k * k];
                let b = self.bias[ch];
                for oy in 0..oh {
                    let row = &mut o[oy * ow..(oy + 1) * ow];
                    for (ox, out_v) in row.iter_mut().enumerate() {
                        let mut acc = 0f32;
                        for ky in 0..k {
                            let iy = (oy * s + ky) as isize - p.top as isize;
                            if iy < 0 || iy >= h as isize {
                                continue;
                            }
                            let in_row = &input[iy as usize * w..(iy as usize + 1) * w];
                            for kx in 0..k {
                                let ix = (ox * s + kx) as isize - p.left as isize;
                                if ix >= 0 && ix < w as isize {
                                    acc += in_row[ix as usize] * wk[ky * k + kx];
                                }
                            }
                        }
                        *out_v = acc + b;
                    }
                }
            });
        Ok((CpuStorage::F32(out), Shape::from((n, c, oh, ow))))
    }
}

/// Depthwise convolution of NCHW `x` with `weight` (C, 1, k, k) and optional `bias` (C).
/// Uses the direct CPU kernel for f32 on the CPU, candle's grouped convolution otherwise.
pub fn depthwise_conv2d(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    stride: usize,
    pad: Pad2d,
) -> Result<Tensor> {
    let (c, _, k, _) = weight.dims4()?;
    if use_custom_cpu(x) {
        let op = DepthwiseConv {
            weight: weight.flatten_all()?.to_vec1::<f32>()?,
            bias: match bias {
                Some(b) => b.to_vec1::<f32>()?,
                None => vec![0.0; c],
            },
            kernel: k,
            stride,
            pad,
        };
        return x.contiguous()?.apply_op1_no_bwd(&op);
    }
    depthwise_reference(x, weight, bias, stride, pad)
}

/// candle's own grouped convolution: the fallback and the reference for tests.
pub fn depthwise_reference(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    stride: usize,
    pad: Pad2d,
) -> Result<Tensor> {
    let c = weight.dim(0)?;
    let x = x
        .pad_with_zeros(2, pad.top, pad.bottom)?
        .pad_with_zeros(3, pad.left, pad.right)?;
    let y = x.conv2d(weight, 0, stride, 1, c)?;
    match bias {
        Some(b) => y.broadcast_add(&b.reshape((1, (), 1, 1))?),
        None => Ok(y),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn depthwise_matches_candle_grouped_conv() {
        let dev = Device::Cpu;
        for (c, h, w, k, s, pad) in [
            (
                5,
                9,
                7,
                3,
                1,
                Pad2d {
                    top: 1,
                    bottom: 1,
                    left: 1,
                    right: 1,
                },
            ),
            (
                4,
                10,
                10,
                3,
                2,
                Pad2d {
                    top: 0,
                    bottom: 1,
                    left: 0,
                    right: 1,
                },
            ),
            (
                3,
                11,
                8,
                5,
                2,
                Pad2d {
                    top: 1,
                    bottom: 2,
                    left: 1,
                    right: 2,
                },
            ),
            (
                2,
                6,
                6,
                5,
                1,
                Pad2d {
                    top: 2,
                    bottom: 2,
                    left: 2,
                    right: 2,
                },
            ),
        ] {
            let x = Tensor::randn(0f32, 1.0, (2, c, h, w), &dev).unwrap();
            let wt = Tensor::randn(0f32, 1.0, (c, 1, k, k), &dev).unwrap();
            let b = Tensor::randn(0f32, 1.0, c, &dev).unwrap();
            let ours = depthwise_conv2d(&x, &wt, Some(&b), s, pad).unwrap();
            let reference = depthwise_reference(&x, &wt, Some(&b), s, pad).unwrap();
            assert_eq!(ours.dims(), reference.dims());
            let diff = (ours - reference)
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert!(diff < 1e-5, "{c} {h}x{w} k{k} s{s}: {diff}");
        }
    }
}
