//! timm's EfficientNet/MobileNet builder (`_efficientnet_builder.py`, `_efficientnet_blocks.py`),
//! shared by EfficientNet-B and -Lite, MobileNetV3 and MobileNetV4: an architecture is a
//! list of stages written in timm's block strings (`ir_r2_k3_s2_e6_c24_se0.25`: inverted
//! residual, 2 repeats, 3x3 depthwise, stride 2, expansion 6, 24 channels, squeeze-excite
//! 0.25), decoded and scaled exactly as timm does ([`decode_arch`], [`Config::resolve`]), then
//! loaded under timm's module names: `conv_stem`/`bn1`, `blocks.{stage}.{i}.*`, and a head.
//!
//! Block types (`*` = activation, `[se]` = squeeze-excite where the string asks for it;
//! none of them activates after its last BatchNorm):
//! - `ds` depthwise-separable: `conv_dw`/`bn1`* [se] `conv_pw`/`bn2`
//! - `ir` inverted residual: `conv_pw`/`bn1`* `conv_dw`/`bn2`* [se] `conv_pwl`/`bn3`
//! - `er` edge residual (fused): `conv_exp`/`bn1`* [se] `conv_pwl`/`bn2`
//! - `cn` convolution: `conv`/`bn1`*
//! - `uir` universal inverted residual: [`dw_start`] `pw_exp`* [`dw_mid`*] `pw_proj`, each
//!   `.conv`/`.bn`; the depthwise stages exist where the string's `a`/`k` kernel is non-zero.
//!
//! A block adds its input when its stride is 1 and its channels do not change (never for
//! `cn`, nor where the string says `noskip`).

use candle_core::{Device, Module, Result, Tensor};
use candle_nn::VarBuilder;

use super::kernels::math::Gate;
use super::kernels::{self, Act, Activation};
use super::layers::{
    activate, global_avg_pool, Classifier, Conv2d, ConvBn, ConvSpec, LoadOptions, Padding,
    SqueezeExcite,
};

/// The kinds of block timm's strings name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    DepthwiseSeparable,
    InvertedResidual,
    EdgeResidual,
    ConvBnAct,
    Universal,
}

/// One decoded block string (timm's `_decode_block_str`), before channel rounding.
#[derive(Debug, Clone, PartialEq)]
pub struct BlockDef {
    pub kind: Kind,
    /// The depthwise kernel (`ds`, `ir`), the expansion kernel (`er`), the convolution's
    /// (`cn`), or the middle depthwise kernel of `uir` (0: none).
    pub kernel: usize,
    /// `uir` only: the kernel of the depthwise convolution before the expansion (0: none).
    pub start_kernel: usize,
    pub stride: usize,
    pub exp_ratio: f64,
    pub out_channels: usize,
    pub se_ratio: f64,
    /// The block's own activation (`nre`, `nr6`, `nhs`, `nsw`); the model's where absent.
    pub act: Option<Activation>,
    pub noskip: bool,
}

/// Decode one block string and its repeat count.
pub fn decode(block: &str) -> std::result::Result<(BlockDef, usize), String> {
    let mut ops = block.split('_');
    let kind = match ops.next() {
        Some("ds") => Kind::DepthwiseSeparable,
        Some("ir") => Kind::InvertedResidual,
        Some("er") => Kind::EdgeResidual,
        Some("cn") => Kind::ConvBnAct,
        Some("uir") => Kind::Universal,
        other => return Err(format!("{block}: unknown block type {other:?}")),
    };
    let mut def = BlockDef {
        kind,
        kernel: 0,
        start_kernel: 0,
        stride: 1,
        exp_ratio: 1.0,
        out_channels: 0,
        se_ratio: 0.0,
        act: None,
        noskip: false,
    };
    let mut repeats = 1;
    for op in ops {
        if op == "noskip" {
            def.noskip = true;
            continue;
        }
        if let Some(name) = op.strip_prefix('n') {
            def.act = Some(match name {
                "re" => Activation::Relu,
                "r6" => Activation::Relu6,
                "hs" => Activation::HardSwish,
                "sw" => Activation::Silu,
                _ => return Err(format!("{block}: unknown activation {name}")),
            });
            continue;
        }
        let split = op
            .find(|c: char| c.is_ascii_digit())
            .ok_or_else(|| format!("{block}: option {op} has no value"))?;
        let (key, value) = op.split_at(split);
        let int = || {
            value
                .parse::<usize>()
                .map_err(|_| format!("{block}: {op} is not an integer option"))
        };
        let float = || {
            value
                .parse::<f64>()
                .map_err(|_| format!("{block}: {op} is not a number"))
        };
        match key {
            "r" => repeats = int()?,
            "k" => def.kernel = int()?,
            "a" => def.start_kernel = int()?,
            "s" => def.stride = int()?,
            "e" => def.exp_ratio = float()?,
            "c" => def.out_channels = int()?,
            "se" => def.se_ratio = float()?,
            _ => return Err(format!("{block}: unknown option {op}")),
        }
    }
    Ok((def, repeats))
}

