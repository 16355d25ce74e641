use candle_core::{DType, Device, Tensor};

use super::*;
use crate::model::kernels::reference::conv2d_reference;
use crate::model::kernels::testing::*;

#[test]
fn gemm_conv_matches_candle() {
    for isa in levels() {
        gemm_conv_matches_candle_at(isa);
    }
}

fn gemm_conv_matches_candle_at(isa: Isa) {
    let dev = Device::Cpu;
    // Batch 9 and 20x20 make some cases large enough to be split by rows.
    for (n, cin, cout, h, w, k, s, pad, act) in [
        (2, 3, 8, 13, 11, 7, 2, p(3, 3, 3, 3), Activation::Relu),
        // The MobileNet/EfficientNet stem: 3x3 over 3 channels, stride 2, TF-style padding.
        (2, 3, 16, 13, 11, 3, 2, p(0, 1, 0, 1), Activation::Relu6),
        (2, 6, 5, 9, 9, 3, 1, p(1, 1, 1, 1), Activation::Identity),
        (2, 6, 5, 10, 10, 3, 2, p(0, 1, 0, 1), Activation::Relu6),
        (2, 8, 4, 7, 7, 1, 1, p(0, 0, 0, 0), Activation::Relu),
        (2, 8, 4, 8, 8, 1, 2, p(0, 0, 0, 0), Activation::Identity),
        (9, 16, 12, 20, 20, 3, 1, p(1, 1, 1, 1), Activation::Relu),
        (9, 16, 12, 20, 20, 1, 1, p(0, 0, 0, 0), Activation::Relu),
        // Few rows and more channels: the output channels are split between threads (40: a
        // last AVX-512 panel half full).
        (1, 8, 40, 6, 6, 3, 1, p(1, 1, 1, 1), Activation::Relu),
        (1, 8, 40, 5, 5, 1, 1, p(0, 0, 0, 0), Activation::Identity),
        // Multiples of 16 channels (AVX-512 panels), split by rows and by channels.
        (2, 8, 32, 13, 11, 3, 2, p(0, 1, 0, 1), Activation::Relu6),
        (9, 16, 48, 20, 20, 1, 1, p(0, 0, 0, 0), Activation::Relu),
        (1, 24, 80, 6, 6, 3, 1, p(1, 1, 1, 1), Activation::Identity),
        (1, 16, 96, 3, 3, 1, 1, p(0, 0, 0, 0), Activation::Relu),
        // An input larger than L2; its 80 output channels split between threads.
        (1, 480, 80, 14, 14, 1, 1, p(0, 0, 0, 0), Activation::Relu),
        // 256 channels and more: the residual in a pass of its own rather than in registers
        // (AVX2; AVX-512 adds these small ones in registers), split by channels and by rows.
        (1, 32, 256, 5, 5, 1, 1, p(0, 0, 0, 0), Activation::Relu),
        (9, 8, 256, 8, 8, 1, 1, p(0, 0, 0, 0), Activation::Relu),
        // On AVX-512 a residual up to 4 MiB goes in registers whatever the width; this one
        // (4352 rows of 256) takes the pass there too.
        (17, 8, 256, 16, 16, 1, 1, p(0, 0, 0, 0), Activation::Relu),
        // An output and a residual of 1 MiB each: the AVX-512 kernel fetches each next
        // block's rows ahead (`FETCH_ROWS_FROM_BYTES`), the residual in registers.
        (4, 8, 256, 16, 16, 1, 1, p(0, 0, 0, 0), Activation::Relu),
        // `k` in chunks (`gemm::k_chunks`): 1170 steps split by channels, 1080 by rows, and
        // 1100 with 256 channels (the residual in a pass, on AVX-512 too).
        (1, 130, 32, 7, 7, 3, 2, p(1, 1, 1, 1), Activation::Relu),
        (9, 120, 48, 10, 10, 3, 2, p(1, 1, 1, 1), Activation::Relu),
        (2, 1100, 256, 4, 4, 1, 1, p(0, 0, 0, 0), Activation::Relu),
    ] {
        let x = Tensor::randn(0f32, 1.0, (n, cin, h, w), &dev).unwrap();
        // A `k` in chunks (over 1024 steps) has its weight scaled to give sums of the size
        // 512 steps give, which the absolute tolerance below is for: with unit weights, our
        // f32 sums of 1100 products and the reference's, each rounded in its own order,
        // differed by 1.07e-4 in one run.
        let steps = k * k * cin;
        let std = if steps > 1024 {
            (512.0 / steps as f32).sqrt()
        } else {
            1.0
        };
        let wt = Tensor::randn(0f32, std, (cout, cin, k, k), &dev).unwrap();
        let b = Tensor::randn(0f32, 1.0, cout, &dev).unwrap();
        let conv = GemmConv::pack(&wt, Some(&b), s, isa).unwrap();
        let reference = conv2d_reference(&x, &wt, s, pad, 1).unwrap();
        let res = Tensor::randn(0f32, 1.0, reference.dims(), &dev).unwrap();
        // Every algorithm that applies (the choice between them is the parity tests').
        let winograd = k == 3 && s == 1;
        let algorithms = [Algorithm::Gemm, Algorithm::Winograd2, Algorithm::Winograd4];
        for algorithm in algorithms
            .into_iter()
            .filter(|&a| winograd || a == Algorithm::Gemm)
        {
            // F(4x4, 3x3) is held to its own bound (see `winograd_matches_candle`).
            let tol = match algorithm {
                Algorithm::Winograd4 => F4_TOLERANCE * largest(&reference),
                _ => 1e-4,
            };
            let case = format!("{isa} {algorithm:?} {cin}->{cout} {h}x{w} k{k} s{s}");
            let against = Reference {
                conv: &reference,
                bias: &b,
                residual: &res,
            };
            check_epilogues(&conv, &x, pad, act, Some(algorithm), &against, tol, &case);
        }
    }
}

