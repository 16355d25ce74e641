//! Winograd F(2x2, 3x3) and F(4x4, 3x3) for stride-1 3x3 convolutions (Lavin & Gray, "Fast
//! Algorithms for Convolutional Neural Networks", 2015).
//!
//! The output is cut into `M x M` tiles. Each tile's `P x P` input patch `d` (`P = M + 2`)
//! becomes `B^T d B`, the filter `g` becomes `G g G^T` (once, at first use), and the `P * P`
//! positions of those transforms are independent GEMMs of `tiles x Cin` by `Cin x Cout`.
//! `A^T m A` turns each tile's products back into its outputs. F(2x2, 3x3) takes 16
//! multiplies per 4 outputs where direct convolution needs 36 (2.25x fewer flops); F(4x4,
//! 3x3) takes 36 per 16 (4x fewer) but reads 2.25x the weight of F(2x2) per tile row, so it
//! pays where tiles are many ([`Launch::choose`]).
//!
//! ```text
//! F(2x2, 3x3):
//!        | 1  0 -1  0 |        | 1    0    0  |
//! B^T =  | 0  1  1  0 |   G =  | 1/2  1/2  1/2|   A^T = | 1  1  1  0 |
//!        | 0 -1  1  0 |        | 1/2 -1/2  1/2|         | 0  1 -1 -1 |
//!        | 0  1  0 -1 |        | 0    0    1  |
//!
//! F(4x4, 3x3):
//!        | 4  0 -5  0  1  0 |        |  1/4     0     0  |
//!        | 0 -4 -4  1  1  0 |        | -1/6  -1/6  -1/6  |         | 1  1  1  1  1  0 |
//! B^T =  | 0  4 -4 -1  1  0 |   G =  | -1/6   1/6  -1/6  |   A^T = | 0  1 -1  2 -2  0 |
//!        | 0 -2 -1  2  1  0 |        |  1/24  1/12  1/6  |         | 0  1  1  4  4  0 |
//!        | 0  2 -1 -2  1  0 |        |  1/24 -1/12  1/6  |         | 0  1 -1  8 -8  1 |
//!        | 0  4  0 -5  0  1 |        |  0     0     1    |
//! ```
//!
//! The transforms of F(2x2) only add, subtract and halve, so its result matches direct
//! convolution to f32 rounding. F(4x4)'s coefficients (up to 8 and 1/24) cost about 10x
//! that: its kernel tests hold it to a bound of its own (`F4_TOLERANCE`); the parity tests
//! against PyTorch keep their tolerances.

use super::launch::{Launch, SMALL_WEIGHT_BYTES};
use crate::model::kernels::gemm::{self as panel, general_gemm};
use crate::model::kernels::isa::compiled_for;
use crate::model::kernels::par::{par_blocks, SendPtr};
use crate::model::kernels::scratch::{with_scratch, with_tile_scratch};
use rayon::prelude::*;

/// Output rows per block when blocks of tiles are spread over threads (256, as
/// [`super::ROW_BLOCK`]): 64 tiles of F(2x2), 16 of F(4x4).
const BLOCK_OUTPUTS: usize = 256;

/// A transformed weight larger than this is not kept in L2 from one block of tiles to the
/// next, beside the block's transforms (L2 is 1-2 MiB per core on the CPUs measured). Such a
/// convolution takes blocks of as many tiles as [`BLOCK_BYTES`] of transforms hold, up to
/// an equal share of the tiles per thread, so that each thread streams the weight as few
/// times as it can: ResNet's F(4x4) 3x3 at 28x28x128 (a 2.4 MB weight, 49 tiles an image)
/// took four blocks of 12-13 tiles, each thread reading the weight twice; now one block a
/// thread (two threads) or two (one). Intel Xeon (Sapphire Rapids class, AVX-512), ResNet-50
/// batch 1, its three such layers, a temporary per-layer timer, medians of 60-80 passes, us:
/// one thread 1195-1266 -> 941-1025, two threads 544-580 -> 478-530. `bench/ab.sh`, 2
/// threads, medians, images/s:
/// ResNet-18 batch 1 81.4 -> 85.3 (8 rounds), batch 16 104.7 -> 106.8 (5); ResNet-50 batch
/// 1 29.2 -> 30.3 (8), batch 16 level (35.1, 35.0). Smaller weights (DenseNet's, ResNet's
/// 64-channel F(4x4): 590 KB) keep their blocks of [`BLOCK_OUTPUTS`]: blocks as large for
/// them too measured DenseNet-121 batch 1 39.8 -> 38.2.
pub(super) const WEIGHT_KEPT_BYTES: usize = 1 << 20;

