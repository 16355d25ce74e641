//! KServe / Triton Open Inference Protocol v2 (the REST form), so the server runs unchanged
//! under KServe. The model takes one BYTES input whose elements are encoded images: as JSON
//! strings (base64) or through the binary tensor data extension (`Inference-Header-Content-Length`,
//! each element a u32 little-endian length then the bytes). It answers three outputs of shape
//! `[batch, k]`: `labels` (BYTES), `probabilities` (FP32) and `class_ids` (INT64), as JSON;
//! a request's `outputs` list picks among them. Triton's classification extension: an
//! output asked for with `"parameters": {"classification": K}` comes back as BYTES
//! `"score:class_id:label"` strings, the top K per image, as Triton's own server does.
//! Every model of the server is addressed by its name.

use axum::body::Bytes;
use axum::extract::{Path, Request, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::ApiError;
use super::models::{answered_by, check_version, ServedModel};
#[allow(unused_imports)] // named in the `#[utoipa::path]` annotations
use super::openapi::ErrorBody;
use super::routes::{
    classify_bytes, decode_base64, read_body, with_timeout, MAX_IMAGES_PER_REQUEST,
};
use super::AppState;
use crate::engine::Prediction;

/// The outputs every model has, in the order answered when a request names none.
const OUTPUTS: [&str; 3] = ["labels", "probabilities", "class_ids"];

/// Health and readiness: open even where API keys are required (probes carry none).
pub fn health_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(server_metadata))
        .routes(routes!(live))
        .routes(routes!(ready))
        .routes(routes!(model_ready))
        .routes(routes!(versioned_ready))
}

/// Model metadata and inference, also addressed with the model version (tritonclient
/// sends `model_version`).
pub fn model_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(model_metadata))
        .routes(routes!(infer))
        .routes(routes!(versioned_metadata))
        .routes(routes!(versioned_infer))
}

#[utoipa::path(get, path = "/v2/models/{name}/versions/{version}", tag = "open-inference-protocol",
    summary = "v2 model metadata (version 1, the only one)", params(("name" = String, Path, description = "The model's name (GET /models lists them)"), ("version" = String, Path, description = "Each model has one version, 1")),
    responses((status = 200, description = "Metadata", content_type = "application/json"), (status = 404, description = "No such model or version", body = ErrorBody)))]
async fn versioned_metadata(
    state: State<AppState>,
    Path((name, version)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    check_version(&name, &version)?;
    model_metadata(state, Path(name)).await
}

#[utoipa::path(get, path = "/v2/models/{name}/versions/{version}/ready", tag = "open-inference-protocol",
    summary = "v2 model readiness (version 1)", params(("name" = String, Path, description = "The model's name (GET /models lists them)"), ("version" = String, Path, description = "Each model has one version, 1")),
    responses((status = 200, description = "{\"name\", \"ready\": true}", content_type = "application/json"), (status = 404, description = "No such model or version", body = ErrorBody), (status = 503, description = "Loading", body = ErrorBody)))]
async fn versioned_ready(
    state: State<AppState>,
    Path((name, version)): Path<(String, String)>,
) -> Response {
    if let Err(e) = check_version(&name, &version) {
        return e.into_response();
    }
    model_ready(state, Path(name)).await
}

#[utoipa::path(post, path = "/v2/models/{name}/versions/{version}/infer", tag = "open-inference-protocol",
    summary = "v2 inference addressed with the model version (as tritonclient's model_version sends it)", params(("name" = String, Path, description = "The model's name (GET /models lists them)"), ("version" = String, Path, description = "Each model has one version, 1")),
    request_body(content(("application/json"), ("application/octet-stream")),
        description = "The v2 inference request: one BYTES input `image` of encoded images, as base64 strings in `data` or through the binary tensor extension (`Inference-Header-Content-Length`); optional `outputs` (labels, probabilities, class_ids; `\"parameters\": {\"classification\": K}` for Triton's classification strings `score:class_id:label`) and `parameters.top_k`"),
    responses((status = 200, description = "The v2 inference response", content_type = "application/json"), (status = 404, description = "No such model or version", body = ErrorBody)))]
async fn versioned_infer(
    state: State<AppState>,
    Path((name, version)): Path<(String, String)>,
    request: Request,
) -> Result<Response, ApiError> {
    check_version(&name, &version)?;
    infer(state, Path(name), request).await
}

#[utoipa::path(get, path = "/v2", tag = "open-inference-protocol", summary = "v2 server metadata: name, version, extensions",
    responses((status = 200, description = "{\"name\", \"version\", \"extensions\"}", content_type = "application/json")))]
