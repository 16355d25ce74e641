//! `/predict` and the small endpoints around it. Request bodies are read whole (up to the
//! body limit) and never written anywhere; every failure is an [`ApiError`].

use axum::body::Bytes;
use axum::extract::{Query, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::Json;
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::oneshot;

use super::batcher::Job;
use super::error::ApiError;
use super::models::{answered_by, ServedModel};
#[allow(unused_imports)] // named in the `#[utoipa::path]` annotations
use super::openapi::{Base64Image, ErrorBody, FlashRequest, FlashResponse, UploadForm};
use super::{pages, AppState};
use crate::engine::Prediction;

/// Upper bound on images in one request.
pub const MAX_IMAGES_PER_REQUEST: usize = 64;

#[derive(Debug, Deserialize)]
pub struct PredictQuery {
    pub top_k: Option<usize>,
}

/// `/predict`'s query: `?top_k=N&model=NAME` (the default model when no name is given).
#[derive(Debug, Deserialize)]
pub struct ModelQuery {
    pub top_k: Option<usize>,
    pub model: Option<String>,
}

/// One image of a request, with the name the client gave it (multipart filename).
pub struct NamedImage {
    pub filename: Option<String>,
    pub bytes: Bytes,
}

/// What a `/predict` body asked for.
pub enum Payload {
    /// One image (file field, raw body, or `{"image": ...}`): answered with one object.
    One(NamedImage),
    /// Several `file` fields: answered with a list, one entry per file, in order.
    Many(Vec<NamedImage>),
    /// Lightning Flash Serve's body: answered in Flash's shape.
    Flash { session: Value, image: Bytes },
}

/// The Flask recipe's answer, plus the top-k list and model name.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct PredictResponse {
    pub class_id: usize,
    pub class_name: String,
    pub model: String,
    pub predictions: Vec<Prediction>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub filename: Option<String>,
}

/// One entry of the list that several `file` fields are answered with: the same object a
/// single file gets (same keys, same order, scores as f32), or what went wrong with it.
#[derive(Serialize)]
#[serde(untagged)]
enum FileAnswer {
    Classified(PredictResponse),
    Failed {
        filename: Option<String>,
        error: String,
        status: u16,
    },
}

/// Read the body, refusing more than the configured limit with a JSON 413.
pub async fn read_body(state: &AppState, request: Request) -> Result<(HeaderMap, Bytes), ApiError> {
    let limit = state.0.limits.max_body_bytes;
    let (parts, body) = request.into_parts();
    let too_large = || {
        ApiError::PayloadTooLarge(format!(
            "request body is larger than {limit} bytes (see --max-body-mb)"
        ))
    };
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(too_large());
    }
    match axum::body::to_bytes(body, limit).await {
        Ok(bytes) => Ok((parts.headers, bytes)),
        Err(e) => {
            let inner = e.into_inner();
            if inner
                .downcast_ref::<http_body_util::LengthLimitError>()
                .is_some()
            {
                Err(too_large())
            } else {
                Err(ApiError::BadRequest(
                    "could not read the request body".into(),
                ))
            }
        }
    }
}

