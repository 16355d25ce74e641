//! Checkpoint files -> named tensors, whatever format they come in.
//!
//! Supported: safetensors (memory-mapped), PyTorch zip checkpoints (`.pth`, `.pt`, `.bin`
//! written by torch >= 1.6) and legacy PyTorch pickles (see [`legacy`]). The format is
//! detected from the file's first bytes, not its name. `{"state_dict": ...}` style wrappers
//! and the `module.` prefix of DataParallel checkpoints are removed; floating-point tensors
//! of any precision become f32.
//!
//! A [`Checkpoint`] serves a candle `VarBuilder`; a missing or mis-shaped tensor is an error
//! naming the key and the expected shape ([`crate::model::ModelError`] adds the file).

pub mod legacy;
pub mod synthetic;

use std::collections::{HashMap, HashSet};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::{Init, VarBuilder};

#[derive(Debug, thiserror::Error)]
pub enum WeightsError {
    #[error("cannot read weights file {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a weights file classify can read (expected safetensors, a PyTorch .pth/.pt/.bin checkpoint, or a legacy PyTorch pickle)")]
    UnknownFormat { path: PathBuf },
    #[error("cannot parse weights file {path}: {source}")]
    Parse {
        path: PathBuf,
        #[source]
        source: candle_core::Error,
    },
    #[error("weights file {path} holds no tensors (looked at the top level and under {})", legacy::WRAPPER_KEYS.join(", "))]
    Empty { path: PathBuf },
}

/// On-disk formats we recognise.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Safetensors,
    TorchZip,
    TorchLegacy,
}

impl Format {
    pub fn sniff(head: &[u8]) -> Option<Self> {
        if head.starts_with(b"PK\x03\x04") {
            Some(Format::TorchZip)
        } else if legacy::is_legacy(head) {
            Some(Format::TorchLegacy)
        } else if head.len() >= 9 && head[8] == b'{' {
            // safetensors: u64 little-endian header length, then the JSON header.
            Some(Format::Safetensors)
        } else {
            None
        }
    }
}

/// All tensors of one checkpoint, keyed by their (normalised) state-dict names.
#[derive(Debug, Clone)]
pub struct Checkpoint {
    path: PathBuf,
    tensors: HashMap<String, Tensor>,
}

impl Checkpoint {
    /// Read a checkpoint file in any supported format.
    pub fn open(path: &Path) -> Result<Self, WeightsError> {
        let io = |source| WeightsError::Io {
            path: path.to_path_buf(),
            source,
        };
        let parse = |source| WeightsError::Parse {
            path: path.to_path_buf(),
            source,
        };
        let mut head = [0u8; 16];
        let n = std::fs::File::open(path)
            .and_then(|mut f| read_up_to(&mut f, &mut head))
            .map_err(io)?;
        let format = Format::sniff(&head[..n]).ok_or_else(|| WeightsError::UnknownFormat {
            path: path.to_path_buf(),
        })?;
        let tensors = match format {
            Format::Safetensors => read_safetensors(path).map_err(parse)?,
            Format::TorchZip => read_torch_zip(path).map_err(parse)?,
            Format::TorchLegacy => {
                legacy::read(&std::fs::read(path).map_err(io)?).map_err(parse)?
            }
        };
        if tensors.is_empty() {
            return Err(WeightsError::Empty {
                path: path.to_path_buf(),
            });
        }
        Self::from_tensors(path, tensors).map_err(parse)
    }