/// timm's `decode_arch_def`: every stage's block strings decoded and their repeats scaled
/// by `depth_multiplier` (rounded up per stage, spread over the stage's definitions from the
/// last one back; the first and last stages kept when `fix_first_last`). Only a stage's
/// first block keeps its stride.
pub fn decode_arch(
    arch: &[&[&str]],
    depth_multiplier: f64,
    fix_first_last: bool,
) -> std::result::Result<Vec<Vec<BlockDef>>, String> {
    let last = arch.len().saturating_sub(1);
    arch.iter()
        .enumerate()
        .map(|(i, stage)| {
            let decoded = stage
                .iter()
                .map(|s| decode(s))
                .collect::<std::result::Result<Vec<_>, _>>()?;
            let multiplier = if fix_first_last && (i == 0 || i == last) {
                1.0
            } else {
                depth_multiplier
            };
            let repeats: Vec<usize> = decoded.iter().map(|(_, r)| *r).collect();
            let mut total = repeats.iter().sum::<usize>() as f64;
            let mut scaled_total = (total * multiplier).ceil();
            let mut scaled = vec![0; repeats.len()];
            for (j, &r) in repeats.iter().enumerate().rev() {
                let rs = (r as f64 / total * scaled_total).round_ties_even().max(1.0);
                scaled[j] = rs as usize;
                total -= r as f64;
                scaled_total -= rs;
            }
            let mut blocks = Vec::new();
            for ((def, _), n) in decoded.into_iter().zip(scaled) {
                blocks.extend(std::iter::repeat_n(def, n));
            }
            for b in blocks.iter_mut().skip(1) {
                b.stride = 1;
            }
            Ok(blocks)
        })
        .collect()
}

/// timm's `make_divisible(v, 8)`: the nearest multiple of 8, at least 8, and never more
/// than 10% below `v`.
pub fn make_divisible(v: f64) -> usize {
    let rounded = (((v + 4.0) as usize) / 8 * 8).max(8);
    if (rounded as f64) < 0.9 * v {
        rounded + 8
    } else {
        rounded
    }
}

/// How the squeeze-excite modules of a network are built.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeStyle {
    /// EfficientNet: reduced to `round(block input * ratio)` channels, the block's
    /// activation inside, sigmoid gate.
    FromInput,
    /// MobileNetV3: reduced to `make_divisible(expanded * ratio)` channels, ReLU inside,
    /// hard-sigmoid gate.
    FromExpanded,
}

/// What follows the last block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeadKind {
    /// EfficientNet: `conv_head` (1x1, no bias) + `bn2` + activation, then the pool.
    ConvBnAct,
    /// MobileNetV3: the pool, then `conv_head` (1x1 with bias) + activation.
    PoolConvAct,
    /// MobileNetV4: the pool, then `conv_head` (1x1, no bias) + `norm_head` + activation.
    PoolConvBnAct,
}

