//! Squeeze-excite (EfficientNet, MobileNetV3, RegNetY) on NHWC activations: each image's
//! channel means go through two small fully connected layers, and the gated result scales
//! every pixel's channels. The layers are a few thousand multiply-adds per image, so they
//! run as plain loops; the means and the scaling are the passes over the activation, both
//! parallel. Every step is per image, so an image's result does not depend on its batch.

use candle_core::{Result, Tensor};
use rayon::prelude::*;

use super::math::{self, Gate};
use super::{to_host, Act, Activation, Isa};

/// One squeeze-excite module: `x * gate(expand(act(reduce(mean(x)))))`.
#[derive(Debug, Clone)]
pub struct SqueezeExcite {
    channels: usize,
    reduced: usize,
    /// `reduced x channels`, row-major (the 1x1 convolution's weight as a matrix).
    reduce_w: Vec<f32>,
    reduce_b: Vec<f32>,
    /// `channels x reduced`.
    expand_w: Vec<f32>,
    expand_b: Vec<f32>,
    act: Activation,
    gate: Gate,
    isa: Isa,
}

impl SqueezeExcite {
    /// From the two 1x1 convolutions' weights (`(rd, c, 1, 1)` and `(c, rd, 1, 1)`, or the
    /// same as matrices) and biases.
    pub fn pack(
        reduce: (&Tensor, &Tensor),
        expand: (&Tensor, &Tensor),
        act: Activation,
        gate: Gate,
        isa: Isa,
    ) -> Result<Self> {
        let (reduced, channels) = (reduce.0.dim(0)?, reduce.0.elem_count() / reduce.0.dim(0)?);
        if expand.0.dims()[..2] != [channels, reduced] {
            candle_core::bail!(
                "squeeze-excite: expand weight {:?} does not fit reduce weight {:?}",
                expand.0.dims(),
                reduce.0.dims()
            )
        }
        Ok(Self {
            channels,
            reduced,
            reduce_w: to_host(reduce.0)?,
            reduce_b: to_host(reduce.1)?,
            expand_w: to_host(expand.0)?,
            expand_b: to_host(expand.1)?,
            act,
            gate,
            isa,
        })
    }

    /// The per-image, per-channel factors `gate(...)`: `n * c` values.
    pub fn factors(&self, x: &Act) -> Result<Vec<f32>> {
        if x.c != self.channels {
            candle_core::bail!(
                "squeeze-excite: input has {} channels, expects {}",
                x.c,
                self.channels
            )
        }
        let means = x.channel_means(None);
        let mut factors = vec![0f32; x.n * x.c];
        let mut hidden = vec![0f32; self.reduced];
        for (mean, out) in means.chunks_exact(x.c).zip(factors.chunks_exact_mut(x.c)) {
            for ((h, w), &b) in hidden
                .iter_mut()
                .zip(self.reduce_w.chunks_exact(x.c))
                .zip(&self.reduce_b)
            {
                *h = b + math::dot(mean, w);
            }
            self.act.apply(&mut hidden, self.isa);
            for ((o, w), &b) in out
                .iter_mut()
                .zip(self.expand_w.chunks_exact(self.reduced))
                .zip(&self.expand_b)
            {
                *o = b + math::dot(&hidden, w);
            }
            math::gate(self.gate, out, self.isa);
        }
        Ok(factors)
    }

    /// Scale `x` in place by its factors.
    pub fn forward_in_place(&self, x: &mut Act) -> Result<()> {
        let factors = self.factors(x)?;
        scale_channels(x, &factors);
        Ok(())
    }
}

/// Multiply every pixel of image `i` by `factors[i * c..(i + 1) * c]`, in parallel over rows.
pub fn scale_channels(x: &mut Act, factors: &[f32]) {
    let (c, hw) = (x.c, x.h * x.w);
    x.data
        .par_chunks_mut(x.w * c)
        .enumerate()
        .for_each(|(row, values)| {
            let img = row * x.w / hw;
            let f = &factors[img * c..(img + 1) * c];
            for px in values.chunks_exact_mut(c) {
                for (v, &s) in px.iter_mut().zip(f) {
                    *v *= s;
                }
            }
        });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::kernels::testing::max_abs_diff;
    use candle_core::{Device, D};

    #[test]
    fn matches_candle() {
        let dev = Device::Cpu;
        let (n, c, rd, h, w) = (3, 20, 6, 7, 5);
        let x = Tensor::randn(0f32, 1.0, (n, c, h, w), &dev).unwrap();
        let w1 = Tensor::randn(0f32, 0.3, (rd, c, 1, 1), &dev).unwrap();
        let b1 = Tensor::randn(0f32, 0.3, rd, &dev).unwrap();
        let w2 = Tensor::randn(0f32, 0.3, (c, rd, 1, 1), &dev).unwrap();
        let b2 = Tensor::randn(0f32, 0.3, c, &dev).unwrap();
        // candle: mean, two matrix products, activation, gate, broadcast multiply.
        let m = x.mean((2, 3)).unwrap();
        let hdn = m
            .matmul(&w1.reshape((rd, c)).unwrap().t().unwrap())
            .unwrap()
            .broadcast_add(&b1)
            .unwrap();
        for (act, gate) in [
            (Activation::Silu, Gate::Sigmoid),
            (Activation::Relu, Gate::HardSigmoid),
        ] {
            let hdn = match act {
                Activation::Silu => hdn.silu().unwrap(),
                _ => hdn.relu().unwrap(),
            };
            let s = hdn
                .matmul(&w2.reshape((c, rd)).unwrap().t().unwrap())
                .unwrap()
                .broadcast_add(&b2)
                .unwrap();
            let g = match gate {
                Gate::Sigmoid => candle_nn::ops::sigmoid(&s).unwrap(),
                Gate::HardSigmoid => ((s + 3.0).unwrap().clamp(0f32, 6f32).unwrap() / 6.0).unwrap(),
            };
            let expected = x
                .broadcast_mul(
                    &g.unsqueeze(D::Minus1)
                        .unwrap()
                        .unsqueeze(D::Minus1)
                        .unwrap(),
                )
                .unwrap();
            for isa in Isa::supported() {
                let se = SqueezeExcite::pack((&w1, &b1), (&w2, &b2), act, gate, isa).unwrap();
                let mut a = Act::from_nchw(&x).unwrap();
                se.forward_in_place(&mut a).unwrap();
                let diff = max_abs_diff(&a.to_nchw(&dev).unwrap(), &expected);
                assert!(diff < 1e-5, "{act:?} {gate:?} {isa}: {diff}");
            }
        }
    }
}
