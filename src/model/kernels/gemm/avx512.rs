//! The AVX-512 micro-kernel: 16-channel panels, blocks of up to 12 rows x 32 channels (24 of
//! the 32 vector registers accumulate, two hold the weight, the input is broadcast from
//! memory).

use std::arch::x86_64::*;

use super::{Ahead, Finish, LINE, WIDTH_AVX512 as W};
use crate::model::kernels::math::registers;
use crate::model::kernels::Activation;

/// Rows per register block.
pub(super) const ROWS: usize = 12;

/// Channels of a half panel (the last of `n` = 8 mod 16).
const HALF: usize = W / 2;

/// [`super::gemm`] for 16-channel panels.
///
/// # Safety
/// The CPU must have AVX-512 F; as [`super::gemm`] otherwise.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx512f")]
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
    debug_assert!(n.is_multiple_of(HALF));
    let mut j = 0;
    // SAFETY (all calls): column block `j` lies inside the `n` columns the caller covers.
    while j + 2 * W <= n {
        let (w, dst, f) = unsafe { (w.add(j * k), dst.add(j), finish.skip_columns(j)) };
        // The next column block's weight, fetched while this one runs.
        let ahead = Ahead::next_block(w, j, n, k, W);
        if ahead.lines > 0 {
            unsafe { rows::<2, true, false>(m, k, lhs, lhs_rs, w, dst, dst_rs, f, ahead) };
        } else {
            unsafe { rows::<2, false, false>(m, k, lhs, lhs_rs, w, dst, dst_rs, f, ahead) };
        }
        j += 2 * W;
    }
    if j == n {
        return;
    }
    // The last one or two panels; a last panel of 8 channels is stored under a mask.
    let (w, dst, f) = unsafe { (w.add(j * k), dst.add(j), finish.skip_columns(j)) };
    let none = Ahead::NONE;
    unsafe {
        match n - j {
            HALF => rows::<1, false, true>(m, k, lhs, lhs_rs, w, dst, dst_rs, f, none),
            W => rows::<1, false, false>(m, k, lhs, lhs_rs, w, dst, dst_rs, f, none),
            _ => rows::<2, false, true>(m, k, lhs, lhs_rs, w, dst, dst_rs, f, none),
        }
    }
}

/// All `m` rows of one `16 * V`-channel column block, [`ROWS`] rows at a time; only the
/// first 8 channels of its last panel if `HALF_LAST`.
///
/// # Safety
/// As [`gemm`], for this column block.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx512f")]
unsafe fn rows<const V: usize, const FETCH: bool, const HALF_LAST: bool>(
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
    let mut r = 0;
    let blocks = m.div_ceil(ROWS);
    // SAFETY (all calls): rows `r..r + R` are within the `m` rows the caller covers.
    while r + ROWS <= m {
        let (lhs, dst, f) = unsafe { (lhs.add(r * lhs_rs), dst.add(r * dst_rs), f.skip_rows(r)) };
        let a = ahead.part(r / ROWS, blocks);
        unsafe { block::<ROWS, V, FETCH, HALF_LAST>(k, lhs, lhs_rs, w, dst, dst_rs, f, a) };
        r += ROWS;
    }
    let (lhs, dst, f) = unsafe { (lhs.add(r * lhs_rs), dst.add(r * dst_rs), f.skip_rows(r)) };
    let a = ahead.part(r / ROWS, blocks);
    macro_rules! tail {
        ($($r:literal)*) => {
            match m - r {
                $($r => unsafe { block::<$r, V, FETCH, HALF_LAST>(k, lhs, lhs_rs, w, dst, dst_rs, f, a) },)*
                _ => {}
            }
        };
    }
    tail!(1 2 3 4 5 6 7 8 9 10 11);
}

