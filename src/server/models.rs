//! The models one server hosts. Each has its URL name, its own bounded queue and batcher
//! thread and its own metrics; the CPU thread pool is shared. The first model is the
//! default (for `/predict` and the page); every other route names its model.

use std::sync::{Arc, OnceLock};
use std::time::Instant;

use axum::response::Response;

use super::batcher::{BatchConfig, Batcher};
use super::error::ApiError;
use super::metrics::ModelMetrics;
use crate::engine::Engine;

/// A model to serve: where it comes from, the name it is served under, how it is batched.
#[derive(Debug, Clone)]
pub struct ModelEntry {
    /// The model as given (`densenet121`, `timm/resnet50.tv_in1k@main`); reported as `model`
    /// in `/predict` answers.
    pub source: String,
    /// Its name in URLs (`/v2/models/{name}`, `/predictions/{name}`, `?model=`).
    pub name: String,
    pub batch: BatchConfig,
}

impl ModelEntry {
    /// Served under [`served_name`] of `source`.
    pub fn new(source: &str, batch: BatchConfig) -> Self {
        Self {
            source: source.to_string(),
            name: served_name(source),
            batch,
        }
    }
}

/// Two models would answer to the same URL name.
#[derive(Debug, thiserror::Error)]
#[error("two models would be served as `{0}`: give one another name (`name = \"...\"` in --models-file)")]
pub struct DuplicateName(pub String);

pub(super) struct Loaded {
    pub engine: Arc<Engine>,
    pub batcher: Batcher,
}

/// One hosted model: loading until [`ServedModel::install`] has run, then ready.
pub struct ServedModel {
    pub entry: ModelEntry,
    loaded: OnceLock<Loaded>,
    pub(super) metrics: Arc<ModelMetrics>,
}

impl ServedModel {
    pub fn name(&self) -> &str {
        &self.entry.name
    }

    pub fn source(&self) -> &str {
        &self.entry.source
    }

    pub fn is_ready(&self) -> bool {
        self.loaded.get().is_some()
    }

    pub(super) fn loaded(&self) -> Result<&Loaded, ApiError> {
        self.loaded.get().ok_or(ApiError::NotReady)
    }

    pub(super) fn queue_depth(&self) -> usize {
        self.loaded.get().map_or(0, |l| l.batcher.depth())
    }

    /// Run a warm-up pass, start the batcher, then report ready. Blocking.
    pub fn install(&self, engine: Engine) -> candle_core::Result<()> {
        let s = engine.preprocess_config().input_size as usize;
        engine.classify(&[vec![0.0; 3 * s * s]], 1)?;
        let engine = Arc::new(engine);
        let batcher = Batcher::start(engine.clone(), self.entry.batch, self.metrics.clone());
        let _ = self.loaded.set(Loaded { engine, batcher });
        Ok(())
    }
}

/// Every hosted model, in the order given; never empty.
pub struct Models(Vec<Arc<ServedModel>>);

impl Models {
    /// # Panics
    /// If `entries` is empty (the CLI always gives at least one model).
    pub fn new(entries: Vec<ModelEntry>) -> Result<Self, DuplicateName> {
        assert!(!entries.is_empty(), "a server needs at least one model");
        check_names(&entries)?;
        Ok(Self(
            entries
                .into_iter()
                .map(|entry| {
                    Arc::new(ServedModel {
                        entry,
                        loaded: OnceLock::new(),
                        metrics: Arc::default(),
                    })
                })
                .collect(),
        ))
    }

    /// The first model: what `/predict` and the page use unless told otherwise.
    pub fn default_model(&self) -> &Arc<ServedModel> {
        &self.0[0]
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<ServedModel>> {
        self.0.iter()
    }

    pub fn all_ready(&self) -> bool {
        self.0.iter().all(|m| m.is_ready())
    }

    /// The model served as `name` (404 naming the ones there are).
    pub fn get(&self, name: &str) -> Result<&Arc<ServedModel>, ApiError> {
        self.0.iter().find(|m| m.name() == name).ok_or_else(|| {
            let shown: String = name.chars().take(64).collect();
            ApiError::NotFound(format!(
                "unknown model `{shown}`; this server serves {}",
                self.names()
                    .iter()
                    .map(|n| format!("`{n}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        })
    }

    /// `name` if given, else the default.
    pub fn pick(&self, name: Option<&str>) -> Result<&Arc<ServedModel>, ApiError> {
        match name {
            Some(n) if !n.is_empty() => self.get(n),
            _ => Ok(self.default_model()),
        }
    }

    /// Every model's URL name, the default first.
    pub fn names(&self) -> Vec<String> {
        self.0.iter().map(|m| m.name().to_string()).collect()
    }
}

/// The only version each model has (TorchServe's and the Open Inference Protocol's
/// versioned routes, gRPC's `version` fields).
pub const MODEL_VERSION: &str = "1";

/// 404 unless `version` is the one version every model has.
pub fn check_version(name: &str, version: &str) -> Result<(), ApiError> {
    if version == MODEL_VERSION {
        Ok(())
    } else {
        let shown: String = version.chars().take(64).collect();
        Err(ApiError::NotFound(format!(
            "model `{name}` has no version `{shown}` (it has `{MODEL_VERSION}`)"
        )))
    }
}

/// Refuse two models with the same URL name.
pub fn check_names<'a>(
    entries: impl IntoIterator<Item = &'a ModelEntry>,
) -> Result<(), DuplicateName> {
    let mut seen = std::collections::HashSet::new();
    for e in entries {
        if !seen.insert(e.name.as_str()) {
            return Err(DuplicateName(e.name.clone()));
        }
    }
    Ok(())
}

/// `timm/resnet50.tv_in1k@main` -> `resnet50.tv_in1k`: a name that fits in a URL segment.
pub fn served_name(model: &str) -> String {
    let base = model.trim_end_matches('/');
    let base = base.rsplit('/').next().unwrap_or(base);
    let base = base.split('@').next().unwrap_or(base);
    let name: String = base
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    if name.is_empty() || name.chars().all(|c| c == '.') {
        "model".into()
    } else {
        name
    }
}

/// Tag a response with the model that answered it, so the request tracker can count it
/// in that model's series.
pub(super) fn answered_by(model: &Arc<ServedModel>, response: Response) -> Response {
    let mut response = response;
    response.extensions_mut().insert(model.clone());
    response
}

/// Count a finished request in its model's series (if a model answered it).
pub(super) fn observe(response: &Response, start: Instant) {
    if let Some(model) = response.extensions().get::<Arc<ServedModel>>() {
        model
            .metrics
            .observe_request(response.status().as_u16(), start.elapsed());
    }
}
