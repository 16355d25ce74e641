//! The AVX2+FMA depthwise kernel: 16 channels (two registers) of four adjacent pixels, or
//! 32 of a lone pixel, accumulated over all taps, the last channels that do not fill a
//! register in a scalar loop; or on small maps at 5x5 ([`tiled`]), the tiles of
//! [`super::tile`] on 8-lane registers, 8 channels a tile (7 sums, 5 weights and an input
//! of the 16 registers).

use std::arch::x86_64::*;
use std::ops::Range;

use super::tile::{self, Lanes};
use super::{Operands, Rows};
use crate::model::kernels::math::{self, registers};
use crate::model::kernels::Activation;

const L: usize = 8;

/// Output pixels computed together along the interior of a row, sharing each weight load
/// (a pixel at a time, every FMA needs a load of its weight as well as of its input, and
/// loads, not FMAs, bound the kernel). Four pixels of two registers each: 8 sums and 2
/// weights of the 16 registers.
const P: usize = 4;

/// Taps x channels (a pixel's weights, and as many inputs) from which a row runs each
/// block of channels over several pixels: 8192 values are 32 KiB, an L1 data cache. One
/// thread on an AMD Zen 3, EfficientNet-Lite0's 5x5 layers at 14x14x672 and 7x7x1152
/// went 12% and 33% faster that way, while its 3x3 ones (up to 9 x 480) went 10-27%
/// slower, being cheap to run a pixel at a time and short of work per call.
const GROUPED_FROM: usize = 8192;

/// Whether a row runs by [`tile::row`]: 5x5 filters at stride 1 on maps up to 14 wide,
/// whose rows hold few runs of [`P`] interior pixels (none at 7 wide), so that most pixels
/// run alone, with two loads an FMA. EfficientNet-Lite0 at batch 1, per-layer medians (min
/// over 5 interleaved runs), AVX2 forced on an AMD EPYC Zen 4, 2 threads: tiles took its
/// 5x5 layers at 14x14 from 63-82 to 51-66 us and at 7x7 from 43-45 to 32-34, but its
/// 3x3 ones at 56x56 and 112x112 (stride 2) from 90 and 160 to 110 and 216, and the 5x5
/// one at 28x28 from 94 to 112. Not measured on an AVX2-only CPU.
fn tiled(rows: &Rows) -> bool {
    <__m256 as Lanes>::tiles(rows.conv.k, rows.conv.stride) && rows.ow <= 14
}

/// Channels `chans` of one output row into `dst`: by [`tile::row`] where [`tiled`]; else a
/// pixel (or run) at a time over all those channels, or where a pixel's weights and inputs
/// outgrow L1 ([`GROUPED_FROM`]), a few pixels at a time ([`Rows::for_each_calls`]), each
/// block of channels over all of them before the next.
///
/// # Safety
/// The CPU must have AVX2 and FMA; `dst` must be valid for the row's `ow * c` values,
/// `chans` within the channels, and the input must hold every pixel the taps name.
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn row(rows: &Rows, act: Activation, dst: *mut f32, chans: Range<usize>) {
    if tiled(rows) {
        // SAFETY: this function's contract.
        return unsafe { tile::row::<__m256>(rows, act, dst, chans) };
    }
    let (k, step) = (rows.operands(act), rows.step());
    let c = k.c;
    // SAFETY (both arms): the pixels' taps are inside the input (a run's as `for_each_run`
    // gives them), their outputs inside the row and the channels within `c`.
    let call = |taps: &[(usize, usize)], ox: usize, run: bool, chans: Range<usize>| unsafe {
        if run {
            pixels::<P>(&k, taps, step, dst.add(ox * c), chans);
        } else {
            pixels::<1>(&k, taps, step, dst.add(ox * c), chans);
        }
    };
    rows.schedule::<P>(chans, GROUPED_FROM, 4 * L, call);
}

/// Channels `chans` of `R` adjacent output pixels from `out` on, pixel `p`'s input offsets
/// those of `taps` plus `p * step`.
///
/// # Safety
/// As [`row`], for these pixels; `chans` within the channels.
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn pixels<const R: usize>(
    k: &Operands,
    taps: &[(usize, usize)],
    step: usize,
    out: *mut f32,
    chans: Range<usize>,
) {
    let (mut c0, c) = (chans.start, chans.end);
    // SAFETY (all calls): channel blocks stay within `c`.
    unsafe {
        if R == 1 {
            // A lone pixel's sums are chains of dependent FMAs, one per tap: four
            // registers of channels keep enough of them in flight to hide the latency.
            while c0 + 4 * L <= c {
                block::<1, 4>(k, taps, step, out, c0);
                c0 += 4 * L;
            }
        }
        while c0 + 2 * L <= c {
            block::<R, 2>(k, taps, step, out, c0);
            c0 += 2 * L;
        }
        while c0 + L <= c {
            block::<R, 1>(k, taps, step, out, c0);
            c0 += L;
        }
        tail::<R>(k, taps, step, out, c0..c);
    }
}

