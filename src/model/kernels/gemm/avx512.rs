//! The AVX-512 micro-kernel: 16-channel panels, blocks of up to 12 rows x 32 channels (24 of
//! the 32 vector registers accumulate, two hold the weight, the input is broadcast from
//! memory), or 13 rows where a few are left over (26 accumulate; [`super::row_blocks`]). The
//! loop down `k` of a full or long block is in assembly ([`sums`]), its sums finished and
//! stored from the registers they end in (`finish_sums!` in `mod.rs`); the partial blocks
//! at the edges run the same loop written with intrinsics, and finish in [`store`]. A few
//! rows under a large weight (Winograd's products for a 7x7 output at batch 1) run as
//! [`stream_block`]s instead, which read each line of the weight from memory once.

use std::arch::x86_64::*;

use super::{row_blocks, Ahead, Finish, LINE, WIDTH_AVX512 as W};
use crate::model::kernels::math::registers;
use crate::model::kernels::Activation;

/// Rows per register block.
pub(super) const ROWS: usize = 12;

/// Rows of the long register block, which takes a row left over from blocks of [`ROWS`]
/// ([`super::row_blocks`]): 26 registers accumulate, and all 32 are in use. Before it, the
/// 49 rows of a 7x7 map at batch 1 ran as 4 x 12 + 1, the lone row's two chains of
/// multiply-adds as slow per step as 4 rows. Intel Xeon (Sapphire Rapids class):
/// - One thread, data in cache, 49 rows x 192 -> 1152 channels: 132-135 us against 48
///   rows' 121-124; with the long block 124-130 against 122-124 (1152 -> 192: 125-128 ->
///   119-121). A block of 13 rows alone: 33-37 us; as halves of 7 + 6 rows in intrinsics
///   42-44 (a block of 12 rows alone 31-32, of one row 12).
/// - Lite0 at batch 1, 2 threads, per-layer timer, 3 alternated runs against the halves:
///   the 7x7 1x1 layers 2-9% faster (672 -> 192 38-39 us against 42, 1152 -> 192 with the
///   residual 73-76 against 76, 320 -> 1280 115-121 against 121). Whole networks: within
///   this VM's noise (`bench/ab.sh` against the build before, Lite0 batch 1 272.9 -> 280.0
///   images/s, 10 rounds; one binary with an environment switch, 280.0 against 286.0).
pub(super) const LONG: usize = ROWS + 1;

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
    if streams(m, n, k) {
        while j + 2 * W <= n {
            // SAFETY: column block `j` lies inside the `n` columns the caller covers.
            unsafe {
                let (w, dst, f) = (w.add(j * k), dst.add(j), finish.skip_columns(j));
                stream_block(m, k, lhs, lhs_rs, w, dst, dst_rs, f);
            }
            j += 2 * W;
        }
    }
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

/// Rows from which, up to [`STREAM_ROWS`], a GEMM with a weight of at least
/// [`STREAM_WEIGHT_BYTES`] runs as [`stream_block`]s.
pub(super) const STREAM_FROM: usize = 9;

/// The most rows of a [`stream_block`]: two halves of at most 8.
pub(super) const STREAM_ROWS: usize = 16;

/// The weight, in bytes, from which a GEMM of a few rows is streamed: Winograd's products
/// for a 7x7 output at batch 1 (16 tiles) read 1 MB of weight each, from memory.
const STREAM_WEIGHT_BYTES: usize = 512 * 1024;

/// Steps of `k` a [`stream_block`] runs its two halves over in turn: 8 KB of the two
/// panels' weight, which the first half brings in and the second reads from L1.
const STREAM_CHUNK: usize = 64;

/// How far ahead of its use, in bytes, the first half of a [`stream_block`] fetches each
/// panel's weight.
const STREAM_AHEAD: usize = 2048;

