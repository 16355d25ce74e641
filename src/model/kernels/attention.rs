//! Multi-head self-attention over token rows (ViT, DeiT): from the `qkv` projection of each
//! image's `T` tokens (rows of `3 * D`: the queries, keys and values of every head side by
//! side, as timm lays them out), `softmax(q k^T * scale) v` per image and head, written into
//! that head's columns of `T` rows of `D`. Each (image, head) pair is one task: two small
//! GEMMs by the general GEMM with the softmax between them, the same arithmetic whatever the
//! batch, so an image's result does not depend on its batch.

use rayon::prelude::*;

use super::gemm::general_gemm;
use super::par::SendPtr;
use super::scratch::with_scratch;
use super::{math, Isa};

/// `out` (`n * tokens` rows of `dim`) = attention of `qkv` (`n * tokens` rows of `3 * dim`).
pub fn attention(
    qkv: &[f32],
    out: &mut [f32],
    n: usize,
    tokens: usize,
    dim: usize,
    heads: usize,
    isa: Isa,
) -> candle_core::Result<()> {
    if heads == 0 || !dim.is_multiple_of(heads) {
        candle_core::bail!("attention: {dim} channels do not split into {heads} heads")
    }
    if qkv.len() != n * tokens * 3 * dim || out.len() != n * tokens * dim {
        candle_core::bail!("attention: buffers do not hold {n} x {tokens} tokens of {dim}")
    }
    let head_dim = dim / heads;
    let scale = (head_dim as f32).powf(-0.5);
    let dst = SendPtr(out.as_mut_ptr());
    (0..n * heads).into_par_iter().for_each(|task| {
        let (img, h) = (task / heads, task % heads);
        let rows = &qkv[img * tokens * 3 * dim..][..tokens * 3 * dim];
        // Scratch: the scaled queries (T x d), the keys transposed (d x T), the scores (T x T).
        with_scratch(2 * tokens * head_dim + tokens * tokens, |buf| {
            let (q, rest) = buf.split_at_mut(tokens * head_dim);
            let (kt, scores) = rest.split_at_mut(tokens * head_dim);
            for (t, row) in rows.chunks_exact(3 * dim).enumerate() {
                let (qh, kh) = (
                    &row[h * head_dim..][..head_dim],
                    &row[dim + h * head_dim..][..head_dim],
                );
                for (d, (&qv, &kv)) in qh.iter().zip(kh).enumerate() {
                    q[t * head_dim + d] = qv * scale;
                    kt[d * tokens + t] = kv;
                }
            }
            // SAFETY: every pointer covers the rows and columns given; `scores` is this
            // task's own scratch.
            unsafe {
                general_gemm(
                    tokens,
                    tokens,
                    head_dim,
                    q.as_ptr(),
                    head_dim,
                    kt.as_ptr(),
                    tokens,
                    scores.as_mut_ptr(),
                    tokens,
                    None,
                )
            };
            for row in scores.chunks_exact_mut(tokens) {
                softmax(row, isa);
            }
            let v = rows[2 * dim + h * head_dim..].as_ptr();
            // SAFETY: `v` is this head's values, rows `3 * dim` apart; the output columns
            // `h * d..(h + 1) * d` of this image's rows are written by this task alone.
            unsafe {
                let o = dst.get().add(img * tokens * dim + h * head_dim);
                general_gemm(
                    tokens,
                    head_dim,
                    tokens,
                    scores.as_ptr(),
                    tokens,
                    v,
                    3 * dim,
                    o,
                    dim,
                    None,
                )
            };
        });
    });
    Ok(())
}

/// `row = exp(row - max) / sum`, the exponentials by the copy compiled for `isa`.
fn softmax(row: &mut [f32], isa: Isa) {
    let max = row.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    row.iter_mut().for_each(|v| *v -= max);
    math::exp_in_place(row, isa);
    let sum: f32 = row.iter().sum();
    let inv = 1.0 / sum;
    row.iter_mut().for_each(|v| *v *= inv);
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Tensor, D};

    #[test]
    fn matches_candle() {
        let dev = Device::Cpu;
        let (n, t, dim, heads) = (2, 7, 12, 3);
        let qkv = Tensor::randn(0f32, 1.0, (n, t, 3 * dim), &dev).unwrap();
        // candle: split, per head softmax(q k^T / sqrt(d)) v, heads back side by side.
        let hd = dim / heads;
        let split = |i: usize| {
            qkv.narrow(2, i * dim, dim)
                .unwrap()
                .reshape((n, t, heads, hd))
                .unwrap()
                .transpose(1, 2)
                .unwrap()
                .contiguous()
                .unwrap()
        };
        let (q, k, v) = (split(0), split(1), split(2));
        let s = (q.matmul(&k.t().unwrap()).unwrap() / (hd as f64).sqrt()).unwrap();
        let p = candle_nn::ops::softmax(&s, D::Minus1).unwrap();
        let expected = p
            .matmul(&v)
            .unwrap()
            .transpose(1, 2)
            .unwrap()
            .reshape((n * t, dim))
            .unwrap();
        let input = qkv.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        for isa in Isa::supported() {
            let mut out = vec![0f32; n * t * dim];
            attention(&input, &mut out, n, t, dim, heads, isa).unwrap();
            let ours = Tensor::from_vec(out, (n * t, dim), &dev).unwrap();
            let diff = (ours - &expected)
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert!(diff < 1e-5, "{isa}: {diff}");
        }
    }
}
