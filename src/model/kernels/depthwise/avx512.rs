//! The AVX-512 depthwise kernel: up to 64 channels (four registers) of up to four adjacent
//! pixels accumulated over all taps, the last few channels under a mask.

use std::arch::x86_64::*;
use std::ops::Range;

use super::{Operands, Rows};
use crate::model::kernels::math::registers;
use crate::model::kernels::Activation;

const L: usize = 16;

/// Output pixels computed together along the interior of a row: each weight vector is
/// loaded once for all of them (a pixel at a time, every FMA needs a load of its weight as
/// well as of its input, and loads, not FMAs, bound the kernel).
const P: usize = 4;

/// Taps x channels from which a row runs each block of channels over several pixels (see
/// the AVX2 kernel's `GROUPED_FROM`). Lower than AVX2's 8192: EfficientNet-Lite0 at batch
/// 1, per-layer medians (min over 4 interleaved runs), AMD EPYC Zen 4, 2 threads: its 5x5
/// layers at 28x28x240 and 14x14x480 (6000 per thread) 75.9 -> 66.0 and 59.2 -> 51.5 us
/// from 8192 to 4096; below 2048 its 3x3 layer at 56x56x144 (1296) went 64 -> 75 us.
const GROUPED_FROM: usize = 4096;

/// Channels `chans` of one output row into `dst`: a pixel (or run) at a time over all those
/// channels, or where a pixel's weights and inputs outgrow L1 ([`GROUPED_FROM`]), a few
/// pixels at a time ([`Rows::for_each_calls`]), each block of channels over all of them
/// before the next.
///
/// # Safety
/// The CPU must have AVX-512 F; `dst` must be valid for the row's `ow * c` values, `chans`
/// within the channels, and the input must hold every pixel the taps name.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn row(rows: &Rows, act: Activation, dst: *mut f32, chans: Range<usize>) {
    let (k, step) = (rows.operands(act), rows.step());
    let c = k.c;
    // At stride 1 a run's taps are whole kernel rows, one pixel apart.
    let slide = if rows.conv.stride == 1 {
        rows.conv.k
    } else {
        0
    };
    // SAFETY (both arms): the pixels' taps are inside the input (a run's as `for_each_run`
    // gives them), their outputs inside the row and the channels within `c`.
    let call = |taps: &[(usize, usize)], ox: usize, run: bool, chans: Range<usize>| unsafe {
        if run {
            pixels::<P>(&k, taps, step, dst.add(ox * c), chans, slide);
        } else {
            pixels::<1>(&k, taps, step, dst.add(ox * c), chans, 0);
        }
    };
    rows.schedule::<P>(chans, GROUPED_FROM, 4 * L, call);
}

/// Channels `chans` of `R` adjacent output pixels from `out` on, pixel `p`'s input offsets
/// those of `taps` plus `p * step`. `slide`, where not 0: the taps are whole kernel rows of
/// `slide` taps, each one pixel (`step`) after the one before ([`slide`]).
///
/// # Safety
/// As [`row`], for these pixels; `chans` within the channels.
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn pixels<const R: usize>(
    k: &Operands,
    taps: &[(usize, usize)],
    step: usize,
    out: *mut f32,
    chans: Range<usize>,
    slide: usize,
) {
    let (mut c0, c) = (chans.start, chans.end);
    // SAFETY (all calls): channel blocks stay within `c`, masked past it.
    unsafe {
        // Whole 32- then 16-channel blocks by `slide`, for each kernel width it runs.
        macro_rules! slide_widths {
            ($($kw:literal)*) => {
                match slide {
                    $($kw => {
                        while c0 + 2 * L <= c {
                            self::slide::<R, 2, $kw>(k, taps, step, out, c0);
                            c0 += 2 * L;
                        }
                        while c0 + L <= c {
                            self::slide::<R, 1, $kw>(k, taps, step, out, c0);
                            c0 += L;
                        }
                    })*
                    _ => {}
                }
            };
        }
        if R > 1 {
            slide_widths!(3 5 7);
        }
        while c0 + 4 * L <= c {
            block::<R, 4>(k, taps, step, out, c0);
            c0 += 4 * L;
        }
        while c0 + L <= c {
            block::<R, 1>(k, taps, step, out, c0);
            c0 += L;
        }
        if c0 < c {
            let mask: __mmask16 = (1u16 << (c - c0)) - 1;
            for p in 0..R {
                let mut acc = _mm512_maskz_loadu_ps(mask, k.bias.add(c0));
                for &(t, off) in taps {
                    let v = _mm512_maskz_loadu_ps(mask, k.x.add(off + p * step + c0));
                    let wv = _mm512_maskz_loadu_ps(mask, k.w.add(t + c0));
                    acc = _mm512_fmadd_ps(v, wv, acc);
                }
                let acc = registers::avx512(acc, k.act);
                _mm512_mask_storeu_ps(out.add(p * k.c + c0), mask, acc);
            }
        }
    }
}

