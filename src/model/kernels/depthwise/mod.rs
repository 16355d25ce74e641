//! Depthwise convolution (one k x k filter per channel, EfficientNet's and MobileNet's) on
//! NHWC activations: each output pixel's channels start from the bias, take every tap that
//! lies inside the input, and are activated and stored once. The channels of a pixel are
//! contiguous in NHWC, so the kernels vectorise over them: one file per instruction set
//! ([`avx2`], [`avx512`]) keeps a block of channels of a few adjacent pixels in registers
//! across all taps; the portable loop here is the scalar level and the reference they are
//! tested against.

#[cfg(target_arch = "x86_64")]
mod avx2;

#[cfg(target_arch = "x86_64")]
mod avx512;

#[cfg(target_arch = "x86_64")]
mod tile;

use std::ops::Range;

use candle_core::{Result, Tensor};
use rayon::prelude::*;

use super::par::SendPtr;
use super::{bias_to_host, to_host, Act, Activation, Isa, Pad2d, View};

/// The vector kernels gather a pixel's taps on the stack: k up to 7.
const MAX_K: usize = 7;
const MAX_TAPS: usize = MAX_K * MAX_K;

/// Output pixels per thread from which threads split the rows rather than the channels
/// (the GEMMs' threshold, `conv::launch`).
const SPLIT_ROWS_FROM: usize = 128;

/// Input rows per thread from which threads split the rows however few pixels there are:
/// the 1x1 convolution that wrote the input split its rows too (a small weight, see
/// `conv::launch`), so each thread reads the part of the image its own core wrote.
const SPLIT_ROWS_FROM_ROWS: usize = 4;

/// Channel parts start on a multiple of this (an AVX2 register).
const CHANNEL_ALIGN: usize = 8;

/// A depthwise convolution (one k x k filter per channel) with bias.
#[derive(Debug, Clone)]
pub struct DepthwiseConv {
    c: usize,
    k: usize,
    stride: usize,
    /// `(k*k) x c`: the taps of every channel for one kernel position are contiguous.
    weight: Vec<f32>,
    bias: Vec<f32>,
    /// Which copy of the kernel runs (scalar where k is too large for the vector ones).
    isa: Isa,
}

impl DepthwiseConv {
    /// Pack `weight` (C, 1, k, k) and `bias` (C) for the kernel of `isa`.
    pub fn pack(weight: &Tensor, bias: Option<&Tensor>, stride: usize, isa: Isa) -> Result<Self> {
        let (c, one, k, k2) = weight.dims4()?;
        if one != 1 || k != k2 {
            candle_core::bail!(
                "depthwise conv: unexpected weight shape {:?}",
                weight.dims()
            )
        }
        let w = to_host(weight)?;
        let mut packed = vec![0f32; k * k * c];
        for ch in 0..c {
            for t in 0..k * k {
                packed[t * c + ch] = w[ch * k * k + t];
            }
        }
        Ok(Self {
            c,
            k,
            stride,
            weight: packed,
            bias: bias_to_host(bias, c)?,
            isa: Self::kernel(isa, k, stride),
        })
    }

    /// The copy of the kernel that runs `k x k` filters at `stride` on a CPU of level
    /// `isa`: the scalar one where k is too large for the vector ones, AVX2's (which runs
    /// a pixel at a time where it has no tiles) where there are no tiles for the shape.
    #[cfg_attr(not(target_arch = "x86_64"), allow(unused_variables))]
    fn kernel(isa: Isa, k: usize, stride: usize) -> Isa {
        match isa {
            _ if k > MAX_K => Isa::Scalar,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 if !tile::covers(k, stride) => Isa::Avx2,
            _ => isa,
        }
    }

    /// How many parts the channels are split into between threads, for an input of `rows`
    /// rows (of `w` pixels) and an output of `pixels` pixels: one (threads take rows) where
    /// each thread gets [`SPLIT_ROWS_FROM`] output pixels or [`SPLIT_ROWS_FROM_ROWS`] input
    /// rows, the way the GEMM that wrote the input split its rows, so that each thread reads
    /// what its own core wrote. Below that (a 7x7 image at batch 1, whose 1x1 convolutions
    /// split their output channels) one part per thread, each reading the channels its own
    /// core's GEMM wrote.
    ///
    /// Intel Xeon (Sapphire Rapids class, AVX-512), 2 threads, Lite0 batch 1, per-layer
    /// timer: split by channels behind a GEMM that split its rows, the 14x14x480 5x5 layer
    /// ran no faster on two threads than on one (49.5 us on one, 49.4 on two); split by
    /// rows, 28.6-29.4 on two.
    fn channel_parts(&self, rows: usize, pixels: usize) -> usize {
        let threads = rayon::current_num_threads();
        if pixels >= SPLIT_ROWS_FROM * threads || rows >= SPLIT_ROWS_FROM_ROWS * threads {
            return 1;
        }
        threads.clamp(1, (self.c / (2 * CHANNEL_ALIGN)).max(1))
    }

