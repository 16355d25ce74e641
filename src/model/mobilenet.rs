//! MobileNetV3 (large and small, width 1.0) and MobileNetV4's convolutional models (small and
//! medium): timm's `_gen_mobilenet_v3` / `_gen_mobilenet_v4` over the blocks of
//! [`super::efficientnet_blocks`], with timm's stage strings.
//!
//! - V3: hard-swish (ReLU in the blocks marked `nre`), squeeze-excite on the expanded width
//!   with a ReLU inside and a hard-sigmoid gate, and an "efficient head": the pool first,
//!   then `conv_head` (1x1 with bias, no BatchNorm) and hard-swish.
//! - V4: ReLU everywhere, no squeeze-excite, universal inverted residual blocks; the head
//!   pools, then `conv_head` (no bias) + `norm_head` + ReLU.

use candle_core::Result;
use candle_nn::VarBuilder;

use super::efficientnet_blocks::{self as blocks, HeadKind, MobileNet, SeStyle};
use super::kernels::Activation;
use super::layers::LoadOptions;

const V3_LARGE: &[&[&str]] = &[
    &["ds_r1_k3_s1_e1_c16_nre"],
    &["ir_r1_k3_s2_e4_c24_nre", "ir_r1_k3_s1_e3_c24_nre"],
    &["ir_r3_k5_s2_e3_c40_se0.25_nre"],
    &[
        "ir_r1_k3_s2_e6_c80",
        "ir_r1_k3_s1_e2.5_c80",
        "ir_r2_k3_s1_e2.3_c80",
    ],
    &["ir_r2_k3_s1_e6_c112_se0.25"],
    &["ir_r3_k5_s2_e6_c160_se0.25"],
    &["cn_r1_k1_s1_c960"],
];

const V3_SMALL: &[&[&str]] = &[
    &["ds_r1_k3_s2_e1_c16_se0.25_nre"],
    &["ir_r1_k3_s2_e4.5_c24_nre", "ir_r1_k3_s1_e3.67_c24_nre"],
    &["ir_r1_k5_s2_e4_c40_se0.25", "ir_r2_k5_s1_e6_c40_se0.25"],
    &["ir_r2_k5_s1_e3_c48_se0.25"],
    &["ir_r3_k5_s2_e6_c96_se0.25"],
    &["cn_r1_k1_s1_c576"],
];

const V4_CONV_SMALL: &[&[&str]] = &[
    &["cn_r1_k3_s2_e1_c32", "cn_r1_k1_s1_e1_c32"],
    &["cn_r1_k3_s2_e1_c96", "cn_r1_k1_s1_e1_c64"],
    &[
        "uir_r1_a5_k5_s2_e3_c96",
        "uir_r4_a0_k3_s1_e2_c96",
        "uir_r1_a3_k0_s1_e4_c96",
    ],
    &[
        "uir_r1_a3_k3_s2_e6_c128",
        "uir_r1_a5_k5_s1_e4_c128",
        "uir_r1_a0_k5_s1_e4_c128",
        "uir_r1_a0_k5_s1_e3_c128",
        "uir_r2_a0_k3_s1_e4_c128",
    ],
    &["cn_r1_k1_s1_c960"],
];

const V4_CONV_MEDIUM: &[&[&str]] = &[
    &["er_r1_k3_s2_e4_c48"],
    &["uir_r1_a3_k5_s2_e4_c80", "uir_r1_a3_k3_s1_e2_c80"],
    &[
        "uir_r1_a3_k5_s2_e6_c160",
        "uir_r2_a3_k3_s1_e4_c160",
        "uir_r1_a3_k5_s1_e4_c160",
        "uir_r1_a3_k3_s1_e4_c160",
        "uir_r1_a3_k0_s1_e4_c160",
        "uir_r1_a0_k0_s1_e2_c160",
        "uir_r1_a3_k0_s1_e4_c160",
    ],
    &[
        "uir_r1_a5_k5_s2_e6_c256",
        "uir_r1_a5_k5_s1_e4_c256",
        "uir_r2_a3_k5_s1_e4_c256",
        "uir_r1_a0_k0_s1_e4_c256",
        "uir_r1_a3_k0_s1_e4_c256",
        "uir_r1_a3_k5_s1_e2_c256",
        "uir_r1_a5_k5_s1_e4_c256",
        "uir_r2_a0_k0_s1_e4_c256",
        "uir_r1_a5_k0_s1_e2_c256",
    ],
    &["cn_r1_k1_s1_c960"],
];