/// A network of the family: its stage strings and everything timm's generator sets.
#[derive(Debug, Clone, Copy)]
pub struct Config {
    pub arch: &'static [&'static [&'static str]],
    pub channel_multiplier: f64,
    pub depth_multiplier: f64,
    pub fix_first_last: bool,
    pub stem: usize,
    /// Keep the stem's width when scaling channels (EfficientNet-Lite).
    pub fix_stem: bool,
    /// Width of the head convolution, scaled like the others unless `fix_head`.
    pub head: usize,
    pub fix_head: bool,
    pub head_kind: HeadKind,
    pub act: Activation,
    pub se: SeStyle,
    /// `tf_` ports: TensorFlow "SAME" padding for stride-2 convolutions.
    pub tf_padding: bool,
    pub bn_eps: f64,
}

/// A block with every width worked out.
#[derive(Debug, Clone, PartialEq)]
pub struct BlockShape {
    pub kind: Kind,
    pub in_channels: usize,
    /// Expanded width (`ir`, `er`, `uir`); the input width for `ds`.
    pub mid_channels: usize,
    pub out_channels: usize,
    pub kernel: usize,
    pub start_kernel: usize,
    pub stride: usize,
    pub act: Activation,
    /// Squeeze-excite: reduced channels.
    pub se_reduced: Option<usize>,
    pub residual: bool,
}

impl Config {
    /// timm's `round_channels(c, multiplier)`.
    fn round_channels(&self, c: usize) -> usize {
        make_divisible(c as f64 * self.channel_multiplier)
    }

    pub fn stem_channels(&self) -> usize {
        if self.fix_stem {
            self.stem
        } else {
            self.round_channels(self.stem)
        }
    }

    pub fn head_channels(&self) -> usize {
        if self.fix_head {
            self.head
        } else {
            self.round_channels(self.head)
        }
    }

    /// Every block's shape, stage by stage, as timm's builder makes them.
    pub fn resolve(&self) -> Vec<Vec<BlockShape>> {
        let stages = decode_arch(self.arch, self.depth_multiplier, self.fix_first_last)
            .expect("the built-in architecture strings decode");
        let mut in_ch = self.stem_channels();
        stages
            .into_iter()
            .map(|stage| {
                stage
                    .into_iter()
                    .map(|def| {
                        let out = self.round_channels(def.out_channels);
                        let mid = match def.kind {
                            Kind::DepthwiseSeparable | Kind::ConvBnAct => in_ch,
                            _ => make_divisible(in_ch as f64 * def.exp_ratio),
                        };
                        let se_reduced = (def.se_ratio > 0.0).then(|| match self.se {
                            // timm divides the ratio by the expansion and applies it to the
                            // expanded width.
                            SeStyle::FromInput => (mid as f64 * (def.se_ratio / def.exp_ratio))
                                .round_ties_even()
                                as usize,
                            SeStyle::FromExpanded => make_divisible(mid as f64 * def.se_ratio),
                        });
                        let residual = def.kind != Kind::ConvBnAct
                            && !def.noskip
                            && def.stride == 1
                            && in_ch == out;
                        let shape = BlockShape {
                            kind: def.kind,
                            in_channels: in_ch,
                            mid_channels: mid,
                            out_channels: out,
                            kernel: def.kernel,
                            start_kernel: def.start_kernel,
                            stride: def.stride,
                            act: def.act.unwrap_or(self.act),
                            se_reduced,
                            residual,
                        };
                        in_ch = out;
                        shape
                    })
                    .collect()
            })
            .collect()
    }

    fn padding(&self, kernel: usize, stride: usize) -> Padding {
        // timm's 'same' padding is static (symmetric) where it can be: stride 1, odd kernel.
        if self.tf_padding && stride > 1 {
            Padding::TfSame
        } else {
            Padding::Symmetric(kernel / 2)
        }
    }

    fn se_act_gate(&self, block_act: Activation) -> (Activation, Gate) {
        match self.se {
            SeStyle::FromInput => (block_act, Gate::Sigmoid),
            SeStyle::FromExpanded => (Activation::Relu, Gate::HardSigmoid),
        }
    }
}

/// One convolution + BatchNorm stage of a block and the activation after it.
#[derive(Debug, Clone)]
struct Stage {
    conv: ConvBn,
    act: Activation,
}

impl Stage {
    #[allow(clippy::too_many_arguments)]
    fn load(
        vb: &VarBuilder,
        conv: &str,
        bn: &str,
        spec: ConvSpec,
        act: Activation,
        cfg: &Config,
        opts: LoadOptions,
    ) -> Result<Self> {
        let spec = spec.padding(cfg.padding(spec.kernel, spec.stride));
        Ok(Self {
            conv: ConvBn::load(vb.pp(conv), vb.pp(bn), spec, cfg.bn_eps, opts)?,
            act,
        })
    }

