//! The portable micro-kernel, for CPUs without AVX2 (ARM64 among them): 8-channel panels,
//! blocks of 4 rows x 8 channels accumulated in plain arrays that the compiler keeps in
//! vector registers (NEON on ARM64, SSE on baseline x86-64), a fused multiply-add on ARM64
//! where every CPU has one. On ARM64 the full blocks of 6 rows x two panels run in NEON
//! intrinsics instead ([`super::neon`]), with the same sums; these blocks take the rest.
//! Every output's sum runs down `k` in the same order whatever the number of rows, so an
//! image's result does not depend on its batch (the general GEMM, which blocks by the
//! matrix sizes, gives no such guarantee).

use super::Finish;
use crate::model::kernels::math;

/// Channels per panel.
pub(super) const W: usize = 8;

/// Rows per register block.
pub(super) const ROWS: usize = 4;

/// [`super::Kernel::gemm`] for 8-channel panels.
///
/// # Safety
/// As [`super::Kernel::gemm`].
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn gemm(
    m: usize,
    n: usize,
    k: usize,
    lhs: *const f32,
    lhs_rs: usize,
    w: *const f32,
    dst: *mut f32,
    dst_rs: usize,
    finish: Finish,
) {
    debug_assert!(n.is_multiple_of(W));
    let mut j = 0;
    // ARM64: pairs of panels in NEON's 6 x 16 blocks, the rows left over in the blocks here.
    #[cfg(target_arch = "aarch64")]
    while j + 2 * W <= n {
        // SAFETY (all calls): panels `j / W` and `j / W + 1`, and rows `r..`, are inside
        // what the caller covers.
        let (w, dst, f) = unsafe { (w.add(j * k), dst.add(j), finish.skip_columns(j)) };
        let mut r = 0;
        while r + super::neon::ROWS <= m {
            unsafe {
                let (lhs, dst, f) = (lhs.add(r * lhs_rs), dst.add(r * dst_rs), f.skip_rows(r));
                super::neon::block(k, lhs, lhs_rs, w, dst, dst_rs, f)
            };
            r += super::neon::ROWS;
        }
        let (lhs, dst, f) = unsafe { (lhs.add(r * lhs_rs), dst.add(r * dst_rs), f.skip_rows(r)) };
        for p in 0..2 {
            let (w, dst, f) = unsafe { (w.add(p * W * k), dst.add(p * W), f.skip_columns(p * W)) };
            unsafe { panel(m - r, k, lhs, lhs_rs, w, dst, dst_rs, f) };
        }
        j += 2 * W;
    }
    while j < n {
        // SAFETY: panel `j / W` is inside what the caller covers.
        let (w, dst, f) = unsafe { (w.add(j * k), dst.add(j), finish.skip_columns(j)) };
        unsafe { panel(m, k, lhs, lhs_rs, w, dst, dst_rs, f) };
        j += W;
    }
}

/// All `m` rows of one panel, [`ROWS`] at a time.
///
/// # Safety
/// As [`gemm`], for this panel.
#[allow(clippy::too_many_arguments)]
unsafe fn panel(
    m: usize,
    k: usize,
    lhs: *const f32,
    lhs_rs: usize,
    w: *const f32,
    dst: *mut f32,
    dst_rs: usize,
    f: Finish,
) {
    let mut r = 0;
    // SAFETY (all calls): rows `r..` are inside what the caller covers.
    while r + ROWS <= m {
        unsafe {
            let (lhs, dst, f) = (lhs.add(r * lhs_rs), dst.add(r * dst_rs), f.skip_rows(r));
            block::<ROWS>(k, lhs, lhs_rs, w, dst, dst_rs, f)
        };
        r += ROWS;
    }
    let (lhs, dst, f) = unsafe { (lhs.add(r * lhs_rs), dst.add(r * dst_rs), f.skip_rows(r)) };
    match m - r {
        1 => unsafe { block::<1>(k, lhs, lhs_rs, w, dst, dst_rs, f) },
        2 => unsafe { block::<2>(k, lhs, lhs_rs, w, dst, dst_rs, f) },
        3 => unsafe { block::<3>(k, lhs, lhs_rs, w, dst, dst_rs, f) },
        _ => {}
    }
}

/// `a * b + c`, fused where the instruction set always has it.
#[inline(always)]
fn fma(a: f32, b: f32, c: f32) -> f32 {
    #[cfg(target_arch = "aarch64")]
    {
        a.mul_add(b, c)
    }
    #[cfg(not(target_arch = "aarch64"))]
    {
        a * b + c
    }
}

/// `R` rows x one panel, accumulated over all of `k`, then finished and stored.
///
/// # Safety
/// As [`gemm`], for these rows and this panel.
#[inline(always)]
unsafe fn block<const R: usize>(
    k: usize,
    lhs: *const f32,
    lhs_rs: usize,
    w: *const f32,
    dst: *mut f32,
    dst_rs: usize,
    finish: Finish,
) {
    let mut acc = [[0f32; W]; R];
    for kk in 0..k {
        // SAFETY: the panel holds `k` rows of `W` values.
        let wv: [f32; W] = unsafe { std::ptr::read_unaligned(w.add(kk * W).cast()) };
        for (r, acc) in acc.iter_mut().enumerate() {
            // SAFETY: row `r` of `lhs` holds `k` values.
            let x = unsafe { *lhs.add(r * lhs_rs + kk) };
            for (a, &wv) in acc.iter_mut().zip(&wv) {
                *a = fma(x, wv, *a);
            }
        }
    }
    // SAFETY: as this function's contract.
    unsafe { store(&acc, dst, dst_rs, finish) }
}

/// Finish the block `acc` (`R` rows x `C` channels: bias, residual, activation) and store
/// it; the one epilogue of every block of this kernel, NEON's included.
///
/// # Safety
/// The bias must cover the block's columns, the residual its rows and columns, and the
/// block of `dst` be the caller's to write.
#[inline(always)]
pub(super) unsafe fn store<const R: usize, const C: usize>(
    acc: &[[f32; C]; R],
    dst: *mut f32,
    dst_rs: usize,
    finish: Finish,
) {
    for (r, acc) in acc.iter().enumerate() {
        for (j, &a) in acc.iter().enumerate() {
            // SAFETY: the bias covers every column of the block.
            let v = finish.bias.map_or(a, |b| a + unsafe { *b.add(j) });
            // SAFETY: the residual covers every row and column of the block.
            let v = finish
                .residual
                .map_or(v, |(res, rs)| v + unsafe { *res.add(r * rs + j) });
            // SAFETY: row `r`, column `j` of the block is the caller's to write.
            unsafe { *dst.add(r * dst_rs + j) = math::activate(finish.act, v) };
        }
    }
}
