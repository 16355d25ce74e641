//! One call of a dense convolution: which algorithm, how the work is split between threads,
//! the receptive-field gather and the epilogue.

use candle_core::Result;
use rayon::prelude::*;

use super::winograd::{F2, F4};
use super::{Algorithm, GemmConv, ROW_BLOCK};
use crate::model::kernels::gemm::{self, general_gemm, Finish, Kernel, Panels};
use crate::model::kernels::isa::compiled_for;
use crate::model::kernels::par::{panel_parts, par_blocks, ReadPtr, SendPtr};
use crate::model::kernels::scratch::with_scratch;
use crate::model::kernels::{Activation, Pad2d, Prologue, View};

/// A weight this small is read whole by every thread rather than split between them when
/// that saves a parallel section (L2 is 1-2 MiB per core on the CPUs measured).
pub(super) const SMALL_WEIGHT_BYTES: usize = 512 * 1024;

/// Output channels below which the panel kernel adds a residual in registers rather than
/// in a pass of its own over each block (MobileNet and EfficientNet projections: 16-192).
pub(super) const RESIDUAL_IN_REGISTERS_BELOW: usize = 256;

/// Where the products run on the AVX-512 panel kernel, a residual of at most this many
/// bytes (the whole layer's) is added in registers however wide: it is still in cache from
/// the block before. ResNet-50 at batch 1 (residuals of 0.4-3.2 MB), Intel Xeon (Sapphire
/// Rapids class), 2 threads, 5 interleaved rounds with an environment switch on one binary:
/// 37.2 -> 39.3 images/s (medians; every round faster); this rule against the one before,
/// `bench/ab.sh`, 8 rounds: 38.6 -> 40.1. At batch 16 (residuals of 6-51 MB) in registers
/// measured 43.5 -> 43.0, so there they keep their pass, unless the output is written over
/// the residual ([`GemmConv::forward_onto`]).
pub(super) const RESIDUAL_IN_REGISTERS_BYTES_AVX512: usize = 4 << 20;

/// Output rows a thread from which a convolution whose receptive fields are gathered splits
/// its rows between threads, each gathering and multiplying its own, rather than its output
/// channels, each multiplying every row by its part of the weight: the 3x3 stride-2 layers
/// of ResNet's third stage at batch 1 (196 rows; weights of 1.2 and 2.4 MB). Split by
/// channels, each thread gathered half the fields and read all of them, half from the other
/// core's cache; split by rows each reads the whole weight, which the first column block's
/// row blocks bring into L2 for the rest. Intel Xeon (Sapphire Rapids class, AVX-512), 2
/// threads, one binary with an environment switch: per-layer timer, two runs each,
/// ResNet-50's 28x28 256 -> 256 3x3 stride 2 998-1001 -> 863-870 us, ResNet-18's 128 -> 256
/// 449-450 -> 382-386; whole networks, 6 interleaved rounds, medians, ResNet-18 batch 1
/// 112.6 -> 115.7 images/s, ResNet-50 37.8 -> 38.1, DenseNet-121 level (54.5, 53.8 over 5);
/// with the AVX2 kernel forced, ResNet-18 74.0 -> 75.1, ResNet-50 level (24.2, 24.4). Rows
/// of plain 1x1 convolutions, split the same way, made ResNet-50's 14x14 projections faster
/// (378 -> 320 us) but the Winograd layers between them slower, and ResNet-18 too (112.6
/// -> 111.4): they keep their rule. At 49 rows (7x7 at batch 1) each thread's 24 rows fill
/// two register blocks poorly: ResNet-50 level at 20 rows a thread.
const GATHERED_ROWS_PER_THREAD: usize = 64;

/// F(4x4, 3x3) tiles per image from which a 3x3 stride-1 convolution takes F(4x4) rather
/// than F(2x2) (16: a 14x14 output).
const WINOGRAD4_TILES: usize = 16;

