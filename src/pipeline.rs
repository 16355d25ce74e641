//! The classification run: inputs (files, directories, stdin) -> parallel decode ->
//! batches -> model -> top-k, results in input order.
//!
//! Decoding of the next batch overlaps the network's work on the current one (a producer
//! thread hands decoded batches over a channel of depth one). A bad input becomes an error
//! result and never stops the run.

use std::collections::HashSet;
use std::ffi::OsStr;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::mpsc;

use rayon::prelude::*;

use crate::config::Shard;
use crate::engine::{Engine, Prediction};
use crate::preprocess::DecodeError;

/// Extensions picked up when walking a directory (case-insensitive).
/// HEIC/HEIF/AVIF are listed so that such files are reported as unsupported, not skipped.
pub const IMAGE_EXTENSIONS: [&str; 16] = [
    "jpg", "jpeg", "jfif", "png", "gif", "webp", "bmp", "tif", "tiff", "ppm", "pgm", "pbm", "pnm",
    "heic", "heif", "avif",
];

/// Largest input file read (bytes); anything bigger is refused before reading it.
pub const MAX_INPUT_BYTES: u64 = 256 * 1024 * 1024;

/// One thing to classify, as named in the output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Input {
    pub name: String,
    pub kind: InputKind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InputKind {
    File(PathBuf),
    Stdin,
    /// Could not even be listed (missing path, unreadable directory): reported as is.
    Invalid(String),
}

