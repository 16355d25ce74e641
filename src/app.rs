//! The library's entry points behind the subcommands: glue between settings, the engine,
//! the pipeline and the printers. Errors here are `anyhow` with context; the library below
//! has typed errors.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::Path;
use std::time::Instant;

use anyhow::Context;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressState, ProgressStyle};
use serde::Serialize;

use crate::config::ClassifySettings;
use crate::engine::Engine;
use crate::hub::HubOptions;
use crate::model::Arch;
use crate::output::resume::{self, Recorded};
use crate::output::{self, RecordContext};
use crate::pipeline;

/// How a classification run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RunSummary {
    /// Inputs classified by this run.
    pub classified: usize,
    /// Inputs that failed in this run.
    pub failed: usize,
    /// `--resume`: inputs the output file already recorded, skipped.
    pub skipped: usize,
    /// Of those, how many are recorded as failed (they count for the exit code).
    pub skipped_failed: usize,
    /// The reader of stdout went away (`classify dir | head -1`); the run stopped early.
    pub stdout_closed: bool,
}

impl RunSummary {
    /// Whether any input of this run ends up recorded as failed.
    pub fn any_failed(&self) -> bool {
        self.failed + self.skipped_failed > 0
    }
}

fn progress_bar(len: usize, enabled: bool) -> ProgressBar {
    if !enabled || len < 2 {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::with_draw_target(Some(len as u64), ProgressDrawTarget::stderr());
    let style = ProgressStyle::with_template(
        "{bar:30} {pos}/{len} images  {rate}  {elapsed_precise} elapsed  ETA {eta}",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar())
    .with_key(
        "rate",
        |state: &ProgressState, w: &mut dyn std::fmt::Write| {
            let _ = write!(w, "{}", format_rate(state.per_sec()));
        },
    );
    pb.set_style(style);
    pb
}

/// `12.3 img/s` (one decimal below 100, none above).
pub fn format_rate(per_sec: f64) -> String {
    if !per_sec.is_finite() {
        "- img/s".into()
    } else if per_sec < 100.0 {
        format!("{per_sec:.1} img/s")
    } else {
        format!("{per_sec:.0} img/s")
    }
}

/// Where the records go: stdout, or the `--output` file (appended to with `--resume`).
fn open_output(settings: &ClassifySettings) -> anyhow::Result<(Box<dyn Write>, Option<File>)> {
    let Some(path) = &settings.output_file else {
        return Ok((Box::new(io::stdout().lock()), None));
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create the directory of {}", path.display()))?;
    }
    let mut options = OpenOptions::new();
    if settings.resume {
        options.append(true).create(true);
    } else {
        options.write(true).create(true).truncate(true);
    }
    let file = options
        .open(path)
        .with_context(|| format!("cannot open {} for writing", path.display()))?;
    let sync = file.try_clone()?;
    Ok((Box::new(file), Some(sync)))
}

/// `classify [OPTIONS] INPUT...`
pub fn classify(settings: &ClassifySettings, hub: &HubOptions) -> anyhow::Result<RunSummary> {
    let hub = HubOptions {
        progress: settings.progress,
        ..hub.clone()
    };
    let engine = Engine::load(&settings.model, &hub).context("cannot load the model")?;
    let context = RecordContext {
        model: engine.name().to_string(),
        top_k: settings.top_k.min(engine.num_classes()),
    };

    let mut recorded = match (&settings.output_file, settings.resume) {
        (Some(path), true) => {
            let recorded = resume::prepare(path, settings.format, &context, settings.retry_errors)?;
            if recorded.torn {
                tracing::warn!(
                    "the last record of {} was incomplete (the run writing it was killed?); it is redone",
                    path.display()
                );
            }
            recorded
        }
        _ => Recorded::default(),
    };
    let mut summary = RunSummary::default();
    let mut in_shard = pipeline::shard_filter(settings.shard);
    let inputs = pipeline::expand_inputs(&settings.inputs, settings.walk, |input| {
        in_shard(input)
            && match recorded.take(&input.name) {
                Some(failed) => {
                    summary.skipped += 1;
                    summary.skipped_failed += usize::from(failed);
                    false
                }
                None => true,
            }
    });
    let header = !recorded.has_header;
    drop(recorded);
    if inputs.is_empty() && summary.skipped == 0 {
        tracing::warn!("no images found in the given inputs");
    }

    let (out, file) = open_output(settings)?;
    let mut printer =
        output::printer(settings.format, out, &context, header).context("cannot write results")?;
    let pb = progress_bar(inputs.len(), settings.progress);
    let started = Instant::now();
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
    drop(printer);
    let result = result.and_then(|()| file.as_ref().map_or(Ok(()), File::sync_all));
    match result {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => summary.stdout_closed = true,
        Err(e) => return Err(e).context("cannot write results"),
    }
    if !settings.quiet && (inputs.len() + summary.skipped > 1 || file.is_some()) {
        eprintln!("{}", summary_line(&summary, started.elapsed(), settings));
    }
    Ok(summary)
}

/// `classify: 420 classified, 3 failed in 12.3 s (34.5 img/s); 1000 already in out.csv`
fn summary_line(
    summary: &RunSummary,
    elapsed: std::time::Duration,
    settings: &ClassifySettings,
) -> String {
    let done = summary.classified + summary.failed;
    let secs = elapsed.as_secs_f64();
    let mut line = format!(
        "classify: {} classified, {} failed in {secs:.1} s ({})",
        summary.classified,
        summary.failed,
        format_rate(if secs > 0.0 { done as f64 / secs } else { 0.0 })
    );
    if summary.skipped > 0 {
        let file = settings.output_file.as_deref().unwrap_or(Path::new("-"));
        line += &format!("; {} already in {}", summary.skipped, file.display());
        if summary.skipped_failed > 0 {
            line += &format!(
                " ({} of them failed; --retry-errors tries them again)",
                summary.skipped_failed
            );
        }
    }
    if summary.stdout_closed {
        line += "; stopped: the reader of the output went away";
    }
    line
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
    let no_repo = "- (no published weights)";
    let name_w = rows.iter().map(|r| r.name.len()).max().unwrap_or(5).max(5);
    let repo_w = rows
        .iter()
        .map(|r| r.repo.map_or(no_repo.len(), str::len))
        .max()
        .unwrap_or(12);
    writeln!(
        out,
        "{:<name_w$} {:<repo_w$} {:>5}  {:<13} CACHED",
        "MODEL", "DEFAULT REPO", "INPUT", "INTERPOLATION"
    )?;
    for r in &rows {
        writeln!(
            out,
            "{:<name_w$} {:<repo_w$} {:>5}  {:<13} {}",
            r.name,
            r.repo.unwrap_or(no_repo),
            r.input_size,
            r.interpolation,
            if r.cached { "yes" } else { "no" }
        )?;
    }
    writeln!(out, "\nHub cache: {}", hub.cache_dir.display())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_read_as_images_per_second() {
        assert_eq!(format_rate(12.3456), "12.3 img/s");
        assert_eq!(format_rate(0.04), "0.0 img/s");
        assert_eq!(format_rate(345.6), "346 img/s");
        assert_eq!(format_rate(f64::INFINITY), "- img/s");
    }
}