/// The Content-Type header as sent (its multipart boundary is case-sensitive).
pub fn content_type(headers: &HeaderMap) -> &str {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

/// Decode base64, tolerating a `data:image/...;base64,` prefix and whitespace.
pub fn decode_base64(text: &str) -> Result<Bytes, ApiError> {
    let data = match text.split_once(";base64,") {
        Some((prefix, rest)) if prefix.starts_with("data:") => rest,
        _ => text,
    };
    let cleaned: String = data.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    base64::engine::general_purpose::STANDARD
        .decode(cleaned.as_bytes())
        .map(Bytes::from)
        .map_err(|_| ApiError::BadRequest("image is not valid base64".into()))
}

/// The images in the multipart fields called one of `fields`, in order; at least one, or a
/// 400 that names the fields the form did have (a client that sent `image` sees why).
pub async fn multipart_images(
    content_type: &str,
    body: Bytes,
    fields: &[&str],
) -> Result<Vec<NamedImage>, ApiError> {
    let boundary = multer::parse_boundary(content_type)
        .map_err(|_| ApiError::BadRequest("multipart body without a boundary".into()))?;
    let stream = futures_util::stream::once(async move { Ok::<Bytes, std::io::Error>(body) });
    let mut multipart = multer::Multipart::new(stream, boundary);
    let mut images = Vec::new();
    let mut others: Vec<String> = Vec::new();
    loop {
        let field = match multipart.next_field().await {
            Ok(Some(f)) => f,
            Ok(None) => break,
            Err(e) => {
                return Err(ApiError::BadRequest(format!(
                    "malformed multipart body: {e}"
                )))
            }
        };
        match field.name() {
            Some(name) if fields.contains(&name) => {}
            other => {
                if others.len() < 8 {
                    others.push(other.unwrap_or("").chars().take(64).collect());
                }
                continue;
            }
        }
        let filename = field.file_name().map(str::to_string);
        let bytes = field
            .bytes()
            .await
            .map_err(|e| ApiError::BadRequest(format!("malformed multipart body: {e}")))?;
        images.push(NamedImage { filename, bytes });
        if images.len() > MAX_IMAGES_PER_REQUEST {
            return Err(ApiError::PayloadTooLarge(format!(
                "more than {MAX_IMAGES_PER_REQUEST} images in one request"
            )));
        }
    }
    if images.is_empty() {
        let wanted = fields.join("` or `");
        let had = if others.is_empty() {
            "no fields".to_string()
        } else {
            format!("`{}`", others.join("`, `"))
        };
        return Err(ApiError::BadRequest(format!(
            "missing form field `{wanted}` (the form has {had})"
        )));
    }
    Ok(images)
}

/// The text of the first multipart field called `name` (at most 256 bytes), if any.
pub async fn multipart_text(
    content_type: &str,
    body: Bytes,
    name: &str,
) -> Result<Option<String>, ApiError> {
    let boundary = multer::parse_boundary(content_type)
        .map_err(|_| ApiError::BadRequest("multipart body without a boundary".into()))?;
    let stream = futures_util::stream::once(async move { Ok::<Bytes, std::io::Error>(body) });
    let mut multipart = multer::Multipart::new(stream, boundary);
    while let Some(field) = multipart
        .next_field()
        .await
        .map_err(|e| ApiError::BadRequest(format!("malformed multipart body: {e}")))?
    {
        if field.name() == Some(name) {
            let bytes = field
                .bytes()
                .await
                .map_err(|e| ApiError::BadRequest(format!("malformed multipart body: {e}")))?;
            if bytes.len() > 256 {
                return Err(ApiError::BadRequest(format!(
                    "form field `{name}` is too long"
                )));
            }
            return Ok(Some(String::from_utf8_lossy(&bytes).trim().to_string()));
        }
    }
    Ok(None)
}

fn json_payload(body: &[u8]) -> Result<Payload, ApiError> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::BadRequest(format!("invalid JSON: {e}")))?;
    if let Some(payload) = value.get("payload") {
        let data = payload
            .pointer("/img/data")
            .and_then(Value::as_str)
            .ok_or_else(|| {
                ApiError::BadRequest("missing payload.img.data (base64 image)".into())
            })?;
        return Ok(Payload::Flash {
            session: value.get("session").cloned().unwrap_or(Value::Null),
            image: decode_base64(data)?,
        });
    }
    match value.get("image") {
        Some(Value::String(s)) => Ok(Payload::One(NamedImage {
            filename: None,
            bytes: decode_base64(s)?,
        })),
        Some(_) => Err(ApiError::BadRequest(
            "`image` must be a base64 string".into(),
        )),
        None => Err(ApiError::BadRequest(
            "missing field `image` (base64 image)".into(),
        )),
    }
}

