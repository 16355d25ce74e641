//! The GEMM every dense convolution runs on: the weight packed once, at load, in panels of
//! `width` output channels (each `k x width` contiguous: 16 for AVX-512, 8 for AVX2 and the
//! portable kernel), and a block of outputs kept in registers while it runs down `k`, so
//! each weight value is loaded once per block of rows and each input value once per block of
//! channels. One micro-kernel file per instruction set (`avx512.rs`, `avx2.rs`, `neon.rs`
//! on ARM64, `portable.rs` everywhere); a packed weight carries its [`Kernel`], so layout
//! and kernel cannot disagree.
//!
//! Bias and activation are applied to the block in registers before it is stored.
//!
//! A general GEMM (the `gemm` crate) copies the weight into its own packed layout on every
//! call: a pass over the whole weight for each block of rows, which hurts most where rows
//! are few (deep layers at batch 1, Winograd tiles; `perf` put it at 7-10% of ResNet time).
//! Reading the row-major weight in place instead thrashes the cache: its rows are thousands
//! of bytes apart. The `gemm` crate remains the engine where no panel kernel applies.

/// Assembly loading the weight rows of a step (`dw` bytes past `{w}`, the second panel `{ps}`
/// bytes after the first) into registers `reg wa` and `reg wb` (`reg`: "ymm" or "zmm").
#[cfg(target_arch = "x86_64")]
macro_rules! weight_rows {
    ($reg:literal, $dw:literal, $wa:literal, $wb:literal) => {
        concat!(
            "vmovups ",
            $reg,
            $wa,
            ", [{w} + ",
            $dw,
            "]\n",
            "vmovups ",
            $reg,
            $wb,
            ", [{w} + {ps} + ",
            $dw,
            "]\n",
        )
    };
}

/// Assembly for one row of a step: its value (`d` bytes past `at`) broadcast into `reg x`,
/// then multiplied by the weights in `reg wa` and `reg wb` into sums `reg c0` and `reg c1`
/// with `op`.
#[cfg(target_arch = "x86_64")]
macro_rules! row {
    (
        $reg:literal,
        $op:literal,
        $at:literal,
        $d:literal,
        $x:literal,
        $c0:literal,
        $c1:literal,
        $wa:literal,
        $wb:literal
    ) => {
        concat!(
            "vbroadcastss ",
            $reg,
            $x,
            ", dword ptr [",
            $at,
            " + ",
            $d,
            "]\n",
            $op,
            " ",
            $reg,
            $c0,
            ", ",
            $reg,
            $wa,
            ", ",
            $reg,
            $x,
            "\n",
            $op,
            " ",
            $reg,
            $c1,
            ", ",
            $reg,
            $wb,
            ", ",
            $reg,
            $x,
            "\n",
        )
    };
}

