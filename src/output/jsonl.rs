//! JSON Lines: one object per input (schema in the module above).

use std::io::{self, Write};

use serde::{Deserialize, Serialize};

use super::Printer;
use crate::engine::Prediction;
use crate::pipeline::ImageResult;

/// One JSON object per line.
pub struct JsonPrinter<W> {
    out: W,
    model: String,
    buf: Vec<u8>,
    /// The current failed input's message.
    error: String,
}

impl<W: Write> JsonPrinter<W> {
    pub fn new(out: W, model: &str) -> Self {
        Self {
            out,
            model: model.to_string(),
            buf: Vec::new(),
            error: String::new(),
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

/// The fields `--resume` reads back from a line.
#[derive(Debug, Deserialize)]
pub struct RecordedLine {
    pub path: String,
    pub model: Option<String>,
    pub predictions: Option<Vec<serde::de::IgnoredAny>>,
    pub error: Option<String>,
}

impl<W: Write> Printer for JsonPrinter<W> {
    fn print(&mut self, result: &ImageResult) -> io::Result<()> {
        let record = match &result.outcome {
            Ok(predictions) => JsonRecord::Ok {
                path: &result.name,
                model: &self.model,
                predictions,
            },
            Err(error) => {
                self.error = error.to_string();
                JsonRecord::Err {
                    path: &result.name,
                    error: &self.error,
                }
            }
        };
        self.buf.clear();
        serde_json::to_writer(&mut self.buf, &record)?;
        self.buf.push(b'\n');
        self.out.write_all(&self.buf)?;
        self.out.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_lines_schema() {
        let mut buf = Vec::new();
        let mut p = JsonPrinter::new(&mut buf, "resnet50");
        for r in super::super::test_results::results() {
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
        assert_eq!(lines[1]["error"], "no such file");
    }
}
