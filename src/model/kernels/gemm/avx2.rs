//! The AVX2+FMA micro-kernel: 8-channel panels, blocks of up to 6 rows x 16 channels (12 of
//! the 16 vector registers accumulate). A full block's loop down `k` is in assembly
//! ([`sums`]), its sums finished and stored from the registers they end in (`finish_sums!`
//! in `mod.rs`); the partial blocks' loop is in intrinsics ([`sums_loop`]).

use std::arch::x86_64::*;

use super::{row_blocks, Ahead, Finish, LINE, WIDTH_AVX2 as W};
use crate::model::kernels::math::registers;

/// Rows per register block.
pub(super) const ROWS: usize = 6;

/// [`super::gemm`] for 8-channel panels.
///
/// # Safety
/// The CPU must have AVX2 and FMA; as [`super::gemm`] otherwise.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx2,fma")]
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
    // SAFETY (all calls): column block `j` lies inside the `n` columns the caller covers.
    while j + 2 * W <= n {
        let (w, dst, f) = unsafe { (w.add(j * k), dst.add(j), finish.skip_columns(j)) };
        // The next column block's weight, fetched while this one runs.
        let ahead = Ahead::next_block(w, j, n, k, W);
        if ahead.lines > 0 {
            unsafe { rows::<2, true>(m, k, lhs, lhs_rs, w, dst, dst_rs, f, ahead) };
        } else {
            unsafe { rows::<2, false>(m, k, lhs, lhs_rs, w, dst, dst_rs, f, ahead) };
        }
        j += 2 * W;
    }
    if j < n {
        let (w, dst, f) = unsafe { (w.add(j * k), dst.add(j), finish.skip_columns(j)) };
        unsafe { rows::<1, false>(m, k, lhs, lhs_rs, w, dst, dst_rs, f, Ahead::NONE) };
    }
}

/// All `m` rows of one `8 * V`-channel column block, [`ROWS`] rows at a time; one to three
/// rows left over run with the last full block as two halves ([`super::row_blocks`]: 49 rows
/// end 6 + 4 + 3, not 6 + 6 + 1). No longer block fits AVX2's 16 registers. Intel Xeon
/// (Sapphire Rapids class) with AVX2 forced, one thread, data in cache, 49 x 1152 -> 192:
/// 207-217 us -> 203-209; ResNet-50 at batch 1 (2 threads, one binary with an environment
/// switch, 8 interleaved rounds) level, 27.1 -> 27.2 images/s.
///
/// # Safety
/// As [`gemm`], for this column block.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx2,fma")]
unsafe fn rows<const V: usize, const FETCH: bool>(
    m: usize,
    k: usize,
    lhs: *const f32,
    lhs_rs: usize,
    w: *const f32,
    dst: *mut f32,
    dst_rs: usize,
    f: Finish,
    ahead: Ahead,
) {
    let count = row_blocks(m, ROWS, false).count();
    for (i, rows) in row_blocks(m, ROWS, false).enumerate() {
        let r = rows.start;
        // SAFETY (all calls): rows `r..r + R` are within the `m` rows the caller covers.
        let (lhs, dst, f) = unsafe { (lhs.add(r * lhs_rs), dst.add(r * dst_rs), f.skip_rows(r)) };
        let a = ahead.part(i, count);
        match rows.len() {
            1 => unsafe { block::<1, V, FETCH>(k, lhs, lhs_rs, w, dst, dst_rs, f, a) },
            2 => unsafe { block::<2, V, FETCH>(k, lhs, lhs_rs, w, dst, dst_rs, f, a) },
            3 => unsafe { block::<3, V, FETCH>(k, lhs, lhs_rs, w, dst, dst_rs, f, a) },
            4 => unsafe { block::<4, V, FETCH>(k, lhs, lhs_rs, w, dst, dst_rs, f, a) },
            5 => unsafe { block::<5, V, FETCH>(k, lhs, lhs_rs, w, dst, dst_rs, f, a) },
            ROWS => unsafe { block::<ROWS, V, FETCH>(k, lhs, lhs_rs, w, dst, dst_rs, f, a) },
            _ => unreachable!("blocks hold 1 to {ROWS} rows"),
        }
    }
}