/// Stems over 1-4 channels read their receptive fields column by column
/// ([`GemmConv::by_columns`]): against candle for each channel count, kernel sizes and
/// strides with windows that overlap, padding on every side (asymmetric too) and none,
/// a plain input and a view of a wider one, with and without a prologue, on 1 and 3
/// threads (output rows split between them), to the bit between thread counts.
#[test]
fn fields_by_columns_match_candle() {
    let dev = Device::Cpu;
    let scale = [0.5f32, -1.0, 2.0, 0.7];
    let shift = [0.1f32, 0.2, -0.3, 0.0];
    let pools = [threads(1), threads(3)];
    // (images, cin, cout, h, w, k, stride, pad)
    for (n, cin, cout, h, w, k, s, pad) in [
        (1, 3, 64, 40, 37, 7, 2, p(3, 3, 3, 3)),
        (2, 3, 24, 17, 16, 3, 2, p(0, 1, 0, 1)),
        (3, 1, 8, 11, 9, 5, 3, p(2, 2, 2, 2)),
        (1, 4, 16, 9, 12, 3, 2, p(1, 1, 1, 1)),
        (2, 2, 40, 15, 15, 4, 2, p(1, 2, 1, 2)),
        (1, 3, 8, 12, 12, 7, 2, p(0, 0, 0, 0)),
        // Wider than the input reaches: whole columns of padding.
        (1, 3, 16, 4, 5, 7, 2, p(3, 3, 3, 3)),
    ] {
        let x = Tensor::randn(0f32, 1.0, (n, cin + 2, h, w), &dev).unwrap();
        let wide = Act::from_nchw(&x).unwrap();
        let plain = Act::from_nchw(&x.narrow(1, 0, cin).unwrap()).unwrap();
        let wt = Tensor::randn(0f32, 1.0, (cout, cin, k, k), &dev).unwrap();
        let b = Tensor::randn(0f32, 1.0, cout, &dev).unwrap();
        for isa in levels() {
            let conv = GemmConv::pack(&wt, Some(&b), s, isa).unwrap();
            assert!(conv.by_columns(), "{cin} channels {k}x{k}/{s}");
            for with_pro in [false, true] {
                let (input, pro) = prologue_input(&x, cin, with_pro, &scale, &shift);
                let reference = conv2d_reference(&input, &wt, s, pad, 1).unwrap();
                let expected = reference_epilogue(reference, &b, None, Activation::Relu);
                let mut results = Vec::new();
                for (view, what) in [(plain.view(), "plain"), (wide.prefix(cin), "a view")] {
                    for pool in &pools {
                        let ours = pool
                            .install(|| {
                                conv.forward_using(view, pad, pro, Activation::Relu, None, None)
                            })
                            .unwrap();
                        let case = format!(
                            "{isa} {n}x{cin}->{cout} {h}x{w} {k}x{k}/{s} {pad:?} prologue \
                             {with_pro}, {what}, {} threads",
                            pool.current_num_threads()
                        );
                        let diff = max_abs_diff(&ours.to_nchw(&dev).unwrap(), &expected);
                        assert!(diff < 1e-4, "{case}: {diff}");
                        results.push((ours.data, case));
                    }
                }
                for (data, case) in &results[1..] {
                    assert!(
                        same_bits(data, &results[0].0),
                        "{case}: not the bits of {}",
                        results[0].1
                    );
                }
            }
        }
    }
}

