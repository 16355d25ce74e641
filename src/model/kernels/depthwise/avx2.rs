//! The AVX2+FMA depthwise kernel: per pixel, up to 32 channels (four registers) accumulated
//! over all taps; the last channels that do not fill a register take a scalar loop.

use std::arch::x86_64::*;

use super::Rows;
use crate::model::kernels::math::{self, registers};
use crate::model::kernels::Activation;

const L: usize = 8;

/// One output row into `dst`.
///
/// # Safety
/// The CPU must have AVX2 and FMA; `dst` must be valid for the row's `ow * c` values, and
/// the input must hold every pixel the taps name.
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn row(rows: &Rows, act: Activation, dst: *mut f32) {
    let c = rows.conv.c;
    let (x, w, bias) = (
        rows.x.data.as_ptr(),
        rows.conv.weight.as_ptr(),
        rows.conv.bias.as_ptr(),
    );
    rows.for_each_pixel(|taps, ox| {
        // SAFETY (whole closure): channel blocks stay within `c`; the offsets come from
        // `for_each_pixel`, inside the input and the weight.
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
            for ch in c0..c {
                let mut acc = *bias.add(ch);
                for &(t, off) in taps {
                    acc = (*x.add(off + ch)).mul_add(*w.add(t + ch), acc);
                }
                *out.add(ch) = math::activate(act, acc);
            }
        }
    });
}

/// Channels `c0..c0 + 8V` of one pixel.
///
/// # Safety
/// As [`row`], for these channels.
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn block<const V: usize>(
    taps: &[(usize, usize)],
    x: *const f32,
    w: *const f32,
    bias: *const f32,
    out: *mut f32,
    c0: usize,
    act: Activation,
) {
    // SAFETY (whole body): the caller keeps `c0 + 8V` within the channels.
    unsafe {
        let mut acc = [_mm256_setzero_ps(); V];
        for (v, a) in acc.iter_mut().enumerate() {
            *a = _mm256_loadu_ps(bias.add(c0 + v * L));
        }
        for &(t, off) in taps {
            for (v, a) in acc.iter_mut().enumerate() {
                let px = _mm256_loadu_ps(x.add(off + c0 + v * L));
                let k = _mm256_loadu_ps(w.add(t + c0 + v * L));
                *a = _mm256_fmadd_ps(px, k, *a);
            }
        }
        for (v, a) in acc.into_iter().enumerate() {
            _mm256_storeu_ps(out.add(c0 + v * L), registers::avx2(a, act));
        }
    }
}