/// The assembly of a full register block's loop down `k`, for the `sums` of [`avx2`] and
/// [`avx512`]. `$step!(op, d, dw, wa, wb)` is one step of that file's block: the weight
/// rows `dw` bytes on into registers `wa` and `wb`, the rows' values `d` bytes on,
/// multiplied in with `op`. The first step multiplies (`vmulps`), the rest multiply-add two
/// at a time (the second `4` and `$row` bytes on, its weights in `wa2` and `wb2`), one line
/// of `{pa}` fetched with each pair while `{pf}` lines are left, then a last lone step;
/// where the lines outnumber the pairs (by more than one), one step at a time with a line
/// each until they are fetched. `$advance` and `$advance2` move the row and weight pointers
/// one and two steps on. The sums are left in their registers, for `finish_sums!`. `{k}` is
/// the steps, at least one.
///
/// One line every two steps, not every step (session 42): at batch 1 the next block's
/// weight comes from memory, one core reads about 12 GB/s of it, and a line a step asked
/// for more than that, so the loop waited for its fetches. Intel Xeon (Sapphire Rapids
/// class), AVX-512, one thread, bias and ReLU, medians of 9 runs, two alternated runs each,
/// every step -> every two steps, weight cold (a new copy each call from 256 MB of them):
/// m49 k2048 n256 487-494 -> 418-425 us, m49 k512 n1024 439 -> 389-409; in cache: m196
/// k1024 n256 699 -> 650, m49 k4608 n512 1719 -> 1623, m49 k2048 n256 345 -> 337, m224 k64
/// n256 level (48.6-48.9); AVX2 forced, weight cold: m49 k2048 n256 690 -> 663, m49 k4608
/// n512 3442 -> 3279. Whole networks within this VM's noise (`bench/ab.sh`, 2 threads,
/// medians: ResNet-50 batch 1 29.1 -> 29.5 images/s over 8 rounds, batch 16 37.4 -> 36.9
/// over 4; DenseNet-121 batch 1 45.3 -> 45.6 over 6; Lite0 batch 1 225.8 -> 237.3 over 6;
/// AVX2 forced, ResNet-50 batch 1 20.5 -> 21.3 over 5).
///
/// But a GEMM of one or two register blocks of rows (16-24 rows: Winograd's products at
/// 7x7) has more lines of the next column block to fetch in each than pairs of steps, and
/// at one a pair half of them arrived late: weight cold, m16 k512 n256 63.3 -> 69.8 us, m24
/// k512 n256 68.5 -> 76.5 (m36 level). There the loop keeps one line a step. Every step ->
/// this rule: m16 k512 n256 62.4-64.0 -> 61.3-62.1 us, m24 k512 n256 68.2-70.3 -> 67.7-68.6,
/// m49 k2048 n256 473 -> 420-429; AVX2 forced, m16 k512 n256 79.4 -> 73.9, m36 k512 n256
/// 130.0 -> 117.9. Whole networks within the noise again (ResNet-50 batch 1 30.4 -> 31.0
/// over 8 rounds, ResNet-18 batch 1 92.7 -> 93.7 over 6, DenseNet-121 batch 1 46.0 -> 45.8
/// and Lite0 batch 1 229.1 -> 227.2 over 5).
#[cfg(target_arch = "x86_64")]
macro_rules! k_loop {
    (
        $step:ident,
        $row:literal,
        [$wa:literal, $wb:literal],
        [$wa2:literal, $wb2:literal],
        $advance:literal,
        $advance2:literal $(,)?
    ) => {
        concat!(
            $step!("vmulps", "0", "0", $wa, $wb),
            $advance,
            "sub {k}, 1\n",
            "jz 3f\n",
            "test {pf}, {pf}\n",
            "jz 5f\n",
            // No more lines than the pairs of steps left, or one more (2 * pf - 2 < k):
            // one line a pair, below.
            "lea {pf}, [{pf} + {pf} - 2]\n",
            "cmp {pf}, {k}\n",
            "lea {pf}, [{pf} + 2]\n",
            "jb 7f\n",
            "shr {pf}, 1\n",
            // Else one line a step.
            "8:\n",
            $step!("vfmadd231ps", "0", "0", $wa, $wb),
            "prefetcht1 [{pa}]\n",
            "add {pa}, 64\n",
            $advance,
            "sub {k}, 1\n",
            "jz 3f\n",
            "sub {pf}, 1\n",
            "jnz 8b\n",
            "jmp 5f\n",
            "7:\n",
            "shr {pf}, 1\n",
            // Pairs of steps with one line of the next block fetched each.
            "6:\n",
            "cmp {k}, 2\n",
            "jb 4f\n",
            $step!("vfmadd231ps", "0", "0", $wa, $wb),
            $step!("vfmadd231ps", "4", $row, $wa2, $wb2),
            "prefetcht1 [{pa}]\n",
            "add {pa}, 64\n",
            $advance2,
            "sub {k}, 2\n",
            "jz 3f\n",
            "sub {pf}, 1\n",
            "jnz 6b\n",
            // Two steps at a time.
            "5:\n",
            "cmp {k}, 2\n",
            "jb 4f\n",
            "2:\n",
            $step!("vfmadd231ps", "0", "0", $wa, $wb),
            $step!("vfmadd231ps", "4", $row, $wa2, $wb2),
            $advance2,
            "sub {k}, 2\n",
            "cmp {k}, 2\n",
            "jae 2b\n",
            "test {k}, {k}\n",
            "jz 3f\n",
            // A last lone step.
            "4:\n",
            $step!("vfmadd231ps", "0", "0", $wa, $wb),
            "3:\n",
        )
    };
}
/// Finish and store the sums of a full register block as `sums` in `avx2.rs` and
/// `avx512.rs` return them (`2 * $rows` vectors of `$w` values, row by row, two panels per
/// row): each vector plus the bias, plus the residual, through the activation of `$finish`,
/// stored to its row of `$dst`, with the instruction set's `[load, add, store]` intrinsics
/// and its `registers` function for the activation. Written out once per
/// vector rather than looped, and a macro rather than a function: a loop with a variable
/// index, or a call the compiler does not inline (one block's stores for each of four
/// activations are too many for it), puts the sums back in memory between the assembly
/// and the stores (both kernels did: AVX-512's through a call, AVX2's through a loop).
/// Intel Xeon (Sapphire Rapids class), one thread, data in cache, bias and ReLU, medians of
/// 9 runs, two alternated runs each, sums through memory -> in registers:
/// - AVX-512: m3136 k16 n96 101.7-102.2 -> 90.8 us, m784 k24 n144 46.5-46.9 -> 41.5-43.1,
///   m196 k40 n240 27.8 -> 26.0-26.3, m3136 k64 n64 176.7-181.5 -> 168.4-172.4, m49 k1152
///   n192 level (130-132).
/// - AVX2: m3136 k16 n96 132.1-133.6 -> 122.8-129.7, m784 k24 n144 61.0-61.7 -> 58.6,
///   m196 k40 n240 40.0-40.3 -> 38.4, m3136 k64 n64 271.0-276.4 -> 263.5-268.4, m49 k1152
///   n192 level (218-221).
///
/// Whole networks, 2 threads, `bench/ab.sh` against the build before: within this VM's
/// noise (Lite0 batch 1 239.9 -> 240.0 images/s over 10 rounds, batch 16 266.7 -> 272.4
/// over 8; ResNet-50 batch 1 33.6 -> 33.0 over 6; AVX2 forced, Lite0 batch 1 168.8 ->
/// 168.0 over 8): these short products are a small part of a network's time.
#[cfg(target_arch = "x86_64")]
macro_rules! finish_sums {
    (
        $rows:expr,
        $sums:expr,
        $dst:expr,
        $dst_rs:expr,
        $finish:expr,
        $w:expr,
        [$load:ident, $add:ident, $store:ident],
        $registers:path $(,)?
    ) => {{
        use $crate::model::kernels::Activation;
        // One copy per activation, the activation a constant in each.
        match $finish.act {
            Activation::Relu => finish_sums!(@act $rows, $sums, $dst, $dst_rs, $finish, $w,
                [$load, $add, $store], |a| $registers(a, Activation::Relu)),
            Activation::Relu6 => finish_sums!(@act $rows, $sums, $dst, $dst_rs, $finish, $w,
                [$load, $add, $store], |a| $registers(a, Activation::Relu6)),
            Activation::HardSwish => finish_sums!(@act $rows, $sums, $dst, $dst_rs, $finish, $w,
                [$load, $add, $store], |a| $registers(a, Activation::HardSwish)),
            // Identity, and the activations applied in a pass after the store.
            _ => finish_sums!(@act $rows, $sums, $dst, $dst_rs, $finish, $w,
                [$load, $add, $store], |a| a),
        }
    }};
    (
        @act $rows:expr, $sums:expr, $dst:expr, $dst_rs:expr, $finish:expr, $w:expr,
        [$load:ident, $add:ident, $store:ident], $act:expr
    ) => {{
        let act = $act;
        let bias = $finish.bias.map(|b: *const f32| [$load(b), $load(b.add($w))]);
        finish_sums!(@each $rows, $sums, $dst, $dst_rs, $finish, $w, [$load, $add, $store], act, bias;
            0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 21 22 23 24 25)
    }};
    (
        @each $rows:expr, $sums:expr, $dst:expr, $dst_rs:expr, $finish:expr, $w:expr,
        [$load:ident, $add:ident, $store:ident], $act:ident, $bias:ident; $($i:literal)*
    ) => {{
        $(
            // (`get`: the index is past the end of AVX2's 12 sums, where the test is false.)
            if let (true, Some(&sum)) = ($i < 2 * $rows, $sums.get($i)) {
                let (r, v) = ($i / 2, $i % 2);
                let mut a = sum;
                if let Some(bias) = $bias {
                    a = $add(a, bias[v]);
                }
                if let Some((res, rs)) = $finish.residual {
                    a = $add(a, $load(res.add(r * rs + $w * v)));
                }
                $store($dst.add(r * $dst_rs + $w * v), $act(a));
            }
        )*
    }};
}
#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx512;
mod general;
#[cfg(target_arch = "aarch64")]
mod neon;
mod portable;

