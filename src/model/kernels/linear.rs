//! The classifier head, `nn.Linear` after the global pool: `scores = x W^T + b`, one dot
//! product per (image, class).
//!
//! Every dot product is computed whole by one thread in one fixed order ([`math::dots`]), so
//! an image's scores depend neither on its batch nor on the thread count. Threads split the
//! classes; each block of classes serves every image of the batch while its weight rows are
//! in cache, so the weight (2-8 MB: 1000 classes of 512-2048 features) is read once per
//! batch. At batch 1 this is a matrix-vector product bound by that read.

use candle_core::{Result, Tensor};
use rayon::prelude::*;

use super::isa::compiled_for;
use super::math;
use super::{to_host, Isa};

/// Weight bytes a task keeps in cache while every image of the batch passes through it.
const BLOCK_BYTES: usize = 64 * 1024;

/// Classes whose dot products one image computes together (independent partial sums that
/// share each load of the image's features).
const GROUP: usize = 8;

/// A fully connected layer, its weight kept as the `(out, in)` row-major matrix.
#[derive(Debug, Clone)]
pub struct Linear {
    inputs: usize,
    outputs: usize,
    weight: Vec<f32>,
    bias: Vec<f32>,
    isa: Isa,
}

impl Linear {
    /// From `nn.Linear`'s `(out, in)` weight and `(out,)` bias.
    pub fn pack(weight: &Tensor, bias: &Tensor, isa: Isa) -> Result<Self> {
        let (outputs, inputs) = weight.dims2()?;
        if bias.dims() != [outputs] {
            candle_core::bail!(
                "linear: bias {:?} does not fit weight {:?}",
                bias.dims(),
                weight.dims()
            )
        }
        Ok(Self {
            inputs,
            outputs,
            weight: to_host(weight)?,
            bias: to_host(bias)?,
            isa,
        })
    }

    pub fn outputs(&self) -> usize {
        self.outputs
    }

    /// The scores of `n` images whose features are `x` (`n * in` values): `n * out` values.
    pub fn forward(&self, x: &[f32], n: usize) -> Result<Vec<f32>> {
        let (inputs, outputs) = (self.inputs, self.outputs);
        if x.len() != n * inputs {
            candle_core::bail!(
                "linear: {} values are not {n} images of {inputs} features",
                x.len()
            )
        }
        if n == 0 || outputs == 0 {
            return Ok(Vec::new());
        }
        // At least one group of classes, however wide the features.
        let block = (BLOCK_BYTES / (inputs.max(1) * 4))
            .next_multiple_of(GROUP)
            .max(GROUP);
        // Class-major (`out * n`), each task writing its own classes; transposed at the end.
        let mut scores = vec![0f32; outputs * n];
        scores
            .par_chunks_mut(block * n)
            .enumerate()
            .for_each(|(b, dst)| {
                compiled_for!(self.isa, || {
                    let first = b * block;
                    let rows = &self.weight[first * inputs..][..dst.len() / n * inputs];
                    for (i, image) in x.chunks_exact(inputs).enumerate() {
                        let mut classes = rows.chunks_exact(inputs).enumerate();
                        while classes.len() >= GROUP {
                            let group: [(usize, &[f32]); GROUP] =
                                std::array::from_fn(|_| classes.next().expect("GROUP left"));
                            let sums = math::dots(image, group.map(|(_, w)| w));
                            for ((j, _), s) in group.into_iter().zip(sums) {
                                dst[j * n + i] = self.bias[first + j] + s;
                            }
                        }
                        for (j, w) in classes {
                            let [s] = math::dots(image, [w]);
                            dst[j * n + i] = self.bias[first + j] + s;
                        }
                    }
                })
            });
        Ok((0..n * outputs)
            .map(|k| scores[(k % outputs) * n + k / outputs])
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::kernels::testing::levels;
    use candle_core::{DType, Device};

    /// Against candle's matmul in f64, at every instruction set this CPU runs, at sizes that
    /// leave partial groups, partial blocks, a tail of features and features too wide for
    /// one block ([`BLOCK_BYTES`]); and each image alone gives the same bits as in its batch.
    #[test]
    fn matches_reference_and_does_not_depend_on_batch() -> Result<()> {
        let dev = Device::Cpu;
        let shapes = [
            (1280, 1000, 3),
            (77, 13, 5),
            (2048, 21, 1),
            (5, 9, 2),
            (20000, 10, 2),
        ];
        for &(inputs, outputs, n) in &shapes {
            let w = Tensor::randn(0f32, 1.0, (outputs, inputs), &dev)?;
            let b = Tensor::randn(0f32, 1.0, outputs, &dev)?;
            let x = Tensor::randn(0f32, 1.0, (n, inputs), &dev)?;
            let f64 = |t: &Tensor| t.to_dtype(DType::F64);
            let want: Vec<f32> = f64(&x)?
                .matmul(&f64(&w)?.t()?)?
                .broadcast_add(&f64(&b)?)?
                .to_dtype(DType::F32)?
                .flatten_all()?
                .to_vec1()?;
            let x = to_host(&x)?;
            for isa in levels() {
                let linear = Linear::pack(&w, &b, isa)?;
                let got = linear.forward(&x, n)?;
                let tol = 1e-5 * (inputs as f32).sqrt();
                for (k, (g, e)) in got.iter().zip(&want).enumerate() {
                    assert!(
                        (g - e).abs() <= tol,
                        "{isa} {inputs}x{outputs} batch {n} score {k}: {g} vs {e}"
                    );
                }
                for (i, image) in x.chunks_exact(inputs).enumerate() {
                    let alone = linear.forward(image, 1)?;
                    assert_eq!(alone[..], got[i * outputs..][..outputs], "{isa} image {i}");
                }
            }
        }
        Ok(())
    }

    #[test]
    fn refuses_inputs_that_do_not_fit_and_takes_an_empty_batch() -> Result<()> {
        let dev = Device::Cpu;
        let w = Tensor::zeros((4, 3), DType::F32, &dev)?;
        let b = Tensor::zeros(4, DType::F32, &dev)?;
        let linear = Linear::pack(&w, &b, Isa::Scalar)?;
        assert!(linear.forward(&[0.0; 5], 2).is_err());
        assert!(linear.forward(&[], 0)?.is_empty());
        assert!(Linear::pack(&w, &Tensor::zeros(3, DType::F32, &dev)?, Isa::Scalar).is_err());
        Ok(())
    }
}
