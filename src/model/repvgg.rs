//! RepVGG A0, A1, A2 and B0 (timm's `byobnet.py`), from the training-time checkpoints:
//! every block is a 3x3 convolution + BatchNorm, a 1x1 convolution + BatchNorm and (where
//! the shape allows) a BatchNorm of the input itself, summed, then ReLU. At load the three
//! branches are fused into one 3x3 convolution with bias, as timm's `reparameterize` does
//! (the 1x1 kernel zero-padded to the centre of a 3x3 one, the identity as a centre-tap
//! kernel), so inference is a plain stack of 3x3 convolutions. With BatchNorm folding off
//! (`LoadOptions::fold_batchnorm`) the branches run as trained, which is how the tests check
//! that fusing changes nothing but rounding.
//!
//! Module paths are timm's: `stem` and `stages.{i}.{j}`, each with `conv_kxk.{conv,bn}`,
//! `conv_1x1.{conv,bn}` and `identity` (a BatchNorm), then `head.fc`.

use candle_core::{DType, Device, Module, Result, Tensor};
use candle_nn::VarBuilder;

use super::kernels::{self, Act, Activation};
use super::layers::{global_avg_pool, BatchNorm, Classifier, Conv2d, ConvSpec, LoadOptions};

const BN_EPS: f64 = 1e-5;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Config {
    pub stem: usize,
    pub widths: [usize; 4],
    pub depths: [usize; 4],
}

pub const fn repvgg_a0() -> Config {
    Config {
        stem: 48,
        widths: [48, 96, 192, 1280],
        depths: [2, 4, 14, 1],
    }
}
pub const fn repvgg_a1() -> Config {
    Config {
        stem: 64,
        widths: [64, 128, 256, 1280],
        depths: [2, 4, 14, 1],
    }
}
pub const fn repvgg_a2() -> Config {
    Config {
        stem: 64,
        widths: [96, 192, 384, 1408],
        depths: [2, 4, 14, 1],
    }
}
pub const fn repvgg_b0() -> Config {
    Config {
        stem: 64,
        widths: [64, 128, 256, 1280],
        depths: [4, 6, 16, 1],
    }
}

/// The trained branches of one block.
#[derive(Debug, Clone)]
struct Branches {
    kxk: (Tensor, BatchNorm),
    one: (Tensor, BatchNorm),
    identity: Option<BatchNorm>,
    stride: usize,
}

impl Branches {
    fn load(vb: &VarBuilder, cin: usize, cout: usize, stride: usize) -> Result<Self> {
        let branch = |name: &str, k: usize| -> Result<(Tensor, BatchNorm)> {
            let b = vb.pp(name);
            Ok((
                b.pp("conv").get((cout, cin, k, k), "weight")?,
                BatchNorm::load(b.pp("bn"), cout, BN_EPS)?,
            ))
        };
        let identity = (cin == cout && stride == 1)
            .then(|| BatchNorm::load(vb.pp("identity"), cout, BN_EPS))
            .transpose()?;
        Ok(Self {
            kxk: branch("conv_kxk", 3)?,
            one: branch("conv_1x1", 1)?,
            identity,
            stride,
        })
    }

    /// The one 3x3 convolution (weight, bias) the branches add up to, computed in f64.
    fn fuse(&self) -> Result<(Tensor, Tensor)> {
        let fold = |w: &Tensor, bn: &BatchNorm| -> Result<(Tensor, Tensor)> {
            let a = bn.to_affine()?;
            let (scale, shift) = (
                a.scale().to_dtype(DType::F64)?,
                a.shift().to_dtype(DType::F64)?,
            );
            let w = w
                .to_dtype(DType::F64)?
                .broadcast_mul(&scale.reshape(((), 1, 1, 1))?)?;
            Ok((w, shift))
        };
        let (mut weight, mut bias) = fold(&self.kxk.0, &self.kxk.1)?;
        let (one, one_bias) = fold(&self.one.0, &self.one.1)?;
        weight = (weight + one.pad_with_zeros(2, 1, 1)?.pad_with_zeros(3, 1, 1)?)?;
        bias = (bias + one_bias)?;
        if let Some(bn) = &self.identity {
            let c = weight.dim(0)?;
            let mut centre = vec![0f64; c * c * 9];
            for i in 0..c {
                centre[(i * c + i) * 9 + 4] = 1.0;
            }
            let eye = Tensor::from_vec(centre, (c, c, 3, 3), weight.device())?;
            let (id, id_bias) = fold(&eye, bn)?;
            weight = (weight + id)?;
            bias = (bias + id_bias)?;
        }
        Ok((weight.to_dtype(DType::F32)?, bias.to_dtype(DType::F32)?))
    }
}