    pub fn forward(&self, x: View, pad: Pad2d, act: Activation) -> Result<Act> {
        if x.c != self.c || x.stride != x.c {
            candle_core::bail!(
                "depthwise conv: input has {} channels (row stride {}), expects {} (dense)",
                x.c,
                x.stride,
                self.c
            )
        }
        let (oh, ow) = pad.output_size(x.h, x.w, self.k, self.stride)?;
        let len = x.n * oh * ow * self.c;
        if x.data.len() < x.n * x.h * x.w * x.c {
            candle_core::bail!("depthwise conv: short input")
        }
        let parts = self.channel_parts(x.n * x.h, x.n * oh * ow);
        let width = self.c.div_ceil(parts).next_multiple_of(CHANNEL_ALIGN);
        let out_rows = x.n * oh;
        let mut data: Vec<f32> = Vec::with_capacity(len);
        let out = SendPtr(data.as_mut_ptr());
        // Part-major: the first half of the tasks, which the thread that starts the section
        // runs, is the first part's channels, as in the GEMM that made the input.
        (0..parts * out_rows).into_par_iter().for_each(|task| {
            let (part, row) = (task / out_rows, task % out_rows);
            let chans = (part * width).min(self.c)..((part + 1) * width).min(self.c);
            if chans.is_empty() {
                return;
            }
            let rows = Rows {
                conv: self,
                x,
                img: row / oh,
                oy: row % oh,
                ow,
                pad,
                h: x.h,
                from: 0,
            };
            // SAFETY: row `row` of the output is `ow * c` values at `row * ow * c`; tasks
            // write disjoint (row, channels) parts of it; the input was checked to hold every
            // pixel.
            unsafe { self.row(&rows, act, out.get().add(row * ow * self.c), chans) };
        });
        // SAFETY: the tasks cover every (row, channel) of the `len` values.
        unsafe { data.set_len(len) };
        Ok(Act {
            n: x.n,
            h: oh,
            w: ow,
            c: self.c,
            data,
        })
    }
}

impl DepthwiseConv {
    /// Output row `rows.oy` of image `rows.img`, channels `chans`, into `dst` (the row's
    /// first value) by the kernel this convolution was packed for, `act` applied.
    ///
    /// # Safety
    /// `dst` must be valid for writes of the row's `ow * c` values, and no other thread may
    /// touch its `chans` meanwhile; `rows.x` must hold every input row the output row reads.
    unsafe fn row(&self, rows: &Rows, act: Activation, dst: *mut f32, chans: Range<usize>) {
        // Activations with `exp` or `erf` inside get a pass over the row after its kernel.
        let in_registers = if act.in_registers() {
            act
        } else {
            Activation::Identity
        };
        // SAFETY: `isa` was a level this CPU supports when packed; the rest is the caller's.
        unsafe {
            match self.isa {
                #[cfg(target_arch = "x86_64")]
                Isa::Avx2 => avx2::row(rows, in_registers, dst, chans.clone()),
                #[cfg(target_arch = "x86_64")]
                Isa::Avx512 => avx512::row(rows, in_registers, dst, chans.clone()),
                _ => rows.scalar(in_registers, dst, chans.clone()),
            }
        }
        if !act.in_registers() {
            // The whole row in one pass where the call has every channel, else each pixel's
            // part.
            let ow = rows.ow;
            let (span, apart) = if chans.len() == self.c {
                (ow * self.c, ow * self.c)
            } else {
                (chans.len(), self.c)
            };
            for start in (chans.start..ow * self.c).step_by(apart) {
                // SAFETY: the kernel above wrote these channels of every pixel of the row.
                let values = unsafe { std::slice::from_raw_parts_mut(dst.add(start), span) };
                act.apply(values, self.isa);
            }
        }
    }