/// Channels `chans` (fewer than 8) of `R` adjacent pixels, one at a time.
///
/// # Safety
/// As [`block`], for these channels.
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn tail<const R: usize>(
    k: &Operands,
    taps: &[(usize, usize)],
    step: usize,
    out: *mut f32,
    chans: Range<usize>,
) {
    // SAFETY (whole body): the caller keeps the pixels' taps inside the input and their
    // outputs inside the row.
    unsafe {
        for p in 0..R {
            for ch in chans.clone() {
                let mut acc = *k.bias.add(ch);
                for &(t, off) in taps {
                    acc = (*k.x.add(off + p * step + ch)).mul_add(*k.w.add(t + ch), acc);
                }
                *out.add(p * k.c + ch) = math::activate(k.act, acc);
            }
        }
    }
}

/// Channels `c0..c0 + 8V` of `R` adjacent pixels, each pixel's sum in the same order
/// (bias, then tap by tap) as alone.
///
/// # Safety
/// As [`pixels`], for these channels.
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn block<const R: usize, const V: usize>(
    k: &Operands,
    taps: &[(usize, usize)],
    step: usize,
    out: *mut f32,
    c0: usize,
) {
    // SAFETY (whole body): the caller keeps `c0 + 8V` within the channels and the
    // pixels' taps inside the input.
    unsafe {
        let bias: [__m256; V] = std::array::from_fn(|v| _mm256_loadu_ps(k.bias.add(c0 + v * L)));
        let mut acc = [bias; R];
        for &(t, off) in taps {
            let w: [__m256; V] = std::array::from_fn(|v| _mm256_loadu_ps(k.w.add(t + c0 + v * L)));
            for (p, acc) in acc.iter_mut().enumerate() {
                let x = k.x.add(off + p * step + c0);
                for (v, a) in acc.iter_mut().enumerate() {
                    *a = _mm256_fmadd_ps(_mm256_loadu_ps(x.add(v * L)), w[v], *a);
                }
            }
        }
        for (p, acc) in acc.into_iter().enumerate() {
            for (v, a) in acc.into_iter().enumerate() {
                let a = registers::avx2(a, k.act);
                _mm256_storeu_ps(out.add(p * k.c + c0 + v * L), a);
            }
        }
    }
}

// SAFETY (every method): the callers run only where the CPU has AVX2 and FMA (`row`), and
// keep the pointers valid as `Lanes` asks.
impl Lanes for __m256 {
    const L: usize = L;
    const PAIRS_UP_TO: usize = 0;
    type Mask = __m256i;

    #[inline(always)]
    fn tiles(k: usize, stride: usize) -> bool {
        k == 5 && stride == 1
    }

    #[inline(always)]
    unsafe fn mask(n: usize) -> __m256i {
        unsafe {
            let lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
            _mm256_cmpgt_epi32(_mm256_set1_epi32(n.min(L) as i32), lanes)
        }
    }

    #[inline(always)]
    unsafe fn load(p: *const f32) -> Self {
        unsafe { _mm256_loadu_ps(p) }
    }

    #[inline(always)]
    unsafe fn load_masked(p: *const f32, m: __m256i) -> Self {
        unsafe { _mm256_maskload_ps(p, m) }
    }

    #[inline(always)]
    unsafe fn fma(a: Self, b: Self, c: Self) -> Self {
        unsafe { _mm256_fmadd_ps(a, b, c) }
    }

    #[inline(always)]
    unsafe fn activate(self, act: Activation) -> Self {
        unsafe { registers::avx2(self, act) }
    }

    #[inline(always)]
    unsafe fn store(self, p: *mut f32) {
        unsafe { _mm256_storeu_ps(p, self) }
    }

    #[inline(always)]
    unsafe fn store_masked(self, p: *mut f32, m: __m256i) {
        unsafe { _mm256_maskstore_ps(p, m, self) }
    }
}
