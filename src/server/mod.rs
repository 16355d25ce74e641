//! `classify serve`: the classification pipeline behind HTTP.
//!
//! [`app`] builds the router over a typed shared [`AppState`]; [`serve`] binds it, loads the
//! models in the background (`/ready` says 503 until each has had a warm-up pass; see
//! `models.rs` for how several models share one server) and shuts down gracefully on
//! SIGINT/SIGTERM. Inference never runs on the async executor: decoding runs
//! on the blocking pool (bounded by a semaphore), the network on the batcher's thread.

mod access;
mod batcher;
mod error;
mod grpc;
mod kserve;
mod metrics;
mod models;
mod openapi;
mod pages;
mod routes;
mod torchserve;

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request, State};
use axum::http::{Method, StatusCode, Uri};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use tokio::sync::Semaphore;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::trace::{DefaultOnFailure, TraceLayer};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub use access::{Access, AccessError, ApiKeys, KEYS_ENV};
pub use batcher::BatchConfig;
pub use error::ApiError;
use metrics::Metrics;
use models::Models;
pub use models::{check_names, served_name, DuplicateName, ModelEntry};
pub use routes::{parse_payload, Payload};

use crate::config::ModelSettings;
use crate::engine::Engine;
use crate::hub::HubOptions;

/// Limits applied to every request.
#[derive(Debug, Clone, Copy)]
pub struct ServerLimits {
    pub max_body_bytes: usize,
    pub request_timeout: Duration,
    pub default_top_k: usize,
    /// A client must send its complete request head within this (slow-client guard).
    pub header_read_timeout: Duration,
}

/// Largest request head (request line + headers); beyond it the answer is 431.
pub const MAX_HEADER_BYTES: usize = 64 * 1024;

impl Default for ServerLimits {
    fn default() -> Self {
        Self {
            max_body_bytes: 20 * 1024 * 1024,
            request_timeout: Duration::from_secs(30),
            default_top_k: 5,
            header_read_timeout: Duration::from_secs(10),
        }
    }
}

impl Default for BatchConfig {
    fn default() -> Self {
        Self {
            max_batch_size: 16,
            max_batch_delay: Duration::ZERO,
            queue_capacity: 256,
        }
    }
}

/// One model of `classify serve`: how to load it and how it is served.
#[derive(Debug, Clone)]
pub struct ServeModel {
    pub settings: ModelSettings,
    /// Its URL name and batching.
    pub entry: ModelEntry,
}

/// Everything `classify serve` needs.
#[derive(Debug, Clone)]
pub struct ServeSettings {
    /// In order; the first is the default model. Never empty.
    pub models: Vec<ServeModel>,
    pub host: IpAddr,
    pub port: u16,
    /// The Open Inference Protocol's gRPC service on this port (same host), if given.
    pub grpc_port: Option<u16>,
    pub limits: ServerLimits,
    pub access: Access,
}

struct Shared {
    models: Models,
    /// The OpenAPI document, made once by [`app`].
    openapi: OnceLock<serde_json::Value>,
    metrics: Metrics,
    limits: ServerLimits,
    access: Access,
    decode_permits: Semaphore,
}

/// Shared state of the server: the models (each loading, then ready, with its batcher),
/// limits, access rules and metrics.
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

impl AppState {
    /// State for an open server (no API keys, no CORS) with one model, still loading; see
    /// [`AppState::install`].
    pub fn new(model_name: &str, limits: ServerLimits, batch: BatchConfig) -> Self {
        Self::with_access(model_name, limits, batch, Access::default())
    }

    /// [`AppState::new`] with API keys and CORS origins.
    pub fn with_access(
        model_name: &str,
        limits: ServerLimits,
        batch: BatchConfig,
        access: Access,
    ) -> Self {
        Self::with_models(vec![ModelEntry::new(model_name, batch)], limits, access)
            .expect("one model has no duplicate name")
    }

    /// State for several models, all still loading; see [`AppState::install_model`].
    pub fn with_models(
        models: Vec<ModelEntry>,
        limits: ServerLimits,
        access: Access,
    ) -> Result<Self, DuplicateName> {
        let decoders = std::thread::available_parallelism().map_or(2, |n| n.get()) * 2;
        Ok(Self(Arc::new(Shared {
            models: Models::new(models)?,
            openapi: OnceLock::new(),
            metrics: Metrics::default(),
            limits,
            access,
            decode_permits: Semaphore::new(decoders),
        })))
    }

    /// Put the (first) model in service: warm it up, start its batcher, report it ready.
    /// Blocking; call it off the async executor.
    pub fn install(&self, engine: Engine) -> candle_core::Result<()> {
        self.0.models.default_model().install(engine)
    }