/// Bytes of the input and output transforms of a block of tiles at most where the weight
/// is not kept ([`WEIGHT_KEPT_BYTES`]): 28 tiles of F(4x4) at 128 channels in and out.
const BLOCK_BYTES: usize = 1 << 20;

/// One Winograd algorithm F(M x M, 3x3), `P = M + 2` the side of its input patches.
pub(super) trait Form<const P: usize> {
    /// Side of an output tile.
    const M: usize;
    /// Which of [`super::GemmConv`]'s transformed weights is this form's.
    const SLOT: usize;
    /// The filter transform (`P x 3`).
    const G: [[f32; 3]; P];
    /// `B^T` applied to `P` vectors, element by element.
    fn input(x: [&[f32]; P], y: [&mut [f32]; P]);
    /// `A^T` applied to `P` vectors into the first `M` of `y`.
    fn output(x: [&[f32]; P], y: &mut [&mut [f32]]);
}

/// F(2x2, 3x3).
pub(super) struct F2;

impl Form<4> for F2 {
    const M: usize = 2;
    const SLOT: usize = 0;
    const G: [[f32; 3]; 4] = [
        [1.0, 0.0, 0.0],
        [0.5, 0.5, 0.5],
        [0.5, -0.5, 0.5],
        [0.0, 0.0, 1.0],
    ];

    /// `y = (x0 - x2, x1 + x2, x2 - x1, x1 - x3)`.
    #[inline(always)]
    fn input(x: [&[f32]; 4], y: [&mut [f32]; 4]) {
        let n = y[0].len();
        let (x0, x1, x2, x3) = (&x[0][..n], &x[1][..n], &x[2][..n], &x[3][..n]);
        let [y0, y1, y2, y3] = y;
        let (y1, y2, y3) = (&mut y1[..n], &mut y2[..n], &mut y3[..n]);
        for i in 0..n {
            y0[i] = x0[i] - x2[i];
            y1[i] = x1[i] + x2[i];
            y2[i] = x2[i] - x1[i];
            y3[i] = x1[i] - x3[i];
        }
    }

    /// `y = (x0 + x1 + x2, x1 - x2 - x3)`.
    #[inline(always)]
    fn output(x: [&[f32]; 4], y: &mut [&mut [f32]]) {
        let [y0, y1, ..] = y else {
            unreachable!("two outputs")
        };
        let n = y0.len();
        let (x0, x1, x2, x3) = (&x[0][..n], &x[1][..n], &x[2][..n], &x[3][..n]);
        let y1 = &mut y1[..n];
        for i in 0..n {
            y0[i] = x0[i] + x1[i] + x2[i];
            y1[i] = x1[i] - x2[i] - x3[i];
        }
    }
}

/// F(4x4, 3x3).
pub(super) struct F4;

impl Form<6> for F4 {
    const M: usize = 4;
    const SLOT: usize = 1;
    const G: [[f32; 3]; 6] = [
        [1.0 / 4.0, 0.0, 0.0],
        [-1.0 / 6.0, -1.0 / 6.0, -1.0 / 6.0],
        [-1.0 / 6.0, 1.0 / 6.0, -1.0 / 6.0],
        [1.0 / 24.0, 1.0 / 12.0, 1.0 / 6.0],
        [1.0 / 24.0, -1.0 / 12.0, 1.0 / 6.0],
        [0.0, 0.0, 1.0],
    ];

