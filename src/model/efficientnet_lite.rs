//! EfficientNet-Lite0..4 (the mobile EfficientNet: no squeeze-excite, ReLU6 everywhere, a
//! fixed 32-channel stem and 1280-channel head), in timm's two variants:
//!
//! * `tf_efficientnet_lite*`: ported from TensorFlow. TensorFlow "SAME" padding (the odd
//!   pixel of a stride-2 convolution's padding goes to the bottom/right) and BatchNorm eps
//!   1e-3. The efficientnet_pytorch / efficientnet_lite_pytorch checkpoints are this variant.
//! * `efficientnet_lite*`: trained in PyTorch. Symmetric `k // 2` padding and eps 1e-5.
//!
//! The two share every weight shape, so a checkpoint alone cannot say which it is; running
//! one as the other shifts every logit (see `tests/fixtures/efficientnet_lite0/README.md`,
//! "ablations"). The variant therefore comes from the architecture name, or from a key layout
//! only one variant ships in ([`Config::variant_of`]).
//!
//! Lite1..4 scale Lite0's stages as timm's `_gen_efficientnet_lite` does: channels by
//! `round_channels(c * width)`, repeats by `ceil(r * depth)` except the first and last
//! stage, stem and head fixed.
//!
//! Module paths mirror timm's state dicts: `conv_stem`, `bn1`,
//! `blocks.{stage}.{block}.conv_dw/bn1/conv_pw/bn2` (stage 0, depthwise-separable) or
//! `conv_pw/bn1/conv_dw/bn2/conv_pwl/bn3` (inverted residual), `conv_head`, `bn2`,
//! `classifier`. Checkpoints in the efficientnet_pytorch spelling (`_conv_stem`,
//! `_blocks.{n}._depthwise_conv`, `_fc`, ...) are rewritten by [`canonical_key`].

use candle_core::{Device, Module, Result, Tensor};
use candle_nn::VarBuilder;

use super::kernels::{self, Act, Activation};
use super::layers::{global_avg_pool, relu6, Classifier, ConvBn, ConvSpec, LoadOptions, Padding};

const STEM_CHANNELS: usize = 32;
const HEAD_CHANNELS: usize = 1280;

/// One stage of blocks: `repeats` blocks, the first with `stride`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stage {
    pub repeats: usize,
    pub kernel: usize,
    pub stride: usize,
    pub expand_ratio: usize,
    pub out_channels: usize,
}

const fn stage(
    repeats: usize,
    kernel: usize,
    stride: usize,
    expand_ratio: usize,
    out_channels: usize,
) -> Stage {
    Stage {
        repeats,
        kernel,
        stride,
        expand_ratio,
        out_channels,
    }
}

/// Lite0's stages, which every other size scales.
const LITE0_STAGES: [Stage; 7] = [
    stage(1, 3, 1, 1, 16),
    stage(2, 3, 2, 6, 24),
    stage(2, 5, 2, 6, 40),
    stage(3, 3, 2, 6, 80),
    stage(3, 5, 1, 6, 112),
    stage(4, 5, 2, 6, 192),
    stage(1, 3, 1, 6, 320),
];

/// Which of timm's two implementations the weights were made for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    /// `tf_efficientnet_lite*`: TensorFlow "SAME" padding, BatchNorm eps 1e-3.
    TensorFlow,
    /// `efficientnet_lite*`: symmetric padding, BatchNorm eps 1e-5.
    PyTorch,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Config {
    /// 0..=4: Lite0 to Lite4.
    pub size: usize,
    pub variant: Variant,
}

pub const fn efficientnet_lite(size: usize, variant: Variant) -> Config {
    Config { size, variant }
}

/// timm's `make_divisible(c * width, 8)`: nearest multiple of 8, never more than 10% below.
fn round_channels(channels: usize, width: f64) -> usize {
    let v = channels as f64 * width;
    let rounded = (((v + 4.0) as usize) / 8 * 8).max(8);
    if (rounded as f64) < 0.9 * v {
        rounded + 8
    } else {
        rounded
    }
}

impl Config {
    /// (width, depth) multipliers from the EfficientNet-Lite reference.
    fn multipliers(&self) -> (f64, f64) {
        match self.size {
            0 => (1.0, 1.0),
            1 => (1.0, 1.1),
            2 => (1.1, 1.2),
            3 => (1.2, 1.4),
            _ => (1.4, 1.8),
        }
    }

