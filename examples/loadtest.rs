//! A small, bounded HTTP load generator for `classify serve` (loopback only).
//!
//!     cargo run --release --example loadtest -- --url http://127.0.0.1:5000/predict \
//!         --image photo.jpg --concurrency 8 --requests 400 --max-seconds 60
//!
//! Each worker keeps one HTTP/1.1 connection open and POSTs the image as a raw
//! `image/*` body. Prints throughput, latency percentiles and the status counts as one
//! JSON object. Stops after `--requests` requests or `--max-seconds`, whichever is first.
//! `--bad-every N` makes every N-th request a corrupt image (for soak tests).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

struct Args {
    host: String,
    path: String,
    image: Vec<u8>,
    concurrency: usize,
    requests: usize,
    max_seconds: u64,
    bad_every: usize,
}

fn parse_args() -> Args {
    let mut url = "http://127.0.0.1:5000/predict".to_string();
    let mut image = None;
    let (mut concurrency, mut requests, mut max_seconds, mut bad_every) = (8, 200, 60, 0);
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut val = || it.next().unwrap_or_else(|| panic!("{a} needs a value"));
        match a.as_str() {
            "--url" => url = val(),
            "--image" => image = Some(std::fs::read(val()).expect("reading --image")),
            "--concurrency" => concurrency = val().parse().expect("--concurrency"),
            "--requests" => requests = val().parse().expect("--requests"),
            "--max-seconds" => max_seconds = val().parse().expect("--max-seconds"),
            "--bad-every" => bad_every = val().parse().expect("--bad-every"),
            _ => panic!("unknown argument {a}"),
        }
    }
    let rest = url.strip_prefix("http://").expect("only http:// URLs");
    let (host, path) = rest.split_once('/').map_or((rest, "/"), |(h, p)| (h, p));
    let ip = host.split(':').next().unwrap_or("");
    assert!(
        ip == "localhost" || ip.starts_with("127.") || ip == "[::1]",
        "load tests only target loopback addresses"
    );
    Args {
        host: host.to_string(),
        path: format!("/{}", path.trim_start_matches('/')),
        image: image.expect("--image is required"),
        concurrency,
        requests,
        max_seconds,
        bad_every,
    }
}

/// Send one request on `conn`, return the status code.
fn request(
    conn: &mut BufReader<TcpStream>,
    host: &str,
    path: &str,
    body: &[u8],
) -> std::io::Result<u16> {
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: image/jpeg\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    let stream = conn.get_mut();
    stream.write_all(head.as_bytes())?;
    stream.write_all(body)?;
    let mut line = String::new();
    conn.read_line(&mut line)?;
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let mut length = 0usize;
    loop {
        line.clear();
        conn.read_line(&mut line)?;
        if line == "\r\n" || line.is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            if k.eq_ignore_ascii_case("content-length") {
                length = v.trim().parse().unwrap_or(0);
            }
        }
    }
    let mut sink = vec![0u8; length];
    conn.read_exact(&mut sink)?;
    Ok(status)
}

fn main() {
    let args = Arc::new(parse_args());
    let next = Arc::new(AtomicUsize::new(0));
    let latencies = Arc::new(Mutex::new(Vec::new()));
    let statuses = Arc::new(Mutex::new(BTreeMap::<String, usize>::new()));
    let deadline = Instant::now() + Duration::from_secs(args.max_seconds);
    let start = Instant::now();
    let workers: Vec<_> = (0..args.concurrency)
        .map(|_| {
            let (args, next, latencies, statuses) = (
                args.clone(),
                next.clone(),
                latencies.clone(),
                statuses.clone(),
            );
            std::thread::spawn(move || {
                let bad: Vec<u8> = args.image[..args.image.len() / 3].to_vec();
                let mut conn: Option<BufReader<TcpStream>> = None;
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= args.requests || Instant::now() >= deadline {
                        break;
                    }
                    let is_bad = args.bad_every > 0 && i % args.bad_every == args.bad_every - 1;
                    let body = if is_bad { &bad } else { &args.image };
                    let t = Instant::now();
                    let c = match conn.as_mut() {
                        Some(c) => c,
                        None => match TcpStream::connect(&args.host) {
                            Ok(s) => {
                                s.set_read_timeout(Some(Duration::from_secs(60))).ok();
                                conn.insert(BufReader::new(s))
                            }
                            Err(_) => {
                                *statuses
                                    .lock()
                                    .unwrap()
                                    .entry("connect_error".into())
                                    .or_default() += 1;
                                continue;
                            }
                        },
                    };
                    let key = match request(c, &args.host, &args.path, body) {
                        Ok(code) => {
                            if !is_bad {
                                latencies
                                    .lock()
                                    .unwrap()
                                    .push(t.elapsed().as_secs_f64() * 1000.0);
                            }
                            format!("{}{code}", if is_bad { "bad_" } else { "" })
                        }
                        Err(_) => {
                            conn = None;
                            "io_error".into()
                        }
                    };
                    *statuses.lock().unwrap().entry(key).or_default() += 1;
                }
            })
        })
        .collect();
    for w in workers {
        let _ = w.join();
    }
    let elapsed = start.elapsed().as_secs_f64();
    let mut lat = latencies.lock().unwrap().clone();
    lat.sort_by(f64::total_cmp);
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 * p).ceil() as usize).saturating_sub(1))
            .copied()
            .unwrap_or(0.0)
    };
    let statuses = statuses.lock().unwrap().clone();
    let good_ok = statuses.get("200").copied().unwrap_or(0);
    let good_total: usize = statuses
        .iter()
        .filter(|(k, _)| !k.starts_with("bad_"))
        .map(|(_, v)| v)
        .sum();
    println!(
        "{{\"concurrency\":{},\"requests\":{},\"seconds\":{:.2},\"throughput_rps\":{:.1},\"latency_ms_p50\":{:.1},\"latency_ms_p99\":{:.1},\"good_ok\":{},\"good_errors\":{},\"statuses\":{:?}}}",
        args.concurrency,
        statuses.values().sum::<usize>(),
        elapsed,
        good_ok as f64 / elapsed,
        pct(0.50),
        pct(0.99),
        good_ok,
        good_total - good_ok,
        statuses
    );
}
