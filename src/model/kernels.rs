//! The fast CPU path: f32 activations in NHWC order held in plain buffers, and the kernels
//! the models run on them.
//!
//! - Dense convolutions are GEMMs of the activation rows (`N*H*W x Cin`, or their gathered
//!   receptive fields for k > 1) by the weight, packed once at load as `(k*k*Cin) x Cout`:
//!   in 8-channel panels for the AVX2+FMA kernel in [`panel`], else row-major for the `gemm`
//!   crate (which candle itself uses). A 1x1 stride-1 convolution reads the activation as it
//!   is. Bias, ReLU/ReLU6 and a residual add are applied while each block of output rows is
//!   still in cache.
//! - 3x3 stride-1 convolutions take Winograd F(2x2, 3x3) instead ([`winograd`]): 16 GEMMs
//!   over transformed 4x4 tiles, 2.25x fewer multiplies, the same epilogue.
//! - Depthwise convolutions and pooling run in parallel over output rows and vectorise over
//!   channels; a pre-activation BatchNorm + ReLU ([`Prologue`]) is applied by the kernel that
//!   reads its input.
//!
//! Candle's own operations on NCHW tensors stay the reference (and the only path on other
//! devices): `LoadOptions::stock` selects them on the CPU too, when a network is loaded, and
//! the tests compare the two. Which instruction set runs is chosen at load too ([`isa`]).

mod depthwise;
pub mod isa;
mod panel;
mod winograd;

pub use depthwise::DepthwiseConv;

use std::cell::RefCell;
use std::sync::OnceLock;
use std::thread::LocalKey;

use candle_core::{DType, Device, Result, Tensor};
use rayon::prelude::*;

pub use isa::Isa;

/// Whether a forward pass over `x` can take the NHWC kernels (a network loaded with them
/// also needs its weights packed: see `ConvBn::has_nhwc_kernel`).
pub fn fast_path_for(x: &Tensor) -> bool {
    matches!(x.device(), Device::Cpu) && x.dtype() == DType::F32
}

/// A tensor's values as f32 on the host (weights and per-channel parameters, at load).
pub fn to_host(t: &Tensor) -> Result<Vec<f32>> {
    t.to_dtype(DType::F32)?.flatten_all()?.to_vec1()
}

/// A bias on the host, zeros where there is none.
fn bias_to_host(bias: Option<&Tensor>, channels: usize) -> Result<Vec<f32>> {
    bias.map_or_else(|| Ok(vec![0.0; channels]), to_host)
}

/// Zero padding on each side of a 2-D input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pad2d {
    pub top: usize,
    pub bottom: usize,
    pub left: usize,
    pub right: usize,
}

impl Pad2d {
    pub fn uniform(p: usize) -> Self {
        Self {
            top: p,
            bottom: p,
            left: p,
            right: p,
        }
    }

    /// Output size of a `k`x`k` window with `stride` over `h` x `w`.
    fn output_size(&self, h: usize, w: usize, k: usize, stride: usize) -> Result<(usize, usize)> {
        let (ph, pw) = (h + self.top + self.bottom, w + self.left + self.right);
        if ph < k || pw < k {
            candle_core::bail!("a {k}x{k} window does not fit a {h}x{w} input")
        }
        Ok(((ph - k) / stride + 1, (pw - k) / stride + 1))
    }
}

/// What an epilogue applies after the bias (and the residual, if any).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    Identity,
    Relu,
    Relu6,
}

impl Activation {
    /// In place over a slice, the `match` outside the loop so that each arm vectorises.
    #[inline(always)]
    fn apply_all(self, xs: &mut [f32]) {
        match self {
            Activation::Identity => {}
            Activation::Relu => xs.iter_mut().for_each(|v| *v = v.max(0.0)),
            Activation::Relu6 => xs.iter_mut().for_each(|v| *v = v.clamp(0.0, 6.0)),
        }
    }
}

/// An f32 activation of `n` images, `h` x `w` pixels of `c` channels, stored NHWC: one row
/// of `c` values per pixel.
#[derive(Debug, Clone, PartialEq)]
pub struct Act {
    pub n: usize,
    pub h: usize,
    pub w: usize,
    pub c: usize,
    pub data: Vec<f32>,
}

impl Act {
    /// Rows (pixels over all images).
    pub fn rows(&self) -> usize {
        self.n * self.h * self.w
    }

