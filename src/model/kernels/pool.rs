//! Pooling on NHWC activations, in parallel over output rows and vectorised over channels:
//! ResNet's and DenseNet's stem max pool and DenseNet's transition average pool.

use candle_core::Result;
use rayon::prelude::*;

use super::isa::compiled_for;
use super::scratch::with_tile_scratch;
use super::{Act, Isa, Pad2d, Prologue};

/// `MaxPool2d(kernel=3, stride=2, padding=1)`, padding that never wins (as PyTorch's),
/// each row compiled for `isa`. ResNet's and DenseNet's stems pool as they go instead
/// ([`super::fused::conv_then_max_pool`]).
pub fn max_pool_3x3_s2(x: &Act, isa: Isa) -> Result<Act> {
    let (oh, ow) = max_pool_size(x.h, x.w)?;
    let mut data = vec![0f32; x.n * oh * ow * x.c];
    let image_len = x.h * x.w * x.c;
    data.par_chunks_mut(ow * x.c)
        .enumerate()
        .for_each(|(row, dst)| {
            let (img, oy) = (row / oh, row % oh);
            let rows = &x.data[img * image_len..][..image_len];
            max_pool_row(rows, x.h, x.w, x.c, 0, oy, dst, isa);
        });
    Ok(Act {
        n: x.n,
        h: oh,
        w: ow,
        c: x.c,
        data,
    })
}

/// The window, stride and padding of [`max_pool_3x3_s2`].
pub(super) fn max_pool_geometry() -> (usize, usize, Pad2d) {
    (3, 2, Pad2d::uniform(1))
}

/// The output size of [`max_pool_3x3_s2`] on an `h x w` input.
fn max_pool_size(h: usize, w: usize) -> Result<(usize, usize)> {
    let (k, s, pad) = max_pool_geometry();
    pad.output_size(h, w, k, s)
}

/// Output row `oy` of [`max_pool_3x3_s2`] on an image `h` rows of `w` pixels of `c`
/// channels high, of which `rows` holds rows `from..` (every row the window reads), into
/// `dst` (a row of the output). The maximum of the window's (up to) three input rows is
/// taken once, into a row of scratch, then that of three adjacent pixels of it: each input
/// value is loaded once, in loops over contiguous values.
#[allow(clippy::too_many_arguments)]
pub(super) fn max_pool_row(
    rows: &[f32],
    h: usize,
    w: usize,
    c: usize,
    from: usize,
    oy: usize,
    dst: &mut [f32],
    isa: Isa,
) {
    let row_len = w * c;
    let input_row = |iy: usize| &rows[(iy - from) * row_len..][..row_len];
    // The window's rows inside the image (the padding never wins).
    let (top, bottom) = ((2 * oy).saturating_sub(1), (2 * oy + 1).min(h - 1));
    with_tile_scratch(row_len, |rows_max| {
        compiled_for!(isa, || {
            rows_max.copy_from_slice(input_row(top));
            for iy in top + 1..=bottom {
                for (m, &v) in rows_max.iter_mut().zip(input_row(iy)) {
                    *m = m.max(v);
                }
            }
            for (ox, out) in dst.chunks_exact_mut(c).enumerate() {
                let (left, right) = ((2 * ox).saturating_sub(1), (2 * ox + 1).min(w - 1));
                out.copy_from_slice(&rows_max[left * c..][..c]);
                for ix in left + 1..=right {
                    for (o, &v) in out.iter_mut().zip(&rows_max[ix * c..][..c]) {
                        *o = o.max(v);
                    }
                }
            }
        })
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
