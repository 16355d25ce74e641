//! Pooling on NHWC activations, in parallel over output rows and vectorised over channels:
//! ResNet's and DenseNet's stem max pool and DenseNet's transition average pool.

use candle_core::Result;
use rayon::prelude::*;

use super::isa::compiled_for;
use super::{Act, Isa, Pad2d, Prologue};

/// `MaxPool2d(kernel=3, stride=2, padding=1)`, padding that never wins (as PyTorch's),
/// each row compiled for `isa`.
pub fn max_pool_3x3_s2(x: &Act, isa: Isa) -> Result<Act> {
    let c = x.c;
    let (oh, ow) = Pad2d::uniform(1).output_size(x.h, x.w, 3, 2)?;
    let mut data = vec![0f32; x.n * oh * ow * c];
    data.par_chunks_mut(ow * c)
        .enumerate()
        .for_each(|(row, dst)| {
            compiled_for!(isa, || {
                let (img, oy) = (row / oh, row % oh);
                for (ox, out) in dst.chunks_exact_mut(c).enumerate() {
                    out.fill(f32::NEG_INFINITY);
                    for iy in (oy * 2).saturating_sub(1)..(oy * 2 + 2).min(x.h) {
                        let src_row = &x.data[(img * x.h + iy) * x.w * c..][..x.w * c];
                        for ix in (ox * 2).saturating_sub(1)..(ox * 2 + 2).min(x.w) {
                            for (o, &v) in out.iter_mut().zip(&src_row[ix * c..(ix + 1) * c]) {
                                *o = o.max(v);
                            }
                        }
                    }
                }
            })
        });
    Ok(Act {
        n: x.n,
        h: oh,
        w: ow,
        c,
        data,
    })
}

/// `AvgPool2d(kernel=2, stride=2)` of `pro(x)` (DenseNet's transitions, which pool before
/// their 1x1 convolution: the two commute, and the convolution then runs on a quarter of
/// the pixels). An odd last row/column is dropped, as PyTorch does. Each row is compiled for
/// `isa`.
pub fn avg_pool_2x2(x: &Act, pro: Option<Prologue>, isa: Isa) -> Result<Act> {
    let c = x.c;
    let (oh, ow) = (x.h / 2, x.w / 2);
    if oh == 0 || ow == 0 {
        candle_core::bail!(
            "avg pool: a 2x2 window does not fit a {}x{} input",
            x.h,
            x.w
        )
    }
    let mut data = vec![0f32; x.n * oh * ow * c];
    data.par_chunks_mut(ow * c)
        .enumerate()
        .for_each(|(row, dst)| {
            compiled_for!(isa, || {
                let (img, oy) = (row / oh, row % oh);
                let mut taps = vec![0f32; 4 * c];
                for (ox, out) in dst.chunks_exact_mut(c).enumerate() {
                    for (t, (dy, dx)) in [(0, 0), (0, 1), (1, 0), (1, 1)].into_iter().enumerate() {
                        let px =
                            &x.data[((img * x.h + 2 * oy + dy) * x.w + 2 * ox + dx) * c..][..c];
                        let tap = &mut taps[t * c..(t + 1) * c];
                        match pro {
                            Some(p) => p.apply(px, tap),
                            None => tap.copy_from_slice(px),
                        }
                    }
                    for (i, o) in out.iter_mut().enumerate() {
                        *o = (taps[i] + taps[c + i] + taps[2 * c + i] + taps[3 * c + i]) * 0.25;
                    }
                }
            })
        });
    Ok(Act {
        n: x.n,
        h: oh,
        w: ow,
        c,
        data,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::kernels::testing::{max_abs_diff, reference_prologue};
    use candle_core::{Device, Tensor};

    #[test]
    fn pooling_matches_candle() {
        let dev = Device::Cpu;
        // Odd sizes: the max pool's padding and the average pool's dropped edge both matter.
        let x = Tensor::randn(0f32, 1.0, (2, 6, 11, 9), &dev).unwrap();
        let xa = Act::from_nchw(&x).unwrap();

        let padded = Tensor::full(f32::MIN, (2, 6, 13, 11), &dev)
            .unwrap()
            .slice_assign(&[0..2, 0..6, 1..12, 1..10], &x)
            .unwrap();
        let expected = padded.max_pool2d_with_stride(3, 2).unwrap();
        for isa in Isa::supported() {
            let ours = max_pool_3x3_s2(&xa, isa).unwrap().to_nchw(&dev).unwrap();
            assert_eq!(max_abs_diff(&ours, &expected), 0.0, "{isa}");
        }

        let scale = [0.5f32, -1.0, 2.0, 0.0, 1.0, 3.0];
        let shift = [0.1f32, 0.2, -0.3, 0.4, 0.0, -1.0];
        let pro = Prologue {
            scale: &scale,
            shift: &shift,
        };
        let activated = reference_prologue(&x, &scale, &shift);

        for isa in Isa::supported() {
            let ours = avg_pool_2x2(&xa, None, isa).unwrap().to_nchw(&dev).unwrap();
            let expected = x.avg_pool2d_with_stride(2, 2).unwrap();
            assert!(max_abs_diff(&ours, &expected) < 1e-6, "{isa}");
            let ours = avg_pool_2x2(&xa, Some(pro), isa)
                .unwrap()
                .to_nchw(&dev)
                .unwrap();
            let expected = activated.avg_pool2d_with_stride(2, 2).unwrap();
            assert!(max_abs_diff(&ours, &expected) < 1e-6, "{isa}");
        }

        let ours = xa.global_avg_pool(None, &dev).unwrap();
        let expected = x.mean((2, 3)).unwrap();
        assert!(max_abs_diff(&ours, &expected) < 1e-5);
        let ours = xa.global_avg_pool(Some(pro), &dev).unwrap();
        let expected = activated.mean((2, 3)).unwrap();
        assert!(max_abs_diff(&ours, &expected) < 1e-5);
    }
}
