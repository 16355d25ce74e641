//! CSV and TSV: one row per input, for spreadsheets and dataframe libraries.
//!
//! Columns: `path`, then for each rank r = 1..k `label_r`, `score_r`, `index_r`, then
//! `error`. A classified input leaves `error` empty; a failed one has only `path` and
//! `error`. k is the run's `--top-k` clamped to the model's number of classes, the same for
//! every row. The first row is the header.
//!
//! Quoting follows RFC 4180 (the `csv` crate): a field holding the delimiter, a quote, CR or
//! LF is enclosed in double quotes, with quotes doubled. TSV uses a tab as the delimiter and
//! the same quoting (Python's `csv` module reads it with `dialect="excel-tab"`). Rows end in
//! LF. Paths are written as UTF-8; bytes of a path that are not UTF-8 become U+FFFD (the
//! same text as in the other formats, and what `--resume` matches on).

use std::io::{self, Write};

use super::{OutputFormat, Printer};
use crate::pipeline::ImageResult;

/// Delimiter and line ending of one of the two formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dialect {
    pub delimiter: u8,
}

impl Dialect {
    pub fn of(format: OutputFormat) -> Self {
        Dialect {
            delimiter: if format == OutputFormat::Tsv {
                b'\t'
            } else {
                b','
            },
        }
    }

    /// A reader for files this dialect wrote (no header handling: the caller checks it).
    pub fn reader<R: io::Read>(self, r: R) -> csv::Reader<R> {
        csv::ReaderBuilder::new()
            .delimiter(self.delimiter)
            .has_headers(false)
            .flexible(true)
            .from_reader(r)
    }

    /// The bytes this dialect writes for a row: what a complete row in a file must equal.
    pub fn encode<I, F>(self, fields: I) -> io::Result<Vec<u8>>
    where
        I: IntoIterator<Item = F>,
        F: AsRef<[u8]>,
    {
        let mut w = csv::WriterBuilder::new()
            .delimiter(self.delimiter)
            .terminator(csv::Terminator::Any(b'\n'))
            .buffer_capacity(256)
            .from_writer(Vec::new());
        w.write_record(fields)?;
        w.into_inner().map_err(|e| e.into_error())
    }
}

/// The header row for `top_k` predictions per input.
pub fn header(top_k: usize) -> Vec<String> {
    let mut h = vec!["path".to_string()];
    for r in 1..=top_k {
        h.extend([
            format!("label_{r}"),
            format!("score_{r}"),
            format!("index_{r}"),
        ]);
    }
    h.push("error".into());
    h
}

/// Column of `path` in every row (`error` is the last).
pub const PATH_COLUMN: usize = 0;

pub struct DelimitedPrinter<W> {
    out: W,
    top_k: usize,
    dialect: Dialect,
}

impl<W: Write> DelimitedPrinter<W> {
    /// Writes the header row first when `header` is true.
    pub fn new(out: W, dialect: Dialect, top_k: usize, header_row: bool) -> io::Result<Self> {
        let mut p = Self {
            out,
            top_k,
            dialect,
        };
        if header_row {
            p.emit(header(top_k))?;
        }
        Ok(p)
    }

    /// Hand the row to the output in one write.
    fn emit(&mut self, row: Vec<String>) -> io::Result<()> {
        let bytes = self.dialect.encode(row)?;
        self.out.write_all(&bytes)?;
        self.out.flush()
    }
}

impl<W: Write> Printer for DelimitedPrinter<W> {
    fn print(&mut self, result: &ImageResult) -> io::Result<()> {
        let mut row: Vec<String> = Vec::with_capacity(3 * self.top_k + 2);
        row.push(result.name.clone());
        match &result.outcome {
            Ok(predictions) => {
                for rank in 0..self.top_k {
                    match predictions.get(rank) {
                        Some(p) => {
                            row.extend([p.label.clone(), p.score.to_string(), p.index.to_string()])
                        }
                        None => row.extend([String::new(), String::new(), String::new()]),
                    }
                }
                row.push(String::new());
            }
            Err(error) => {
                row.extend(std::iter::repeat_n(String::new(), 3 * self.top_k));
                row.push(error.to_string());
            }
        }
        self.emit(row)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(format: OutputFormat) -> Vec<u8> {
        let mut buf = Vec::new();
        let mut p = DelimitedPrinter::new(&mut buf, Dialect::of(format), 2, true).unwrap();
        for r in super::super::test_results::results() {
            p.print(&r).unwrap();
        }
        buf
    }

    #[test]
    fn csv_rows_quote_and_round_trip() {
        let text = String::from_utf8(render(OutputFormat::Csv)).unwrap();
        assert_eq!(
            text,
            "path,label_1,score_1,index_1,label_2,score_2,index_2,error\n\
             cat.jpg,tiger cat,0.5,282,cock,0.125,7,\n\
             \"bad \"\"name\"\".jpg\",,,,,,,no such file\n"
        );
        let rows: Vec<csv::StringRecord> = Dialect::of(OutputFormat::Csv)
            .reader(text.as_bytes())
            .records()
            .map(Result::unwrap)
            .collect();
        assert_eq!(rows[2][PATH_COLUMN], *"bad \"name\".jpg");
        assert_eq!(rows[2][7], *"no such file");
    }

    #[test]
    fn tsv_uses_tabs() {
        let text = String::from_utf8(render(OutputFormat::Tsv)).unwrap();
        assert!(
            text.starts_with("path\tlabel_1\tscore_1\tindex_1\t"),
            "{text}"
        );
        assert!(text.contains("cat.jpg\ttiger cat\t0.5\t282\tcock\t0.125\t7\t\n"));
    }
}
