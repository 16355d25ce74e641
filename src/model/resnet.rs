//! ResNet v1.5 (torchvision's: the stride sits on the 3x3 convolution), depths 18 to 152.
//!
//! Module paths mirror torchvision's and timm's `resnet*.tv_in1k` state dicts: `conv1`,
//! `bn1`, `layer{1..4}.{i}.conv{1,2,3}` / `bn{1,2,3}`, `layer{n}.0.downsample.{0,1}`, `fc`.

use candle_core::{Device, Module, Result, Tensor};
use candle_nn::VarBuilder;

use super::kernels::{self, Act, Activation};
use super::layers::{
    global_avg_pool, max_pool_3x3_s2_after_relu, Classifier, ConvBn, ConvSpec, LoadOptions,
};

const BN_EPS: f64 = 1e-5;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockKind {
    /// Two 3x3 convolutions (ResNet-18/34).
    Basic,
    /// 1x1 reduce, 3x3, 1x1 expand by 4 (ResNet-50 and deeper).
    Bottleneck,
}

impl BlockKind {
    fn expansion(self) -> usize {
        match self {
            BlockKind::Basic => 1,
            BlockKind::Bottleneck => 4,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub block: BlockKind,
    pub layers: [usize; 4],
}

pub const fn resnet18() -> Config {
    Config {
        block: BlockKind::Basic,
        layers: [2, 2, 2, 2],
    }
}
pub const fn resnet34() -> Config {
    Config {
        block: BlockKind::Basic,
        layers: [3, 4, 6, 3],
    }
}
pub const fn resnet50() -> Config {
    Config {
        block: BlockKind::Bottleneck,
        layers: [3, 4, 6, 3],
    }
}
pub const fn resnet101() -> Config {
    Config {
        block: BlockKind::Bottleneck,
        layers: [3, 4, 23, 3],
    }
}
pub const fn resnet152() -> Config {
    Config {
        block: BlockKind::Bottleneck,
        layers: [3, 8, 36, 3],
    }
}

impl Config {
    /// Width of the pooled features that feed `fc`.
    pub fn num_features(&self) -> usize {
        512 * self.block.expansion()
    }
}

#[derive(Debug, Clone)]
struct Block {
    convs: Vec<ConvBn>,
    downsample: Option<ConvBn>,
}

impl Block {
    fn load(
        vb: VarBuilder,
        kind: BlockKind,
        in_ch: usize,
        planes: usize,
        stride: usize,
        opts: LoadOptions,
    ) -> Result<Self> {
        let out_ch = planes * kind.expansion();
        let specs = match kind {
            BlockKind::Basic => vec![
                ConvSpec::new(in_ch, planes, 3).stride(stride),
                ConvSpec::new(planes, planes, 3),
            ],
            BlockKind::Bottleneck => vec![
                ConvSpec::new(in_ch, planes, 1),
                ConvSpec::new(planes, planes, 3).stride(stride),
                ConvSpec::new(planes, out_ch, 1),
            ],
        };
        let convs = specs
            .into_iter()
            .enumerate()
            .map(|(i, spec)| {
                let n = i + 1;
                ConvBn::load(
                    vb.pp(format!("conv{n}")),
                    vb.pp(format!("bn{n}")),
                    spec,
                    BN_EPS,
                    opts,
                )
            })
            .collect::<Result<Vec<_>>>()?;
        let downsample = if stride != 1 || in_ch != out_ch {
            let ds = vb.pp("downsample");
            Some(ConvBn::load(
                ds.pp("0"),
                ds.pp("1"),
                ConvSpec::new(in_ch, out_ch, 1).stride(stride),
                BN_EPS,
                opts,
            )?)
        } else {
            None
        };
        Ok(Self { convs, downsample })
    }
}

impl Block {
    /// The same block on the NHWC CPU kernels, the residual add and ReLU fused into the last
    /// convolution, which writes its output over the shortcut (or `x` itself).
    fn forward_nhwc(&self, x: Act) -> Result<Act> {
        let shortcut = match &self.downsample {
            Some(ds) => Some(ds.forward_nhwc(&x, Activation::Identity, None)?),
            None => None,
        };
        let (last, first) = self.convs.split_last().expect("a block has convolutions");
        let mut y = first[0].forward_nhwc(&x, Activation::Relu, None)?;
        for conv in &first[1..] {
            y = conv.forward_nhwc(&y, Activation::Relu, None)?;
        }
        last.forward_nhwc_onto(&y, Activation::Relu, shortcut.unwrap_or(x))
    }
}

impl Module for Block {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let last = self.convs.len() - 1;
        let mut y = x.clone();
        for (i, conv) in self.convs.iter().enumerate() {
            y = conv.forward(&y)?;
            if i != last {
                y = y.relu()?;
            }
        }
        let shortcut = match &self.downsample {
            Some(ds) => ds.forward(x)?,
            None => x.clone(),
        };
        (y + shortcut)?.relu()
    }
}

#[derive(Debug, Clone)]
pub struct ResNet {
    stem: ConvBn,
    blocks: Vec<Block>,
    /// The stem and this many blocks, the first two stages (up to stride 8), run one image
    /// at a time on the CPU kernels, an image a thread ([`Act::in_chunks`]); the rest on
    /// the whole batch. ResNet-50's bottleneck blocks there write 256- and 512-channel
    /// activations of 56x56 and 28x28 pixels: 3.2 and 1.6 MB an image, 51 and 26 MB at
    /// batch 16, which stream from memory between layers. One image's stay in the cache.
    /// ResNet-50 at batch 16, `classify bench -n 6`, 6 interleaved rounds on an AMD EPYC
    /// Zen 4 (2 cores, AVX-512): 25.4 img/s median with the whole batch everywhere, 26.9
    /// with the first two stages per image; the first stage alone, or two images at a
    /// time, gained less; every stage per image lost (22.9: the deep layers' GEMMs want
    /// the rows of the whole batch).
    ///
    /// Basic blocks (ResNet-18/34) lost then (ResNet-18 81.6 -> 77.6 img/s with its first
    /// stage per image), when an image's layers were still split between the cores; since
    /// each core takes an image of its own, they gain. Intel Xeon (Sapphire Rapids class),
    /// 2 threads, one binary with an environment switch, interleaved rounds, medians,
    /// images/s, whole batch -> first two stages per image:
    /// - AVX-512: ResNet-18 batch 16 121.9 -> 127.6 (4 rounds; 123.1 -> 126.6 with the third
    ///   stage too), batch 8 116.4 -> 124.1, batch 4 107.1 -> 111.9, batch 2 101.4 ->
    ///   109.0; ResNet-34 batch 16 69.2 -> 70.6.
    /// - AVX2 forced: ResNet-18 batch 16 89.0 -> 92.2 (5 rounds).
    ///
    /// ResNet-50's third stage per image as well: AVX-512 batch 16 41.2 -> 41.7 (8 rounds,
    /// within the noise), AVX2 forced 27.2 -> 26.4 (6 rounds): not taken.
    per_image_blocks: usize,
    fc: Classifier,
    /// The instruction set of the pooling kernel.
    isa: kernels::Isa,
}

impl ResNet {
    pub fn load(
        vb: VarBuilder,
        cfg: &Config,
        num_classes: usize,
        opts: LoadOptions,
    ) -> Result<Self> {
        let stem = ConvBn::load(
            vb.pp("conv1"),
            vb.pp("bn1"),
            ConvSpec::new(3, 64, 7).stride(2),
            BN_EPS,
            opts,
        )?;
        let mut blocks = Vec::new();
        let mut in_ch = 64;
        for (stage, &count) in cfg.layers.iter().enumerate() {
            let planes = 64 << stage;
            let layer = vb.pp(format!("layer{}", stage + 1));
            for i in 0..count {
                let stride = if stage > 0 && i == 0 { 2 } else { 1 };
                blocks.push(Block::load(
                    layer.pp(i),
                    cfg.block,
                    in_ch,
                    planes,
                    stride,
                    opts,
                )?);
                in_ch = planes * cfg.block.expansion();
            }
        }
        let fc = Classifier::load(vb.pp("fc"), cfg.num_features(), num_classes, opts)?;
        let per_image_blocks = cfg.layers[0] + cfg.layers[1];
        Ok(Self {
            stem,
            blocks,
            per_image_blocks,
            fc,
            isa: opts.isa,
        })
    }
}

impl super::Family for Config {
    fn classifier_key(&self) -> &'static str {
        "fc.weight"
    }

    fn build(
        &self,
        vb: VarBuilder,
        num_classes: usize,
        opts: LoadOptions,
    ) -> Result<super::Network> {
        Ok(super::Network::new(ResNet::load(
            vb,
            self,
            num_classes,
            opts,
        )?))
    }
}

impl Module for ResNet {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if kernels::fast_path_for(x) && self.stem.has_nhwc_kernel() {
            let (early, late) = self.blocks.split_at(self.per_image_blocks);
            let mut x = Act::from_nchw(x)?.in_chunks(1, |x| {
                let mut x = self
                    .stem
                    .forward_nhwc_then_max_pool(x, Activation::Relu, self.isa)?;
                for block in early {
                    x = block.forward_nhwc(x)?;
                }
                Ok(x)
            })?;
            for block in late {
                x = block.forward_nhwc(x)?;
            }
            return self.fc.forward(&x.global_avg_pool(None, &Device::Cpu)?);
        }
        let mut x = max_pool_3x3_s2_after_relu(&self.stem.forward(x)?.relu()?)?;
        for block in &self.blocks {
            x = block.forward(&x)?;
        }
        self.fc.forward(&global_avg_pool(&x)?)
    }
}
