//! A dense convolution and the layer after it that reads a few of its rows per output row:
//! the depthwise convolution of an inverted residual block (its expansion and depthwise
//! layers), or the max pool of ResNet's and DenseNet's stems. The two are computed a strip
//! of rows at a time: each thread makes the few rows of the convolution's output that its
//! next output rows read, into a buffer that stays in its L2, and runs the second layer's
//! rows from there. Run one after the other, the first output (4.8 MB at 112x112x96, 3.2 MB
//! at ResNet's 112x112x64) is written out past L2 and read back.
//!
//! Each value is computed by the same kernels, in the same order, as the two layers
//! compute it apart, so the result is the same to the bit.

use candle_core::Result;

use super::par::{par_blocks, SendPtr};
use super::pool::{max_pool_geometry, max_pool_row};
use super::scratch::with_strip_scratch;
use super::{Act, Activation, DepthwiseConv, GemmConv, Isa, Pad2d, View};

/// When and in what strips the two layers are fused.
#[derive(Debug, Clone, Copy)]
struct Strips {
    /// Bytes of the expanded activation per thread from which the two layers are fused:
    /// below it, the activation stays in L2 between them anyway.
    fuse_from: usize,
    /// Bytes of the expanded rows a thread holds at once (at least the rows one output row
    /// reads).
    held: usize,
}

/// Intel Xeon (Sapphire Rapids class, AVX-512, L2 2 MiB a core), 2 threads, EfficientNet-
/// Lite0 at batch 1, `classify bench` with environment switches on one binary, medians of
/// interleaved rounds. Five rounds, strips of 256 KiB: unfused 239.1 images/s; fused from
/// 1 MiB a thread (the 112x112 stage only) 252.4, from 400 KB (the 56x56 stage too) 259.7,
/// from 150 KB (the 28x28 stage too) 248.5. Six rounds, from 400 KB: unfused 240.8; strips
/// of 180 KB 250.0, 256 KiB 255.8, 512 KiB 258.6, 1 MiB 254.6.
const STRIPS: Strips = Strips {
    fuse_from: 512 << 10,
    held: 512 << 10,
};

/// `dw_act(dw(conv_act(conv(x))))`, a strip at a time; `None` where the pair is not fused
/// (the caller then runs the two layers one after the other): where `conv` does not run as
/// one GEMM by a panel kernel, or the expanded activation fits in L2 anyway.
#[allow(clippy::too_many_arguments)]
pub fn conv_then_depthwise(
    conv: &GemmConv,
    conv_pad: Pad2d,
    conv_act: Activation,
    dw: &DepthwiseConv,
    dw_pad: Pad2d,
    dw_act: Activation,
    x: View,
) -> Result<Option<Act>> {
    let then = Then::Depthwise {
        dw,
        pad: dw_pad,
        act: dw_act,
    };
    fused(conv, conv_pad, conv_act, then, x, STRIPS)
}

/// `max_pool_3x3_s2(conv_act(conv(x)))` ([`super::max_pool_3x3_s2`], its rows compiled for
/// `isa`), a strip at a time; `None` where the two are not fused, as for
/// [`conv_then_depthwise`].
pub fn conv_then_max_pool(
    conv: &GemmConv,
    conv_pad: Pad2d,
    conv_act: Activation,
    x: View,
    isa: Isa,
) -> Result<Option<Act>> {
    fused(conv, conv_pad, conv_act, Then::MaxPool { isa }, x, STRIPS)
}

/// The layer that reads the convolution's output a strip of rows at a time.
#[derive(Clone, Copy)]
enum Then<'a> {
    Depthwise {
        dw: &'a DepthwiseConv,
        pad: Pad2d,
        act: Activation,
    },
    /// `MaxPool2d(kernel=3, stride=2, padding=1)`.
    MaxPool { isa: Isa },
}