/// [`WINOGRAD4_TILES`] where the products run on the AVX-512 panel kernel (49: a 28x28
/// output; CPUs that run 512-bit operations at full width, not AMD Zen 4). F(4x4) reads
/// 36 transformed filters where F(2x2) reads 16, and at 14x14 each is used by only 16 tiles
/// of an image: a kernel twice as fast as AVX2's then waits on that weight. Intel Xeon
/// (Sapphire Rapids class, AVX-512), 2 threads, `bench/ab.sh`, medians of 5 interleaved
/// rounds, F(4x4) -> F(2x2) at 14x14: ResNet-50 batch 1 31.4 -> 34.3 images/s, batch 16
/// 40.8 -> 41.0; ResNet-18 batch 1 88.1 -> 99.6, batch 16 129.2 -> 130.6; DenseNet-121
/// batch 1 54.4 -> 55.2, batch 16 60.4 -> 59.0. At 28x28 F(4x4) stays ahead (ResNet-50's
/// 128-channel layer at batch 16: 732 against 880 us).
const WINOGRAD4_TILES_AVX512: usize = 49;

/// The residual a call adds, output row `r`'s `cout` values from `r * cout` on.
#[derive(Clone, Copy)]
pub(super) enum Residual<'a> {
    /// In an array of its own, which nothing writes while the call runs.
    Apart(&'a [f32]),
    /// In the output array itself, `len` values at the pointer: each block of outputs adds
    /// its residual in registers, reading each value before it writes the same address
    /// ([`Launch::can_write_over_residual`]).
    Under(ReadPtr, usize),
}

impl Residual<'_> {
    fn len(self) -> usize {
        match self {
            Residual::Apart(values) => values.len(),
            Residual::Under(_, len) => len,
        }
    }

    /// The address of value `i` (at most `len`).
    fn at(self, i: usize) -> *const f32 {
        debug_assert!(i <= self.len());
        match self {
            Residual::Apart(values) => values.as_ptr().wrapping_add(i),
            Residual::Under(ptr, _) => ptr.0.wrapping_add(i),
        }
    }

    fn is_under(self) -> bool {
        matches!(self, Residual::Under(..))
    }
}

/// One convolution call: input, geometry and epilogue.
pub(super) struct Launch<'a> {
    pub(super) conv: &'a GemmConv,
    pub(super) x: View<'a>,
    pub(super) pad: Pad2d,
    pub(super) pro: Option<Prologue<'a>>,
    pub(super) act: Activation,
    /// `rows x cout`, added before the activation.
    pub(super) residual: Option<Residual<'a>>,
    pub(super) oh: usize,
    pub(super) ow: usize,
    /// Force an algorithm (tests); `None` picks one by shape.
    pub(super) algorithm: Option<Algorithm>,
    /// Whether the GEMM fetches each next block's output and residual rows ahead
    /// ([`Finish::fetch_rows`]).
    pub(super) fetch_rows: bool,
}