    fn forward_nhwc(&self, x: &Act, residual: Option<&Act>) -> Result<Act> {
        self.conv.forward_nhwc(x, self.act, residual)
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        activate(&self.conv.forward(x)?, self.act)
    }
}

/// Images run through the NHWC kernels together, at most (see `MobileNet::forward`).
const BATCH_CHUNK: usize = 16;

/// Any block of the family: its stages in order, the squeeze-excite after `se_after`.
#[derive(Debug, Clone)]
pub struct Block {
    stages: Vec<Stage>,
    se: Option<(usize, SqueezeExcite)>,
    residual: bool,
}

impl Block {
    pub fn load(vb: VarBuilder, b: &BlockShape, cfg: &Config, opts: LoadOptions) -> Result<Self> {
        let (inp, mid, out, act) = (b.in_channels, b.mid_channels, b.out_channels, b.act);
        let id = Activation::Identity;
        let dw = |c: usize, k: usize, s: usize| ConvSpec::new(c, c, k).stride(s).groups(c);
        let pw = |i: usize, o: usize| ConvSpec::new(i, o, 1);
        let stage = |conv, bn, spec, act| Stage::load(&vb, conv, bn, spec, act, cfg, opts);
        // (stages, index of the stage the squeeze-excite follows)
        let (stages, se_after) = match b.kind {
            Kind::DepthwiseSeparable => (
                vec![
                    stage("conv_dw", "bn1", dw(inp, b.kernel, b.stride), act)?,
                    stage("conv_pw", "bn2", pw(inp, out), id)?,
                ],
                0,
            ),
            Kind::InvertedResidual => (
                vec![
                    stage("conv_pw", "bn1", pw(inp, mid), act)?,
                    stage("conv_dw", "bn2", dw(mid, b.kernel, b.stride), act)?,
                    stage("conv_pwl", "bn3", pw(mid, out), id)?,
                ],
                1,
            ),
            Kind::EdgeResidual => (
                vec![
                    stage(
                        "conv_exp",
                        "bn1",
                        ConvSpec::new(inp, mid, b.kernel).stride(b.stride),
                        act,
                    )?,
                    stage("conv_pwl", "bn2", pw(mid, out), id)?,
                ],
                0,
            ),
            Kind::ConvBnAct => (
                vec![stage(
                    "conv",
                    "bn1",
                    ConvSpec::new(inp, out, b.kernel).stride(b.stride),
                    act,
                )?],
                0,
            ),
            Kind::Universal => {
                let mut stages = Vec::new();
                // The stride sits on the middle depthwise convolution where there is one.
                let start_stride = if b.kernel > 0 { 1 } else { b.stride };
                if b.start_kernel > 0 {
                    let spec = dw(inp, b.start_kernel, start_stride);
                    stages.push(stage("dw_start.conv", "dw_start.bn", spec, id)?);
                }
                stages.push(stage("pw_exp.conv", "pw_exp.bn", pw(inp, mid), act)?);
                if b.kernel > 0 {
                    let spec = dw(mid, b.kernel, b.stride);
                    stages.push(stage("dw_mid.conv", "dw_mid.bn", spec, act)?);
                }
                stages.push(stage("pw_proj.conv", "pw_proj.bn", pw(mid, out), id)?);
                let n = stages.len();
                (stages, n - 2)
            }
        };
        let se = match b.se_reduced {
            Some(reduced) => {
                let (se_act, gate) = cfg.se_act_gate(act);
                let channels = match b.kind {
                    Kind::DepthwiseSeparable => inp,
                    _ => mid,
                };
                let se = SqueezeExcite::load(
                    vb.pp("se"),
                    ("conv_reduce", "conv_expand"),
                    channels,
                    reduced,
                    se_act,
                    gate,
                    opts,
                )?;
                Some((se_after, se))
            }
            None => None,
        };
        Ok(Self {
            stages,
            se,
            residual: b.residual,
        })
    }

    fn forward_nhwc(&self, x: &Act) -> Result<Act> {
        self.forward_nhwc_after(None, x)
    }