async fn server_metadata() -> Json<Value> {
    Json(json!({
        "name": "classify",
        "version": env!("CARGO_PKG_VERSION"),
        "extensions": ["binary_tensor_data", "classification"]
    }))
}

#[utoipa::path(get, path = "/v2/health/live", tag = "open-inference-protocol", summary = "v2 liveness",
    responses((status = 200, description = "{\"live\": true}", content_type = "application/json")))]
async fn live() -> Json<Value> {
    Json(json!({"live": true}))
}

#[utoipa::path(get, path = "/v2/health/ready", tag = "open-inference-protocol", summary = "v2 readiness: every model loaded",
    responses((status = 200, description = "{\"ready\": true}", content_type = "application/json"), (status = 503, description = "Loading", body = ErrorBody)))]
async fn ready(State(state): State<AppState>) -> Response {
    if state.is_ready() {
        Json(json!({"ready": true})).into_response()
    } else {
        ApiError::NotReady.into_response()
    }
}

#[utoipa::path(get, path = "/v2/models/{name}", tag = "open-inference-protocol", summary = "v2 model metadata",
    params(("name" = String, Path, description = "The model's name (GET /models lists them)")),
    responses((status = 200, description = "Name, versions, platform, inputs and outputs", content_type = "application/json"), (status = 404, description = "No such model", body = ErrorBody)))]
async fn model_metadata(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let model = state.models().get(&name)?;
    Ok(Json(json!({
        "name": model.name(),
        "versions": ["1"],
        "platform": "classify-candle",
        "inputs": [{"name": "image", "datatype": "BYTES", "shape": [-1]}],
        "outputs": [
            {"name": "labels", "datatype": "BYTES", "shape": [-1, -1]},
            {"name": "probabilities", "datatype": "FP32", "shape": [-1, -1]},
            {"name": "class_ids", "datatype": "INT64", "shape": [-1, -1]}
        ]
    })))
}

#[utoipa::path(get, path = "/v2/models/{name}/ready", tag = "open-inference-protocol", summary = "v2 model readiness",
    params(("name" = String, Path, description = "The model's name (GET /models lists them)")),
    responses((status = 200, description = "{\"name\", \"ready\": true}", content_type = "application/json"), (status = 404, description = "No such model", body = ErrorBody), (status = 503, description = "Loading", body = ErrorBody)))]
async fn model_ready(State(state): State<AppState>, Path(name): Path<String>) -> Response {
    match state.models().get(&name) {
        Ok(model) if model.is_ready() => {
            Json(json!({"name": model.name(), "ready": true})).into_response()
        }
        Ok(_) => ApiError::NotReady.into_response(),
        Err(e) => e.into_response(),
    }
}

/// Split a request into its JSON header and the binary section after it.
fn split_binary(headers: &HeaderMap, body: Bytes) -> Result<(Value, Bytes), ApiError> {
    let header_len = headers
        .get("inference-header-content-length")
        .and_then(|v| v.to_str().ok())
        .map(|v| v.parse::<usize>())
        .transpose()
        .map_err(|_| ApiError::BadRequest("bad Inference-Header-Content-Length".into()))?;
    let (json_part, binary) = match header_len {
        Some(n) if n <= body.len() => (body.slice(..n), body.slice(n..)),
        Some(_) => {
            return Err(ApiError::BadRequest(
                "Inference-Header-Content-Length exceeds the body".into(),
            ))
        }
        None => (body, Bytes::new()),
    };
    let value = serde_json::from_slice(&json_part)
        .map_err(|e| ApiError::BadRequest(format!("invalid JSON: {e}")))?;
    Ok((value, binary))
}

