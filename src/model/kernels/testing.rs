//! Helpers shared by the kernel tests: candle references and the levels to test.

use candle_core::Tensor;

use super::{Act, Activation, Isa, Pad2d};

pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
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

/// Whether `a` and `b` hold the same values to the bit.
pub fn same_bits(a: &[f32], b: &[f32]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())
}

/// `ours` has `expected`'s shape and bits.
pub fn assert_same_bits(ours: &Act, expected: &Act, case: &str) {
    assert_eq!(
        (ours.n, ours.h, ours.w, ours.c),
        (expected.n, expected.h, expected.w, expected.c),
        "{case}"
    );
    assert!(same_bits(&ours.data, &expected.data), "{case}");
}

/// A pool of `n` threads, for tests that check how work splits between threads.
pub fn threads(n: usize) -> rayon::ThreadPool {
    rayon::ThreadPoolBuilder::new()
        .num_threads(n)
        .build()
        .unwrap()
}

pub fn p(t: usize, b: usize, l: usize, r: usize) -> Pad2d {
    Pad2d {
        top: t,
        bottom: b,
        left: l,
        right: r,
    }
}

pub fn reference_epilogue(
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
    crate::model::layers::activate(&y, act).unwrap()
}

/// Every activation, for the epilogue tests.
pub const ACTIVATIONS: [Activation; 6] = [
    Activation::Identity,
    Activation::Relu,
    Activation::Relu6,
    Activation::HardSwish,
    Activation::Silu,
    Activation::Gelu,
];

/// Every instruction set this CPU runs (the scalar one included); says which it cannot.
pub fn levels() -> Vec<Isa> {
    for isa in Isa::ALL.into_iter().filter(|&i| i > Isa::best()) {
        eprintln!("{isa} kernels: not tested, this CPU lacks {isa}");
    }
    Isa::supported().collect()
}

/// `relu(x[:, ..c] * scale + shift)` per channel, in candle.
pub fn reference_prologue(x: &Tensor, scale: &[f32], shift: &[f32]) -> Tensor {
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
