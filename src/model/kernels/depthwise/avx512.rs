//! The AVX-512 depthwise kernel: per pixel, up to 64 channels (four registers) accumulated
//! over all taps, the last few channels under a mask.

use std::arch::x86_64::*;

use super::Rows;
use crate::model::kernels::math::registers;
use crate::model::kernels::Activation;

const L: usize = 16;

/// One output row into `dst`.
///
/// # Safety
/// The CPU must have AVX-512 F; `dst` must be valid for the row's `ow * c` values, and the
/// input must hold every pixel the taps name.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn row(rows: &Rows, act: Activation, dst: *mut f32) {
    let c = rows.conv.c;
    let (x, w, bias) = (
        rows.x.data.as_ptr(),
        rows.conv.weight.as_ptr(),
        rows.conv.bias.as_ptr(),
    );
    rows.for_each_pixel(|taps, ox| {
        // SAFETY (whole closure): channel blocks stay within `c`, masked past it; the
        // offsets come from `for_each_pixel`, inside the input and the weight.
        unsafe {
            let out = dst.add(ox * c);
            let mut c0 = 0;
            while c0 + 4 * L <= c {
                block::<4>(taps, x, w, bias, out, c0, act);
                c0 += 4 * L;
            }
            while c0 + L <= c {
                block::<1>(taps, x, w, bias, out, c0, act);
                c0 += L;
            }
            if c0 < c {
                let mask: __mmask16 = (1u16 << (c - c0)) - 1;
                let mut acc = _mm512_maskz_loadu_ps(mask, bias.add(c0));
                for &(t, off) in taps {
                    let v = _mm512_maskz_loadu_ps(mask, x.add(off + c0));
                    let k = _mm512_maskz_loadu_ps(mask, w.add(t + c0));
                    acc = _mm512_fmadd_ps(v, k, acc);
                }
                _mm512_mask_storeu_ps(out.add(c0), mask, registers::avx512(acc, act));
            }
        }
    });
}

/// Channels `c0..c0 + 16V` of one pixel.
///
/// # Safety
/// As [`row`], for these channels.
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn block<const V: usize>(
    taps: &[(usize, usize)],
    x: *const f32,
    w: *const f32,
    bias: *const f32,
    out: *mut f32,
    c0: usize,
    act: Activation,
) {
    // SAFETY (whole body): the caller keeps `c0 + 16V` within the channels.
    unsafe {
        let mut acc = [_mm512_setzero_ps(); V];
        for (v, a) in acc.iter_mut().enumerate() {
            *a = _mm512_loadu_ps(bias.add(c0 + v * L));
        }
        for &(t, off) in taps {
            for (v, a) in acc.iter_mut().enumerate() {
                let px = _mm512_loadu_ps(x.add(off + c0 + v * L));
                let k = _mm512_loadu_ps(w.add(t + c0 + v * L));
                *a = _mm512_fmadd_ps(px, k, *a);
            }
        }
        for (v, a) in acc.into_iter().enumerate() {
            _mm512_storeu_ps(out.add(c0 + v * L), registers::avx512(a, act));
        }
    }
}
