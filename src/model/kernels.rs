//! CPU kernels the models call where candle's generic path is slow. Each has a candle
//! fallback (used on other devices and as the reference in tests).
//!
//! Depthwise convolution: candle runs a grouped convolution as one convolution per group,
//! which for EfficientNet's 1152-channel depthwise layers means 1152 small convolutions and
//! copies per call. This computes all channels directly, in parallel over (image, channel).

use std::sync::atomic::{AtomicBool, Ordering};

use candle_core::{CpuStorage, CustomOp1, DType, Device, Layout, Result, Shape, Storage, Tensor};
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

/// Dense convolution (groups = 1) of NCHW `x` as matrix products in NCHW, with no layout
/// round trips: a 1x1 stride-1 convolution is `W (Cout x Cin) . X[n] (Cin x HW)` directly;
/// anything else gathers the receptive fields (im2col, in parallel over input channels)
/// into `(Cin*k*k) x (OH*OW)` and multiplies by `W (Cout x Cin*k*k)`. Falls back to candle's
/// convolution off the CPU or for other dtypes.
pub fn conv2d(x: &Tensor, weight: &Tensor, stride: usize, pad: Pad2d) -> Result<Tensor> {
    let (cout, cin, kh, kw) = weight.dims4()?;
    if !use_custom_cpu(x) || kh != kw {
        return conv2d_reference(x, weight, stride, pad, 1);
    }
    let (n, c, h, w) = x.dims4()?;
    if c != cin {
        candle_core::bail!("conv2d: input has {c} channels, weight expects {cin}")
    }
    let k = kh;
    let oh = (h + pad.top + pad.bottom - k) / stride + 1;
    let ow = (w + pad.left + pad.right - k) / stride + 1;
    let kk = cin * k * k;
    let ohw = oh * ow;
    let x = x.contiguous()?;
    let weight = weight.contiguous()?;
    let (x_storage, x_layout) = x.storage_and_layout();
    let (w_storage, w_layout) = weight.storage_and_layout();
    let (Storage::Cpu(CpuStorage::F32(xs)), Storage::Cpu(CpuStorage::F32(ws))) =
        (&*x_storage, &*w_storage)
    else {
        candle_core::bail!("conv2d: expected f32 CPU tensors")
    };
    let xs = &xs[x_layout.start_offset()..x_layout.start_offset() + n * cin * h * w];
    let ws = &ws[w_layout.start_offset()..w_layout.start_offset() + cout * kk];
    let direct = k == 1
        && stride == 1
        && pad
            == Pad2d {
                top: 0,
                bottom: 0,
                left: 0,
                right: 0,
            };
    let mut out = vec![0f32; n * cout * ohw];
    let mut cols = if direct {
        Vec::new()
    } else {
        vec![0f32; kk * ohw]
    };
    let threads = candle_core::utils::get_num_threads();
    // One image at a time: each product is one large GEMM written straight into the output
    // (W: Cout x K, row-major; columns: K x OH*OW), and the gathered columns stay one image's size.
    for (image, dst) in xs.chunks(cin * h * w).zip(out.chunks_mut(cout * ohw)) {
        let rhs: &[f32] = if direct {
            image
        } else {
            im2col(image, &mut cols, h, w, k, stride, pad, oh, ow);
            &cols
        };
        // SAFETY: the pointers cover cout*kk, kk*ohw and cout*ohw elements with the given
        // row-major strides, and the three buffers do not overlap.
        unsafe {
            gemm::gemm(
                cout,
                ohw,
                kk,
                dst.as_mut_ptr(),
                1,
                ohw as isize,
                false,
                ws.as_ptr(),
                1,
                kk as isize,
                rhs.as_ptr(),
                1,
                ohw as isize,
                0.0,
                1.0,
                false,
                false,
                false,
                gemm::Parallelism::Rayon(threads),
            );
        }
    }
    drop((x_storage, w_storage));
    Tensor::from_vec(out, (n, cout, oh, ow), x.device())
}