/// The elements of a serialized BYTES tensor: each a 4-byte little-endian length, then
/// that many bytes (the binary tensor extension's and gRPC's `raw_input_contents` form).
pub(super) fn bytes_elements(mut data: Bytes) -> Result<Vec<Bytes>, ApiError> {
    let mut elements = Vec::new();
    while !data.is_empty() {
        let len = data
            .get(..4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
            .ok_or_else(|| ApiError::BadRequest("truncated BYTES element".into()))?;
        if data.len() - 4 < len {
            return Err(ApiError::BadRequest("truncated BYTES element".into()));
        }
        elements.push(data.slice(4..4 + len));
        data = data.slice(4 + len..);
        if elements.len() > MAX_IMAGES_PER_REQUEST {
            return Err(too_many_images());
        }
    }
    Ok(elements)
}

fn too_many_images() -> ApiError {
    ApiError::PayloadTooLarge(format!(
        "more than {MAX_IMAGES_PER_REQUEST} images in one request"
    ))
}

/// At least one image, at most [`MAX_IMAGES_PER_REQUEST`].
pub(super) fn check_image_count(n: usize) -> Result<(), ApiError> {
    match n {
        0 => Err(ApiError::BadRequest("no images in the input".into())),
        n if n > MAX_IMAGES_PER_REQUEST => Err(too_many_images()),
        _ => Ok(()),
    }
}

/// The encoded images of the (single) BYTES input.
fn input_images(request: &Value, binary: &Bytes) -> Result<Vec<Bytes>, ApiError> {
    let inputs = request
        .get("inputs")
        .and_then(Value::as_array)
        .ok_or_else(|| ApiError::BadRequest("missing `inputs`".into()))?;
    let [input] = inputs.as_slice() else {
        return Err(ApiError::BadRequest(
            "expected exactly one input (BYTES, encoded images)".into(),
        ));
    };
    if input.get("datatype").and_then(Value::as_str) != Some("BYTES") {
        return Err(ApiError::BadRequest(
            "the input's datatype must be BYTES".into(),
        ));
    }
    let mut images = Vec::new();
    if let Some(size) = input
        .pointer("/parameters/binary_data_size")
        .and_then(Value::as_u64)
    {
        let size = usize::try_from(size)
            .map_err(|_| ApiError::BadRequest("binary_data_size too large".into()))?;
        let data = binary
            .get(..size)
            .map(|_| binary.slice(..size))
            .ok_or_else(|| {
                ApiError::BadRequest("binary_data_size exceeds the binary data".into())
            })?;
        images = bytes_elements(data)?;
    } else {
        fn collect(v: &Value, out: &mut Vec<Bytes>) -> Result<(), ApiError> {
            match v {
                Value::String(s) => out.push(decode_base64(s)?),
                Value::Array(items) => items.iter().try_for_each(|i| collect(i, out))?,
                _ => {
                    return Err(ApiError::BadRequest(
                        "BYTES data must be base64 strings".into(),
                    ))
                }
            }
            Ok(())
        }
        let data = input.get("data").ok_or_else(|| {
            ApiError::BadRequest("input has neither data nor binary_data_size".into())
        })?;
        collect(data, &mut images)?;
    }
    check_image_count(images.len())?;
    Ok(images)
}

/// One output a request asked for: its name, and K when it wants classification strings.
pub(super) struct WantedOutput {
    pub name: &'static str,
    pub classification: Option<usize>,
}

impl WantedOutput {
    /// Every output, as plain tensors (what a request that names none gets).
    pub fn all() -> Vec<Self> {
        OUTPUTS
            .iter()
            .map(|&name| WantedOutput {
                name,
                classification: None,
            })
            .collect()
    }

    /// The output called `asked`, with the classification K asked for (if any).
    pub fn named(asked: &str, classification: Option<i64>) -> Result<Self, ApiError> {
        let name = OUTPUTS.iter().find(|n| **n == asked).ok_or_else(|| {
            let shown: String = asked.chars().take(64).collect();
            ApiError::BadRequest(format!(
                "unknown output `{shown}`; the outputs are labels, probabilities, class_ids"
            ))
        })?;
        let classification = match classification {
            None => None,
            Some(k) if k >= 1 => Some(usize::try_from(k).unwrap_or(usize::MAX)),
            Some(_) => {
                return Err(ApiError::BadRequest(
                    "parameters.classification must be a positive integer".into(),
                ))
            }
        };
        Ok(WantedOutput {
            name,
            classification,
        })
    }
}

/// The request's `outputs` (all three, as plain tensors, when it names none).
fn wanted_outputs(request: &Value) -> Result<Vec<WantedOutput>, ApiError> {
    let Some(list) = request.get("outputs") else {
        return Ok(WantedOutput::all());
    };
    let list = list
        .as_array()
        .ok_or_else(|| ApiError::BadRequest("`outputs` must be a list".into()))?;
    list.iter()
        .map(|o| {
            let asked = o.get("name").and_then(Value::as_str).unwrap_or("");
            // A value that is not an integer is refused as not positive.
            let classification = o
                .pointer("/parameters/classification")
                .map(|v| v.as_i64().unwrap_or(0));
            WantedOutput::named(asked, classification)
        })
        .collect()
}

/// The values of one output tensor, flattened in row-major order.
pub(super) enum TensorData {
    Bytes(Vec<String>),
    Fp32(Vec<f32>),
    Int64(Vec<i64>),
}

/// One output tensor of shape `[batch, k]`.
pub(super) struct OutputTensor {
    pub name: &'static str,
    pub shape: [usize; 2],
    pub data: TensorData,
}

impl OutputTensor {
    pub fn datatype(&self) -> &'static str {
        match self.data {
            TensorData::Bytes(_) => "BYTES",
            TensorData::Fp32(_) => "FP32",
            TensorData::Int64(_) => "INT64",
        }
    }

    fn to_json(&self) -> Value {
        let data = match &self.data {
            TensorData::Bytes(v) => json!(v),
            TensorData::Fp32(v) => json!(v),
            TensorData::Int64(v) => json!(v),
        };
        json!({"name": self.name, "datatype": self.datatype(), "shape": self.shape, "data": data})
    }
}