    /// timm's architecture name.
    pub fn name(&self) -> &'static str {
        let names = match self.variant {
            Variant::TensorFlow => TF_NAMES,
            Variant::PyTorch => PYTORCH_NAMES,
        };
        names[self.size.min(4)]
    }

    /// The stages after width and depth scaling.
    pub fn stages(&self) -> Vec<Stage> {
        let (width, depth) = self.multipliers();
        let last = LITE0_STAGES.len() - 1;
        LITE0_STAGES
            .iter()
            .enumerate()
            .map(|(i, st)| Stage {
                repeats: if i == 0 || i == last {
                    st.repeats
                } else {
                    (st.repeats as f64 * depth).ceil() as usize
                },
                out_channels: round_channels(st.out_channels, width),
                ..*st
            })
            .collect()
    }

    pub fn num_features(&self) -> usize {
        HEAD_CHANNELS
    }

    fn bn_eps(&self) -> f64 {
        match self.variant {
            Variant::TensorFlow => 1e-3,
            Variant::PyTorch => 1e-5,
        }
    }

    fn padding(&self, kernel: usize) -> Padding {
        match self.variant {
            Variant::TensorFlow => Padding::TfSame,
            Variant::PyTorch => Padding::Symmetric(kernel / 2),
        }
    }

    /// The variant a checkpoint's key layout proves, if it proves one: the
    /// efficientnet_pytorch spelling (`_conv_stem.weight`, ...) exists only for the
    /// TensorFlow-ported weights.
    pub fn variant_of<'a>(mut keys: impl Iterator<Item = &'a str>) -> Option<Variant> {
        keys.any(|k| k.starts_with("_conv_stem.") || k.starts_with("_blocks."))
            .then_some(Variant::TensorFlow)
    }

    /// (stage, index within stage) of the n-th block counted across all stages.
    fn block_position(&self, mut n: usize) -> Option<(usize, usize)> {
        for (s, st) in self.stages().iter().enumerate() {
            if n < st.repeats {
                return Some((s, n));
            }
            n -= st.repeats;
        }
        None
    }
}

/// Rewrite an efficientnet_pytorch key to timm's spelling; timm keys pass through.
pub fn canonical_key(cfg: &Config, key: &str) -> String {
    let top = [
        ("_conv_stem.", "conv_stem."),
        ("_bn0.", "bn1."),
        ("_conv_head.", "conv_head."),
        ("_bn1.", "bn2."),
        ("_fc.", "classifier."),
    ];
    for (from, to) in top {
        if let Some(rest) = key.strip_prefix(from) {
            return format!("{to}{rest}");
        }
    }
    let Some(rest) = key.strip_prefix("_blocks.") else {
        return key.to_string();
    };
    let Some((n, rest)) = rest.split_once('.') else {
        return key.to_string();
    };
    let Some((s, b)) = n.parse().ok().and_then(|n| cfg.block_position(n)) else {
        return key.to_string();
    };
    // Stage 0 has no expansion, so its modules are numbered one lower in timm.
    let renames: &[(&str, &str)] = if s == 0 {
        &[
            ("_depthwise_conv.", "conv_dw."),
            ("_bn1.", "bn1."),
            ("_project_conv.", "conv_pw."),
            ("_bn2.", "bn2."),
        ]
    } else {
        &[
            ("_expand_conv.", "conv_pw."),
            ("_bn0.", "bn1."),
            ("_depthwise_conv.", "conv_dw."),
            ("_bn1.", "bn2."),
            ("_project_conv.", "conv_pwl."),
            ("_bn2.", "bn3."),
        ]
    };
    for (from, to) in renames {
        if let Some(param) = rest.strip_prefix(from) {
            return format!("blocks.{s}.{b}.{to}{param}");
        }
    }
    key.to_string()
}

#[derive(Debug, Clone)]
struct Block {
    /// 1x1 expansion (absent when the expand ratio is 1).
    expand: Option<ConvBn>,
    depthwise: ConvBn,
    project: ConvBn,
    residual: bool,
}