/// `R` rows x `V` panels, accumulated in registers over all of `k`, then finished and stored;
/// `ahead` fetched on the way if `FETCH`.
///
/// # Safety
/// As [`gemm`], for these rows and panels.
#[inline]
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx512f")]
unsafe fn block<const R: usize, const V: usize, const FETCH: bool, const HALF_LAST: bool>(
    k: usize,
    lhs: *const f32,
    lhs_rs: usize,
    w: *const f32,
    dst: *mut f32,
    dst_rs: usize,
    finish: Finish,
    ahead: Ahead,
) {
    // The weight rows of step `kk` for the `V` panels.
    let weights = |kk: usize| -> [__m512; V] {
        // SAFETY: panel `v` of this block holds `k` rows of `W` values.
        std::array::from_fn(|v| unsafe { _mm512_loadu_ps(w.add((v * k + kk) * W)) })
    };
    // SAFETY: row `r` of `lhs` holds `k` values.
    let input = |r: usize, kk: usize| _mm512_set1_ps(unsafe { *lhs.add(r * lhs_rs + kk) });
    // The first step's products start the sums (not a zeroed array, which the compiler
    // kept on the stack and cleared with a `memset` per block); x * w + 0 rounds as x * w.
    let w0 = weights(0);
    let mut acc: [[__m512; V]; R] =
        std::array::from_fn(|r| std::array::from_fn(|v| _mm512_mul_ps(input(r, 0), w0[v])));
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
                *a = _mm512_fmadd_ps(x, wv, *a);
            }
        }
    }
    // SAFETY (all arms): as `store`'s contract, which this function's is.
    unsafe {
        match finish.act {
            Activation::Relu => store::<R, V, HALF_LAST>(&acc, dst, dst_rs, finish, |a| {
                _mm512_max_ps(a, _mm512_setzero_ps())
            }),
            Activation::Relu6 => store::<R, V, HALF_LAST>(&acc, dst, dst_rs, finish, |a| {
                _mm512_min_ps(_mm512_max_ps(a, _mm512_setzero_ps()), _mm512_set1_ps(6.0))
            }),
            Activation::HardSwish => store::<R, V, HALF_LAST>(&acc, dst, dst_rs, finish, |a| {
                registers::avx512(a, Activation::HardSwish)
            }),
            _ => store::<R, V, HALF_LAST>(&acc, dst, dst_rs, finish, |a| a),
        }
    }
}

/// Finish the block `acc` (bias, residual, then `act`) and store it. One copy for each
/// activation, so that the loops over the block unroll and the sums stay in registers (with
/// the activation chosen inside the loop they were written to the stack and read back).
///
/// # Safety
/// As [`gemm`], for these rows and panels.
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn store<const R: usize, const V: usize, const HALF_LAST: bool>(
    acc: &[[__m512; V]; R],
    dst: *mut f32,
    dst_rs: usize,
    finish: Finish,
    act: impl Fn(__m512) -> __m512,
) {
    for (r, acc) in acc.iter().enumerate() {
        for (v, &a) in acc.iter().enumerate() {
            // A half panel's first 8 channels under a mask (the bias and residual end there,
            // and masked-off lanes are never touched); whole panels plainly.
            let half = HALF_LAST && v == V - 1;
            // SAFETY (the loads and the store): the bias covers every column of the block,
            // the residual every row and column, and row `r`'s columns of the block are the
            // caller's to write.
            let load = |p: *const f32| unsafe {
                if half {
                    _mm512_maskz_loadu_ps(0x00ff, p)
                } else {
                    _mm512_loadu_ps(p)
                }
            };
            let mut a = a;
            if let Some(bias) = finish.bias {
                a = _mm512_add_ps(a, load(unsafe { bias.add(W * v) }));
            }
            if let Some((res, rs)) = finish.residual {
                a = _mm512_add_ps(a, load(unsafe { res.add(r * rs + W * v) }));
            }
            let to = unsafe { dst.add(r * dst_rs + W * v) };
            unsafe {
                if half {
                    _mm512_mask_storeu_ps(to, 0x00ff, act(a));
                } else {
                    _mm512_storeu_ps(to, act(a));
                }
            }
        }
    }
}