pub(super) use general::general_gemm;

use super::isa::{self, Isa};
use super::Activation;

const WIDTH_AVX2: usize = 8;
const WIDTH_AVX512: usize = 16;

/// A panel micro-kernel, and so the panel width its weights are packed in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kernel {
    /// Plain Rust (`portable.rs`): the scalar level; on ARM64 its pairs of panels run in
    /// NEON's 6 x 16 blocks (`neon.rs`).
    Portable,
    Avx2,
    Avx512,
}

impl Kernel {
    /// The kernel for products with `n` output channels at instruction set `isa`, if any:
    /// the widest whose panel width divides `n`, but never AVX-512's on a CPU that
    /// [halves 512-bit operations](isa::halves_512). There (AMD Zen 4) the AVX-512 peak is
    /// the AVX2 peak, and the AVX2 kernel measured faster: one thread, 7 interleaved rounds,
    /// GMAC/s AVX2 / AVX-512, m256 n96 k16 45.9 / 41.0, n144 k24 50.1 / 44.4, n240 k40
    /// 53.5 / 45.7, m196 n480 k80 50.7 / 42.5, level from k = 192 with the weight warm; in
    /// whole networks, with weights arriving cold, AVX2's everywhere against AVX-512's from
    /// k = 128: ResNet-50 batch 1 25.5 -> 26.7 images/s, ResNet-18 77.2 -> 80.3, DenseNet-121
    /// 41.7 -> 42.7, Lite0 level (2 threads, `bench/ab.sh` medians of 4 interleaved rounds).
    ///
    /// AVX-512's also takes `n` that is a multiple of 8 only (EfficientNet's 24 and 40
    /// channels): its last panel holds 8 channels and 8 zero columns, and the kernel stores
    /// the 8 (it used to leave them to AVX2's kernel). Intel Xeon (Sapphire Rapids class),
    /// 2 threads, Lite0 batch 1, a temporary per-layer timer, two runs each: 56x56 96 -> 24
    /// 102-104 -> 69-73 us, 144 -> 24 (+ residual) 147-164 -> 94-99, 28x28 144 -> 40 54-55 ->
    /// 38-40, 240 -> 40 (+ residual) 84-90 -> 59-62.
    pub fn for_channels(n: usize, isa: Isa) -> Option<Kernel> {
        if isa >= Isa::Avx512 && n.is_multiple_of(WIDTH_AVX2) && !isa::halves_512() {
            Some(Kernel::Avx512)
        } else if isa >= Isa::Avx2 && n.is_multiple_of(WIDTH_AVX2) {
            Some(Kernel::Avx2)
        } else if n.is_multiple_of(portable::W) {
            Some(Kernel::Portable)
        } else {
            None
        }
    }

    /// Output channels per panel.
    pub fn width(self) -> usize {
        match self {
            Kernel::Portable => portable::W,
            Kernel::Avx2 => WIDTH_AVX2,
            Kernel::Avx512 => WIDTH_AVX512,
        }
    }

    /// The instruction set the kernel needs.
    pub fn isa(self) -> Isa {
        match self {
            Kernel::Portable => Isa::Scalar,
            Kernel::Avx2 => Isa::Avx2,
            Kernel::Avx512 => Isa::Avx512,
        }
    }

    /// Values in the [`Kernel::pack`]ed `k x n` weight: `n` rounded up to whole panels.
    pub fn packed_len(self, k: usize, n: usize) -> usize {
        k * n.next_multiple_of(self.width())
    }

