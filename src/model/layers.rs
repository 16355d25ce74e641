//! Building blocks shared by the architectures: convolution with optional BatchNorm folding,
//! stand-alone BatchNorm (for pre-activation nets such as DenseNet), TensorFlow "SAME"
//! padding, and the pooling helpers torchvision uses.
//!
//! Eval-mode BatchNorm is an affine map per channel, so a BatchNorm that directly follows a
//! convolution is folded into that convolution's weight and bias at load time. The unfolded
//! form is kept (selected by [`LoadOptions::fold_batchnorm`]) so tests can check that folding
//! changes nothing but rounding.

use candle_core::{DType, Module, Result, Tensor, D};
use candle_nn::VarBuilder;

use super::kernels::math::Gate;

use super::kernels::{
    self, conv2d_reference, to_host, Act, Activation, DepthwiseConv, GemmConv, Isa, Pad2d,
    Prologue, View,
};

/// Options that change how a checkpoint becomes a network, not what it computes.
#[derive(Debug, Clone, Copy)]
pub struct LoadOptions {
    /// Fold eval-mode BatchNorm into the preceding convolution (the fast inference form).
    pub fold_batchnorm: bool,
    /// The instruction set the CPU kernels are packed for (a level the CPU has).
    pub isa: Isa,
    /// Run candle's stock NCHW operations instead of the NHWC CPU kernels (the reference,
    /// and what `classify bench` compares against): nothing is packed.
    pub stock: bool,
}

impl Default for LoadOptions {
    /// Folded, for the best instruction set this CPU has.
    fn default() -> Self {
        Self {
            fold_batchnorm: true,
            isa: Isa::best(),
            stock: false,
        }
    }
}

impl LoadOptions {
    /// The defaults, with the instruction set `CLASSIFY_CPU_ISA` asks for.
    /// The execution path for weights on the CPU (`on_cpu`) or on a GPU: on CUDA/Metal it
    /// is always candle's operations (`stock`), chosen here, once, at load, so a GPU run
    /// never reaches the NHWC CPU kernels.
    pub fn for_device(self, on_cpu: bool) -> Self {
        if !on_cpu && !self.stock {
            tracing::info!("GPU: candle's operations (the CPU kernels are not used)");
        }
        Self {
            stock: self.stock || !on_cpu,
            ..self
        }
    }

    pub fn from_env() -> std::result::Result<Self, super::kernels::isa::IsaError> {
        Ok(Self {
            isa: Isa::from_env()?,
            ..Self::default()
        })
    }
}

/// How a convolution pads its input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Padding {
    /// PyTorch-style symmetric zero padding.
    Symmetric(usize),
    /// TensorFlow "SAME": output = ceil(input / stride), the odd pixel of padding goes to
    /// the bottom/right. Computed from the input size on every call.
    TfSame,
}

/// Geometry of one convolution, mirroring the torch module's constructor arguments.
#[derive(Debug, Clone, Copy)]
pub struct ConvSpec {
    pub in_channels: usize,
    pub out_channels: usize,
    pub kernel: usize,
    pub stride: usize,
    pub padding: Padding,
    pub groups: usize,
}

impl ConvSpec {
    pub fn new(in_channels: usize, out_channels: usize, kernel: usize) -> Self {
        Self {
            in_channels,
            out_channels,
            kernel,
            stride: 1,
            padding: Padding::Symmetric(kernel / 2),
            groups: 1,
        }
    }
    pub fn stride(mut self, stride: usize) -> Self {
        self.stride = stride;
        self
    }
    pub fn padding(mut self, padding: Padding) -> Self {
        self.padding = padding;
        self
    }
    pub fn groups(mut self, groups: usize) -> Self {
        self.groups = groups;
        self
    }
    fn weight_shape(&self) -> (usize, usize, usize, usize) {
        (
            self.out_channels,
            self.in_channels / self.groups,
            self.kernel,
            self.kernel,
        )
    }
}

/// TensorFlow SAME padding for one spatial dimension: (before, after).
pub fn tf_same_padding(input: usize, kernel: usize, stride: usize) -> (usize, usize) {
    let out = input.div_ceil(stride);
    let needed = ((out.saturating_sub(1)) * stride + kernel).saturating_sub(input);
    (needed / 2, needed - needed / 2)
}

/// The same convolution packed for the NHWC CPU kernels.
#[derive(Debug, Clone)]
enum Packed {
    Dense(GemmConv),
    Depthwise(DepthwiseConv),
}

