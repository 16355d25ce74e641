//! candle's own operations, kept as the stock path (and the only one on GPUs) and as the
//! reference every kernel is tested against.

use candle_core::{Result, Tensor};

use super::Pad2d;

/// candle's own convolution (any group count), with explicit zero padding when it is
/// asymmetric: the stock path and the reference for tests.
pub fn conv2d_reference(
    x: &Tensor,
    weight: &Tensor,
    stride: usize,
    pad: Pad2d,
    groups: usize,
) -> Result<Tensor> {
    if pad == Pad2d::uniform(pad.top) {
        return x.conv2d(weight, pad.top, stride, 1, groups);
    }
    let x = x
        .pad_with_zeros(2, pad.top, pad.bottom)?
        .pad_with_zeros(3, pad.left, pad.right)?;
    x.conv2d(weight, 0, stride, 1, groups)
}