/// What a convolution over the first `cin` channels of `x` reads, with a prologue (then
/// returned too) if `with_pro`: `relu(x * scale + shift)` per channel.
fn prologue_input<'a>(
    x: &Tensor,
    cin: usize,
    with_pro: bool,
    scale: &'a [f32],
    shift: &'a [f32],
) -> (Tensor, Option<Prologue<'a>>) {
    let (scale, shift) = (&scale[..cin], &shift[..cin]);
    let input = if with_pro {
        reference_prologue(x, scale, shift)
    } else {
        x.narrow(1, 0, cin).unwrap()
    };
    (input, with_pro.then_some(Prologue { scale, shift }))
}

/// A reference convolution's output before its epilogue, and the epilogue's operands.
struct Reference<'a> {
    conv: &'a Tensor,
    bias: &'a Tensor,
    residual: &'a Tensor,
}

/// `conv` on `x` (by `algorithm`, `None`: its own choice), without and with the residual,
/// within `tol` of the reference with the same epilogue; and with the output written over
/// the residual ([`GemmConv::forward_onto`]), the same bits as beside it.
#[allow(clippy::too_many_arguments)]
fn check_epilogues(
    conv: &GemmConv,
    x: &Tensor,
    pad: Pad2d,
    act: Activation,
    algorithm: Option<Algorithm>,
    reference: &Reference,
    tol: f32,
    case: &str,
) {
    let dev = x.device();
    let input = Act::from_nchw(x).unwrap();
    for with_res in [false, true] {
        let res_act = with_res.then(|| Act::from_nchw(reference.residual).unwrap());
        let ours = conv
            .forward_using(input.view(), pad, None, act, res_act.as_ref(), algorithm)
            .unwrap();
        let residual = with_res.then_some(reference.residual);
        let expected = reference_epilogue(reference.conv.clone(), reference.bias, residual, act);
        let diff = max_abs_diff(&ours.to_nchw(dev).unwrap(), &expected);
        assert!(diff < tol, "{case} res {with_res}: {diff}");
        let Some(res_act) = res_act else { continue };
        let under = res_act.data.as_ptr();
        let onto = conv
            .forward_onto_using(input.view(), pad, None, act, res_act, algorithm)
            .unwrap();
        assert_same_bits(&onto, &ours, &format!("{case}, written over the residual"));
        // Only a GEMM of one group on a panel kernel can write over its residual (not
        // Winograd's output transform, nor groups or the general GEMM, whose passes add it
        // after the sums are stored), and where its blocks add a narrow residual in
        // registers, it does.
        let over = onto.data.as_ptr() == under;
        let gemm = algorithm.unwrap_or(Algorithm::Gemm) == Algorithm::Gemm;
        let may = gemm && conv.groups == 1 && conv.panels.is_some();
        assert!(
            may || !over,
            "{case}: written over a residual added after the store"
        );
        let narrow = conv.cout < launch::RESIDUAL_IN_REGISTERS_BELOW;
        assert!(!(may && narrow) || over, "{case}: a new output array");
    }
}

/// How far F(4x4, 3x3) may be from direct convolution, relative to the largest convolution
/// output (before bias, residual and activation). Its transforms scale by up to 8 and 1/24,
/// which F(2x2)'s (0, 1/2, 1) do not: over ~3000 draws of these tests the worst was 8.9e-6
/// (F(2x2): 7.5e-7).
const F4_TOLERANCE: f32 = 3e-5;