impl Module for Branches {
    /// The branches as trained: `relu(bn(conv3x3(x)) + bn(conv1x1(x)) [+ bn(x)])`.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let s = self.stride;
        let mut y = (self.kxk.1.forward(&x.conv2d(&self.kxk.0, 1, s, 1, 1)?)?
            + self.one.1.forward(&x.conv2d(&self.one.0, 0, s, 1, 1)?)?)?;
        if let Some(bn) = &self.identity {
            y = (y + bn.forward(x)?)?;
        }
        y.relu()
    }
}

/// A block: fused (the inference form), or its branches.
#[derive(Debug, Clone)]
enum Block {
    Fused(Conv2d),
    Branches(Branches),
}

impl Block {
    fn load(
        vb: VarBuilder,
        cin: usize,
        cout: usize,
        stride: usize,
        opts: LoadOptions,
    ) -> Result<Self> {
        let branches = Branches::load(&vb, cin, cout, stride)?;
        if !opts.fold_batchnorm {
            return Ok(Block::Branches(branches));
        }
        let (weight, bias) = branches.fuse()?;
        let spec = ConvSpec::new(cin, cout, 3).stride(stride);
        Ok(Block::Fused(Conv2d::from_parts(
            weight,
            Some(bias),
            spec,
            opts,
        )?))
    }

    fn has_nhwc_kernel(&self) -> bool {
        matches!(self, Block::Fused(conv) if conv.has_nhwc_kernel())
    }

    fn forward_nhwc(&self, x: &Act) -> Result<Act> {
        match self {
            Block::Fused(conv) => conv.forward_nhwc(x, Activation::Relu, None),
            Block::Branches(_) => candle_core::bail!("unfused RepVGG branches have no NHWC kernel"),
        }
    }
}

impl Module for Block {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Block::Fused(conv) => conv.forward(x)?.relu(),
            Block::Branches(b) => b.forward(x),
        }
    }
}

#[derive(Debug, Clone)]
pub struct RepVgg {
    blocks: Vec<Block>,
    fc: Classifier,
}

impl RepVgg {
    pub fn load(
        vb: VarBuilder,
        cfg: &Config,
        num_classes: usize,
        opts: LoadOptions,
    ) -> Result<Self> {
        let mut blocks = vec![Block::load(vb.pp("stem"), 3, cfg.stem, 2, opts)?];
        let mut cin = cfg.stem;
        for (i, (&width, &depth)) in cfg.widths.iter().zip(&cfg.depths).enumerate() {
            for j in 0..depth {
                let stride = if j == 0 { 2 } else { 1 };
                blocks.push(Block::load(
                    vb.pp("stages").pp(i).pp(j),
                    cin,
                    width,
                    stride,
                    opts,
                )?);
                cin = width;
            }
        }
        Ok(Self {
            blocks,
            fc: Classifier::load(vb.pp("head.fc"), cin, num_classes, opts)?,
        })
    }
}

impl Module for RepVgg {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if kernels::fast_path_for(x) && self.blocks.iter().all(Block::has_nhwc_kernel) {
            let mut y = Act::from_nchw(x)?;
            for block in &self.blocks {
                y = block.forward_nhwc(&y)?;
            }
            return self.fc.forward(&y.global_avg_pool(None, &Device::Cpu)?);
        }
        let mut y = x.clone();
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
        Ok(super::Network::new(RepVgg::load(
            vb,
            self,
            num_classes,
            opts,
        )?))
    }
}