impl Then<'_> {
    /// Kernel size, stride and padding.
    fn geometry(self) -> (usize, usize, Pad2d) {
        match self {
            Then::Depthwise { dw, pad, .. } => {
                let (k, s) = dw.geometry();
                (k, s, pad)
            }
            Then::MaxPool { .. } => max_pool_geometry(),
        }
    }

    /// Output row `oy` (`ow` pixels) into `dst`, from `strip`: rows `from..` of an image
    /// `h` rows high.
    ///
    /// # Safety
    /// `dst` must be valid for writes of the row, which no other thread touches meanwhile;
    /// `strip` must hold every input row that output row reads.
    unsafe fn strip_row(
        self,
        strip: View,
        h: usize,
        from: usize,
        oy: usize,
        ow: usize,
        dst: *mut f32,
    ) {
        match self {
            // SAFETY: the caller's contract.
            Then::Depthwise { dw, pad, act } => unsafe {
                dw.strip_row(strip, h, from, oy, ow, pad, act, dst)
            },
            Then::MaxPool { isa } => {
                // SAFETY: the caller's contract: the row's `ow * c` values are ours.
                let dst = unsafe { std::slice::from_raw_parts_mut(dst, ow * strip.c) };
                max_pool_row(strip.data, h, strip.w, strip.c, from, oy, dst, isa);
            }
        }
    }
}

