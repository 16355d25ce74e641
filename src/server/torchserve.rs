//! TorchServe's inference API, for clients written against it: `POST`/`PUT
//! /predictions/{model}[/{version}]` with an image (raw body, as `curl -T kitten.jpg`, or a
//! multipart `data`/`file` field), answered like TorchServe's default image classifier
//! handler: one JSON object `{"label": probability, ...}`, top-k, most probable first.
//! `GET /ping` and `GET /models` (TorchServe's management API, on the same port here).

use axum::extract::{Path, Query, Request, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::ser::{Serialize, SerializeMap, Serializer};
use serde_json::json;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::ApiError;
use super::models::{answered_by, check_version, MODEL_VERSION};
#[allow(unused_imports)] // named in the `#[utoipa::path]` annotations
use super::openapi::{ErrorBody, LabelScoresDoc};
use super::routes::{
    classify_bytes, content_type, multipart_images, read_body, resolve_top_k, with_timeout,
    PredictQuery,
};
use super::AppState;
use crate::engine::Prediction;

/// TorchServe's health check: open even where API keys are required.
pub fn health_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(ping))
}

/// TorchServe's inference API and model list.
pub fn model_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(models))
        .routes(routes!(predict))
        .routes(routes!(predict_version))
}

/// `{"label": probability, ...}` in rank order (a JSON object, as TorchServe's handler).
struct LabelScores(Vec<Prediction>);

impl Serialize for LabelScores {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(self.0.len()))?;
        for p in &self.0 {
            map.serialize_entry(&p.label, &p.score)?;
        }
        map.end()
    }
}

#[utoipa::path(get, path = "/ping", tag = "torchserve", summary = "TorchServe health",
    responses(
        (status = 200, description = "{\"status\": \"Healthy\"}", content_type = "application/json"),
        (status = 503, description = "{\"status\": \"Unhealthy\"} while loading", content_type = "application/json"),
    ))]
async fn ping(State(state): State<AppState>) -> Response {
    if state.is_ready() {
        Json(json!({"status": "Healthy"})).into_response()
    } else {
        (
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "Unhealthy"})),
        )
            .into_response()
    }
}

/// TorchServe's `GET /models`: every model, by name.
#[utoipa::path(get, path = "/models", tag = "torchserve", summary = "TorchServe model list",
    responses((status = 200, description = "{\"models\": [{\"modelName\", \"modelUrl\"}, ...]}", content_type = "application/json")))]
async fn models(State(state): State<AppState>) -> Json<serde_json::Value> {
    let models: Vec<_> = state
        .models()
        .iter()
        .map(|m| json!({"modelName": m.name(), "modelUrl": m.source()}))
        .collect();
    Json(json!({"models": models}))
}

#[utoipa::path(method(post, put), path = "/predictions/{name}", tag = "torchserve",
    summary = "TorchServe inference: one image as the raw body or a multipart `data`/`file` field",
    params(
        ("name" = String, Path, description = "The model's name (GET /models lists them)"),
        ("top_k" = Option<usize>, Query, minimum = 1),
    ),
    request_body(content(("image/*"), ("application/octet-stream"), ("multipart/form-data"))),
    responses(
        (status = 200, description = "TorchServe's image classifier answer: {label: probability}, top-k, most probable first", body = LabelScoresDoc),
        (status = 404, description = "No such model", body = ErrorBody),
    ))]
async fn predict(
    state: State<AppState>,
    Path(model): Path<String>,
    query: Query<PredictQuery>,
    request: Request,
) -> Result<Response, ApiError> {
    answer(state, model, MODEL_VERSION.into(), query, request).await
}

#[utoipa::path(method(post, put), path = "/predictions/{name}/{version}", tag = "torchserve",
    summary = "TorchServe inference addressed with the model version (1, the only one)",
    params(
        ("name" = String, Path, description = "The model's name (GET /models lists them)"),
        ("version" = String, Path, description = "Each model has one version, 1"),
        ("top_k" = Option<usize>, Query, minimum = 1),
    ),
    request_body(content(("image/*"), ("application/octet-stream"), ("multipart/form-data"))),
    responses(
        (status = 200, description = "As /predictions/{name}", body = LabelScoresDoc),
        (status = 404, description = "No such model or version", body = ErrorBody),
    ))]
async fn predict_version(
    state: State<AppState>,
    Path((model, version)): Path<(String, String)>,
    query: Query<PredictQuery>,
    request: Request,
) -> Result<Response, ApiError> {
    answer(state, model, version, query, request).await
}

async fn answer(
    State(state): State<AppState>,
    model: String,
    version: String,
    Query(query): Query<PredictQuery>,
    request: Request,
) -> Result<Response, ApiError> {
    let model = state.models().get(&model)?.clone();
    check_version(model.name(), &version)?;
    let k = resolve_top_k(&state, query.top_k)?;
    let answer = with_timeout(&state, async {
        let (headers, body) = read_body(&state, request).await?;
        let raw = content_type(&headers);
        let image = if raw.to_ascii_lowercase().starts_with("multipart/form-data") {
            multipart_images(raw, body, &["data", "file"])
                .await?
                .remove(0)
                .bytes
        } else {
            body
        };
        if image.is_empty() {
            return Err(ApiError::BadRequest(
                "empty request body: send an image".into(),
            ));
        }
        Ok(Json(LabelScores(
            classify_bytes(&state, &model, image, k).await?,
        )))
    })
    .await;
    Ok(answered_by(&model, answer.into_response()))
}