    /// `stem` (where given) and then this block, on `x`. A dense convolution and the
    /// depthwise one after it run together where that pays (`kernels::fused`): an expansion
    /// and its depthwise layer, or the stem and a first block's depthwise layer. The last
    /// stage adds the residual, and a squeeze-excite sits between two stages it follows.
    fn forward_nhwc_after(&self, stem: Option<&Stage>, x: &Act) -> Result<Act> {
        let stem_out;
        let (stem, x) = match stem {
            // The residual adds the stem's output: that is made whole first.
            Some(stem) if self.residual => {
                stem_out = stem.forward_nhwc(x, None)?;
                (None, &stem_out)
            }
            stem => (stem, x),
        };
        let stages: Vec<&Stage> = stem.into_iter().chain(&self.stages).collect();
        let skipped = stages.len() - self.stages.len();
        let se = self.se.as_ref().map(|(after, se)| (after + skipped, se));
        let last = stages.len() - 1;
        let mut y: Option<Act> = None;
        let mut i = 0;
        while i <= last {
            let (stage, input) = (stages[i], y.as_ref().unwrap_or(x));
            let fused = match stages.get(i + 1) {
                Some(next) if i + 1 < last && se.is_none_or(|(after, _)| after != i) => stage
                    .conv
                    .forward_nhwc_then_depthwise(input, stage.act, &next.conv, next.act)?,
                _ => None,
            };
            let mut out = match fused {
                Some(out) => {
                    i += 1;
                    out
                }
                None => {
                    let residual = (i == last && self.residual).then_some(x);
                    stage.forward_nhwc(input, residual)?
                }
            };
            if let Some((after, se)) = se {
                if after == i {
                    se.forward_nhwc(&mut out)?;
                }
            }
            y = Some(out);
            i += 1;
        }
        Ok(y.expect("a block has stages"))
    }

    fn has_nhwc_kernels(&self) -> bool {
        self.stages.iter().all(|s| s.conv.has_nhwc_kernel())
    }
}

impl Module for Block {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut y = x.clone();
        for (i, stage) in self.stages.iter().enumerate() {
            y = stage.forward(&y)?;
            if let Some((after, se)) = &self.se {
                if *after == i {
                    y = se.forward(&y)?;
                }
            }
        }
        if self.residual {
            y = (y + x)?;
        }
        Ok(y)
    }
}

/// The layers after the last block, up to the classifier's input.
#[derive(Debug, Clone)]
enum Head {
    /// Convolution (+ BatchNorm) and activation before the pool.
    Before(ConvBn, Activation),
    /// Pool, then a 1x1 convolution with bias and the activation.
    AfterWithBias(Conv2d, Activation),
    /// Pool, then a 1x1 convolution + BatchNorm and the activation.
    AfterWithNorm(ConvBn, Activation),
}

/// A network of the family.
#[derive(Debug, Clone)]
pub struct MobileNet {
    stem: Stage,
    blocks: Vec<Block>,
    /// The stem and this many blocks (those whose output is at most 16x smaller than the
    /// input) run one image at a time on the CPU kernels, an image a thread
    /// ([`Act::in_chunks`]); the rest on the whole chunk of [`BATCH_CHUNK`] images that
    /// `forward` gives, as ResNet's and DenseNet's first stages do. Their expanded
    /// activations (96 channels at 112x112 in EfficientNet-Lite0: 4.8 MB an image, 77 MB
    /// at batch 16; 672 at 14x14, 527 KB an image) then stay in the cache.
    ///
    /// Up to stride 8 at first, when an image's layers were still split between the cores:
    /// tf_efficientnet_lite0 at batch 16, `classify bench -n 8`, 5 interleaved rounds on an
    /// AMD EPYC Zen 4 (2 cores, AVX-512), medians: whole chunks 157.1 img/s; per image the
    /// first 3 blocks 171.3, 5 (to stride 8) 170.6, 8 174.1, all 16 160.3. Since each core
    /// takes an image of its own, up to stride 16 gains. Intel Xeon (Sapphire Rapids class),
    /// 2 threads, one binary with an environment switch, interleaved rounds, medians,
    /// images/s, stride 8 -> 16:
    /// - AVX-512: Lite0 batch 16 259.9 -> 285.4 (6 rounds; every block per image 296.3 in
    ///   another run against 292.8 for stride 16), batch 8 259.3 -> 276.5 (8 rounds), batch
    ///   4 261.7 -> 267.9, batch 2 260.5 -> 265.3; at batch 16 (4 rounds)
    ///   efficientnet_b0 167.6 -> 175.1, mobilenetv3_large_100 359.5 -> 381.5,
    ///   mobilenetv4_conv_medium 117.2 -> 118.5, tf_efficientnet_lite4 28.5 -> 28.8.
    /// - AVX2 forced: Lite0 batch 16 189.8 -> 197.0 (5 rounds; every block 195.4).
    ///
    /// A batch of one runs the same code either way.
    per_image_blocks: usize,
    head: Head,
    classifier: Classifier,
}