impl Block {
    fn load(
        vb: VarBuilder,
        cfg: &Config,
        in_ch: usize,
        st: &Stage,
        stride: usize,
        opts: LoadOptions,
    ) -> Result<Self> {
        let mid = in_ch * st.expand_ratio;
        let dw_spec = ConvSpec::new(mid, mid, st.kernel)
            .stride(stride)
            .groups(mid)
            .padding(cfg.padding(st.kernel));
        let eps = cfg.bn_eps();
        let block = if st.expand_ratio == 1 {
            Self {
                expand: None,
                depthwise: ConvBn::load(vb.pp("conv_dw"), vb.pp("bn1"), dw_spec, eps, opts)?,
                project: ConvBn::load(
                    vb.pp("conv_pw"),
                    vb.pp("bn2"),
                    ConvSpec::new(mid, st.out_channels, 1),
                    eps,
                    opts,
                )?,
                residual: false,
            }
        } else {
            Self {
                expand: Some(ConvBn::load(
                    vb.pp("conv_pw"),
                    vb.pp("bn1"),
                    ConvSpec::new(in_ch, mid, 1),
                    eps,
                    opts,
                )?),
                depthwise: ConvBn::load(vb.pp("conv_dw"), vb.pp("bn2"), dw_spec, eps, opts)?,
                project: ConvBn::load(
                    vb.pp("conv_pwl"),
                    vb.pp("bn3"),
                    ConvSpec::new(mid, st.out_channels, 1),
                    eps,
                    opts,
                )?,
                residual: false,
            }
        };
        Ok(Self {
            residual: stride == 1 && in_ch == st.out_channels,
            ..block
        })
    }
}

impl Block {
    fn forward_nhwc(&self, x: &Act) -> Result<Act> {
        let expanded = match &self.expand {
            Some(expand) => Some(expand.forward_nhwc(x, Activation::Relu6, None)?),
            None => None,
        };
        let y =
            self.depthwise
                .forward_nhwc(expanded.as_ref().unwrap_or(x), Activation::Relu6, None)?;
        let residual = self.residual.then_some(x);
        self.project
            .forward_nhwc(&y, Activation::Identity, residual)
    }
}

impl Module for Block {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut y = match &self.expand {
            Some(expand) => relu6(&expand.forward(x)?)?,
            None => x.clone(),
        };
        y = relu6(&self.depthwise.forward(&y)?)?;
        y = self.project.forward(&y)?;
        if self.residual {
            y = (y + x)?;
        }
        Ok(y)
    }
}

#[derive(Debug, Clone)]
pub struct EfficientNetLite {
    stem: ConvBn,
    blocks: Vec<Block>,
    head: ConvBn,
    classifier: Classifier,
}

impl EfficientNetLite {
    pub fn load(
        vb: VarBuilder,
        cfg: &Config,
        num_classes: usize,
        opts: LoadOptions,
    ) -> Result<Self> {
        let stem = ConvBn::load(
            vb.pp("conv_stem"),
            vb.pp("bn1"),
            ConvSpec::new(3, STEM_CHANNELS, 3)
                .stride(2)
                .padding(cfg.padding(3)),
            cfg.bn_eps(),
            opts,
        )?;
        let mut blocks = Vec::new();
        let mut in_ch = STEM_CHANNELS;
        for (s, st) in cfg.stages().iter().enumerate() {
            for b in 0..st.repeats {
                let stride = if b == 0 { st.stride } else { 1 };
                let vb_block = vb.pp("blocks").pp(s).pp(b);
                blocks.push(Block::load(vb_block, cfg, in_ch, st, stride, opts)?);
                in_ch = st.out_channels;
            }
        }
        let head = ConvBn::load(
            vb.pp("conv_head"),
            vb.pp("bn2"),
            ConvSpec::new(in_ch, HEAD_CHANNELS, 1),
            cfg.bn_eps(),
            opts,
        )?;
        let classifier = Classifier::load(vb.pp("classifier"), HEAD_CHANNELS, num_classes)?;
        Ok(Self {
            stem,
            blocks,
            head,
            classifier,
        })
    }
}

impl super::Family for Config {
    fn classifier_key(&self) -> &'static str {
        "classifier.weight"
    }

    fn canonical_key(&self, key: &str) -> String {
        canonical_key(self, key)
    }

    fn implied_by(&self, keys: &[&str]) -> Option<&'static str> {
        let variant = Config::variant_of(keys.iter().copied())?;
        Some(efficientnet_lite(self.size, variant).name())
    }

    fn build(
        &self,
        vb: VarBuilder,
        num_classes: usize,
        opts: LoadOptions,
    ) -> Result<super::Network> {
        Ok(super::Network::new(EfficientNetLite::load(
            vb,
            self,
            num_classes,
            opts,
        )?))
    }
}

