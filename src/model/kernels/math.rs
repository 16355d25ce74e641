//! Element-wise functions of the newer architectures (SiLU, GELU, hard-swish, the gates of
//! squeeze-excite) on f32 slices, written branch-free so that the compiler vectorises them,
//! and compiled once per instruction set ([`apply`] picks the copy): no libm call in the
//! loop, which would keep it scalar.
//!
//! `exp` is the Cephes single-precision algorithm (range reduction by ln 2, a degree-5
//! polynomial; about 1 ulp over the range used here); `erf` is Abramowitz & Stegun 7.1.26
//! (absolute error 1.4e-7, the size of f32 rounding near 1), as in PyTorch's vectorised CPU
//! kernels. The tests bound the difference from the exact functions.

use super::{Activation, Isa};

/// `e^x` for finite `x`; saturates below -87.3 (to about 1e-38) and above 88.4.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    // ln 2 split in two, so that `n * LN2_HI` is exact.
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // Adding then subtracting 1.5 * 2^23 rounds to the nearest integer (for |v| < 2^22)
    // without a call to `roundf`.
    const ROUND: f32 = 12_582_912.0;
    let x = x.clamp(-87.3, 88.37);
    let t = x * LOG2E + ROUND;
    let n = t - ROUND;
    let r = x - n * LN2_HI - n * LN2_LO;
    let r2 = r * r;
    let p = 1.987_569_1e-4;
    let p = p * r + 1.398_2e-3;
    let p = p * r + 8.333_452e-3;
    let p = p * r + 4.166_579_6e-2;
    let p = p * r + 0.166_666_65;
    let p = p * r + 0.5;
    let y = p * r2 + r + 1.0;
    // 2^n built in the exponent bits. `t`'s low mantissa bits hold n itself (the rounding
    // constant's bits plus n), so integer arithmetic gets it without a float-to-int
    // conversion (which would not vectorise); n is in -126..=127 after the clamp.
    let n_int = (t.to_bits() as i32).wrapping_sub(ROUND.to_bits() as i32);
    let scale = f32::from_bits((n_int.wrapping_add(127) as u32) << 23);
    y * scale
}

/// `1 / (1 + e^-x)`.
#[inline(always)]
pub fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + exp(-x))
}

/// The error function: Abramowitz & Stegun 7.1.26, `1 - t * r(t) * e^(-x^2)` with
/// `t = 1 / (1 + p|x|)`, the formula PyTorch's vectorised CPU `erf` uses (absolute error
/// 1.4e-7 before f32 rounding).
#[inline(always)]
pub fn erf(x: f32) -> f32 {
    let a = x.abs();
    let t = 1.0 / (1.0 + 0.327_591_1 * a);
    let r = 1.061_405_4 * t - 1.453_152;
    let r = r * t + 1.421_413_8;
    let r = r * t - 0.284_496_72;
    let r = r * t + 0.254_829_6;
    let y = 1.0 - r * t * exp(-a * a);
    y.copysign(x)
}

/// `relu6(x + 3) / 6`, PyTorch's `Hardsigmoid`.
#[inline(always)]
pub fn hard_sigmoid(x: f32) -> f32 {
    (x + 3.0).clamp(0.0, 6.0) / 6.0
}

/// One activation on one value (the reference for the vector kernels' register forms).
#[inline(always)]
pub fn activate(act: Activation, x: f32) -> f32 {
    match act {
        Activation::Identity => x,
        Activation::Relu => x.max(0.0),
        Activation::Relu6 => x.clamp(0.0, 6.0),
        Activation::HardSwish => x * hard_sigmoid(x),
        Activation::Silu => x * sigmoid(x),
        Activation::Gelu => 0.5 * x * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2)),
    }
}

/// `act` in place over `xs`, the `match` outside the loop so that each arm vectorises.
#[inline(always)]
fn apply_generic(act: Activation, xs: &mut [f32]) {
    match act {
        Activation::Identity => {}
        Activation::Relu => xs
            .iter_mut()
            .for_each(|v| *v = activate(Activation::Relu, *v)),
        Activation::Relu6 => xs
            .iter_mut()
            .for_each(|v| *v = activate(Activation::Relu6, *v)),
        Activation::HardSwish => xs
            .iter_mut()
            .for_each(|v| *v = activate(Activation::HardSwish, *v)),
        Activation::Silu => xs
            .iter_mut()
            .for_each(|v| *v = activate(Activation::Silu, *v)),
        Activation::Gelu => xs
            .iter_mut()
            .for_each(|v| *v = activate(Activation::Gelu, *v)),
    }
}