    /// All channels, as a view.
    pub fn view(&self) -> View<'_> {
        self.prefix(self.c)
    }

    /// The first `c` channels of every pixel (what a DenseNet layer reads of its block).
    pub fn prefix(&self, c: usize) -> View<'_> {
        assert!(c <= self.c, "a prefix of {c} channels of {}", self.c);
        View {
            data: &self.data,
            n: self.n,
            h: self.h,
            w: self.w,
            c,
            stride: self.c,
        }
    }

    /// Transpose an NCHW tensor into NHWC, in parallel over image rows.
    pub fn from_nchw(x: &Tensor) -> Result<Self> {
        let (n, c, h, w) = x.dims4()?;
        let src = x.flatten_all()?.to_vec1::<f32>()?;
        let mut data = vec![0f32; n * h * w * c];
        data.par_chunks_mut(w * c)
            .enumerate()
            .for_each(|(row, dst)| {
                let (img, y) = (row / h, row % h);
                for ch in 0..c {
                    let plane = &src[((img * c + ch) * h + y) * w..][..w];
                    for (x, &v) in plane.iter().enumerate() {
                        dst[x * c + ch] = v;
                    }
                }
            });
        Ok(Self { n, h, w, c, data })
    }

    /// Back to an NCHW tensor (tests and debugging).
    pub fn to_nchw(&self, device: &Device) -> Result<Tensor> {
        Tensor::from_slice(&self.data, (self.n, self.h, self.w, self.c), device)?
            .permute((0, 3, 1, 2))?
            .contiguous()
    }

    /// The mean of every channel (after `pro`, if given) over each image's pixels: `(n, c)`,
    /// ready for a classifier.
    pub fn global_avg_pool(&self, pro: Option<Prologue>, device: &Device) -> Result<Tensor> {
        let (hw, c) = (self.h * self.w, self.c);
        let mut out = vec![0f32; self.n * c];
        out.par_chunks_mut(c)
            .zip(self.data.par_chunks(hw * c))
            .for_each(|(sum, image)| {
                let mut px_out = vec![0f32; c];
                for px in image.chunks_exact(c) {
                    let px = match pro {
                        Some(p) => {
                            p.apply(px, &mut px_out);
                            &px_out[..]
                        }
                        None => px,
                    };
                    for (s, &v) in sum.iter_mut().zip(px) {
                        *s += v;
                    }
                }
                let scale = 1.0 / hw as f32;
                sum.iter_mut().for_each(|s| *s *= scale);
            });
        Tensor::from_vec(out, (self.n, c), device)
    }
}

/// A read-only NHWC view: `c` channels of each pixel, pixels `stride` values apart.
#[derive(Debug, Clone, Copy)]
pub struct View<'a> {
    pub data: &'a [f32],
    pub n: usize,
    pub h: usize,
    pub w: usize,
    pub c: usize,
    pub stride: usize,
}

impl View<'_> {
    fn pixel(&self, img: usize, y: usize, x: usize) -> &[f32] {
        &self.data[((img * self.h + y) * self.w + x) * self.stride..][..self.c]
    }
}

/// `relu(x * scale + shift)` per channel, applied to an input as a kernel reads it: a
/// pre-activation BatchNorm + ReLU (DenseNet) that never gets its own pass or buffer.
#[derive(Debug, Clone, Copy)]
pub struct Prologue<'a> {
    pub scale: &'a [f32],
    pub shift: &'a [f32],
}

impl Prologue<'_> {
    #[inline(always)]
    fn apply(&self, src: &[f32], dst: &mut [f32]) {
        for (((o, &v), &a), &b) in dst.iter_mut().zip(src).zip(self.scale).zip(self.shift) {
            *o = (v * a + b).max(0.0);
        }
    }
}

thread_local! {
    static SCRATCH: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    static TILE_SCRATCH: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Run `f` on `len` floats of scratch space that this thread reuses from call to call, so the
/// gathered receptive fields never cost an allocation or a page fault in steady state.
fn with_scratch<R>(len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    scratch_from(&SCRATCH, len, f)
}

/// As [`with_scratch`], a second space for the small per-tile buffers of kernels that run
/// inside the first.
fn with_tile_scratch<R>(len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    scratch_from(&TILE_SCRATCH, len, f)
}

fn scratch_from<R>(
    key: &'static LocalKey<RefCell<Vec<f32>>>,
    len: usize,
    f: impl FnOnce(&mut [f32]) -> R,
) -> R {
    key.with(|s| match s.try_borrow_mut() {
        Ok(mut buf) => {
            if buf.len() < len {
                buf.resize(len, 0.0);
            }
            f(&mut buf[..len])
        }
        // Re-entered (a thread waiting in one kernel ran another's task): a private buffer.
        Err(_) => f(&mut vec![0f32; len]),
    })
}

/// A dense (groups = 1) convolution packed for GEMM.
#[derive(Debug, Clone)]
pub struct GemmConv {
    cin: usize,
    cout: usize,
    k: usize,
    stride: usize,
    /// `(k*k*cin) x cout`, rows ordered (ky, kx, ci) to match the gathered fields: in the
    /// panels of the [`panel`] kernel it was packed for (`panels`), else row-major.
    weight: Vec<f32>,
    panels: Option<panel::Kernel>,
    bias: Vec<f32>,
    /// The Winograd form of a 3x3 stride-1 weight, made the first time a call takes that path.
    winograd: OnceLock<Vec<f32>>,
}

/// How a dense convolution is computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Algorithm {
    /// One GEMM by the packed weight (of the input itself, or of its gathered fields).
    Gemm,
    /// Winograd F(2x2, 3x3): 3x3 stride-1 only.
    Winograd,
}

/// Output rows per GEMM call when the rows are split across threads: large enough for the
/// GEMM to run at full speed, small enough for the gathered fields to stay in cache.
/// (Measured with `classify bench` on the networks here; see `Launch::run` for when rows
/// are split at all.)
const ROW_BLOCK: usize = 256;

impl GemmConv {
    /// Pack `weight` (Cout, Cin, k, k) and `bias` (Cout) for the kernels of `isa`.
    pub fn pack(weight: &Tensor, bias: Option<&Tensor>, stride: usize, isa: Isa) -> Result<Self> {
        let (cout, cin, k, k2) = weight.dims4()?;
        if k != k2 {
            candle_core::bail!("conv: only square kernels are supported, got {k}x{k2}")
        }
        let w = to_host(weight)?;
        let mut packed = vec![0f32; k * k * cin * cout];
        for co in 0..cout {
            for ci in 0..cin {
                for ky in 0..k {
                    for kx in 0..k {
                        packed[((ky * k + kx) * cin + ci) * cout + co] =
                            w[((co * cin + ci) * k + ky) * k + kx];
                    }
                }
            }
        }
        let bias = bias_to_host(bias, cout)?;
        let panels = panel::Kernel::for_channels(cout, isa);
        Ok(Self {
            cin,
            cout,
            k,
            stride,
            weight: match panels {
                Some(kernel) => kernel.pack(&packed, k * k * cin, cout),
                None => packed,
            },
            panels,
            bias,
            winograd: OnceLock::new(),
        })
    }

