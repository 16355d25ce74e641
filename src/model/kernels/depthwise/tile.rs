//! The vector depthwise kernels' main path: tiles of [`T`] adjacent output pixels x one or
//! two registers of channels (the last few under a mask), summed in registers over all
//! taps. Each kernel row's weights are loaded once per tile and each input vector once for
//! all the tile's pixels that read it: a pixel at a time, every FMA needs a load of its
//! input and one of its weight, and loads, not FMAs, bound the kernel. A tile also covers
//! the row's edges, skipping the input columns outside the image, so a 7x7 map is one tile
//! a row.
//!
//! The code is generic over the register ([`Lanes`]); each instruction set's file
//! implements it and calls [`row`] from a function compiled for that set, into which
//! everything here is inlined.

use std::ops::Range;

use super::{Operands, Rows, MAX_K};
use crate::model::kernels::Activation;

/// Output pixels of a tile: 7 divides the widths of EfficientNet's and MobileNet's maps
/// at 224 (112 to 7), and 7 sums a register of channels leave room for the weights.
const T: usize = 7;

/// Taps x channels from which a row runs each block of channels over all its tiles before
/// the next block (the block's weights then stay in L1 across the tiles); below it, each
/// tile over all its channels before the next tile, which reads the input's pixels whole,
/// in order. 4096 values are 16 KiB, half an L1 data cache.
const GROUPED_FROM: usize = 4096;

/// Whether the tiles run `k x k` filters at `stride` (others take the per-pixel AVX2
/// kernel).
pub(super) fn covers(k: usize, stride: usize) -> bool {
    matches!(k, 3 | 5 | 7) && matches!(stride, 1 | 2)
}

/// A vector register of f32 and the operations the tiles need. Every method is
/// `#[inline(always)]`, so that it is compiled into the caller's instruction set.
pub(super) trait Lanes: Copy {
    /// Values a register holds.
    const L: usize;
    /// The widest kernel whose tiles take two registers of channels: [`T`] x 2 sums, `k` x
    /// 2 weights and 2 inputs must fit in the register file.
    const PAIRS_UP_TO: usize;
    /// The lanes a masked load or store touches.
    type Mask: Copy;

    /// Whether this register's tiles are compiled for `k x k` filters at `stride` (a
    /// subset of [`covers`]; constant for constant arguments, so that no code is made for
    /// the others).
    fn tiles(k: usize, stride: usize) -> bool;

    /// # Safety
    /// The CPU must have the instruction set (all methods).
    unsafe fn mask(n: usize) -> Self::Mask;
    /// # Safety
    /// `p` must be valid for `L` reads.
    unsafe fn load(p: *const f32) -> Self;
    /// # Safety
    /// `p` must be valid for reads of the lanes of `m`.
    unsafe fn load_masked(p: *const f32, m: Self::Mask) -> Self;
    /// `a * b + c`.
    ///
    /// # Safety
    /// As [`Lanes::mask`].
    unsafe fn fma(a: Self, b: Self, c: Self) -> Self;
    /// # Safety
    /// As [`Lanes::mask`].
    unsafe fn activate(self, act: Activation) -> Self;
    /// # Safety
    /// `p` must be valid for `L` writes.
    unsafe fn store(self, p: *mut f32);
    /// # Safety
    /// `p` must be valid for writes of the lanes of `m`.
    unsafe fn store_masked(self, p: *mut f32, m: Self::Mask);
}

/// Channels `chans` of one output row into `dst`, tile by tile ([`GROUPED_FROM`] says in
/// which order).
///
/// # Safety
/// The CPU must have `R`'s instruction set; `dst` must be valid for the row's `ow * c`
/// values, `chans` within the channels, the input must hold every pixel the taps name,
/// and [`Lanes::tiles`] must hold for the convolution.
#[inline(always)]
pub(super) unsafe fn row<R: Lanes>(
    rows: &Rows,
    act: Activation,
    dst: *mut f32,
    chans: Range<usize>,
) {
    let k = rows.operands(act);
    macro_rules! shapes {
        ($(($kw:literal, $s:literal))*) => {
            match (rows.conv.k, rows.conv.stride) {
                // SAFETY: this function's contract.
                $(($kw, $s) if R::tiles($kw, $s) => unsafe {
                    tiles::<R, $kw, $s>(rows, &k, dst, chans)
                },)*
                (kw, s) => unreachable!("depthwise tiles for {kw}x{kw} stride {s}"),
            }
        };
    }
    shapes!((3, 1)(3, 2)(5, 1)(5, 2)(7, 1)(7, 2));
}

/// [`row`] for `KW x KW` filters at stride `S`.
///
/// # Safety
/// As [`row`].
#[inline(always)]
unsafe fn tiles<R: Lanes, const KW: usize, const S: usize>(
    rows: &Rows,
    k: &Operands,
    dst: *mut f32,
    chans: Range<usize>,
) {
    let mut kernel_rows = [(0, 0); MAX_K];
    let n = rows.kernel_rows(&mut kernel_rows);
    let tile = Tile {
        k,
        rows: &kernel_rows[..n],
        w: rows.x.w as isize,
        pixel: rows.x.stride,
        span: ((T - 1) * S + KW) as isize,
    };
    let first = |ox: usize| (ox * S) as isize - rows.pad.left as isize;
    // Every tile of the row, on channels `$chans`. A macro, not a closure: a closure does
    // not take on its caller's target features, so the tile code in it was not inlined
    // (Lite0 batch 1 ran at a quarter of its speed).
    macro_rules! row {
        ($chans:expr) => {
            for ox in (0..rows.ow).step_by(T) {
                let n = (rows.ow - ox).min(T);
                // SAFETY: this function's contract; the tiles cover the row, and every
                // call's channels lie within the caller's `chans`.
                unsafe { tile.blocks::<R, KW, S>(first(ox), dst.add(ox * k.c), n, $chans) };
            }
        };
    }
    if KW * KW * chans.len() < GROUPED_FROM {
        row!(chans.clone());
    } else {
        // Each block of channels over the whole row before the next.
        let mut c0 = chans.start;
        while c0 < chans.end {
            let block = c0..chans.end.min(c0 + tile.block::<R, KW>(c0..chans.end));
            row!(block.clone());
            c0 = block.end;
        }
    }
}

