//! Normalisations over the channels of NHWC activations, where each pixel's channels are one
//! contiguous row: LayerNorm (ConvNeXt's `LayerNorm2d` and channels-last `LayerNorm`, ViT's
//! token norm) and ConvNeXt V2's global response normalisation. The row loops are compiled
//! once per instruction set, like the activations in [`super::math`].

use candle_core::{Result, Tensor};
use rayon::prelude::*;

use super::{to_host, Act, Isa};

/// `(x - mean) / sqrt(var + eps) * weight + bias` over each row of `c` values (biased
/// variance, two passes, as PyTorch's LayerNorm).
#[derive(Debug, Clone)]
pub struct LayerNorm {
    weight: Vec<f32>,
    bias: Vec<f32>,
    eps: f32,
    isa: Isa,
}

impl LayerNorm {
    pub fn pack(weight: &Tensor, bias: &Tensor, eps: f64, isa: Isa) -> Result<Self> {
        Ok(Self {
            weight: to_host(weight)?,
            bias: to_host(bias)?,
            eps: eps as f32,
            isa,
        })
    }

    pub fn channels(&self) -> usize {
        self.weight.len()
    }

    /// Normalise every pixel of `x` in place.
    pub fn forward_in_place(&self, x: &mut Act) -> Result<()> {
        let c = self.channels();
        if x.c != c {
            candle_core::bail!("layer norm: input has {} channels, expects {c}", x.c)
        }
        let rows_per_task = (4096 / c).max(1);
        x.data
            .par_chunks_mut(rows_per_task * c)
            .for_each(|rows| self.rows(rows));
        Ok(())
    }

    /// Normalise each `c`-value row of `rows` in place, by the copy for this ISA.
    pub fn rows(&self, rows: &mut [f32]) {
        let (w, b, eps) = (&self.weight[..], &self.bias[..], self.eps);
        match self.isa {
            // SAFETY: `isa` is a level this CPU has (chosen at load from `Isa::best`).
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => unsafe { x86::rows_avx512(rows, w, b, eps) },
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => unsafe { x86::rows_avx2(rows, w, b, eps) },
            _ => rows_generic(rows, w, b, eps),
        }
    }
}

#[inline(always)]
fn rows_generic(rows: &mut [f32], weight: &[f32], bias: &[f32], eps: f32) {
    let c = weight.len();
    for row in rows.chunks_exact_mut(c) {
        let mean = sum8(row.iter().copied()) / c as f32;
        let var = sum8(row.iter().map(|&v| (v - mean) * (v - mean))) / c as f32;
        let inv = 1.0 / (var + eps).sqrt();
        for ((v, &w), &b) in row.iter_mut().zip(weight).zip(bias) {
            *v = (*v - mean) * inv * w + b;
        }
    }
}

/// A sum in eight interleaved partial sums, so that it vectorises (the order is fixed, the
/// same in every copy).
#[inline(always)]
fn sum8(values: impl Iterator<Item = f32>) -> f32 {
    let mut acc = [0f32; 8];
    for (i, v) in values.enumerate() {
        acc[i % 8] += v;
    }
    ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]))
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    /// # Safety
    /// The CPU must have AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn rows_avx2(rows: &mut [f32], w: &[f32], b: &[f32], eps: f32) {
        super::rows_generic(rows, w, b, eps)
    }

    /// # Safety
    /// The CPU must have AVX-512 F.
    #[target_feature(enable = "avx512f,avx2,fma")]
    pub unsafe fn rows_avx512(rows: &mut [f32], w: &[f32], b: &[f32], eps: f32) {
        super::rows_generic(rows, w, b, eps)
    }
}

/// ConvNeXt V2's global response normalisation, per image:
/// `g[c] = sqrt(sum over pixels of x[c]^2)`, `n[c] = g[c] / (mean over c of g + eps)`,
/// `x = x + bias + weight * x * n` (so `x * (1 + weight * n) + bias`).
#[derive(Debug, Clone)]
pub struct ResponseNorm {
    weight: Vec<f32>,
    bias: Vec<f32>,
    eps: f32,
}