/// [`conv_then_depthwise`] or [`conv_then_max_pool`] with the strips `strips`.
fn fused(
    conv: &GemmConv,
    conv_pad: Pad2d,
    conv_act: Activation,
    then: Then,
    x: View,
    strips: Strips,
) -> Result<Option<Act>> {
    let Some(blocks) = conv.row_blocks(x, conv_pad, conv_act)? else {
        return Ok(None);
    };
    let c = conv.out_channels();
    if let Then::Depthwise { dw, .. } = then {
        if dw.channels() != c {
            candle_core::bail!(
                "depthwise conv: input has {c} channels, expects {}",
                dw.channels()
            )
        }
    }
    let threads = rayon::current_num_threads();
    let (eh, ew) = blocks.output_size();
    let (k, s, then_pad) = then.geometry();
    let (oh, ow) = then_pad.output_size(eh, ew, k, s)?;
    let row_len = ew * c;
    let expanded_bytes = x.n * eh * row_len * std::mem::size_of::<f32>();
    let out_rows = x.n * oh;
    if expanded_bytes < strips.fuse_from * threads || out_rows < 2 * threads {
        return Ok(None);
    }
    // Output rows a strip, and the expanded rows it reads at most.
    let strip_rows = |r: usize| (r - 1) * s + k;
    let row_bytes = row_len * std::mem::size_of::<f32>();
    let per_strip = (1..=oh)
        .take_while(|&r| r == 1 || strip_rows(r) * row_bytes <= strips.held)
        .last()
        .unwrap_or(1);
    let held_max = strip_rows(per_strip);
    let top = then_pad.top;
    let len = out_rows * ow * c;
    let mut data: Vec<f32> = Vec::with_capacity(len);
    let out = SendPtr(data.as_mut_ptr());
    par_blocks(out_rows, out_rows.div_ceil(threads), |first, count| {
        with_strip_scratch(held_max * row_len, |buf| {
            // The expanded rows `lo..hi` of image `img` that `buf` holds, in order.
            let (mut img, mut lo, mut hi) = (usize::MAX, 0, 0);
            let mut row = first;
            while row < first + count {
                let (i, oy) = (row / oh, row % oh);
                let end = (oy + per_strip).min(oh).min(oy + first + count - row);
                // The expanded rows output rows `oy..end` read (inside the image).
                let need_lo = (oy * s).saturating_sub(top).min(eh);
                let need_hi = ((end - 1) * s + k).saturating_sub(top).min(eh);
                if i != img || need_lo >= hi {
                    (img, lo, hi) = (i, need_lo, need_lo);
                } else if need_lo > lo {
                    // Keep the rows this strip reads again at the front.
                    buf.copy_within((need_lo - lo) * row_len..(hi - lo) * row_len, 0);
                    lo = need_lo;
                }
                if need_hi > hi {
                    let at = (hi - lo) * row_len;
                    // SAFETY: rows `hi..need_hi` fit in `buf` after the `hi - lo` it holds
                    // (at most `held_max` rows in all); `buf` is this thread's.
                    unsafe {
                        blocks.rows_into(
                            (img * eh + hi) * ew,
                            (need_hi - hi) * ew,
                            buf[at..].as_mut_ptr(),
                        )
                    };
                    hi = need_hi;
                }
                let strip = View {
                    data: &buf[..(hi - lo) * row_len],
                    n: 1,
                    h: hi - lo,
                    w: ew,
                    c,
                    stride: c,
                };
                for y in oy..end {
                    // SAFETY: output row `y` of image `img` is this thread's (`par_blocks`
                    // gives disjoint ranges of rows) and lies in `data`'s capacity; `strip`
                    // holds every expanded row it reads.
                    unsafe {
                        let dst = out.get().add((img * oh + y) * ow * c);
                        then.strip_row(strip, eh, lo, y, ow, dst);
                    }
                }
                row += end - oy;
            }
        })
    });
    // SAFETY: the threads wrote every output row.
    unsafe { data.set_len(len) };
    Ok(Some(Act {
        n: x.n,
        h: oh,
        w: ow,
        c,
        data,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::kernels::testing::*;
    use crate::model::kernels::Isa;
    use candle_core::{Device, Tensor};

    /// The fused pair gives the two layers' result to the bit, whatever the strips, the
    /// threads and the rows each thread gets (across images too).
    #[test]
    fn fused_layers_match_the_two_layers_to_the_bit() {
        let dev = Device::Cpu;
        let pools = [threads(1), threads(2), threads(3)];
        // (images, h, w, cin, mid, conv k, conv stride, conv pad, dw k, dw stride, dw pad)
        for (n, h, w, cin, mid, ck, cs, cpad, k, s, pad) in [
            // Lite0's 112x112 expansion and stride-2 depthwise, small.
            (2, 11, 9, 16, 48, 1, 1, p(0, 0, 0, 0), 3, 2, p(0, 1, 0, 1)),
            (1, 12, 7, 8, 24, 1, 1, p(0, 0, 0, 0), 3, 2, p(1, 1, 1, 1)),
            // Stride 1, 3x3 and 5x5 (rows read again by the next strip).
            (3, 9, 10, 24, 144, 1, 1, p(0, 0, 0, 0), 3, 1, p(1, 1, 1, 1)),
            (2, 13, 6, 40, 80, 1, 1, p(0, 0, 0, 0), 5, 1, p(2, 2, 2, 2)),
            (2, 10, 10, 16, 32, 1, 1, p(0, 0, 0, 0), 5, 2, p(1, 2, 1, 2)),
            // A gathered producer (a stem: 3x3 stride 2 over 3 channels).
            (2, 17, 15, 3, 32, 3, 2, p(1, 1, 1, 1), 3, 1, p(1, 1, 1, 1)),
        ] {
            let x = Tensor::randn(0f32, 1.0, (n, cin, h, w), &dev).unwrap();
            let cw = Tensor::randn(0f32, 1.0, (mid, cin, ck, ck), &dev).unwrap();
            let cb = Tensor::randn(0f32, 1.0, mid, &dev).unwrap();
            let dwt = Tensor::randn(0f32, 1.0, (mid, 1, k, k), &dev).unwrap();
            let db = Tensor::randn(0f32, 1.0, mid, &dev).unwrap();
            let xa = Act::from_nchw(&x).unwrap();
            for isa in levels() {
                let conv = GemmConv::pack(&cw, Some(&cb), cs, isa).unwrap();
                let dw = DepthwiseConv::pack(&dwt, Some(&db), s, isa).unwrap();
                for (act, dw_act) in [
                    (Activation::Relu6, Activation::Relu6),
                    (Activation::Silu, Activation::HardSwish),
                ] {
                    let apart = |pool: &rayon::ThreadPool| {
                        pool.install(|| {
                            let y = conv.forward(xa.view(), cpad, None, act, None).unwrap();
                            dw.forward(y.view(), pad, dw_act).unwrap()
                        })
                    };
                    let expected = apart(&pools[0]);
                    let row_bytes = expected.w * mid * 4;
                    // One output row a strip, a few, and the whole image.
                    for held in [1, 4 * (s + k) * row_bytes, usize::MAX] {
                        let strips = Strips { fuse_from: 0, held };
                        for pool in &pools {
                            let case = format!(
                                "{n}x{h}x{w} {cin}->{mid} {ck}x{ck}/{cs} dw {k}x{k}/{s} {isa} \
                                 {act:?} strips of {held} bytes, {} threads",
                                pool.current_num_threads()
                            );
                            let ours = pool
                                .install(|| {
                                    fused(
                                        &conv,
                                        cpad,
                                        act,
                                        Then::Depthwise {
                                            dw: &dw,
                                            pad,
                                            act: dw_act,
                                        },
                                        xa.view(),
                                        strips,
                                    )
                                })
                                .unwrap()
                                .unwrap_or_else(|| panic!("not fused: {case}"));
                            assert_same_bits(&ours, &expected, &case);
                            // And the two layers apart on as many threads.
                            assert_eq!(apart(pool).data, expected.data, "{case}");
                        }
                    }
                }
            }
        }
    }

    /// A stem and its max pool fused give the two apart to the bit, as above: odd and even
    /// sizes (the pool's last window inside the input or overhanging it), a 7x7 stride-2
    /// stem over 3 channels (gathered, as ResNet's) and a 1x1 convolution (read in place).
    #[test]
    fn fused_max_pool_matches_the_two_layers_to_the_bit() {
        let dev = Device::Cpu;
        let pools = [threads(1), threads(2), threads(3)];
        // (images, h, w, cin, cout, conv k, conv stride, conv pad)
        for (n, h, w, cin, cout, k, s, pad) in [
            (2, 23, 17, 3, 64, 7, 2, p(3, 3, 3, 3)),
            (1, 28, 30, 3, 24, 7, 2, p(3, 3, 3, 3)),
            (3, 9, 8, 16, 40, 1, 1, p(0, 0, 0, 0)),
            (2, 13, 12, 8, 16, 3, 2, p(1, 1, 1, 1)),
        ] {
            let x = Tensor::randn(0f32, 1.0, (n, cin, h, w), &dev).unwrap();
            let cw = Tensor::randn(0f32, 1.0, (cout, cin, k, k), &dev).unwrap();
            let cb = Tensor::randn(0f32, 1.0, cout, &dev).unwrap();
            let xa = Act::from_nchw(&x).unwrap();
            for isa in levels() {
                let conv = GemmConv::pack(&cw, Some(&cb), s, isa).unwrap();
                for act in [Activation::Relu, Activation::Identity] {
                    let apart = |pool: &rayon::ThreadPool| {
                        pool.install(|| {
                            let y = conv.forward(xa.view(), pad, None, act, None).unwrap();
                            super::super::max_pool_3x3_s2(&y, isa).unwrap()
                        })
                    };
                    let expected = apart(&pools[0]);
                    // The convolution's output rows: a strip of five, and one of a row.
                    let row_bytes = ((w + pad.left + pad.right - k) / s + 1) * cout * 4;
                    for held in [1, 5 * row_bytes, usize::MAX] {
                        let strips = Strips { fuse_from: 0, held };
                        for pool in &pools {
                            let case = format!(
                                "{n}x{h}x{w} {cin}->{cout} {k}x{k}/{s} {isa} {act:?} strips of \
                                 {held} bytes, {} threads",
                                pool.current_num_threads()
                            );
                            let then = Then::MaxPool { isa };
                            let ours = pool
                                .install(|| fused(&conv, pad, act, then, xa.view(), strips))
                                .unwrap()
                                .unwrap_or_else(|| panic!("not fused: {case}"));
                            assert_same_bits(&ours, &expected, &case);
                        }
                    }
                }
            }
        }
    }

    /// Small expanded activations, and expansions without a panel kernel, are left to the
    /// two layers.
    #[test]
    fn small_or_unpanelled_pairs_are_not_fused() {
        let dev = Device::Cpu;
        let x = Act::from_nchw(&Tensor::randn(0f32, 1.0, (1, 16, 28, 28), &dev).unwrap()).unwrap();
        let pair = |mid: usize| {
            let cw = Tensor::randn(0f32, 1.0, (mid, 16, 1, 1), &dev).unwrap();
            let dwt = Tensor::randn(0f32, 1.0, (mid, 1, 3, 3), &dev).unwrap();
            let conv = GemmConv::pack(&cw, None, 1, Isa::best()).unwrap();
            let dw = DepthwiseConv::pack(&dwt, None, 1, Isa::best()).unwrap();
            (conv, dw)
        };
        let two = threads(2);
        let run = |(conv, dw): &(GemmConv, DepthwiseConv), strips| {
            let (pad, act) = (p(1, 1, 1, 1), Activation::Relu6);
            two.install(|| {
                let then = Then::Depthwise { dw, pad, act };
                fused(conv, p(0, 0, 0, 0), act, then, x.view(), strips)
            })
            .unwrap()
        };
        let everything = Strips {
            fuse_from: 0,
            held: usize::MAX,
        };
        // 28x28x240 is 750 KB, 376 KB a thread: fused only where asked to fuse everything.
        let lite0 = pair(240);
        assert!(run(&lite0, STRIPS).is_none());
        assert!(run(&lite0, everything).is_some());
        // No channel count of 7 has panels.
        assert!(run(&pair(7), everything).is_none());
    }
}
