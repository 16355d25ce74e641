//! `--resume`: read back an `--output` file from an earlier (possibly killed) run, so the
//! inputs it already records are skipped and the rest appended.
//!
//! Records are appended whole (one `write_all` each, see the module above), so after a
//! crash only the last record can be incomplete. A last record that is not complete is cut
//! off and its input is classified again; anything else that does not read back as a
//! record of this run (another model, another `--top-k`, a damaged line in the middle) is
//! refused rather than appended to. With `--retry-errors` the failed records are removed
//! (the file is rewritten to a temporary file beside it and renamed over it) and their
//! inputs classified again.
//!
//! Memory: the paths the file records are held until the walk has passed them (the same
//! order of size as the run's own list of paths); no results are kept.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Seek, Write};
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::delimited::{self, Dialect};
use super::jsonl::RecordedLine;
use super::{OutputFormat, RecordContext};

#[derive(Debug, thiserror::Error)]
pub enum ResumeError {
    #[error("cannot resume from {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("cannot resume from {path}: record {record} {reason}; move the file aside or write to a new --output")]
    Damaged {
        path: PathBuf,
        record: usize,
        reason: String,
    },
    #[error("cannot resume from {path}: {reason}")]
    Mismatch { path: PathBuf, reason: String },
}

impl ResumeError {
    /// An `Io` error about `path`, for `map_err`.
    fn io(path: &Path) -> impl Fn(io::Error) -> ResumeError + Copy + '_ {
        move |source| ResumeError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

#[derive(Debug, Default, Clone, Copy)]
struct Counts {
    ok: u32,
    failed: u32,
}

/// What an existing output file already records.
#[derive(Debug, Default)]
pub struct Recorded {
    done: HashMap<Box<str>, Counts>,
    /// The file's last record was incomplete (a crash while writing it) and was cut off.
    pub torn: bool,
    /// CSV/TSV: the file already starts with its header row.
    pub has_header: bool,
}

impl Recorded {
    /// If `name` is recorded, use up one of its records and say whether it was a failure.
    /// (Two inputs can share a name, e.g. paths differing only in non-UTF-8 bytes; each
    /// record accounts for one of them.)
    pub fn take(&mut self, name: &str) -> Option<bool> {
        let counts = self.done.get_mut(name)?;
        let failed = if counts.failed > 0 {
            counts.failed -= 1;
            true
        } else {
            counts.ok -= 1;
            false
        };
        if counts.ok == 0 && counts.failed == 0 {
            self.done.remove(name);
        }
        Some(failed)
    }

    fn add(&mut self, name: &str, failed: bool) {
        let counts = self.done.entry(name.into()).or_default();
        if failed {
            counts.failed += 1;
        } else {
            counts.ok += 1;
        }
    }
}

/// One record as found in the file.
struct Found {
    bytes: Range<u64>,
    name: String,
    failed: bool,
}

/// Read `path` (written by an earlier run with this `format` and `context`), repair a torn
/// last record, drop failed records when `retry_errors`, and say what it records. A missing
/// file records nothing.
pub fn prepare(
    path: &Path,
    format: OutputFormat,
    context: &RecordContext,
    retry_errors: bool,
) -> Result<Recorded, ResumeError> {
    let io_err = ResumeError::io(path);
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Recorded::default()),
        Err(e) => return Err(io_err(e)),
    };
    let len = file.metadata().map_err(io_err)?.len();
    let mut recorded = Recorded::default();
    let mut dropped: Vec<Range<u64>> = Vec::new();
    let mut keep = |found: Found, recorded: &mut Recorded| {
        if found.failed && retry_errors {
            dropped.push(found.bytes);
        } else {
            recorded.add(&found.name, found.failed);
        }
    };
    let valid_len = match format {
        OutputFormat::JsonLines => scan_jsonl(&file, path, context, |f| keep(f, &mut recorded))?,
        OutputFormat::Csv | OutputFormat::Tsv => {
            let (valid, header) = scan_delimited(&file, path, Dialect::of(format), context, |f| {
                keep(f, &mut recorded)
            })?;
            recorded.has_header = header;
            valid
        }
        OutputFormat::Human { .. } => {
            return Err(ResumeError::Mismatch {
                path: path.to_path_buf(),
                reason: "a table cannot be read back; use --format jsonl, csv or tsv".into(),
            })
        }
    };
    recorded.torn = valid_len < len;
    if !dropped.is_empty() {
        rewrite_without(path, &file, valid_len, &dropped).map_err(io_err)?;
    } else if recorded.torn {
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(path)
            .map_err(io_err)?;
        f.set_len(valid_len).map_err(io_err)?;
        f.sync_all().map_err(io_err)?;
    }
    Ok(recorded)
}

/// Scan JSON Lines; returns the length of the complete records.
fn scan_jsonl(
    file: &File,
    path: &Path,
    context: &RecordContext,
    mut found: impl FnMut(Found),
) -> Result<u64, ResumeError> {
    let mut reader = BufReader::with_capacity(1 << 20, file);
    let mut line = Vec::new();
    let mut offset = 0u64;
    let mut record = 0usize;
    let mut pending: Option<(Range<u64>, Result<RecordedLine, String>)> = None;
    loop {
        line.clear();
        let n = reader
            .read_until(b'\n', &mut line)
            .map_err(ResumeError::io(path))?;
        // Judge the previous line now that we know whether it was the last.
        if let Some((bytes, parsed)) = pending.take() {
            record += 1;
            match parsed {
                Ok(r) => found(check_jsonl(r, bytes, path, record, context)?),
                Err(reason) if n > 0 => {
                    return Err(ResumeError::Damaged {
                        path: path.to_path_buf(),
                        record,
                        reason,
                    })
                }
                // The last line is incomplete: cut it off.
                Err(_) => return Ok(bytes.start),
            }
        }
        if n == 0 {
            return Ok(offset);
        }
        let bytes = offset..offset + n as u64;
        offset += n as u64;
        let parsed = if line.last() != Some(&b'\n') {
            Err("has no line end".to_string())
        } else {
            serde_json::from_slice::<RecordedLine>(&line)
                .map_err(|e| format!("is not a classify JSON record ({e})"))
        };
        pending = Some((bytes, parsed));
    }
}

