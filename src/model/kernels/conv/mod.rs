//! Dense (groups = 1) convolutions as GEMMs on NHWC activations: the weight packed once at
//! load as `(k*k*Cin) x Cout` (in panels for the kernels of [`super::gemm`], else row-major
//! for the general GEMM); the activation rows (`N*H*W x Cin`, or their gathered receptive
//! fields for k > 1) multiplied by it in blocks, and bias, activation and a residual applied
//! while each block is in cache ([`launch`]). 3x3 stride-1 convolutions take Winograd
//! F(2x2, 3x3) or F(4x4, 3x3) instead ([`winograd`]).

mod launch;
#[cfg(test)]
mod tests;
mod winograd;

use std::sync::OnceLock;

use candle_core::{Result, Tensor};

use super::gemm::Kernel;
use super::par::{ReadPtr, SendPtr};
use super::{bias_to_host, to_host, Act, Activation, Isa, Pad2d, Prologue, View};
use launch::{Launch, Residual};

/// A dense or grouped convolution packed for GEMM (depthwise ones have their own kernel).
#[derive(Debug, Clone)]
pub struct GemmConv {
    /// Input and output channels, all groups together.
    cin: usize,
    cout: usize,
    groups: usize,
    k: usize,
    stride: usize,
    /// Per group, one after another: `(k*k*cin_g) x cout_g`, rows ordered (ky, kx, ci) to
    /// match the gathered fields: in the panels of the [`super::gemm`] kernel it was packed
    /// for (`panels`), else row-major.
    weight: Vec<f32>,
    panels: Option<Kernel>,
    bias: Vec<f32>,
    /// The instruction set of the element-wise passes (activations), as the panels'.
    isa: Isa,
    /// The Winograd forms of a 3x3 stride-1 weight (F(2x2, 3x3), F(4x4, 3x3)), each made the
    /// first time a call takes its path.
    winograd: [OnceLock<Vec<f32>>; 2],
}

/// A convolution whose output rows are computed a block at a time by the caller
/// ([`GemmConv::row_blocks`]).
pub(super) struct RowBlocks<'a>(Launch<'a>);

impl RowBlocks<'_> {
    /// Output height and width of one image.
    pub(super) fn output_size(&self) -> (usize, usize) {
        (self.0.oh, self.0.ow)
    }

    /// Output rows `r0..r0+len` (pixels, over all images) into `dst`, on this thread.
    ///
    /// # Safety
    /// `dst` must be valid for writes of `len * cout` values that no other thread touches
    /// meanwhile, and `r0 + len` at most the output's pixels.
    pub(super) unsafe fn rows_into(&self, r0: usize, len: usize, dst: *mut f32) {
        debug_assert!(r0 + len <= self.0.x.n * self.0.oh * self.0.ow);
        // SAFETY: the caller's contract; the input was checked when `self` was made.
        unsafe { self.0.rows_into(r0, len, dst, self.0.conv.cout) }
    }
}

/// How a dense convolution is computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Algorithm {
    /// One GEMM by the packed weight (of the input itself, or of its gathered fields).
    Gemm,
    /// Winograd F(2x2, 3x3): 3x3 stride-1 only.
    Winograd2,
    /// Winograd F(4x4, 3x3): 3x3 stride-1 only.
    Winograd4,
}

/// Output rows per GEMM call when the rows are split across threads, and at most per
/// gather of receptive fields: large enough for the GEMM to run at full speed, small enough
/// for the gathered fields to stay in cache.
/// (Measured with `classify bench` on the networks here; see `Launch::run` for when rows
/// are split at all.)
const ROW_BLOCK: usize = 256;

/// A layer whose output and residual take at least this many bytes together (more than a
/// core's L2 on the CPUs measured) has its GEMM fetch each next register block's output
/// and residual rows ahead ([`crate::model::kernels::gemm::Finish::fetch_rows`]). Below it
/// they are mostly in cache, where the fetches only cost. Intel Xeon (Sapphire Rapids
/// class), AVX-512, 2 threads, `bench/ab.sh` medians of 6-8 interleaved rounds, images/s:
/// - fetching on every layer against never: ResNet-50 batch 1 39.1 -> 40.2, batch 16 45.7
///   -> 46.4, DenseNet-121 batch 1 62.1 -> 63.8, ResNet-18 batch 1 126.3 -> 127.8, but Lite0
///   batch 1 280.3 -> 270.3 (its layers' outputs are 0.2-1.6 MB);
/// - from this bound on against never: ResNet-50 batch 1 40.9 -> 41.4, Lite0 batch 16 339.8
///   -> 347.8 (6 of 6 rounds faster), DenseNet-121 batch 1 63.8 -> 64.7, ResNet-18 batch 16
///   level (156.1, 156.3). Lite0 batch 1 has no layer this large.
const FETCH_ROWS_FROM_BYTES: usize = 2 << 20;