    /// The row-major `k x n` weight (`n` a multiple of 8) as panels of `width` columns, each
    /// `k x width` row-major, one after another; the columns of the last panel past `n`
    /// are zeros. A long `k` is stored in the chunks [`k_chunks`] gives, each chunk's rows
    /// packed so in turn.
    pub fn pack(self, weight: &[f32], k: usize, n: usize) -> Vec<f32> {
        let width = self.width();
        let mut panels = Vec::with_capacity(self.packed_len(k, n));
        for steps in k_chunks(k) {
            let rows = &weight[steps.start * n..steps.end * n];
            for j in (0..n).step_by(width) {
                let cols = width.min(n - j);
                for row in rows.chunks_exact(n) {
                    panels.extend_from_slice(&row[j..j + cols]);
                    panels.extend(std::iter::repeat_n(0.0, width - cols));
                }
            }
        }
        panels
    }

    /// [`Kernel::pack`] undone: the row-major `k x n` weight.
    pub fn unpack(self, panels: &[f32], k: usize, n: usize) -> Vec<f32> {
        let width = self.width();
        let mut weight = vec![0f32; k * n];
        for steps in k_chunks(k) {
            let chunk =
                &panels[self.packed_len(steps.start, n)..][..self.packed_len(steps.len(), n)];
            let rows = &mut weight[steps.start * n..steps.end * n];
            for (j, panel) in chunk.chunks_exact(steps.len() * width).enumerate() {
                let cols = width.min(n - j * width);
                for (row, values) in rows.chunks_exact_mut(n).zip(panel.chunks_exact(width)) {
                    row[j * width..j * width + cols].copy_from_slice(&values[..cols]);
                }
            }
        }
        weight
    }

    /// `dst[r][j] = finish(sum_k lhs[r][k] * w[k][j])` for `m` rows and `n` columns (a
    /// multiple of 8) of the [`Kernel::pack`]ed weight `w`, from the column it starts at;
    /// rows of `lhs` and `dst` are `lhs_rs` and `dst_rs` values apart. A `k` stored in
    /// chunks ([`k_chunks`]) is multiplied a chunk at a time, each over every row and column
    /// of the call, each later chunk adding the sums stored before it
    /// ([`Finish::for_chunk`]).
    ///
    /// # Safety
    /// The CPU must have this kernel's instruction set (it was chosen by
    /// [`Kernel::for_channels`] from a supported [`Isa`]); the pointers must be valid for
    /// those rows and panels, and `dst` not overlap `lhs` or `w`. It may be the residual of
    /// `finish` itself (the same address and row stride): each block reads a residual value
    /// before it writes the output at the same address, and no other.
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn gemm(
        self,
        m: usize,
        n: usize,
        k: usize,
        lhs: *const f32,
        lhs_rs: usize,
        w: Panels,
        dst: *mut f32,
        dst_rs: usize,
        finish: Finish,
    ) {
        debug_assert!(self.isa() <= Isa::best(), "{self:?} on a CPU without it");
        debug_assert!(w.col.is_multiple_of(self.width()) && w.col + n <= w.cols);
        let mut chunks = k_chunks(k).peekable();
        while let Some(steps) = chunks.next() {
            let (first, last) = (steps.start == 0, chunks.peek().is_none());
            let finish = finish.for_chunk(first, last, dst, dst_rs);
            let at = self.packed_len(steps.start, w.cols) + w.col * steps.len();
            let k = steps.len();
            // SAFETY: the caller guarantees the instruction set and the pointers; chunk
            // `steps` of column `col` lies `at` values into the packed weight, and the
            // chunk's steps `steps.start` values into each row of `lhs`.
            unsafe {
                let (lhs, w) = (lhs.add(steps.start), w.start.add(at));
                match self {
                    Kernel::Portable => {
                        portable::gemm(m, n, k, lhs, lhs_rs, w, dst, dst_rs, finish)
                    }
                    #[cfg(target_arch = "x86_64")]
                    Kernel::Avx2 => avx2::gemm(m, n, k, lhs, lhs_rs, w, dst, dst_rs, finish),
                    #[cfg(target_arch = "x86_64")]
                    Kernel::Avx512 => avx512::gemm(m, n, k, lhs, lhs_rs, w, dst, dst_rs, finish),
                    #[cfg(not(target_arch = "x86_64"))]
                    _ => unreachable!("x86-64 kernels are never chosen elsewhere"),
                }
            }
        }
    }
}

/// Columns `col..` of a [`Kernel::pack`]ed weight of `cols` columns: what [`Kernel::gemm`]
/// multiplies by.
#[derive(Clone, Copy)]
pub(super) struct Panels {
    start: *const f32,
    cols: usize,
    col: usize,
}

impl Panels {
    /// Every column of `packed`, a weight of `cols` columns.
    pub fn new(packed: &[f32], cols: usize) -> Self {
        Self {
            start: packed.as_ptr(),
            cols,
            col: 0,
        }
    }

    /// The same weight from column `col` on (the first of a panel).
    pub fn columns_from(self, col: usize) -> Self {
        Self { col, ..self }
    }
}

/// The most steps of `k` in a chunk ([`k_chunks`]).
const CHUNK_STEPS: usize = 512;

/// Whether a `k` is stored and multiplied in more than one chunk ([`k_chunks`]).
pub(super) fn in_chunks(k: usize) -> bool {
    k > 2 * CHUNK_STEPS
}

