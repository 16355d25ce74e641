//! The AVX-512 depthwise kernel: tiles of [`T`] adjacent output pixels x 16 or 32 channels
//! (the last few under a mask) summed in registers over all taps. Each kernel row's weights
//! are loaded once per tile and each input vector once for all the tile's pixels that read
//! it: with a pixel at a time every FMA needs a load of its input and one of its weight,
//! and loads, not FMAs, bound the kernel. A tile also covers the row's edges, skipping the
//! input columns outside the image, so a 7x7 map is one tile a row.

use std::arch::x86_64::*;
use std::ops::Range;

use super::{Operands, Rows, MAX_K};
use crate::model::kernels::math::registers;
use crate::model::kernels::Activation;

const L: usize = 16;

/// Output pixels of a tile: 7 divides the widths of EfficientNet's and MobileNet's maps
/// at 224 (112 to 7), and 7 x 2 registers of sums leave room for 5 x 2 weights.
const T: usize = 7;

/// Whether the kernel runs `k x k` filters at `stride` (others take the AVX2 kernel).
pub(super) fn covers(k: usize, stride: usize) -> bool {
    matches!(k, 3 | 5 | 7) && matches!(stride, 1 | 2)
}

/// Taps x channels from which a row runs each block of channels over all its tiles before
/// the next block (the block's weights then stay in L1 across the tiles); below it, each
/// tile over all its channels before the next tile, which reads the input's pixels whole,
/// in order. 4096 values are 16 KiB, half an L1 data cache.
const GROUPED_FROM: usize = 4096;

/// Channels `chans` of one output row into `dst`, tile by tile ([`GROUPED_FROM`] says in
/// which order).
///
/// # Safety
/// The CPU must have AVX-512 F; `dst` must be valid for the row's `ow * c` values, `chans`
/// within the channels, the input must hold every pixel the taps name, and
/// [`covers`] must hold for the convolution.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn row(rows: &Rows, act: Activation, dst: *mut f32, chans: Range<usize>) {
    let k = rows.operands(act);
    macro_rules! shapes {
        ($(($kw:literal, $s:literal))*) => {
            match (rows.conv.k, rows.conv.stride) {
                // SAFETY: this function's contract.
                $(($kw, $s) => unsafe { tiles::<$kw, $s>(rows, &k, dst, chans) },)*
                (kw, s) => unreachable!("AVX-512 depthwise packed for {kw}x{kw} stride {s}"),
            }
        };
    }
    shapes!((3, 1)(3, 2)(5, 1)(5, 2)(7, 1)(7, 2));
}

/// A block of channels a tile runs: 32 from `c0`, 16, or the last fewer than 16.
#[derive(Clone, Copy)]
enum Block {
    Two(usize),
    One(usize),
    Masked(usize, __mmask16),
}

/// [`row`] for `KW x KW` filters at stride `S`.
///
/// # Safety
/// As [`row`].
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn tiles<const KW: usize, const S: usize>(
    rows: &Rows,
    k: &Operands,
    dst: *mut f32,
    chans: Range<usize>,
) {
    let mut kernel_rows = [(0, 0); MAX_K];
    let n = rows.kernel_rows(&mut kernel_rows);
    let tile = Tile {
        rows: &kernel_rows[..n],
        w: rows.x.w as isize,
        pixel: rows.x.stride,
    };
    // Two registers of channels where the weights leave room: 7 x 2 sums, KW x 2 weights
    // and 2 inputs of the 32 registers.
    let two = if KW <= 5 { 2 * L } else { usize::MAX };
    let blocks = std::iter::successors(Some(chans.start), |&c0| {
        Some(
            c0 + if chans.end.saturating_sub(c0) >= two {
                2 * L
            } else {
                L
            },
        )
    })
    .take_while(|&c0| c0 < chans.end)
    .map(|c0| match chans.end - c0 {
        left if left >= two => Block::Two(c0),
        left if left >= L => Block::One(c0),
        left => Block::Masked(c0, (1u16 << left) - 1),
    });
    // The tiles of the row: the first input column each reads (left of the image at the
    // edge), its output and how many of its pixels lie in the row.
    let tiles = (0..rows.ow).step_by(T).map(|ox| {
        let ix = (ox * S) as isize - rows.pad.left as isize;
        // SAFETY: pixel `ox` of the row is `c` values at `ox * c`.
        (ix, unsafe { dst.add(ox * k.c) }, (rows.ow - ox).min(T))
    });
    let span = ((T - 1) * S + KW) as isize;
    // SAFETY: the blocks stay within the channels, masked past them; the tiles within the
    // row; a tile that reads only columns inside the image runs without the edge checks.
    let run = |block, (ix, out, n): (isize, *mut f32, usize)| unsafe {
        let inside = ix >= 0 && ix + span <= tile.w;
        match (block, inside) {
            (Block::Two(c0), true) => tile.run::<2, KW, S, false, false>(k, ix, out, n, c0, !0),
            (Block::Two(c0), false) => tile.run::<2, KW, S, false, true>(k, ix, out, n, c0, !0),
            (Block::One(c0), true) => tile.run::<1, KW, S, false, false>(k, ix, out, n, c0, !0),
            (Block::One(c0), false) => tile.run::<1, KW, S, false, true>(k, ix, out, n, c0, !0),
            (Block::Masked(c0, m), true) => tile.run::<1, KW, S, true, false>(k, ix, out, n, c0, m),
            (Block::Masked(c0, m), false) => tile.run::<1, KW, S, true, true>(k, ix, out, n, c0, m),
        }
    };
    if KW * KW * chans.len() < GROUPED_FROM {
        for t in tiles {
            blocks.clone().for_each(|b| run(b, t));
        }
    } else {
        for b in blocks {
            tiles.clone().for_each(|t| run(b, t));
        }
    }
}

