//! ConvNeXt (V1: atto .. base) and ConvNeXt V2 (atto .. base), timm's `convnext.py`.
//!
//! A 4x4 stride-4 stem convolution and LayerNorm; four stages, each but the first opened by
//! LayerNorm + a 2x2 stride-2 convolution; every block is a 7x7 depthwise convolution,
//! LayerNorm over the channels, a 4x MLP with GELU (V2: global response normalisation
//! before the second layer), a per-channel layer scale (V1 only, folded into the second
//! layer at load) and the residual. Head: global average pool, LayerNorm, linear. Every
//! LayerNorm has eps 1e-6; there is no BatchNorm.
//!
//! Module paths are timm's: `stem.{0,1}`, `stages.{i}.downsample.{0,1}`,
//! `stages.{i}.blocks.{j}.{conv_dw,norm,mlp.fc1,mlp.grn,mlp.fc2,gamma}`, `head.norm`,
//! `head.fc`. The small models (atto .. nano) store the MLP as 1x1 convolutions
//! (`[out, in, 1, 1]`), the others as linear layers (`[out, in]`), as timm does.

use candle_core::{Device, Module, Result, Tensor};
use candle_nn::VarBuilder;

use super::kernels::norm::ResponseNorm;
use super::kernels::{self, Act, Activation};
use super::layers::{activate, Classifier, Conv2d, ConvSpec, LayerNorm, LoadOptions, Padding};

const EPS: f64 = 1e-6;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Config {
    pub depths: [usize; 4],
    pub dims: [usize; 4],
    /// The MLP stored as 1x1 convolutions (timm's `conv_mlp`: atto, femto, pico, nano).
    pub conv_mlp: bool,
    /// ConvNeXt V2: response normalisation, no layer scale.
    pub v2: bool,
}

const fn config(depths: [usize; 4], dims: [usize; 4], conv_mlp: bool, v2: bool) -> Config {
    Config {
        depths,
        dims,
        conv_mlp,
        v2,
    }
}

const SMALL: [usize; 4] = [2, 2, 6, 2];

pub const fn convnext_atto(v2: bool) -> Config {
    config(SMALL, [40, 80, 160, 320], true, v2)
}
pub const fn convnext_femto(v2: bool) -> Config {
    config(SMALL, [48, 96, 192, 384], true, v2)
}
pub const fn convnext_pico(v2: bool) -> Config {
    config(SMALL, [64, 128, 256, 512], true, v2)
}
pub const fn convnext_nano(v2: bool) -> Config {
    config([2, 2, 8, 2], [80, 160, 320, 640], true, v2)
}
pub const fn convnext_tiny(v2: bool) -> Config {
    config([3, 3, 9, 3], [96, 192, 384, 768], false, v2)
}
pub const fn convnext_small(v2: bool) -> Config {
    config([3, 3, 27, 3], [96, 192, 384, 768], false, v2)
}
pub const fn convnext_base(v2: bool) -> Config {
    config([3, 3, 27, 3], [128, 256, 512, 1024], false, v2)
}

#[derive(Debug, Clone)]
struct Block {
    conv_dw: Conv2d,
    norm: LayerNorm,
    fc1: Conv2d,
    grn: Option<(ResponseNorm, Tensor, Tensor)>,
    /// The layer scale folded in (V1).
    fc2: Conv2d,
}

impl Block {
    fn load(vb: VarBuilder, dim: usize, cfg: &Config, opts: LoadOptions) -> Result<Self> {
        let conv_dw = Conv2d::load(
            vb.pp("conv_dw"),
            ConvSpec::new(dim, dim, 7).groups(dim),
            true,
            opts,
        )?;
        let norm = LayerNorm::load(vb.pp("norm"), dim, EPS, opts)?;
        let mlp = vb.pp("mlp");
        let hidden = 4 * dim;
        let fc1 = Conv2d::load_pointwise(mlp.pp("fc1"), dim, hidden, cfg.conv_mlp, None, opts)?;
        let grn = if cfg.v2 {
            let g = mlp.pp("grn");
            let (w, b) = (g.get(hidden, "weight")?, g.get(hidden, "bias")?);
            Some((ResponseNorm::pack(&w, &b, EPS)?, w, b))
        } else {
            None
        };
        let gamma = if cfg.v2 {
            None
        } else {
            Some(vb.get(dim, "gamma")?)
        };
        let fc2 = Conv2d::load_pointwise(
            mlp.pp("fc2"),
            hidden,
            dim,
            cfg.conv_mlp,
            gamma.as_ref(),
            opts,
        )?;
        Ok(Self {
            conv_dw,
            norm,
            fc1,
            grn,
            fc2,
        })
    }

    fn has_nhwc_kernels(&self) -> bool {
        [&self.conv_dw, &self.fc1, &self.fc2]
            .iter()
            .all(|c| c.has_nhwc_kernel())
            && self.norm.has_nhwc_kernel()
    }

    fn forward_nhwc(&self, x: &Act) -> Result<Act> {
        let mut y = self.conv_dw.forward_nhwc(x, Activation::Identity, None)?;
        self.norm.forward_nhwc(&mut y)?;
        let mut h = self.fc1.forward_nhwc(&y, Activation::Gelu, None)?;
        drop(y);
        if let Some((grn, ..)) = &self.grn {
            grn.forward_in_place(&mut h)?;
        }
        self.fc2.forward_nhwc(&h, Activation::Identity, Some(x))
    }
}

