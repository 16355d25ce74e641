//! RegNetY 200MF .. 4.0GF (timm's `regnet.py`): a 3x3 stride-2 stem, then four stages of
//! bottleneck blocks: 1x1, grouped 3x3 (the stride on it), squeeze-excite reduced from the
//! block's *input* width (`round(in / 4)`, ReLU inside, sigmoid gate), 1x1 without
//! activation, and the residual (a 1x1 stride-2 convolution + BatchNorm in each stage's first
//! block) added before the ReLU. Head: global average pool, linear.
//!
//! The stage widths, depths and group widths are timm's `generate_regnet` output for each
//! model's (w0, wa, wm, group size, depth), as built by timm 1.0.31.
//!
//! Module paths are timm's: `stem.{conv,bn}`, `s{1..4}.b{1..}.{conv1,conv2,conv3}.{conv,bn}`,
//! `.se.{fc1,fc2}`, `.downsample.{conv,bn}`, `head.fc`.

use candle_core::{Device, Module, Result, Tensor};
use candle_nn::VarBuilder;

use super::kernels::math::Gate;
use super::kernels::{self, Act, Activation};
use super::layers::{global_avg_pool, Classifier, ConvBn, ConvSpec, LoadOptions, SqueezeExcite};

const BN_EPS: f64 = 1e-5;
const STEM: usize = 32;

/// One stage: output width, number of blocks, channels per group of the 3x3 convolution.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stage {
    pub width: usize,
    pub depth: usize,
    pub group_width: usize,
}