/// Work out what a `/predict` body holds.
pub async fn parse_payload(headers: &HeaderMap, body: Bytes) -> Result<Payload, ApiError> {
    let raw = content_type(headers);
    let ct = raw.to_ascii_lowercase();
    if ct.starts_with("multipart/form-data") {
        let mut images = multipart_images(raw, body, &["file"]).await?;
        return Ok(match images.len() {
            1 => Payload::One(images.remove(0)),
            _ => Payload::Many(images),
        });
    }
    if ct.starts_with("application/json") {
        return json_payload(&body);
    }
    if ct.starts_with("image/") || ct.starts_with("application/octet-stream") {
        return Ok(Payload::One(NamedImage {
            filename: None,
            bytes: body,
        }));
    }
    Err(ApiError::UnsupportedMediaType(format!(
        "unsupported content type `{ct}`: send multipart/form-data with a `file` field, an image/* body, or JSON {{\"image\": \"<base64>\"}}"
    )))
}

/// Decode off the executor, then queue for the batcher and wait for the answer.
pub async fn classify_bytes(
    state: &AppState,
    model: &ServedModel,
    bytes: Bytes,
    top_k: usize,
) -> Result<Vec<Prediction>, ApiError> {
    let loaded = model.loaded()?;
    let engine = loaded.engine.clone();
    let image = {
        let _permit = state
            .0
            .decode_permits
            .acquire()
            .await
            .map_err(|_| ApiError::Internal)?;
        // The outer error: the decoding task panicked (caught; the server goes on).
        tokio::task::spawn_blocking(move || {
            decode_below_inference();
            engine.preprocess(&bytes)
        })
        .await
        .map_err(|_| ApiError::Internal)??
    };
    let (reply, answer) = oneshot::channel();
    loaded.batcher.submit(Job {
        image,
        top_k,
        reply,
    })?;
    // The outer error: the batcher thread is gone.
    Ok(answer.await.map_err(|_| ApiError::Internal)??)
}

/// Decoding runs at the lowest CPU priority (nice 19) so that it takes only the cycles the
/// network leaves idle. The network's layers each end in a barrier across all cores: a
/// decode that preempts one worker for a time slice stalls the whole layer, while the
/// other workers wait. With this, `bench/flask-vs-classify.sh`-style load at
/// concurrency 8 (DenseNet-121, rocket.jpg) went from 27.9 to 31.6 req/s (median of 5
/// interleaved 20 s rounds, AMD EPYC Zen 4, 2 cores). Decoding cannot starve: the
/// network idles as soon as the queue it feeds from is empty.
///
/// Only decoding runs on tokio's blocking threads; a thread, once lowered, stays so
/// (an unprivileged process cannot raise its priority again), so the flag is per thread.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn decode_below_inference() {
    thread_local!(static LOWERED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) });
    LOWERED.with(|lowered| {
        if !lowered.replace(true) {
            // SAFETY: setpriority only changes this thread's scheduling weight (on Linux a
            // thread id names one thread); failure (e.g. a seccomp filter) leaves it as is.
            unsafe {
                let tid = libc::gettid();
                libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, 19);
            }
        }
    });
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn decode_below_inference() {}

pub fn resolve_top_k(state: &AppState, requested: Option<usize>) -> Result<usize, ApiError> {
    match requested {
        Some(0) => Err(ApiError::BadRequest("top_k must be at least 1".into())),
        Some(k) => Ok(k),
        None => Ok(state.0.limits.default_top_k),
    }
}

fn response_for(
    model: &ServedModel,
    filename: Option<String>,
    predictions: Vec<Prediction>,
) -> PredictResponse {
    let top = predictions.first();
    PredictResponse {
        class_id: top.map_or(0, |p| p.index),
        class_name: top.map_or_else(String::new, |p| p.label.clone()),
        model: model.source().to_string(),
        predictions,
        filename,
    }
}

/// Run `work` under the per-request timeout.
pub async fn with_timeout<T>(
    state: &AppState,
    work: impl std::future::Future<Output = Result<T, ApiError>>,
) -> Result<T, ApiError> {
    tokio::time::timeout(state.0.limits.request_timeout, work)
        .await
        .map_err(|_| ApiError::Timeout)?
}