/// Gather the receptive fields of one CHW image into `cols` (Cin*k*k rows of OH*OW).
#[allow(clippy::too_many_arguments)]
fn im2col(
    image: &[f32],
    cols: &mut [f32],
    h: usize,
    w: usize,
    k: usize,
    stride: usize,
    pad: Pad2d,
    oh: usize,
    ow: usize,
) {
    cols.par_chunks_mut(k * k * oh * ow)
        .enumerate()
        .for_each(|(ch, out)| {
            let input = &image[ch * h * w..(ch + 1) * h * w];
            for ky in 0..k {
                for kx in 0..k {
                    let row = &mut out[(ky * k + kx) * oh * ow..(ky * k + kx + 1) * oh * ow];
                    for oy in 0..oh {
                        let iy = (oy * stride + ky) as isize - pad.top as isize;
                        let dst = &mut row[oy * ow..(oy + 1) * ow];
                        if iy < 0 || iy >= h as isize {
                            dst.fill(0.0);
                            continue;
                        }
                        let src = &input[iy as usize * w..(iy as usize + 1) * w];
                        for (ox, d) in dst.iter_mut().enumerate() {
                            let ix = (ox * stride + kx) as isize - pad.left as isize;
                            *d = if ix >= 0 && ix < w as isize {
                                src[ix as usize]
                            } else {
                                0.0
                            };
                        }
                    }
                }
            }
        });
}

/// candle's own convolution (any group count), with explicit zero padding when it is
/// asymmetric: the fallback and the reference for tests.
pub fn conv2d_reference(
    x: &Tensor,
    weight: &Tensor,
    stride: usize,
    pad: Pad2d,
    groups: usize,
) -> Result<Tensor> {
    if pad.top == pad.bottom && pad.left == pad.right && pad.top == pad.left {
        return x.conv2d(weight, pad.top, stride, 1, groups);
    }
    let x = x
        .pad_with_zeros(2, pad.top, pad.bottom)?
        .pad_with_zeros(3, pad.left, pad.right)?;
    x.conv2d(weight, 0, stride, 1, groups)
}

/// candle's grouped convolution as a depthwise one, plus bias.
pub fn depthwise_reference(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    stride: usize,
    pad: Pad2d,
) -> Result<Tensor> {
    let y = conv2d_reference(x, weight, stride, pad, weight.dim(0)?)?;
    match bias {
        Some(b) => y.broadcast_add(&b.reshape((1, (), 1, 1))?),
        None => Ok(y),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn max_abs_diff(a: Tensor, b: Tensor) -> f32 {
        assert_eq!(a.dims(), b.dims());
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    }

    #[test]
    fn dense_conv_matches_candle() {
        let dev = Device::Cpu;
        let p = |t, b, l, r| Pad2d {
            top: t,
            bottom: b,
            left: l,
            right: r,
        };
        for (cin, cout, h, w, k, s, pad) in [
            (3, 8, 13, 11, 7, 2, p(3, 3, 3, 3)),
            (6, 5, 9, 9, 3, 1, p(1, 1, 1, 1)),
            (6, 5, 10, 10, 3, 2, p(0, 1, 0, 1)),
            (8, 4, 7, 7, 1, 1, p(0, 0, 0, 0)),
            (8, 4, 8, 8, 1, 2, p(0, 0, 0, 0)),
        ] {
            let x = Tensor::randn(0f32, 1.0, (2, cin, h, w), &dev).unwrap();
            let wt = Tensor::randn(0f32, 1.0, (cout, cin, k, k), &dev).unwrap();
            let ours = conv2d(&x, &wt, s, pad).unwrap();
            let reference = conv2d_reference(&x, &wt, s, pad, 1).unwrap();
            let diff = max_abs_diff(ours, reference);
            assert!(diff < 1e-4, "{cin}->{cout} {h}x{w} k{k} s{s}: {diff}");
        }
    }

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
            let diff = max_abs_diff(ours, reference);
            assert!(diff < 1e-5, "{c} {h}x{w} k{k} s{s}: {diff}");
        }
    }
}