/// A gate in place: `xs[i] = gate(xs[i])` for squeeze-excite (`sigmoid` or `hard_sigmoid`).
#[inline(always)]
fn gate_generic(gate: Gate, xs: &mut [f32]) {
    match gate {
        Gate::Sigmoid => xs.iter_mut().for_each(|v| *v = sigmoid(*v)),
        Gate::HardSigmoid => xs.iter_mut().for_each(|v| *v = hard_sigmoid(*v)),
    }
}

/// The dot product of `x` and `w` (at least as long as `x`), summed in one fixed order
/// whatever the instruction set: eight interleaved partial sums (so the loop vectorises
/// without reordering anything a compiler may not reorder) added in order, plus the tail's
/// sum.
#[inline(always)]
pub fn dot(x: &[f32], w: &[f32]) -> f32 {
    const LANES: usize = 8;
    let len = x.len() / LANES * LANES;
    let w = &w[..x.len()];
    let mut acc = [0f32; LANES];
    for c in (0..len).step_by(LANES) {
        let xs: &[f32; LANES] = x[c..c + LANES].try_into().expect("LANES values");
        let ws: &[f32; LANES] = w[c..c + LANES].try_into().expect("LANES values");
        for l in 0..LANES {
            acc[l] += xs[l] * ws[l];
        }
    }
    let tail: f32 = x[len..].iter().zip(&w[len..]).map(|(x, w)| x * w).sum();
    acc.iter().sum::<f32>() + tail
}

/// The gate of a squeeze-excite block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gate {
    Sigmoid,
    HardSigmoid,
}

/// `e^x` in place.
#[inline(always)]
fn exp_generic(xs: &mut [f32]) {
    xs.iter_mut().for_each(|v| *v = exp(*v));
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{apply_generic, exp_generic, gate_generic, Activation, Gate};

    /// # Safety
    /// The CPU must have AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn exp_avx2(xs: &mut [f32]) {
        exp_generic(xs)
    }

    /// # Safety
    /// The CPU must have AVX-512 F.
    #[target_feature(enable = "avx512f,avx2,fma")]
    pub unsafe fn exp_avx512(xs: &mut [f32]) {
        exp_generic(xs)
    }

    /// # Safety
    /// The CPU must have AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn apply_avx2(act: Activation, xs: &mut [f32]) {
        apply_generic(act, xs)
    }

    /// # Safety
    /// The CPU must have AVX-512 F.
    #[target_feature(enable = "avx512f,avx2,fma")]
    pub unsafe fn apply_avx512(act: Activation, xs: &mut [f32]) {
        apply_generic(act, xs)
    }

    /// # Safety
    /// The CPU must have AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn gate_avx2(gate: Gate, xs: &mut [f32]) {
        gate_generic(gate, xs)
    }

    /// # Safety
    /// The CPU must have AVX-512 F.
    #[target_feature(enable = "avx512f,avx2,fma")]
    pub unsafe fn gate_avx512(gate: Gate, xs: &mut [f32]) {
        gate_generic(gate, xs)
    }
}

/// The register forms of the activations that have one ([`Activation::in_registers`]), for
/// the vector kernels' epilogues; the same operations in the same order as [`activate`], so
/// the results are identical. Others pass through (the caller applies them afterwards).
#[cfg(target_arch = "x86_64")]
pub(super) mod registers {
    use std::arch::x86_64::*;

    use super::Activation;

    #[inline]
    #[target_feature(enable = "avx2,fma")]
    pub fn avx2(a: __m256, act: Activation) -> __m256 {
        let (zero, three, six) = (
            _mm256_setzero_ps(),
            _mm256_set1_ps(3.0),
            _mm256_set1_ps(6.0),
        );
        match act {
            Activation::Relu => _mm256_max_ps(a, zero),
            Activation::Relu6 => _mm256_min_ps(_mm256_max_ps(a, zero), six),
            Activation::HardSwish => {
                let gate = _mm256_min_ps(_mm256_max_ps(_mm256_add_ps(a, three), zero), six);
                _mm256_mul_ps(a, _mm256_div_ps(gate, six))
            }
            Activation::Identity | Activation::Silu | Activation::Gelu => a,
        }
    }

    #[inline]
    #[target_feature(enable = "avx512f")]
    pub fn avx512(a: __m512, act: Activation) -> __m512 {
        let (zero, three, six) = (
            _mm512_setzero_ps(),
            _mm512_set1_ps(3.0),
            _mm512_set1_ps(6.0),
        );
        match act {
            Activation::Relu => _mm512_max_ps(a, zero),
            Activation::Relu6 => _mm512_min_ps(_mm512_max_ps(a, zero), six),
            Activation::HardSwish => {
                let gate = _mm512_min_ps(_mm512_max_ps(_mm512_add_ps(a, three), zero), six);
                _mm512_mul_ps(a, _mm512_div_ps(gate, six))
            }
            Activation::Identity | Activation::Silu | Activation::Gelu => a,
        }
    }
}