/// A 2-D convolution with an optional per-output-channel bias. On the CPU it also keeps its
/// weights packed for the NHWC kernels (see [`Conv2d::packed`]).
#[derive(Debug, Clone)]
pub struct Conv2d {
    weight: Tensor,
    bias: Option<Tensor>,
    spec: ConvSpec,
    packed: Option<Packed>,
}

impl Conv2d {
    /// Load and pack for the CPU kernels (a convolution that nothing is folded into).
    pub fn load(vb: VarBuilder, spec: ConvSpec, has_bias: bool, opts: LoadOptions) -> Result<Self> {
        Self::load_unpacked(vb, spec, has_bias)?.packed(opts)
    }

    fn load_unpacked(vb: VarBuilder, spec: ConvSpec, has_bias: bool) -> Result<Self> {
        let weight = vb.get(spec.weight_shape(), "weight")?;
        let bias = if has_bias {
            Some(vb.get(spec.out_channels, "bias")?)
        } else {
            None
        };
        Ok(Self {
            weight,
            bias,
            spec,
            packed: None,
        })
    }

    /// A convolution from weights computed at load (fused branches), packed per `opts`.
    pub fn from_parts(
        weight: Tensor,
        bias: Option<Tensor>,
        spec: ConvSpec,
        opts: LoadOptions,
    ) -> Result<Self> {
        if weight.dims()
            != [
                spec.out_channels,
                spec.in_channels / spec.groups,
                spec.kernel,
                spec.kernel,
            ]
        {
            candle_core::bail!(
                "convolution weight {:?} does not fit {spec:?}",
                weight.dims()
            )
        }
        Self {
            weight,
            bias,
            spec,
            packed: None,
        }
        .packed(opts)
    }

    /// A fully connected layer as a 1x1 convolution with bias: `nn.Linear`'s `(out, in)`
    /// weight, or a 1x1 `nn.Conv2d`'s `(out, in, 1, 1)` where `conv_weight`. A per-channel
    /// `scale` of its output (a layer scale) is folded into the weight and bias.
    pub fn load_pointwise(
        vb: VarBuilder,
        in_channels: usize,
        out_channels: usize,
        conv_weight: bool,
        scale: Option<&Tensor>,
        opts: LoadOptions,
    ) -> Result<Self> {
        let spec = ConvSpec::new(in_channels, out_channels, 1);
        let mut weight = if conv_weight {
            vb.get(spec.weight_shape(), "weight")?
        } else {
            vb.get((out_channels, in_channels), "weight")?
                .reshape(spec.weight_shape())?
        };
        let mut bias = vb.get(out_channels, "bias")?;
        if let Some(scale) = scale {
            weight = weight.broadcast_mul(&scale.reshape(((), 1, 1, 1))?)?;
            bias = bias.mul(scale)?;
        }
        Self {
            weight,
            bias: Some(bias),
            spec,
            packed: None,
        }
        .packed(opts)
    }

    /// Pack the final weights once for the NHWC CPU kernels of `opts.isa` (CPU f32 weights
    /// only, and not when `opts.stock` asks for candle's operations).
    fn packed(mut self, opts: LoadOptions) -> Result<Self> {
        if opts.stock || !kernels::fast_path_for(&self.weight) {
            return Ok(self);
        }
        let isa = opts.isa;
        let (stride, bias) = (self.spec.stride, self.bias.as_ref());
        self.packed = Some(if self.is_depthwise() {
            Packed::Depthwise(DepthwiseConv::pack(&self.weight, bias, stride, isa)?)
        } else {
            let groups = self.spec.groups;
            Packed::Dense(GemmConv::pack_grouped(
                &self.weight,
                bias,
                stride,
                groups,
                isa,
            )?)
        });
        Ok(self)
    }

    /// `act(conv(x) + bias [+ residual])` on an NHWC activation.
    pub fn forward_nhwc(&self, x: &Act, act: Activation, residual: Option<&Act>) -> Result<Act> {
        self.forward_nhwc_view(x.view(), None, act, residual)
    }

