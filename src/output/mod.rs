//! Printers: the human table and JSON Lines, over the same results, to any `impl Write`.
//! stdout carries results only; errors and progress go to stderr (see `main.rs`).
//!
//! JSON Lines schema (one object per input, in input order):
//! `{"path": "...", "model": "...", "predictions": [{"index": 282, "label": "tiger cat",
//! "wnid": "n02123159", "score": 0.571}, ...]}` or, for a failed input,
//! `{"path": "...", "error": "..."}`. `wnid` is present only when known.

use std::io::{self, Write};

use serde::Serialize;

use crate::engine::Prediction;
use crate::pipeline::ImageResult;

pub trait Printer {
    fn print(&mut self, result: &ImageResult) -> io::Result<()>;
}

/// Aligned, human-readable blocks: the path, then one line per prediction.
pub struct HumanPrinter<W> {
    out: W,
    color: bool,
}

impl<W: Write> HumanPrinter<W> {
    pub fn new(out: W, color: bool) -> Self {
        Self { out, color }
    }
}

const BOLD: &str = "\x1b[1m";
const GREEN: &str = "\x1b[32m";
const RESET: &str = "\x1b[0m";

impl<W: Write> Printer for HumanPrinter<W> {
    fn print(&mut self, result: &ImageResult) -> io::Result<()> {
        // Failed inputs are reported on stderr by the caller; stdout keeps results only.
        let Ok(predictions) = &result.outcome else {
            return Ok(());
        };
        let (bold, green, reset) = if self.color {
            (BOLD, GREEN, RESET)
        } else {
            ("", "", "")
        };
        writeln!(self.out, "{bold}{}{reset}", result.name)?;
        for (i, p) in predictions.iter().enumerate() {
            let pct = format!("{:.1}%", p.score * 100.0);
            if i == 0 {
                writeln!(self.out, "  {green}{pct:>6}  {}{reset}", p.label)?;
            } else {
                writeln!(self.out, "  {pct:>6}  {}", p.label)?;
            }
        }
        self.out.flush()
    }
}

/// One JSON object per line.
pub struct JsonPrinter<W> {
    out: W,
    model: String,
}

impl<W: Write> JsonPrinter<W> {
    pub fn new(out: W, model: &str) -> Self {
        Self {
            out,
            model: model.to_string(),
        }
    }
}

#[derive(Serialize)]
#[serde(untagged)]
enum JsonRecord<'a> {
    Ok {
        path: &'a str,
        model: &'a str,
        predictions: &'a [Prediction],
    },
    Err {
        path: &'a str,
        error: &'a str,
    },
}

impl<W: Write> Printer for JsonPrinter<W> {
    fn print(&mut self, result: &ImageResult) -> io::Result<()> {
        let record = match &result.outcome {
            Ok(predictions) => JsonRecord::Ok {
                path: &result.name,
                model: &self.model,
                predictions,
            },
            Err(error) => JsonRecord::Err {
                path: &result.name,
                error,
            },
        };
        serde_json::to_writer(&mut self.out, &record)?;
        self.out.write_all(b"\n")?;
        self.out.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn results() -> Vec<ImageResult> {
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
                outcome: Err("cannot decode image".into()),
            },
        ]
    }

    #[test]
    fn json_lines_schema() {
        let mut buf = Vec::new();
        let mut p = JsonPrinter::new(&mut buf, "resnet50");
        for r in results() {
            p.print(&r).unwrap();
        }
        let text = String::from_utf8(buf).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["model"], "resnet50");
        assert_eq!(lines[0]["predictions"][0]["index"], 282);
        assert_eq!(lines[0]["predictions"][0]["wnid"], "n02123159");
        assert!(lines[0]["predictions"][1].get("wnid").is_none());
        assert_eq!(lines[1]["path"], "bad \"name\".jpg");
        assert_eq!(lines[1]["error"], "cannot decode image");
    }

    #[test]
    fn human_table() {
        let mut buf = Vec::new();
        let mut p = HumanPrinter::new(&mut buf, false);
        for r in results() {
            p.print(&r).unwrap();
        }
        assert_eq!(
            String::from_utf8(buf).unwrap(),
            "cat.jpg\n   50.0%  tiger cat\n   12.5%  cock\n"
        );
    }
}
