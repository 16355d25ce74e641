//! classify: image classification with ResNet, DenseNet and EfficientNet-Lite in candle,
//! matching PyTorch's predictions for the same weights and image.
//!
//! Layers, from the edges in: [`cli`] (arguments) -> [`config`] (validated settings) ->
//! [`app`] (entry points) -> [`pipeline`] / [`output`] / [`server`] -> [`engine`] (a loaded model) ->
//! [`model`], [`preprocess`], [`weights`], [`hub`], [`labels`].

#![deny(unsafe_op_in_unsafe_fn)]

pub mod allocator;
pub mod app;
pub mod bench;
pub mod cli;
pub mod config;
pub mod engine;
pub mod hub;
pub mod labels;
pub mod model;
pub mod output;
pub mod pipeline;
pub mod preprocess;
pub mod server;
pub mod weights;
