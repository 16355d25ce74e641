//! Hostile and broken inputs (corpus: `tests/common/hostile.rs`): every input yields exactly
//! one result or one error, good inputs in the same run are still classified, nothing hangs,
//! nothing crashes; the server answers each with a documented 4xx JSON error or a correct
//! result and keeps serving.

mod common;

use std::collections::HashMap;
use std::process::Stdio;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use base64::Engine as _;
use common::hostile::{corpus, write_corpus, Expect};
use common::HubCache;
use http_body_util::BodyExt;
use serde_json::Value;
use tower::ServiceExt;

/// Run the command, killing it (and failing) if it takes longer than `limit`.
fn output_within(mut cmd: std::process::Command, limit: Duration) -> std::process::Output {
    let child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let id = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(limit) {
        Ok(out) => out.unwrap(),
        Err(_) => {
            let _ = std::process::Command::new("kill")
                .args(["-9", &id.to_string()])
                .status();
            panic!("classify did not finish within {limit:?} (hang?)");
        }
    }
}

#[test]
fn cli_reports_each_bad_input_once_and_classifies_the_rest() {
    let hub = HubCache::new();
    let dir = tempfile::tempdir().unwrap();
    let files = write_corpus(dir.path(), &common::fixtures().join("photos"));
    let start = Instant::now();
    let mut cmd = hub.command();
    cmd.args([
        "--model",
        "tf_efficientnet_lite0",
        "--json",
        "--batch-size",
        "4",
    ])
    .arg(dir.path());
    let out = output_within(cmd, Duration::from_secs(120));
    eprintln!("corpus of {} files in {:?}", files.len(), start.elapsed());
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let records: Vec<Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let by_path: HashMap<String, &Value> = records
        .iter()
        .map(|r| (r["path"].as_str().unwrap().to_string(), r))
        .collect();
    assert_eq!(
        by_path.len(),
        records.len(),
        "no input reported twice (the symlink loop is walked once)"
    );
    let missing: Vec<_> = files
        .iter()
        .map(|(p, _)| p.to_string_lossy().into_owned())
        .filter(|p| !by_path.contains_key(p))
        .collect();
    assert!(missing.is_empty(), "no record for {missing:?}");
    assert_eq!(records.len(), files.len(), "exactly one line per input");
    for (path, expect) in &files {
        let key = path.to_string_lossy().into_owned();
        let rec = by_path
            .get(&key)
            .unwrap_or_else(|| panic!("no record for {key:?}"));
        match expect {
            Expect::Classified => {
                let preds = rec["predictions"]
                    .as_array()
                    .unwrap_or_else(|| panic!("{key}: {rec}"));
                assert_eq!(preds.len(), 5, "{key}");
            }
            Expect::Error => {
                let err = rec["error"]
                    .as_str()
                    .unwrap_or_else(|| panic!("{key} should fail: {rec}"));
                assert!(!err.is_empty());
            }
        }
    }
    let err = |name: &str| {
        by_path[&dir.path().join(name).to_string_lossy().into_owned()]["error"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert!(
        err("bomb_50000x50000.png").contains("over the limit"),
        "{}",
        err("bomb_50000x50000.png")
    );
    assert!(err("bomb_50000x50000.jpg").contains("over the limit"));
    assert_eq!(err("fifo.jpg"), "not a regular file");
    assert!(err("photo.heic").contains("HEIC"));
    assert!(err("truncated.jpg").contains("truncated"));
}

#[test]
fn max_pixels_is_configurable() {
    let hub = HubCache::new();
    let mut cmd = hub.command();
    cmd.args([
        "--model",
        "tf_efficientnet_lite0",
        "--json",
        "--max-pixels",
        "10000",
    ])
    .arg(common::photo("coffee.png"));
    let out = output_within(cmd, Duration::from_secs(60));
    assert_eq!(out.status.code(), Some(1));
    let rec: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        rec["error"]
            .as_str()
            .unwrap()
            .contains("over the limit of 10000"),
        "{rec}"
    );
}

fn server_state() -> classify::server::AppState {
    classify::server::AppState::with_engine(
        common::lite0_engine(None),
        Default::default(),
        Default::default(),
    )
    .unwrap()
}

async fn call(state: &classify::server::AppState, req: Request<Body>) -> (StatusCode, Value) {
    let resp = classify::server::app(state.clone())
        .oneshot(req)
        .await
        .unwrap();
    let status = resp.status();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    let v = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| panic!("{status}: not JSON: {}", String::from_utf8_lossy(&bytes)));
    (status, v)
}