    /// The weight as a row-major `(k*k*cin) x cout` matrix.
    fn row_major(&self) -> std::borrow::Cow<'_, [f32]> {
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
        self.panels.map_or(8, panel::Kernel::width)
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
        let conv = self.launch(x, pad, pro, act, residual.map(|r| &r.data[..]), algorithm)?;
        let (oh, ow) = (conv.oh, conv.ow);
        if let Some(r) = residual {
            if (r.n, r.h, r.w, r.c) != (x.n, oh, ow, self.cout) {
                candle_core::bail!(
                    "residual {:?} does not match the convolution output {:?}",
                    (r.n, r.h, r.w, r.c),
                    (x.n, oh, ow, self.cout)
                )
            }
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

    /// One call of this convolution on `x`, its output size worked out.
    fn launch<'a>(
        &'a self,
        x: View<'a>,
        pad: Pad2d,
        pro: Option<Prologue<'a>>,
        act: Activation,
        residual: Option<&'a [f32]>,
        algorithm: Option<Algorithm>,
    ) -> Result<Launch<'a>> {
        let (oh, ow) = self.output_size(x.h, x.w, pad)?;
        Ok(Launch {
            conv: self,
            x,
            pad,
            pro,
            act,
            residual,
            oh,
            ow,
            algorithm,
        })
    }
}

/// One convolution call: input, geometry and epilogue.
struct Launch<'a> {
    conv: &'a GemmConv,
    x: View<'a>,
    pad: Pad2d,
    pro: Option<Prologue<'a>>,
    act: Activation,
    /// `rows x cout`, added before the activation.
    residual: Option<&'a [f32]>,
    oh: usize,
    ow: usize,
    /// Force an algorithm (tests); `None` picks one by shape.
    algorithm: Option<Algorithm>,
}

