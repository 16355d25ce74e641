//! Winograd F(2x2, 3x3) for stride-1 3x3 convolutions (Lavin & Gray, "Fast Algorithms for
//! Convolutional Neural Networks", 2015).
//!
//! The output is cut into 2x2 tiles. Each tile's 4x4 input patch `d` becomes `B^T d B`, the
//! filter `g` becomes `G g G^T` (once, at first use), and the 16 positions of those 4x4
//! transforms are 16 independent GEMMs of `tiles x Cin` by `Cin x Cout`. `A^T m A` turns each
//! tile's 16 products back into its 2x2 outputs. That is 16 multiplies per tile where direct
//! convolution needs 36: 2.25x fewer flops. The transforms only add, subtract and halve, so
//! the result matches direct convolution to f32 rounding.
//!
//! ```text
//!        | 1  0 -1  0 |        | 1    0    0  |
//! B^T =  | 0  1  1  0 |   G =  | 1/2  1/2  1/2|   A^T = | 1  1  1  0 |
//!        | 0 -1  1  0 |        | 1/2 -1/2  1/2|         | 0  1 -1 -1 |
//!        | 0  1  0 -1 |        | 0    0    1  |
//! ```

use super::launch::{Launch, SMALL_WEIGHT_BYTES};
use crate::model::kernels::gemm::{self as panel, general_gemm};
use crate::model::kernels::isa::compiled_for;
use crate::model::kernels::par::{par_blocks, SendPtr};
use crate::model::kernels::scratch::{with_scratch, with_tile_scratch};
use rayon::prelude::*;

/// Transformed positions per tile.
const POSITIONS: usize = 16;

/// Tiles per block when blocks of tiles are spread over threads (64 tiles = 256 output rows,
/// as [`super::ROW_BLOCK`]).
const TILE_BLOCK: usize = 64;

