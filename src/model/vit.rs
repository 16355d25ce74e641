//! Vision Transformer (timm's `vision_transformer.py`): ViT-Ti/S/B and DeiT-Ti/S/B, patch
//! 16, 224x224 (the same network: DeiT differs only in its weights and preprocessing; the
//! distilled DeiTs are not supported).
//!
//! The image is cut into 16x16 patches, each projected to `dim` channels (a 16x16 stride-16
//! convolution); a class token is put in front and the learned position embedding added.
//! Each block: `x += proj(attention(qkv(LayerNorm(x))))`, `x += fc2(GELU(fc1(LayerNorm(x))))`.
//! A final LayerNorm, and the class token's features go to the head. LayerNorm eps 1e-6.
//!
//! The tokens of each image are rows of `dim` values (an NHWC activation of height 1), so
//! every linear layer runs on the GEMM kernels with its bias, GELU and residual in the
//! epilogue, and LayerNorm on the row kernel. The position embedding fixes the input size:
//! another size is refused.
//!
//! Module paths are timm's: `patch_embed.proj`, `cls_token`, `pos_embed`,
//! `blocks.{i}.{norm1,attn.qkv,attn.proj,norm2,mlp.fc1,mlp.fc2}`, `norm`, `head`.

use candle_core::{Device, Module, Result, Tensor};
use candle_nn::VarBuilder;

use super::kernels::{self, attention, Act, Activation, Isa};
use super::layers::{Classifier, Conv2d, ConvSpec, LayerNorm, LoadOptions, Padding};

const EPS: f64 = 1e-6;
const PATCH: usize = 16;
const IMAGE: usize = 224;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Config {
    pub dim: usize,
    pub depth: usize,
    pub heads: usize,
}

pub const fn vit_tiny() -> Config {
    Config {
        dim: 192,
        depth: 12,
        heads: 3,
    }
}
pub const fn vit_small() -> Config {
    Config {
        dim: 384,
        depth: 12,
        heads: 6,
    }
}
pub const fn vit_base() -> Config {
    Config {
        dim: 768,
        depth: 12,
        heads: 12,
    }
}

/// Tokens per image: the patches and the class token.
const TOKENS: usize = (IMAGE / PATCH) * (IMAGE / PATCH) + 1;

#[derive(Debug, Clone)]
struct Block {
    norm1: LayerNorm,
    qkv: Conv2d,
    proj: Conv2d,
    norm2: LayerNorm,
    fc1: Conv2d,
    fc2: Conv2d,
    heads: usize,
    isa: Isa,
}

impl Block {
    fn load(vb: VarBuilder, cfg: &Config, opts: LoadOptions) -> Result<Self> {
        let d = cfg.dim;
        let linear =
            |name: &str, i, o| Conv2d::load_pointwise(vb.pp(name), i, o, false, None, opts);
        Ok(Self {
            norm1: LayerNorm::load(vb.pp("norm1"), d, EPS, opts)?,
            qkv: linear("attn.qkv", d, 3 * d)?,
            proj: linear("attn.proj", d, d)?,
            norm2: LayerNorm::load(vb.pp("norm2"), d, EPS, opts)?,
            fc1: linear("mlp.fc1", d, 4 * d)?,
            fc2: linear("mlp.fc2", 4 * d, d)?,
            heads: cfg.heads,
            isa: opts.isa,
        })
    }

    fn has_nhwc_kernels(&self) -> bool {
        [&self.qkv, &self.proj, &self.fc1, &self.fc2]
            .iter()
            .all(|c| c.has_nhwc_kernel())
            && self.norm1.has_nhwc_kernel()
            && self.norm2.has_nhwc_kernel()
    }

    /// `x`: the tokens of `n` images as an activation of height 1 and width [`TOKENS`].
    fn forward_nhwc(&self, x: &Act) -> Result<Act> {
        let mut h = x.clone();
        self.norm1.forward_nhwc(&mut h)?;
        let qkv = self.qkv.forward_nhwc(&h, Activation::Identity, None)?;
        attention::attention(&qkv.data, &mut h.data, x.n, x.w, x.c, self.heads, self.isa)?;
        drop(qkv);
        let x = self.proj.forward_nhwc(&h, Activation::Identity, Some(x))?;
        let mut h = x.clone();
        self.norm2.forward_nhwc(&mut h)?;
        let h = self.fc1.forward_nhwc(&h, Activation::Gelu, None)?;
        self.fc2.forward_nhwc(&h, Activation::Identity, Some(&x))
    }

    /// The same with candle's operations, `x` as `(n, tokens, dim)`.
    fn forward_tokens(&self, x: &Tensor) -> Result<Tensor> {
        let (n, t, d) = x.dims3()?;
        let linear = |conv: &Conv2d, x: &Tensor| -> Result<Tensor> {
            let (w, b) = conv.linear_weights()?;
            x.broadcast_matmul(&w.t()?)?.broadcast_add(&b)
        };
        let h = self.norm1.forward_last(x)?;
        let qkv = linear(&self.qkv, &h)?;
        let hd = d / self.heads;
        let split = |i: usize| {
            qkv.narrow(2, i * d, d)?
                .reshape((n, t, self.heads, hd))?
                .transpose(1, 2)?
                .contiguous()
        };
        let (q, k, v) = (split(0)?, split(1)?, split(2)?);
        let scores = (q.matmul(&k.t()?)? * (hd as f64).powf(-0.5))?;
        let o = candle_nn::ops::softmax_last_dim(&scores)?
            .matmul(&v)?
            .transpose(1, 2)?
            .reshape((n, t, d))?;
        let x = (x + linear(&self.proj, &o)?)?;
        let h = linear(&self.fc1, &self.norm2.forward_last(&x)?)?.gelu_erf()?;
        x + linear(&self.fc2, &h)?
    }
}