/// Why one input has no predictions. The message (`Display`) is what `--json` and the
/// other formats print in the input's `error` field.
#[derive(Debug, thiserror::Error)]
pub enum InputError {
    /// The argument could not even be listed (missing path, unreadable directory).
    #[error("{0}")]
    Unlisted(String),
    #[error("no such file")]
    NotFound,
    #[error("is a directory")]
    IsDirectory,
    /// A FIFO, socket or device: reading it could block or never end.
    #[error("not a regular file")]
    NotRegularFile,
    #[error("larger than {limit} bytes")]
    TooLarge { limit: u64 },
    #[error("cannot open: {0}")]
    Open(#[source] std::io::Error),
    #[error("cannot read: {0}")]
    Read(#[source] std::io::Error),
    /// Read, but not an image classify can decode (or over `--max-pixels`).
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// The network failed on the batch this input was in.
    #[error("inference failed: {0}")]
    Inference(String),
}

/// The outcome for one input.
#[derive(Debug)]
pub struct ImageResult {
    pub name: String,
    pub outcome: Result<Vec<Prediction>, InputError>,
}

fn display(path: &Path) -> String {
    path.to_string_lossy().into_owned()
}

fn is_image_name(path: &Path) -> bool {
    path.extension()
        .and_then(OsStr::to_str)
        .is_some_and(|ext| IMAGE_EXTENSIONS.iter().any(|e| e.eq_ignore_ascii_case(ext)))
}

/// How a directory given as an input is walked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Walk {
    /// Descend into subdirectories (`--no-recursive` turns it off).
    pub recursive: bool,
    /// Also take files and directories whose name starts with a dot (`--hidden`). Skipped by
    /// default: macOS leaves a `._NAME` AppleDouble file (not an image) beside every photo on
    /// a FAT, exFAT or network drive, and `.thumbnails`-style caches hold copies of the
    /// library's own photos.
    pub hidden: bool,
}

impl Default for Walk {
    fn default() -> Self {
        Walk {
            recursive: true,
            hidden: false,
        }
    }
}

/// Expand command-line arguments into inputs: files as given (hidden or not), directories
/// walked in sorted order as `walk` says (symlink loops are visited once), `-` is standard
/// input. The order is deterministic. Only the inputs `keep` accepts are kept; `keep` sees
/// every input once, in order, as the walk finds it, so a shard or a resumed run never
/// holds the paths it skips.
pub fn expand_inputs(
    args: &[PathBuf],
    walk_opts: Walk,
    mut keep: impl FnMut(&Input) -> bool,
) -> Vec<Input> {
    let mut out = Vec::new();
    let mut push = |input: Input| {
        if keep(&input) {
            out.push(input);
        }
    };
    for arg in args {
        if arg.as_os_str() == "-" {
            push(Input {
                name: "-".into(),
                kind: InputKind::Stdin,
            });
        } else if arg.is_dir() {
            let mut seen = HashSet::new();
            walk(arg, walk_opts, &mut seen, &mut push);
        } else {
            push(Input {
                name: display(arg),
                kind: InputKind::File(arg.clone()),
            });
        }
    }
    out
}

fn walk(dir: &Path, opts: Walk, seen: &mut HashSet<PathBuf>, out: &mut impl FnMut(Input)) {
    // Canonical paths identify directories reached through different symlinks.
    let key = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    if !seen.insert(key) {
        return;
    }
    let entries = match std::fs::read_dir(dir) {
        Ok(rd) => rd
            .filter_map(Result::ok)
            .map(|e| e.path())
            .collect::<Vec<_>>(),
        Err(e) => {
            out(Input {
                name: display(dir),
                kind: InputKind::Invalid(format!("cannot read directory: {e}")),
            });
            return;
        }
    };
    let mut entries = entries;
    entries.sort();
    let hidden = |path: &Path| {
        path.file_name()
            .is_some_and(|n| n.as_encoded_bytes().starts_with(b"."))
    };
    for path in entries {
        if !opts.hidden && hidden(&path) {
            continue;
        }
        if path.is_dir() {
            if opts.recursive {
                walk(&path, opts, seen, out);
            }
        } else if is_image_name(&path) {
            out(Input {
                name: display(&path),
                kind: InputKind::File(path),
            });
        }
    }
}

/// A `keep` for [`expand_inputs`]: true for the `shard.index`-th of every `shard.count`
/// inputs it is shown, in order.
pub fn shard_filter(shard: Option<Shard>) -> impl FnMut(&Input) -> bool {
    let mut position = 0usize;
    move |_| {
        let i = position;
        position += 1;
        shard.is_none_or(|s| i % s.count == s.index)
    }
}

fn read_limited(mut r: impl Read) -> Result<Vec<u8>, InputError> {
    let mut bytes = Vec::new();
    r.by_ref()
        .take(MAX_INPUT_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(InputError::Read)?;
    if bytes.len() as u64 > MAX_INPUT_BYTES {
        return Err(InputError::TooLarge {
            limit: MAX_INPUT_BYTES,
        });
    }
    Ok(bytes)
}

/// The bytes of an input. Only regular files are opened: a FIFO or device would block or
/// never end.
pub fn read_input(input: &Input) -> Result<Vec<u8>, InputError> {
    match &input.kind {
        InputKind::Invalid(e) => Err(InputError::Unlisted(e.clone())),
        InputKind::Stdin => read_limited(std::io::stdin().lock()),
        InputKind::File(path) => {
            let meta = std::fs::metadata(path).map_err(|e| match e.kind() {
                std::io::ErrorKind::NotFound => InputError::NotFound,
                _ => InputError::Read(e),
            })?;
            if meta.is_dir() {
                return Err(InputError::IsDirectory);
            }
            if !meta.is_file() {
                return Err(InputError::NotRegularFile);
            }
            if meta.len() > MAX_INPUT_BYTES {
                return Err(InputError::TooLarge {
                    limit: MAX_INPUT_BYTES,
                });
            }
            let file = std::fs::File::open(path).map_err(InputError::Open)?;
            read_limited(file)
        }
    }
}

/// Classify `inputs` in batches of `batch_size`, calling `emit` with each result in input
/// order. Stops early (without error) when `emit` fails, e.g. on a closed pipe, and returns
/// that error.
pub fn run(
    engine: &Engine,
    inputs: &[Input],
    batch_size: usize,
    top_k: usize,
    mut emit: impl FnMut(ImageResult) -> std::io::Result<()>,
) -> std::io::Result<()> {
    let batch_size = batch_size.max(1);
    type Decoded = Vec<Result<Vec<f32>, InputError>>;
    let (tx, rx) = mpsc::sync_channel::<Decoded>(1);
    std::thread::scope(|scope| {
        scope.spawn(move || {
            for chunk in inputs.chunks(batch_size) {
                let decoded: Decoded = chunk
                    .par_iter()
                    .map(|input| {
                        let bytes = read_input(input)?;
                        Ok(engine.preprocess(&bytes)?)
                    })
                    .collect();
                if tx.send(decoded).is_err() {
                    break; // the consumer stopped (closed pipe)
                }
            }
        });
        for (chunk, decoded) in inputs.chunks(batch_size).zip(rx) {
            // Move the decoded images out (no copy); keep each input's decode error in place.
            let mut good = Vec::with_capacity(decoded.len());
            let failures: Vec<Option<InputError>> = decoded
                .into_iter()
                .map(|d| match d {
                    Ok(image) => {
                        good.push(image);
                        None
                    }
                    Err(e) => Some(e),
                })
                .collect();
            let mut predictions = match engine.classify(&good, top_k) {
                Ok(p) => p.into_iter().map(Ok).collect::<Vec<_>>(),
                Err(e) => {
                    let e = e.to_string();
                    (0..good.len())
                        .map(|_| Err(InputError::Inference(e.clone())))
                        .collect()
                }
            }
            .into_iter();
            for (input, failure) in chunk.iter().zip(failures) {
                let outcome = match failure {
                    None => predictions.next().unwrap_or_else(|| {
                        Err(InputError::Inference("no result for this input".into()))
                    }),
                    Some(e) => Err(e),
                };
                emit(ImageResult {
                    name: input.name.clone(),
                    outcome,
                })?;
            }
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directories_expand_sorted_and_filtered() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path();
        std::fs::create_dir_all(d.join("sub")).unwrap();
        std::fs::create_dir_all(d.join(".thumbnails")).unwrap();
        for f in [
            "b.JPG",
            "a.png",
            "notes.txt",
            "sub/c.webp",
            "._b.JPG",
            ".thumbnails/a.png",
        ] {
            std::fs::write(d.join(f), b"x").unwrap();
        }
        let rel = |walk: Walk| {
            expand_inputs(&[d.to_path_buf()], walk, |_| true)
                .into_iter()
                .map(|i| i.name[d.to_string_lossy().len()..].to_string())
                .collect::<Vec<_>>()
        };
        assert_eq!(rel(Walk::default()), ["/a.png", "/b.JPG", "/sub/c.webp"]);
        let flat = Walk {
            recursive: false,
            ..Walk::default()
        };
        assert_eq!(rel(flat), ["/a.png", "/b.JPG"]);
        let hidden = Walk {
            hidden: true,
            ..Walk::default()
        };
        assert_eq!(
            rel(hidden),
            [
                "/._b.JPG",
                "/.thumbnails/a.png",
                "/a.png",
                "/b.JPG",
                "/sub/c.webp"
            ]
        );
        // A hidden file named on the command line is taken: it was asked for.
        let named = expand_inputs(&[d.join("._b.JPG")], Walk::default(), |_| true);
        assert_eq!(named.len(), 1);
        assert_eq!(
            expand_inputs(&[PathBuf::from("-")], Walk::default(), |_| true)[0].kind,
            InputKind::Stdin
        );
    }

    #[test]
    fn symlink_loops_terminate() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path();
        std::fs::create_dir(d.join("a")).unwrap();
        std::fs::write(d.join("a/x.png"), b"x").unwrap();
        std::os::unix::fs::symlink(d, d.join("a/loop")).unwrap();
        let inputs = expand_inputs(&[d.to_path_buf()], Walk::default(), |_| true);
        assert_eq!(inputs.len(), 1);
    }

    #[test]
    fn shards_partition_inputs() {
        let inputs: Vec<Input> = (0..10)
            .map(|i| Input {
                name: i.to_string(),
                kind: InputKind::Stdin,
            })
            .collect();
        let mut all: Vec<String> = (0..3)
            .flat_map(|i| {
                let mut keep = shard_filter(Some(Shard { index: i, count: 3 }));
                inputs.clone().into_iter().filter(move |input| keep(input))
            })
            .map(|i| i.name)
            .collect();
        all.sort_by_key(|n| n.parse::<usize>().unwrap());
        assert_eq!(all, (0..10).map(|i| i.to_string()).collect::<Vec<_>>());
    }

    #[test]
    fn non_regular_files_are_refused_without_blocking() {
        let tmp = tempfile::tempdir().unwrap();
        let fifo = tmp.path().join("pipe.jpg");
        let status = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(status.success());
        let input = Input {
            name: "pipe.jpg".into(),
            kind: InputKind::File(fifo),
        };
        let err = read_input(&input).unwrap_err();
        assert!(matches!(err, InputError::NotRegularFile), "{err:?}");
        assert_eq!(err.to_string(), "not a regular file");
        let missing = Input {
            name: "nope.jpg".into(),
            kind: InputKind::File(tmp.path().join("nope.jpg")),
        };
        let err = read_input(&missing).unwrap_err();
        assert!(matches!(err, InputError::NotFound), "{err:?}");
        assert_eq!(err.to_string(), "no such file");
        let dir = Input {
            name: "d".into(),
            kind: InputKind::File(tmp.path().to_path_buf()),
        };
        assert!(matches!(read_input(&dir), Err(InputError::IsDirectory)));
    }
}
