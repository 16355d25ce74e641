//! The human-readable table: the path, then one line per prediction.

use std::io::{self, Write};

use super::Printer;
use crate::pipeline::ImageResult;

/// Aligned, human-readable blocks: the path, then one line per prediction.
pub struct HumanPrinter<W> {
    out: W,
    color: bool,
    buf: Vec<u8>,
}

impl<W: Write> HumanPrinter<W> {
    pub fn new(out: W, color: bool) -> Self {
        Self {
            out,
            color,
            buf: Vec::new(),
        }
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
        let buf = &mut self.buf;
        buf.clear();
        writeln!(buf, "{bold}{}{reset}", result.name)?;
        for (i, p) in predictions.iter().enumerate() {
            let pct = format!("{:.1}%", p.score * 100.0);
            if i == 0 {
                writeln!(buf, "  {green}{pct:>6}  {}{reset}", p.label)?;
            } else {
                writeln!(buf, "  {pct:>6}  {}", p.label)?;
            }
        }
        self.out.write_all(buf)?;
        self.out.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_table() {
        let mut buf = Vec::new();
        let mut p = HumanPrinter::new(&mut buf, false);
        for r in super::super::test_results::results() {
            p.print(&r).unwrap();
        }
        assert_eq!(
            String::from_utf8(buf).unwrap(),
            "cat.jpg\n   50.0%  tiger cat\n   12.5%  cock\n"
        );
    }
}