impl Launch<'_> {
    /// The algorithm for this shape: Winograd wherever it applies. (`classify bench`, 2
    /// threads: it won on every 3x3 stride-1 layer of ResNet and DenseNet, down to the 16
    /// tiles of a 7x7 output at batch 1.)
    fn choose(&self) -> Algorithm {
        match self.winograd_tiles() {
            Some(_) => Algorithm::Winograd,
            None => Algorithm::Gemm,
        }
    }

    /// Compute every output row into `dst` (rows `out_stride` apart).
    ///
    /// # Safety
    /// `dst` must be valid for writes of `rows` rows of `cout` values, `out_stride` apart.
    unsafe fn run(&self, dst: SendPtr, out_stride: usize) -> Result<()> {
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
        if self.algorithm.unwrap_or_else(|| self.choose()) == Algorithm::Winograd {
            if self.winograd_tiles().is_none() {
                candle_core::bail!("conv: Winograd needs a 3x3 stride-1 convolution")
            }
            // SAFETY: the caller's contract is `run_winograd`'s.
            unsafe { self.run_winograd(dst, out_stride) };
            return Ok(());
        }
        let kk = conv.k * conv.k * conv.cin;
        // A 1x1 stride-1 unpadded convolution of a plain input multiplies the input rows as
        // they are; everything else gathers its receptive fields first.
        let direct =
            conv.k == 1 && conv.stride == 1 && self.pad == Pad2d::uniform(0) && self.pro.is_none();
        let threads = rayon::current_num_threads();
        // Blocks of rows while there are at least 128 rows per thread and the weight is the
        // smaller operand (rows >= Cout); past that (deep layers at small batches, where the
        // weight dominates and arrives cold from memory) threads split the output channels.
        if rows >= 128 * threads && rows >= conv.cout {
            // Blocks of rows, as many per thread, each gathered, multiplied by a
            // single-threaded GEMM and finished while it is in this core's cache.
            par_blocks(rows, ROW_BLOCK, |r0, len| {
                // SAFETY (both arms): blocks are disjoint row ranges of the output.
                if direct {
                    let lhs = Lhs {
                        ptr: x.data[r0 * x.stride..].as_ptr(),
                        row_stride: x.stride,
                        k: kk,
                    };
                    unsafe { self.tile(lhs, dst, out_stride, r0, len, 0..conv.cout, None) }
                } else {
                    with_scratch(len * kk, |cols| {
                        self.gather(r0, len, cols);
                        let lhs = Lhs {
                            ptr: cols.as_ptr(),
                            row_stride: kk,
                            k: kk,
                        };
                        unsafe { self.tile(lhs, dst, out_stride, r0, len, 0..conv.cout, None) }
                    })
                }
            });
        } else {
            // Gather once, then split the output channels between threads so each streams
            // its own part of the weight.
            let panels = threads.min(conv.cout / 16).max(1);
            let multiply = |lhs: Lhs| {
                if panels == 1 {
                    let par = Some(threads);
                    // SAFETY: one call covers the whole output.
                    unsafe { self.tile(lhs, dst, out_stride, 0, rows, 0..conv.cout, par) }
                    return;
                }
                let width = conv
                    .cout
                    .div_ceil(panels)
                    .next_multiple_of(conv.panel_width());
                (0..panels).into_par_iter().for_each(|p| {
                    let chans = (p * width).min(conv.cout)..((p + 1) * width).min(conv.cout);
                    if !chans.is_empty() {
                        // SAFETY: panels are disjoint channel ranges of the output.
                        unsafe { self.tile(lhs, dst, out_stride, 0, rows, chans, None) }
                    }
                });
            };
            if direct {
                multiply(Lhs {
                    ptr: x.data.as_ptr(),
                    row_stride: x.stride,
                    k: kk,
                });
            } else {
                with_scratch(rows * kk, |cols| {
                    cols.par_chunks_mut(16 * kk)
                        .enumerate()
                        .for_each(|(i, c)| self.gather(i * 16, c.len() / kk, c));
                    multiply(Lhs {
                        ptr: cols.as_ptr(),
                        row_stride: kk,
                        k: kk,
                    });
                });
            }
        }
        Ok(())
    }

    /// Fill `cols` (`len` rows of k*k*C) with the receptive fields of output rows
    /// `r0..r0+len`, zeros where they overhang the input, the prologue applied.
    fn gather(&self, r0: usize, len: usize, cols: &mut [f32]) {
        let (x, k, c, s) = (self.x, self.conv.k, self.x.c, self.conv.stride);
        let (oh, ow) = (self.oh, self.ow);
        for (i, dst) in cols.chunks_exact_mut(k * k * c).take(len).enumerate() {
            let r = r0 + i;
            let (img, oy, ox) = (r / (oh * ow), (r / ow) % oh, r % ow);
            for ky in 0..k {
                let iy = (oy * s + ky) as isize - self.pad.top as isize;
                let span = &mut dst[ky * k * c..(ky + 1) * k * c];
                if iy < 0 || iy >= x.h as isize {
                    span.fill(0.0);
                    continue;
                }
                let iy = iy as usize;
                let ix0 = (ox * s) as isize - self.pad.left as isize;
                if self.pro.is_none() && x.stride == c && ix0 >= 0 && ix0 as usize + k <= x.w {
                    // The k taps of a row are k*C contiguous values of the input.
                    let start = ((img * x.h + iy) * x.w + ix0 as usize) * c;
                    span.copy_from_slice(&x.data[start..start + k * c]);
                    continue;
                }
                for (kx, d) in span.chunks_exact_mut(c).enumerate() {
                    let ix = ix0 + kx as isize;
                    if ix < 0 || ix >= x.w as isize {
                        d.fill(0.0);
                        continue;
                    }
                    let src = x.pixel(img, iy, ix as usize);
                    match &self.pro {
                        Some(p) => p.apply(src, d),
                        None => d.copy_from_slice(src),
                    }
                }
            }
        }
    }

    /// Output rows `r0..r0+len`, channels `chans`: multiply `len` rows of `lhs` by the
    /// weight's columns `chans`, then add bias (and residual) and activate. `threads`: let
    /// the general GEMM itself split the work (the panel kernel runs on this thread).
    ///
    /// # Safety
    /// `dst` must be valid for `r0 + len` rows `out_stride` apart, `lhs` for `len` rows, and
    /// no other thread may touch those output rows' `chans` at the same time.
    #[allow(clippy::too_many_arguments)]
    unsafe fn tile(
        &self,
        lhs: Lhs,
        dst: SendPtr,
        out_stride: usize,
        r0: usize,
        len: usize,
        chans: std::ops::Range<usize>,
        threads: Option<usize>,
    ) {
        let conv = self.conv;
        // SAFETY: the caller guarantees `dst` holds rows `r0..r0 + len`.
        let base = unsafe { dst.0.add(r0 * out_stride + chans.start) };
        if let Some(kernel) = conv.panels {
            // Every split of the channels is a whole number of panels.
            debug_assert!(chans.start.is_multiple_of(kernel.width()));
            // SAFETY: channel `chans.start` begins a panel of the packed weight.
            let w = unsafe { conv.weight.as_ptr().add(chans.start * lhs.k) };
            let (n, k) = (chans.len(), lhs.k);
            // Bias and activation in registers, so the output is written once; but a residual
            // (cold, from an earlier layer) streams better in its own pass over the block
            // than in the kernel's row-by-row finish, and then the pass does all three.
            let finish = match self.residual {
                None => panel::Finish {
                    bias: Some(conv.bias[chans.start..].as_ptr()),
                    act: self.act,
                },
                Some(_) => panel::Finish::NONE,
            };
            let (x, x_rs) = (lhs.ptr, lhs.row_stride);
            // SAFETY: the kernel was chosen from a level this CPU has; `lhs` holds `len` rows
            // and the caller gives these output rows' channels to this call alone.
            unsafe { kernel.gemm(len, n, k, x, x_rs, w, base, out_stride, finish) };
            if self.residual.is_none() {
                return;
            }
        } else {
            // SAFETY: column `chans.start` of the row-major weight.
            let w = unsafe { conv.weight.as_ptr().add(chans.start) };
            let (x, x_rs, n) = (lhs.ptr, lhs.row_stride, chans.len());
            // SAFETY: as the panel call above.
            unsafe {
                general_gemm(
                    len, n, lhs.k, x, x_rs, w, conv.cout, base, out_stride, threads,
                )
            };
        }
        for r in 0..len {
            // SAFETY: row `r` of this call's output block, written above.
            let row =
                unsafe { std::slice::from_raw_parts_mut(base.add(r * out_stride), chans.len()) };
            self.epilogue(row, r0 + r, chans.clone());
        }
    }

    /// Bias, residual and activation on channels `chans` of output row `r`.
    #[inline(always)]
    fn epilogue(&self, row: &mut [f32], r: usize, chans: std::ops::Range<usize>) {
        let cout = self.conv.cout;
        let bias = &self.conv.bias[chans.clone()];
        match self.residual {
            Some(res) => {
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
        }
        self.act.apply_all(row);
    }
}