/// Whether a convolution's receptive fields are laid out column by column: for each input
/// column, its `k` kernel rows' channels (`k * cin` values), so that the field of an output
/// pixel is the `k * k * cin` values from its first column on, and the next pixel's starts
/// `stride` columns later. The GEMM then reads the fields in place, overlapping, from a
/// buffer a `k / stride`-th of the gathered fields' size. Stems over a few channels with
/// overlapping windows (ResNet's and DenseNet's 7x7 stride 2, the 3x3 stride-2 stems),
/// whose gather of 7 x 3 or 3 x 3 values per kernel row cost more than the copies
/// themselves; with more channels the gather's copies are long and cheap.
fn by_columns(cin: usize, groups: usize, k: usize, stride: usize) -> bool {
    groups == 1 && cin <= 4 && stride >= 2 && k > stride
}

impl GemmConv {
    /// Pack `weight` (Cout, Cin, k, k) and `bias` (Cout) for the kernels of `isa`.
    pub fn pack(weight: &Tensor, bias: Option<&Tensor>, stride: usize, isa: Isa) -> Result<Self> {
        Self::pack_grouped(weight, bias, stride, 1, isa)
    }

    /// Pack a convolution of `groups` groups: `weight` is (Cout, Cin / groups, k, k).
    pub fn pack_grouped(
        weight: &Tensor,
        bias: Option<&Tensor>,
        stride: usize,
        groups: usize,
        isa: Isa,
    ) -> Result<Self> {
        let (cout, cin_g, k, k2) = weight.dims4()?;
        if k != k2 {
            candle_core::bail!("conv: only square kernels are supported, got {k}x{k2}")
        }
        if groups == 0 || !cout.is_multiple_of(groups) {
            candle_core::bail!("conv: {cout} output channels do not split into {groups} groups")
        }
        let cout_g = cout / groups;
        let w = to_host(weight)?;
        let panels = Kernel::for_channels(cout_g, isa);
        let kk = k * k * cin_g;
        // A receptive field's values in the order the GEMM reads them: kernel row by kernel
        // row (ky, kx, channel), or column by column (kx, ky, channel) where the fields are
        // laid out so ([`by_columns`]).
        let columns = by_columns(cin_g * groups, groups, k, stride);
        let mut packed = Vec::with_capacity(kk * cout);
        for g in 0..groups {
            let mut group = vec![0f32; kk * cout_g];
            for co in 0..cout_g {
                let filter = &w[(g * cout_g + co) * kk..][..kk];
                for ci in 0..cin_g {
                    for t in 0..k * k {
                        let at = if columns { t % k * k + t / k } else { t };
                        group[(at * cin_g + ci) * cout_g + co] = filter[ci * k * k + t];
                    }
                }
            }
            match panels {
                Some(kernel) => packed.extend(kernel.pack(&group, kk, cout_g)),
                None => packed.extend(group),
            }
        }
        Ok(Self {
            cin: cin_g * groups,
            cout,
            groups,
            k,
            stride,
            weight: packed,
            panels,
            bias: bias_to_host(bias, cout)?,
            isa,
            winograd: Default::default(),
        })
    }

    /// Whether the GEMM reads this convolution's receptive fields column by column
    /// ([`by_columns`]).
    fn by_columns(&self) -> bool {
        by_columns(self.cin, self.groups, self.k, self.stride)
    }

    /// Output channels, all groups together.
    pub(super) fn out_channels(&self) -> usize {
        self.cout
    }

    /// Input channels of one group.
    fn cin_g(&self) -> usize {
        self.cin / self.groups
    }

    /// Output channels of one group.
    fn cout_g(&self) -> usize {
        self.cout / self.groups
    }

    /// The weight of the group output channel `c0` is in, and `c0`'s column within it.
    fn group_weight(&self, c0: usize) -> (&[f32], usize) {
        let (cout_g, kk) = (self.cout_g(), self.k * self.k * self.cin_g());
        let (g, local) = (c0 / cout_g, c0 % cout_g);
        let len = self.weight_len(kk, cout_g);
        (&self.weight[g * len..][..len], local)
    }

    /// Values of a `k x n` weight as this convolution stores it: [`Kernel::packed_len`] in
    /// panels, `k * n` row-major.
    fn weight_len(&self, k: usize, n: usize) -> usize {
        self.panels.map_or(k * n, |kernel| kernel.packed_len(k, n))
    }

