//! Any body through the `/predict` request parser (multipart, JSON, raw image), the first
//! byte choosing the content type: an error is fine, a panic is a bug.
#![no_main]

use std::sync::OnceLock;

use axum::body::Bytes;
use axum::http::{header, HeaderMap, HeaderValue};
use libfuzzer_sys::fuzz_target;

const CONTENT_TYPES: [&str; 4] = [
    "multipart/form-data; boundary=B",
    "application/json",
    "image/png",
    "text/plain",
];

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a tokio runtime")
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&kind, body)) = data.split_first() else {
        return;
    };
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(CONTENT_TYPES[kind as usize % CONTENT_TYPES.len()]),
    );
    let body = Bytes::copy_from_slice(body);
    let _ = runtime().block_on(classify::server::parse_payload(&headers, body));
});
