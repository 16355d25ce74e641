//! The classifier head, `nn.Linear` after the global pool: `scores = x W^T + b`, a GEMM of
//! the batch's features by the weight, on the panel kernels of the convolutions
//! ([`super::gemm`]).
//!
//! The weight is packed once at load as `in x out` panels, its classes rounded up to a
//! multiple of 8 with zero columns. Threads split the classes in whole panels. Each image's
//! score is the same chain of multiply-adds down the features in whatever block of rows or
//! part of the classes it is computed, so an image's scores depend neither on its batch nor
//! on the thread count. At batch 1 this is a matrix-vector product bound by the read of the
//! weight (2-8 MB: 1000 classes of 512-2048 features); from 9 images on the AVX-512 kernel
//! reads each line of it once for up to 16 images (its stream blocks).

use candle_core::{Result, Tensor};
use rayon::prelude::*;

use super::gemm::{Finish, Kernel, Panels};
use super::par::{panel_parts, SendPtr};
use super::{to_host, Isa};

/// A fully connected layer, its weight packed for a panel kernel.
#[derive(Debug, Clone)]
pub struct Linear {
    inputs: usize,
    outputs: usize,
    /// `outputs` rounded up to a multiple of 8, the columns every kernel takes.
    columns: usize,
    kernel: Kernel,
    /// `inputs x columns`, [`Kernel::pack`]ed; the columns past `outputs` are zeros.
    weight: Vec<f32>,
    /// `columns` values, zeros past `outputs`.
    bias: Vec<f32>,
}

impl Linear {
    /// From `nn.Linear`'s `(out, in)` weight and `(out,)` bias, for the kernels of `isa`.
    pub fn pack(weight: &Tensor, bias: &Tensor, isa: Isa) -> Result<Self> {
        let (outputs, inputs) = weight.dims2()?;
        if bias.dims() != [outputs] {
            candle_core::bail!(
                "linear: bias {:?} does not fit weight {:?}",
                bias.dims(),
                weight.dims()
            )
        }
        let columns = outputs.next_multiple_of(8);
        let kernel = Kernel::for_channels(columns, isa)
            .expect("every level has a panel kernel for a multiple of 8 columns");
        let w = to_host(weight)?;
        // `W^T`, one row of `columns` values per input feature.
        let mut rows = vec![0f32; inputs * columns];
        for (o, class) in w.chunks_exact(inputs.max(1)).enumerate() {
            for (i, &v) in class.iter().enumerate() {
                rows[i * columns + o] = v;
            }
        }
        let mut b = to_host(bias)?;
        b.resize(columns, 0.0);
        Ok(Self {
            inputs,
            outputs,
            columns,
            kernel,
            weight: kernel.pack(&rows, inputs, columns),
            bias: b,
        })
    }

    pub fn outputs(&self) -> usize {
        self.outputs
    }

    /// The scores of `n` images whose features are `x` (`n * in` values): `n * out` values.
    pub fn forward(&self, x: &[f32], n: usize) -> Result<Vec<f32>> {
        let (inputs, outputs, columns) = (self.inputs, self.outputs, self.columns);
        if x.len() != n * inputs {
            candle_core::bail!(
                "linear: {} values are not {n} images of {inputs} features",
                x.len()
            )
        }
        if n == 0 || outputs == 0 {
            return Ok(Vec::new());
        }
        if inputs == 0 {
            return Ok((0..n).flat_map(|_| self.bias[..outputs].to_vec()).collect());
        }
        // Whole panels a thread, each writing its columns of every image's row of `scores`
        // (`columns` wide; the classes past `outputs` are dropped after).
        let mut scores = vec![0f32; n * columns];
        let dst = SendPtr(scores.as_mut_ptr());
        let parts = panel_parts(columns, rayon::current_num_threads(), self.kernel.width());
        parts.into_par_iter().for_each(|cols| {
            let finish = Finish {
                bias: Some(self.bias[cols.start..].as_ptr()),
                ..Finish::NONE
            };
            let w = Panels::new(&self.weight, columns).columns_from(cols.start);
            // SAFETY: the kernel was chosen at load from a level this CPU has; `x` holds `n`
            // rows of `inputs` values, `scores` `n` rows of `columns` values of which this
            // part alone writes `cols`, the bias covers every column from `cols.start` on,
            // and `cols.start` begins a panel.
            unsafe {
                let d = dst.get().add(cols.start);
                self.kernel.gemm(
                    n,
                    cols.len(),
                    inputs,
                    x.as_ptr(),
                    inputs,
                    w,
                    d,
                    columns,
                    finish,
                )
            };
        });
        if columns != outputs {
            scores = scores
                .chunks_exact(columns)
                .flat_map(|row| &row[..outputs])
                .copied()
                .collect();
        }
        Ok(scores)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::kernels::testing::{levels, threads};
    use candle_core::{DType, Device};

    /// Against candle's matmul in f64, at every instruction set this CPU runs, at sizes that
    /// leave a partial panel, class counts not a multiple of 8, features in chunks and a batch
    /// in AVX-512's stream blocks (12 images under a 5 MB weight); and each image alone, and
    /// the batch on 3 threads, give the same bits as the batch.
    #[test]
    fn matches_reference_and_does_not_depend_on_batch() -> Result<()> {
        let dev = Device::Cpu;
        let three = threads(3);
        let shapes = [
            (1280, 1000, 12),
            (1024, 1000, 3),
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
                let on_three = three.install(|| linear.forward(&x, n))?;
                assert_eq!(on_three, got, "{isa} {inputs}x{outputs} on 3 threads");
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
