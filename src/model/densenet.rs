//! DenseNet-BC (torchvision's), depths 121, 161, 169 and 201.
//!
//! Module paths mirror torchvision's and timm's `densenet*.tv_in1k` state dicts:
//! `features.conv0`, `features.norm0`, `features.denseblock{b}.denselayer{l}.norm1/conv1/
//! norm2/conv2`, `features.transition{t}.norm/conv`, `features.norm5`, `classifier`.
//! Older torchvision checkpoints spell the dense-layer modules `norm.1`, `conv.1`, ...;
//! [`canonical_key`] rewrites those.
//!
//! DenseNet is pre-activation: most BatchNorms follow a concatenation, not a convolution,
//! so only `norm0` and each layer's `norm2` fold into a convolution; the others become a
//! precomputed per-channel affine map.

use candle_core::{Device, Module, Result, Tensor};
use candle_nn::VarBuilder;
use rayon::prelude::*;

use super::kernels::{self, Act, Activation};
use super::layers::{
    global_avg_pool, max_pool_3x3_s2_after_relu, Classifier, Conv2d, ConvBn, ConvSpec, LoadOptions,
    Norm,
};

const BN_EPS: f64 = 1e-5;
const BN_SIZE: usize = 4;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub growth_rate: usize,
    pub block_config: [usize; 4],
    pub num_init_features: usize,
}

pub const fn densenet121() -> Config {
    Config {
        growth_rate: 32,
        block_config: [6, 12, 24, 16],
        num_init_features: 64,
    }
}
pub const fn densenet161() -> Config {
    Config {
        growth_rate: 48,
        block_config: [6, 12, 36, 24],
        num_init_features: 96,
    }
}
pub const fn densenet169() -> Config {
    Config {
        growth_rate: 32,
        block_config: [6, 12, 32, 32],
        num_init_features: 64,
    }
}
pub const fn densenet201() -> Config {
    Config {
        growth_rate: 32,
        block_config: [6, 12, 48, 32],
        num_init_features: 64,
    }
}

impl Config {
    /// Width of the pooled features that feed `classifier`.
    pub fn num_features(&self) -> usize {
        let mut features = self.num_init_features;
        for (i, &layers) in self.block_config.iter().enumerate() {
            features += layers * self.growth_rate;
            if i != self.block_config.len() - 1 {
                features /= 2;
            }
        }
        features
    }
}

/// Rewrite the pre-0.4 torchvision spelling (`denselayer1.norm.1.weight`) to the current one
/// (`denselayer1.norm1.weight`). Other keys pass through unchanged.
pub fn canonical_key(key: &str) -> String {
    if !key.contains(".denselayer") {
        return key.to_string();
    }
    let mut out = key.to_string();
    for module in ["norm", "relu", "conv"] {
        for n in ["1", "2"] {
            out = out.replace(&format!(".{module}.{n}."), &format!(".{module}{n}."));
        }
    }
    out
}

#[derive(Debug, Clone)]
struct DenseLayer {
    norm1: Norm,
    conv1: ConvBn,
    conv2: Conv2d,
}

impl DenseLayer {
    fn load(vb: VarBuilder, in_ch: usize, growth: usize, opts: LoadOptions) -> Result<Self> {
        let mid = BN_SIZE * growth;
        Ok(Self {
            norm1: Norm::load(vb.pp("norm1"), in_ch, BN_EPS, opts)?,
            conv1: ConvBn::load(
                vb.pp("conv1"),
                vb.pp("norm2"),
                ConvSpec::new(in_ch, mid, 1),
                BN_EPS,
                opts,
            )?,
            conv2: Conv2d::load(vb.pp("conv2"), ConvSpec::new(mid, growth, 3), false, opts)?,
        })
    }

    /// The `growth` new feature maps this layer adds.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = self.norm1.forward(x)?.relu()?;
        let y = self.conv1.forward(&y)?.relu()?;
        self.conv2.forward(&y)
    }
}

impl DenseLayer {
    /// Read the first `in_ch` channels of the block's features and write this layer's new
    /// maps right after them, in place: no concatenation is ever copied.
    fn forward_nhwc(&self, features: &mut Act, in_ch: usize) -> Result<()> {
        let y = self.conv1.nhwc()?.forward_nhwc_view(
            features.prefix(in_ch),
            Some(self.norm1.relu_prologue()?),
            Activation::Relu,
            None,
        )?;
        let stride = features.c;
        self.conv2
            .forward_nhwc_into(&y, &mut features.data[in_ch..], stride)
    }
}