#[derive(Debug, Clone)]
pub struct VisionTransformer {
    patch_embed: Conv2d,
    cls_token: Tensor,
    pos_embed: Tensor,
    /// The same two on the host (the fast path).
    host: (Vec<f32>, Vec<f32>),
    blocks: Vec<Block>,
    norm: LayerNorm,
    head: Classifier,
    dim: usize,
}

impl VisionTransformer {
    pub fn load(
        vb: VarBuilder,
        cfg: &Config,
        num_classes: usize,
        opts: LoadOptions,
    ) -> Result<Self> {
        let d = cfg.dim;
        let patch_embed = Conv2d::load(
            vb.pp("patch_embed.proj"),
            ConvSpec::new(3, d, PATCH)
                .stride(PATCH)
                .padding(Padding::Symmetric(0)),
            true,
            opts,
        )?;
        let cls_token = vb.get((1, 1, d), "cls_token")?;
        let pos_embed = vb.get((1, TOKENS, d), "pos_embed")?;
        let host = (kernels::to_host(&cls_token)?, kernels::to_host(&pos_embed)?);
        let blocks = (0..cfg.depth)
            .map(|i| Block::load(vb.pp("blocks").pp(i), cfg, opts))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            patch_embed,
            cls_token,
            pos_embed,
            host,
            blocks,
            norm: LayerNorm::load(vb.pp("norm"), d, EPS, opts)?,
            head: Classifier::load(vb.pp("head"), d, num_classes, opts)?,
            dim: d,
        })
    }

    fn check_size(x: &Tensor) -> Result<()> {
        let (_, _, h, w) = x.dims4()?;
        if (h, w) != (IMAGE, IMAGE) {
            candle_core::bail!(
                "this Vision Transformer takes {IMAGE}x{IMAGE} images (its position embedding \
                 has {TOKENS} tokens), got {h}x{w}: leave --input-size at the model's"
            )
        }
        Ok(())
    }

    fn has_nhwc_kernels(&self) -> bool {
        self.patch_embed.has_nhwc_kernel()
            && self.norm.has_nhwc_kernel()
            && self.blocks.iter().all(Block::has_nhwc_kernels)
    }

    fn forward_nhwc(&self, x: &Tensor) -> Result<Tensor> {
        let patches =
            self.patch_embed
                .forward_nhwc(&Act::from_nchw(x)?, Activation::Identity, None)?;
        let (n, d) = (patches.n, self.dim);
        // [class token; patches] + position embedding, per image.
        let (cls, pos) = (&self.host.0, &self.host.1);
        let mut data = Vec::with_capacity(n * TOKENS * d);
        for image in patches.data.chunks_exact((TOKENS - 1) * d) {
            let tokens = cls.iter().chain(image);
            data.extend(tokens.zip(pos).map(|(&t, &p)| t + p));
        }
        let mut x = Act {
            n,
            h: 1,
            w: TOKENS,
            c: d,
            data,
        };
        for block in &self.blocks {
            x = block.forward_nhwc(&x)?;
        }
        // The final norm is per token: only the class tokens are needed.
        let mut cls_tokens = Act {
            n,
            h: 1,
            w: 1,
            c: d,
            data: x
                .data
                .chunks_exact(TOKENS * d)
                .flat_map(|image| image[..d].iter().copied())
                .collect(),
        };
        self.norm.forward_nhwc(&mut cls_tokens)?;
        let features = Tensor::from_vec(cls_tokens.data, (n, d), &Device::Cpu)?;
        self.head.forward(&features)
    }
}

impl Module for VisionTransformer {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Self::check_size(x)?;
        if kernels::fast_path_for(x) && self.has_nhwc_kernels() {
            return self.forward_nhwc(x);
        }
        let n = x.dim(0)?;
        let patches = self
            .patch_embed
            .forward(x)?
            .flatten_from(2)?
            .transpose(1, 2)?;
        let cls = self.cls_token.broadcast_as((n, 1, self.dim))?;
        let mut t = Tensor::cat(&[&cls, &patches], 1)?.broadcast_add(&self.pos_embed)?;
        for block in &self.blocks {
            t = block.forward_tokens(&t)?;
        }
        let cls = t.narrow(1, 0, 1)?.squeeze(1)?;
        self.head.forward(&self.norm.forward_last(&cls)?)
    }
}

impl super::Family for Config {
    fn classifier_key(&self) -> &'static str {
        "head.weight"
    }

    fn build(
        &self,
        vb: VarBuilder,
        num_classes: usize,
        opts: LoadOptions,
    ) -> Result<super::Network> {
        Ok(super::Network::new(VisionTransformer::load(
            vb,
            self,
            num_classes,
            opts,
        )?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::weights::synthetic::{self, SyntheticWeights};

    #[test]
    fn another_input_size_is_refused() {
        let vb = SyntheticWeights::var_builder(&Device::Cpu);
        let net = VisionTransformer::load(vb, &vit_tiny(), 10, LoadOptions::default()).unwrap();
        let x = synthetic::input(&[1, 3, 256, 256], &Device::Cpu).unwrap();
        let err = net.forward(&x).unwrap_err().to_string();
        assert!(err.contains("224x224") && err.contains("256x256"), "{err}");
        let x = synthetic::input(&[1, 3, 224, 224], &Device::Cpu).unwrap();
        assert_eq!(net.forward(&x).unwrap().dims(), [1, 10]);
    }
}
