//! The fast CPU path: f32 activations in NHWC order held in plain buffers ([`act`]), and the
//! kernels the models run on them. Where each concern lives:
//!
//! - [`isa`]: which instruction set runs, detected once, chosen at load.
//! - [`gemm`]: the GEMM micro-kernels, one file per instruction set, on weights packed in
//!   panels at load (a packed weight carries its kernel); the general `gemm` crate for the
//!   rest.
//! - [`conv`]: dense convolutions as GEMMs of the activation rows (or their gathered
//!   receptive fields) with bias, activation and residual applied while each block is in
//!   cache; Winograd F(2x2, 3x3) or F(4x4, 3x3) for 3x3 stride-1.
//! - [`attention`]: multi-head self-attention over token rows (ViT).
//! - [`depthwise`]: depthwise convolutions, vectorised over the channels of a pixel.
//! - [`fused`]: a dense convolution and the depthwise one after it, a strip of rows at a
//!   time (the expanded activation between them stays in L2).
//! - [`excite`]: squeeze-excite (channel means, two small layers, a gate, a scaling pass).
//! - [`linear`]: the classifier head (`nn.Linear`) on the GEMM micro-kernels.
//! - [`math`]: the element-wise activations (SiLU, GELU, hard-swish) and gates, per ISA.
//! - [`norm`]: LayerNorm over each pixel's channels, ConvNeXt V2's response norm.
//! - [`pool`]: max, average and global average pooling.
//! - [`par`]: splitting work between threads, and every `unsafe impl Send/Sync`.
//! - [`scratch`]: per-thread buffers reused from call to call.
//! - [`reference`]: candle's own operations, the stock path and the tests' reference.
//!
//! A pre-activation BatchNorm + ReLU ([`Prologue`]) is applied by the kernel that reads its
//! input. Candle's NCHW operations stay the reference (and the only path on other devices):
//! `LoadOptions::stock` selects them on the CPU too, when a network is loaded.

pub mod act;
pub mod attention;
pub mod conv;
pub mod depthwise;
pub mod excite;
pub mod fused;
pub mod gemm;
pub mod isa;
pub mod linear;
pub mod math;
pub mod norm;
mod par;
pub mod pool;
pub mod reference;
mod scratch;
#[cfg(test)]
mod testing;

use candle_core::{DType, Device, Result, Tensor};

pub use act::{Act, Activation, Pad2d, Prologue, View};
pub use conv::GemmConv;
pub use depthwise::DepthwiseConv;
pub use isa::Isa;
pub use linear::Linear;
pub use par::with_workers_awake;
pub use pool::{avg_pool_2x2, max_pool_3x3_s2};
pub use reference::conv2d_reference;

/// Whether a forward pass over `x` can take the NHWC kernels (a network loaded with them
/// also needs its weights packed: see `ConvBn::has_nhwc_kernel`).
pub fn fast_path_for(x: &Tensor) -> bool {
    matches!(x.device(), Device::Cpu) && x.dtype() == DType::F32
}

/// A tensor's values as f32 on the host (weights and per-channel parameters, at load).
pub fn to_host(t: &Tensor) -> Result<Vec<f32>> {
    t.to_dtype(DType::F32)?.flatten_all()?.to_vec1()
}

/// A bias on the host, zeros where there is none.
fn bias_to_host(bias: Option<&Tensor>, channels: usize) -> Result<Vec<f32>> {
    bias.map_or_else(|| Ok(vec![0.0; channels]), to_host)
}