/// The ranges of `k` a [`Kernel::pack`]ed weight of `k` rows is stored and multiplied in:
/// all of it up to two chunks' worth of steps, else as few equal chunks as hold at most
/// [`CHUNK_STEPS`] each. They depend on `k` alone, so an output row gets the same bits in
/// whatever call, block or thread it is computed.
///
/// A register block runs down all of a chunk's steps, the next block down the same steps,
/// and so on over the call's rows and columns before the next chunk: its rows of the input
/// and its panels of the weight (512 steps: 32 KB a panel) are read again from L1 and L2
/// instead of from further. ResNet-50's 3x3 stride-2 layers at batch 1 (`k` = 1152, 2304
/// and 4608, 49-784 rows) had each of their register blocks run down 4.5-18 KB of each
/// input row and up to 590 KB of each column block's weight.
///
/// Intel Xeon (Sapphire Rapids class), AVX-512, 2 threads, per-layer timer, no chunks ->
/// chunks (two runs each): ResNet-50 batch 1 14x14 512 -> 512 stride 2 1138-1175 -> 959-961
/// us, 28x28 256 -> 256 stride 2 805-817 -> 770-772, 56x56 128 -> 128 stride 2 865 -> 836;
/// whole networks, one binary with an environment switch, medians of 6-8 interleaved
/// rounds, images/s: ResNet-18 batch 1 107.0 -> 111.6, ResNet-50 batch 1 37.8 -> 38.0,
/// batch 16 level (43.0, 42.9); Lite0 batch 1 (its 1152-channel 1x1 layers) level (252.1,
/// 255.7); AVX2 forced, ResNet-50 batch 1 24.1 -> 24.3, ResNet-18 level (75.2, 75.3).
/// Chunks from `k` = 2048 on (not the 1152-step layers): ResNet-18 batch 1 109.3, AVX2
/// forced 76.7, ResNet-50 37.8; chunks of 256 steps did no better than of 512.
fn k_chunks(k: usize) -> impl Iterator<Item = std::ops::Range<usize>> {
    let count = if in_chunks(k) {
        k.div_ceil(CHUNK_STEPS)
    } else {
        1
    };
    (0..count).map(move |c| k * c / count..k * (c + 1) / count)
}

/// Rows below which a register block is as slow per step as a block of this many: its
/// few sums are chains of dependent multiply-adds (2 a row, 4 cycles each), not enough to
/// keep the two FMA units busy.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
const SHORT_BLOCK: usize = 4;

/// The register blocks of `m` rows for a kernel of `full`-row blocks, as row ranges: full
/// blocks, then the rows left. Fewer than [`SHORT_BLOCK`] rows left are not a block of their
/// own: where the kernel has a block one row longer (`long`), they go one each to as many
/// full blocks (49 rows, a 7x7 map at batch 1, are 12 + 12 + 12 + 13 on the AVX-512 kernel
/// instead of 4 x 12 + 1); otherwise they join the last full block and the two are split
/// in halves. A block gives each row the bits any other block gives it, so the blocks never
/// change a result.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
pub(super) fn row_blocks(
    m: usize,
    full: usize,
    long: bool,
) -> impl Iterator<Item = std::ops::Range<usize>> {
    let (mut whole, rest) = (m / full, m % full);
    let short = rest > 0 && rest < SHORT_BLOCK;
    let (longs, last) = if short && long && whole >= rest {
        whole -= rest;
        (rest, [0, 0])
    } else if short && whole > 0 {
        whole -= 1;
        let both = full + rest;
        (0, [both.div_ceil(2), both / 2])
    } else {
        (0, [rest, 0])
    };
    let sizes = std::iter::repeat_n(full, whole)
        .chain(std::iter::repeat_n(full + 1, longs))
        .chain(last.into_iter().filter(|&n| n > 0));
    sizes.scan(0, |r, len| {
        let rows = *r..*r + len;
        *r += len;
        Some(rows)
    })
}

/// Values in a cache line.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
pub(super) const LINE: usize = 16;

/// Cache lines of weight to fetch into L2 ahead of their use: a full block's assembly loop
/// fetches one every two steps over its first steps (one a step where they outnumber its
/// pairs of steps, see `k_loop!`), a partial block's loop spreads them over all of `k`. At
/// batch 1 a deep layer's weight is used by few rows (49 at 7x7) and arrives cold from
/// memory: fetched as it is needed, the first block of rows of every column block waits for
/// it; fetched during the previous column block, it is waiting in L2.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
#[derive(Clone, Copy)]
pub(super) struct Ahead {
    pub at: *const f32,
    pub lines: usize,
}

#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
impl Ahead {
    pub const NONE: Self = Self {
        at: std::ptr::null(),
        lines: 0,
    };

    /// The weight of the column block after the `2 * width`-channel block at `w` (column
    /// `j` of `n`): its `k` rows of up to two panels, contiguous in the packed weight.
    pub fn next_block(w: *const f32, j: usize, n: usize, k: usize, width: usize) -> Self {
        let panels = ((n - j - 2 * width) / width).min(2);
        Self {
            at: w.wrapping_add(2 * width * k),
            lines: panels * k * width / LINE,
        }
    }

    /// Part `i` of `parts`.
    pub fn part(self, i: usize, parts: usize) -> Self {
        let (a, b) = (self.lines * i / parts, self.lines * (i + 1) / parts);
        Self {
            at: self.at.wrapping_add(a * LINE),
            lines: b - a,
        }
    }
}