#[derive(Debug, Clone)]
struct Transition {
    norm: Norm,
    conv: Conv2d,
    /// The instruction set of the pooling kernel.
    isa: kernels::Isa,
}

impl Transition {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = self.conv.forward(&self.norm.forward(x)?.relu()?)?;
        y.avg_pool2d_with_stride(2, 2)
    }

    fn forward_nhwc(&self, x: &Act) -> Result<Act> {
        // Pool first: pooling and a 1x1 convolution commute, and this way the convolution
        // runs on a quarter of the pixels.
        let y = kernels::avg_pool_2x2(x, Some(self.norm.relu_prologue()?), self.isa)?;
        self.conv.forward_nhwc(&y, Activation::Identity, None)
    }
}

#[derive(Debug, Clone)]
struct DenseBlock {
    layers: Vec<DenseLayer>,
}

impl DenseBlock {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        // Each layer sees every earlier output; collecting them once and concatenating per
        // layer is what torchvision does too.
        let mut features = vec![x.clone()];
        for layer in &self.layers {
            let input = Tensor::cat(&features, 1)?;
            features.push(layer.forward(&input)?);
        }
        Tensor::cat(&features, 1)
    }

    /// All layers on one preallocated NHWC buffer holding the block's final width.
    fn forward_nhwc(&self, x: &Act) -> Result<Act> {
        let c_total = x.c
            + self
                .layers
                .iter()
                .map(|l| l.conv2.out_channels())
                .sum::<usize>();
        let mut features = Act {
            c: c_total,
            data: vec![0f32; x.rows() * c_total],
            ..*x
        };
        features
            .data
            .par_chunks_mut(c_total)
            .zip(x.data.par_chunks(x.c))
            .for_each(|(dst, src)| dst[..x.c].copy_from_slice(src));
        let mut in_ch = x.c;
        for layer in &self.layers {
            layer.forward_nhwc(&mut features, in_ch)?;
            in_ch += layer.conv2.out_channels();
        }
        Ok(features)
    }
}

/// The stem and this many dense blocks (with their transitions) run one image at a time on
/// the CPU kernels, the rest on the whole batch. The first two blocks grow to 256 channels
/// at 56x56 and 512 at 28x28 (3.2 and 1.6 MB an image, 51 and 26 MB at batch 16), and
/// every layer re-reads its block: per image that stays in the cache. DenseNet-121 at
/// batch 16, `classify bench -n 4`, interleaved rounds on an AMD EPYC Zen 4 (2 cores,
/// AVX-512), medians: whole batch 38.2 img/s, first block per image 39.0, first two
/// 42.3 (two images at a time 40.8), three 41.8, all four 42.1. Two, as for ResNet
/// ([`super::resnet`]): the deep blocks gain nothing here, and a batch reads their weights
/// once. Measured again since each core takes an image of its own ([`Act::in_chunks`]; Intel
/// Xeon, Sapphire Rapids class, AVX-512, 2 threads, batch 16, one binary with an
/// environment switch, 4 interleaved rounds, medians): two 56.1 img/s, three 56.7, all four
/// 55.5.
const PER_IMAGE_BLOCKS: usize = 2;

#[derive(Debug, Clone)]
pub struct DenseNet {
    /// The instruction set of the pooling kernels.
    isa: kernels::Isa,
    stem: ConvBn,
    blocks: Vec<DenseBlock>,
    transitions: Vec<Transition>,
    norm5: Norm,
    classifier: Classifier,
}