    /// `act(conv(x) + bias + residual)` on an NHWC activation, written over `residual`
    /// where the kernel can ([`kernels::GemmConv::forward_onto`]): for a block's last
    /// convolution, whose residual is not needed after it.
    pub fn forward_nhwc_onto(&self, x: &Act, act: Activation, residual: Act) -> Result<Act> {
        match &self.packed {
            Some(Packed::Dense(conv)) => {
                conv.forward_onto(x.view(), self.padding_for(x.h, x.w), None, act, residual)
            }
            _ => self.forward_nhwc(x, act, Some(&residual)),
        }
    }

    /// `act(conv(pro(x)) + bias [+ residual])` on an NHWC view.
    pub fn forward_nhwc_view(
        &self,
        x: View,
        pro: Option<Prologue>,
        act: Activation,
        residual: Option<&Act>,
    ) -> Result<Act> {
        let pad = self.padding_for(x.h, x.w);
        match (&self.packed, pro, residual) {
            (Some(Packed::Dense(conv)), ..) => conv.forward(x, pad, pro, act, residual),
            (Some(Packed::Depthwise(conv)), None, None) if x.stride == x.c => {
                conv.forward(x, pad, act)
            }
            _ => candle_core::bail!(
                "convolution {:?} has no NHWC kernel for this use",
                self.spec
            ),
        }
    }

    /// `next_act(next(act(self(x))))` for a depthwise `next`, the two computed a strip of
    /// rows at a time ([`kernels::fused`]); `None` where they are not fused, and the caller
    /// runs them one after the other.
    pub fn forward_nhwc_then_depthwise(
        &self,
        x: &Act,
        act: Activation,
        next: &Conv2d,
        next_act: Activation,
    ) -> Result<Option<Act>> {
        let (Some(Packed::Dense(conv)), Some(Packed::Depthwise(dw))) = (&self.packed, &next.packed)
        else {
            return Ok(None);
        };
        let pad = self.padding_for(x.h, x.w);
        let (h, w) = pad.output_size(x.h, x.w, self.spec.kernel, self.spec.stride)?;
        let next_pad = next.padding_for(h, w);
        kernels::fused::conv_then_depthwise(conv, pad, act, dw, next_pad, next_act, x.view())
    }

    /// `max_pool_3x3_s2(act(self(x)))`, the two computed a strip of rows at a time
    /// ([`kernels::fused`]); `None` where they are not fused, and the caller runs them one
    /// after the other.
    pub fn forward_nhwc_then_max_pool(
        &self,
        x: &Act,
        act: Activation,
        isa: Isa,
    ) -> Result<Option<Act>> {
        let Some(Packed::Dense(conv)) = &self.packed else {
            return Ok(None);
        };
        let pad = self.padding_for(x.h, x.w);
        kernels::fused::conv_then_max_pool(conv, pad, act, x.view(), isa)
    }

    /// Write `conv(x) + bias` into the first columns of `out` (rows `out_stride` apart).
    pub fn forward_nhwc_into(&self, x: &Act, out: &mut [f32], out_stride: usize) -> Result<()> {
        let pad = self.padding_for(x.h, x.w);
        match &self.packed {
            Some(Packed::Dense(conv)) => {
                conv.forward_into(x.view(), pad, None, out, out_stride, Activation::Identity)
            }
            _ => candle_core::bail!(
                "convolution {:?} has no NHWC kernel for this use",
                self.spec
            ),
        }
    }

    pub fn out_channels(&self) -> usize {
        self.spec.out_channels
    }

    /// A 1x1 convolution's weight as the `(out, in)` matrix of a linear layer, and its bias
    /// (zeros where it has none).
    pub fn linear_weights(&self) -> Result<(Tensor, Tensor)> {
        let s = &self.spec;
        if s.kernel != 1 || s.groups != 1 {
            candle_core::bail!("{s:?} is not a linear layer")
        }
        let weight = self.weight.reshape((s.out_channels, s.in_channels))?;
        let bias = match &self.bias {
            Some(b) => b.clone(),
            None => Tensor::zeros(s.out_channels, self.weight.dtype(), self.weight.device())?,
        };
        Ok((weight, bias))
    }

    /// Whether this convolution runs on the NHWC CPU kernels (packed CPU f32 weights).
    pub fn has_nhwc_kernel(&self) -> bool {
        self.packed.is_some()
    }

