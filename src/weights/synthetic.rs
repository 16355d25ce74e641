//! Weights defined by a closed formula of each tensor's name and shape.
//!
//! The parity tests load the same formula into torchvision/timm (the Python generator in
//! `tests/fixtures/parity/` implements it line for line), so a whole network can be compared
//! against PyTorch without shipping weight files. `classify bench` also uses it when no
//! weights are given. Values are non-trivial: He-scaled convolutions, BatchNorm statistics
//! and affines away from identity.

use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::{Init, VarBuilder};

/// 32-bit FNV-1a of the tensor name: the per-tensor seed.
pub fn fnv1a32(s: &str) -> u32 {
    s.bytes().fold(0x811c_9dc5u32, |h, b| {
        (h ^ b as u32).wrapping_mul(0x0100_0193)
    })
}

pub fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Element `i` of the stream for `seed`, uniform in [-1, 1) on a 2^-23 grid (exact in f32).
pub fn uniform(seed: u32, i: u64) -> f64 {
    let h = splitmix64(((seed as u64) << 32) | (i & 0xffff_ffff));
    (h >> 40) as f64 / (1u64 << 23) as f64 - 1.0
}

/// The value of every element of tensor `name` with `shape`, in row-major order.
pub fn values(name: &str, shape: &[usize]) -> Vec<f32> {
    let seed = fnv1a32(name);
    let n: usize = shape.iter().product();
    let fan_in: usize = shape.iter().skip(1).product();
    let map: Box<dyn Fn(f64) -> f64> = if name.ends_with("running_var") {
        Box::new(|u| 1.25 + 0.25 * u)
    } else if name.ends_with("running_mean") {
        Box::new(|u| 0.1 * u)
    } else if shape.len() == 1 && name.ends_with("weight") {
        Box::new(|u| 1.0 + 0.1 * u)
    } else if shape.len() == 1 {
        Box::new(|u| 0.1 * u)
    } else if shape.len() == 4 {
        let scale = (6.0 / fan_in as f64).sqrt();
        Box::new(move |u| u * scale)
    } else if shape.len() == 2 {
        let scale = (3.0 / fan_in as f64).sqrt();
        Box::new(move |u| u * scale)
    } else {
        Box::new(|u| u)
    };
    (0..n as u64)
        .map(|i| map(uniform(seed, i)) as f32)
        .collect()
}

/// The synthetic input image batch: uniform in [-2, 2), like a normalised photo.
pub fn input(shape: &[usize], device: &Device) -> candle_core::Result<Tensor> {
    let seed = fnv1a32("input");
    let n: usize = shape.iter().product();
    let data: Vec<f32> = (0..n as u64)
        .map(|i| (2.0 * uniform(seed, i)) as f32)
        .collect();
    Tensor::from_vec(data, shape, device)
}

/// [`input`] with its last image replaced by blocks of 16x16 pixels at -1.5, 0 or 1.5
/// (`((y / 16 + x / 16 + channel) mod 3 - 1) * 1.5`): for networks whose pooled features
/// hardly differ between two noise images, a second image that is nothing like the first.
pub fn input_with_blocks(shape: &[usize], device: &Device) -> candle_core::Result<Tensor> {
    let x = input(shape, device)?;
    let (n, c, h, w) = x.dims4()?;
    let blocks: Vec<f32> = (0..c * h * w)
        .map(|i| {
            let (ch, y, x) = (i / (h * w), (i / w) % h, i % w);
            ((y / 16 + x / 16 + ch) % 3) as f32 * 1.5 - 1.5
        })
        .collect();
    let blocks = Tensor::from_vec(blocks, (1, c, h, w), device)?;
    Tensor::cat(&[x.narrow(0, 0, n - 1)?, blocks], 0)
}

/// A `VarBuilder` backend that makes up every tensor it is asked for from [`values`].
#[derive(Debug, Clone, Copy, Default)]
pub struct SyntheticWeights;

impl SyntheticWeights {
    pub fn var_builder(device: &Device) -> VarBuilder<'static> {
        VarBuilder::from_backend(Box::new(SyntheticWeights), DType::F32, device.clone())
    }
}

impl SimpleBackend for SyntheticWeights {
    fn get(
        &self,
        s: Shape,
        name: &str,
        _: Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        Tensor::from_vec(values(name, s.dims()), s, dev)?.to_dtype(dtype)
    }

    fn get_unchecked(&self, name: &str, _: DType, _: &Device) -> candle_core::Result<Tensor> {
        Err(candle_core::Error::Msg(format!(
            "synthetic weights need a shape for `{name}`"
        )))
    }

    fn contains_tensor(&self, _: &str) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formula_is_stable() {
        // Pinned so an accidental change to the formula is caught before the parity
        // fixtures (made by the Python twin of this file) silently stop matching.
        assert_eq!(fnv1a32("conv1.weight"), 0xbdce_c494);
        let v = values("bn1.running_var", &[3]);
        assert!(v.iter().all(|&x| (1.0..1.5).contains(&x)));
        let w = values("conv1.weight", &[64, 3, 7, 7]);
        let bound = (6.0f64 / 147.0).sqrt() as f32;
        assert!(w.iter().all(|&x| x.abs() <= bound));
        assert!(w.iter().any(|&x| x.abs() > 0.9 * bound));
    }
}