impl Launch<'_> {
    /// The algorithm for this shape: Winograd wherever it applies (`classify bench`, 2
    /// threads: it won on every 3x3 stride-1 layer of ResNet and DenseNet, down to the 16
    /// tiles of a 7x7 output at batch 1); F(4x4) where each image has at least
    /// [`WINOGRAD4_TILES`] of its tiles ([`WINOGRAD4_TILES_AVX512`] on the AVX-512 panel
    /// kernel). The choice depends on the image size and the kernel, never on the batch, so
    /// that an image's result does not depend on its batch.
    pub(super) fn choose(&self) -> Algorithm {
        let (th, tw, _) = self.tiles::<6, F4>();
        let from = match self.conv.panels {
            Some(Kernel::Avx512) => WINOGRAD4_TILES_AVX512,
            _ => WINOGRAD4_TILES,
        };
        if !self.winograd_applies() {
            Algorithm::Gemm
        } else if th * tw >= from {
            Algorithm::Winograd4
        } else {
            Algorithm::Winograd2
        }
    }

    /// Whether the output can be written over the residual ([`Residual::Under`]): one
    /// group, the GEMM algorithm, and a panel kernel, whose blocks add the residual in
    /// registers. Winograd's output transform and the passes after the general GEMM write
    /// the sums before they add the residual.
    pub(super) fn can_write_over_residual(&self) -> bool {
        let kernel_adds = |kernel| {
            (kernel == Kernel::Avx512 && self.fused_residual_matches_pass())
                || self.residual_in_registers(kernel)
        };
        self.conv.panels.is_some_and(kernel_adds)
            && self.conv.groups == 1
            && self.algorithm.unwrap_or_else(|| self.choose()) == Algorithm::Gemm
    }

    /// Whether the panel `kernel`'s blocks add a residual in registers, not a pass after
    /// them (see [`Launch::tile`]).
    fn residual_in_registers(&self, kernel: Kernel) -> bool {
        // The residual is read for the output's rows alone, as many bytes.
        self.conv.cout < RESIDUAL_IN_REGISTERS_BELOW
            || (kernel == Kernel::Avx512
                && self.output_bytes() <= RESIDUAL_IN_REGISTERS_BYTES_AVX512
                && self.fused_residual_matches_pass())
    }

    /// Whether a residual added in registers gives the bits of the pass after the product,
    /// so that the choice between them may depend on the output's size (and so the batch):
    /// not where `k` is multiplied in chunks ([`gemm::in_chunks`]), whose first chunk adds
    /// the residual and last the bias, where the pass adds the bias first.
    fn fused_residual_matches_pass(&self) -> bool {
        !gemm::in_chunks(self.conv.k * self.conv.k * self.conv.cin_g())
    }

    /// Bytes of the whole output, all images.
    pub(super) fn output_bytes(&self) -> usize {
        self.x.n * self.oh * self.ow * self.conv.cout * std::mem::size_of::<f32>()
    }

    /// Refuse an input that does not fit the weight, or is empty or short, and a residual
    /// smaller than the output.
    pub(super) fn check(&self) -> Result<()> {
        let (conv, x) = (self.conv, self.x);
        if x.c != conv.cin {
            candle_core::bail!(
                "conv: input has {} channels, weight expects {}",
                x.c,
                conv.cin
            )
        }
        let rows = x.n * self.oh * self.ow;
        if rows == 0 || x.data.len() < (x.n * x.h * x.w - 1) * x.stride + x.c {
            candle_core::bail!("conv: empty or short input")
        }
        if self.residual.is_some_and(|r| r.len() < rows * conv.cout) {
            candle_core::bail!("conv: residual smaller than the output")
        }
        Ok(())
    }

    /// Compute every output row into `dst` (rows `out_stride` apart).
    ///
    /// # Safety
    /// `dst` must be valid for writes of `rows` rows of `cout` values, `out_stride` apart.
    pub(super) unsafe fn run(&self, dst: SendPtr, out_stride: usize) -> Result<()> {
        self.check()?;
        let (conv, x) = (self.conv, self.x);
        let rows = x.n * self.oh * self.ow;
        // SAFETY (both Winograd arms): the caller's contract is `run_winograd`'s, and the arm
        // before them refused convolutions Winograd does not apply to.
        match self.algorithm.unwrap_or_else(|| self.choose()) {
            Algorithm::Gemm => {}
            _ if !self.winograd_applies() => {
                candle_core::bail!("conv: Winograd needs a 3x3 stride-1 convolution")
            }
            Algorithm::Winograd2 => {
                unsafe { self.run_winograd::<4, F2>(dst, out_stride) };
                return Ok(());
            }
            Algorithm::Winograd4 => {
                unsafe { self.run_winograd::<6, F4>(dst, out_stride) };
                return Ok(());
            }
        }
        let kk = conv.k * conv.k * conv.cin_g();
        let direct = self.direct();
        let threads = rayon::current_num_threads();
        if conv.groups > 1 {
            // Every (block of rows, group) pair is a task: its group's fields gathered and
            // multiplied by that group's weight into its own output columns.
            let blocks = rows.div_ceil(ROW_BLOCK);
            (0..blocks * conv.groups).into_par_iter().for_each(|task| {
                let (b, g) = (task / conv.groups, task % conv.groups);
                let (r0, len) = (b * ROW_BLOCK, ROW_BLOCK.min(rows - b * ROW_BLOCK));
                // SAFETY: tasks are disjoint (rows, group columns) of the output, which the
                // caller guarantees holds every row.
                unsafe {
                    self.group_rows_into(g, r0, len, dst.get().add(r0 * out_stride), out_stride)
                }
            });
            return Ok(());
        }
        // Blocks of rows while there are at least 128 rows per thread and the weight is the
        // smaller operand (rows >= Cout); past that (deep layers at small batches, where the
        // weight dominates and arrives cold from memory) threads split the output channels.
        // But a small weight (every thread reads it whole from its cache) is split by rows
        // down to 16 per thread. With a gather to do, that is gather and product in one
        // parallel section instead of two (DenseNet's bottlenecks at batch 1). Without one,
        // each thread keeps to the same rows of the image from layer to layer, as the
        // depthwise convolutions between them do (`depthwise::DepthwiseConv::channel_parts`):
        // its input is what its own core wrote, in its L2, and what it writes is the part of
        // the next layer's input it will read. Splitting the channels instead had each thread
        // read every pixel, half of it from the other core's cache. Intel Xeon (Sapphire
        // Rapids class, AVX-512), 2 threads, Lite0 batch 1, with the depthwise change:
        // `bench/ab.sh`, medians of 8 interleaved rounds, 230.4 -> 248.4 images/s; per-layer
        // timer, 14x14x672 -> 112 152-156 -> 98-102 us.
        //
        // Receptive fields to gather are split by rows from [`GATHERED_ROWS_PER_THREAD`]
        // rows a thread, whatever the weight: see there.
        let small_weight = kk * conv.cout * std::mem::size_of::<f32>() <= SMALL_WEIGHT_BYTES;
        let panels = threads.min(conv.cout / 16).max(1);
        if conv.by_columns() {
            // Whole output rows, the fields of each laid out column by column.
            let (oh, ow) = (self.oh, self.ow);
            par_blocks(x.n * oh, ROW_BLOCK.div_ceil(ow), |y0, count| {
                let (r0, len) = (y0 * ow, count * ow);
                // SAFETY: blocks are disjoint row ranges of the output, which the caller
                // guarantees holds every row.
                unsafe { self.rows_into(r0, len, dst.get().add(r0 * out_stride), out_stride) }
            });
        } else if (rows >= 128 * threads && rows >= conv.cout)
            || (small_weight && rows >= 16 * threads)
            || (!direct && rows >= GATHERED_ROWS_PER_THREAD * threads)
        {
            // Blocks of rows, as many per thread, each gathered, multiplied by a
            // single-threaded GEMM and finished while it is in this core's cache.
            par_blocks(rows, ROW_BLOCK, |r0, len| {
                // SAFETY: blocks are disjoint row ranges of the output, which the caller
                // guarantees holds every row.
                unsafe { self.rows_into(r0, len, dst.get().add(r0 * out_stride), out_stride) }
            });
        } else {
            // Gather once, then split the output channels between threads so each streams
            // its own part of the weight.
            let multiply = |lhs: Lhs| {
                if panels == 1 {
                    let par = Some(threads);
                    // SAFETY: one call covers the whole output.
                    unsafe { self.tile(lhs, dst.get(), out_stride, 0, rows, 0..conv.cout, par) }
                    return;
                }
                let parts = panel_parts(conv.cout, panels, conv.panel_width());
                parts.into_par_iter().for_each(|chans| {
                    // SAFETY: the parts are disjoint channel ranges of the output.
                    unsafe { self.tile(lhs, dst.get(), out_stride, 0, rows, chans, None) }
                });
            };
            if direct {
                multiply(Lhs {
                    ptr: ReadPtr(x.data.as_ptr()),
                    row_stride: x.stride,
                    k: kk,
                });
            } else {
                with_scratch(rows * kk, |cols| {
                    cols.par_chunks_mut(16 * kk)
                        .enumerate()
                        .for_each(|(i, c)| self.gather(i * 16, c.len() / kk, c, 0..x.c));
                    multiply(Lhs {
                        ptr: ReadPtr(cols.as_ptr()),
                        row_stride: kk,
                        k: kk,
                    });
                });
            }
        }
        Ok(())
    }

    /// Output rows `r0..r0+len`, every channel, computed on this thread into `dst` (where
    /// row `r0` goes, rows `out_stride` apart): the input rows multiplied as they are where
    /// the convolution is a plain 1x1 one, else their receptive fields gathered first. The
    /// path of [`GemmConv`]'s GEMM algorithm when rows are split between threads.
    ///
    /// # Safety
    /// `dst` must be valid for writes of `len` rows `out_stride` apart that no other thread
    /// touches meanwhile; `r0 + len` at most the output's rows, and the input checked to hold
    /// every pixel (as `run` does).
    pub(super) unsafe fn rows_into(&self, r0: usize, len: usize, dst: *mut f32, out_stride: usize) {
        // SAFETY: the caller's contract; one group holds every channel.
        unsafe { self.group_rows_into(0, r0, len, dst, out_stride) }
    }

    /// [`Launch::rows_into`] for the output channels of group `g` alone, from its input
    /// channels.
    ///
    /// # Safety
    /// As [`Launch::rows_into`], for the group's channels of those rows; `g` below the
    /// groups.
    unsafe fn group_rows_into(
        &self,
        g: usize,
        r0: usize,
        len: usize,
        dst: *mut f32,
        out_stride: usize,
    ) {
        let (conv, x) = (self.conv, self.x);
        let (cin_g, cout_g) = (conv.cin_g(), conv.cout_g());
        let kk = conv.k * conv.k * cin_g;
        let chans = g * cout_g..(g + 1) * cout_g;
        // SAFETY (both arms): the caller's contract.
        if self.direct() {
            let lhs = Lhs {
                ptr: ReadPtr(x.data[r0 * x.stride + g * cin_g..].as_ptr()),
                row_stride: x.stride,
                k: kk,
            };
            unsafe { self.tile(lhs, dst, out_stride, r0, len, chans, None) }
        } else if conv.by_columns() {
            let (k, s) = (conv.k, conv.stride);
            let column = k * x.c;
            // Runs of pixels in one output row, each run's input columns laid out once.
            with_scratch(((self.ow - 1) * s + k) * column, |cols| {
                for run in self.runs(r0, len) {
                    let cols = &mut cols[..((run.len - 1) * s + k) * column];
                    self.gather_columns(run.img, run.oy, run.ox * s, cols);
                    let lhs = Lhs {
                        ptr: ReadPtr(cols.as_ptr()),
                        row_stride: s * column,
                        k: kk,
                    };
                    // SAFETY: the caller's contract, for this run of its rows.
                    unsafe {
                        let at = dst.add((run.r - r0) * out_stride);
                        self.tile(lhs, at, out_stride, run.r, run.len, chans.clone(), None)
                    }
                }
            })
        } else {
            // At most [`ROW_BLOCK`] rows a gather, so the fields stay in L2 (a fused strip
            // asks for more).
            with_scratch(len.min(ROW_BLOCK) * kk, |cols| {
                for at in (0..len).step_by(ROW_BLOCK) {
                    let rows = ROW_BLOCK.min(len - at);
                    let cols = &mut cols[..rows * kk];
                    self.gather(r0 + at, rows, cols, g * cin_g..(g + 1) * cin_g);
                    let lhs = Lhs {
                        ptr: ReadPtr(cols.as_ptr()),
                        row_stride: kk,
                        k: kk,
                    };
                    // SAFETY: the caller's contract, for these of its rows.
                    unsafe {
                        let at_dst = dst.add(at * out_stride);
                        self.tile(lhs, at_dst, out_stride, r0 + at, rows, chans.clone(), None)
                    }
                }
            })
        }
    }

    /// Whether the GEMM multiplies the input rows as they are: a 1x1 stride-1 unpadded
    /// convolution of a plain input. Everything else gathers its receptive fields first.
    fn direct(&self) -> bool {
        let conv = self.conv;
        conv.k == 1 && conv.stride == 1 && self.pad == Pad2d::uniform(0) && self.pro.is_none()
    }

    /// Fill `cols` with input columns `x0..` (in padded coordinates: input column `x0 -
    /// pad.left` first) of output row `oy` of image `img`'s kernel rows, as many as it
    /// holds, column by column: each its `k` kernel rows' channels, zeros where they overhang
    /// the input, the prologue applied ([`GemmConv::by_columns`]).
    fn gather_columns(&self, img: usize, oy: usize, x0: usize, cols: &mut [f32]) {
        match self.x.c {
            1 => self.gather_columns_of::<1>(img, oy, x0, cols),
            2 => self.gather_columns_of::<2>(img, oy, x0, cols),
            3 => self.gather_columns_of::<3>(img, oy, x0, cols),
            4 => self.gather_columns_of::<4>(img, oy, x0, cols),
            c => unreachable!("fields by columns over {c} channels"),
        }
    }

    /// [`Launch::gather_columns`] over `C` channels: each pixel's copy one fixed-size move.
    fn gather_columns_of<const C: usize>(
        &self,
        img: usize,
        oy: usize,
        x0: usize,
        cols: &mut [f32],
    ) {
        let (x, k) = (self.x, self.conv.k);
        let column = k * C;
        let width = cols.len() / column;
        // Columns `lo..hi` lie inside the input; those before and after overhang it.
        let first = x0 as isize - self.pad.left as isize;
        let lo = (-first).clamp(0, width as isize) as usize;
        let hi = (x.w as isize - first).clamp(lo as isize, width as isize) as usize;
        for ky in 0..k {
            let zero = |cols: &mut [f32]| {
                for col in cols.chunks_exact_mut(column) {
                    col[ky * C..][..C].fill(0.0);
                }
            };
            let iy = (oy * self.conv.stride + ky) as isize - self.pad.top as isize;
            if iy < 0 || iy >= x.h as isize {
                zero(cols);
                continue;
            }
            let (left, rest) = cols.split_at_mut(lo * column);
            let (inside, right) = rest.split_at_mut((hi - lo) * column);
            zero(left);
            zero(right);
            if lo == hi {
                continue;
            }
            let row = &x.data[(img * x.h + iy as usize) * x.w * x.stride..][..x.w * x.stride];
            let pixels = row[(first + lo as isize) as usize * x.stride..]
                .chunks(x.stride)
                .map(|px| <&[f32; C]>::try_from(&px[..C]).expect("C values"));
            let dsts = inside
                .chunks_exact_mut(column)
                .map(|col| <&mut [f32; C]>::try_from(&mut col[ky * C..][..C]).expect("C values"));
            match &self.pro {
                Some(p) => dsts.zip(pixels).for_each(|(d, px)| p.apply(px, d)),
                None => dsts.zip(pixels).for_each(|(d, px)| *d = *px),
            }
        }
    }

    /// Output rows `r0..r0 + len` as runs of pixels in one output row of one image: the
    /// loop of the gathers, which lay out each run's input once, without a division per row.
    fn runs(&self, r0: usize, len: usize) -> impl Iterator<Item = Run> {
        let (oh, ow, end) = (self.oh, self.ow, r0 + len);
        let mut r = r0;
        std::iter::from_fn(move || {
            (r < end).then(|| {
                let ox = r % ow;
                let run = Run {
                    r,
                    img: r / (oh * ow),
                    oy: (r / ow) % oh,
                    ox,
                    len: (ow - ox).min(end - r),
                };
                r += run.len;
                run
            })
        })
    }

    /// Fill `cols` (`len` rows of k*k*C, C the channels `chans` of the input) with the
    /// receptive fields of output rows `r0..r0+len`, zeros where they overhang the input,
    /// the prologue applied.
    fn gather(&self, r0: usize, len: usize, cols: &mut [f32], chans: std::ops::Range<usize>) {
        let (x, k, s) = (self.x, self.conv.k, self.conv.stride);
        let c = chans.len();
        let all = c == x.c;
        let field = k * k * c;
        // Each kernel row's k taps are k*C contiguous values of the input where it lies inside.
        let contiguous = all && self.pro.is_none() && x.stride == c;
        // Runs of rows in one output row of one image (no divisions per row): for each
        // kernel row, its input row is checked once and every field of the run filled.
        for Run {
            r,
            img,
            oy,
            ox: ox0,
            len: run,
        } in self.runs(r0, len)
        {
            let fields = &mut cols[(r - r0) * field..(r - r0 + run) * field];
            for ky in 0..k {
                let iy = (oy * s + ky) as isize - self.pad.top as isize;
                let spans = fields
                    .chunks_exact_mut(field)
                    .map(|f| &mut f[ky * k * c..(ky + 1) * k * c]);
                if iy < 0 || iy >= x.h as isize {
                    spans.for_each(|span| span.fill(0.0));
                    continue;
                }
                let iy = iy as usize;
                for (ox, span) in (ox0..).zip(spans) {
                    let ix0 = (ox * s) as isize - self.pad.left as isize;
                    if contiguous && ix0 >= 0 && ix0 as usize + k <= x.w {
                        let start = ((img * x.h + iy) * x.w + ix0 as usize) * c;
                        copy_short(span, &x.data[start..start + k * c]);
                        continue;
                    }
                    for (kx, d) in span.chunks_exact_mut(c).enumerate() {
                        let ix = ix0 + kx as isize;
                        if ix < 0 || ix >= x.w as isize {
                            d.fill(0.0);
                            continue;
                        }
                        let src = &x.pixel(img, iy, ix as usize)[chans.clone()];
                        match &self.pro {
                            Some(p) => p.apply_from(src, d, chans.start),
                            None => d.copy_from_slice(src),
                        }
                    }
                }
            }
        }
    }

    /// Output rows `r0..r0+len`, channels `chans`, into `dst` (where row `r0` goes): multiply
    /// `len` rows of `lhs` by the weight's columns `chans`, then add bias (and residual) and
    /// activate. `threads`: let the general GEMM itself split the work (the panel kernel runs
    /// on this thread).
    ///
    /// # Safety
    /// `dst` must be valid for `len` rows `out_stride` apart, `lhs` for `len` rows, and no
    /// other thread may touch those output rows' `chans` at the same time.
    #[allow(clippy::too_many_arguments)]
    unsafe fn tile(
        &self,
        lhs: Lhs,
        dst: *mut f32,
        out_stride: usize,
        r0: usize,
        len: usize,
        chans: std::ops::Range<usize>,
        threads: Option<usize>,
    ) {
        let conv = self.conv;
        // SAFETY: the caller guarantees `dst` holds `len` rows.
        let base = unsafe { dst.add(chans.start) };
        let (weight, col) = conv.group_weight(chans.start);
        if let Some(kernel) = conv.panels {
            // Every split of the channels is a whole number of panels.
            debug_assert!(col.is_multiple_of(kernel.width()));
            let w = Panels::new(weight, conv.cout_g()).columns_from(col);
            let (n, k) = (chans.len(), lhs.k);
            // Bias, residual and activation in registers, so the output is written once. But
            // a wide residual (cold, from an earlier layer, rows of thousands of bytes) streams
            // better in its own pass over the block than in the kernel's row-by-row finish,
            // and then that pass does all three. An activation with `exp` or `erf` inside
            // gets a pass over the block just stored.
            let under = self.residual.is_some_and(Residual::is_under);
            let fused_residual = under || self.residual_in_registers(kernel);
            let finish = match self.residual {
                Some(_) if !fused_residual => Finish {
                    fetch_rows: self.fetch_rows,
                    ..Finish::NONE
                },
                residual => Finish {
                    fetch_rows: self.fetch_rows,
                    bias: Some(conv.bias[chans.start..].as_ptr()),
                    // Row `r0`, column `chans.start` of the residual.
                    residual: residual.map(|res| (res.at(r0 * conv.cout + chans.start), conv.cout)),
                    act: if self.act.in_registers() {
                        self.act
                    } else {
                        Activation::Identity
                    },
                },
            };
            let (x, x_rs) = (lhs.ptr.0, lhs.row_stride);
            // SAFETY: the kernel was chosen from a level this CPU has; `lhs` holds `len` rows
            // and the caller gives these output rows' channels to this call alone; the
            // residual holds every output row (checked in `run`).
            unsafe { kernel.gemm(len, n, k, x, x_rs, w, base, out_stride, finish) };
            if self.residual.is_none() || fused_residual {
                if !self.act.in_registers() {
                    for r in 0..len {
                        // SAFETY: row `r` of this call's output block, written above.
                        let row =
                            unsafe { std::slice::from_raw_parts_mut(base.add(r * out_stride), n) };
                        self.act.apply(row, conv.isa);
                    }
                }
                return;
            }
        } else {
            // Column `chans.start` of the row-major weight.
            let (w, w_rs) = (weight[col..].as_ptr(), conv.cout_g());
            let (x, x_rs, n) = (lhs.ptr.0, lhs.row_stride, chans.len());
            // SAFETY: as the panel call above.
            unsafe { general_gemm(len, n, lhs.k, x, x_rs, w, w_rs, base, out_stride, threads) };
        }
        compiled_for!(conv.isa, || {
            for r in 0..len {
                // SAFETY: row `r` of this call's output block, written above.
                let row = unsafe {
                    std::slice::from_raw_parts_mut(base.add(r * out_stride), chans.len())
                };
                self.epilogue(row, r0 + r, chans.clone());
            }
        });
    }

    /// Bias, residual and activation on channels `chans` of output row `r`.
    #[inline(always)]
    pub(super) fn epilogue(&self, row: &mut [f32], r: usize, chans: std::ops::Range<usize>) {
        let cout = self.conv.cout;
        let bias = &self.conv.bias[chans.clone()];
        match self.residual {
            Some(Residual::Apart(res)) => {
                let res = &res[r * cout..][chans];
                for ((v, &b), &s) in row.iter_mut().zip(bias).zip(res) {
                    *v = *v + b + s;
                }
            }
            None => {
                for (v, &b) in row.iter_mut().zip(bias) {
                    *v += b;
                }
            }
            Some(Residual::Under(..)) => {
                unreachable!("a residual under the output added after its sums were stored")
            }
        }
        self.act.apply(row, self.conv.isa);
    }
}