/// `act` in place over `xs`, by the copy compiled for `isa` (a level this CPU has).
pub fn apply(act: Activation, xs: &mut [f32], isa: Isa) {
    match isa {
        // SAFETY: `isa` is a level this CPU supports (every `Isa` in use came from
        // `Isa::best`, capped).
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => unsafe { x86::apply_avx512(act, xs) },
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => unsafe { x86::apply_avx2(act, xs) },
        _ => apply_generic(act, xs),
    }
}

/// `e^x` in place over `xs`, by the copy compiled for `isa` (a level this CPU has).
pub fn exp_in_place(xs: &mut [f32], isa: Isa) {
    match isa {
        // SAFETY: as in `apply`.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => unsafe { x86::exp_avx512(xs) },
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => unsafe { x86::exp_avx2(xs) },
        _ => exp_generic(xs),
    }
}

/// `gate` in place over `xs`, by the copy compiled for `isa` (a level this CPU has).
pub fn gate(gate: Gate, xs: &mut [f32], isa: Isa) {
    match isa {
        // SAFETY: as in `apply`.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => unsafe { x86::gate_avx512(gate, xs) },
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => unsafe { x86::gate_avx2(gate, xs) },
        _ => gate_generic(gate, xs),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Points across the range that matters, the tails and zero included.
    fn points() -> Vec<f32> {
        (-4000..=4000).map(|i| i as f32 * 0.005).collect()
    }

    #[test]
    fn exp_is_within_two_ulps() {
        for x in points().into_iter().chain([-87.0, -50.0, 30.0, 80.0, 88.0]) {
            let (ours, exact) = (exp(x) as f64, (x as f64).exp());
            assert!(
                ((ours - exact) / exact).abs() < 2.5e-7,
                "exp({x}): {ours} vs {exact}"
            );
        }
        assert!(exp(-200.0) < 1e-37 && exp(-200.0) >= 0.0);
        assert!(exp(200.0).is_finite());
    }

    #[test]
    fn erf_and_the_activations_match_their_definitions() {
        for x in points() {
            let xd = x as f64;
            let erf_exact = libm_erf(xd);
            // 1.4e-7 of the formula, plus a few roundings of f32 values below 1 (6e-8 each).
            assert!(
                (erf(x) as f64 - erf_exact).abs() < 5e-7,
                "erf({x}): {} vs {erf_exact}",
                erf(x)
            );
            let cases = [
                (Activation::Silu, xd / (1.0 + (-xd).exp())),
                (
                    Activation::Gelu,
                    0.5 * xd * (1.0 + libm_erf(xd / std::f64::consts::SQRT_2)),
                ),
                (Activation::HardSwish, xd * (xd + 3.0).clamp(0.0, 6.0) / 6.0),
                (Activation::Relu6, xd.clamp(0.0, 6.0)),
            ];
            for (act, exact) in cases {
                let got = activate(act, x) as f64;
                assert!(
                    (got - exact).abs() <= 4e-7 * exact.abs().max(1.0),
                    "{act:?}({x}): {got} vs {exact}"
                );
            }
        }
    }

    #[test]
    fn every_copy_gives_the_same_values() {
        let xs = points();
        for act in [
            Activation::Silu,
            Activation::Gelu,
            Activation::HardSwish,
            Activation::Relu6,
        ] {
            let mut expected = xs.clone();
            expected.iter_mut().for_each(|v| *v = activate(act, *v));
            for isa in Isa::supported() {
                let mut ours = xs.clone();
                apply(act, &mut ours, isa);
                assert_eq!(ours, expected, "{act:?} at {isa}");
            }
        }
        for g in [Gate::Sigmoid, Gate::HardSigmoid] {
            let mut expected = xs.clone();
            gate(g, &mut expected, Isa::Scalar);
            for isa in Isa::supported() {
                let mut ours = xs.clone();
                gate(g, &mut ours, isa);
                assert_eq!(ours, expected, "{g:?} at {isa}");
            }
        }
    }

    /// erf in f64 by its Taylor series (|x| < 3) or continued fraction (beyond).
    fn libm_erf(x: f64) -> f64 {
        let a = x.abs();
        let v = if a < 3.0 {
            let (mut term, mut sum, mut n) = (a, a, 0.0);
            while term.abs() > 1e-17 {
                n += 1.0;
                term *= -a * a / n;
                sum += term / (2.0 * n + 1.0);
            }
            sum * 2.0 / std::f64::consts::PI.sqrt()
        } else {
            // erfc by Lentz's continued fraction.
            let mut f = a;
            for k in (1..60).rev() {
                f = a + (k as f64 / 2.0) / f;
            }
            1.0 - (-a * a).exp() / (f * std::f64::consts::PI.sqrt())
        };
        v.copysign(x)
    }
}