/// Run `f(start, len)` in parallel over `0..total` cut into ranges of about `block` (at
/// most), as many ranges for every thread.
fn par_blocks(total: usize, block: usize, f: impl Fn(usize, usize) + Sync) {
    let threads = rayon::current_num_threads();
    let blocks = total.div_ceil(block).next_multiple_of(threads);
    let len = total.div_ceil(blocks);
    (0..blocks).into_par_iter().for_each(|b| {
        let start = b * len;
        let len = len.min(total.saturating_sub(start));
        if len > 0 {
            f(start, len);
        }
    });
}

/// `dst = lhs (m x k) * w (k x n)` by the `gemm` crate, `w` row-major; rows of `lhs`, `w` and
/// `dst` are `lhs_rs`, `w_rs` and `dst_rs` values apart. `threads`: let it split the work.
///
/// # Safety
/// The pointers must be valid for those rows, and `dst` not overlap the inputs.
#[allow(clippy::too_many_arguments)]
unsafe fn general_gemm(
    m: usize,
    n: usize,
    k: usize,
    lhs: *const f32,
    lhs_rs: usize,
    w: *const f32,
    w_rs: usize,
    dst: *mut f32,
    dst_rs: usize,
    threads: Option<usize>,
) {
    // SAFETY: the caller guarantees the pointers cover these rows and do not overlap.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst,
            1,
            dst_rs as isize,
            false,
            lhs,
            1,
            lhs_rs as isize,
            w,
            1,
            w_rs as isize,
            0.0,
            1.0,
            false,
            false,
            false,
            threads.map_or(gemm::Parallelism::None, gemm::Parallelism::Rayon),
        )
    };
}

/// The left-hand matrix of a GEMM: rows of `k` values, `row_stride` apart.
#[derive(Clone, Copy)]
struct Lhs {
    ptr: *const f32,
    row_stride: usize,
    k: usize,
}
// SAFETY: read-only, and the data outlives every parallel section that uses it.
unsafe impl Send for Lhs {}
unsafe impl Sync for Lhs {}

/// The output pointer, shared by threads that write disjoint parts of it.
#[derive(Clone, Copy)]
struct SendPtr(*mut f32);
// SAFETY: only used to write disjoint regions, as each use documents.
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}

/// `MaxPool2d(kernel=3, stride=2, padding=1)`, padding that never wins (as PyTorch's).
pub fn max_pool_3x3_s2(x: &Act) -> Result<Act> {
    let c = x.c;
    let (oh, ow) = Pad2d::uniform(1).output_size(x.h, x.w, 3, 2)?;
    let mut data = vec![0f32; x.n * oh * ow * c];
    data.par_chunks_mut(ow * c)
        .enumerate()
        .for_each(|(row, dst)| {
            let (img, oy) = (row / oh, row % oh);
            for (ox, out) in dst.chunks_exact_mut(c).enumerate() {
                out.fill(f32::NEG_INFINITY);
                for iy in (oy * 2).saturating_sub(1)..(oy * 2 + 2).min(x.h) {
                    let src_row = &x.data[(img * x.h + iy) * x.w * c..][..x.w * c];
                    for ix in (ox * 2).saturating_sub(1)..(ox * 2 + 2).min(x.w) {
                        for (o, &v) in out.iter_mut().zip(&src_row[ix * c..(ix + 1) * c]) {
                            *o = o.max(v);
                        }
                    }
                }
            }
        });
    Ok(Act {
        n: x.n,
        h: oh,
        w: ow,
        c,
        data,
    })
}

/// `AvgPool2d(kernel=2, stride=2)` of `pro(x)` (DenseNet's transitions, which pool before
/// their 1x1 convolution: the two commute, and the convolution then runs on a quarter of
/// the pixels). An odd last row/column is dropped, as PyTorch does.
pub fn avg_pool_2x2(x: &Act, pro: Option<Prologue>) -> Result<Act> {
    let c = x.c;
    let (oh, ow) = (x.h / 2, x.w / 2);
    if oh == 0 || ow == 0 {
        candle_core::bail!(
            "avg pool: a 2x2 window does not fit a {}x{} input",
            x.h,
            x.w
        )
    }
    let mut data = vec![0f32; x.n * oh * ow * c];
    data.par_chunks_mut(ow * c)
        .enumerate()
        .for_each(|(row, dst)| {
            let (img, oy) = (row / oh, row % oh);
            let mut taps = vec![0f32; 4 * c];
            for (ox, out) in dst.chunks_exact_mut(c).enumerate() {
                for (t, (dy, dx)) in [(0, 0), (0, 1), (1, 0), (1, 1)].into_iter().enumerate() {
                    let px = &x.data[((img * x.h + 2 * oy + dy) * x.w + 2 * ox + dx) * c..][..c];
                    let tap = &mut taps[t * c..(t + 1) * c];
                    match pro {
                        Some(p) => p.apply(px, tap),
                        None => tap.copy_from_slice(px),
                    }
                }
                for (i, o) in out.iter_mut().enumerate() {
                    *o = (taps[i] + taps[c + i] + taps[2 * c + i] + taps[3 * c + i]) * 0.25;
                }
            }
        });
    Ok(Act {
        n: x.n,
        h: oh,
        w: ow,
        c,
        data,
    })
}