/// Whether an `m`-row GEMM of a `k x n` weight runs as [`stream_block`]s.
fn streams(m: usize, n: usize, k: usize) -> bool {
    (STREAM_FROM..=STREAM_ROWS).contains(&m)
        && k * n * std::mem::size_of::<f32>() >= STREAM_WEIGHT_BYTES
        && n >= 2 * W
}

/// All `m` rows ([`STREAM_FROM`] to [`STREAM_ROWS`]) of one 32-channel column block, its
/// weight read from memory once: the rows in two halves of at most 8, each half's sums
/// carried in memory from one chunk of [`STREAM_CHUNK`] steps to the next, both halves over
/// a chunk before the next one, and the first half fetching each panel's weight
/// [`STREAM_AHEAD`] bytes ahead. The register blocks of [`rows`] read each column block's
/// weight once per block of 12 rows: at 16 rows (12 + 4) the second read came from L2 or
/// further, and the first waited on memory. Each row's sums are the same products in the
/// same order as in a register block, so the same bits.
///
/// Intel Xeon (Sapphire Rapids class), AVX-512:
/// - One thread, the weight cold (a new copy each call, from 256 MB of copies), medians of
///   9 runs, three alternated runs each, register blocks -> stream blocks: 16 x 512 -> 256
///   58.8-61.3 -> 54.9-55.2 us, 16 x 512 -> 512 115.4-118.8 -> 109.0-110.9 (1 MB of
///   weight at 9.5 GB/s, against the 12-13.5 a core reads in a plain stream).
/// - Whole networks, 2 threads, one binary with an environment switch, 8 interleaved
///   rounds, medians: ResNet-18 batch 1 97.4 -> 101.5 images/s (7 rounds of 8 faster; its
///   three 7x7 3x3 layers are a third of its time), ResNet-50 batch 1 35.6 -> 36.2 (6 of
///   8).
///
/// # Safety
/// As [`gemm`], for this column block, with `m` in `STREAM_FROM..=STREAM_ROWS`.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx512f")]
unsafe fn stream_block(
    m: usize,
    k: usize,
    lhs: *const f32,
    lhs_rs: usize,
    w: *const f32,
    dst: *mut f32,
    dst_rs: usize,
    f: Finish,
) {
    const HALF_ROWS: usize = STREAM_ROWS / 2;
    macro_rules! sized {
        ($($r:literal)*) => {
            match m - HALF_ROWS {
                // SAFETY: the caller's contract, for these rows.
                $($r => unsafe { stream_halves::<HALF_ROWS, $r>(k, lhs, lhs_rs, w, dst, dst_rs, f) },)*
                _ => unreachable!("stream blocks hold {STREAM_FROM} to {STREAM_ROWS} rows"),
            }
        };
    }
    sized!(1 2 3 4 5 6 7 8);
}

/// [`stream_block`] for halves of `A` and `B` rows.
///
/// # Safety
/// As [`stream_block`], with `m = A + B`.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx512f")]
unsafe fn stream_halves<const A: usize, const B: usize>(
    k: usize,
    lhs: *const f32,
    lhs_rs: usize,
    w: *const f32,
    dst: *mut f32,
    dst_rs: usize,
    f: Finish,
) {
    let mut first = [[_mm512_setzero_ps(); 2]; A];
    let mut second = [[_mm512_setzero_ps(); 2]; B];
    // SAFETY: row `A` is within the caller's rows.
    let lhs_b = unsafe { lhs.add(A * lhs_rs) };
    let mut k0 = 0;
    while k0 < k {
        let k1 = (k0 + STREAM_CHUNK).min(k);
        // SAFETY (both): the caller's contract, for steps `k0..k1`.
        unsafe {
            stream_steps::<A, true>(k0..k1, k, lhs, lhs_rs, w, &mut first);
            stream_steps::<B, false>(k0..k1, k, lhs_b, lhs_rs, w, &mut second);
        }
        k0 = k1;
    }
    // SAFETY: as `store`'s contract, for each half's rows.
    unsafe {
        finish_and_store::<A, 2, false>(&first, dst, dst_rs, f);
        finish_and_store::<B, 2, false>(&second, dst.add(A * dst_rs), dst_rs, f.skip_rows(A));
    }
}

