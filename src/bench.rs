//! `classify bench`: forward-pass speed of a model on synthetic input, the numbers the
//! speed work is judged by: images/s, per-batch latency percentiles, achieved GFLOP/s and
//! peak resident memory.

use std::time::{Duration, Instant};

use candle_core::{Device, Module, Tensor};
use serde::Serialize;

use crate::model::{Arch, LoadOptions, Network};
use crate::weights::synthetic::{self, SyntheticWeights};
use crate::weights::Checkpoint;

#[derive(Debug, Clone)]
pub struct BenchSettings {
    pub arch: Arch,
    /// Real weights; synthetic weights of the right shapes when `None`.
    pub weights: Option<std::path::PathBuf>,
    pub batch_size: usize,
    pub iterations: usize,
    pub warmup: usize,
    pub input_size: usize,
    pub device: Device,
    /// Also measure candle's stock operations (custom kernels off).
    pub compare_stock: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    pub model: String,
    pub weights: String,
    pub device: String,
    /// The CPU's model name, and the instruction set the kernels ran (`CLASSIFY_CPU_ISA`).
    pub cpu: String,
    pub isa: String,
    pub threads: usize,
    pub batch_size: usize,
    pub input_size: usize,
    pub iterations: usize,
    pub images_per_sec: f64,
    pub latency_ms_p50: f64,
    pub latency_ms_p90: f64,
    pub gflops: f64,
    /// The same measurement with candle's stock operations only (custom kernels off).
    pub stock: Option<StockReport>,
    pub load_ms: f64,
    /// Peak RSS after warm-up (with --no-stock: of the fast path alone).
    pub peak_rss_mb: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct StockReport {
    pub images_per_sec: f64,
    pub latency_ms_p50: f64,
    pub latency_ms_p90: f64,
    pub gflops: f64,
}

/// Peak resident set size of this process (Linux), in MiB.
pub fn peak_rss_mb() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i].as_secs_f64() * 1000.0
}

/// The network under test, loaded with `opts`.
fn load(s: &BenchSettings, opts: LoadOptions) -> anyhow::Result<(Network, String)> {
    Ok(match &s.weights {
        Some(path) => {
            let ck = Checkpoint::open(path)?;
            let (net, _, _) = Network::from_checkpoint(s.arch, ck, &s.device, opts)?;
            (net, path.display().to_string())
        }
        None => (
            Network::build(s.arch, SyntheticWeights::var_builder(&s.device), 1000, opts)?,
            "synthetic".to_string(),
        ),
    })
}

pub fn run(s: &BenchSettings) -> anyhow::Result<BenchReport> {
    let opts = LoadOptions::from_env()?;
    let load_start = Instant::now();
    let (network, weights) = load(s, opts)?;
    let load_ms = load_start.elapsed().as_secs_f64() * 1000.0;
    // candle's stock operations: the same weights, loaded without the NHWC kernels.
    let stock_network = if s.compare_stock {
        Some(
            load(
                s,
                LoadOptions {
                    stock: true,
                    ..opts
                },
            )?
            .0,
        )
    } else {
        None
    };
    let x = synthetic::input(&[s.batch_size, 3, s.input_size, s.input_size], &Device::Cpu)?
        .to_device(&s.device)?;
    let step = |network: &Network, x: &Tensor| -> anyhow::Result<Duration> {
        let t = Instant::now();
        let y = network.forward(x)?;
        // Bring the result back so asynchronous devices are timed to completion.
        let _ = y.to_device(&Device::Cpu)?;
        Ok(t.elapsed())
    };
    // Both paths are warmed up, then timed in alternation, so neither benefits from running
    // second (warm allocator, caches).
    let timed = |stock: bool| -> anyhow::Result<Duration> {
        match (&stock_network, stock) {
            (Some(net), true) => step(net, &x),
            _ => step(&network, &x),
        }
    };
    let paths: &[bool] = if s.compare_stock {
        &[false, true]
    } else {
        &[false]
    };
    for _ in 0..s.warmup {
        for &stock in paths {
            timed(stock)?;
        }
    }
    let peak_rss_mb = peak_rss_mb();
    let (mut times, mut stock_times) = (Vec::new(), Vec::new());
    for _ in 0..s.iterations.max(1) {
        times.push(timed(false)?);
        if s.compare_stock {
            stock_times.push(timed(true)?);
        }
    }
    times.sort();
    stock_times.sort();
    let scale = (s.input_size as f64 / 224.0).powi(2);
    let summarize = |times: &[Duration]| {
        let total: f64 = times.iter().map(Duration::as_secs_f64).sum();
        let ips = (s.batch_size * times.len()) as f64 / total;
        (
            ips,
            percentile(times, 0.5),
            percentile(times, 0.9),
            2.0 * s.arch.gmacs_224() * scale * ips,
        )
    };
    let (images_per_sec, p50, p90, gflops) = summarize(&times);
    let stock = if s.compare_stock {
        let (images_per_sec, latency_ms_p50, latency_ms_p90, gflops) = summarize(&stock_times);
        Some(StockReport {
            images_per_sec,
            latency_ms_p50,
            latency_ms_p90,
            gflops,
        })
    } else {
        None
    };
    Ok(BenchReport {
        model: s.arch.name().to_string(),
        weights,
        device: format!("{:?}", s.device),
        cpu: crate::model::kernels::isa::cpu_model(),
        isa: opts.isa.to_string(),
        threads: candle_core::utils::get_num_threads(),
        batch_size: s.batch_size,
        input_size: s.input_size,
        iterations: times.len(),
        images_per_sec,
        latency_ms_p50: p50,
        latency_ms_p90: p90,
        gflops,
        stock,
        load_ms,
        peak_rss_mb,
    })
}

impl std::fmt::Display for BenchReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "{} ({} weights) on {} ({}, {} kernels), {} threads, batch {} at {}x{}, {} iterations",
            self.model,
            self.weights,
            self.device,
            self.cpu,
            self.isa,
            self.threads,
            self.batch_size,
            self.input_size,
            self.input_size,
            self.iterations
        )?;
        writeln!(f, "  throughput   {:>9.2} images/s", self.images_per_sec)?;
        writeln!(
            f,
            "  latency      {:>9.1} ms p50, {:.1} ms p90 (per batch)",
            self.latency_ms_p50, self.latency_ms_p90
        )?;
        writeln!(f, "  compute      {:>9.1} GFLOP/s", self.gflops)?;
        if let Some(st) = &self.stock {
            writeln!(
                f,
                "  stock candle {:>9.2} images/s, {:.1} ms p50, {:.1} ms p90, {:.1} GFLOP/s ({:.2}x)",
                st.images_per_sec,
                st.latency_ms_p50,
                st.latency_ms_p90,
                st.gflops,
                self.images_per_sec / st.images_per_sec
            )?;
        }
        match self.peak_rss_mb {
            Some(mb) => writeln!(f, "  peak memory  {mb:>9.0} MiB RSS"),
            None => Ok(()),
        }
    }
}