/// `POST /predict[?model=NAME]`
#[utoipa::path(post, path = "/predict", tag = "flask",
    summary = "Classify images (the Flask recipe's endpoint)",
    description = "One image as a multipart `file` field, a raw image body, JSON `{\"image\": \"<base64>\"}` or Lightning Flash Serve's `{\"session\", \"payload\": {\"img\": {\"data\"}}}`. Several `file` fields answer a list (one entry per file, in order; a failed file's entry is an error object); a Flash body answers Flash's shape.",
    params(
        ("top_k" = Option<usize>, Query, description = "Predictions per image (default: the server's --top-k)", minimum = 1),
        ("model" = Option<String>, Query, description = "Which model (default: the first one the server was given)"),
    ),
    request_body(content(
        (UploadForm = "multipart/form-data"),
        ("image/*"),
        ("application/octet-stream"),
        (Base64Image = "application/json"),
    )),
    responses(
        (status = 200, description = "Top-k predictions", content((PredictResponse = "application/json"))),
        (status = 404, description = "No model of that name", body = ErrorBody),
    ))]
pub async fn predict(
    State(state): State<AppState>,
    Query(query): Query<ModelQuery>,
    request: Request,
) -> Result<Response, ApiError> {
    let top_k = resolve_top_k(&state, query.top_k)?;
    let model = state.models().pick(query.model.as_deref())?.clone();
    let answer = with_timeout(&state, async {
        model.loaded()?;
        let (headers, body) = read_body(&state, request).await?;
        match parse_payload(&headers, body).await? {
            Payload::One(img) => {
                let preds = classify_bytes(&state, &model, img.bytes, top_k).await?;
                Ok(Json(response_for(&model, img.filename, preds)).into_response())
            }
            Payload::Many(images) => {
                let results = futures_util::future::join_all(images.into_iter().map(|img| {
                    let (state, model) = (&state, &model);
                    async move {
                        match classify_bytes(state, model, img.bytes, top_k).await {
                            Ok(preds) => {
                                FileAnswer::Classified(response_for(model, img.filename, preds))
                            }
                            Err(e) => FileAnswer::Failed {
                                filename: img.filename,
                                error: e.to_string(),
                                status: e.status().as_u16(),
                            },
                        }
                    }
                }))
                .await;
                Ok(Json(results).into_response())
            }
            Payload::Flash { session, image } => {
                let preds = classify_bytes(&state, &model, image, top_k).await?;
                let label = preds.first().map(|p| p.label.clone()).unwrap_or_default();
                Ok(
                    Json(serde_json::json!({"session": session, "result": {"prediction": label}}))
                        .into_response(),
                )
            }
        }
    })
    .await;
    Ok(answered_by(&model, answer.into_response()))
}

fn wants_html(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("text/html"))
}

/// `GET /`: the upload page for browsers, the Flask recipe's hint for API clients.
#[utoipa::path(get, path = "/", tag = "flask",
    summary = "Upload page (Accept: text/html) or a JSON hint for API clients",
    responses((status = 200, description = "The page, or {\"msg\", \"model\", \"models\"}", content(("text/html"), ("application/json")))))]
pub async fn index(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if wants_html(&headers) {
        Html(pages::upload_page(
            &state.models().names(),
            state.0.access.api_keys.is_some(),
        ))
        .into_response()
    } else {
        Json(serde_json::json!({
            "msg": "Try POSTing to the /predict endpoint with an RGB image attachment",
            "model": state.models().default_model().source(),
            "models": state.models().names(),
        }))
        .into_response()
    }
}

/// `POST /` from the page's plain form (works without JavaScript): a result page with the
/// image inlined as a data URL. The form's `model` field picks the model. Nothing is
/// written to disk.
#[utoipa::path(post, path = "/", tag = "flask",
    summary = "The upload page's form post without JavaScript: an HTML result page",
    request_body(content = UploadForm, content_type = "multipart/form-data"),
    responses((status = 200, description = "Result page with the image and its labels", content_type = "text/html")))]