/// The sums of `R` rows x 2 panels over `steps` of `k`: started by the first step's
/// products where `steps` starts at 0 ([`block`]'s order), else carried on from `sums`;
/// left in `sums`. Each panel's weight [`STREAM_AHEAD`] bytes on fetched at every step if
/// `FETCH`.
///
/// # Safety
/// As [`gemm`], for these rows, two panels and steps.
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn stream_steps<const R: usize, const FETCH: bool>(
    steps: std::ops::Range<usize>,
    k: usize,
    lhs: *const f32,
    lhs_rs: usize,
    w: *const f32,
    sums: &mut [[__m512; 2]; R],
) {
    // SAFETY: the two panels hold `k` rows of `W` values each, one after the other.
    let weights = |kk: usize| -> [__m512; 2] {
        std::array::from_fn(|v| unsafe { _mm512_loadu_ps(w.add((v * k + kk) * W)) })
    };
    // SAFETY: row `r` of `lhs` holds `k` values.
    let input = |r: usize, kk: usize| _mm512_set1_ps(unsafe { *lhs.add(r * lhs_rs + kk) });
    let mut acc = *sums;
    let mut from = steps.start;
    if from == 0 {
        // x * w + 0 rounds as x * w: the first step's products start the sums.
        let w0 = weights(0);
        acc = std::array::from_fn(|r| std::array::from_fn(|v| _mm512_mul_ps(input(r, 0), w0[v])));
        from = 1;
    }
    for kk in from..steps.end {
        if FETCH {
            for v in 0..2 {
                // A hint: never faults, whatever the address.
                let at = w.wrapping_add((v * k + kk) * W).cast::<i8>();
                _mm_prefetch::<_MM_HINT_T0>(at.wrapping_add(STREAM_AHEAD));
            }
        }
        let wv = weights(kk);
        for (r, acc) in acc.iter_mut().enumerate() {
            let x = input(r, kk);
            for (a, &wv) in acc.iter_mut().zip(&wv) {
                *a = _mm512_fmadd_ps(x, wv, *a);
            }
        }
    }
    *sums = acc;
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
    let count = row_blocks(m, ROWS, true).count();
    let mut blocks = row_blocks(m, ROWS, true).enumerate().peekable();
    while let Some((i, rows)) = blocks.next() {
        if f.fetch_rows {
            let next = match blocks.peek() {
                Some((_, next)) => next.clone(),
                None => m..m,
            };
            fetch_rows(dst, dst_rs, &f, next, V * W);
        }
        let r = rows.start;
        // SAFETY (all calls): rows `r..r + R` are within the `m` rows the caller covers.
        let (lhs, dst, f) = unsafe { (lhs.add(r * lhs_rs), dst.add(r * dst_rs), f.skip_rows(r)) };
        let a = ahead.part(i, count);
        macro_rules! sized {
            ($($r:literal)*) => {
                match rows.len() {
                    $($r => unsafe { block::<$r, V, FETCH, HALF_LAST>(k, lhs, lhs_rs, w, dst, dst_rs, f, a) },)*
                    _ => unreachable!("blocks hold 1 to {LONG} rows"),
                }
            };
        }
        sized!(1 2 3 4 5 6 7 8 9 10 11 12 13);
    }
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
    if (R == ROWS || R == LONG) && V == 2 && !HALF_LAST {
        // A full or long block: its sums from the assembly loop, in registers, finished
        // and stored there.
        let ahead = if FETCH { ahead } else { Ahead::NONE };
        // SAFETY: the caller's contract.
        let sums = unsafe { sums::<R>(k, lhs, lhs_rs, w, ahead) };
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
                [_mm512_loadu_ps, _mm512_add_ps, _mm512_storeu_ps],
                registers::avx512
            )
        }
        return;
    }
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
    // SAFETY: as this function's contract.
    unsafe { finish_and_store::<R, V, HALF_LAST>(&acc, dst, dst_rs, finish) }
}

