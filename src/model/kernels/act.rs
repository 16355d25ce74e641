//! The NHWC activation types every kernel reads and writes: [`Act`] (an owned activation),
//! [`View`] (a channel prefix of one), [`Pad2d`], the epilogue [`Activation`] and the
//! pre-activation [`Prologue`].

use candle_core::{CpuStorage, DType, Device, Result, Storage, Tensor};
use rayon::prelude::*;

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
    pub fn output_size(
        &self,
        h: usize,
        w: usize,
        k: usize,
        stride: usize,
    ) -> Result<(usize, usize)> {
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
    /// `x * relu6(x + 3) / 6` (MobileNetV3).
    HardSwish,
    /// `x * sigmoid(x)`, also called swish (EfficientNet).
    Silu,
    /// `x * Phi(x)` with the exact (erf) normal CDF (ConvNeXt, ViT).
    Gelu,
}

impl Activation {
    /// Whether the vector kernels apply it to a block in registers before the store. The
    /// others (`exp` and `erf` inside) get a pass over the block just stored, while it is
    /// in cache ([`Activation::apply`]).
    pub fn in_registers(self) -> bool {
        !matches!(self, Activation::Silu | Activation::Gelu)
    }

    /// In place over a slice, by the copy compiled for `isa`.
    #[inline]
    pub fn apply(self, xs: &mut [f32], isa: super::Isa) {
        super::math::apply(self, xs, isa)
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

    /// `f` applied to the images `chunk` at a time, the results put back together in order.
    /// `f` must treat each image on its own (every layer of a CNN does); its result is then
    /// the same, to the bit, as on the whole batch. Early layers, whose activations are
    /// the largest, work on a few images that stay in the cache instead of a batch that
    /// streams from memory. The chunks run in parallel, one a thread: while every thread
    /// has a chunk of its own, the parallel sections inside `f` find no idle thread to
    /// hand work to and run where their chunk's activations already are, instead of
    /// splitting every layer between cores that then read each other's rows.
    pub fn in_chunks(&self, chunk: usize, f: impl Fn(&Act) -> Result<Act> + Sync) -> Result<Act> {
        let chunk = chunk.max(1);
        if self.n <= chunk {
            return f(self);
        }
        let per_image = self.h * self.w * self.c;
        let (h, w, c) = (self.h, self.w, self.c);
        let results = self
            .data
            .par_chunks(chunk * per_image)
            .with_max_len(1)
            .map(|part| {
                let n = part.len() / per_image;
                let y = f(&Act {
                    n,
                    h,
                    w,
                    c,
                    data: part.to_vec(),
                })?;
                if y.n != n {
                    candle_core::bail!("in_chunks: a chunk of {n} images gave {}", y.n)
                }
                Ok(y)
            })
            .collect::<Result<Vec<Act>>>()?;
        let first = &results[0];
        let (h, w, c) = (first.h, first.w, first.c);
        if results.iter().any(|y| (y.h, y.w, y.c) != (h, w, c)) {
            candle_core::bail!("in_chunks: chunks gave results of different shapes")
        }
        let mut data = Vec::with_capacity(self.n * h * w * c);
        for y in &results {
            data.extend_from_slice(&y.data);
        }
        Ok(Act {
            n: self.n,
            h,
            w,
            c,
            data,
        })
    }

    /// Transpose an NCHW tensor into NHWC, in parallel over image rows.
    pub fn from_nchw(x: &Tensor) -> Result<Self> {
        let (n, c, h, w) = x.dims4()?;
        // The tensor's own values where it is a contiguous f32 one on the CPU (a network's
        // input): a copy first (`to_vec1`) and a zeroed output cost more than the
        // transpose itself, 80-145 us of Lite0's 6-8 ms at batch 1 on the Zen 3 VM.
        let (storage, layout) = x.storage_and_layout();
        let src = match (&*storage, layout.contiguous_offsets()) {
            (Storage::Cpu(CpuStorage::F32(values)), Some((start, end))) => &values[start..end],
            _ => {
                drop(storage);
                let x = x
                    .to_device(&Device::Cpu)?
                    .to_dtype(DType::F32)?
                    .contiguous()?;
                return Self::from_nchw(&x);
            }
        };
        let len = n * h * w * c;
        if len == 0 {
            return Ok(Self {
                n,
                h,
                w,
                c,
                data: Vec::new(),
            });
        }
        if src.len() != len {
            candle_core::bail!("from_nchw: {} values for {n}x{c}x{h}x{w}", src.len())
        }
        let mut data = Vec::with_capacity(len);
        data.spare_capacity_mut()[..len]
            .par_chunks_mut(w * c)
            .enumerate()
            .for_each(|(row, dst)| {
                let (img, y) = (row / h, row % h);
                for ch in 0..c {
                    let plane = &src[((img * c + ch) * h + y) * w..][..w];
                    for (x, &v) in plane.iter().enumerate() {
                        dst[x * c + ch].write(v);
                    }
                }
            });
        // SAFETY: each row's `w` pixels got all `c` channels written above.
        unsafe { data.set_len(len) };
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
        Tensor::from_vec(self.channel_means(pro), (self.n, self.c), device)
    }

    /// The mean of every channel (after `pro`, if given) over each image's pixels, `n * c`
    /// values.
    pub fn channel_means(&self, pro: Option<Prologue>) -> Vec<f32> {
        let mut means = self.channel_sums(pro, false);
        let scale = 1.0 / (self.h * self.w) as f32;
        means.iter_mut().for_each(|m| *m *= scale);
        means
    }

    /// The sum of squares of every channel over each image's pixels, `n * c` values.
    pub fn channel_sums_of_squares(&self) -> Vec<f32> {
        self.channel_sums(None, true)
    }

    /// Per image and channel, the sum over pixels of `pro(x)` (or of `x^2`). Partial sums
    /// over fixed runs of pixels are computed in parallel and added in order, so an image's
    /// sums depend neither on its batch nor on the thread count.
    fn channel_sums(&self, pro: Option<Prologue>, square: bool) -> Vec<f32> {
        const RUN: usize = 64;
        let (hw, c) = (self.h * self.w, self.c);
        let runs = hw.div_ceil(RUN);
        let mut partial = vec![0f32; self.n * runs * c];
        partial.par_chunks_mut(c).enumerate().for_each(|(i, sum)| {
            let (img, run) = (i / runs, i % runs);
            let (start, end) = (run * RUN, ((run + 1) * RUN).min(hw));
            let pixels = &self.data[(img * hw + start) * c..(img * hw + end) * c];
            let mut px_out = vec![0f32; if pro.is_some() { c } else { 0 }];
            for px in pixels.chunks_exact(c) {
                let px = match pro {
                    Some(p) => {
                        p.apply(px, &mut px_out);
                        &px_out[..]
                    }
                    None => px,
                };
                if square {
                    for (s, &v) in sum.iter_mut().zip(px) {
                        *s += v * v;
                    }
                } else {
                    for (s, &v) in sum.iter_mut().zip(px) {
                        *s += v;
                    }
                }
            }
        });
        let mut sums = vec![0f32; self.n * c];
        for (total, runs) in sums.chunks_exact_mut(c).zip(partial.chunks_exact(runs * c)) {
            for run in runs.chunks_exact(c) {
                for (t, &v) in total.iter_mut().zip(run) {
                    *t += v;
                }
            }
        }
        sums
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
    pub(super) fn pixel(&self, img: usize, y: usize, x: usize) -> &[f32] {
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
    /// `dst = relu(src * scale + shift)` for the channels `c0..c0 + src.len()`.
    #[inline(always)]
    pub(super) fn apply_from(&self, src: &[f32], dst: &mut [f32], c0: usize) {
        let (scale, shift) = (&self.scale[c0..], &self.shift[c0..]);
        for (((o, &v), &a), &b) in dst.iter_mut().zip(src).zip(scale).zip(shift) {
            *o = (v * a + b).max(0.0);
        }
    }

    #[inline(always)]
    pub(super) fn apply(&self, src: &[f32], dst: &mut [f32]) {
        for (((o, &v), &a), &b) in dst.iter_mut().zip(src).zip(self.scale).zip(self.shift) {
            *o = (v * a + b).max(0.0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::kernels::testing::max_abs_diff;
    use candle_core::DType;

    #[test]
    fn nhwc_round_trip() {
        let x = Tensor::randn(0f32, 1.0, (2, 3, 5, 4), &Device::Cpu).unwrap();
        let back = Act::from_nchw(&x).unwrap().to_nchw(&Device::Cpu).unwrap();
        assert_eq!(max_abs_diff(&x, &back), 0.0);
        // Read in place from an offset into a larger tensor (a chunk of a batch), and
        // through a copy from a strided view or another dtype; pixel (img 0, y 1, x 2) of
        // channel 1 checked by hand.
        let batch = Tensor::randn(0f32, 1.0, (5, 3, 5, 4), &Device::Cpu).unwrap();
        let chunk = batch.narrow(0, 2, 2).unwrap();
        let permuted = Tensor::randn(0f32, 1.0, (2, 5, 4, 3), &Device::Cpu)
            .unwrap()
            .permute((0, 3, 1, 2))
            .unwrap();
        let half = x.to_dtype(DType::F16).unwrap();
        for t in [&chunk, &permuted, &half] {
            let a = Act::from_nchw(t).unwrap();
            let f32s = t.to_dtype(DType::F32).unwrap();
            assert_eq!(max_abs_diff(&f32s, &a.to_nchw(&Device::Cpu).unwrap()), 0.0);
            let v: f32 = f32s
                .get(0)
                .unwrap()
                .get(1)
                .unwrap()
                .get(1)
                .unwrap()
                .get(2)
                .unwrap()
                .to_scalar()
                .unwrap();
            assert_eq!(a.data[(a.w + 2) * a.c + 1], v);
        }
    }

    /// A per-image operation that changes the shape: each image's 2x2 blocks summed into
    /// one pixel, every channel doubled into two.
    fn pool_and_widen(x: &Act) -> Result<Act> {
        let (h, w) = (x.h / 2, x.w / 2);
        let mut data = Vec::with_capacity(x.n * h * w * 2 * x.c);
        for img in 0..x.n {
            for (y, xx) in (0..h).flat_map(|y| (0..w).map(move |xx| (y, xx))) {
                for ch in 0..2 * x.c {
                    let at = |dy, dx| {
                        x.data[((img * x.h + 2 * y + dy) * x.w + 2 * xx + dx) * x.c + ch / 2]
                    };
                    data.push(at(0, 0) + at(0, 1) + at(1, 0) + at(1, 1) * (1 + ch % 2) as f32);
                }
            }
        }
        Ok(Act {
            n: x.n,
            h,
            w,
            c: 2 * x.c,
            data,
        })
    }

    #[test]
    fn in_chunks_matches_the_whole_batch() {
        let x =
            Act::from_nchw(&Tensor::randn(0f32, 1.0, (5, 3, 6, 4), &Device::Cpu).unwrap()).unwrap();
        let whole = pool_and_widen(&x).unwrap();
        assert_eq!((whole.n, whole.h, whole.w, whole.c), (5, 3, 2, 6));
        for chunk in [0, 1, 2, 3, 5, 8] {
            let calls = std::sync::atomic::AtomicUsize::new(0);
            let chunked = x
                .in_chunks(chunk, |part| {
                    calls.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    assert!(part.n <= chunk.max(1) || part.n == x.n);
                    pool_and_widen(part)
                })
                .unwrap();
            assert_eq!(chunked, whole, "chunks of {chunk}");
            assert_eq!(
                calls.into_inner(),
                5usize.div_ceil(chunk.clamp(1, 5)),
                "chunks of {chunk}"
            );
        }
    }

    #[test]
    fn in_chunks_runs_its_chunks_in_parallel() {
        use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
        use std::time::{Duration, Instant};
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .unwrap();
        let x = Act::from_nchw(&Tensor::zeros((2, 1, 2, 2), DType::F32, &Device::Cpu).unwrap())
            .unwrap();
        let (started, overlapped) = (AtomicUsize::new(0), AtomicUsize::new(0));
        let y = pool
            .install(|| {
                x.in_chunks(1, |part| {
                    started.fetch_add(1, SeqCst);
                    // The other chunk can only start while this one waits if they run in
                    // parallel; one at a time, the first gives up after 10 s.
                    let t = Instant::now();
                    while started.load(SeqCst) < 2 && t.elapsed() < Duration::from_secs(10) {
                        std::thread::yield_now();
                    }
                    if started.load(SeqCst) == 2 {
                        overlapped.fetch_add(1, SeqCst);
                    }
                    Ok(Act {
                        data: part.data.clone(),
                        ..*part
                    })
                })
            })
            .unwrap();
        assert_eq!(y, x);
        assert_eq!(overlapped.into_inner(), 2, "each chunk saw the other start");
    }

    #[test]
    fn in_chunks_refuses_a_chunk_that_changes_its_image_count() {
        let x = Act::from_nchw(&Tensor::zeros((4, 2, 2, 2), DType::F32, &Device::Cpu).unwrap())
            .unwrap();
        let err = x
            .in_chunks(2, |part| {
                Ok(Act {
                    n: part.n - 1,
                    data: part.data[8..].to_vec(),
                    ..*part
                })
            })
            .unwrap_err();
        assert!(err.to_string().contains("in_chunks"), "{err}");
    }
}