    #[inline(always)]
    fn input(x: [&[f32]; 6], y: [&mut [f32]; 6]) {
        let n = y[0].len();
        let [x0, x1, x2, x3, x4, x5] = x.map(|x| &x[..n]);
        let [y0, y1, y2, y3, y4, y5] = y.map(|y| &mut y[..n]);
        for i in 0..n {
            let (d0, d1, d2, d3, d4, d5) = (x0[i], x1[i], x2[i], x3[i], x4[i], x5[i]);
            y0[i] = 4.0 * d0 - 5.0 * d2 + d4;
            y1[i] = (d3 + d4) - 4.0 * (d1 + d2);
            y2[i] = 4.0 * (d1 - d2) + (d4 - d3);
            y3[i] = 2.0 * (d3 - d1) + (d4 - d2);
            y4[i] = 2.0 * (d1 - d3) + (d4 - d2);
            y5[i] = 4.0 * d1 - 5.0 * d3 + d5;
        }
    }

    #[inline(always)]
    fn output(x: [&[f32]; 6], y: &mut [&mut [f32]]) {
        let [y0, y1, y2, y3, ..] = y else {
            unreachable!("four outputs")
        };
        let n = y0.len();
        let [x0, x1, x2, x3, x4, x5] = x.map(|x| &x[..n]);
        let (y1, y2, y3) = (&mut y1[..n], &mut y2[..n], &mut y3[..n]);
        for i in 0..n {
            let (m0, m1, m2, m3, m4, m5) = (x0[i], x1[i], x2[i], x3[i], x4[i], x5[i]);
            let (s12, d12, s34, d34) = (m1 + m2, m1 - m2, m3 + m4, m3 - m4);
            y0[i] = m0 + s12 + s34;
            y1[i] = d12 + 2.0 * d34;
            y2[i] = s12 + 4.0 * s34;
            y3[i] = d12 + 8.0 * d34 + m5;
        }
    }
}

/// `G g G^T` for every (ci, co), from the GEMM-packed weight (`(ky, kx, ci) x cout`): `P * P`
/// matrices of `cin x cout`, position-major.
pub(super) fn transform_weight<const P: usize, F: Form<P>>(
    packed: &[f32],
    cin: usize,
    cout: usize,
) -> Vec<f32> {
    let mut u = vec![0f32; P * P * cin * cout];
    for (p, plane) in u.chunks_exact_mut(cin * cout).enumerate() {
        let (a, b) = (p / P, p % P);
        for (ci, row) in plane.chunks_exact_mut(cout).enumerate() {
            for ky in 0..3 {
                for kx in 0..3 {
                    let f = F::G[a][ky] * F::G[b][kx];
                    if f == 0.0 {
                        continue;
                    }
                    let tap = &packed[((ky * 3 + kx) * cin + ci) * cout..][..cout];
                    for (u, &g) in row.iter_mut().zip(tap) {
                        *u += f * g;
                    }
                }
            }
        }
    }
    u
}

/// Where the transformed tiles live: position `p`, tile `t` starts at
/// `ptr + p * plane + t * width`.
#[derive(Clone, Copy)]
struct Planes {
    ptr: SendPtr,
    plane: usize,
    width: usize,
}

impl Planes {
    /// Planes for `tiles` tiles of `width` values at the start of `buf`.
    fn new(buf: &mut [f32], tiles: usize, width: usize) -> Self {
        Self {
            ptr: SendPtr(buf.as_mut_ptr()),
            plane: tiles * width,
            width,
        }
    }

    /// The same planes without their first `t0` tiles.
    fn skip(self, t0: usize) -> Self {
        Self {
            ptr: SendPtr(self.ptr.0.wrapping_add(t0 * self.width)),
            ..self
        }
    }

