//! `GET /openapi.json`: an OpenAPI 3 description of every endpoint. The Swagger UI at
//! `/docs` (assets compiled into the binary from the `swagger-ui-dist` crate) renders it.

use axum::extract::State;
use axum::Json;
use serde_json::{json, Value};

use super::AppState;

fn error_response(description: &str) -> Value {
    json!({"description": description, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}})
}

/// The `{name}` (and `{version}`) path parameters: one of the served models.
fn model_params(models: &[String], versioned: bool) -> Value {
    let mut params = vec![json!({"name": "name", "in": "path", "required": true,
        "description": "The model's name (GET /models lists them)",
        "schema": {"type": "string", "enum": models}})];
    if versioned {
        params.push(json!({"name": "version", "in": "path", "required": true,
            "description": "Each model has one version, 1",
            "schema": {"type": "string", "enum": ["1"]}}));
    }
    json!(params)
}

/// TorchServe's inference route (POST, and PUT as `curl -T` sends).
fn torchserve_predict(errors: &Value, params: &Value) -> Value {
    let mut responses = errors.clone();
    responses["404"] = error_response("No such model or version");
    responses["200"] = json!({
        "description": "TorchServe's image classifier answer: {label: probability}, top-k, most probable first",
        "content": {"application/json": {"schema": {"type": "object", "additionalProperties": {"type": "number"}}}}
    });
    let op = json!({
        "summary": "TorchServe inference: one image as the raw body or a multipart `data`/`file` field",
        "parameters": params.as_array().into_iter().flatten().cloned()
            .chain([json!({"name": "top_k", "in": "query", "schema": {"type": "integer", "minimum": 1}})])
            .collect::<Vec<_>>(),
        "requestBody": {"required": true, "content": {
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
            "image/*": {"schema": {"type": "string", "format": "binary"}},
            "multipart/form-data": {"schema": {"type": "object", "properties": {"data": {"type": "string", "format": "binary"}}}}
        }},
        "responses": responses
    });
    json!({"post": op.clone(), "put": op})
}