impl MobileNet {
    pub fn load(
        vb: VarBuilder,
        cfg: &Config,
        num_classes: usize,
        opts: LoadOptions,
    ) -> Result<Self> {
        let stem_ch = cfg.stem_channels();
        let stem = Stage::load(
            &vb,
            "conv_stem",
            "bn1",
            ConvSpec::new(3, stem_ch, 3).stride(2),
            cfg.act,
            cfg,
            opts,
        )?;
        let mut blocks = Vec::new();
        let mut last = stem_ch;
        let (mut stride, mut per_image_blocks) = (2, 0);
        for (s, stage) in cfg.resolve().iter().enumerate() {
            for (i, b) in stage.iter().enumerate() {
                blocks.push(Block::load(vb.pp("blocks").pp(s).pp(i), b, cfg, opts)?);
                last = b.out_channels;
                stride *= b.stride;
                if stride <= 16 {
                    per_image_blocks = blocks.len();
                }
            }
        }
        let head_ch = cfg.head_channels();
        let spec = ConvSpec::new(last, head_ch, 1);
        let head = match cfg.head_kind {
            HeadKind::ConvBnAct => Head::Before(
                ConvBn::load(vb.pp("conv_head"), vb.pp("bn2"), spec, cfg.bn_eps, opts)?,
                cfg.act,
            ),
            HeadKind::PoolConvAct => {
                Head::AfterWithBias(Conv2d::load(vb.pp("conv_head"), spec, true, opts)?, cfg.act)
            }
            HeadKind::PoolConvBnAct => Head::AfterWithNorm(
                ConvBn::load(
                    vb.pp("conv_head"),
                    vb.pp("norm_head"),
                    spec,
                    cfg.bn_eps,
                    opts,
                )?,
                cfg.act,
            ),
        };
        let classifier = Classifier::load(vb.pp("classifier"), head_ch, num_classes, opts)?;
        Ok(Self {
            stem,
            blocks,
            per_image_blocks,
            head,
            classifier,
        })
    }

    fn has_nhwc_kernels(&self) -> bool {
        self.stem.conv.has_nhwc_kernel()
            && self.blocks.iter().all(Block::has_nhwc_kernels)
            && match &self.head {
                Head::Before(conv, _) | Head::AfterWithNorm(conv, _) => conv.has_nhwc_kernel(),
                Head::AfterWithBias(conv, _) => conv.has_nhwc_kernel(),
            }
    }

    fn forward_nhwc(&self, x: &Tensor) -> Result<Tensor> {
        let (early, late) = self.blocks.split_at(self.per_image_blocks);
        let mut x = Act::from_nchw(x)?.in_chunks(1, |x| {
            let Some((first, rest)) = early.split_first() else {
                return self.stem.forward_nhwc(x, None);
            };
            let mut x = first.forward_nhwc_after(Some(&self.stem), x)?;
            for block in rest {
                x = block.forward_nhwc(&x)?;
            }
            Ok(x)
        })?;
        for block in late {
            x = block.forward_nhwc(&x)?;
        }
        let pooled = |x: &Act| Act {
            n: x.n,
            h: 1,
            w: 1,
            c: x.c,
            data: x.channel_means(None),
        };
        let features = match &self.head {
            Head::Before(conv, act) => conv
                .forward_nhwc(&x, *act, None)?
                .global_avg_pool(None, &Device::Cpu)?,
            Head::AfterWithBias(conv, act) => {
                let y = conv.forward_nhwc(&pooled(&x), *act, None)?;
                Tensor::from_vec(y.data, (y.n, y.c), &Device::Cpu)?
            }
            Head::AfterWithNorm(conv, act) => {
                let y = conv.forward_nhwc(&pooled(&x), *act, None)?;
                Tensor::from_vec(y.data, (y.n, y.c), &Device::Cpu)?
            }
        };
        self.classifier.forward(&features)
    }
}