/// `R` rows x `V` panels, accumulated in registers over all of `k`, then finished and stored;
/// `ahead` fetched on the way if `FETCH`.
///
/// # Safety
/// As [`gemm`], for these rows and panels.
#[inline]
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx2,fma")]
unsafe fn block<const R: usize, const V: usize, const FETCH: bool>(
    k: usize,
    lhs: *const f32,
    lhs_rs: usize,
    w: *const f32,
    dst: *mut f32,
    dst_rs: usize,
    finish: Finish,
    ahead: Ahead,
) {
    if R == ROWS && V == 2 {
        // The full block: its sums from the assembly loop, in registers, finished and
        // stored there.
        let ahead = if FETCH { ahead } else { Ahead::NONE };
        // SAFETY: the caller's contract.
        let sums = unsafe { sums(k, lhs, lhs_rs, w, ahead) };
        // SAFETY: the bias covers every column of the block, the residual every row and
        // column, and the block's rows and columns of `dst` are the caller's to write.
        unsafe {
            finish_sums!(
                R,
                sums,
                dst,
                dst_rs,
                finish,
                W,
                [_mm256_loadu_ps, _mm256_add_ps, _mm256_storeu_ps],
                registers::avx2
            )
        }
        return;
    }
    // SAFETY: the caller's contract.
    let acc = unsafe { sums_loop::<R, V, FETCH>(k, lhs, lhs_rs, w, ahead) };
    for (r, acc) in acc.iter().enumerate() {
        for (v, &a) in acc.iter().enumerate() {
            let mut a = a;
            if let Some(bias) = finish.bias {
                // SAFETY: the bias covers every column of the block.
                a = _mm256_add_ps(a, unsafe { _mm256_loadu_ps(bias.add(W * v)) });
            }
            if let Some((res, rs)) = finish.residual {
                // SAFETY: the residual covers every row and column of the block.
                a = _mm256_add_ps(a, unsafe { _mm256_loadu_ps(res.add(r * rs + W * v)) });
            }
            a = registers::avx2(a, finish.act);
            // SAFETY: row `r`, columns `8v..8v + 8` of the block are the caller's to write.
            unsafe { _mm256_storeu_ps(dst.add(r * dst_rs + W * v), a) };
        }
    }
}

/// The sums of `R` rows x `V` panels over all of `k` (intrinsics), `ahead` fetched on the
/// way if `FETCH`.
///
/// # Safety
/// As [`gemm`], for these rows and panels.
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn sums_loop<const R: usize, const V: usize, const FETCH: bool>(
    k: usize,
    lhs: *const f32,
    lhs_rs: usize,
    w: *const f32,
    ahead: Ahead,
) -> [[__m256; V]; R] {
    // The weight rows of step `kk` for the `V` panels.
    let weights = |kk: usize| -> [__m256; V] {
        // SAFETY: panel `v` of this block holds `k` rows of `W` values.
        std::array::from_fn(|v| unsafe { _mm256_loadu_ps(w.add((v * k + kk) * W)) })
    };
    // SAFETY: row `r` of `lhs` holds `k` values.
    let input = |r: usize, kk: usize| _mm256_set1_ps(unsafe { *lhs.add(r * lhs_rs + kk) });
    // The first step's products start the sums (not a zeroed array, which the compiler
    // kept on the stack and cleared with a `memset` per block); x * w + 0 rounds as x * w.
    let w0 = weights(0);
    let mut acc: [[__m256; V]; R] =
        std::array::from_fn(|r| std::array::from_fn(|v| _mm256_mul_ps(input(r, 0), w0[v])));
    // One line every `every` steps.
    let every = if FETCH {
        ((k - 1) / ahead.lines.max(1)).max(1)
    } else {
        usize::MAX
    };
    let (mut due, mut line) = (1, 0);
    for kk in 1..k {
        if FETCH && kk == due && line < ahead.lines {
            // A hint: never faults, whatever the address.
            _mm_prefetch::<_MM_HINT_T1>(ahead.at.wrapping_add(line * LINE).cast());
            line += 1;
            due += every;
        }
        let wv = weights(kk);
        for (r, acc) in acc.iter_mut().enumerate() {
            let x = input(r, kk);
            for (a, &wv) in acc.iter_mut().zip(&wv) {
                *a = _mm256_fmadd_ps(x, wv, *a);
            }
        }
    }
    acc
}

