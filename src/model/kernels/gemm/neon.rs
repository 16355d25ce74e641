//! ARM64's micro-kernel for the portable kernel's 8-channel panels: blocks of 6 rows x 16
//! channels (two panels) in NEON intrinsics, 24 of the 32 vector registers accumulating,
//! four holding the step's weight row and the rows' values broadcast from memory (`ld1r`).
//! Per step 4 weight loads and 6 broadcasts feed 24 multiply-adds, where the auto-vectorised
//! 4 x 8 block ([`super::portable`]) loads 6 for 8 and keeps only 8 sums in flight, fewer
//! than a core with four FMA pipes of 4 cycles' latency needs.
//!
//! Each output is the same chain of fused multiply-adds down `k`, from zero, as the portable
//! block computes, and both finish in [`portable::store`]: a row gives the same bits in a
//! block of 6 as in the blocks of 4 and fewer that take the rows left over, so an image's
//! result does not depend on its batch.
//!
//! NEON is part of the ARM64 baseline: every ARM64 CPU runs this, nothing is detected.

use std::arch::aarch64::*;

use super::portable::{self, W};
use super::Finish;

/// Rows per register block.
pub(super) const ROWS: usize = 6;

/// Vectors of 4 in a block's row: two panels of [`W`].
const V: usize = 2 * W / 4;

/// [`ROWS`] rows x two panels (the second `k * W` values after the first), accumulated over
/// all of `k`, then finished and stored.
///
/// # Safety
/// `lhs` must hold [`ROWS`] rows of `k` values (`lhs_rs` apart), `w` two packed panels of
/// `k` rows, and the block of `dst` (rows `dst_rs` apart, 16 columns) be the caller's to
/// write; the bias and residual of `finish` must cover the block.
#[inline]
#[target_feature(enable = "neon")]
pub(super) unsafe fn block(
    k: usize,
    lhs: *const f32,
    lhs_rs: usize,
    w: *const f32,
    dst: *mut f32,
    dst_rs: usize,
    finish: Finish,
) {
    let second = k * W;
    let mut acc = [[vdupq_n_f32(0.0); V]; ROWS];
    for kk in 0..k {
        // SAFETY: both panels hold `k` rows of `W` values, and row `r` of `lhs` `k` values.
        unsafe {
            let at = w.add(kk * W);
            let wv = [
                vld1q_f32(at),
                vld1q_f32(at.add(4)),
                vld1q_f32(at.add(second)),
                vld1q_f32(at.add(second + 4)),
            ];
            for (r, acc) in acc.iter_mut().enumerate() {
                let x = vld1q_dup_f32(lhs.add(r * lhs_rs + kk));
                for (a, &wv) in acc.iter_mut().zip(&wv) {
                    // `a + wv * x`, fused: the portable block's `x.mul_add(w, a)`.
                    *a = vfmaq_f32(*a, wv, x);
                }
            }
        }
    }
    let mut sums = [[0f32; 2 * W]; ROWS];
    for (row, acc) in sums.iter_mut().zip(&acc) {
        for (i, &a) in acc.iter().enumerate() {
            // SAFETY: `row` holds `V` vectors of 4.
            unsafe { vst1q_f32(row.as_mut_ptr().add(4 * i), a) };
        }
    }
    // SAFETY: the caller's contract.
    unsafe { portable::store(&sums, dst, dst_rs, finish) }
}