/// `G g G^T` for every (ci, co), from the GEMM-packed weight (`(ky, kx, ci) x cout`): 16
/// matrices of `cin x cout`, position-major.
pub(super) fn transform_weight(packed: &[f32], cin: usize, cout: usize) -> Vec<f32> {
    const G: [[f32; 3]; 4] = [
        [1.0, 0.0, 0.0],
        [0.5, 0.5, 0.5],
        [0.5, -0.5, 0.5],
        [0.0, 0.0, 1.0],
    ];
    let mut u = vec![0f32; POSITIONS * cin * cout];
    for (p, plane) in u.chunks_exact_mut(cin * cout).enumerate() {
        let (a, b) = (p / 4, p % 4);
        for (ci, row) in plane.chunks_exact_mut(cout).enumerate() {
            for ky in 0..3 {
                for kx in 0..3 {
                    let f = G[a][ky] * G[b][kx];
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

/// `B^T` applied to four vectors: `y = (x0 - x2, x1 + x2, x2 - x1, x1 - x3)`.
#[inline(always)]
fn input_4(x: [&[f32]; 4], y: [&mut [f32]; 4]) {
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

/// `A^T` applied to four vectors: `y = (x0 + x1 + x2, x1 - x2 - x3)`.
#[inline(always)]
fn output_4(x: [&[f32]; 4], y0: &mut [f32], y1: &mut [f32]) {
    let n = y0.len();
    let (x0, x1, x2, x3) = (&x[0][..n], &x[1][..n], &x[2][..n], &x[3][..n]);
    let y1 = &mut y1[..n];
    for i in 0..n {
        y0[i] = x0[i] + x1[i] + x2[i];
        y1[i] = x1[i] - x2[i] - x3[i];
    }
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
    /// How many 2x2 tiles cover the output, when this convolution can take the Winograd path
    /// (3x3, stride 1, not grouped).
    pub(super) fn winograd_tiles(&self) -> Option<usize> {
        (self.conv.k == 3 && self.conv.stride == 1 && self.conv.groups == 1)
            .then(|| self.x.n * self.oh.div_ceil(2) * self.ow.div_ceil(2))
    }

    /// The whole convolution by F(2x2, 3x3) into `dst` (rows `out_stride` apart). Many tiles:
    /// blocks of tiles, each transformed, multiplied and finished by one thread in its cache.
    /// Few tiles: each stage in parallel over the whole output, the 16 GEMMs shared between
    /// threads so that each streams only its part of the weight.
    ///
    /// # Safety
    /// As [`Launch::run`].
    pub(super) unsafe fn run_winograd(&self, dst: SendPtr, out_stride: usize) {
        let conv = self.conv;
        let (cin, cout) = (conv.cin, conv.cout);
        let u = conv.winograd.get_or_init(|| {
            let u = transform_weight(&conv.row_major(), cin, cout);
            let Some(kernel) = conv.panels else {
                return u;
            };
            // Each position's matrix in the panels that kernel reads.
            u.chunks_exact(cin * cout)
                .flat_map(|m| kernel.pack(m, cin, cout))
                .collect()
        });
        let tiles = self.winograd_tiles().expect("a 3x3 stride-1 convolution");
        let threads = rayon::current_num_threads();
        // Few tiles but a small transformed weight: still blocks of tiles (one parallel
        // section instead of three), down to 4 tiles per thread.
        let small_weight = u.len() * std::mem::size_of::<f32>() <= SMALL_WEIGHT_BYTES;
        if tiles >= TILE_BLOCK / 2 * threads || (small_weight && tiles >= 4 * threads) {
            par_blocks(tiles, TILE_BLOCK, |t0, len| {
                with_scratch(POSITIONS * len * (cin + cout), |buf| {
                    let (v, m) = buf.split_at_mut(POSITIONS * len * cin);
                    let (v, m) = (Planes::new(v, len, cin), Planes::new(m, len, cout));
                    // SAFETY: this block's own scratch, and its own tiles of the output.
                    unsafe {
                        self.transform_input(t0, len, v);
                        for p in 0..POSITIONS {
                            self.multiply(p, len, v, m, u);
                        }
                        self.transform_output(t0, len, m, dst, out_stride);
                    }
                });
            });
        } else {
            with_scratch(POSITIONS * tiles * (cin + cout), |buf| {
                let (v, m) = buf.split_at_mut(POSITIONS * tiles * cin);
                let (v, m) = (Planes::new(v, tiles, cin), Planes::new(m, tiles, cout));
                let chunk = tiles.div_ceil(threads);
                // SAFETY: chunks are disjoint tile ranges, positions disjoint planes.
                par_blocks(tiles, chunk, |t0, len| unsafe {
                    self.transform_input(t0, len, v.skip(t0));
                });
                (0..POSITIONS).into_par_iter().for_each(|p| unsafe {
                    self.multiply(p, tiles, v, m, u);
                });
                par_blocks(tiles, chunk, |t0, len| unsafe {
                    self.transform_output(t0, len, m.skip(t0), dst, out_stride);
                });
            });
        }
    }

    /// Tile `t`'s image and top-left output pixel.
    fn tile_origin(&self, t: usize) -> (usize, usize, usize) {
        let (th, tw) = (self.oh.div_ceil(2), self.ow.div_ceil(2));
        (t / (th * tw), (t / tw) % th * 2, t % tw * 2)
    }

    /// `B^T d B` of tiles `t0..t0+len` into `v` (tile `t` at `t - t0`), zeros where a patch
    /// overhangs the input, the prologue applied to the rest.
    ///
    /// # Safety
    /// `v` must hold `len` tiles, and no one else may use them meanwhile.
    unsafe fn transform_input(&self, t0: usize, len: usize, v: Planes) {
        let (x, c) = (self.x, self.x.c);
        let isa = self.conv.isa;
        with_tile_scratch((2 * POSITIONS + 1) * c, |buf| {
            compiled_for(isa, || {
                let (zeros, buf) = buf.split_at_mut(c);
                zeros.fill(0.0);
                let zeros = &*zeros;
                // Input pixels after the prologue (only used when there is one), and `B^T d`.
                let (patch, rows) = buf.split_at_mut(POSITIONS * c);
                let at = |i: usize, j: usize| (i * 4 + j) * c..(i * 4 + j + 1) * c;
                for t in 0..len {
                    let (img, oy, ox) = self.tile_origin(t0 + t);
                    // The input pixel under patch position (i, j), if the patch does not overhang there.
                    let inside = |i: usize, j: usize| {
                        let iy = (oy + i).checked_sub(self.pad.top).filter(|&y| y < x.h)?;
                        let ix = (ox + j).checked_sub(self.pad.left).filter(|&x_| x_ < x.w)?;
                        Some(x.pixel(img, iy, ix))
                    };
                    if let Some(pro) = &self.pro {
                        for (ij, d) in patch.chunks_exact_mut(c).enumerate() {
                            if let Some(src) = inside(ij / 4, ij % 4) {
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
                    for j in 0..4 {
                        let y = rows
                            .get_disjoint_mut([0, 1, 2, 3].map(|i| at(i, j)))
                            .expect("disjoint rows");
                        input_4([0, 1, 2, 3].map(|i| d(i, j)), y);
                    }
                    for i in 0..4 {
                        let x = [0, 1, 2, 3].map(|j| &rows[at(i, j)]);
                        // SAFETY: `v` holds this block's tiles, only this call writes them.
                        input_4(x, [0, 1, 2, 3].map(|j| unsafe { v.at(i * 4 + j, t) }));
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
                &u[p * cin * cout..],
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
                    u.as_ptr(),
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
    /// with the epilogue; outputs past the edge of an odd-sized output are dropped.
    ///
    /// # Safety
    /// `m` must hold `len` tiles; `dst` as in [`Launch::run`], these tiles' rows used by no
    /// one else.
    unsafe fn transform_output(
        &self,
        t0: usize,
        len: usize,
        m: Planes,
        dst: SendPtr,
        out_stride: usize,
    ) {
        let cout = self.conv.cout;
        let isa = self.conv.isa;
        with_tile_scratch(9 * cout, |buf| {
            compiled_for(isa, || {
                // `A^T M`, and where the second output of a pair goes when it falls past the edge.
                let (cols, overhang) = buf.split_at_mut(8 * cout);
                // SAFETY: the caller gives these tiles' output rows to this call alone.
                let row = |r: usize| unsafe {
                    std::slice::from_raw_parts_mut(dst.0.add(r * out_stride), cout)
                };
                for t in 0..len {
                    let (img, oy, ox) = self.tile_origin(t0 + t);
                    // Down each column (`A^T m`): row a of the result, column j, at (a * 4 + j).
                    {
                        let (s0, s1) = cols.split_at_mut(4 * cout);
                        for (j, (y0, y1)) in s0
                            .chunks_exact_mut(cout)
                            .zip(s1.chunks_exact_mut(cout))
                            .enumerate()
                        {
                            // SAFETY: `m` holds these `len` tiles, read only here.
                            output_4(
                                [0, 1, 2, 3].map(|i| unsafe { &*m.at(i * 4 + j, t) }),
                                y0,
                                y1,
                            );
                        }
                    }
                    for (a, sums) in cols.chunks_exact(4 * cout).enumerate() {
                        let oy = oy + a;
                        if oy >= self.oh {
                            break;
                        }
                        let x = [0, 1, 2, 3].map(|j| &sums[j * cout..(j + 1) * cout]);
                        let r = (img * self.oh + oy) * self.ow + ox;
                        let both = ox + 1 < self.ow;
                        let (y0, y1) = (row(r), if both { row(r + 1) } else { &mut overhang[..] });
                        output_4(x, y0, y1);
                        self.epilogue(y0, r, 0..cout);
                        if both {
                            self.epilogue(y1, r + 1, 0..cout);
                        }
                    }
                }
            })
        })
    }
}