/// candle's own convolution (any group count), with explicit zero padding when it is
/// asymmetric: the stock path and the reference for tests.
pub fn conv2d_reference(
    x: &Tensor,
    weight: &Tensor,
    stride: usize,
    pad: Pad2d,
    groups: usize,
) -> Result<Tensor> {
    if pad == Pad2d::uniform(pad.top) {
        return x.conv2d(weight, pad.top, stride, 1, groups);
    }
    let x = x
        .pad_with_zeros(2, pad.top, pad.bottom)?
        .pad_with_zeros(3, pad.left, pad.right)?;
    x.conv2d(weight, 0, stride, 1, groups)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
        assert_eq!(a.dims(), b.dims());
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    }

    fn p(t: usize, b: usize, l: usize, r: usize) -> Pad2d {
        Pad2d {
            top: t,
            bottom: b,
            left: l,
            right: r,
        }
    }

    fn reference_epilogue(
        y: Tensor,
        bias: &Tensor,
        res: Option<&Tensor>,
        act: Activation,
    ) -> Tensor {
        let mut y = y
            .broadcast_add(&bias.reshape((1, (), 1, 1)).unwrap())
            .unwrap();
        if let Some(r) = res {
            y = (y + r).unwrap();
        }
        match act {
            Activation::Identity => y,
            Activation::Relu => y.relu().unwrap(),
            Activation::Relu6 => y.clamp(0f32, 6f32).unwrap(),
        }
    }

    #[test]
    fn nhwc_round_trip() {
        let x = Tensor::randn(0f32, 1.0, (2, 3, 5, 4), &Device::Cpu).unwrap();
        let back = Act::from_nchw(&x).unwrap().to_nchw(&Device::Cpu).unwrap();
        assert_eq!(max_abs_diff(&x, &back), 0.0);
    }

    /// Every instruction set this CPU runs (the scalar one included); says which it cannot.
    fn levels() -> Vec<Isa> {
        for isa in Isa::ALL.into_iter().filter(|&i| i > Isa::best()) {
            eprintln!("{isa} kernels: not tested, this CPU lacks {isa}");
        }
        Isa::supported().collect()
    }

    #[test]
    fn gemm_conv_matches_candle() {
        for isa in levels() {
            gemm_conv_matches_candle_at(isa);
        }
    }

    fn gemm_conv_matches_candle_at(isa: Isa) {
        let dev = Device::Cpu;
        // Batch 9 and 20x20 make some cases large enough to be split by rows.
        for (n, cin, cout, h, w, k, s, pad, act) in [
            (2, 3, 8, 13, 11, 7, 2, p(3, 3, 3, 3), Activation::Relu),
            (2, 6, 5, 9, 9, 3, 1, p(1, 1, 1, 1), Activation::Identity),
            (2, 6, 5, 10, 10, 3, 2, p(0, 1, 0, 1), Activation::Relu6),
            (2, 8, 4, 7, 7, 1, 1, p(0, 0, 0, 0), Activation::Relu),
            (2, 8, 4, 8, 8, 1, 2, p(0, 0, 0, 0), Activation::Identity),
            (9, 16, 12, 20, 20, 3, 1, p(1, 1, 1, 1), Activation::Relu),
            (9, 16, 12, 20, 20, 1, 1, p(0, 0, 0, 0), Activation::Relu),
            // Few rows and more channels: the output channels are split between threads.
            (1, 8, 40, 6, 6, 3, 1, p(1, 1, 1, 1), Activation::Relu),
            (1, 8, 40, 5, 5, 1, 1, p(0, 0, 0, 0), Activation::Identity),
            // Multiples of 16 channels (AVX-512 panels), split by rows and by channels.
            (2, 8, 32, 13, 11, 3, 2, p(0, 1, 0, 1), Activation::Relu6),
            (9, 16, 48, 20, 20, 1, 1, p(0, 0, 0, 0), Activation::Relu),
            (1, 24, 80, 6, 6, 3, 1, p(1, 1, 1, 1), Activation::Identity),
            (1, 16, 96, 3, 3, 1, 1, p(0, 0, 0, 0), Activation::Relu),
        ] {
            let x = Tensor::randn(0f32, 1.0, (n, cin, h, w), &dev).unwrap();
            let wt = Tensor::randn(0f32, 1.0, (cout, cin, k, k), &dev).unwrap();
            let b = Tensor::randn(0f32, 1.0, cout, &dev).unwrap();
            let conv = GemmConv::pack(&wt, Some(&b), s, isa).unwrap();
            let reference = conv2d_reference(&x, &wt, s, pad, 1).unwrap();
            let res = Tensor::randn(0f32, 1.0, reference.dims(), &dev).unwrap();
            for with_res in [false, true] {
                let res_act = with_res.then(|| Act::from_nchw(&res).unwrap());
                let ours = conv
                    .forward(
                        Act::from_nchw(&x).unwrap().view(),
                        pad,
                        None,
                        act,
                        res_act.as_ref(),
                    )
                    .unwrap()
                    .to_nchw(&dev)
                    .unwrap();
                let expected =
                    reference_epilogue(reference.clone(), &b, with_res.then_some(&res), act);
                let diff = max_abs_diff(&ours, &expected);
                assert!(
                    diff < 1e-4,
                    "{isa} {cin}->{cout} {h}x{w} k{k} s{s} res {with_res}: {diff}"
                );
            }
        }
    }

    #[test]
    fn conv_writes_into_a_wider_buffer() {
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 1.0, (2, 4, 6, 6), &dev).unwrap();
        let wt = Tensor::randn(0f32, 1.0, (3, 4, 3, 3), &dev).unwrap();
        let conv = GemmConv::pack(&wt, None, 1, Isa::best()).unwrap();
        let xa = Act::from_nchw(&x).unwrap();
        let pad = Pad2d::uniform(1);
        let alone = conv
            .forward(xa.view(), pad, None, Activation::Identity, None)
            .unwrap();
        let mut wide = vec![7f32; xa.rows() * 5];
        conv.forward_into(xa.view(), pad, None, &mut wide, 5, Activation::Identity)
            .unwrap();
        for (row, expect) in wide.chunks(5).zip(alone.data.chunks(3)) {
            assert_eq!(&row[..3], expect);
            assert_eq!(&row[3..], &[7.0, 7.0], "columns past cout are left alone");
        }
    }

    /// `relu(x[:, ..c] * scale + shift)` per channel, in candle.
    fn reference_prologue(x: &Tensor, scale: &[f32], shift: &[f32]) -> Tensor {
        let dev = x.device();
        let c = scale.len();
        let s = Tensor::new(scale, dev)
            .unwrap()
            .reshape((1, c, 1, 1))
            .unwrap();
        let b = Tensor::new(shift, dev)
            .unwrap()
            .reshape((1, c, 1, 1))
            .unwrap();
        x.narrow(1, 0, c)
            .unwrap()
            .broadcast_mul(&s)
            .unwrap()
            .broadcast_add(&b)
            .unwrap()
            .relu()
            .unwrap()
    }

    #[test]
    fn conv_reads_a_channel_prefix_through_a_prologue() {
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 1.0, (3, 5, 12, 12), &dev).unwrap();
        let xa = Act::from_nchw(&x).unwrap();
        let (scale, shift) = ([0.5f32, -1.0, 2.0], [0.1f32, 0.2, -0.3]);
        let pro = Prologue {
            scale: &scale,
            shift: &shift,
        };
        let input = reference_prologue(&x, &scale, &shift);
        for (k, pad, isa) in levels().into_iter().flat_map(|i| [(1, 0, i), (3, 1, i)]) {
            let wt = Tensor::randn(0f32, 1.0, (16, 3, k, k), &dev).unwrap();
            let conv = GemmConv::pack(&wt, None, 1, isa).unwrap();
            let pad = Pad2d::uniform(pad);
            let ours = conv
                .forward(xa.prefix(3), pad, Some(pro), Activation::Identity, None)
                .unwrap()
                .to_nchw(&dev)
                .unwrap();
            let expected = conv2d_reference(&input, &wt, 1, pad, 1).unwrap();
            let diff = max_abs_diff(&ours, &expected);
            assert!(diff < 1e-4, "{isa} k{k}: {diff}");
        }
    }

    #[test]
    fn winograd_matches_candle() {
        for isa in levels() {
            winograd_matches_candle_at(isa);
        }
    }

    fn winograd_matches_candle_at(isa: Isa) {
        let dev = Device::Cpu;
        // Enough 2x2 tiles for blocks of tiles on every thread, and too few for that.
        let many = (32 * rayon::current_num_threads()).div_ceil(25) + 1;
        let (scale, shift) = ([0.5f32, -1.0, 2.0, 0.7, 1.5], [0.1f32, 0.2, -0.3, 0.0, 0.4]);
        let pro = Prologue {
            scale: &scale,
            shift: &shift,
        };
        for (n, cin, cout, h, w, pad, act) in [
            (many, 5, 12, 10, 9, p(1, 1, 1, 1), Activation::Relu),
            (1, 5, 40, 7, 7, p(1, 1, 1, 1), Activation::Identity),
            (2, 5, 3, 6, 11, p(0, 1, 2, 0), Activation::Relu6),
            (1, 5, 8, 3, 3, p(0, 0, 0, 0), Activation::Relu),
            (many, 5, 32, 10, 9, p(1, 1, 1, 1), Activation::Relu6),
            (1, 5, 48, 7, 7, p(1, 1, 1, 1), Activation::Relu),
        ] {
            let x = Tensor::randn(0f32, 1.0, (n, cin + 2, h, w), &dev).unwrap();
            let xa = Act::from_nchw(&x).unwrap();
            let wt = Tensor::randn(0f32, 1.0, (cout, cin, 3, 3), &dev).unwrap();
            let b = Tensor::randn(0f32, 1.0, cout, &dev).unwrap();
            let conv = GemmConv::pack(&wt, Some(&b), 1, isa).unwrap();
            for with_pro in [false, true] {
                let input = if with_pro {
                    reference_prologue(&x, &scale, &shift)
                } else {
                    x.narrow(1, 0, cin).unwrap()
                };
                let pro = with_pro.then_some(pro);
                let reference = conv2d_reference(&input, &wt, 1, pad, 1).unwrap();
                let res = Tensor::randn(0f32, 1.0, reference.dims(), &dev).unwrap();
                let res_act = Act::from_nchw(&res).unwrap();
                let expected = reference_epilogue(reference.clone(), &b, Some(&res), act);
                let ours = conv
                    .forward_using(
                        xa.prefix(cin),
                        pad,
                        pro,
                        act,
                        Some(&res_act),
                        Some(Algorithm::Winograd),
                    )
                    .unwrap()
                    .to_nchw(&dev)
                    .unwrap();
                let diff = max_abs_diff(&ours, &expected);
                assert!(
                    diff < 1e-4,
                    "{isa} {n}x{cin}->{cout} {h}x{w} {pad:?}: {diff}"
                );

                // Into every other column of a wider buffer, against the GEMM path.
                let gemm = conv
                    .forward_using(xa.prefix(cin), pad, pro, act, None, Some(Algorithm::Gemm))
                    .unwrap();
                let mut wide = vec![7f32; gemm.rows() * (cout + 1)];
                conv.forward_into_using(
                    xa.prefix(cin),
                    pad,
                    pro,
                    &mut wide,
                    cout + 1,
                    act,
                    Some(Algorithm::Winograd),
                )
                .unwrap();
                for (row, expect) in wide.chunks(cout + 1).zip(gemm.data.chunks(cout)) {
                    for (a, b) in row.iter().zip(expect) {
                        assert!((a - b).abs() < 1e-4, "into a wider buffer: {a} vs {b}");
                    }
                    assert_eq!(row[cout], 7.0, "the column past cout is left alone");
                }
            }
        }
        // Anything but 3x3 stride 1 is refused rather than computed wrongly.
        let wt = Tensor::randn(0f32, 1.0, (4, 5, 3, 3), &dev).unwrap();
        let x = Act::from_nchw(&Tensor::randn(0f32, 1.0, (1, 5, 8, 8), &dev).unwrap()).unwrap();
        let strided = GemmConv::pack(&wt, None, 2, isa).unwrap();
        let pad = Pad2d::uniform(1);
        let id = Activation::Identity;
        let forced = Some(Algorithm::Winograd);
        assert!(strided
            .forward_using(x.view(), pad, None, id, None, forced)
            .is_err());
    }

    #[test]
    fn depthwise_matches_candle_grouped_conv() {
        let dev = Device::Cpu;
        for (c, h, w, k, s, pad) in [
            (5, 9, 7, 3, 1, p(1, 1, 1, 1)),
            (4, 10, 10, 3, 2, p(0, 1, 0, 1)),
            (3, 11, 8, 5, 2, p(1, 2, 1, 2)),
            (2, 6, 6, 5, 1, p(2, 2, 2, 2)),
            (37, 7, 9, 3, 2, p(0, 1, 0, 1)),
            (96, 5, 5, 5, 1, p(2, 2, 2, 2)),
            (144, 8, 8, 3, 1, p(1, 1, 1, 1)),
        ] {
            let x = Tensor::randn(0f32, 1.0, (2, c, h, w), &dev).unwrap();
            let wt = Tensor::randn(0f32, 1.0, (c, 1, k, k), &dev).unwrap();
            let b = Tensor::randn(0f32, 1.0, c, &dev).unwrap();
            let reference = conv2d_reference(&x, &wt, s, pad, c).unwrap();
            let xa = Act::from_nchw(&x).unwrap();
            // Every copy of the kernel this CPU runs, with each activation.
            for act in [Activation::Identity, Activation::Relu, Activation::Relu6] {
                let expected = reference_epilogue(reference.clone(), &b, None, act);
                for isa in levels() {
                    let conv = DepthwiseConv::pack(&wt, Some(&b), s, isa).unwrap();
                    let ours = conv
                        .forward(xa.view(), pad, act)
                        .unwrap()
                        .to_nchw(&dev)
                        .unwrap();
                    let diff = max_abs_diff(&ours, &expected);
                    assert!(diff < 1e-5, "{c} {h}x{w} k{k} s{s} {isa} {act:?}: {diff}");
                }
            }
        }
    }

    #[test]
    fn pooling_matches_candle() {
        let dev = Device::Cpu;
        // Odd sizes: the max pool's padding and the average pool's dropped edge both matter.
        let x = Tensor::randn(0f32, 1.0, (2, 6, 11, 9), &dev).unwrap();
        let xa = Act::from_nchw(&x).unwrap();

        let ours = max_pool_3x3_s2(&xa).unwrap().to_nchw(&dev).unwrap();
        let padded = Tensor::full(f32::MIN, (2, 6, 13, 11), &dev)
            .unwrap()
            .slice_assign(&[0..2, 0..6, 1..12, 1..10], &x)
            .unwrap();
        let expected = padded.max_pool2d_with_stride(3, 2).unwrap();
        assert_eq!(max_abs_diff(&ours, &expected), 0.0);

        let scale = [0.5f32, -1.0, 2.0, 0.0, 1.0, 3.0];
        let shift = [0.1f32, 0.2, -0.3, 0.4, 0.0, -1.0];
        let pro = Prologue {
            scale: &scale,
            shift: &shift,
        };
        let activated = reference_prologue(&x, &scale, &shift);

        let ours = avg_pool_2x2(&xa, None).unwrap().to_nchw(&dev).unwrap();
        let expected = x.avg_pool2d_with_stride(2, 2).unwrap();
        assert!(max_abs_diff(&ours, &expected) < 1e-6);
        let ours = avg_pool_2x2(&xa, Some(pro)).unwrap().to_nchw(&dev).unwrap();
        let expected = activated.avg_pool2d_with_stride(2, 2).unwrap();
        assert!(max_abs_diff(&ours, &expected) < 1e-6);

        let ours = xa.global_avg_pool(None, &dev).unwrap();
        let expected = x.mean((2, 3)).unwrap();
        assert!(max_abs_diff(&ours, &expected) < 1e-5);
        let ours = xa.global_avg_pool(Some(pro), &dev).unwrap();
        let expected = activated.mean((2, 3)).unwrap();
        assert!(max_abs_diff(&ours, &expected) < 1e-5);
    }
}