const TF_NAMES: [&str; 5] = [
    "tf_efficientnet_lite0",
    "tf_efficientnet_lite1",
    "tf_efficientnet_lite2",
    "tf_efficientnet_lite3",
    "tf_efficientnet_lite4",
];
const PYTORCH_NAMES: [&str; 5] = [
    "efficientnet_lite0",
    "efficientnet_lite1",
    "efficientnet_lite2",
    "efficientnet_lite3",
    "efficientnet_lite4",
];

impl Module for EfficientNetLite {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if kernels::fast_path_for(x) && self.stem.has_nhwc_kernel() {
            let mut x = self
                .stem
                .forward_nhwc(&Act::from_nchw(x)?, Activation::Relu6, None)?;
            for block in &self.blocks {
                x = block.forward_nhwc(&x)?;
            }
            let x = self.head.forward_nhwc(&x, Activation::Relu6, None)?;
            return self
                .classifier
                .forward(&x.global_avg_pool(None, &Device::Cpu)?);
        }
        let mut x = relu6(&self.stem.forward(x)?)?;
        for block in &self.blocks {
            x = block.forward(&x)?;
        }
        let x = relu6(&self.head.forward(&x)?)?;
        self.classifier.forward(&global_avg_pool(&x)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn efficientnet_pytorch_keys_map_to_timm() {
        let cfg = efficientnet_lite(0, Variant::TensorFlow);
        let cases = [
            ("_conv_stem.weight", "conv_stem.weight"),
            ("_bn0.running_var", "bn1.running_var"),
            (
                "_blocks.0._depthwise_conv.weight",
                "blocks.0.0.conv_dw.weight",
            ),
            ("_blocks.0._bn1.bias", "blocks.0.0.bn1.bias"),
            (
                "_blocks.0._project_conv.weight",
                "blocks.0.0.conv_pw.weight",
            ),
            ("_blocks.0._bn2.weight", "blocks.0.0.bn2.weight"),
            ("_blocks.1._expand_conv.weight", "blocks.1.0.conv_pw.weight"),
            ("_blocks.2._bn0.weight", "blocks.1.1.bn1.weight"),
            (
                "_blocks.7._depthwise_conv.weight",
                "blocks.3.2.conv_dw.weight",
            ),
            (
                "_blocks.14._bn1.running_mean",
                "blocks.5.3.bn2.running_mean",
            ),
            (
                "_blocks.15._project_conv.weight",
                "blocks.6.0.conv_pwl.weight",
            ),
            ("_blocks.15._bn2.weight", "blocks.6.0.bn3.weight"),
            ("_conv_head.weight", "conv_head.weight"),
            ("_bn1.weight", "bn2.weight"),
            ("_fc.bias", "classifier.bias"),
            ("blocks.2.1.conv_dw.weight", "blocks.2.1.conv_dw.weight"),
        ];
        for (from, to) in cases {
            assert_eq!(canonical_key(&cfg, from), to, "{from}");
        }
    }

    #[test]
    fn scaled_stages_match_timm() {
        // timm 1.0.31, `[len(s) for s in m.blocks]` and each stage's last out_chs.
        let shape = |size| {
            efficientnet_lite(size, Variant::PyTorch)
                .stages()
                .iter()
                .map(|s| (s.repeats, s.out_channels))
                .collect::<Vec<_>>()
        };
        let lite0 = [
            (1, 16),
            (2, 24),
            (2, 40),
            (3, 80),
            (3, 112),
            (4, 192),
            (1, 320),
        ];
        assert_eq!(shape(0), lite0);
        let lite2 = [
            (1, 16),
            (3, 24),
            (3, 48),
            (4, 88),
            (4, 120),
            (5, 208),
            (1, 352),
        ];
        assert_eq!(shape(2), lite2);
        let lite4 = [
            (1, 24),
            (4, 32),
            (4, 56),
            (6, 112),
            (6, 160),
            (8, 272),
            (1, 448),
        ];
        assert_eq!(shape(4), lite4);
    }

    #[test]
    fn efficientnet_pytorch_layout_proves_the_tensorflow_variant() {
        let tf = ["_conv_stem.weight", "_fc.bias"];
        assert_eq!(
            Config::variant_of(tf.into_iter()),
            Some(Variant::TensorFlow)
        );
        let timm = ["conv_stem.weight", "classifier.bias"];
        assert_eq!(Config::variant_of(timm.into_iter()), None);
    }
}