    /// Scale each output channel by `scale` and add `shift` to the bias: the result of
    /// applying an affine map after this convolution. Packs the folded weights per `opts`.
    fn fold_affine(self, affine: &ChannelAffine, opts: LoadOptions) -> Result<Self> {
        let weight = self
            .weight
            .broadcast_mul(&affine.scale.reshape(((), 1, 1, 1))?)?;
        let bias = match self.bias {
            Some(b) => b.mul(&affine.scale)?.add(&affine.shift)?,
            None => affine.shift.clone(),
        };
        Self {
            weight,
            bias: Some(bias),
            spec: self.spec,
            packed: None,
        }
        .packed(opts)
    }
}

impl Conv2d {
    /// Padding (top, bottom, left, right) for an input of `h` x `w`.
    fn padding_for(&self, h: usize, w: usize) -> Pad2d {
        match self.spec.padding {
            Padding::Symmetric(p) => Pad2d::uniform(p),
            Padding::TfSame => {
                let (top, bottom) = tf_same_padding(h, self.spec.kernel, self.spec.stride);
                let (left, right) = tf_same_padding(w, self.spec.kernel, self.spec.stride);
                Pad2d {
                    top,
                    bottom,
                    left,
                    right,
                }
            }
        }
    }

    fn is_depthwise(&self) -> bool {
        self.spec.groups > 1
            && self.spec.groups == self.spec.in_channels
            && self.spec.groups == self.spec.out_channels
    }
}

impl Module for Conv2d {
    /// candle's stock convolution on NCHW tensors.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (_, _, h, w) = x.dims4()?;
        let pad = self.padding_for(h, w);
        let y = conv2d_reference(x, &self.weight, self.spec.stride, pad, self.spec.groups)?;
        match &self.bias {
            Some(b) => y.broadcast_add(&b.reshape((1, (), 1, 1))?),
            None => Ok(y),
        }
    }
}

/// Per-channel `x * scale + shift` over NCHW input: eval-mode BatchNorm precomputed.
#[derive(Debug, Clone)]
pub struct ChannelAffine {
    scale: Tensor,
    shift: Tensor,
    /// The same on the host, for the NHWC kernels.
    host: (Vec<f32>, Vec<f32>),
}

impl ChannelAffine {
    fn new(scale: Tensor, shift: Tensor) -> Result<Self> {
        let host = (to_host(&scale)?, to_host(&shift)?);
        Ok(Self { scale, shift, host })
    }

    pub fn scale(&self) -> &Tensor {
        &self.scale
    }

    pub fn shift(&self) -> &Tensor {
        &self.shift
    }
}

impl Module for ChannelAffine {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        x.broadcast_mul(&self.scale.reshape((1, (), 1, 1))?)?
            .broadcast_add(&self.shift.reshape((1, (), 1, 1))?)
    }
}

/// Eval-mode BatchNorm2d, with the checkpoint's statistics kept as they are.
#[derive(Debug, Clone)]
pub struct BatchNorm {
    weight: Tensor,
    bias: Tensor,
    running_mean: Tensor,
    running_var: Tensor,
    eps: f64,
}

impl BatchNorm {
    pub fn load(vb: VarBuilder, channels: usize, eps: f64) -> Result<Self> {
        Ok(Self {
            weight: vb.get(channels, "weight")?,
            bias: vb.get(channels, "bias")?,
            running_mean: vb.get(channels, "running_mean")?,
            running_var: vb.get(channels, "running_var")?,
            eps,
        })
    }

    /// The same map as one multiply-add per element. Computed in f64 so that folding does
    /// not add rounding of its own.
    pub fn to_affine(&self) -> Result<ChannelAffine> {
        let dtype = self.weight.dtype();
        let var = self.running_var.to_dtype(DType::F64)?;
        let inv_std = (var + self.eps)?.sqrt()?.recip()?;
        let scale = self.weight.to_dtype(DType::F64)?.mul(&inv_std)?;
        let shift = self
            .bias
            .to_dtype(DType::F64)?
            .sub(&self.running_mean.to_dtype(DType::F64)?.mul(&scale)?)?;
        ChannelAffine::new(scale.to_dtype(dtype)?, shift.to_dtype(dtype)?)
    }
}

impl Module for BatchNorm {
    /// `(x - mean) / sqrt(var + eps) * weight + bias`, literally, as PyTorch computes it.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let c = (1, (), 1, 1);
        let std = (self.running_var.clone() + self.eps)?.sqrt()?;
        x.broadcast_sub(&self.running_mean.reshape(c)?)?
            .broadcast_div(&std.reshape(c)?)?
            .broadcast_mul(&self.weight.reshape(c)?)?
            .broadcast_add(&self.bias.reshape(c)?)
    }
}

