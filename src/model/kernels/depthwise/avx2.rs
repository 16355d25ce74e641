//! The AVX2+FMA depthwise kernel: up to 16 channels (two registers) of up to four adjacent
//! pixels accumulated over all taps; the last channels that do not fill a register take a
//! scalar loop.

use std::arch::x86_64::*;

use super::{Operands, Rows};
use crate::model::kernels::math::{self, registers};
use crate::model::kernels::Activation;

const L: usize = 8;

/// Output pixels computed together along the interior of a row, sharing each weight load
/// (see the AVX-512 kernel). Four pixels of two registers each: 8 sums and 2 weights of
/// the 16 registers.
const P: usize = 4;

/// One output row into `dst`.
///
/// # Safety
/// The CPU must have AVX2 and FMA; `dst` must be valid for the row's `ow * c` values, and
/// the input must hold every pixel the taps name.
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn row(rows: &Rows, act: Activation, dst: *mut f32) {
    let (k, step) = (rows.operands(act), rows.step());
    let c = k.c;
    rows.for_each_run::<P>(|taps, ox, run| {
        // SAFETY (both arms): the pixels' taps are inside the input (a run's as
        // `for_each_run` gives them) and their outputs inside the row.
        unsafe {
            if run {
                pixels::<P>(&k, taps, step, dst.add(ox * c));
            } else {
                pixels::<1>(&k, taps, step, dst.add(ox * c));
            }
        }
    });
}

/// All channels of `R` adjacent output pixels from `out` on, pixel `p`'s input offsets
/// those of `taps` plus `p * step`.
///
/// # Safety
/// As [`row`], for these pixels.
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn pixels<const R: usize>(
    k: &Operands,
    taps: &[(usize, usize)],
    step: usize,
    out: *mut f32,
) {
    let c = k.c;
    let mut c0 = 0;
    // SAFETY (all calls): channel blocks stay within `c`.
    unsafe {
        while c0 + 2 * L <= c {
            block::<R, 2>(k, taps, step, out, c0);
            c0 += 2 * L;
        }
        while c0 + L <= c {
            block::<R, 1>(k, taps, step, out, c0);
            c0 += L;
        }
        for p in 0..R {
            for ch in c0..c {
                let mut acc = *k.bias.add(ch);
                for &(t, off) in taps {
                    acc = (*k.x.add(off + p * step + ch)).mul_add(*k.w.add(t + ch), acc);
                }
                *out.add(p * c + ch) = math::activate(k.act, acc);
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