/// The largest magnitude in `t`.
fn largest(t: &Tensor) -> f32 {
    t.abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

#[test]
fn grouped_conv_matches_candle() {
    let dev = Device::Cpu;
    for isa in levels() {
        for (n, cin, cout, groups, h, w, k, s, pad, act) in [
            // 8 output channels per group (half an AVX-512 panel, a whole AVX2 one), 16, and
            // 5 (general GEMM).
            (2, 12, 16, 2, 9, 7, 3, 1, p(1, 1, 1, 1), Activation::Relu),
            (
                1,
                48,
                64,
                4,
                7,
                7,
                3,
                2,
                p(1, 1, 1, 1),
                Activation::Identity,
            ),
            (2, 9, 15, 3, 8, 8, 3, 1, p(1, 1, 1, 1), Activation::Silu),
            // Many row blocks, and the direct 1x1 path.
            (9, 16, 32, 2, 20, 20, 3, 1, p(1, 1, 1, 1), Activation::Relu),
            (2, 24, 24, 3, 6, 5, 1, 1, p(0, 0, 0, 0), Activation::Relu6),
        ] {
            let x = Tensor::randn(0f32, 1.0, (n, cin, h, w), &dev).unwrap();
            let wt = Tensor::randn(0f32, 1.0, (cout, cin / groups, k, k), &dev).unwrap();
            let b = Tensor::randn(0f32, 1.0, cout, &dev).unwrap();
            let conv = GemmConv::pack_grouped(&wt, Some(&b), s, groups, isa).unwrap();
            let reference = conv2d_reference(&x, &wt, s, pad, groups).unwrap();
            let res = Tensor::randn(0f32, 1.0, reference.dims(), &dev).unwrap();
            let case = format!("{isa} {cin}->{cout}/{groups} k{k} s{s} {act:?}");
            let against = Reference {
                conv: &reference,
                bias: &b,
                residual: &res,
            };
            check_epilogues(&conv, &x, pad, act, None, &against, 1e-4, &case);
        }
    }
}

#[test]
fn conv_writes_into_a_wider_buffer() {
    let dev = Device::Cpu;
    let x = Tensor::randn(0f32, 1.0, (2, 4, 6, 6), &dev).unwrap();
    let wt = Tensor::randn(0f32, 1.0, (3, 4, 3, 3), &dev).unwrap();
    let conv = GemmConv::pack(&wt, None, 1, Isa::best()).unwrap();
    let xa = Act::from_nchw(&x).unwrap();
    let pad = Pad2d::uniform(1);
    let alone = conv
        .forward(xa.view(), pad, None, Activation::Identity, None)
        .unwrap();
    let mut wide = vec![7f32; xa.rows() * 5];
    conv.forward_into(xa.view(), pad, None, &mut wide, 5, Activation::Identity)
        .unwrap();
    for (row, expect) in wide.chunks(5).zip(alone.data.chunks(3)) {
        assert_eq!(&row[..3], expect);
        assert_eq!(&row[3..], &[7.0, 7.0], "columns past cout are left alone");
    }
}

/// `relu(x[:, ..c] * scale + shift)` per channel, in candle.
fn reference_prologue(x: &Tensor, scale: &[f32], shift: &[f32]) -> Tensor {
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

#[test]
fn conv_reads_a_channel_prefix_through_a_prologue() {
    let dev = Device::Cpu;
    let x = Tensor::randn(0f32, 1.0, (3, 5, 12, 12), &dev).unwrap();
    let xa = Act::from_nchw(&x).unwrap();
    let (scale, shift) = ([0.5f32, -1.0, 2.0], [0.1f32, 0.2, -0.3]);
    let pro = Prologue {
        scale: &scale,
        shift: &shift,
    };
    let input = reference_prologue(&x, &scale, &shift);
    for (k, pad, isa) in levels().into_iter().flat_map(|i| [(1, 0, i), (3, 1, i)]) {
        let wt = Tensor::randn(0f32, 1.0, (16, 3, k, k), &dev).unwrap();
        let conv = GemmConv::pack(&wt, None, 1, isa).unwrap();
        let pad = Pad2d::uniform(pad);
        let ours = conv
            .forward(xa.prefix(3), pad, Some(pro), Activation::Identity, None)
            .unwrap()
            .to_nchw(&dev)
            .unwrap();
        let expected = conv2d_reference(&input, &wt, 1, pad, 1).unwrap();
        let diff = max_abs_diff(&ours, &expected);
        assert!(diff < 1e-4, "{isa} k{k}: {diff}");
    }
}

#[test]
fn winograd_matches_candle() {
    for isa in levels() {
        for form in [Algorithm::Winograd2, Algorithm::Winograd4] {
            winograd_matches_candle_at(isa, form);
        }
    }
}

fn winograd_matches_candle_at(isa: Isa, form: Algorithm) {
    let dev = Device::Cpu;
    // Enough tiles for blocks of tiles on every thread (64 2x2 tiles or 16 4x4 ones per
    // block; 25 and 9 per 10x9 image), and too few for that.
    let many = (32 * rayon::current_num_threads()).div_ceil(9) + 1;
    // A prologue for up to 64 channels.
    let scale: Vec<f32> = [0.5f32, -1.0, 2.0, 0.7, 1.5].repeat(13);
    let shift: Vec<f32> = [0.1f32, 0.2, -0.3, 0.0, 0.4].repeat(13);
    for (n, cin, cout, h, w, pad, act) in [
        (many, 5, 12, 10, 9, p(1, 1, 1, 1), Activation::Relu),
        (1, 5, 40, 7, 7, p(1, 1, 1, 1), Activation::Identity),
        (2, 5, 3, 6, 11, p(0, 1, 2, 0), Activation::Relu6),
        (1, 5, 8, 3, 3, p(0, 0, 0, 0), Activation::Relu),
        (many, 5, 32, 10, 9, p(1, 1, 1, 1), Activation::Relu6),
        (1, 5, 48, 7, 7, p(1, 1, 1, 1), Activation::Relu),
        // The activations with a pass of their own after the store.
        (many, 5, 16, 10, 9, p(1, 1, 1, 1), Activation::Silu),
        (1, 5, 40, 7, 7, p(1, 1, 1, 1), Activation::Gelu),
        (2, 5, 3, 6, 11, p(0, 1, 2, 0), Activation::HardSwish),
        // Sums of many terms, odd sizes, with tiles overhanging the edge.
        (many, 64, 48, 13, 11, p(1, 1, 1, 1), Activation::Identity),
    ] {
        let x = Tensor::randn(0f32, 1.0, (n, cin + 2, h, w), &dev).unwrap();
        let xa = Act::from_nchw(&x).unwrap();
        let wt = Tensor::randn(0f32, 1.0, (cout, cin, 3, 3), &dev).unwrap();
        let b = Tensor::randn(0f32, 1.0, cout, &dev).unwrap();
        let conv = GemmConv::pack(&wt, Some(&b), 1, isa).unwrap();
        for with_pro in [false, true] {
            let (input, pro) = prologue_input(&x, cin, with_pro, &scale, &shift);
            let reference = conv2d_reference(&input, &wt, 1, pad, 1).unwrap();
            let res = Tensor::randn(0f32, 1.0, reference.dims(), &dev).unwrap();
            let res_act = Act::from_nchw(&res).unwrap();
            let expected = reference_epilogue(reference.clone(), &b, Some(&res), act);
            let ours = conv
                .forward_using(xa.prefix(cin), pad, pro, act, Some(&res_act), Some(form))
                .unwrap()
                .to_nchw(&dev)
                .unwrap();
            // F(2x2): the 5-channel cases within 1e-4; the 64-channel one, whose outputs
            // reach ~100, within 2e-6 of its largest convolution output (7.1e-7 the worst of
            // 150 draws). F(4x4): [`F4_TOLERANCE`].
            let largest = largest(&reference);
            let tol = match (cin, form) {
                (_, Algorithm::Winograd4) => F4_TOLERANCE * largest,
                (..=5, _) => 1e-4,
                _ => 2e-6 * largest,
            };
            let diff = max_abs_diff(&ours, &expected);
            assert!(
                diff < tol,
                "{isa} {form:?} {n}x{cin}->{cout} {h}x{w} {pad:?}: {diff} (largest {largest})"
            );

            // Into every other column of a wider buffer: the same outputs as into a buffer
            // of its own (no residual), to the bit.
            let alone = conv
                .forward_using(xa.prefix(cin), pad, pro, act, None, Some(form))
                .unwrap();
            let mut wide = vec![7f32; alone.rows() * (cout + 1)];
            conv.forward_into_using(
                xa.prefix(cin),
                pad,
                pro,
                &mut wide,
                cout + 1,
                act,
                Some(form),
            )
            .unwrap();
            for (row, expect) in wide.chunks(cout + 1).zip(alone.data.chunks(cout)) {
                assert_eq!(&row[..cout], expect, "into a wider buffer");
                assert_eq!(row[cout], 7.0, "the column past cout is left alone");
            }
        }
    }
    // Anything but 3x3 stride 1 is refused rather than computed wrongly.
    let wt = Tensor::randn(0f32, 1.0, (4, 5, 3, 3), &dev).unwrap();
    let x = Act::from_nchw(&Tensor::randn(0f32, 1.0, (1, 5, 8, 8), &dev).unwrap()).unwrap();
    let strided = GemmConv::pack(&wt, None, 2, isa).unwrap();
    let pad = Pad2d::uniform(1);
    let id = Activation::Identity;
    let forced = Some(form);
    assert!(strided
        .forward_using(x.view(), pad, None, id, None, forced)
        .is_err());
}

/// F(4x4, 3x3) with a transformed weight too large to keep in L2 between blocks of tiles
/// (128 channels in and out: 2.4 MB) takes blocks of up to an equal share of the tiles per
/// thread: against candle, and the same to the bit on 1, 2 and 3 threads (blocks of 28, 25
/// and 17 of the 49 tiles of a 28x28 image), with a residual.
#[test]
fn winograd_blocks_for_a_large_weight_match_candle_on_any_threads() {
    let dev = Device::Cpu;
    let (cin, cout, h, w) = (128, 128, 28, 28);
    let x = Tensor::randn(0f32, 1.0, (1, cin, h, w), &dev).unwrap();
    let xa = Act::from_nchw(&x).unwrap();
    let wt = Tensor::randn(0f32, 0.1, (cout, cin, 3, 3), &dev).unwrap();
    let b = Tensor::randn(0f32, 1.0, cout, &dev).unwrap();
    let pad = Pad2d::uniform(1);
    let reference = conv2d_reference(&x, &wt, 1, pad, 1).unwrap();
    let res = Tensor::randn(0f32, 1.0, reference.dims(), &dev).unwrap();
    let res_act = Act::from_nchw(&res).unwrap();
    let expected = reference_epilogue(reference.clone(), &b, Some(&res), Activation::Relu);
    let tol = F4_TOLERANCE * largest(&reference);
    let form = Some(Algorithm::Winograd4);
    for isa in levels() {
        let conv = GemmConv::pack(&wt, Some(&b), 1, isa).unwrap();
        let mut first: Option<Act> = None;
        for pool in [threads(1), threads(2), threads(3)] {
            let n = pool.current_num_threads();
            let ours = pool
                .install(|| {
                    conv.forward_using(xa.view(), pad, None, Activation::Relu, Some(&res_act), form)
                })
                .unwrap();
            let diff = max_abs_diff(&ours.to_nchw(&dev).unwrap(), &expected);
            assert!(diff < tol, "{isa} {n} threads: {diff}");
            match &first {
                None => first = Some(ours),
                Some(one) => assert_same_bits(&ours, one, &format!("{isa}: {n} threads against 1")),
            }
        }
        let weight = conv.winograd[1].get().expect("made by the calls above");
        assert!(
            weight.len() * 4 > super::winograd::WEIGHT_KEPT_BYTES,
            "{isa}"
        );
    }
}

#[test]
fn winograd_form_follows_the_output_size_and_the_panel_kernel() {
    let dev = Device::Cpu;
    let wt = Tensor::randn(0f32, 1.0, (32, 8, 3, 3), &dev).unwrap();
    for isa in levels() {
        let conv = GemmConv::pack(&wt, None, 1, isa).unwrap();
        // Full-width AVX-512 products take F(4x4) from 28x28, every other kernel from 14x14.
        let avx512 = conv.panels == Some(Kernel::Avx512);
        for (side, expect) in [
            (7, Algorithm::Winograd2),
            (
                14,
                if avx512 {
                    Algorithm::Winograd2
                } else {
                    Algorithm::Winograd4
                },
            ),
            (28, Algorithm::Winograd4),
        ] {
            // Batch 1 and batch 3 choose alike: the choice never depends on the batch.
            for n in [1, 3] {
                let x =
                    Act::from_nchw(&Tensor::zeros((n, 8, side, side), DType::F32, &dev).unwrap())
                        .unwrap();
                let launch = conv
                    .launch(
                        x.view(),
                        Pad2d::uniform(1),
                        None,
                        Activation::Identity,
                        None,
                        None,
                    )
                    .unwrap();
                assert_eq!(
                    launch.choose(),
                    expect,
                    "{isa} ({:?} panels), {side}x{side}, batch {n}",
                    conv.panels
                );
            }
        }
    }
}

/// Only a layer whose output and residual outgrow L2 fetches rows ahead, and never into a
/// caller's strips, which stay in its cache.
#[test]
fn rows_are_fetched_ahead_for_large_outputs_only() {
    let wt = Tensor::randn(0f32, 1.0, (256, 64, 1, 1), &Device::Cpu).unwrap();
    let conv = GemmConv::pack(&wt, None, 1, Isa::best()).unwrap();
    let data = vec![0f32; 4 * 16 * 16 * 64];
    let residual = vec![0f32; 4 * 16 * 16 * 256];
    let view = |n: usize| View {
        data: &data,
        n,
        h: 16,
        w: 16,
        c: 64,
        stride: 64,
    };
    let fetches = |n: usize, residual: Option<&[f32]>| {
        let launch = conv.launch(
            view(n),
            Pad2d::uniform(0),
            None,
            Activation::Relu,
            residual.map(launch::Residual::Apart),
            None,
        );
        launch.unwrap().fetch_rows
    };
    // 512 rows of 256 channels: 512 KiB of output, and as much residual.
    assert!(!fetches(2, None));
    assert!(!fetches(2, Some(&residual[..512 * 256])));
    // Twice as many rows: 1 MiB of output, and as much residual.
    assert!(!fetches(4, None));
    assert!(fetches(4, Some(&residual)));
    let strips = conv
        .row_blocks(view(2), Pad2d::uniform(0), Activation::Relu)
        .unwrap();
    assert!(!strips.expect("a plain 1x1 convolution").0.fetch_rows);
}

/// A `k` in chunks adds a residual in registers with its first chunk, and the pass after the
/// product adds it after the bias: other bits. On AVX-512 the pass is taken for a wide
/// residual only when the output is over [`launch::RESIDUAL_IN_REGISTERS_BYTES_AVX512`], so
/// such a layer must take it at every size, or an image alone and in a batch that large
/// would differ.
#[test]
fn a_residual_over_chunks_of_k_does_not_depend_on_the_batch() {
    if Isa::best() < Isa::Avx512 {
        eprintln!("residual over chunks at avx512: not run, this CPU lacks it");
        return;
    }
    let dev = Device::Cpu;
    let (cin, cout, side) = (1030, 256, 4);
    let pixels = side * side;
    let images = launch::RESIDUAL_IN_REGISTERS_BYTES_AVX512 / (pixels * cout * 4) + 1;
    let x = Tensor::randn(0f32, 1.0, (images, cin, side, side), &dev).unwrap();
    let wt = Tensor::randn(0f32, 1.0, (cout, cin, 1, 1), &dev).unwrap();
    let b = Tensor::randn(0f32, 1.0, cout, &dev).unwrap();
    let res = Tensor::randn(0f32, 1.0, (images, cout, side, side), &dev).unwrap();
    let conv = GemmConv::pack(&wt, Some(&b), 1, Isa::Avx512).unwrap();
    let run = |n: usize| {
        let x = Act::from_nchw(&x.narrow(0, 0, n).unwrap()).unwrap();
        let res = Act::from_nchw(&res.narrow(0, 0, n).unwrap()).unwrap();
        let pad = Pad2d::uniform(0);
        conv.forward(x.view(), pad, None, Activation::Relu, Some(&res))
            .unwrap()
    };
    let (all, one) = (run(images), run(1));
    assert!(
        same_bits(&all.data[..pixels * cout], &one.data),
        "image 0 alone and in a batch of {images}"
    );
}