    /// A checkpoint built in memory; `label` names it in error messages.
    pub fn from_tensors(
        label: impl Into<PathBuf>,
        tensors: impl IntoIterator<Item = (String, Tensor)>,
    ) -> candle_core::Result<Self> {
        let tensors = tensors
            .into_iter()
            .map(|(name, t)| {
                let name = name.strip_prefix("module.").unwrap_or(&name).to_string();
                let t = match t.dtype() {
                    DType::F16 | DType::BF16 | DType::F64 => t.to_dtype(DType::F32)?,
                    _ => t,
                };
                Ok((name, t))
            })
            .collect::<candle_core::Result<_>>()?;
        Ok(Self {
            path: label.into(),
            tensors,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn get(&self, key: &str) -> Option<&Tensor> {
        self.tensors.get(key)
    }

    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.tensors.keys().map(String::as_str)
    }

    /// Rename every key (used to map other projects' spellings onto ours).
    pub fn rename_keys(self, f: impl Fn(&str) -> String) -> Self {
        let tensors = self.tensors.into_iter().map(|(k, v)| (f(&k), v)).collect();
        Self {
            path: self.path,
            tensors,
        }
    }

    pub fn into_var_builder(self, device: &Device) -> VarBuilder<'static> {
        VarBuilder::from_backend(Box::new(self), DType::F32, device.clone())
    }

    /// A `VarBuilder` that records which tensors the network took, so that a checkpoint
    /// holding more than the network (another depth or variant) can be refused.
    pub fn into_tracked_var_builder(self, device: &Device) -> (VarBuilder<'static>, UsedTensors) {
        let used = UsedTensors {
            all: self.tensors.keys().cloned().collect(),
            taken: Arc::default(),
        };
        let backend = Tracked {
            checkpoint: self,
            taken: used.taken.clone(),
        };
        let vb = VarBuilder::from_backend(Box::new(backend), DType::F32, device.clone());
        (vb, used)
    }
}

/// Which of a checkpoint's tensors a network has taken (see
/// [`Checkpoint::into_tracked_var_builder`]).
#[derive(Debug)]
pub struct UsedTensors {
    all: Vec<String>,
    taken: Arc<Mutex<HashSet<String>>>,
}

impl UsedTensors {
    /// The tensors nobody took, sorted; BatchNorm's `num_batches_tracked` (a training
    /// counter) never counts.
    pub fn unused(&self) -> Vec<String> {
        let taken = self.taken.lock().unwrap_or_else(|e| e.into_inner());
        let mut unused: Vec<String> = self
            .all
            .iter()
            .filter(|k| !taken.contains(*k) && !k.ends_with("num_batches_tracked"))
            .cloned()
            .collect();
        unused.sort();
        unused
    }
}

struct Tracked {
    checkpoint: Checkpoint,
    taken: Arc<Mutex<HashSet<String>>>,
}

impl Tracked {
    fn take(&self, name: &str) {
        let mut taken = self.taken.lock().unwrap_or_else(|e| e.into_inner());
        taken.insert(name.to_string());
    }
}

impl SimpleBackend for Tracked {
    fn get(
        &self,
        s: Shape,
        name: &str,
        init: Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        self.take(name);
        SimpleBackend::get(&self.checkpoint, s, name, init, dtype, dev)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        self.take(name);
        SimpleBackend::get_unchecked(&self.checkpoint, name, dtype, dev)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        SimpleBackend::contains_tensor(&self.checkpoint, name)
    }
}

fn read_up_to(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

fn read_safetensors(path: &Path) -> candle_core::Result<Vec<(String, Tensor)>> {
    // SAFETY: the file is mapped read-only and every tensor is copied out (converted to an
    // owned CPU tensor) before the map is dropped at the end of this function.
    let st = unsafe { candle_core::safetensors::MmapedSafetensors::new(path)? };
    st.tensors()
        .into_iter()
        .map(|(name, _)| Ok((name.clone(), st.load(&name, &Device::Cpu)?)))
        .collect()
}

fn read_torch_zip(path: &Path) -> candle_core::Result<Vec<(String, Tensor)>> {
    let mut last_err = None;
    for key in std::iter::once(None).chain(legacy::WRAPPER_KEYS.map(Some)) {
        match candle_core::pickle::read_all_with_key(path, key) {
            Ok(tensors) if !tensors.is_empty() => return Ok(tensors),
            Ok(_) => {}
            Err(e) => last_err = Some(e),
        }
    }
    match last_err {
        // No wrapper matched: report the plain read's outcome (usually "no tensors").
        Some(e) if candle_core::pickle::read_pth_tensor_info(path, false, None).is_err() => Err(e),
        _ => Ok(Vec::new()),
    }
}

impl SimpleBackend for Checkpoint {
    fn get(
        &self,
        s: Shape,
        name: &str,
        _: Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        let t = self.tensors.get(name).ok_or_else(|| {
            candle_core::Error::Msg(format!(
                "missing tensor `{name}` (expected shape {:?})",
                s.dims()
            ))
        })?;
        if t.shape() != &s {
            return Err(candle_core::Error::Msg(format!(
                "tensor `{name}` has shape {:?}, expected {:?}",
                t.dims(),
                s.dims()
            )));
        }
        t.to_dtype(dtype)?.to_device(dev)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        let t = self
            .tensors
            .get(name)
            .ok_or_else(|| candle_core::Error::Msg(format!("missing tensor `{name}`")))?;
        t.to_dtype(dtype)?.to_device(dev)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }
}