/// What every tile of a row shares: the operands, the kernel rows inside the input, as
/// `(weight offset of the row's first tap, input offset of the input row's first pixel)`,
/// the input's width and pixel stride, and the input columns a tile spans.
struct Tile<'a> {
    k: &'a Operands,
    rows: &'a [(usize, usize)],
    w: isize,
    pixel: usize,
    span: isize,
}

impl Tile<'_> {
    /// How many of `chans` the first block takes: two registers while the kernel leaves
    /// room for them, else one, else the rest.
    #[inline(always)]
    fn block<R: Lanes, const KW: usize>(&self, chans: Range<usize>) -> usize {
        match chans.len() {
            n if KW <= R::PAIRS_UP_TO && n >= 2 * R::L => 2 * R::L,
            n => n.min(R::L),
        }
    }

    /// Channels `chans` of the tile whose first pixel reads input column `ix` and is
    /// written at `out`, `n` of its pixels in the row: block by block, without the edge
    /// checks where every column it reads lies inside the image.
    ///
    /// # Safety
    /// As [`row`], for these pixels and channels; `n <= T`.
    #[inline(always)]
    unsafe fn blocks<R: Lanes, const KW: usize, const S: usize>(
        &self,
        ix: isize,
        out: *mut f32,
        n: usize,
        chans: Range<usize>,
    ) {
        let inside = ix >= 0 && ix + self.span <= self.w;
        let mut c0 = chans.start;
        // SAFETY (all calls): the blocks stay within `chans`, masked past a whole register.
        unsafe {
            while c0 < chans.end {
                let width = self.block::<R, KW>(c0..chans.end);
                let m = R::mask(width);
                // Whole registers (0: masked); no code for pairs where they do not fit.
                let whole = match width / R::L {
                    2 if KW <= R::PAIRS_UP_TO => 2,
                    1 => 1,
                    _ => 0,
                };
                match (whole, inside) {
                    (2, true) => self.run::<R, 2, KW, S, false, false>(ix, out, n, c0, m),
                    (2, false) => self.run::<R, 2, KW, S, false, true>(ix, out, n, c0, m),
                    (1, true) => self.run::<R, 1, KW, S, false, false>(ix, out, n, c0, m),
                    (1, false) => self.run::<R, 1, KW, S, false, true>(ix, out, n, c0, m),
                    (_, true) => self.run::<R, 1, KW, S, true, false>(ix, out, n, c0, m),
                    (_, false) => self.run::<R, 1, KW, S, true, true>(ix, out, n, c0, m),
                }
                c0 += width;
            }
        }
    }

    /// Channels `c0..c0 + V * L` (the lanes of `mask` if `MASKED`) of the [`T`] output
    /// pixels from `out` on, whose first reads input column `ix` (negative at the left
    /// edge); only the first `n` are stored. Pixel `p` reads input column `ix + p * S + kx`
    /// with tap `kx`, and takes its sum in the order of the portable kernel: bias, then the
    /// taps inside the image in (ky, kx) order. Without `EDGE`, every column the tile reads
    /// must lie inside the image.
    ///
    /// # Safety
    /// As [`row`], for these pixels and channels; `n <= T`.
    #[inline(always)]
    unsafe fn run<
        R: Lanes,
        const V: usize,
        const KW: usize,
        const S: usize,
        const MASKED: bool,
        const EDGE: bool,
    >(
        &self,
        ix: isize,
        out: *mut f32,
        n: usize,
        c0: usize,
        mask: R::Mask,
    ) {
        let (k, l) = (self.k, R::L);
        // SAFETY (whole body): the caller keeps the block within the channels (masked past
        // them); every input column read is inside the image, on a kernel row inside it.
        unsafe {
            let load = |p: *const f32| {
                if MASKED {
                    R::load_masked(p, mask)
                } else {
                    R::load(p)
                }
            };
            let bias: [R; V] = std::array::from_fn(|v| load(k.bias.add(c0 + v * l)));
            let mut acc = [bias; T];
            for &(t, off) in self.rows {
                let w: [[R; V]; KW] = std::array::from_fn(|kx| {
                    std::array::from_fn(|v| load(k.w.add(t + kx * k.c + c0 + v * l)))
                });
                // Column by column, written out (a loop over them is too large for LLVM to
                // unroll, and rolled, the sums leave the registers).
                macro_rules! columns {
                    ($($i:literal)*) => {$(
                        let col = ix + $i;
                        if $i < (T - 1) * S + KW && !(EDGE && (col < 0 || col >= self.w)) {
                            let x = k.x.add(off + col as usize * self.pixel + c0);
                            let x: [R; V] = std::array::from_fn(|v| load(x.add(v * l)));
                            // The pixels that read this column, as their tap `i - p * S`.
                            for (p, acc) in acc.iter_mut().enumerate() {
                                if $i >= p * S && $i - p * S < KW {
                                    for (v, a) in acc.iter_mut().enumerate() {
                                        *a = R::fma(x[v], w[$i - p * S][v], *a);
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
                    let (a, dst) = (a.activate(k.act), out.add(p * k.c + c0 + v * l));
                    if MASKED {
                        a.store_masked(dst, mask);
                    } else {
                        a.store(dst);
                    }
                }
            }
        }
    }
}