/// A BatchNorm that is not preceded by a convolution (DenseNet's pre-activation norms):
/// precomputed to an affine map, or kept literal for the unfolded check.
#[derive(Debug, Clone)]
pub enum Norm {
    Affine(ChannelAffine),
    Literal(BatchNorm),
}

impl Norm {
    pub fn load(vb: VarBuilder, channels: usize, eps: f64, opts: LoadOptions) -> Result<Self> {
        let bn = BatchNorm::load(vb, channels, eps)?;
        Ok(if opts.fold_batchnorm {
            Norm::Affine(bn.to_affine()?)
        } else {
            Norm::Literal(bn)
        })
    }
}

impl Norm {
    /// `relu(norm(x))` as a prologue for the NHWC kernel that reads `x`.
    pub fn relu_prologue(&self) -> Result<Prologue<'_>> {
        match self {
            Norm::Affine(a) => Ok(Prologue {
                scale: &a.host.0,
                shift: &a.host.1,
            }),
            Norm::Literal(_) => candle_core::bail!("an unfolded BatchNorm has no NHWC kernel"),
        }
    }
}

impl Module for Norm {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Norm::Affine(a) => a.forward(x),
            Norm::Literal(bn) => bn.forward(x),
        }
    }
}

/// LayerNorm over channels, with candle's operations (NCHW or `(n, c)` input) and the NHWC
/// kernel.
#[derive(Debug, Clone)]
pub struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    eps: f64,
    packed: Option<kernels::norm::LayerNorm>,
}

impl LayerNorm {
    pub fn load(vb: VarBuilder, channels: usize, eps: f64, opts: LoadOptions) -> Result<Self> {
        let (weight, bias) = (vb.get(channels, "weight")?, vb.get(channels, "bias")?);
        let packed = (!opts.stock && weight.device().is_cpu())
            .then(|| kernels::norm::LayerNorm::pack(&weight, &bias, eps, opts.isa))
            .transpose()?;
        Ok(Self {
            weight,
            bias,
            eps,
            packed,
        })
    }

    pub fn forward_nhwc(&self, x: &mut Act) -> Result<()> {
        match &self.packed {
            Some(ln) => ln.forward_in_place(x),
            None => candle_core::bail!("layer norm has no NHWC kernel (not packed)"),
        }
    }

    /// Over the last dimension of `x`.
    pub fn forward_last(&self, x: &Tensor) -> Result<Tensor> {
        candle_nn::ops::layer_norm(&x.contiguous()?, &self.weight, &self.bias, self.eps as f32)
    }

    pub fn has_nhwc_kernel(&self) -> bool {
        self.packed.is_some()
    }

    /// Over the channels of an NCHW tensor.
    pub fn forward_nchw(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_last(&x.permute((0, 2, 3, 1))?)?
            .permute((0, 3, 1, 2))
    }
}

/// `x * gate(expand(act(reduce(mean(x)))))`, with candle's operations and the NHWC kernel.
#[derive(Debug, Clone)]
pub struct SqueezeExcite {
    reduce: (Tensor, Tensor),
    expand: (Tensor, Tensor),
    act: Activation,
    gate: Gate,
    packed: Option<kernels::excite::SqueezeExcite>,
}

impl SqueezeExcite {
    /// `reduce`/`expand` name the two 1x1 convolutions (`conv_reduce`/`conv_expand` in
    /// EfficientNet, `fc1`/`fc2` in RegNet).
    pub fn load(
        vb: VarBuilder,
        names: (&str, &str),
        channels: usize,
        reduced: usize,
        act: Activation,
        gate: Gate,
        opts: LoadOptions,
    ) -> Result<Self> {
        let (r, e) = (vb.pp(names.0), vb.pp(names.1));
        let reduce = (
            r.get((reduced, channels, 1, 1), "weight")?,
            r.get(reduced, "bias")?,
        );
        let expand = (
            e.get((channels, reduced, 1, 1), "weight")?,
            e.get(channels, "bias")?,
        );
        let packed = (!opts.stock && reduce.0.device().is_cpu())
            .then(|| {
                kernels::excite::SqueezeExcite::pack(
                    (&reduce.0, &reduce.1),
                    (&expand.0, &expand.1),
                    act,
                    gate,
                    opts.isa,
                )
            })
            .transpose()?;
        Ok(Self {
            reduce,
            expand,
            act,
            gate,
            packed,
        })
    }