fn requests_for(bytes: &[u8]) -> Vec<(&'static str, Request<Body>)> {
    let boundary = "XyZcorpusBoundary";
    let mut multipart = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"x\"\r\n\r\n"
    )
    .into_bytes();
    multipart.extend(bytes);
    multipart.extend(format!("\r\n--{boundary}--\r\n").as_bytes());
    let b64 = base64::engine::general_purpose::STANDARD.encode(bytes);
    vec![
        (
            "multipart",
            Request::post("/predict")
                .header(
                    header::CONTENT_TYPE,
                    format!("multipart/form-data; boundary={boundary}"),
                )
                .body(Body::from(multipart))
                .unwrap(),
        ),
        (
            "raw",
            Request::post("/predict")
                .header(header::CONTENT_TYPE, "application/octet-stream")
                .body(Body::from(bytes.to_vec()))
                .unwrap(),
        ),
        (
            "base64",
            Request::post("/predict")
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from(serde_json::json!({ "image": b64 }).to_string()))
                .unwrap(),
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn server_answers_every_corpus_file_and_stays_healthy() {
    let state = server_state();
    let good = std::fs::read(common::photo("coffee.png")).unwrap();
    for entry in corpus(&common::fixtures().join("photos")) {
        for (format, req) in requests_for(&entry.bytes) {
            let (status, v) = call(&state, req).await;
            let what = format!("{} via {format}", entry.name);
            match entry.expect {
                Expect::Classified => assert_eq!(status, StatusCode::OK, "{what}: {v}"),
                Expect::Error => {
                    assert!(
                        [400, 413, 415].contains(&status.as_u16()),
                        "{what}: {status} {v}"
                    );
                    assert_eq!(v["status"], status.as_u16(), "{what}");
                    assert!(v["error"].is_string(), "{what}");
                }
            }
            // The next good request is answered correctly.
            let (status, v) = call(&state, requests_for(&good).remove(1).1).await;
            assert_eq!(
                (status, v["class_id"].as_u64()),
                (StatusCode::OK, Some(967)),
                "after {what}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_bad_and_good_requests_do_not_disturb_each_other() {
    let state = server_state();
    let good = std::fs::read(common::photo("rocket.jpg")).unwrap();
    let bad: Vec<Vec<u8>> = corpus(&common::fixtures().join("photos"))
        .into_iter()
        .filter(|e| e.expect == Expect::Error)
        .map(|e| e.bytes)
        .collect();
    let tasks: Vec<_> = (0..48)
        .map(|i| {
            let state = state.clone();
            let body = if i % 2 == 0 {
                good.clone()
            } else {
                bad[i % bad.len()].clone()
            };
            tokio::spawn(async move {
                let req = requests_for(&body).remove(i % 3).1;
                (i % 2 == 0, call(&state, req).await)
            })
        })
        .collect();
    for t in tasks {
        let (is_good, (status, v)) = t.await.unwrap();
        if is_good {
            assert_eq!(
                (status, v["class_id"].as_u64()),
                (StatusCode::OK, Some(657)),
                "{v}"
            );
        } else {
            assert!(status.is_client_error(), "{status} {v}");
        }
    }
}

#[test]
fn slow_clients_are_cut_off_and_huge_headers_refused() {
    use std::io::{Read, Write};
    let hub = HubCache::new();
    let mut child = hub
        .command()
        .args([
            "serve",
            "--port",
            "0",
            "--model",
            "tf_efficientnet_lite0",
            "--header-timeout-secs",
            "1",
        ])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut stderr, &mut line).unwrap();
    let addr = line.trim().rsplit("http://").next().unwrap().to_string();
    std::thread::spawn(move || std::io::copy(&mut stderr, &mut std::io::sink()));

    // Slowloris: half a request head, then silence. The server must close the connection.
    let mut slow = std::net::TcpStream::connect(&addr).unwrap();
    slow.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    slow.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let start = Instant::now();
    let mut buf = Vec::new();
    let _ = slow.read_to_end(&mut buf);
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "slow client held the connection {:?}",
        start.elapsed()
    );

    // A 200 KiB header is refused.
    let mut big = std::net::TcpStream::connect(&addr).unwrap();
    let head = format!(
        "GET /health HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(200 * 1024)
    );
    let _ = big.write_all(head.as_bytes());
    big.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut resp = String::new();
    let _ = big.read_to_string(&mut resp);
    assert!(
        resp.is_empty() || resp.starts_with("HTTP/1.1 431"),
        "{resp}"
    );

    // And the server still works.
    let mut ok = std::net::TcpStream::connect(&addr).unwrap();
    ok.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut resp = String::new();
    ok.read_to_string(&mut resp).unwrap();
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn defaults_are_safe() {
    use clap::Parser;
    let cli = classify::cli::Cli::try_parse_from(["classify", "serve"]).unwrap();
    let Some(classify::cli::Command::Serve(args)) = cli.command else {
        panic!("serve subcommand")
    };
    assert_eq!(
        args.host.to_string(),
        "127.0.0.1",
        "binds loopback unless told otherwise"
    );
    let s = args.settings().unwrap();
    assert!(s.limits.max_body_bytes <= 64 * 1024 * 1024);
    assert!(s.limits.header_read_timeout <= Duration::from_secs(30));
    assert_eq!(s.grpc_port, None, "gRPC only when asked for");
    assert!(s.access.cors_origins.is_empty(), "no CORS unless asked for");
}

/// Uploads are never written to disk and no request data reaches a path: the server code
/// has no filesystem calls at all.
#[test]
fn server_code_never_touches_the_filesystem() {
    let files = common::server_sources();
    for (path, text) in &files {
        for needle in [
            "std::fs",
            "File::",
            "OpenOptions",
            "tokio::fs",
            "create_dir",
            "tempfile",
        ] {
            assert!(!text.contains(needle), "{} uses {needle}", path.display());
        }
    }
    assert!(
        files.len() > 10,
        "read every file of src/server and its folders"
    );
}