/// What happens to each block of outputs in registers before it is stored: the bias,
/// residual and activation of a convolution's epilogue, so that the output is written once
/// and never read back. The order is `act((sum + bias) + residual)`, as the epilogue pass
/// after a plain product computes it, so either gives the same bits.
#[derive(Clone, Copy)]
pub(super) struct Finish {
    /// The bias of column 0 on.
    pub bias: Option<*const f32>,
    /// The residual of row 0, column 0 on, and its row stride (values); it may be the output
    /// itself ([`Kernel::gemm`]).
    pub residual: Option<(*const f32, usize)>,
    pub act: Activation,
    /// Fetch the output and residual rows of the next register block into L2 while a block
    /// runs: for outputs too large to be in cache. Only the AVX-512 kernel does
    /// (`avx512::fetch_rows`). With the AVX2 kernel forced on the same Intel Xeon it measured
    /// no faster (`bench/ab.sh`, 8 rounds, ResNet-50 batch 16 31.1 -> 30.3 images/s,
    /// DenseNet-121 batch 16 48.9 -> 49.7), and AVX2's is the kernel AMD Zen 4 runs, where
    /// it has not been measured.
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    pub fetch_rows: bool,
}

impl Finish {
    /// Store the plain product.
    pub const NONE: Self = Self {
        bias: None,
        residual: None,
        act: Activation::Identity,
        fetch_rows: false,
    };

    /// The finish of one chunk of `k` ([`k_chunks`]) of a product into `dst`: the first
    /// chunk adds this residual, each later one the sums stored before it (`dst` itself),
    /// and the last the bias and the activation as well.
    fn for_chunk(self, first: bool, last: bool, dst: *const f32, dst_rs: usize) -> Self {
        Self {
            bias: self.bias.filter(|_| last),
            residual: if first {
                self.residual
            } else {
                Some((dst, dst_rs))
            },
            act: if last { self.act } else { Activation::Identity },
            fetch_rows: self.fetch_rows,
        }
    }

    /// The same finish from column `j` on.
    ///
    /// # Safety
    /// The bias and the residual rows must extend that far.
    unsafe fn skip_columns(self, j: usize) -> Self {
        Self {
            // SAFETY: the caller guarantees the bias and residual extend past column `j`.
            bias: self.bias.map(|b| unsafe { b.add(j) }),
            residual: self.residual.map(|(r, rs)| (unsafe { r.add(j) }, rs)),
            ..self
        }
    }