pub async fn form_result(State(state): State<AppState>, request: Request) -> Response {
    let outcome = with_timeout(&state, async {
        let (headers, body) = read_body(&state, request).await?;
        // A plain form sends `model`; anything else uses the default model.
        let chosen = multipart_text(content_type(&headers), body.clone(), "model")
            .await
            .unwrap_or_default();
        let model = state.models().pick(chosen.as_deref())?.clone();
        let image = match parse_payload(&headers, body).await? {
            Payload::One(img) => img,
            Payload::Many(mut imgs) => imgs.remove(0),
            Payload::Flash { image, .. } => NamedImage {
                filename: None,
                bytes: image,
            },
        };
        let top_k = state.0.limits.default_top_k;
        let preds = classify_bytes(&state, &model, image.bytes.clone(), top_k).await?;
        Ok((model, image, preds))
    })
    .await;
    match outcome {
        Ok((model, image, preds)) => answered_by(
            &model,
            Html(pages::result_page(model.name(), &image.bytes, &preds)).into_response(),
        ),
        Err(e) => (e.status(), Html(pages::error_page(&e.to_string()))).into_response(),
    }
}

/// `GET /health`: the process is up.
#[utoipa::path(get, path = "/health", tag = "server", summary = "Liveness",
    responses((status = 200, description = "{\"status\": \"ok\"}", content_type = "application/json")))]
pub async fn health() -> Json<Value> {
    Json(serde_json::json!({"status": "ok"}))
}

/// `GET /ready`: 200 once every model is loaded and warmed up (the body says which are
/// served), 503 before (each model's own readiness: `/v2/models/{name}/ready`).
#[utoipa::path(get, path = "/ready", tag = "server", summary = "Readiness: every model loaded and warmed up",
    responses(
        (status = 200, description = "{\"status\": \"ready\", \"model\", \"models\"}", content_type = "application/json"),
        (status = 503, description = "Still loading", body = ErrorBody),
    ))]
pub async fn ready(State(state): State<AppState>) -> Response {
    let models: serde_json::Map<String, Value> = state
        .models()
        .iter()
        .map(|m| (m.name().to_string(), Value::Bool(m.is_ready())))
        .collect();
    if state.is_ready() {
        Json(serde_json::json!({
            "status": "ready",
            "model": state.models().default_model().source(),
            "models": models,
        }))
        .into_response()
    } else {
        ApiError::NotReady.into_response()
    }
}

/// `GET /metrics`: Prometheus text format.
#[utoipa::path(get, path = "/metrics", tag = "server", summary = "Prometheus metrics",
    responses((status = 200, description = "The text exposition format", content_type = "text/plain")))]
pub async fn metrics(State(state): State<AppState>) -> Response {
    let views: Vec<_> = state
        .models()
        .iter()
        .map(|m| super::metrics::ModelView {
            name: m.name(),
            metrics: &m.metrics,
            queue_depth: m.queue_depth(),
            ready: m.is_ready(),
        })
        .collect();
    (
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.0.metrics.render(&views),
    )
        .into_response()
}

#[cfg(all(test, target_os = "linux", target_env = "gnu"))]
mod tests {
    use super::decode_below_inference;

    fn own_nice() -> i32 {
        // SAFETY: getpriority reads this thread's nice value; errno is cleared first, as
        // -1 is also a valid answer.
        unsafe {
            *libc::__errno_location() = 0;
            let nice = libc::getpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t);
            assert_eq!(*libc::__errno_location(), 0, "getpriority failed");
            nice
        }
    }

    #[test]
    fn decoding_threads_run_below_the_network() {
        let before = own_nice();
        let (lowered, again) = std::thread::spawn(|| {
            decode_below_inference();
            let lowered = own_nice();
            decode_below_inference();
            (lowered, own_nice())
        })
        .join()
        .unwrap();
        assert_eq!((lowered, again), (19, 19));
        // Other threads (the network's among them) keep their priority.
        assert_eq!(own_nice(), before);
    }
}