/// `dst.copy_from_slice(src)` for the short spans of a stem's gather (a 3x3 kernel over 3
/// channels: 9 values; as a `memcpy` call each, 37 thousand calls a 224x224 image): moves of
/// 8 values at a time, which compile to vector loads and stores, then single values. The
/// stems' own spans (3 taps x 3 channels, 7 x 3) are copies of a fixed size, which compile
/// to a few moves with no loop: Lite0's stem (3x3) 398 -> 352 us, ResNet-50's (7x7) 2690
/// -> 2560, one thread, batch 1 (a temporary per-layer timer, 5 alternated runs each, AMD
/// EPYC Zen 4, AVX-512).
#[inline]
fn copy_short(dst: &mut [f32], src: &[f32]) {
    if copy_exact::<9>(dst, src) || copy_exact::<21>(dst, src) {
        return;
    }
    if src.len() > 32 {
        dst.copy_from_slice(src);
        return;
    }
    let mut d = dst.chunks_exact_mut(8);
    let mut s = src.chunks_exact(8);
    for (d, s) in (&mut d).zip(&mut s) {
        let s: [f32; 8] = s.try_into().expect("chunks of 8");
        d.copy_from_slice(&s);
    }
    for (d, &s) in d.into_remainder().iter_mut().zip(s.remainder()) {
        *d = s;
    }
}

/// Copy `src` into the start of `dst` as one array of `N` values where `src` holds exactly
/// `N`; false (nothing copied) otherwise.
#[inline(always)]
fn copy_exact<const N: usize>(dst: &mut [f32], src: &[f32]) -> bool {
    match (<&[f32; N]>::try_from(src), dst.first_chunk_mut::<N>()) {
        (Ok(s), Some(d)) => {
            *d = *s;
            true
        }
        _ => false,
    }
}

/// Output pixels `r..r + len` (over all images): pixels `ox..ox + len` of row `oy` of image
/// `img` ([`Launch::runs`]).
struct Run {
    r: usize,
    img: usize,
    oy: usize,
    ox: usize,
    len: usize,
}

/// The left-hand matrix of a GEMM: rows of `k` values, `row_stride` apart.
#[derive(Clone, Copy)]
struct Lhs {
    ptr: ReadPtr,
    row_stride: usize,
    k: usize,
}