impl Module for Block {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = self.norm.forward_nchw(&self.conv_dw.forward(x)?)?;
        let mut h = activate(&self.fc1.forward(&y)?, Activation::Gelu)?;
        if let Some((_, w, b)) = &self.grn {
            let c4 = |t: &Tensor| t.reshape((1, (), 1, 1));
            let gx = h.sqr()?.sum_keepdim((2, 3))?.sqrt()?;
            let nx = gx.broadcast_div(&(gx.mean_keepdim(1)? + EPS)?)?;
            h = (&h
                + h.broadcast_mul(&nx)?
                    .broadcast_mul(&c4(w)?)?
                    .broadcast_add(&c4(b)?)?)?;
        }
        self.fc2.forward(&h)? + x
    }
}

/// The LayerNorm + 2x2 stride-2 convolution that opens every stage but the first.
type Downsample = (LayerNorm, Conv2d);

#[derive(Debug, Clone)]
pub struct ConvNeXt {
    stem: (Conv2d, LayerNorm),
    /// Per stage: its downsampling (all but the first), its blocks.
    stages: Vec<(Option<Downsample>, Vec<Block>)>,
    head_norm: LayerNorm,
    fc: Classifier,
}

impl ConvNeXt {
    pub fn load(
        vb: VarBuilder,
        cfg: &Config,
        num_classes: usize,
        opts: LoadOptions,
    ) -> Result<Self> {
        let d = cfg.dims;
        let stem = (
            Conv2d::load(
                vb.pp("stem.0"),
                ConvSpec::new(3, d[0], 4)
                    .stride(4)
                    .padding(Padding::Symmetric(0)),
                true,
                opts,
            )?,
            LayerNorm::load(vb.pp("stem.1"), d[0], EPS, opts)?,
        );
        let mut stages = Vec::new();
        for i in 0..4 {
            let vb_stage = vb.pp("stages").pp(i);
            let downsample = if i > 0 {
                let ds = vb_stage.pp("downsample");
                let spec = ConvSpec::new(d[i - 1], d[i], 2)
                    .stride(2)
                    .padding(Padding::Symmetric(0));
                Some((
                    LayerNorm::load(ds.pp("0"), d[i - 1], EPS, opts)?,
                    Conv2d::load(ds.pp("1"), spec, true, opts)?,
                ))
            } else {
                None
            };
            let blocks = (0..cfg.depths[i])
                .map(|j| Block::load(vb_stage.pp("blocks").pp(j), d[i], cfg, opts))
                .collect::<Result<Vec<_>>>()?;
            stages.push((downsample, blocks));
        }
        let head = vb.pp("head");
        Ok(Self {
            stem,
            stages,
            head_norm: LayerNorm::load(head.pp("norm"), d[3], EPS, opts)?,
            fc: Classifier::load(head.pp("fc"), d[3], num_classes, opts)?,
        })
    }

    fn has_nhwc_kernels(&self) -> bool {
        self.stem.0.has_nhwc_kernel()
            && self.stem.1.has_nhwc_kernel()
            && self.stages.iter().all(|(ds, blocks)| {
                ds.as_ref()
                    .is_none_or(|(n, c)| n.has_nhwc_kernel() && c.has_nhwc_kernel())
                    && blocks.iter().all(Block::has_nhwc_kernels)
            })
            && self.head_norm.has_nhwc_kernel()
    }

    fn forward_nhwc(&self, x: &Tensor) -> Result<Tensor> {
        let mut x = self
            .stem
            .0
            .forward_nhwc(&Act::from_nchw(x)?, Activation::Identity, None)?;
        self.stem.1.forward_nhwc(&mut x)?;
        for (downsample, blocks) in &self.stages {
            if let Some((norm, conv)) = downsample {
                norm.forward_nhwc(&mut x)?;
                x = conv.forward_nhwc(&x, Activation::Identity, None)?;
            }
            for block in blocks {
                x = block.forward_nhwc(&x)?;
            }
        }
        let mut pooled = Act {
            n: x.n,
            h: 1,
            w: 1,
            c: x.c,
            data: x.channel_means(None),
        };
        self.head_norm.forward_nhwc(&mut pooled)?;
        let features = Tensor::from_vec(pooled.data, (pooled.n, pooled.c), &Device::Cpu)?;
        self.fc.forward(&features)
    }
}

impl Module for ConvNeXt {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if kernels::fast_path_for(x) && self.has_nhwc_kernels() {
            return self.forward_nhwc(x);
        }
        let mut x = self.stem.1.forward_nchw(&self.stem.0.forward(x)?)?;
        for (downsample, blocks) in &self.stages {
            if let Some((norm, conv)) = downsample {
                x = conv.forward(&norm.forward_nchw(&x)?)?;
            }
            for block in blocks {
                x = block.forward(&x)?;
            }
        }
        let pooled = x.mean((2, 3))?;
        self.fc.forward(&self.head_norm.forward_last(&pooled)?)
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
        Ok(super::Network::new(ConvNeXt::load(
            vb,
            self,
            num_classes,
            opts,
        )?))
    }
}