    /// Output row `oy` (every channel) of an image `h` rows high, of which `strip` holds rows
    /// `from..from + strip.h` (one image, dense), into `dst`: a row of a convolution whose
    /// input is made a strip at a time ([`super::fused`]).
    ///
    /// # Safety
    /// `dst` must be valid for writes of `ow * c` values that no other thread touches
    /// meanwhile; `strip` must hold every input row output row `oy` reads, with `c` channels
    /// and `ow` the output width for its width.
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn strip_row(
        &self,
        strip: View,
        h: usize,
        from: usize,
        oy: usize,
        ow: usize,
        pad: Pad2d,
        act: Activation,
        dst: *mut f32,
    ) {
        debug_assert!(strip.n == 1 && strip.c == self.c && strip.stride == self.c);
        let rows = Rows {
            conv: self,
            x: strip,
            img: 0,
            oy,
            ow,
            pad,
            h,
            from,
        };
        // SAFETY: the caller's contract.
        unsafe { self.row(&rows, act, dst, 0..self.c) }
    }

    /// Channels (as packed).
    pub(super) fn channels(&self) -> usize {
        self.c
    }

    /// Kernel size and stride.
    pub(super) fn geometry(&self) -> (usize, usize) {
        (self.k, self.stride)
    }
}

/// What the vector kernels read, as pointers: input, packed weight, bias, the channel
/// count and the activation applied in registers. Each kernel file implements its
/// `pixels` and `block` on it.
#[cfg(target_arch = "x86_64")]
struct Operands {
    x: *const f32,
    w: *const f32,
    bias: *const f32,
    c: usize,
    act: Activation,
}

/// Kernel calls [`Rows::for_each_calls`] gathers before handing them over (up to 4 pixels
/// each: a 14-pixel row is 5 calls at 3x3, 7 at 5x5).
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
const CALLS: usize = 8;

/// Up to [`CALLS`] of a row's kernel calls: call `i` is pixel `ox[i]` (and the `R - 1`
/// after it if `run[i]`), with taps `taps[i][..len[i]]` as [`Rows::for_each_run`] gives
/// them.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
struct Calls {
    n: usize,
    ox: [usize; CALLS],
    run: [bool; CALLS],
    len: [usize; CALLS],
    taps: [[(usize, usize); MAX_TAPS]; CALLS],
}

#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
impl Calls {
    /// Call `i`: its taps, first pixel and whether it is a run.
    fn get(&self, i: usize) -> (&[(usize, usize)], usize, bool) {
        (&self.taps[i][..self.len[i]], self.ox[i], self.run[i])
    }
}

/// One output row of a depthwise convolution: what every kernel copy needs.
struct Rows<'a> {
    conv: &'a DepthwiseConv,
    /// The input rows held: input row `iy` of image `img` is row `img * x.h + iy - from` of
    /// `x` (every image whole, `from` 0; or one strip of an image, `img` 0).
    x: View<'a>,
    img: usize,
    oy: usize,
    ow: usize,
    pad: Pad2d,
    /// The input image's height (where the padding starts).
    h: usize,
    /// The first input row `x` holds.
    from: usize,
}