/// Triton's classification string for one prediction: `score:class_id:label`.
fn classification_string(p: &Prediction) -> String {
    format!("{:.6}:{}:{}", p.score, p.index, p.label)
}

/// Classify `images` with `model` and build the `wanted` outputs: plain ones hold each
/// image's top `top_k`, classification ones the top K they asked for.
pub(super) async fn infer_outputs(
    state: &AppState,
    model: &ServedModel,
    images: Vec<Bytes>,
    wanted: &[WantedOutput],
    top_k: usize,
) -> Result<Vec<OutputTensor>, ApiError> {
    let asked = wanted
        .iter()
        .map(|w| w.classification.unwrap_or(top_k))
        .max()
        .unwrap_or(top_k);
    let results = futures_util::future::join_all(
        images
            .into_iter()
            .map(|img| classify_bytes(state, model, img, asked)),
    )
    .await
    .into_iter()
    .collect::<Result<Vec<_>, _>>()?;
    // Fewer classes than asked for: every image has the same number.
    let available = results.iter().map(Vec::len).min().unwrap_or(0);
    Ok(wanted
        .iter()
        .map(|w| {
            let k = w.classification.unwrap_or(top_k).min(available);
            let top = || results.iter().flat_map(|r| r.iter().take(k));
            let data = match (w.name, w.classification) {
                (_, Some(_)) => TensorData::Bytes(top().map(classification_string).collect()),
                ("labels", None) => TensorData::Bytes(top().map(|p| p.label.clone()).collect()),
                ("probabilities", None) => TensorData::Fp32(top().map(|p| p.score).collect()),
                _ => TensorData::Int64(top().map(|p| p.index as i64).collect()),
            };
            OutputTensor {
                name: w.name,
                shape: [results.len(), k],
                data,
            }
        })
        .collect())
}

#[utoipa::path(post, path = "/v2/models/{name}/infer", tag = "open-inference-protocol", summary = "v2 inference",
    params(("name" = String, Path, description = "The model's name (GET /models lists them)")),
    request_body(content(("application/json"), ("application/octet-stream")),
        description = "The v2 inference request: one BYTES input `image` of encoded images, as base64 strings in `data` or through the binary tensor extension (`Inference-Header-Content-Length`); optional `outputs` (labels, probabilities, class_ids; `\"parameters\": {\"classification\": K}` for Triton's classification strings `score:class_id:label`) and `parameters.top_k`"),
    responses((status = 200, description = "The v2 inference response: outputs of shape [batch, k]", content_type = "application/json"), (status = 404, description = "No such model", body = ErrorBody)))]
async fn infer(
    State(state): State<AppState>,
    Path(name): Path<String>,
    request: Request,
) -> Result<Response, ApiError> {
    let model = state.models().get(&name)?.clone();
    let answer = run_infer(&state, &model, request).await;
    Ok(answered_by(&model, answer.into_response()))
}

async fn run_infer(
    state: &AppState,
    model: &ServedModel,
    request: Request,
) -> Result<Json<Value>, ApiError> {
    with_timeout(state, async {
        let (headers, body) = read_body(state, request).await?;
        let (req, binary) = split_binary(&headers, body)?;
        let images = input_images(&req, &binary)?;
        let wanted = wanted_outputs(&req)?;
        let top_k = match req.pointer("/parameters/top_k") {
            None => state.0.limits.default_top_k,
            Some(v) => v.as_u64().filter(|k| *k >= 1).ok_or_else(|| {
                ApiError::BadRequest("parameters.top_k must be a positive integer".into())
            })? as usize,
        };
        let outputs = infer_outputs(state, model, images, &wanted, top_k).await?;
        let mut response = json!({
            "model_name": model.name(),
            "model_version": "1",
            "outputs": outputs.iter().map(OutputTensor::to_json).collect::<Vec<_>>(),
        });
        if let Some(id) = req.get("id") {
            response["id"] = id.clone();
        }
        Ok(Json(response))
    })
    .await
}
