//! The library's entry points behind the subcommands: glue between settings, the engine,
//! the pipeline and the printers. Errors here are `anyhow` with context; the library below
//! has typed errors.

use std::io::{self, Write};

use anyhow::Context;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;

use crate::config::{ClassifySettings, OutputFormat};
use crate::engine::Engine;
use crate::hub::HubOptions;
use crate::model::Arch;
use crate::output::{HumanPrinter, JsonPrinter, Printer};
use crate::pipeline;

/// How a classification run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunSummary {
    pub classified: usize,
    pub failed: usize,
    /// The reader of stdout went away (`classify dir | head -1`); the run stopped early.
    pub stdout_closed: bool,
}

fn progress_bar(len: usize, enabled: bool) -> ProgressBar {
    if !enabled || len < 2 {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::with_draw_target(Some(len as u64), ProgressDrawTarget::stderr());
    let style = ProgressStyle::with_template("{bar:30} {pos}/{len} images  {per_sec}  ETA {eta}")
        .unwrap_or_else(|_| ProgressStyle::default_bar());
    pb.set_style(style);
    pb
}

/// `classify [OPTIONS] INPUT...`
pub fn classify(settings: &ClassifySettings, hub: &HubOptions) -> anyhow::Result<RunSummary> {
    let inputs = pipeline::select_shard(
        pipeline::expand_inputs(&settings.inputs, settings.recursive),
        settings.shard,
    );
    if inputs.is_empty() {
        tracing::warn!("no images found in the given inputs");
    }
    let hub = HubOptions {
        progress: settings.progress,
        ..hub.clone()
    };
    let engine = Engine::load(&settings.model, &hub).context("cannot load the model")?;

    let stdout = io::stdout().lock();
    let mut printer: Box<dyn Printer> = match settings.output {
        OutputFormat::Human { color } => Box::new(HumanPrinter::new(stdout, color)),
        OutputFormat::JsonLines => Box::new(JsonPrinter::new(stdout, engine.name())),
    };
    let pb = progress_bar(inputs.len(), settings.progress);
    let mut summary = RunSummary {
        classified: 0,
        failed: 0,
        stdout_closed: false,
    };
    let result = pipeline::run(&engine, &inputs, settings.batch_size, settings.top_k, |r| {
        pb.inc(1);
        match &r.outcome {
            Ok(_) => summary.classified += 1,
            Err(e) => {
                summary.failed += 1;
                if !settings.quiet {
                    pb.suspend(|| eprintln!("classify: {}: {e}", r.name));
                }
            }
        }
        printer.print(&r)
    });
    pb.finish_and_clear();
    match result {
        Ok(()) => Ok(summary),
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(RunSummary {
            stdout_closed: true,
            ..summary
        }),
        Err(e) => Err(e).context("cannot write results"),
    }
}

#[derive(Debug, Serialize)]
struct ModelRow {
    name: &'static str,
    /// `null` where the architecture has no published weights (use `--weights`).
    repo: Option<&'static str>,
    input_size: u32,
    interpolation: &'static str,
    cached: bool,
}

/// `classify models`
pub fn list_models(out: &mut impl Write, hub: &HubOptions, json: bool) -> io::Result<()> {
    let rows: Vec<ModelRow> = Arch::all()
        .map(|arch| {
            let pre = arch.default_preprocess();
            ModelRow {
                name: arch.name(),
                repo: arch.default_repo(),
                input_size: pre.input_size,
                interpolation: match pre.interpolation {
                    crate::preprocess::Interpolation::Bilinear => "bilinear",
                    crate::preprocess::Interpolation::Bicubic => "bicubic",
                },
                cached: arch.default_repo().is_some_and(|repo| {
                    crate::hub::WEIGHT_FILES[..2]
                        .iter()
                        .any(|f| hub.cached(repo, "main", f).is_some())
                }),
            }
        })
        .collect();
    if json {
        for row in &rows {
            serde_json::to_writer(&mut *out, row)?;
            writeln!(out)?;
        }
        return Ok(());
    }
    writeln!(
        out,
        "{:<22} {:<34} {:>5}  {:<13} CACHED",
        "MODEL", "DEFAULT REPO", "INPUT", "INTERPOLATION"
    )?;
    for r in &rows {
        writeln!(
            out,
            "{:<22} {:<34} {:>5}  {:<13} {}",
            r.name,
            r.repo.unwrap_or("- (no published weights)"),
            r.input_size,
            r.interpolation,
            if r.cached { "yes" } else { "no" }
        )?;
    }
    writeln!(out, "\nHub cache: {}", hub.cache_dir.display())
}