fn check_jsonl(
    r: RecordedLine,
    bytes: Range<u64>,
    path: &Path,
    record: usize,
    context: &RecordContext,
) -> Result<Found, ResumeError> {
    let mismatch = |reason: String| ResumeError::Mismatch {
        path: path.to_path_buf(),
        reason,
    };
    if let Some(model) = &r.model {
        if *model != context.model {
            return Err(mismatch(format!(
                "record {record} is from model `{model}`, this run uses `{}`",
                context.model
            )));
        }
    }
    if let Some(p) = &r.predictions {
        if p.len() != context.top_k {
            return Err(mismatch(format!(
                "record {record} has {} predictions, this run writes {} (--top-k)",
                p.len(),
                context.top_k
            )));
        }
    }
    match (r.predictions.is_some(), r.error.is_some()) {
        (true, false) | (false, true) => Ok(Found {
            bytes,
            name: r.path,
            failed: r.error.is_some(),
        }),
        _ => Err(ResumeError::Damaged {
            path: path.to_path_buf(),
            record,
            reason: "has neither predictions nor an error".into(),
        }),
    }
}

/// Scan CSV/TSV; returns the length of the complete records and whether the header is there.
fn scan_delimited(
    file: &File,
    path: &Path,
    dialect: Dialect,
    context: &RecordContext,
    mut found: impl FnMut(Found),
) -> Result<(u64, bool), ResumeError> {
    let io_err = ResumeError::io(path);
    let header = delimited::header(context.top_k);
    let mut reader = dialect.reader(BufReader::with_capacity(1 << 20, file));
    let mut row = csv::ByteRecord::new();
    // (byte range, fields) of the row read before the current one.
    let mut pending: Option<(Range<u64>, csv::ByteRecord)> = None;
    let mut index = 0usize;
    loop {
        let more = reader
            .read_byte_record(&mut row)
            .map_err(|e| io_err(io::Error::other(e)))?;
        if !more {
            break;
        }
        let end = reader.position().byte();
        if let Some((bytes, fields)) = pending.take() {
            // Not the last row: it must be whole.
            judge_row(&fields, bytes, index, &header, path, &mut found)?;
            index += 1;
        }
        let start = row.position().map_or(0, |p| p.byte());
        pending = Some((start..end, row.clone()));
    }
    let Some((bytes, fields)) = pending else {
        return Ok((0, false)); // empty file
    };
    // The last row counts only if it is exactly what this dialect writes for its fields
    // (a row cut inside a quoted field can still parse).
    let mut raw = vec![0; (bytes.end - bytes.start) as usize];
    file.read_exact_at(&mut raw, bytes.start).map_err(io_err)?;
    let whole = dialect.encode(fields.iter()).map_err(io_err)? == raw;
    if !whole || fields.len() != header.len() {
        return Ok((bytes.start, index > 0));
    }
    let end = bytes.end;
    judge_row(&fields, bytes, index, &header, path, &mut found)?;
    Ok((end, true))
}

fn judge_row(
    fields: &csv::ByteRecord,
    bytes: Range<u64>,
    index: usize,
    header: &[String],
    path: &Path,
    found: &mut impl FnMut(Found),
) -> Result<(), ResumeError> {
    if index == 0 {
        if fields.iter().eq(header.iter().map(|h| h.as_bytes())) {
            return Ok(());
        }
        return Err(ResumeError::Mismatch {
            path: path.to_path_buf(),
            reason: format!(
                "its header is not this run's `{}` (another --top-k, or not a classify file)",
                header.join(",")
            ),
        });
    }
    if fields.len() != header.len() {
        return Err(ResumeError::Damaged {
            path: path.to_path_buf(),
            record: index,
            reason: format!("has {} fields, expected {}", fields.len(), header.len()),
        });
    }
    let text = |i: usize| String::from_utf8_lossy(&fields[i]).into_owned();
    found(Found {
        bytes,
        name: text(delimited::PATH_COLUMN),
        failed: !fields[header.len() - 1].is_empty(),
    });
    Ok(())
}

/// Replace `path` by its first `valid_len` bytes minus the `dropped` ranges (sorted),
/// through a temporary file in the same directory renamed over it.
fn rewrite_without(
    path: &Path,
    file: &File,
    valid_len: u64,
    dropped: &[Range<u64>],
) -> io::Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut tmp = tempfile::Builder::new()
        .prefix(".classify-resume-")
        .tempfile_in(dir)?;
    let mut src = file;
    src.rewind()?;
    let mut at = 0u64;
    for range in dropped
        .iter()
        .chain(std::iter::once(&(valid_len..valid_len)))
    {
        let mut part = (&mut src).take(range.start - at);
        io::copy(&mut part, tmp.as_file_mut())?;
        src.seek(io::SeekFrom::Start(range.end))?;
        at = range.end;
    }
    tmp.as_file_mut().flush()?;
    tmp.as_file()
        .set_permissions(file.metadata()?.permissions())?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}
