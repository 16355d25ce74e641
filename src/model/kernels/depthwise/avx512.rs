//! The AVX-512 depthwise kernel: the tiles of [`super::tile`] on 16-lane registers, 32
//! channels a tile up to 5x5 (7 x 2 sums, 5 x 2 weights and 2 inputs of the 32 registers).

use std::arch::x86_64::*;
use std::ops::Range;

use super::tile::{self, Lanes};
use super::Rows;
use crate::model::kernels::math::registers;
use crate::model::kernels::Activation;

/// Channels `chans` of one output row into `dst`.
///
/// # Safety
/// The CPU must have AVX-512 F, and the rest of [`tile::row`]'s contract hold.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn row(rows: &Rows, act: Activation, dst: *mut f32, chans: Range<usize>) {
    // SAFETY: this function's contract.
    unsafe { tile::row::<__m512>(rows, act, dst, chans) }
}

// SAFETY (every method): the callers run only where the CPU has AVX-512 F (`row`), and keep
// the pointers valid as `Lanes` asks.
impl Lanes for __m512 {
    const L: usize = 16;
    const PAIRS_UP_TO: usize = 5;
    type Mask = __mmask16;

    #[inline(always)]
    fn tiles(k: usize, stride: usize) -> bool {
        tile::covers(k, stride)
    }

    #[inline(always)]
    unsafe fn mask(n: usize) -> __mmask16 {
        if n >= Self::L {
            !0
        } else {
            (1u16 << n) - 1
        }
    }

    #[inline(always)]
    unsafe fn load(p: *const f32) -> Self {
        unsafe { _mm512_loadu_ps(p) }
    }

    #[inline(always)]
    unsafe fn load_masked(p: *const f32, m: __mmask16) -> Self {
        unsafe { _mm512_maskz_loadu_ps(m, p) }
    }

    #[inline(always)]
    unsafe fn fma(a: Self, b: Self, c: Self) -> Self {
        unsafe { _mm512_fmadd_ps(a, b, c) }
    }

    #[inline(always)]
    unsafe fn activate(self, act: Activation) -> Self {
        unsafe { registers::avx512(self, act) }
    }

    #[inline(always)]
    unsafe fn store(self, p: *mut f32) {
        unsafe { _mm512_storeu_ps(p, self) }
    }

    #[inline(always)]
    unsafe fn store_masked(self, p: *mut f32, m: __mmask16) {
        unsafe { _mm512_mask_storeu_ps(p, m, self) }
    }
}