    /// The same finish from row `r` on.
    ///
    /// # Safety
    /// The residual must hold that many rows.
    unsafe fn skip_rows(self, r: usize) -> Self {
        Self {
            // SAFETY: the caller guarantees the residual holds row `r`.
            residual: self.residual.map(|(p, rs)| (unsafe { p.add(r * rs) }, rs)),
            ..self
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_a_naive_product_for_every_row_remainder() {
        for isa in Isa::ALL.into_iter().filter(|&i| i > Isa::best()) {
            eprintln!("panel kernel at {isa}: not run, this CPU lacks it");
        }
        // Every kernel the CPU can run, chosen for convolutions here or not.
        let kernels = [Kernel::Portable, Kernel::Avx2, Kernel::Avx512];
        for kernel in kernels.into_iter().filter(|k| k.isa() <= Isa::best()) {
            check_kernel(kernel);
        }
    }

    /// A full block of rows (on AVX-512, the assembly loop) gives each row the bits a block
    /// one row shorter (the intrinsics' loop) gives it: the same products in the same order.
    /// So do AVX-512's long block (13 rows against 12 + 4) and AVX2's halves (7 rows as 4 +
    /// 3 against one block of 6), which [`row_blocks`] picks for a few rows left over, and
    /// AVX-512's stream blocks (a few rows under a large weight, 9 to 16, against 32 rows in
    /// register blocks; the shape 264 x 520 is large enough).
    #[test]
    fn full_blocks_match_shorter_blocks_to_the_bit() {
        let value = |i: usize| ((i * 7919) % 29) as f32 * 0.37 - 4.1;
        // Each kernel with pairs of row counts whose common rows are compared.
        let kernels: [(Kernel, &[(usize, usize)]); _] = [
            #[cfg(not(target_arch = "aarch64"))]
            (Kernel::Portable, &[(portable::ROWS, portable::ROWS - 1)]),
            // ARM64: NEON's 6-row block against the portable blocks of 4 and 1.
            #[cfg(target_arch = "aarch64")]
            (Kernel::Portable, &[(neon::ROWS, neon::ROWS - 1)]),
            #[cfg(target_arch = "x86_64")]
            (
                Kernel::Avx2,
                &[(avx2::ROWS, avx2::ROWS - 1), (avx2::ROWS + 1, avx2::ROWS)],
            ),
            #[cfg(target_arch = "x86_64")]
            (
                Kernel::Avx512,
                &[
                    (avx512::ROWS, avx512::ROWS - 1),
                    (avx512::LONG, avx512::LONG + 3),
                    (avx512::STREAM_ROWS, 32),
                    (avx512::STREAM_FROM, 32),
                    (13, 32),
                ],
            ),
        ];
        for (kernel, pairs) in kernels.into_iter().filter(|(k, _)| k.isa() <= Isa::best()) {
            for (n, k) in [
                (64usize, 1usize),
                (32, 2),
                (64, 3),
                (96, 150),
                (48, 37),
                (40, 5),
                (264, 520),
            ] {
                let lhs_rs = k + 5;
                let most = pairs.iter().map(|&(a, b)| a.max(b)).max().unwrap_or(0);
                let lhs: Vec<f32> = (0..most * lhs_rs).map(value).collect();
                let w: Vec<f32> = (0..k * n).map(|i| value(i + 7)).collect();
                let panels = kernel.pack(&w, k, n);
                let bias: Vec<f32> = (0..n).map(|j| value(j + 1)).collect();
                let finish = Finish {
                    bias: Some(bias.as_ptr()),
                    residual: None,
                    act: Activation::Relu,
                    fetch_rows: false,
                };
                let run = |m: usize| {
                    let mut dst = vec![f32::NAN; m * n];
                    // SAFETY: a supported kernel; `lhs` holds `m` rows, `dst` `m` rows of `n`.
                    unsafe {
                        let (l, p, d) = (lhs.as_ptr(), Panels::new(&panels, n), dst.as_mut_ptr());
                        kernel.gemm(m, n, k, l, lhs_rs, p, d, n, finish)
                    };
                    dst
                };
                for &(a, b) in pairs {
                    let (one, other) = (run(a), run(b));
                    let differs =
                        (one.iter().zip(&other)).position(|(x, y)| x.to_bits() != y.to_bits());
                    assert_eq!(
                        differs, None,
                        "{kernel:?} {a} against {b} rows, n{n} k{k}: the first value that differs"
                    );
                }
            }
        }
    }

    /// A `k` in chunks ([`k_chunks`]) gives each output the same bits whatever part of the
    /// rows and columns a call covers, as the threads of a convolution split them (by rows, or
    /// by columns from a panel on), with and without a residual.
    #[test]
    fn chunks_of_k_give_every_split_the_same_bits() {
        let value = |i: usize| ((i * 7919) % 31) as f32 * 0.21 - 3.2;
        let kernels = [Kernel::Portable, Kernel::Avx2, Kernel::Avx512];
        for kernel in kernels.into_iter().filter(|k| k.isa() <= Isa::best()) {
            for (m, n, k) in [(29usize, 96usize, 1500usize), (16, 48, 2600)] {
                assert!(k_chunks(k).count() > 1);
                let lhs_rs = k + 1;
                let lhs: Vec<f32> = (0..m * lhs_rs).map(value).collect();
                let w: Vec<f32> = (0..k * n).map(|i| value(i + 3)).collect();
                let panels = kernel.pack(&w, k, n);
                assert_eq!(kernel.unpack(&panels, k, n), w);
                let bias: Vec<f32> = (0..n).map(|j| value(j + 1)).collect();
                let residual: Vec<f32> = (0..m * n).map(|i| value(i + 9)).collect();
                for res in [None, Some((residual.as_ptr(), n))] {
                    let finish = Finish {
                        bias: Some(bias.as_ptr()),
                        residual: res,
                        act: Activation::Relu,
                        fetch_rows: false,
                    };
                    // Rows `rows`, columns `cols` of the product into `dst` (m x n).
                    let part = |dst: &mut [f32], rows: std::ops::Range<usize>, c0: usize, c1| {
                        // SAFETY: a supported kernel; every pointer covers these rows and
                        // columns (the bias and residual from column `c0`, row `rows.start`).
                        unsafe {
                            let f = finish.skip_columns(c0).skip_rows(rows.start);
                            kernel.gemm(
                                rows.len(),
                                c1 - c0,
                                k,
                                lhs.as_ptr().add(rows.start * lhs_rs),
                                lhs_rs,
                                Panels::new(&panels, n).columns_from(c0),
                                dst.as_mut_ptr().add(rows.start * n + c0),
                                n,
                                f,
                            )
                        }
                    };
                    let mut whole = vec![f32::NAN; m * n];
                    part(&mut whole, 0..m, 0, n);
                    let mut split = vec![f32::NAN; m * n];
                    let (r, c) = (m / 2 + 1, 2 * kernel.width());
                    part(&mut split, 0..r, 0, c);
                    part(&mut split, 0..r, c, n);
                    part(&mut split, r..m, 0, n);
                    let differs =
                        (whole.iter().zip(&split)).position(|(x, y)| x.to_bits() != y.to_bits());
                    assert_eq!(
                        differs, None,
                        "{kernel:?} {m}x{n}x{k}: the first that differs"
                    );
                }
            }
        }
    }

    /// The blocks cover the rows in order, none longer than the kernel's longest, and none
    /// shorter than [`SHORT_BLOCK`] or half a full block (the halves of 6 + 1 rows are 4 + 3)
    /// where there are enough rows for one full block.
    #[test]
    fn row_blocks_cover_every_row_without_short_blocks() {
        let sizes = |m, full, long| {
            row_blocks(m, full, long)
                .map(|r| r.len())
                .collect::<Vec<_>>()
        };
        assert_eq!(sizes(49, 12, true), [12, 12, 12, 13]);
        assert_eq!(sizes(50, 12, true), [12, 12, 13, 13]);
        assert_eq!(sizes(27, 12, true), [12, 8, 7]);
        assert_eq!(sizes(49, 6, false), [6, 6, 6, 6, 6, 6, 6, 4, 3]);
        assert_eq!(sizes(196, 12, true), [[12; 16].as_slice(), &[4]].concat());
        for (full, long) in [(12, true), (12, false), (6, false)] {
            for m in 0..300 {
                let blocks: Vec<_> = row_blocks(m, full, long).collect();
                let mut next = 0;
                for rows in &blocks {
                    assert_eq!(rows.start, next, "{m} rows in blocks of {full}: a gap");
                    assert!(!rows.is_empty() && rows.len() <= full + usize::from(long));
                    let least = SHORT_BLOCK.min(full / 2);
                    assert!(m < full || rows.len() >= least, "{m} rows: {blocks:?}");
                    next = rows.end;
                }
                assert_eq!(next, m, "{m} rows in blocks of {full}");
            }
        }
    }

    fn check_kernel(kernel: Kernel) {
        let value = |i: usize| ((i * 7919) % 23) as f32 * 0.25 - 2.5;
        for (m, n, k) in [
            (1usize, 8usize, 5usize),
            (5, 16, 9),
            (6, 24, 17),
            (13, 40, 33),
            (25, 48, 7),
            (64, 64, 64),
            (12, 80, 3),
            // One and two steps of `k` (the assembly block's shortest paths), and blocks
            // of 12 rows with the next column block fetched.
            (24, 64, 1),
            (12, 96, 2),
            (37, 64, 150),
            // An odd `k` whose blocks run out of lines to fetch before their last steps.
            (64, 64, 63),
            // A few rows left over: AVX-512's long blocks (49: 12 + 12 + 12 + 13) or halves
            // (27: 12 + 8 + 7), AVX2's halves (49: ... 6 + 4 + 3).
            (49, 64, 20),
            (27, 32, 9),
            // A few rows under a large weight: AVX-512's stream blocks (16 rows: 8 + 8; 11:
            // 8 + 3), over chunks of `k` and a last half-full panel.
            (16, 264, 520),
            (11, 264, 520),
            // `k` in chunks ([`k_chunks`]): 3 of 366-367 steps, 5 of 409-410.
            (30, 48, 1100),
            (13, 64, 2049),
        ] {
            // Every kernel takes multiples of 8; AVX-512's last panel is then half full
            // (n = 8, 24, 40).
            if !n.is_multiple_of(8) {
                continue;
            }
            // Rows of the input and the output with spare columns, as convolutions have.
            let (lhs_rs, dst_rs) = (k + 3, n + 5);
            let lhs: Vec<f32> = (0..m * lhs_rs).map(value).collect();
            let w: Vec<f32> = (0..k * n).map(|i| value(i + 11)).collect();
            let panels = kernel.pack(&w, k, n);
            let chunked = k_chunks(k).count() > 1;
            assert_eq!(panels.len(), kernel.packed_len(k, n));
            assert_eq!(kernel.unpack(&panels, k, n), w);
            let mut dst = vec![f32::NAN; m * dst_rs];
            // SAFETY: the kernel came from a supported level; every pointer covers the rows.
            let (lhs_p, w_p) = (lhs.as_ptr(), Panels::new(&panels, n));
            unsafe {
                kernel.gemm(
                    m,
                    n,
                    k,
                    lhs_p,
                    lhs_rs,
                    w_p,
                    dst.as_mut_ptr(),
                    dst_rs,
                    Finish::NONE,
                )
            };
            // The same product finished: + bias, + a residual (rows `res_rs` apart), then
            // ReLU6.
            let bias: Vec<f32> = (0..n).map(|j| value(j + 3)).collect();
            let res_rs = n + 3;
            let residual: Vec<f32> = (0..m * res_rs).map(|i| value(i + 5) * 0.5).collect();
            let finish = Finish {
                bias: Some(bias.as_ptr()),
                residual: Some((residual.as_ptr(), res_rs)),
                act: Activation::Relu6,
                fetch_rows: true,
            };
            let mut finished = vec![f32::NAN; m * n];
            // SAFETY: as above; the bias covers every column.
            unsafe {
                kernel.gemm(
                    m,
                    n,
                    k,
                    lhs_p,
                    lhs_rs,
                    w_p,
                    finished.as_mut_ptr(),
                    n,
                    finish,
                )
            };
            for r in 0..m {
                for j in 0..n {
                    let expect: f32 = (0..k).map(|i| lhs[r * lhs_rs + i] * w[i * n + j]).sum();
                    let got = dst[r * dst_rs + j];
                    assert!(
                        (got - expect).abs() <= 1e-4 * expect.abs().max(1.0),
                        "{kernel:?} {m}x{n}x{k} [{r}][{j}]: {got} vs {expect}"
                    );
                }
                assert!(
                    dst[r * dst_rs + n..(r + 1) * dst_rs]
                        .iter()
                        .all(|v| v.is_nan()),
                    "spare columns untouched"
                );
                for j in 0..n {
                    let plain = dst[r * dst_rs + j];
                    let expect = ((plain + bias[j]) + residual[r * res_rs + j]).clamp(0.0, 6.0);
                    let got = finished[r * n + j];
                    if chunked {
                        // The first chunk adds the residual, the last the bias: a few more
                        // roundings, none larger than f32's epsilon of the products' sum of
                        // magnitudes.
                        let magnitude: f32 = (0..k)
                            .map(|i| (lhs[r * lhs_rs + i] * w[i * n + j]).abs())
                            .sum();
                        let scale = magnitude + bias[j].abs() + residual[r * res_rs + j].abs();
                        let tol = (k_chunks(k).count() + 2) as f32 * f32::EPSILON * scale;
                        assert!((got - expect).abs() <= tol, "finished [{r}][{j}]: {got}");
                    } else {
                        assert_eq!(got, expect, "finished [{r}][{j}]");
                    }
                }
            }
        }
    }
}