/// The document for a server of `models` (URL names, the default first).
pub fn spec(models: &[String]) -> Value {
    let errors = json!({
        "400": error_response("Bad request: undecodable image, malformed body, missing field"),
        "413": error_response("Body or image (pixel count) too large"),
        "415": error_response("Not an image, or an unsupported content type"),
        "503": error_response("Queue full or model not loaded yet (see Retry-After)"),
        "504": error_response("Request timed out"),
    });
    let mut predict_responses = errors.clone();
    predict_responses["200"] = json!({
        "description": "Top-k predictions. One object for one image; a list (one entry per `file` field, in order) for several; Flash Serve's shape for a Flash body.",
        "content": {"application/json": {"schema": {"oneOf": [
            {"$ref": "#/components/schemas/PredictResponse"},
            {"type": "array", "items": {"oneOf": [{"$ref": "#/components/schemas/PredictResponse"}, {"$ref": "#/components/schemas/Error"}]}},
            {"$ref": "#/components/schemas/FlashResponse"}
        ]}}}
    });
    let v2_infer_body = json!({"required": true, "content": {"application/json": {"schema": {"type": "object"}}, "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}});
    let simple = |summary: &str| json!({"get": {"summary": summary, "responses": {"200": {"description": "OK"}, "503": error_response("Not ready")}}});
    let (named, versioned) = (model_params(models, false), model_params(models, true));
    let with_params = |mut item: Value, params: &Value| {
        if let Some(ops) = item.as_object_mut() {
            for op in ops.values_mut() {
                op["parameters"] = params.clone();
                op["responses"]["404"] = error_response("No such model or version");
            }
        }
        item
    };
    let v2_infer = |summary: &str| {
        json!({"post": {
            "summary": summary,
            "requestBody": v2_infer_body,
            "responses": errors.clone()
        }})
    };
    json!({
        "openapi": "3.0.3",
        "info": {"title": "classify", "version": env!("CARGO_PKG_VERSION"),
                 "description": format!("Image classification with {}.", models.join(", "))},
        "paths": {
            "/predict": {"post": {
                "summary": "Classify images",
                "parameters": [
                    {"name": "top_k", "in": "query", "schema": {"type": "integer", "minimum": 1}, "description": "Predictions per image (default: the server's --top-k)"},
                    {"name": "model", "in": "query", "schema": {"type": "string", "enum": models}, "description": "Which model (default: the first one the server was given)"}
                ],
                "requestBody": {"required": true, "content": {
                    "multipart/form-data": {"schema": {"type": "object", "properties": {"file": {"type": "string", "format": "binary"}}, "required": ["file"]}},
                    "image/*": {"schema": {"type": "string", "format": "binary"}},
                    "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
                    "application/json": {"schema": {"oneOf": [
                        {"type": "object", "properties": {"image": {"type": "string", "description": "base64 image, optionally a data: URL"}}, "required": ["image"]},
                        {"$ref": "#/components/schemas/FlashRequest"}
                    ]}}
                }},
                "responses": predict_responses
            }},
            "/": {"get": {"summary": "Upload page (text/html) or a JSON hint for API clients", "responses": {"200": {"description": "OK"}}},
                  "post": {"summary": "Upload form post without JavaScript: HTML result page", "responses": {"200": {"description": "OK"}}}},
            "/health": simple("Liveness"),
            "/ready": simple("Readiness: model loaded and warmed up"),
            "/metrics": {"get": {"summary": "Prometheus metrics", "responses": {"200": {"description": "text/plain exposition format"}}}},
            "/openapi.json": {"get": {"summary": "This document", "responses": {"200": {"description": "OK"}}}},
            "/v2": {"get": {"summary": "v2 server metadata: name, version, extensions", "responses": {"200": {"description": "OK"}}}},
            "/v2/health/live": simple("Open Inference Protocol v2 liveness"),
            "/v2/health/ready": simple("Open Inference Protocol v2 readiness"),
            "/v2/models/{name}": with_params(simple("v2 model metadata"), &named),
            "/v2/models/{name}/ready": with_params(simple("v2 model readiness"), &named),
            "/v2/models/{name}/infer": with_params(v2_infer(
                "v2 inference: one BYTES input holding encoded images (JSON base64 strings, or the binary tensor extension); outputs labels, probabilities, class_ids, or Triton classification strings (`\"parameters\": {\"classification\": K}` on an output)"
            ), &named),
            "/v2/models/{name}/versions/{version}": with_params(simple("v2 model metadata (version 1, the only one)"), &versioned),
            "/v2/models/{name}/versions/{version}/ready": with_params(simple("v2 model readiness (version 1)"), &versioned),
            "/v2/models/{name}/versions/{version}/infer": with_params(v2_infer(
                "v2 inference addressed with the model version (as tritonclient's model_version sends it)"
            ), &versioned),
            "/ping": simple("TorchServe health: {\"status\": \"Healthy\"}"),
            "/models": {"get": {"summary": "TorchServe model list: {\"models\": [{\"modelName\", \"modelUrl\"}]}", "responses": {"200": {"description": "OK"}}}},
            "/predictions/{name}": torchserve_predict(&errors, &named),
            "/predictions/{name}/{version}": torchserve_predict(&errors, &versioned)
        },
        "components": {"schemas": {
            "Prediction": {"type": "object", "properties": {
                "index": {"type": "integer"}, "label": {"type": "string"},
                "wnid": {"type": "string"}, "score": {"type": "number"}}, "required": ["index", "label", "score"]},
            "PredictResponse": {"type": "object", "properties": {
                "class_id": {"type": "integer"}, "class_name": {"type": "string"}, "model": {"type": "string"},
                "filename": {"type": "string"},
                "predictions": {"type": "array", "items": {"$ref": "#/components/schemas/Prediction"}}},
                "required": ["class_id", "class_name", "model", "predictions"]},
            "FlashRequest": {"type": "object", "properties": {
                "session": {"type": "string"},
                "payload": {"type": "object", "properties": {"img": {"type": "object", "properties": {"data": {"type": "string"}}}}}}},
            "FlashResponse": {"type": "object", "properties": {
                "session": {"type": "string"},
                "result": {"type": "object", "properties": {"prediction": {"type": "string"}}}}},
            "Error": {"type": "object", "properties": {"error": {"type": "string"}, "status": {"type": "integer"}}, "required": ["error"]}
        }}
    })
}

/// Marks the operations that need an API key (see `access.rs`) and declares both ways of
/// sending one. Open: health, readiness, this document, the page itself, and `/metrics`
/// unless `protect_metrics`.
pub fn require_keys(spec: &mut Value, protect_metrics: bool) {
    spec["components"]["securitySchemes"] = json!({
        "bearer": {"type": "http", "scheme": "bearer"},
        "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"}
    });
    let Some(paths) = spec["paths"].as_object_mut() else {
        return;
    };
    for (path, item) in paths.iter_mut() {
        let Some(ops) = item.as_object_mut() else {
            continue;
        };
        for (method, op) in ops.iter_mut() {
            let open = matches!(
                path.as_str(),
                "/health" | "/ready" | "/openapi.json" | "/ping"
            ) || path.starts_with("/v2/health/")
                || path.ends_with("/ready")
                || (path == "/" && method == "get")
                || (path == "/metrics" && !protect_metrics);
            if !open {
                op["security"] = json!([{"bearer": []}, {"apiKey": []}]);
                op["responses"]["401"] = error_response("Missing or wrong API key");
            }
        }
    }
}

pub async fn document(State(state): State<AppState>) -> Json<Value> {
    let names: Vec<String> = state
        .models()
        .iter()
        .map(|m| m.name().to_string())
        .collect();
    let mut doc = spec(&names);
    if state.0.access.api_keys.is_some() {
        require_keys(&mut doc, state.0.access.protect_metrics);
    }
    Json(doc)
}

/// Swagger UI over `/openapi.json`, served from assets inside the binary.
pub fn docs_routes() -> axum::Router {
    swagger_ui_dist::generate_routes(swagger_ui_dist::ApiDefinition {
        uri_prefix: "/docs",
        api_definition: swagger_ui_dist::OpenApiSource::Uri("/openapi.json"),
        title: Some("classify API"),
    })
}