impl Rows<'_> {
    /// `f(taps, ox)` for every output pixel of the row, `taps` holding `(weight offset,
    /// input offset)` of each kernel position inside the input, in (ky, kx) order.
    #[inline(always)]
    fn for_each_pixel(&self, mut f: impl FnMut(&[(usize, usize)], usize)) {
        let mut taps = [(0usize, 0usize); MAX_TAPS];
        for ox in 0..self.ow {
            let n = self.taps(ox, &mut taps);
            f(&taps[..n], ox);
        }
    }

    /// `f(taps, ox, run)` for every output pixel of the row, `R` adjacent pixels at a time
    /// (`run` true) where all `R` lie in the [`Rows::interior`] and one at a time (`run`
    /// false) elsewhere; `taps` are those of pixel `ox`, and pixel `ox + p` of a run has the
    /// same taps at input offsets `p * step()` further.
    #[inline(always)]
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    fn for_each_run<const R: usize>(&self, mut f: impl FnMut(&[(usize, usize)], usize, bool)) {
        let (inner, step) = (self.interior(), self.step());
        let mut taps = [(0usize, 0usize); MAX_TAPS];
        let mut n = 0;
        // The interior pixel whose taps `taps` holds: the next interior pixel's are the
        // same, each input offset moved on (cheaper than gathering them again, which cost
        // as much as the products where the channels are few).
        let mut held: Option<usize> = None;
        let mut ox = 0;
        while ox < self.ow {
            let interior = inner.contains(&ox);
            match held {
                Some(prev) if interior => {
                    for tap in &mut taps[..n] {
                        tap.1 += (ox - prev) * step;
                    }
                }
                _ => n = self.taps(ox, &mut taps),
            }
            held = interior.then_some(ox);
            let run = interior && ox + R <= inner.end;
            f(&taps[..n], ox, run);
            ox += if run { R } else { 1 };
        }
    }

    /// The order a vector kernel runs a row in: `call(taps, ox, run, chans)` for each call
    /// of [`Rows::for_each_run`] over all of `chans`; or where a pixel's taps x channels
    /// reach `grouped_from` (its weights and inputs outgrow L1), [`Rows::for_each_calls`]'s
    /// calls a few at a time, each block of `block` channels over all of them before the
    /// next.
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    fn schedule<const R: usize>(
        &self,
        chans: Range<usize>,
        grouped_from: usize,
        block: usize,
        mut call: impl FnMut(&[(usize, usize)], usize, bool, Range<usize>),
    ) {
        let (first, end) = (chans.start, chans.end);
        if self.conv.k * self.conv.k * chans.len() < grouped_from {
            self.for_each_run::<R>(|taps, ox, run| call(taps, ox, run, first..end));
            return;
        }
        self.for_each_calls::<R>(|calls| {
            for c0 in (first..end).step_by(block) {
                for i in 0..calls.n {
                    let (taps, ox, run) = calls.get(i);
                    call(taps, ox, run, c0..end.min(c0 + block));
                }
            }
        });
    }

    /// [`Rows::for_each_run`]'s calls, up to [`CALLS`] at a time, each call's taps kept, so
    /// that a kernel can run each block of channels over all of them before the next block:
    /// the block's weights (`k * k` rows of it) then stay in L1 across the pixels, where a
    /// pixel at a time over all channels reads the whole weight and its inputs from L2 for
    /// every pixel (`k * k * c` values each: 115 KB at 5x5 and 1152 channels).
    #[inline(always)]
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    fn for_each_calls<const R: usize>(&self, mut f: impl FnMut(&Calls)) {
        let mut calls = Calls {
            n: 0,
            ox: [0; CALLS],
            run: [false; CALLS],
            len: [0; CALLS],
            taps: [[(0, 0); MAX_TAPS]; CALLS],
        };
        self.for_each_run::<R>(|taps, ox, run| {
            let i = calls.n;
            calls.taps[i][..taps.len()].copy_from_slice(taps);
            (calls.ox[i], calls.run[i], calls.len[i]) = (ox, run, taps.len());
            calls.n += 1;
            if calls.n == CALLS {
                f(&calls);
                calls.n = 0;
            }
        });
        if calls.n > 0 {
            f(&calls);
        }
    }

    /// The taps of output pixel `ox` inside the input (as [`Rows::for_each_pixel`] gives
    /// them) into `taps`; returns how many.
    #[inline(always)]
    fn taps(&self, ox: usize, taps: &mut [(usize, usize); MAX_TAPS]) -> usize {
        let (k, s, x) = (self.conv.k, self.conv.stride, self.x);
        let mut rows = [(0usize, 0usize); MAX_K];
        let inside = self.kernel_rows(&mut rows);
        let mut n = 0;
        for &(weight, input) in &rows[..inside] {
            for kx in 0..k {
                let ix = (ox * s + kx) as isize - self.pad.left as isize;
                if ix < 0 || ix >= x.w as isize {
                    continue;
                }
                taps[n] = (weight + kx * self.conv.c, input + ix as usize * x.stride);
                n += 1;
            }
        }
        n
    }

    /// The kernel rows of this output row that lie inside the input, into `rows` as
    /// `(weight offset of the row's first tap, input offset of the input row's first
    /// pixel)`, in ky order; returns how many.
    #[inline(always)]
    fn kernel_rows(&self, rows: &mut [(usize, usize); MAX_K]) -> usize {
        let (k, s, x) = (self.conv.k, self.conv.stride, self.x);
        let mut n = 0;
        for ky in 0..k {
            let iy = (self.oy * s + ky) as isize - self.pad.top as isize;
            if iy >= 0 && iy < self.h as isize {
                debug_assert!((self.from..self.from + x.h).contains(&(iy as usize)));
                rows[n] = (
                    ky * k * self.conv.c,
                    (self.img * x.h + iy as usize - self.from) * x.w * x.stride,
                );
                n += 1;
            }
        }
        n
    }

    /// The output pixels whose every tap lies inside the input horizontally: along them
    /// the taps are the same, the input offsets one [`Rows::step`] further per pixel.
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    fn interior(&self) -> std::ops::Range<usize> {
        let (k, s, left) = (self.conv.k, self.conv.stride, self.pad.left);
        let first = left.div_ceil(s);
        // ox * s + k - 1 - left < w
        let end = (self.x.w + left + 1).saturating_sub(k).div_ceil(s);
        first.min(self.ow)..end.clamp(first.min(self.ow), self.ow)
    }

    /// The operands of the vector kernels, `act` applied in registers.
    #[cfg(target_arch = "x86_64")]
    fn operands(&self, act: Activation) -> Operands {
        Operands {
            x: self.x.data.as_ptr(),
            w: self.conv.weight.as_ptr(),
            bias: self.conv.bias.as_ptr(),
            c: self.conv.c,
            act,
        }
    }

    /// Input offset from one output pixel's taps to the next one's (inside the interior).
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    fn step(&self) -> usize {
        self.conv.stride * self.x.stride
    }

    /// The portable kernel: per pixel, bias, then tap by tap over the channels `chans`.
    ///
    /// # Safety
    /// `dst` must be valid for writes of the row's `ow * c` values, `chans` within them.
    unsafe fn scalar(&self, act: Activation, dst: *mut f32, chans: Range<usize>) {
        let (c, n) = (self.conv.c, chans.len());
        if self.conv.k * self.conv.k > MAX_TAPS {
            // SAFETY: the same contract as this function's.
            return unsafe { self.scalar_any_k(act, dst, chans) };
        }
        self.for_each_pixel(|taps, ox| {
            // SAFETY: pixel `ox` of the row is `c` values at `ox * c`.
            let acc = unsafe { std::slice::from_raw_parts_mut(dst.add(ox * c + chans.start), n) };
            acc.copy_from_slice(&self.conv.bias[chans.clone()]);
            for &(t, off) in taps {
                let (t, off) = (t + chans.start, off + chans.start);
                let (px, w) = (&self.x.data[off..off + n], &self.conv.weight[t..t + n]);
                for ((a, &v), &t) in acc.iter_mut().zip(px).zip(w) {
                    *a += v * t;
                }
            }
            act.apply(acc, Isa::Scalar);
        });
    }

    /// [`Rows::scalar`] for kernels too large to gather their taps on the stack.
    ///
    /// # Safety
    /// As [`Rows::scalar`].
    unsafe fn scalar_any_k(&self, act: Activation, dst: *mut f32, chans: Range<usize>) {
        let (k, s, c, x) = (self.conv.k, self.conv.stride, self.conv.c, self.x);
        for ox in 0..self.ow {
            // SAFETY: pixel `ox` of the row is `c` values at `ox * c`.
            let acc = unsafe {
                std::slice::from_raw_parts_mut(dst.add(ox * c + chans.start), chans.len())
            };
            acc.copy_from_slice(&self.conv.bias[chans.clone()]);
            for ky in 0..k {
                let iy = (self.oy * s + ky) as isize - self.pad.top as isize;
                for kx in 0..k {
                    let ix = (ox * s + kx) as isize - self.pad.left as isize;
                    if iy < 0 || iy >= self.h as isize || ix < 0 || ix >= x.w as isize {
                        continue;
                    }
                    let iy = iy as usize - self.from;
                    let px = &x.pixel(self.img, iy, ix as usize)[chans.clone()];
                    let w = &self.conv.weight[(ky * k + kx) * c + chans.start..][..chans.len()];
                    for ((a, &v), &t) in acc.iter_mut().zip(px).zip(w) {
                        *a += v * t;
                    }
                }
            }
            act.apply(acc, Isa::Scalar);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::kernels::reference::conv2d_reference;
    use crate::model::kernels::testing::*;
    use candle_core::{Device, Tensor};

    #[test]
    fn threads_split_the_rows_unless_there_are_too_few() {
        let pool = threads(2);
        let wt = Tensor::zeros((672, 1, 5, 5), candle_core::DType::F32, &Device::Cpu).unwrap();
        let conv = DepthwiseConv::pack(&wt, None, 1, Isa::Scalar).unwrap();
        // (input rows, output pixels) -> parts: Lite0's 14x14 and 7x7 stages at batch 1 (and
        // its stride-2 layer between them), 7x7 at batch 16, and a wide strip of 2 rows.
        for ((rows, pixels), parts) in [
            ((14, 196), 1),
            ((7, 49), 2),
            ((14, 49), 1),
            ((112, 784), 1),
            ((2, 300), 1),
        ] {
            assert_eq!(
                pool.install(|| conv.channel_parts(rows, pixels)),
                parts,
                "{rows} rows, {pixels} pixels"
            );
        }
    }

    #[test]
    fn depthwise_matches_candle_grouped_conv() {
        let dev = Device::Cpu;
        let (one, three) = (threads(1), threads(3));
        for (c, h, w, k, s, pad) in [
            (5, 9, 7, 3, 1, p(1, 1, 1, 1)),
            (4, 10, 10, 3, 2, p(0, 1, 0, 1)),
            (3, 11, 8, 5, 2, p(1, 2, 1, 2)),
            (2, 6, 6, 5, 1, p(2, 2, 2, 2)),
            (37, 7, 9, 3, 2, p(0, 1, 0, 1)),
            (96, 5, 5, 5, 1, p(2, 2, 2, 2)),
            (144, 8, 8, 3, 1, p(1, 1, 1, 1)),
            (80, 4, 19, 3, 1, p(1, 1, 1, 1)),
            (24, 5, 14, 5, 2, p(1, 2, 1, 2)),
            (40, 3, 13, 3, 2, p(0, 1, 0, 1)),
            (16, 3, 4, 5, 1, p(2, 2, 2, 2)),
            // Past both vector kernels' `GROUPED_FROM` (k * k * c >= 8192) on one thread:
            // channel blocks over several pixels (AVX-512: over the row's tiles), every
            // block width and the tail.
            (917, 5, 9, 3, 1, p(1, 1, 1, 1)),
            (347, 7, 7, 5, 1, p(2, 2, 2, 2)),
            (330, 9, 11, 5, 2, p(1, 2, 1, 2)),
            // 7x7 (ConvNeXt's), and rows of several tiles with a partial last one.
            (24, 9, 10, 7, 1, p(3, 3, 3, 3)),
            (19, 11, 13, 7, 2, p(2, 3, 2, 3)),
            (8, 4, 21, 3, 1, p(1, 1, 1, 1)),
            // 5x5 at stride 1 with runs of pixels (8 interior ones a row).
            (70, 4, 12, 5, 1, p(2, 2, 2, 2)),
            (20, 3, 19, 5, 1, p(2, 2, 2, 2)),
            (16, 4, 37, 5, 2, p(1, 2, 1, 2)),
            // Shapes the AVX-512 kernel has no tile for, which take AVX2's there.
            (21, 8, 11, 3, 3, p(1, 1, 1, 1)),
            (35, 6, 9, 4, 1, p(1, 2, 1, 2)),
            (530, 5, 6, 4, 1, p(1, 2, 1, 2)),
        ] {
            let x = Tensor::randn(0f32, 1.0, (2, c, h, w), &dev).unwrap();
            let wt = Tensor::randn(0f32, 1.0, (c, 1, k, k), &dev).unwrap();
            let b = Tensor::randn(0f32, 1.0, c, &dev).unwrap();
            let reference = conv2d_reference(&x, &wt, s, pad, c).unwrap();
            let xa = Act::from_nchw(&x).unwrap();
            // Every copy of the kernel this CPU runs, with each activation, on one thread
            // and on three: the channels split three ways (an uneven last part) where the
            // input has fewer than 12 rows ((96, 5, 5, ..), (917, 5, 9, ..)), else the rows.
            for act in ACTIVATIONS {
                let expected = reference_epilogue(reference.clone(), &b, None, act);
                for isa in levels() {
                    for pool in [&one, &three] {
                        let conv = DepthwiseConv::pack(&wt, Some(&b), s, isa).unwrap();
                        let ours = pool
                            .install(|| conv.forward(xa.view(), pad, act))
                            .unwrap()
                            .to_nchw(&dev)
                            .unwrap();
                        let diff = max_abs_diff(&ours, &expected);
                        let threads = pool.current_num_threads();
                        assert!(
                            diff < 1e-5,
                            "{c} {h}x{w} k{k} s{s} {isa} {act:?} {threads} threads: {diff}"
                        );
                    }
                }
            }
        }
    }
}