impl Module for MobileNet {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if kernels::fast_path_for(x) && self.has_nhwc_kernels() {
            // At most BATCH_CHUNK images at a time. The early blocks run one image at a
            // time anyway (`per_image_blocks`); the chunk is what the late blocks see, where
            // the weights are large against the activations (14x14x672 is 527 KB an image)
            // and more images a pass read them fewer times. A cap keeps a large batch's
            // activations from outgrowing the caches. Each image's result does not depend on
            // its batch, so this is exact. Batch 16, chunks of 4 against 16, `bench/ab.sh`,
            // medians of 6-8 interleaved rounds, AMD EPYC Zen 4 (2 cores, AVX-512):
            // tf_efficientnet_lite0 152.5 / 163.1 images/s (the VM's slow state; 240 / 242
            // in its fast one), mobilenetv3_large_100 233.1 / 263.9, efficientnet_b0 145.0 /
            // 155.8.
            let n = x.dim(0)?;
            if n <= BATCH_CHUNK {
                return self.forward_nhwc(x);
            }
            let chunks = (0..n)
                .step_by(BATCH_CHUNK)
                .map(|i| self.forward_nhwc(&x.narrow(0, i, BATCH_CHUNK.min(n - i))?))
                .collect::<Result<Vec<_>>>()?;
            return Tensor::cat(&chunks, 0);
        }
        let mut x = self.stem.forward(x)?;
        for block in &self.blocks {
            x = block.forward(&x)?;
        }
        let features = match &self.head {
            Head::Before(conv, act) => global_avg_pool(&activate(&conv.forward(&x)?, *act)?)?,
            Head::AfterWithBias(conv, act) => {
                let p = x.mean_keepdim(3)?.mean_keepdim(2)?;
                activate(&conv.forward(&p)?, *act)?.flatten_from(1)?
            }
            Head::AfterWithNorm(conv, act) => {
                let p = x.mean_keepdim(3)?.mean_keepdim(2)?;
                activate(&conv.forward(&p)?, *act)?.flatten_from(1)?
            }
        };
        self.classifier.forward(&features)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_strings_decode_as_timm_does() {
        let (d, r) = decode("ir_r3_k5_s2_e6_c40_se0.25_nre").unwrap();
        assert_eq!(r, 3);
        assert_eq!(
            (d.kind, d.kernel, d.stride, d.exp_ratio, d.out_channels),
            (Kind::InvertedResidual, 5, 2, 6.0, 40)
        );
        assert_eq!((d.se_ratio, d.act), (0.25, Some(Activation::Relu)));
        let (d, _) = decode("uir_r1_a3_k0_s1_e4_c160").unwrap();
        assert_eq!((d.kind, d.start_kernel, d.kernel), (Kind::Universal, 3, 0));
        let (d, _) = decode("ir_r1_k3_s1_e3.67_c24_noskip").unwrap();
        assert!(d.noskip && d.exp_ratio == 3.67);
        assert!(decode("xx_r1_k3").is_err());
        assert!(decode("ir_r1_q3_c8").is_err());
    }

    #[test]
    fn depth_scaling_spreads_repeats_as_timm_does() {
        // timm 1.0.31 `_scale_stage_depth`: 1+1+2 repeats at 1.2 -> ceil(4.8) = 5, given out
        // from the last definition back: round(2/4*5)=2 (ties to even), round(1/2*3)=2, 1.
        let arch: &[&[&str]] = &[
            &["cn_r1_k3_s2_c8"],
            &[
                "ir_r1_k3_s2_e2_c8",
                "ir_r1_k3_s1_e2_c16",
                "ir_r2_k3_s1_e2_c24",
            ],
        ];
        let stages = decode_arch(arch, 1.2, false).unwrap();
        let widths: Vec<usize> = stages[1].iter().map(|b| b.out_channels).collect();
        assert_eq!(widths, [8, 16, 16, 24, 24]);
        assert_eq!(
            stages[1].iter().map(|b| b.stride).collect::<Vec<_>>(),
            [2, 1, 1, 1, 1]
        );
        let fixed = decode_arch(arch, 1.2, true).unwrap();
        assert_eq!(fixed[1].len(), 4, "the last stage keeps its depth");
    }

    #[test]
    fn make_divisible_matches_timm() {
        for (v, expected) in [
            (19.2, 24),
            (18.0, 24),
            (123.2, 120),
            (44.8, 48),
            (88.08, 88),
            (4.0, 8),
        ] {
            assert_eq!(make_divisible(v), expected, "{v}");
        }
    }
}