/// [`store`] with the activation of `finish` chosen outside the loops.
///
/// # Safety
/// As [`gemm`], for these rows and panels.
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn finish_and_store<const R: usize, const V: usize, const HALF_LAST: bool>(
    acc: &[[__m512; V]; R],
    dst: *mut f32,
    dst_rs: usize,
    finish: Finish,
) {
    // SAFETY (all arms): as `store`'s contract, which this function's is.
    unsafe {
        match finish.act {
            Activation::Relu => store::<R, V, HALF_LAST>(acc, dst, dst_rs, finish, |a| {
                _mm512_max_ps(a, _mm512_setzero_ps())
            }),
            Activation::Relu6 => store::<R, V, HALF_LAST>(acc, dst, dst_rs, finish, |a| {
                _mm512_min_ps(_mm512_max_ps(a, _mm512_setzero_ps()), _mm512_set1_ps(6.0))
            }),
            Activation::HardSwish => store::<R, V, HALF_LAST>(acc, dst, dst_rs, finish, |a| {
                registers::avx512(a, Activation::HardSwish)
            }),
            _ => store::<R, V, HALF_LAST>(acc, dst, dst_rs, finish, |a| a),
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

/// Fetch into L2 the output rows `rows` (`dst_rs` values apart) of a column block `cols`
/// values wide from `dst`, and the same rows of the residual the block adds, if any: the
/// rows of the next register block, fetched while this one runs down `k`. A layer's output
/// and residual larger than L2 arrive from L3 or memory. The next block's rows are
/// `dst_rs` values apart, farther than a hardware prefetcher follows. Without this, each
/// register block waited for its lines after its sums were done.
///
/// Measured on an Intel Xeon (Sapphire Rapids class), AVX-512 kernel:
/// - One thread, 224 x 64 x 256 products with bias, residual and ReLU: 59.4-61.8 against
///   64.6-65.5 us with the output and residual cold (30 products' worth). With both in
///   cache, 47.4-49.0 against 47.1-47.3.
/// - ResNet-50 batch 1, 2 threads, per-layer timer, 2 alternated runs each: 56x56 64 -> 256
///   with residual 522-546 -> 414-434 us; without one 496-612 -> 391-405; 28x28 128 -> 512
///   with residual 378-393 -> 354-357.
#[inline(always)]
fn fetch_rows(
    dst: *const f32,
    dst_rs: usize,
    finish: &Finish,
    rows: std::ops::Range<usize>,
    cols: usize,
) {
    for r in rows {
        // Every line the row's columns touch: each 16 values on, and the last value's.
        let fetch = |row: *const f32| {
            for c in (0..cols).step_by(LINE).chain([cols - 1]) {
                // SAFETY: SSE is part of every x86-64 CPU, and a prefetch is a hint that
                // never faults, whatever the address.
                unsafe { _mm_prefetch::<_MM_HINT_T1>(row.wrapping_add(c).cast()) };
            }
        };
        fetch(dst.wrapping_add(r * dst_rs));
        match finish.residual {
            // (Not where the output is written over it: the same lines.)
            Some((res, rs)) if res != dst => fetch(res.wrapping_add(r * rs)),
            _ => {}
        }
    }
}

/// One step of `k` for the 12 x 32 block in assembly (`k_loop!` in `mod.rs`): the two panels'
/// weight rows (`dw` bytes on) into `zmm{wa}` and `zmm{wb}`, each row's value (`d` bytes past
/// its address) broadcast into `zmm{x0}` or `zmm{x1}` (alternately) and multiplied into its
/// two sums with `op`. Rows 0-3, 4-7 and 8-11 are `{a0}`, `{a4}` and `{a8}` plus 0, 1, 2 or
/// 3 row strides (`{s}`, `{s3}` bytes).
macro_rules! twelve_rows {
    ($op:literal, $d:literal, $dw:literal, $wa:literal, $wb:literal, $x0:literal, $x1:literal) => {
        concat!(
            weight_rows!("zmm", $dw, $wa, $wb),
            row!("zmm", $op, "{a0}", $d, $x0, "0", "1", $wa, $wb),
            row!("zmm", $op, "{a0} + {s}", $d, $x1, "2", "3", $wa, $wb),
            row!("zmm", $op, "{a0} + {s} * 2", $d, $x0, "4", "5", $wa, $wb),
            row!("zmm", $op, "{a0} + {s3}", $d, $x1, "6", "7", $wa, $wb),
            row!("zmm", $op, "{a4}", $d, $x0, "8", "9", $wa, $wb),
            row!("zmm", $op, "{a4} + {s}", $d, $x1, "10", "11", $wa, $wb),
            row!("zmm", $op, "{a4} + {s} * 2", $d, $x0, "12", "13", $wa, $wb),
            row!("zmm", $op, "{a4} + {s3}", $d, $x1, "14", "15", $wa, $wb),
            row!("zmm", $op, "{a8}", $d, $x0, "16", "17", $wa, $wb),
            row!("zmm", $op, "{a8} + {s}", $d, $x1, "18", "19", $wa, $wb),
            row!("zmm", $op, "{a8} + {s} * 2", $d, $x0, "20", "21", $wa, $wb),
            row!("zmm", $op, "{a8} + {s3}", $d, $x1, "22", "23", $wa, $wb),
        )
    };
}

/// [`twelve_rows`] of the 12-row block: weights in `zmm24`/`zmm25` (`zmm28`/`zmm29` for the second
/// step of two), inputs broadcast into `zmm26` and `zmm27`.
macro_rules! step {
    ($op:literal, $d:literal, $dw:literal, $wa:literal, $wb:literal) => {
        twelve_rows!($op, $d, $dw, $wa, $wb, "26", "27")
    };
}

/// One step of the 13-row block: [`twelve_rows`] with the inputs broadcast into `zmm30` and
/// `zmm31`, then row 12 (`{a8}` plus 4 row strides) into sums `zmm24` and `zmm25`; its
/// weights in `zmm26`/`zmm27` (`zmm28`/`zmm29`). All 32 registers are in use.
macro_rules! step_long {
    ($op:literal, $d:literal, $dw:literal, $wa:literal, $wb:literal) => {
        concat!(
            twelve_rows!($op, $d, $dw, $wa, $wb, "30", "31"),
            row!("zmm", $op, "{a8} + {s} * 4", $d, "30", "24", "25", $wa, $wb),
        )
    };
}

/// The sums of a full or long block ([`ROWS`] or [`LONG`] rows, `R`, x 2 panels) over all
/// of `k`, returned in registers (`2 * R` vectors: row 0's two, then row 1's, ...; the rest
/// zeros), `ahead` fetched over the first steps as `k_loop!` paces it. The same
/// products in the same order as [`block`]'s loop, so the same bits: the first step's
/// products start the sums, then one fused multiply-add a step. In assembly because the
/// compiler, short of registers for twelve row addresses, worked out most of them again at
/// every step: a dozen integer instructions among the 24 multiply-adds, some on the ports
/// the multiply-adds need. Here three row pointers and two strides address all twelve, and
/// two steps share one pointer update. Intel Xeon (Sapphire Rapids class, its plain FMA
/// peak 206 GFLOP/s a core that day), one thread, data in cache, GFLOP/s intrinsics ->
/// assembly: m252 n256 k512 139 -> 160, k1024 131 -> 149, m192 n256 k1152 128 -> 153, m252
/// n64 k256 148 -> 159, m12 n32 k256 155 -> 166. Whole networks, 2 threads, medians of 3-4
/// interleaved rounds (one binary, an environment switch since removed), images/s:
/// ResNet-50 batch 16 33.9 -> 36.0, batch 1 30.4 -> 31.2; ResNet-18 batch 1 84.3 -> 87.6,
/// batch 16 104.0 -> 108.4; DenseNet-121 batch 1 43.7 -> 45.2, batch 16 48.7 -> 51.4; Lite0
/// batch 1 192.7 -> 202.1.
///
/// The sums leave in registers, for `finish_sums!` (`mod.rs`) to finish and store them there.
///
/// # Safety
/// As [`gemm`], for these rows and panels.
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn sums<const R: usize>(
    k: usize,
    lhs: *const f32,
    lhs_rs: usize,
    w: *const f32,
    ahead: Ahead,
) -> [__m512; 2 * LONG] {
    debug_assert!(k >= 1);
    let s = lhs_rs * 4;
    let mut c = [_mm512_setzero_ps(); 2 * LONG];
    /// The block's loop, stepped by `$step`, the second step's weights in `zmm28`/`zmm29`;
    /// the sums out of `zmm0`, `zmm1`, ... into `c[0]`, `c[1]`, ..., the other registers the
    /// code writes (`$scratch`) declared as clobbered.
    macro_rules! asm_loop {
        ($step:ident, [$wa:literal, $wb:literal], [$($i:tt $sum:tt)*], [$($scratch:tt)*]) => {
            std::arch::asm!(
                k_loop!(
                    $step,
                    "64",
                    [$wa, $wb],
                    ["28", "29"],
                    "add {a0}, 4\nadd {a4}, 4\nadd {a8}, 4\nadd {w}, 64\n",
                    "add {a0}, 8\nadd {a4}, 8\nadd {a8}, 8\nadd {w}, 128\n",
                ),
                k = inout(reg) k => _,
                a0 = inout(reg) lhs => _,
                a4 = inout(reg) lhs.wrapping_add(4 * lhs_rs) => _,
                a8 = inout(reg) lhs.wrapping_add(8 * lhs_rs) => _,
                s = in(reg) s,
                s3 = in(reg) 3 * s,
                w = inout(reg) w => _,
                ps = in(reg) k * W * 4,
                pa = inout(reg) ahead.at => _,
                pf = inout(reg) ahead.lines => _,
                $(out($sum) c[$i],)*
                $(out($scratch) _,)*
                options(nostack),
            )
        };
    }
    // SAFETY: every address is a row of `lhs` (up to step `k`) or a panel's row (up to `k`);
    // prefetches never fault. Every vector register the code writes is declared.
    unsafe {
        if R == LONG {
            asm_loop!(
                step_long,
                ["26", "27"],
                [
                    0 "zmm0" 1 "zmm1" 2 "zmm2" 3 "zmm3" 4 "zmm4" 5 "zmm5" 6 "zmm6" 7 "zmm7"
                    8 "zmm8" 9 "zmm9" 10 "zmm10" 11 "zmm11" 12 "zmm12" 13 "zmm13" 14 "zmm14"
                    15 "zmm15" 16 "zmm16" 17 "zmm17" 18 "zmm18" 19 "zmm19" 20 "zmm20" 21 "zmm21"
                    22 "zmm22" 23 "zmm23" 24 "zmm24" 25 "zmm25"
                ],
                ["zmm26" "zmm27" "zmm28" "zmm29" "zmm30" "zmm31"]
            )
        } else {
            debug_assert_eq!(R, ROWS);
            asm_loop!(
                step,
                ["24", "25"],
                [
                    0 "zmm0" 1 "zmm1" 2 "zmm2" 3 "zmm3" 4 "zmm4" 5 "zmm5" 6 "zmm6" 7 "zmm7"
                    8 "zmm8" 9 "zmm9" 10 "zmm10" 11 "zmm11" 12 "zmm12" 13 "zmm13" 14 "zmm14"
                    15 "zmm15" 16 "zmm16" 17 "zmm17" 18 "zmm18" 19 "zmm19" 20 "zmm20" 21 "zmm21"
                    22 "zmm22" 23 "zmm23"
                ],
                ["zmm24" "zmm25" "zmm26" "zmm27" "zmm28" "zmm29" "zmm30" "zmm31"]
            )
        }
    }
    c
}
