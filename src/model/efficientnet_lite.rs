//! EfficientNet-Lite0 (TensorFlow's mobile EfficientNet: no squeeze-excite, ReLU6, BatchNorm
//! eps 1e-3, TensorFlow "SAME" padding, fixed 32-channel stem and 1280-channel head).
//!
//! Module paths mirror timm's `tf_efficientnet_lite0` state dict: `conv_stem`, `bn1`,
//! `blocks.{stage}.{block}.conv_dw/bn1/conv_pw/bn2` (stage 0, depthwise-separable) or
//! `conv_pw/bn1/conv_dw/bn2/conv_pwl/bn3` (inverted residual), `conv_head`, `bn2`,
//! `classifier`. Checkpoints in the efficientnet_pytorch spelling (`_conv_stem`,
//! `_blocks.{n}._depthwise_conv`, `_fc`, ...) are rewritten by [`canonical_key`].

use candle_core::{Device, Module, Result, Tensor};
use candle_nn::VarBuilder;

use super::kernels::{self, Act, Activation};
use super::layers::{global_avg_pool, relu6, Classifier, ConvBn, ConvSpec, LoadOptions, Padding};

const BN_EPS: f64 = 1e-3;
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

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub stages: Vec<Stage>,
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

pub fn efficientnet_lite0() -> Config {
    Config {
        stages: vec![
            stage(1, 3, 1, 1, 16),
            stage(2, 3, 2, 6, 24),
            stage(2, 5, 2, 6, 40),
            stage(3, 3, 2, 6, 80),
            stage(3, 5, 1, 6, 112),
            stage(4, 5, 2, 6, 192),
            stage(1, 3, 1, 6, 320),
        ],
    }
}

impl Config {
    pub fn num_features(&self) -> usize {
        HEAD_CHANNELS
    }

    /// (stage, index within stage) of the n-th block counted across all stages.
    fn block_position(&self, mut n: usize) -> Option<(usize, usize)> {
        for (s, st) in self.stages.iter().enumerate() {
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
        in_ch: usize,
        st: &Stage,
        stride: usize,
        opts: LoadOptions,
    ) -> Result<Self> {
        let mid = in_ch * st.expand_ratio;
        let dw_spec = ConvSpec::new(mid, mid, st.kernel)
            .stride(stride)
            .groups(mid)
            .padding(Padding::TfSame);
        let block = if st.expand_ratio == 1 {
            Self {
                expand: None,
                depthwise: ConvBn::load(vb.pp("conv_dw"), vb.pp("bn1"), dw_spec, BN_EPS, opts)?,
                project: ConvBn::load(
                    vb.pp("conv_pw"),
                    vb.pp("bn2"),
                    ConvSpec::new(mid, st.out_channels, 1),
                    BN_EPS,
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
                    BN_EPS,
                    opts,
                )?),
                depthwise: ConvBn::load(vb.pp("conv_dw"), vb.pp("bn2"), dw_spec, BN_EPS, opts)?,
                project: ConvBn::load(
                    vb.pp("conv_pwl"),
                    vb.pp("bn3"),
                    ConvSpec::new(mid, st.out_channels, 1),
                    BN_EPS,
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
                .padding(Padding::TfSame),
            BN_EPS,
            opts,
        )?;
        let mut blocks = Vec::new();
        let mut in_ch = STEM_CHANNELS;
        for (s, st) in cfg.stages.iter().enumerate() {
            for b in 0..st.repeats {
                let stride = if b == 0 { st.stride } else { 1 };
                let vb_block = vb.pp("blocks").pp(s).pp(b);
                blocks.push(Block::load(vb_block, in_ch, st, stride, opts)?);
                in_ch = st.out_channels;
            }
        }
        let head = ConvBn::load(
            vb.pp("conv_head"),
            vb.pp("bn2"),
            ConvSpec::new(in_ch, HEAD_CHANNELS, 1),
            BN_EPS,
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
        let cfg = efficientnet_lite0();
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
}