const fn stage(width: usize, depth: usize, group_width: usize) -> Stage {
    Stage {
        width,
        depth,
        group_width,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Config {
    pub stages: [Stage; 4],
}

const fn regnety(stages: [Stage; 4]) -> Config {
    Config { stages }
}

pub const fn regnety_002() -> Config {
    regnety([
        stage(24, 1, 8),
        stage(56, 1, 8),
        stage(152, 4, 8),
        stage(368, 7, 8),
    ])
}
pub const fn regnety_004() -> Config {
    regnety([
        stage(48, 1, 8),
        stage(104, 3, 8),
        stage(208, 6, 8),
        stage(440, 6, 8),
    ])
}
pub const fn regnety_006() -> Config {
    regnety([
        stage(48, 1, 16),
        stage(112, 3, 16),
        stage(256, 7, 16),
        stage(608, 4, 16),
    ])
}
pub const fn regnety_008() -> Config {
    regnety([
        stage(64, 1, 16),
        stage(128, 3, 16),
        stage(320, 8, 16),
        stage(768, 2, 16),
    ])
}
pub const fn regnety_016() -> Config {
    regnety([
        stage(48, 2, 24),
        stage(120, 6, 24),
        stage(336, 17, 24),
        stage(888, 2, 24),
    ])
}
pub const fn regnety_032() -> Config {
    regnety([
        stage(72, 2, 24),
        stage(216, 5, 24),
        stage(576, 13, 24),
        stage(1512, 1, 24),
    ])
}
pub const fn regnety_040() -> Config {
    regnety([
        stage(128, 2, 64),
        stage(192, 6, 64),
        stage(512, 12, 64),
        stage(1088, 2, 64),
    ])
}

impl Config {
    pub fn num_features(&self) -> usize {
        self.stages[3].width
    }
}

#[derive(Debug, Clone)]
struct Block {
    conv1: ConvBn,
    conv2: ConvBn,
    se: SqueezeExcite,
    conv3: ConvBn,
    downsample: Option<ConvBn>,
}

impl Block {
    fn load(
        vb: VarBuilder,
        cin: usize,
        st: &Stage,
        stride: usize,
        opts: LoadOptions,
    ) -> Result<Self> {
        let w = st.width;
        let conv_bn = |name: &str, spec| {
            let v = vb.pp(name);
            ConvBn::load(v.pp("conv"), v.pp("bn"), spec, BN_EPS, opts)
        };
        // timm: `round(in_chs * 0.25)`, exact for these widths (multiples of 4).
        let reduced = (cin as f64 * 0.25).round_ties_even() as usize;
        let groups = w / st.group_width.min(w);
        Ok(Self {
            conv1: conv_bn("conv1", ConvSpec::new(cin, w, 1))?,
            conv2: conv_bn(
                "conv2",
                ConvSpec::new(w, w, 3).stride(stride).groups(groups),
            )?,
            se: SqueezeExcite::load(
                vb.pp("se"),
                ("fc1", "fc2"),
                w,
                reduced,
                Activation::Relu,
                Gate::Sigmoid,
                opts,
            )?,
            conv3: conv_bn("conv3", ConvSpec::new(w, w, 1))?,
            downsample: (cin != w || stride != 1)
                .then(|| conv_bn("downsample", ConvSpec::new(cin, w, 1).stride(stride)))
                .transpose()?,
        })
    }

    fn has_nhwc_kernels(&self) -> bool {
        [&self.conv1, &self.conv2, &self.conv3]
            .into_iter()
            .chain(&self.downsample)
            .all(ConvBn::has_nhwc_kernel)
    }

    /// The last convolution writes its output over the shortcut (or `x` itself).
    fn forward_nhwc(&self, x: Act) -> Result<Act> {
        let shortcut = match &self.downsample {
            Some(ds) => Some(ds.forward_nhwc(&x, Activation::Identity, None)?),
            None => None,
        };
        let y = self.conv1.forward_nhwc(&x, Activation::Relu, None)?;
        let mut y = self.conv2.forward_nhwc(&y, Activation::Relu, None)?;
        self.se.forward_nhwc(&mut y)?;
        self.conv3
            .forward_nhwc_onto(&y, Activation::Relu, shortcut.unwrap_or(x))
    }
}

impl Module for Block {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let shortcut = match &self.downsample {
            Some(ds) => ds.forward(x)?,
            None => x.clone(),
        };
        let y = self.conv1.forward(x)?.relu()?;
        let y = self.se.forward(&self.conv2.forward(&y)?.relu()?)?;
        (self.conv3.forward(&y)? + shortcut)?.relu()
    }
}

#[derive(Debug, Clone)]
pub struct RegNet {
    stem: ConvBn,
    blocks: Vec<Block>,
    fc: Classifier,
}

impl RegNet {
    pub fn load(
        vb: VarBuilder,
        cfg: &Config,
        num_classes: usize,
        opts: LoadOptions,
    ) -> Result<Self> {
        let stem = ConvBn::load(
            vb.pp("stem.conv"),
            vb.pp("stem.bn"),
            ConvSpec::new(3, STEM, 3).stride(2),
            BN_EPS,
            opts,
        )?;
        let mut blocks = Vec::new();
        let mut cin = STEM;
        for (i, st) in cfg.stages.iter().enumerate() {
            for j in 0..st.depth {
                let stride = if j == 0 { 2 } else { 1 };
                let vb_block = vb.pp(format!("s{}", i + 1)).pp(format!("b{}", j + 1));
                blocks.push(Block::load(vb_block, cin, st, stride, opts)?);
                cin = st.width;
            }
        }
        Ok(Self {
            stem,
            blocks,
            fc: Classifier::load(vb.pp("head.fc"), cfg.num_features(), num_classes, opts)?,
        })
    }
}

impl Module for RegNet {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let fast = self.stem.has_nhwc_kernel() && self.blocks.iter().all(Block::has_nhwc_kernels);
        if kernels::fast_path_for(x) && fast {
            let mut y = self
                .stem
                .forward_nhwc(&Act::from_nchw(x)?, Activation::Relu, None)?;
            for block in &self.blocks {
                y = block.forward_nhwc(y)?;
            }
            return self.fc.forward(&y.global_avg_pool(None, &Device::Cpu)?);
        }
        let mut y = self.stem.forward(x)?.relu()?;
        for block in &self.blocks {
            y = block.forward(&y)?;
        }
        self.fc.forward(&global_avg_pool(&y)?)
    }
}

impl super::Family for Config {
    fn classifier_key(&self) -> &'static str {
        "head.fc.weight"
    }

    fn build(
        &self,
        vb: VarBuilder,
        num_classes: usize,
        opts: LoadOptions,
    ) -> Result<super::Network> {
        Ok(super::Network::new(RegNet::load(
            vb,
            self,
            num_classes,
            opts,
        )?))
    }
}
