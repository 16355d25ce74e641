//! Printers: the same results as a human table, JSON Lines, CSV or TSV, to any `impl Write`
//! (stdout, or the `--output` file). stdout carries results only; errors, progress and the
//! summary go to stderr (see `app.rs`).
//!
//! Every printer hands each record to its writer in one `write_all` and flushes it, so a
//! reader (or a crash) never sees half a record unless the write itself was cut short, and
//! [`resume`] detects and redoes such a torn last record.
//!
//! JSON Lines schema (one object per input, in input order):
//! `{"path": "...", "model": "...", "predictions": [{"index": 282, "label": "tiger cat",
//! "wnid": "n02123159", "score": 0.571}, ...]}` or, for a failed input,
//! `{"path": "...", "error": "..."}`. `wnid` is present only when known.
//!
//! CSV/TSV: see [`delimited`].

pub mod delimited;
pub mod human;
pub mod jsonl;
pub mod resume;

use std::io::{self, Write};

pub use delimited::DelimitedPrinter;
pub use human::HumanPrinter;
pub use jsonl::JsonPrinter;

use crate::pipeline::ImageResult;

pub trait Printer {
    fn print(&mut self, result: &ImageResult) -> io::Result<()>;
}

/// `--format`: how results are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputFormat {
    /// The aligned human-readable blocks.
    Human {
        color: bool,
    },
    JsonLines,
    Csv,
    Tsv,
}

impl OutputFormat {
    /// The format a file name asks for by its extension (`.jsonl`/`.ndjson`, `.csv`, `.tsv`).
    pub fn from_extension(path: &std::path::Path) -> Option<Self> {
        let ext = path.extension()?.to_str()?.to_ascii_lowercase();
        match ext.as_str() {
            "jsonl" | "ndjson" => Some(OutputFormat::JsonLines),
            "csv" => Some(OutputFormat::Csv),
            "tsv" => Some(OutputFormat::Tsv),
            _ => None,
        }
    }

    /// Whether a file in this format can be read back by `--resume`.
    pub fn resumable(self) -> bool {
        !matches!(self, OutputFormat::Human { .. })
    }

    pub fn name(self) -> &'static str {
        match self {
            OutputFormat::Human { .. } => "table",
            OutputFormat::JsonLines => "jsonl",
            OutputFormat::Csv => "csv",
            OutputFormat::Tsv => "tsv",
        }
    }
}

/// What every record of a run shares.
#[derive(Debug, Clone)]
pub struct RecordContext {
    /// Reported as `model` in JSON Lines.
    pub model: String,
    /// Predictions per successful record: the run's top-k, clamped to the number of classes.
    pub top_k: usize,
}

/// The printer for `format`. `header` asks CSV/TSV for their header row first (not when
/// appending to a file that has one).
pub fn printer<'a>(
    format: OutputFormat,
    out: Box<dyn Write + 'a>,
    context: &RecordContext,
    header: bool,
) -> io::Result<Box<dyn Printer + 'a>> {
    Ok(match format {
        OutputFormat::Human { color } => Box::new(HumanPrinter::new(out, color)),
        OutputFormat::JsonLines => Box::new(JsonPrinter::new(out, &context.model)),
        OutputFormat::Csv | OutputFormat::Tsv => Box::new(DelimitedPrinter::new(
            out,
            delimited::Dialect::of(format),
            context.top_k,
            header,
        )?),
    })
}

#[cfg(test)]
pub(crate) mod test_results {
    use crate::engine::Prediction;
    use crate::pipeline::ImageResult;

    pub fn results() -> Vec<ImageResult> {
        vec![
            ImageResult {
                name: "cat.jpg".into(),
                outcome: Ok(vec![
                    Prediction {
                        index: 282,
                        label: "tiger cat".into(),
                        wnid: Some("n02123159".into()),
                        score: 0.5,
                    },
                    Prediction {
                        index: 7,
                        label: "cock".into(),
                        wnid: None,
                        score: 0.125,
                    },
                ]),
            },
            ImageResult {
                name: "bad \"name\".jpg".into(),
                outcome: Err(crate::pipeline::InputError::NotFound),
            },
        ]
    }
}