    /// Put the model served as `name` in service (see [`AppState::install`]).
    pub fn install_model(&self, name: &str, engine: Engine) -> anyhow::Result<()> {
        let model = self
            .0
            .models
            .get(name)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        Ok(model.install(engine)?)
    }

    /// A ready state around an already loaded engine (tests, embedding).
    pub fn with_engine(
        engine: Engine,
        limits: ServerLimits,
        batch: BatchConfig,
    ) -> candle_core::Result<Self> {
        let state = Self::new(engine.name(), limits, batch);
        state.install(engine)?;
        Ok(state)
    }

    /// A ready state around several loaded engines, served under the given names (the
    /// first is the default model).
    pub fn with_engines(
        engines: Vec<(String, Engine, BatchConfig)>,
        limits: ServerLimits,
        access: Access,
    ) -> anyhow::Result<Self> {
        let entries = engines
            .iter()
            .map(|(name, engine, batch)| ModelEntry {
                source: engine.name().to_string(),
                name: name.clone(),
                batch: *batch,
            })
            .collect();
        let state = Self::with_models(entries, limits, access)?;
        for (name, engine, _) in engines {
            state.install_model(&name, engine)?;
        }
        Ok(state)
    }

    /// Every model is loaded and warmed up.
    pub fn is_ready(&self) -> bool {
        self.0.models.all_ready()
    }

    pub(crate) fn models(&self) -> &Models {
        &self.0.models
    }
}

/// Record each request's route, status and latency.
async fn track(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |p| p.as_str().to_string());
    let start = Instant::now();
    let response = next.run(request).await;
    state
        .0
        .metrics
        .observe_request(&route, response.status().as_u16(), start.elapsed());
    models::observe(&response, start);
    response
}

/// The whole HTTP interface over `state`. Where API keys are configured, the inference and
/// model routes (and `/metrics` with `protect_metrics`) need one; health, readiness, the
/// upload page itself and the API documentation stay open.
pub fn app(state: AppState) -> Router {
    let access = &state.0.access;
    let keys = access.api_keys.clone();
    let guard = |router: OpenApiRouter<AppState>| match &keys {
        Some(keys) => router.route_layer(middleware::from_fn_with_state(
            keys.clone(),
            access::require_key,
        )),
        None => router,
    };
    let protected = guard(
        OpenApiRouter::new()
            .routes(routes!(routes::form_result))
            .routes(routes!(routes::predict))
            .merge(kserve::model_routes())
            .merge(torchserve::model_routes()),
    );
    let metrics = OpenApiRouter::new().routes(routes!(routes::metrics));
    let metrics = if access.protect_metrics {
        guard(metrics)
    } else {
        metrics
    };
    let (router, api) = OpenApiRouter::new()
        .routes(routes!(routes::index))
        .routes(routes!(routes::health))
        .routes(routes!(routes::ready))
        .routes(routes!(openapi::document))
        .merge(kserve::health_routes())
        .merge(torchserve::health_routes())
        .merge(protected)
        .merge(metrics)
        .split_for_parts();
    let mut doc = serde_json::to_value(&api).unwrap_or_default();
    openapi::finish(
        &mut doc,
        &state.models().names(),
        keys.is_some(),
        access.protect_metrics,
    );
    let _ = state.0.openapi.set(doc);
    let router = router
        .route("/favicon.ico", get(|| async { StatusCode::NO_CONTENT }))
        .with_state(state.clone())
        .merge(openapi::docs_routes())
        .fallback(|method: Method, uri: Uri| async move {
            ApiError::NotFound(format!(
                "no endpoint {method} {}: GET /docs lists them",
                uri.path()
            ))
        })
        .method_not_allowed_fallback(|method: Method, uri: Uri| async move {
            ApiError::MethodNotAllowed(format!(
                "{method} is not allowed on {} (the Allow header says what is; the upload \
                 page is GET /)",
                uri.path()
            ))
        })
        .layer(middleware::from_fn_with_state(state.clone(), track))
        .layer(CatchPanicLayer::custom(|_| {
            ApiError::Internal.into_response()
        }))
        // 503s while loading and under load are expected; keep them out of error logs.
        .layer(
            TraceLayer::new_for_http()
                .on_failure(DefaultOnFailure::new().level(tracing::Level::DEBUG)),
        );
    // Checked when the settings were built (`Access::cors` in `classify serve`).
    match state.0.access.cors().ok().flatten() {
        Some(cors) => router.layer(cors),
        None => router,
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = terminate => {},
    }
    tracing::info!("shutting down: finishing in-flight requests");
}