/// One step of `k` for the 6 x 16 block in assembly (`k_loop!` in `mod.rs`): the two panels'
/// weight rows (`dw` bytes on) into `ymm{wa}` and `ymm{wb}`, each row's value (`d` bytes past
/// its address) broadcast and multiplied into its two sums with `op`. Rows 0-2 and 3-5 are
/// `{a0}` and `{a3}` plus 0, 1 or 2 row strides (`{s}` bytes).
macro_rules! step {
    ($op:literal, $d:literal, $dw:literal, $wa:literal, $wb:literal) => {
        concat!(
            weight_rows!("ymm", $dw, $wa, $wb),
            row!("ymm", $op, "{a0}", $d, "14", "0", "1", $wa, $wb),
            row!("ymm", $op, "{a0} + {s}", $d, "15", "2", "3", $wa, $wb),
            row!("ymm", $op, "{a0} + {s} * 2", $d, "14", "4", "5", $wa, $wb),
            row!("ymm", $op, "{a3}", $d, "15", "6", "7", $wa, $wb),
            row!("ymm", $op, "{a3} + {s}", $d, "14", "8", "9", $wa, $wb),
            row!("ymm", $op, "{a3} + {s} * 2", $d, "15", "10", "11", $wa, $wb),
        )
    };
}

/// The sums of a full block ([`ROWS`] rows x 2 panels) over all of `k`, returned in
/// registers (12 vectors: row 0's two, then row 1's, ...), `ahead` fetched over the first
/// steps as `k_loop!` paces it: the `k_loop!` of [`super::avx512`]'s, for 16 registers.
/// The same products in the same order as [`sums_loop`], so the same bits. Intel Xeon
/// (Sapphire Rapids class) with the AVX2 kernels forced (`CLASSIFY_CPU_ISA=avx2`), 2
/// threads, medians of 3 interleaved rounds (one binary, an environment switch since
/// removed), images/s intrinsics -> assembly: ResNet-50 batch 16 22.4 -> 25.4, batch 1 19.9
/// -> 20.9; ResNet-18 batch 1 58.4 -> 61.0; DenseNet-121 batch 16 34.7 -> 40.8; Lite0 batch
/// 1 141.1 -> 154.0. Not measured on AMD, whose integer instructions do not share ports
/// with the vector ones.
///
/// # Safety
/// As [`gemm`], for these rows and panels.
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn sums(
    k: usize,
    lhs: *const f32,
    lhs_rs: usize,
    w: *const f32,
    ahead: Ahead,
) -> [__m256; 12] {
    debug_assert!(k >= 1);
    let mut c = [_mm256_setzero_ps(); 12];
    // SAFETY: every address is a row of `lhs` (up to step `k`) or a panel's row (up to `k`);
    // prefetches never fault. Every vector register the code writes is declared.
    unsafe {
        std::arch::asm!(
            k_loop!(
                step,
                "32",
                ["12", "13"],
                ["12", "13"],
                "add {a0}, 4\nadd {a3}, 4\nadd {w}, 32\n",
                "add {a0}, 8\nadd {a3}, 8\nadd {w}, 64\n",
            ),
            k = inout(reg) k => _,
            a0 = inout(reg) lhs => _,
            a3 = inout(reg) lhs.wrapping_add(3 * lhs_rs) => _,
            s = in(reg) lhs_rs * 4,
            w = inout(reg) w => _,
            ps = in(reg) k * W * 4,
            pa = inout(reg) ahead.at => _,
            pf = inout(reg) ahead.lines => _,
            out("ymm0") c[0], out("ymm1") c[1], out("ymm2") c[2], out("ymm3") c[3],
            out("ymm4") c[4], out("ymm5") c[5], out("ymm6") c[6], out("ymm7") c[7],
            out("ymm8") c[8], out("ymm9") c[9], out("ymm10") c[10], out("ymm11") c[11],
            out("ymm12") _, out("ymm13") _, out("ymm14") _, out("ymm15") _,
            options(nostack),
        );
    }
    c
}