impl ResponseNorm {
    pub fn pack(weight: &Tensor, bias: &Tensor, eps: f64) -> Result<Self> {
        Ok(Self {
            weight: to_host(weight)?,
            bias: to_host(bias)?,
            eps: eps as f32,
        })
    }

    pub fn forward_in_place(&self, x: &mut Act) -> Result<()> {
        let c = self.weight.len();
        if x.c != c {
            candle_core::bail!("response norm: input has {} channels, expects {c}", x.c)
        }
        // Sums of squares per image and channel, in fixed runs of pixels added in order (an
        // image's result depends neither on its batch nor on the thread count).
        let squares = x.channel_sums_of_squares();
        let mut scale = vec![0f32; x.n * c];
        for (s, sq) in scale.chunks_exact_mut(c).zip(squares.chunks_exact(c)) {
            let g: Vec<f32> = sq.iter().map(|v| v.sqrt()).collect();
            let mean = g.iter().sum::<f32>() / c as f32;
            let denom = mean + self.eps;
            for ((s, &g), &w) in s.iter_mut().zip(&g).zip(&self.weight) {
                *s = 1.0 + w * (g / denom);
            }
        }
        let (h, bias) = (x.h, &self.bias);
        x.data
            .par_chunks_mut(x.w * c)
            .enumerate()
            .for_each(|(row, values)| {
                let img = row / h;
                let s = &scale[img * c..(img + 1) * c];
                for px in values.chunks_exact_mut(c) {
                    for ((v, &s), &b) in px.iter_mut().zip(s).zip(bias) {
                        *v = *v * s + b;
                    }
                }
            });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::kernels::testing::max_abs_diff;
    use candle_core::Device;

    #[test]
    fn layer_norm_matches_candle() {
        let dev = Device::Cpu;
        for c in [40, 37, 96] {
            let x = (Tensor::randn(0f32, 2.0, (2, c, 5, 3), &dev).unwrap() + 0.7).unwrap();
            let w = Tensor::randn(1f32, 0.1, c, &dev).unwrap();
            let b = Tensor::randn(0f32, 0.1, c, &dev).unwrap();
            let nhwc = x.permute((0, 2, 3, 1)).unwrap();
            let expected = candle_nn::ops::layer_norm(&nhwc.contiguous().unwrap(), &w, &b, 1e-6)
                .unwrap()
                .permute((0, 3, 1, 2))
                .unwrap();
            for isa in Isa::supported() {
                let ln = LayerNorm::pack(&w, &b, 1e-6, isa).unwrap();
                let mut a = Act::from_nchw(&x).unwrap();
                ln.forward_in_place(&mut a).unwrap();
                let diff = max_abs_diff(&a.to_nchw(&dev).unwrap(), &expected);
                assert!(diff < 1e-5, "c {c} {isa}: {diff}");
            }
        }
    }

    #[test]
    fn response_norm_matches_its_definition() {
        let dev = Device::Cpu;
        let (n, c, h, w) = (2, 12, 4, 5);
        let x = Tensor::randn(0f32, 1.0, (n, c, h, w), &dev).unwrap();
        let wt = Tensor::randn(0f32, 0.5, c, &dev).unwrap();
        let b = Tensor::randn(0f32, 0.5, c, &dev).unwrap();
        // timm: gx = norm over (H, W); nx = gx / (gx.mean(channels) + eps).
        let gx = x
            .sqr()
            .unwrap()
            .sum_keepdim((2, 3))
            .unwrap()
            .sqrt()
            .unwrap();
        let nx = gx
            .broadcast_div(&(gx.mean_keepdim(1).unwrap() + 1e-6).unwrap())
            .unwrap();
        let c4 = |t: &Tensor| t.reshape((1, c, 1, 1)).unwrap();
        let expected = (&x
            + x.broadcast_mul(&nx)
                .unwrap()
                .broadcast_mul(&c4(&wt))
                .unwrap()
                .broadcast_add(&c4(&b))
                .unwrap())
        .unwrap();
        let grn = ResponseNorm::pack(&wt, &b, 1e-6).unwrap();
        let mut a = Act::from_nchw(&x).unwrap();
        grn.forward_in_place(&mut a).unwrap();
        let diff = max_abs_diff(&a.to_nchw(&dev).unwrap(), &expected);
        assert!(diff < 1e-5, "{diff}");
    }
}