    /// # Safety
    /// The planes must hold tile `t` of position `p`, and nothing else may use it meanwhile.
    #[allow(clippy::mut_from_ref)]
    unsafe fn at(&self, p: usize, t: usize) -> &mut [f32] {
        // SAFETY: the caller guarantees the tile is in the planes and used by no one else.
        unsafe {
            std::slice::from_raw_parts_mut(
                self.ptr.0.add(p * self.plane + t * self.width),
                self.width,
            )
        }
    }
}

impl Launch<'_> {
    /// Whether this convolution can take a Winograd path (3x3, stride 1, not grouped).
    pub(super) fn winograd_applies(&self) -> bool {
        self.conv.k == 3 && self.conv.stride == 1 && self.conv.groups == 1
    }

    /// `M x M` tiles per image (down, across) and in all.
    pub(super) fn tiles<const P: usize, F: Form<P>>(&self) -> (usize, usize, usize) {
        let (th, tw) = (self.oh.div_ceil(F::M), self.ow.div_ceil(F::M));
        (th, tw, self.x.n * th * tw)
    }

    /// The whole convolution by F(M x M, 3x3) into `dst` (rows `out_stride` apart). Many
    /// tiles: blocks of tiles, each transformed, multiplied and finished by one thread in its
    /// cache. Few tiles: each stage in parallel over the whole output, the `P * P` GEMMs
    /// shared between threads so that each streams only its part of the weight.
    ///
    /// # Safety
    /// As [`Launch::run`]; the convolution must be one Winograd applies to.
    pub(super) unsafe fn run_winograd<const P: usize, F: Form<P>>(
        &self,
        dst: SendPtr,
        out_stride: usize,
    ) {
        let conv = self.conv;
        let (cin, cout) = (conv.cin, conv.cout);
        let u = conv.winograd[F::SLOT].get_or_init(|| {
            let u = transform_weight::<P, F>(&conv.row_major(), cin, cout);
            let Some(kernel) = conv.panels else {
                return u;
            };
            // Each position's matrix in the panels that kernel reads.
            u.chunks_exact(cin * cout)
                .flat_map(|m| kernel.pack(m, cin, cout))
                .collect()
        });
        let positions = P * P;
        let (_, _, tiles) = self.tiles::<P, F>();
        let threads = rayon::current_num_threads();
        let block = BLOCK_OUTPUTS / (F::M * F::M);
        let weight_bytes = u.len() * std::mem::size_of::<f32>();
        // Tiles a block where they are many.
        let many = if weight_bytes > WEIGHT_KEPT_BYTES {
            let most = BLOCK_BYTES / (positions * (cin + cout) * std::mem::size_of::<f32>());
            tiles.div_ceil(threads).clamp(block, most.max(block))
        } else {
            block
        };
        // Few tiles but a small transformed weight: still blocks of tiles (one parallel
        // section instead of three), down to 4 tiles per thread.
        let small_weight = weight_bytes <= SMALL_WEIGHT_BYTES;
        if tiles >= block / 2 * threads || (small_weight && tiles >= 4 * threads) {
            par_blocks(tiles, many, |t0, len| {
                with_scratch(positions * len * (cin + cout), |buf| {
                    let (v, m) = buf.split_at_mut(positions * len * cin);
                    let (v, m) = (Planes::new(v, len, cin), Planes::new(m, len, cout));
                    // SAFETY: this block's own scratch, and its own tiles of the output.
                    unsafe {
                        self.transform_input::<P, F>(t0, len, v);
                        for p in 0..positions {
                            self.multiply(p, len, v, m, u);
                        }
                        self.transform_output::<P, F>(t0, len, m, dst, out_stride);
                    }
                });
            });
        } else {
            with_scratch(positions * tiles * (cin + cout), |buf| {
                let (v, m) = buf.split_at_mut(positions * tiles * cin);
                let (v, m) = (Planes::new(v, tiles, cin), Planes::new(m, tiles, cout));
                let chunk = tiles.div_ceil(threads);
                // SAFETY: chunks are disjoint tile ranges, positions disjoint planes.
                par_blocks(tiles, chunk, |t0, len| unsafe {
                    self.transform_input::<P, F>(t0, len, v.skip(t0));
                });
                (0..positions).into_par_iter().for_each(|p| unsafe {
                    self.multiply(p, tiles, v, m, u);
                });
                par_blocks(tiles, chunk, |t0, len| unsafe {
                    self.transform_output::<P, F>(t0, len, m.skip(t0), dst, out_stride);
                });
            });
        }
    }

    /// Tile `t`'s image and top-left output pixel.
    fn tile_origin<const P: usize, F: Form<P>>(&self, t: usize) -> (usize, usize, usize) {
        let (th, tw, _) = self.tiles::<P, F>();
        (t / (th * tw), (t / tw) % th * F::M, t % tw * F::M)
    }

    /// `B^T d B` of tiles `t0..t0+len` into `v` (tile `t` at `t - t0`), zeros where a patch
    /// overhangs the input, the prologue applied to the rest.
    ///
    /// # Safety
    /// `v` must hold `len` tiles, and no one else may use them meanwhile.
    unsafe fn transform_input<const P: usize, F: Form<P>>(&self, t0: usize, len: usize, v: Planes) {
        let (x, c) = (self.x, self.x.c);
        let isa = self.conv.isa;
        with_tile_scratch((2 * P * P + 1) * c, |buf| {
            compiled_for!(isa, || {
                let (zeros, buf) = buf.split_at_mut(c);
                zeros.fill(0.0);
                let zeros = &*zeros;
                // Input pixels after the prologue (only used when there is one), and `B^T d`.
                let (patch, rows) = buf.split_at_mut(P * P * c);
                let at = |i: usize, j: usize| (i * P + j) * c..(i * P + j + 1) * c;
                for t in 0..len {
                    let (img, oy, ox) = self.tile_origin::<P, F>(t0 + t);
                    // The input pixel under patch position (i, j), if the patch does not
                    // overhang there.
                    let inside = |i: usize, j: usize| {
                        let iy = (oy + i).checked_sub(self.pad.top).filter(|&y| y < x.h)?;
                        let ix = (ox + j).checked_sub(self.pad.left).filter(|&x_| x_ < x.w)?;
                        Some(x.pixel(img, iy, ix))
                    };
                    if let Some(pro) = &self.pro {
                        for (ij, d) in patch.chunks_exact_mut(c).enumerate() {
                            if let Some(src) = inside(ij / P, ij % P) {
                                pro.apply(src, d);
                            }
                        }
                    }
                    let d = |i: usize, j: usize| match inside(i, j) {
                        None => zeros,
                        Some(_) if self.pro.is_some() => &patch[at(i, j)],
                        Some(src) => src,
                    };
                    // Down each column (`B^T d`), then along each row (`. B`) into the planes.
                    for j in 0..P {
                        let y = rows
                            .get_disjoint_mut(std::array::from_fn(|i| at(i, j)))
                            .expect("disjoint rows");
                        F::input(std::array::from_fn(|i| d(i, j)), y);
                    }
                    for i in 0..P {
                        let x = std::array::from_fn(|j| &rows[at(i, j)]);
                        // SAFETY: `v` holds this block's tiles, only this call writes them.
                        F::input(x, std::array::from_fn(|j| unsafe { v.at(i * P + j, t) }));
                    }
                }
            })
        })
    }

    /// GEMM of position `p`: `m[p] = v[p] (tiles x cin) * u[p] (cin x cout)`, by the panel
    /// kernel where the weight is panelled.
    ///
    /// # Safety
    /// `v` and `m` must hold `tiles` tiles of position `p`, `m`'s used by no one else.
    unsafe fn multiply(&self, p: usize, tiles: usize, v: Planes, m: Planes, u: &[f32]) {
        let (cin, cout) = (self.conv.cin, self.conv.cout);
        // SAFETY: the caller guarantees `v` and `m` hold position `p`'s plane.
        let (v, m, u) = unsafe {
            (
                v.ptr.0.add(p * v.plane),
                m.ptr.0.add(p * m.plane),
                &u[p * self.conv.weight_len(cin, cout)..][..self.conv.weight_len(cin, cout)],
            )
        };
        if let Some(kernel) = self.conv.panels {
            // SAFETY: the kernel was chosen from a level this CPU has; the planes hold
            // `tiles` rows of `cin` and `cout` values, `u` the panels of position `p`.
            unsafe {
                kernel.gemm(
                    tiles,
                    cout,
                    cin,
                    v,
                    cin,
                    panel::Panels::new(u, cout),
                    m,
                    cout,
                    panel::Finish::NONE,
                )
            };
            return;
        }
        // SAFETY: as above, with `u` row-major.
        unsafe { general_gemm(tiles, cout, cin, v, cin, u.as_ptr(), cout, m, cout, None) };
    }

    /// `A^T m A` of tiles `t0..t0+len` (tile `t` at `t - t0` in `m`) into their output rows,
    /// with the epilogue; outputs past the edge of an output whose size is not a multiple of
    /// the tile's are dropped.
    ///
    /// # Safety
    /// `m` must hold `len` tiles; `dst` as in [`Launch::run`], these tiles' rows used by no
    /// one else.
    unsafe fn transform_output<const P: usize, F: Form<P>>(
        &self,
        t0: usize,
        len: usize,
        m: Planes,
        dst: SendPtr,
        out_stride: usize,
    ) {
        let cout = self.conv.cout;
        let isa = self.conv.isa;
        with_tile_scratch((F::M + 1) * P * cout, |buf| {
            compiled_for!(isa, || {
                // `A^T M` (row `a`, column `j` at `a * P + j`), and where the outputs of a row
                // go when they fall past the edge.
                let (cols, overhang) = buf.split_at_mut(F::M * P * cout);
                // SAFETY: the caller gives these tiles' output rows to this call alone.
                let row = |r: usize| unsafe {
                    std::slice::from_raw_parts_mut(dst.0.add(r * out_stride), cout)
                };
                for t in 0..len {
                    let (img, oy, ox) = self.tile_origin::<P, F>(t0 + t);
                    // Down each column (`A^T m`).
                    for j in 0..P {
                        let mut outs = four(cols.chunks_exact_mut(cout).skip(j).step_by(P));
                        // SAFETY: `m` holds these `len` tiles, read only here.
                        F::output(
                            std::array::from_fn(|i| unsafe { &*m.at(i * P + j, t) }),
                            &mut outs[..F::M],
                        );
                    }
                    for (a, sums) in cols.chunks_exact(P * cout).enumerate() {
                        let oy = oy + a;
                        if oy >= self.oh {
                            break;
                        }
                        let x = std::array::from_fn(|j| &sums[j * cout..(j + 1) * cout]);
                        let r = (img * self.oh + oy) * self.ow + ox;
                        let inside = F::M.min(self.ow - ox);
                        let mut spare = overhang.chunks_exact_mut(cout);
                        let mut outs = four((0..F::M).map(|b| {
                            if b < inside {
                                row(r + b)
                            } else {
                                spare.next().expect("an overhang row per tile column")
                            }
                        }));
                        F::output(x, &mut outs[..F::M]);
                        for (b, y) in outs[..inside].iter_mut().enumerate() {
                            self.epilogue(y, r + b, 0..cout);
                        }
                    }
                }
            })
        })
    }
}

/// The first rows (up to four) of `rows` as an array: the outputs of a tile's row or column.
fn four<'a>(rows: impl Iterator<Item = &'a mut [f32]>) -> [&'a mut [f32]; 4] {
    let mut out: [&mut [f32]; 4] = Default::default();
    for (o, r) in out.iter_mut().zip(rows) {
        *o = r;
    }
    out
}