/// One of the supported MobileNets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Config {
    V3Large,
    V3Small,
    V4ConvSmall,
    V4ConvMedium,
}

pub const fn mobilenetv3_large_100() -> Config {
    Config::V3Large
}
pub const fn mobilenetv3_small_100() -> Config {
    Config::V3Small
}
pub const fn mobilenetv4_conv_small() -> Config {
    Config::V4ConvSmall
}
pub const fn mobilenetv4_conv_medium() -> Config {
    Config::V4ConvMedium
}

impl Config {
    /// The network as timm's generator builds it.
    pub fn net(&self) -> blocks::Config {
        let v3 = |arch, stem, head| blocks::Config {
            arch,
            channel_multiplier: 1.0,
            depth_multiplier: 1.0,
            fix_first_last: false,
            stem,
            fix_stem: false,
            head,
            fix_head: true,
            head_kind: HeadKind::PoolConvAct,
            act: Activation::HardSwish,
            se: SeStyle::FromExpanded,
            tf_padding: false,
            bn_eps: 1e-5,
        };
        let v4 = |arch| blocks::Config {
            arch,
            stem: 32,
            head: 1280,
            head_kind: HeadKind::PoolConvBnAct,
            act: Activation::Relu,
            ..v3(arch, 32, 1280)
        };
        match self {
            Config::V3Large => v3(V3_LARGE, 16, 1280),
            Config::V3Small => v3(V3_SMALL, 16, 1024),
            Config::V4ConvSmall => v4(V4_CONV_SMALL),
            Config::V4ConvMedium => v4(V4_CONV_MEDIUM),
        }
    }
}

impl super::Family for Config {
    fn classifier_key(&self) -> &'static str {
        "classifier.weight"
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
    use blocks::Kind;

    #[test]
    fn v3_blocks_match_timm() {
        // timm 1.0.31 mobilenetv3_large_100: (in, mid, out, kernel, stride, SE width,
        // residual) of some blocks, and the activation switch at stage 3.
        let large = mobilenetv3_large_100().net().resolve();
        let b = |s: usize, i: usize| {
            let b = &large[s][i];
            (
                b.in_channels,
                b.mid_channels,
                b.out_channels,
                b.kernel,
                b.stride,
                b.se_reduced,
                b.residual,
            )
        };
        assert_eq!(b(0, 0), (16, 16, 16, 3, 1, None, true));
        assert_eq!(b(2, 0), (24, 72, 40, 5, 2, Some(24), false));
        assert_eq!(b(2, 1), (40, 120, 40, 5, 1, Some(32), true));
        assert_eq!(b(3, 2), (80, 184, 80, 3, 1, None, true));
        assert_eq!(b(4, 0), (80, 480, 112, 3, 1, Some(120), false));
        assert_eq!(b(5, 1), (160, 960, 160, 5, 1, Some(240), true));
        assert_eq!(large[2][0].act, Activation::Relu);
        assert_eq!(large[3][0].act, Activation::HardSwish);
        assert_eq!(large[6][0].kind, Kind::ConvBnAct);
        let small = mobilenetv3_small_100().net().resolve();
        let s0 = &small[0][0];
        assert_eq!((s0.stride, s0.se_reduced, s0.residual), (2, Some(8), false));
        assert_eq!(small[1][1].mid_channels, 88);
    }

    #[test]
    fn v4_blocks_match_timm() {
        // timm 1.0.31 mobilenetv4_conv_medium: stage lengths and a few blocks' shapes.
        let medium = mobilenetv4_conv_medium().net().resolve();
        let lens: Vec<usize> = medium.iter().map(Vec::len).collect();
        assert_eq!(lens, [1, 2, 8, 11, 1]);
        let er = &medium[0][0];
        assert_eq!(
            (er.kind, er.mid_channels, er.out_channels, er.stride),
            (Kind::EdgeResidual, 128, 48, 2)
        );
        let b = &medium[3][0];
        assert_eq!(
            (
                b.start_kernel,
                b.kernel,
                b.mid_channels,
                b.out_channels,
                b.stride
            ),
            (5, 5, 960, 256, 2)
        );
        let ffn = &medium[3][8];
        assert_eq!((ffn.start_kernel, ffn.kernel, ffn.residual), (0, 0, true));
        let small = mobilenetv4_conv_small().net().resolve();
        let cn = &small[0][1];
        assert_eq!((cn.kind, cn.residual), (Kind::ConvBnAct, false));
        assert_eq!(small[2][5].mid_channels, 384);
    }
}
