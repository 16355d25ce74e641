//! A loaded model with everything needed to use it: the network on its device, the
//! preprocessing its weights expect, and its class names. Images in, top-k out. The CLI
//! pipeline, the server and the benchmark all go through this.

use candle_core::{Device, Module, Tensor};
use serde::Serialize;

use crate::config::ModelSettings;
use crate::hub::{self, HubOptions, ModelConfig, ResolvedModel};
use crate::labels::{Labels, LabelsError};
use crate::model::{Arch, LoadOptions, ModelError, Network};
use crate::preprocess::{self, DecodeError, Interpolation, PreprocessConfig};
use crate::weights::{Checkpoint, WeightsError};

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Hub(#[from] hub::HubError),
    #[error(transparent)]
    Weights(#[from] WeightsError),
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error("{} is a {fits} checkpoint, not {asked} (--model {fits})", path.display())]
    WrongModel {
        path: std::path::PathBuf,
        asked: &'static str,
        fits: &'static str,
        source: Box<ModelError>,
    },
    #[error(transparent)]
    Labels(#[from] LabelsError),
    #[error(transparent)]
    Isa(#[from] crate::model::kernels::isa::IsaError),
    #[error("cannot open device: {0}")]
    Device(#[source] candle_core::Error),
    #[error("model config: {0}")]
    Config(String),
}

/// One class of a prediction: index, name, softmax probability.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Prediction {
    pub index: usize,
    pub label: String,
    /// The label's id where one is known (ImageNet WordNet id).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wnid: Option<String>,
    pub score: f32,
}

#[derive(Debug)]
pub struct Engine {
    name: String,
    arch: Arch,
    network: Network,
    num_classes: usize,
    preprocess: PreprocessConfig,
    labels: Labels,
    device: Device,
    max_pixels: u64,
}

/// Preprocessing from a timm `pretrained_cfg`, over the architecture's defaults.
fn preprocess_from_config(
    arch: Arch,
    config: Option<&ModelConfig>,
) -> Result<(PreprocessConfig, f64), EngineError> {
    let mut cfg = arch.default_preprocess();
    let mut crop_pct = cfg.input_size as f64 / cfg.resize_size as f64;
    let Some(pc) = config.map(|c| &c.pretrained_cfg) else {
        return Ok((cfg, crop_pct));
    };
    // What classify does not reproduce is refused, never approximated: the labels would be
    // plausible and wrong.
    let refuse = |what: String| {
        EngineError::Config(format!(
            "config.json asks for {what}, which classify does not implement; refusing to \
             preprocess differently from timm"
        ))
    };
    if let Some(size) = &pc.input_size {
        match size.as_slice() {
            [3, h, w] | [h, w] if h == w => cfg.input_size = *h,
            other => {
                return Err(refuse(format!(
                    "input_size {other:?} (only square RGB inputs)"
                )))
            }
        }
    }
    if let Some(p) = pc.crop_pct {
        if let Some(problem) = preprocess::crop_pct_problem(p) {
            return Err(EngineError::Config(format!("config.json: {problem}")));
        }
        crop_pct = p;
    }
    cfg.resize_size = preprocess::resize_size_for(cfg.input_size, crop_pct);
    if let Some(i) = &pc.interpolation {
        cfg.interpolation = match i.as_str() {
            "bilinear" => Interpolation::Bilinear,
            "bicubic" => Interpolation::Bicubic,
            other => return Err(refuse(format!("interpolation `{other}`"))),
        };
    }
    if let Some(mode) = pc.crop_mode.as_deref().filter(|m| *m != "center") {
        return Err(refuse(format!("crop_mode `{mode}` (only `center`)")));
    }
    // One value serves every channel, as torchvision's Normalize broadcasts it.
    let triple = |v: &Vec<f32>, what: &str| match v.as_slice() {
        &[one] => Ok([one; 3]),
        values => <[f32; 3]>::try_from(values).map_err(|_| {
            EngineError::Config(format!(
                "{what} must have 3 values (or 1 for all three), not {}",
                values.len()
            ))
        }),
    };
    if let Some(m) = &pc.mean {
        cfg.mean = triple(m, "mean")?;
    }
    if let Some(s) = &pc.std {
        cfg.std = triple(s, "std")?;
    }
    cfg.check()
        .map_err(|problem| EngineError::Config(format!("config.json: {problem}")))?;
    Ok((cfg, crop_pct))
}

impl Engine {
    /// Resolve, download if needed, and load the model `settings` names.
    pub fn load(settings: &ModelSettings, hub: &HubOptions) -> Result<Self, EngineError> {
        // The kernels' instruction set first: a bad CLASSIFY_CPU_ISA fails before any I/O.
        let opts = LoadOptions::from_env()?;
        let ResolvedModel {
            arch,
            weights,
            config,
        } = hub::resolve(&settings.model, settings.weights.as_deref(), hub)?;
        let device = settings.device.open().map_err(EngineError::Device)?;
        tracing::info!(%arch, weights = %weights.display(), ?device, isa = %opts.isa, "loading model");
        let checkpoint = Checkpoint::open(&weights)?;
        let (network, num_classes, arch) =
            match Network::from_checkpoint(arch, checkpoint.clone(), &device, opts) {
                Ok(built) => built,
                Err(
                    e @ (ModelError::NoClassifier { .. }
                    | ModelError::Build { .. }
                    | ModelError::UnusedTensors { .. }),
                ) => {
                    return Err(match Network::fitting_arch(&checkpoint, arch, opts) {
                        Some(fits) => EngineError::WrongModel {
                            path: weights.clone(),
                            asked: arch.name(),
                            fits: fits.name(),
                            source: Box::new(e),
                        },
                        None => e.into(),
                    })
                }
                Err(e) => return Err(e.into()),
            };
        let (base, crop_pct) = preprocess_from_config(arch, config.as_ref())?;
        let preprocess = settings.preprocess.apply(&base, crop_pct);
        preprocess
            .check()
            .map_err(|problem| EngineError::Config(format!("preprocessing: {problem}")))?;
        let config_labels = config
            .as_ref()
            .and_then(|c| Some((c.label_names.as_ref()?, &c.label_descriptions)));
        let (labels, source) = match (&settings.labels, config_labels) {
            (Some(path), _) => (
                Labels::from_file(path)?,
                format!("labels file {}", path.display()),
            ),
            (None, Some((names, descriptions))) => (
                Labels::from_config(names, descriptions).map_err(|reason| {
                    EngineError::Config(format!("config.json's label_names: {reason}"))
                })?,
                "config.json's label_names".to_string(),
            ),
            (None, None) => (
                Labels::default_for(num_classes),
                "the built-in labels".to_string(),
            ),
        };
        if labels.check_count(num_classes, &source)? {
            if labels.is_empty() {
                tracing::warn!(
                    "the model has {num_classes} classes, not ImageNet-1k's 1000: they are \
                     shown as class_N (--labels FILE names them)"
                );
            } else {
                tracing::warn!(
                    "{source} does not name all {num_classes} classes of the model; the \
                     others are shown as class_N"
                );
            }
        }
        Ok(Self {
            name: settings.name.clone(),
            arch,
            network,
            num_classes,
            preprocess,
            labels,
            device,
            max_pixels: settings.max_pixels,
        })
    }

    /// An engine around an already built network (tests, benchmarks).
    pub fn from_parts(
        name: &str,
        arch: Arch,
        network: Network,
        num_classes: usize,
        device: Device,
    ) -> Self {
        Self {
            name: name.to_string(),
            arch,
            network,
            num_classes,
            preprocess: arch.default_preprocess(),
            labels: Labels::default_for(num_classes),
            device,
            max_pixels: preprocess::DEFAULT_MAX_PIXELS,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }
    pub fn arch(&self) -> Arch {
        self.arch
    }
    pub fn num_classes(&self) -> usize {
        self.num_classes
    }
    pub fn preprocess_config(&self) -> &PreprocessConfig {
        &self.preprocess
    }
    pub fn labels(&self) -> &Labels {
        &self.labels
    }
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Encoded image bytes to the network's input (pure CPU work; call from any thread).
    pub fn preprocess(&self, bytes: &[u8]) -> Result<Vec<f32>, DecodeError> {
        preprocess::preprocess(bytes, &self.preprocess, self.max_pixels)
    }

    /// Run preprocessed images through the network: logits `(batch, num_classes)`.
    pub fn logits(&self, images: &[Vec<f32>]) -> candle_core::Result<Tensor> {
        let s = self.preprocess.input_size as usize;
        let data: Vec<f32> = images.iter().flatten().copied().collect();
        let x = Tensor::from_vec(data, (images.len(), 3, s, s), &Device::Cpu)?
            .to_device(&self.device)?;
        self.network.forward(&x)
    }

    /// Top-`k` predictions per image (k is clamped to the class count), best first.
    pub fn classify(
        &self,
        images: &[Vec<f32>],
        k: usize,
    ) -> candle_core::Result<Vec<Vec<Prediction>>> {
        if images.is_empty() {
            return Ok(Vec::new());
        }
        let logits = self
            .logits(images)?
            .to_dtype(candle_core::DType::F32)?
            .to_vec2::<f32>()?;
        Ok(logits.iter().map(|row| self.top_k(row, k)).collect())
    }

    fn top_k(&self, logits: &[f32], k: usize) -> Vec<Prediction> {
        let probs = softmax(logits);
        let mut order: Vec<usize> = (0..probs.len()).collect();
        // Stable sort: equal scores keep class order, so output is deterministic.
        order.sort_by(|&a, &b| probs[b].total_cmp(&probs[a]));
        order
            .into_iter()
            .take(k.min(probs.len()))
            .map(|index| Prediction {
                index,
                label: self.labels.name(index).into_owned(),
                wnid: self.labels.id(index).map(str::to_string),
                score: probs[index],
            })
            .collect()
    }
}

pub fn softmax(logits: &[f32]) -> Vec<f32> {
    let max = logits.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    let exp: Vec<f32> = logits.iter().map(|&v| (v - max).exp()).collect();
    let sum: f32 = exp.iter().sum();
    exp.into_iter().map(|v| v / sum).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn softmax_sums_to_one_and_keeps_order() {
        let p = softmax(&[1.0, 3.0, 2.0, 10.0]);
        assert!((p.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert!(p[3] > 0.99 && p[1] > p[2] && p[2] > p[0]);
    }

    #[test]
    fn config_preprocessing_over_arch_defaults() {
        let config: ModelConfig = serde_json::from_str(
            r#"{"architecture": "resnet50", "pretrained_cfg": {"input_size": [3, 288, 288],
                "crop_pct": 1.0, "interpolation": "bicubic", "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}}"#,
        )
        .unwrap();
        let (cfg, crop_pct) =
            preprocess_from_config(Arch::from_name("resnet50").unwrap(), Some(&config)).unwrap();
        assert_eq!((cfg.input_size, cfg.resize_size, crop_pct), (288, 288, 1.0));
        assert_eq!(cfg.interpolation, Interpolation::Bicubic);
        assert_eq!(cfg.mean, [0.5; 3]);
        let (cfg, _) = preprocess_from_config(Arch::from_name("resnet50").unwrap(), None).unwrap();
        assert_eq!(
            cfg,
            Arch::from_name("resnet50").unwrap().default_preprocess()
        );
    }

    /// A config.json whose preprocessing would divide by zero, or ask for an absurd resize,
    /// is refused with what it asks for, never run.
    #[test]
    fn a_single_mean_and_std_serve_every_channel() {
        let arch = Arch::from_name("resnet50").unwrap();
        let config: ModelConfig =
            serde_json::from_str(r#"{"pretrained_cfg": {"mean": [0.5], "std": [0.25]}}"#).unwrap();
        let (cfg, _) = preprocess_from_config(arch, Some(&config)).unwrap();
        assert_eq!((cfg.mean, cfg.std), ([0.5; 3], [0.25; 3]));
        let config: ModelConfig =
            serde_json::from_str(r#"{"pretrained_cfg": {"mean": [0.5, 0.5]}}"#).unwrap();
        let err = preprocess_from_config(arch, Some(&config)).unwrap_err();
        assert!(err.to_string().contains("mean must have 3 values"), "{err}");
    }

    #[test]
    fn config_preprocessing_that_cannot_work_is_refused() {
        let arch = Arch::from_name("resnet50").unwrap();
        for (cfg, says) in [
            (
                r#""std": [0.0, 0.0, 0.0]"#,
                "config.json: std [0.0, 0.0, 0.0]",
            ),
            (
                r#""std": [0.5, -0.5, 0.5]"#,
                "config.json: std [0.5, -0.5, 0.5]",
            ),
            (r#""crop_pct": 0.0"#, "config.json: crop_pct 0 is not"),
            (r#""crop_pct": -0.9"#, "config.json: crop_pct -0.9 is not"),
            (r#""crop_pct": 0.01"#, "resized to 22400 pixels"),
            (r#""crop_pct": 100.0"#, "resized to 2 pixels"),
        ] {
            let config: ModelConfig =
                serde_json::from_str(&format!(r#"{{"pretrained_cfg": {{{cfg}}}}}"#)).unwrap();
            let err = preprocess_from_config(arch, Some(&config))
                .unwrap_err()
                .to_string();
            assert!(err.contains(says), "{cfg}: {err}");
        }
    }
}