/// Serve connections until `stop` resolves, then let in-flight requests finish (at most 30 s).
/// Each connection is HTTP/1.1 with a deadline for the request head and a cap on its size.
async fn accept_loop(
    listener: tokio::net::TcpListener,
    app: Router,
    header_read_timeout: Duration,
    stop: impl std::future::Future<Output = ()>,
) {
    use hyper_util::rt::{TokioIo, TokioTimer};
    use hyper_util::service::TowerToHyperService;

    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut stop = std::pin::pin!(stop);
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Typically EMFILE: back off instead of spinning.
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut stop => break,
        };
        let service = TowerToHyperService::new(app.clone());
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(header_read_timeout)
            .max_buf_size(MAX_HEADER_BYTES);
        let conn = graceful.watch(builder.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!("connection ended: {e}");
            }
        });
    }
    drop(listener);
    tokio::select! {
        _ = graceful.shutdown() => {},
        _ = tokio::time::sleep(Duration::from_secs(30)) => tracing::warn!("in-flight requests still running after 30 s; exiting"),
    }
}

/// Bind, load the models in the background, serve until SIGINT/SIGTERM.
pub async fn serve(settings: ServeSettings, hub: HubOptions) -> anyhow::Result<()> {
    settings.access.cors()?;
    if let Some(keys) = &settings.access.api_keys {
        eprintln!(
            "classify: API keys required on inference and model routes ({} configured)",
            keys.len()
        );
    }
    let state = AppState::with_models(
        settings.models.iter().map(|m| m.entry.clone()).collect(),
        settings.limits,
        settings.access.clone(),
    )?;
    let listener = tokio::net::TcpListener::bind(SocketAddr::new(settings.host, settings.port))
        .await
        .map_err(|e| {
            anyhow::anyhow!("cannot listen on {}:{}: {e}", settings.host, settings.port)
        })?;
    let addr = listener.local_addr()?;
    eprintln!("classify: listening on http://{addr}");
    if !crate::preprocess::jpeg_simd() {
        eprintln!("classify: warning: {}", crate::preprocess::NO_JPEG_SIMD);
    }
    let grpc_listener = match settings.grpc_port {
        Some(port) => {
            let listener = tokio::net::TcpListener::bind(SocketAddr::new(settings.host, port))
                .await
                .map_err(|e| {
                    anyhow::anyhow!("cannot listen on {}:{port} for gRPC: {e}", settings.host)
                })?;
            eprintln!(
                "classify: gRPC (Open Inference Protocol) on {}",
                listener.local_addr()?
            );
            Some(listener)
        }
        None => None,
    };

    // Models load one after another (each wants every core); each serves as soon as it
    // is warm. One that cannot load stops the server, naming it.
    let (failed_tx, failed_rx) = tokio::sync::oneshot::channel::<anyhow::Error>();
    let loader_state = state.clone();
    let models = settings.models.clone();
    std::thread::spawn(move || {
        for model in models {
            let (source, name) = (&model.settings.name, &model.entry.name);
            let result = Engine::load(&model.settings, &hub)
                .map_err(anyhow::Error::from)
                .and_then(|engine| loader_state.install_model(name, engine));
            match result {
                Ok(()) if source == name => eprintln!("classify: model {name} loaded; ready"),
                Ok(()) => eprintln!("classify: model {source} loaded as {name}; ready"),
                Err(e) => {
                    let _ = failed_tx.send(e.context(format!("cannot load the model {source}")));
                    return;
                }
            }
        }
    });

    // Both listeners stop together: on a signal, or when a model cannot load. The error
    // is kept by the future that stops the accept loop, so it is there once the loop has
    // returned (a task of its own could still be finishing then, and the failure read as a
    // clean exit).
    let (stopping_tx, stopping) = tokio::sync::watch::channel(false);
    let failure = std::sync::Arc::new(std::sync::Mutex::new(None::<anyhow::Error>));
    let stop = {
        let failure = failure.clone();
        async move {
            tokio::select! {
                _ = shutdown_signal() => {},
                // An Err means the loader succeeded and dropped the sender: keep serving.
                Ok(e) = failed_rx => {
                    *failure.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
                }
            }
            let _ = stopping_tx.send(true);
        }
    };
    let grpc = grpc_listener.map(|listener| {
        let mut stopping = stopping.clone();
        let stop = async move {
            let _ = stopping.wait_for(|s| *s).await;
        };
        tokio::spawn(grpc::serve(listener, state.clone(), stop))
    });
    accept_loop(
        listener,
        app(state),
        settings.limits.header_read_timeout,
        stop,
    )
    .await;
    if let Some(grpc) = grpc {
        match tokio::time::timeout(Duration::from_secs(30), grpc).await {
            Ok(Ok(Err(e))) => tracing::warn!("gRPC server: {e}"),
            Err(_) => tracing::warn!("gRPC calls still running after 30 s; exiting"),
            _ => {}
        }
    }
    let failure = failure.lock().unwrap_or_else(|p| p.into_inner()).take();
    match failure {
        Some(e) => Err(e),
        None => Ok(()),
    }
}