    pub fn forward_nhwc(&self, x: &mut Act) -> Result<()> {
        match &self.packed {
            Some(se) => se.forward_in_place(x),
            None => candle_core::bail!("squeeze-excite has no NHWC kernel (not packed)"),
        }
    }
}

impl Module for SqueezeExcite {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let s = x.mean_keepdim(3)?.mean_keepdim(2)?;
        let s = s
            .conv2d(&self.reduce.0, 0, 1, 1, 1)?
            .broadcast_add(&self.reduce.1.reshape((1, (), 1, 1))?)?;
        let s = activate(&s, self.act)?;
        let s = s
            .conv2d(&self.expand.0, 0, 1, 1, 1)?
            .broadcast_add(&self.expand.1.reshape((1, (), 1, 1))?)?;
        let g = match self.gate {
            Gate::Sigmoid => candle_nn::ops::sigmoid(&s)?,
            Gate::HardSigmoid => ((s + 3.0)?.clamp(0f32, 6f32)? / 6.0)?,
        };
        x.broadcast_mul(&g)
    }
}

/// Convolution followed by BatchNorm: folded into one convolution, or kept as two steps.
#[derive(Debug, Clone)]
pub enum ConvBn {
    Folded(Conv2d),
    Unfolded(Conv2d, BatchNorm),
}

impl ConvBn {
    /// `conv` and `bn` are the two modules' prefixes in the checkpoint (they are siblings
    /// with architecture-specific names, e.g. `conv1`/`bn1` or `conv_pw`/`bn1`).
    pub fn load(
        conv: VarBuilder,
        bn: VarBuilder,
        spec: ConvSpec,
        eps: f64,
        opts: LoadOptions,
    ) -> Result<Self> {
        let conv = Conv2d::load_unpacked(conv, spec, false)?;
        let bn = BatchNorm::load(bn, spec.out_channels, eps)?;
        Ok(if opts.fold_batchnorm {
            ConvBn::Folded(conv.fold_affine(&bn.to_affine()?, opts)?)
        } else {
            ConvBn::Unfolded(conv, bn)
        })
    }
}

impl ConvBn {
    /// The folded convolution, which is what the NHWC CPU kernels run (an unfolded
    /// BatchNorm has no NHWC kernel).
    pub fn nhwc(&self) -> Result<&Conv2d> {
        match self {
            ConvBn::Folded(conv) => Ok(conv),
            ConvBn::Unfolded(..) => candle_core::bail!("an unfolded BatchNorm has no NHWC kernel"),
        }
    }

    /// Whether this convolution runs on the NHWC CPU kernels (folded, CPU f32 weights).
    pub fn has_nhwc_kernel(&self) -> bool {
        self.nhwc().is_ok_and(Conv2d::has_nhwc_kernel)
    }

    pub fn forward_nhwc(&self, x: &Act, act: Activation, residual: Option<&Act>) -> Result<Act> {
        self.nhwc()?.forward_nhwc(x, act, residual)
    }

    /// [`Conv2d::forward_nhwc_onto`]: the output written over `residual` where it can be.
    pub fn forward_nhwc_onto(&self, x: &Act, act: Activation, residual: Act) -> Result<Act> {
        self.nhwc()?.forward_nhwc_onto(x, act, residual)
    }

    /// A stem: `max_pool_3x3_s2(act(self(x)))` ([`kernels::max_pool_3x3_s2`]), the two
    /// fused ([`Conv2d::forward_nhwc_then_max_pool`]) where they can be.
    pub fn forward_nhwc_then_max_pool(&self, x: &Act, act: Activation, isa: Isa) -> Result<Act> {
        let conv = self.nhwc()?;
        match conv.forward_nhwc_then_max_pool(x, act, isa)? {
            Some(pooled) => Ok(pooled),
            None => kernels::max_pool_3x3_s2(&conv.forward_nhwc(x, act, None)?, isa),
        }
    }

    /// [`Conv2d::forward_nhwc_then_depthwise`] of the two folded convolutions.
    pub fn forward_nhwc_then_depthwise(
        &self,
        x: &Act,
        act: Activation,
        next: &ConvBn,
        next_act: Activation,
    ) -> Result<Option<Act>> {
        self.nhwc()?
            .forward_nhwc_then_depthwise(x, act, next.nhwc()?, next_act)
    }
}