/// What every tile of a row shares: the kernel rows inside the input, as `(weight offset
/// of the row's first tap, input offset of the input row's first pixel)`, the input's
/// width and its pixel stride.
struct Tile<'a> {
    rows: &'a [(usize, usize)],
    w: isize,
    pixel: usize,
}

impl Tile<'_> {
    /// Channels `c0..c0 + 16V` (under `mask` if `MASKED`) of the [`T`] output pixels from
    /// `out` on, whose first reads input column `ix` (negative at the left edge); only the
    /// first `n` are stored. Pixel `p` reads input column `ix + p * S + kx` with tap `kx`,
    /// and takes its sum in the order of the portable kernel: bias, then the taps inside
    /// the image in (ky, kx) order. Without `EDGE`, every column the tile reads must lie
    /// inside the image.
    ///
    /// # Safety
    /// As [`row`], for these pixels and channels; `n <= T`.
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn run<
        const V: usize,
        const KW: usize,
        const S: usize,
        const MASKED: bool,
        const EDGE: bool,
    >(
        &self,
        k: &Operands,
        ix: isize,
        out: *mut f32,
        n: usize,
        c0: usize,
        mask: __mmask16,
    ) {
        // SAFETY (whole body): the caller keeps `c0 + 16V` within the channels (masked past
        // them); every input column read is inside the image, on a kernel row inside it.
        unsafe {
            macro_rules! load {
                ($p:expr) => {
                    if MASKED {
                        _mm512_maskz_loadu_ps(mask, $p)
                    } else {
                        _mm512_loadu_ps($p)
                    }
                };
            }
            let bias: [__m512; V] = std::array::from_fn(|v| load!(k.bias.add(c0 + v * L)));
            let mut acc = [bias; T];
            for &(t, off) in self.rows {
                let w: [[__m512; V]; KW] = std::array::from_fn(|kx| {
                    std::array::from_fn(|v| load!(k.w.add(t + kx * k.c + c0 + v * L)))
                });
                // Column by column, written out (a loop over them is too large for LLVM to
                // unroll, and rolled, the sums leave the registers).
                macro_rules! columns {
                    ($($i:literal)*) => {$(
                        let col = ix + $i;
                        if $i < (T - 1) * S + KW && !(EDGE && (col < 0 || col >= self.w)) {
                            let x = k.x.add(off + col as usize * self.pixel + c0);
                            let x: [__m512; V] = std::array::from_fn(|v| load!(x.add(v * L)));
                            // The pixels that read this column, as their tap `i - p * S`.
                            for (p, acc) in acc.iter_mut().enumerate() {
                                if $i >= p * S && $i - p * S < KW {
                                    for (v, a) in acc.iter_mut().enumerate() {
                                        *a = _mm512_fmadd_ps(x[v], w[$i - p * S][v], *a);
                                    }
                                }
                            }
                        }
                    )*};
                }
                const _: () = assert!((T - 1) * 2 + MAX_K <= 19);
                columns!(0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18);
            }
            for (p, acc) in acc.into_iter().enumerate().take(n) {
                for (v, a) in acc.into_iter().enumerate() {
                    let a = registers::avx512(a, k.act);
                    let dst = out.add(p * k.c + c0 + v * L);
                    if MASKED {
                        _mm512_mask_storeu_ps(dst, mask, a);
                    } else {
                        _mm512_storeu_ps(dst, a);
                    }
                }
            }
        }
    }
}