impl DenseNet {
    pub fn load(
        vb: VarBuilder,
        cfg: &Config,
        num_classes: usize,
        opts: LoadOptions,
    ) -> Result<Self> {
        let features = vb.pp("features");
        let stem = ConvBn::load(
            features.pp("conv0"),
            features.pp("norm0"),
            ConvSpec::new(3, cfg.num_init_features, 7).stride(2),
            BN_EPS,
            opts,
        )?;
        let mut channels = cfg.num_init_features;
        let mut blocks = Vec::new();
        let mut transitions = Vec::new();
        for (b, &num_layers) in cfg.block_config.iter().enumerate() {
            let vb_block = features.pp(format!("denseblock{}", b + 1));
            let mut layers = Vec::with_capacity(num_layers);
            for l in 0..num_layers {
                let vb_layer = vb_block.pp(format!("denselayer{}", l + 1));
                layers.push(DenseLayer::load(vb_layer, channels, cfg.growth_rate, opts)?);
                channels += cfg.growth_rate;
            }
            blocks.push(DenseBlock { layers });
            if b != cfg.block_config.len() - 1 {
                let vb_t = features.pp(format!("transition{}", b + 1));
                transitions.push(Transition {
                    norm: Norm::load(vb_t.pp("norm"), channels, BN_EPS, opts)?,
                    conv: Conv2d::load(
                        vb_t.pp("conv"),
                        ConvSpec::new(channels, channels / 2, 1),
                        false,
                        opts,
                    )?,
                    isa: opts.isa,
                });
                channels /= 2;
            }
        }
        let norm5 = Norm::load(features.pp("norm5"), channels, BN_EPS, opts)?;
        let classifier = Classifier::load(vb.pp("classifier"), channels, num_classes, opts)?;
        Ok(Self {
            isa: opts.isa,
            stem,
            blocks,
            transitions,
            norm5,
            classifier,
        })
    }
}

impl super::Family for Config {
    fn classifier_key(&self) -> &'static str {
        "classifier.weight"
    }

    fn canonical_key(&self, key: &str) -> String {
        canonical_key(key)
    }

    fn build(
        &self,
        vb: VarBuilder,
        num_classes: usize,
        opts: LoadOptions,
    ) -> Result<super::Network> {
        Ok(super::Network::new(DenseNet::load(
            vb,
            self,
            num_classes,
            opts,
        )?))
    }
}

impl Module for DenseNet {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if kernels::fast_path_for(x) && self.stem.has_nhwc_kernel() {
            let stage = |i: usize, x: Act| -> Result<Act> {
                let mut x = self.blocks[i].forward_nhwc(&x)?;
                if let Some(t) = self.transitions.get(i) {
                    x = t.forward_nhwc(&x)?;
                }
                Ok(x)
            };
            let per_image = PER_IMAGE_BLOCKS.min(self.blocks.len());
            let mut x = Act::from_nchw(x)?.in_chunks(1, |x| {
                let mut x = self
                    .stem
                    .forward_nhwc_then_max_pool(x, Activation::Relu, self.isa)?;
                for i in 0..per_image {
                    x = stage(i, x)?;
                }
                Ok(x)
            })?;
            for i in per_image..self.blocks.len() {
                x = stage(i, x)?;
            }
            let pooled = x.global_avg_pool(Some(self.norm5.relu_prologue()?), &Device::Cpu)?;
            return self.classifier.forward(&pooled);
        }
        let mut x = max_pool_3x3_s2_after_relu(&self.stem.forward(x)?.relu()?)?;
        for (i, block) in self.blocks.iter().enumerate() {
            x = block.forward(&x)?;
            if let Some(t) = self.transitions.get(i) {
                x = t.forward(&x)?;
            }
        }
        let x = self.norm5.forward(&x)?.relu()?;
        self.classifier.forward(&global_avg_pool(&x)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn feature_widths_match_torchvision() {
        assert_eq!(densenet121().num_features(), 1024);
        assert_eq!(densenet161().num_features(), 2208);
        assert_eq!(densenet169().num_features(), 1664);
        assert_eq!(densenet201().num_features(), 1920);
    }

    #[test]
    fn old_torchvision_spelling_is_rewritten() {
        assert_eq!(
            canonical_key("features.denseblock1.denselayer1.norm.1.weight"),
            "features.denseblock1.denselayer1.norm1.weight"
        );
        assert_eq!(
            canonical_key("features.denseblock4.denselayer16.conv.2.weight"),
            "features.denseblock4.denselayer16.conv2.weight"
        );
        assert_eq!(canonical_key("features.norm5.bias"), "features.norm5.bias");
        assert_eq!(
            canonical_key("features.transition1.conv.weight"),
            "features.transition1.conv.weight"
        );
    }
}