    /// The weight as a row-major `(k*k*cin) x cout` matrix (ungrouped convolutions whose
    /// fields are read row by row: Winograd's, which have stride 1).
    fn row_major(&self) -> std::borrow::Cow<'_, [f32]> {
        debug_assert!(!self.by_columns());
        match self.panels {
            Some(kernel) => kernel
                .unpack(&self.weight, self.k * self.k * self.cin, self.cout)
                .into(),
            None => self.weight.as_slice().into(),
        }
    }

    /// Channels per panel of the packed weight (8 where it is not panelled, which keeps
    /// channel splits aligned for the general GEMM too).
    fn panel_width(&self) -> usize {
        self.panels.map_or(8, Kernel::width)
    }

    /// Output height and width for an input of `h` x `w` with padding `pad`.
    fn output_size(&self, h: usize, w: usize, pad: Pad2d) -> Result<(usize, usize)> {
        pad.output_size(h, w, self.k, self.stride)
    }

    /// `act(conv(pro(x)) + bias [+ residual])` as a new activation.
    pub fn forward(
        &self,
        x: View,
        pad: Pad2d,
        pro: Option<Prologue>,
        act: Activation,
        residual: Option<&Act>,
    ) -> Result<Act> {
        self.forward_using(x, pad, pro, act, residual, None)
    }

    /// [`GemmConv::forward`] by `algorithm` (`None`: chosen by shape).
    fn forward_using(
        &self,
        x: View,
        pad: Pad2d,
        pro: Option<Prologue>,
        act: Activation,
        residual: Option<&Act>,
        algorithm: Option<Algorithm>,
    ) -> Result<Act> {
        let residual_data = residual.map(|r| Residual::Apart(&r.data));
        let conv = self.launch(x, pad, pro, act, residual_data, algorithm)?;
        let (oh, ow) = (conv.oh, conv.ow);
        if let Some(r) = residual {
            self.check_residual(r, x.n, oh, ow)?;
        }
        let len = x.n * oh * ow * self.cout;
        let mut data = Vec::with_capacity(len);
        // SAFETY: the capacity holds every output row, `cout` apart; `run` writes all of it
        // (every row block or channel panel) before `set_len` exposes it.
        unsafe {
            conv.run(SendPtr(data.as_mut_ptr()), self.cout)?;
            data.set_len(len);
        }
        Ok(Act {
            n: x.n,
            h: oh,
            w: ow,
            c: self.cout,
            data,
        })
    }

    /// `act(conv(pro(x)) + bias + residual)`, written over `residual` where the call runs as
    /// one GEMM on a panel kernel that adds the residual in registers
    /// ([`Launch::can_write_over_residual`]; as a new activation otherwise): the same bits
    /// as [`GemmConv::forward`], in one array where that makes two. A block's last
    /// convolution reads its residual once and the residual dies with the block, so the
    /// output need not claim lines of its own from memory: a wide output (ResNet's 64 -> 256
    /// at 56x56: 3.2 MB) is three streams beside its residual (the residual read, the
    /// output's lines claimed, then written back) and two over it.
    ///
    /// On the AVX-512 kernel the output goes over the residual however wide (beside it, a
    /// residual over [`launch::RESIDUAL_IN_REGISTERS_BYTES_AVX512`] takes a pass of its
    /// own). Intel Xeon (Sapphire Rapids class), AVX-512, one thread, bias, residual and
    /// ReLU, output and residual cold, rows fetched ahead, medians of 9 runs (a temporary
    /// kernel benchmark), us:
    /// - m3136 k64 n256 in calls of 256 rows (ResNet-50's 56x56 64 -> 256, one image):
    ///   beside 1222-1229, over 1034-1064;
    /// - m784 k128 n512 (28x28 128 -> 512): beside 994, over 856;
    /// - m256 k256 n1024 (a 256-row call of the 14x14 256 -> 1024 at batch 16): the pass
    ///   1156, in registers beside 1237, over 990;
    /// - m784 k512 n1024 (half the channels of the 7x7 512 -> 2048 at batch 16): the pass
    ///   6715, in registers beside 6590, over 6224.
    ///
    /// Whole networks, 2 threads, one binary with an environment switch to the call beside
    /// the residual, interleaved rounds, medians, images/s: ResNet-50 batch 16 39.3 -> 40.8
    /// (6 rounds, each faster), batch 1 34.3 -> 34.5 (8 rounds, level). Over the residual
    /// only up to the 4 MiB bound and beside it past that: batch 16 40.6, against 41.2 over
    /// it everywhere (5 rounds). On the AVX2 kernel a residual of 256 channels or more keeps
    /// its pass, beside it (ResNet-50 with AVX2 forced, the same switch: 26.7 against 26.6,
    /// 6 rounds); written over it in registers there measured 28.0 -> 27.7 (4 rounds).
    pub fn forward_onto(
        &self,
        x: View,
        pad: Pad2d,
        pro: Option<Prologue>,
        act: Activation,
        residual: Act,
    ) -> Result<Act> {
        self.forward_onto_using(x, pad, pro, act, residual, None)
    }

    /// [`GemmConv::forward_onto`] by `algorithm` (`None`: chosen by shape).
    fn forward_onto_using(
        &self,
        x: View,
        pad: Pad2d,
        pro: Option<Prologue>,
        act: Activation,
        mut residual: Act,
        algorithm: Option<Algorithm>,
    ) -> Result<Act> {
        let mut conv = self.launch(x, pad, pro, act, None, algorithm)?;
        self.check_residual(&residual, x.n, conv.oh, conv.ow)?;
        if !conv.can_write_over_residual() {
            return self.forward_using(x, pad, pro, act, Some(&residual), algorithm);
        }
        // `residual` is owned here: nothing else reads or writes it during the call.
        let out = residual.data.as_mut_ptr();
        conv.residual = Some(Residual::Under(ReadPtr(out), residual.data.len()));
        // SAFETY: the residual holds every output row, `cout` apart; each block reads its
        // residual values before it writes them.
        unsafe { conv.run(SendPtr(out), self.cout)? };
        Ok(residual)
    }

    /// Refuse a residual that is not the shape of the output (`n` images of `oh` x `ow`).
    fn check_residual(&self, r: &Act, n: usize, oh: usize, ow: usize) -> Result<()> {
        if (r.n, r.h, r.w, r.c) != (n, oh, ow, self.cout) || r.data.len() != r.rows() * r.c {
            candle_core::bail!(
                "residual {:?} does not match the convolution output {:?}",
                (r.n, r.h, r.w, r.c),
                (n, oh, ow, self.cout)
            )
        }
        Ok(())
    }

    /// Write `act(conv(pro(x)) + bias)` into the first `cout` columns of `out`, whose rows
    /// are `out_stride` apart (so a DenseNet layer writes straight into its block's
    /// concatenated features).
    pub fn forward_into(
        &self,
        x: View,
        pad: Pad2d,
        pro: Option<Prologue>,
        out: &mut [f32],
        out_stride: usize,
        act: Activation,
    ) -> Result<()> {
        self.forward_into_using(x, pad, pro, out, out_stride, act, None)
    }

    /// [`GemmConv::forward_into`] by `algorithm` (`None`: chosen by shape).
    #[allow(clippy::too_many_arguments)]
    fn forward_into_using(
        &self,
        x: View,
        pad: Pad2d,
        pro: Option<Prologue>,
        out: &mut [f32],
        out_stride: usize,
        act: Activation,
        algorithm: Option<Algorithm>,
    ) -> Result<()> {
        let conv = self.launch(x, pad, pro, act, None, algorithm)?;
        let rows = x.n * conv.oh * conv.ow;
        if rows == 0 || out_stride < self.cout || out.len() < (rows - 1) * out_stride + self.cout {
            candle_core::bail!("conv: empty input, or output buffer too small")
        }
        // SAFETY: `out` was just checked to hold every row.
        unsafe { conv.run(SendPtr(out.as_mut_ptr()), out_stride) }
    }

    /// This convolution of `x` computed a block of rows at a time by the caller's threads,
    /// where it runs as one GEMM by the panel kernel (not Winograd, one group); `None`
    /// otherwise.
    pub(super) fn row_blocks<'a>(
        &'a self,
        x: View<'a>,
        pad: Pad2d,
        act: Activation,
    ) -> Result<Option<RowBlocks<'a>>> {
        let mut launch = self.launch(x, pad, None, act, None, Some(Algorithm::Gemm))?;
        // The caller's strips of rows stay in its cache.
        launch.fetch_rows = false;
        if self.panels.is_none() || self.groups > 1 || launch.choose() != Algorithm::Gemm {
            return Ok(None);
        }
        launch.check()?;
        Ok(Some(RowBlocks(launch)))
    }

    /// One call of this convolution on `x`, its output size worked out.
    fn launch<'a>(
        &'a self,
        x: View<'a>,
        pad: Pad2d,
        pro: Option<Prologue<'a>>,
        act: Activation,
        residual: Option<Residual<'a>>,
        algorithm: Option<Algorithm>,
    ) -> Result<Launch<'a>> {
        let (oh, ow) = self.output_size(x.h, x.w, pad)?;
        let mut launch = Launch {
            fetch_rows: false,
            conv: self,
            x,
            pad,
            pro,
            act,
            residual,
            oh,
            ow,
            algorithm,
        };
        // A residual is read for the output's rows alone, as many bytes.
        let arrays = if residual.is_some() { 2 } else { 1 };
        launch.fetch_rows = arrays * launch.output_bytes() >= FETCH_ROWS_FROM_BYTES;
        Ok(launch)
    }
}