impl Module for ConvBn {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            ConvBn::Folded(conv) => conv.forward(x),
            ConvBn::Unfolded(conv, bn) => bn.forward(&conv.forward(x)?),
        }
    }
}

/// A fully connected classifier head (`nn.Linear`), with its class count taken from the
/// checkpoint. On the CPU it runs on [`kernels::Linear`] (packed at load, like a
/// convolution), elsewhere on candle's matmul.
#[derive(Debug, Clone)]
pub struct Classifier {
    weight: Tensor,
    bias: Tensor,
    packed: Option<kernels::Linear>,
}

impl Classifier {
    pub fn load(
        vb: VarBuilder,
        in_features: usize,
        num_classes: usize,
        opts: LoadOptions,
    ) -> Result<Self> {
        let weight = vb.get((num_classes, in_features), "weight")?;
        let bias = vb.get(num_classes, "bias")?;
        let packed = if opts.stock || !kernels::fast_path_for(&weight) {
            None
        } else {
            Some(kernels::Linear::pack(&weight, &bias, opts.isa)?)
        };
        Ok(Self {
            weight,
            bias,
            packed,
        })
    }
}

impl Module for Classifier {
    /// One image at a time on candle's matmul: a matrix product picks its blocking (and so
    /// its order of summation) from the batch size, and an image's scores must not depend
    /// on which other images share its batch (a resumed run would not reproduce an
    /// uninterrupted one). The CPU kernel has that property by construction.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if let (Some(linear), true) = (&self.packed, kernels::fast_path_for(x)) {
            let n = x.dim(0)?;
            let scores = linear.forward(&x.flatten_all()?.to_vec1::<f32>()?, n)?;
            return Tensor::from_vec(scores, (n, linear.outputs()), x.device());
        }
        let w = self.weight.t()?;
        let rows = (0..x.dim(0)?)
            .map(|i| x.narrow(0, i, 1)?.matmul(&w))
            .collect::<Result<Vec<_>>>()?;
        Tensor::cat(&rows, 0)?.broadcast_add(&self.bias)
    }
}

/// `MaxPool2d(kernel=3, stride=2, padding=1)` for non-negative input (it always follows a
/// ReLU): zero padding then equals PyTorch's implicit -inf padding.
pub fn max_pool_3x3_s2_after_relu(x: &Tensor) -> Result<Tensor> {
    x.pad_with_zeros(2, 1, 1)?
        .pad_with_zeros(3, 1, 1)?
        .max_pool2d_with_stride(3, 2)
}

/// `adaptive_avg_pool2d(x, 1)` followed by `flatten(1)`.
pub fn global_avg_pool(x: &Tensor) -> Result<Tensor> {
    x.mean(D::Minus1)?.mean(D::Minus1)
}

pub fn relu6(x: &Tensor) -> Result<Tensor> {
    x.clamp(0f32, 6f32)
}

/// An epilogue's activation on an NCHW tensor, with candle's operations (the stock path).
pub fn activate(x: &Tensor, act: Activation) -> Result<Tensor> {
    match act {
        Activation::Identity => Ok(x.clone()),
        Activation::Relu => x.relu(),
        Activation::Relu6 => relu6(x),
        Activation::HardSwish => x.mul(&((x + 3.0)?.clamp(0f32, 6f32)? / 6.0)?),
        Activation::Silu => x.silu(),
        Activation::Gelu => x.gelu_erf(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gpu_weights_take_candles_operations() {
        let fast = LoadOptions::default();
        assert!(!fast.for_device(true).stock);
        assert!(fast.for_device(false).stock);
        let stock = LoadOptions {
            stock: true,
            ..fast
        };
        assert!(stock.for_device(true).stock);
    }

    #[test]
    fn tf_same_padding_matches_tensorflow() {
        // 224 -> 112 with k3 s2 needs one pixel, all of it at the end.
        assert_eq!(tf_same_padding(224, 3, 2), (0, 1));
        assert_eq!(tf_same_padding(225, 3, 2), (1, 1));
        assert_eq!(tf_same_padding(112, 5, 2), (1, 2));
        assert_eq!(tf_same_padding(14, 5, 1), (2, 2));
        assert_eq!(tf_same_padding(7, 3, 1), (1, 1));
        assert_eq!(tf_same_padding(1, 5, 2), (2, 2));
    }
}