/// Channels `c0..c0 + 16V` of `R` adjacent pixels at stride 1, `taps` whole kernel rows of
/// `KW` (pixel `p`, tap `kx` of a row reads the input `p + kx` pixels into it): each input
/// vector of a row is loaded once for all the pixels that use it, `R + KW - 1` loads where
/// [`block`] makes `R * KW`, and the row's weights once. Loads, not FMAs, bound the kernel
/// (see [`P`]). Each pixel's sum is taken in [`block`]'s order: bias, then tap by tap.
///
/// # Safety
/// As [`pixels`], for these channels.
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn slide<const R: usize, const V: usize, const KW: usize>(
    k: &Operands,
    taps: &[(usize, usize)],
    step: usize,
    out: *mut f32,
    c0: usize,
) {
    debug_assert!(taps.len().is_multiple_of(KW));
    // SAFETY (whole body): the caller keeps `c0 + 16V` within the channels and the
    // pixels' taps inside the input; tap `kx` of a row is its first plus `kx` pixels.
    unsafe {
        let bias: [__m512; V] = std::array::from_fn(|v| _mm512_loadu_ps(k.bias.add(c0 + v * L)));
        let mut acc = [bias; R];
        for row in taps.chunks_exact(KW) {
            let (t0, off0) = row[0];
            debug_assert!((0..KW).all(|kx| row[kx] == (t0 + kx * k.c, off0 + kx * step)));
            let w: [[__m512; V]; KW] = std::array::from_fn(|kx| {
                std::array::from_fn(|v| _mm512_loadu_ps(k.w.add(t0 + kx * k.c + c0 + v * L)))
            });
            for i in 0..R + KW - 1 {
                let x = k.x.add(off0 + i * step + c0);
                let x: [__m512; V] = std::array::from_fn(|v| _mm512_loadu_ps(x.add(v * L)));
                // The pixels that read input `i` of the row, as their tap `i - p`.
                for (p, acc) in acc.iter_mut().enumerate() {
                    if p <= i && i - p < KW {
                        for (v, a) in acc.iter_mut().enumerate() {
                            *a = _mm512_fmadd_ps(x[v], w[i - p][v], *a);
                        }
                    }
                }
            }
        }
        for (p, acc) in acc.into_iter().enumerate() {
            for (v, a) in acc.into_iter().enumerate() {
                let a = registers::avx512(a, k.act);
                _mm512_storeu_ps(out.add(p * k.c + c0 + v * L), a);
            }
        }
    }
}

/// Channels `c0..c0 + 16V` of `R` adjacent pixels: each pixel's sum in the same order
/// (bias, then tap by tap) as alone, so a pixel's value does not depend on its block.
///
/// # Safety
/// As [`pixels`], for these channels.
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn block<const R: usize, const V: usize>(
    k: &Operands,
    taps: &[(usize, usize)],
    step: usize,
    out: *mut f32,
    c0: usize,
) {
    // SAFETY (whole body): the caller keeps `c0 + 16V` within the channels and the
    // pixels' taps inside the input.
    unsafe {
        let bias: [__m512; V] = std::array::from_fn(|v| _mm512_loadu_ps(k.bias.add(c0 + v * L)));
        let mut acc = [bias; R];
        for &(t, off) in taps {
            let w: [__m512; V] = std::array::from_fn(|v| _mm512_loadu_ps(k.w.add(t + c0 + v * L)));
            for (p, acc) in acc.iter_mut().enumerate() {
                let x = k.x.add(off + p * step + c0);
                for (v, a) in acc.iter_mut().enumerate() {
                    *a = _mm512_fmadd_ps(_mm512_loadu_ps(x.add(v * L)), w[v], *a);
                }
            }
        }
        for (p, acc) in acc.into_iter().enumerate() {
            for (v, a) in acc.into_iter().enumerate() {
                let a = registers::avx512(a, k.act);
                _mm512_storeu_ps(out.add(p * k.c + c0 + v * L), a);
            }
        }
    }
}
