//! classify: image classification with ResNet, DenseNet and EfficientNet-Lite in candle,
//! matching PyTorch's predictions for the same weights and image.

pub mod model;
pub mod preprocess;
pub mod weights;
