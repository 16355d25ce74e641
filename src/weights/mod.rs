//! Checkpoint files -> named tensors, whatever format they come in.
//!
//! Supported: safetensors (memory-mapped), PyTorch zip checkpoints (`.pth`, `.pt`, `.bin`
//! written by torch >= 1.6) and legacy PyTorch pickles (see [`legacy`]). The format is
//! detected from the file's first bytes, not its name. `{"state_dict": ...}` style wrappers,
//! the `module.` prefix of DataParallel checkpoints and (when the model needs it, see
//! [`Checkpoint::without_shared_prefix_if`]) a first name segment that every tensor shares
//! are removed. Tensors are read whatever their strides; floating-point tensors of any
//! precision become f32, and a NaN or an infinity is refused.
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
use legacy::{Tensors, TwoSets};

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
    #[error("weights file {path} holds no tensors (looked at the top level and under {}){}",
        legacy::wrapper_keys().collect::<Vec<_>>().join(", "),
        why.as_deref().map(|w| format!(": {w}")).unwrap_or_default())]
    Empty {
        path: PathBuf,
        /// What the file holds instead, when that is recognisable.
        why: Option<String>,
    },
    #[error(
        "weights file {path} holds two sets of weights, `{weights}` and their moving average \
         `{average}`, which classify images differently: timm's create_model(checkpoint_path=...) \
         loads `{average}`, most training scripts evaluate `{weights}`. Save the one to use on \
         its own: `torch.save(torch.load(FILE)[\"{average}\"], \"weights.pth\")`"
    )]
    TwoWeightSets {
        path: PathBuf,
        weights: &'static str,
        average: &'static str,
    },
    #[error(
        "weights file {path}: tensor `{name}` holds {count} NaN or infinite value(s); the \
         checkpoint is damaged (or comes from a diverged run, or overflowed when cast to \
         f16) and would give meaningless predictions, so it is refused"
    )]
    NonFinite {
        path: PathBuf,
        name: String,
        count: usize,
    },
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
        let (tensors, two_sets) = match format {
            Format::Safetensors => (read_safetensors(path).map_err(parse)?, None),
            Format::TorchZip => read_torch_zip(path).map_err(parse)?,
            Format::TorchLegacy => {
                legacy::read(&std::fs::read(path).map_err(io)?).map_err(parse)?
            }
        };
        if let Some((weights, average)) = two_sets {
            return Err(WeightsError::TwoWeightSets {
                path: path.to_path_buf(),
                weights,
                average,
            });
        }
        if tensors.is_empty() {
            return Err(WeightsError::Empty {
                path: path.to_path_buf(),
                why: (format == Format::TorchZip)
                    .then(|| what_zip_holds_instead(path))
                    .flatten(),
            });
        }
        let checkpoint = Self::from_tensors(path, tensors).map_err(parse)?;
        let mut names: Vec<&String> = checkpoint.tensors.keys().collect();
        names.sort();
        for name in names {
            let count = non_finite(&checkpoint.tensors[name]).map_err(parse)?;
            if count > 0 {
                return Err(WeightsError::NonFinite {
                    path: path.to_path_buf(),
                    name: name.clone(),
                    count,
                });
            }
        }
        Ok(checkpoint)
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

    /// This checkpoint, or, when `fits` refuses it and every tensor name starts with the
    /// same first segment (PyTorch Lightning saves `self.model` as `model.<name>`, other
    /// wrappers `backbone.` or `net.`), the checkpoint without that segment if `fits` takes
    /// it. Loading stays strict, so a wrong guess could only be refused, never run.
    pub fn without_shared_prefix_if(self, fits: impl Fn(&Checkpoint) -> bool) -> Self {
        if fits(&self) {
            return self;
        }
        let Some(prefix) = shared_prefix(self.tensors.keys()) else {
            return self;
        };
        let stripped = Self {
            path: self.path.clone(),
            tensors: self
                .tensors
                .iter()
                .map(|(name, t)| (name[prefix.len()..].to_string(), t.clone()))
                .collect(),
        };
        if !fits(&stripped) {
            return self;
        }
        tracing::info!(
            "{}: every tensor name starts with `{prefix}` (a training wrapper's); read without it",
            self.path.display()
        );
        stripped
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

/// The first name segment (`model.`) that every one of several tensor names starts with.
fn shared_prefix<'a>(names: impl Iterator<Item = &'a String>) -> Option<String> {
    let mut prefix: Option<&str> = None;
    let mut count = 0;
    for name in names {
        let (first, _) = name.split_once('.')?;
        if *prefix.get_or_insert(first) != first {
            return None;
        }
        count += 1;
    }
    prefix.filter(|_| count > 1).map(|p| format!("{p}."))
}

/// How many values of a float tensor are NaN or infinite (0 for other dtypes).
fn non_finite(t: &Tensor) -> candle_core::Result<usize> {
    if t.dtype() != DType::F32 {
        return Ok(0);
    }
    let (storage, layout) = t.storage_and_layout();
    let count = |v: &[f32]| v.iter().filter(|x| !x.is_finite()).count();
    Ok(match (&*storage, layout.contiguous_offsets()) {
        (candle_core::Storage::Cpu(cpu), Some((start, end))) => {
            count(&cpu.as_slice::<f32>()?[start..end])
        }
        _ => count(&t.flatten_all()?.to_vec1::<f32>()?),
    })
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

/// The tensors of a PyTorch zip checkpoint, at its top level or under the first wrapper key
/// that holds any, and where a moving average of the weights sits beside them.
fn read_torch_zip(path: &Path) -> candle_core::Result<(Tensors, Option<TwoSets>)> {
    let infos = |key| candle_core::pickle::read_pth_tensor_info(path, false, key);
    let mut last_err = None;
    for key in std::iter::once(None).chain(legacy::wrapper_keys().map(Some)) {
        match infos(key) {
            Ok(found) if !found.is_empty() => {
                let beside = key.filter(|k| !legacy::EMA_KEYS.contains(k)).and_then(|k| {
                    let ema = legacy::EMA_KEYS
                        .into_iter()
                        .find(|&e| infos(Some(e)).is_ok_and(|i| !i.is_empty()));
                    ema.map(|e| (k, e))
                });
                return Ok((read_zip_tensors(path, found)?, beside));
            }
            Ok(_) => {}
            Err(e) => last_err = Some(e),
        }
    }
    match last_err {
        // No wrapper matched: report the plain read's outcome (usually "no tensors").
        Some(e) if infos(None).is_err() => Err(e),
        _ => Ok((Vec::new(), None)),
    }
}

/// What a PyTorch zip file without a state dict holds, in words, with the way to get one:
/// a TorchScript archive (`torch.jit.save`), or a whole pickled module (`torch.save(model)`),
/// whose tensors are spread over its submodules' attributes rather than named.
fn what_zip_holds_instead(path: &Path) -> Option<String> {
    use candle_core::pickle::{Object, Stack};
    let mut zip =
        zip::ZipArchive::new(std::io::BufReader::new(std::fs::File::open(path).ok()?)).ok()?;
    let names: Vec<String> = zip
        .file_names()
        .filter_map(|n| Some(n.ok()?.into_owned()))
        .collect();
    if names
        .iter()
        .any(|n| n.ends_with("/constants.pkl") || n.contains("/code/"))
    {
        return Some(
            "it is a TorchScript archive (torch.jit.save); save its state dict instead: \
             `torch.save(torch.jit.load(FILE).state_dict(), \"weights.pth\")`"
                .into(),
        );
    }
    let pickle = names.iter().find(|n| n.ends_with("data.pkl"))?;
    let mut stack = Stack::empty();
    stack
        .read_loop(&mut std::io::BufReader::new(zip.by_name(pickle).ok()?))
        .ok()?;
    let Object::Build { callable, .. } = stack.finalize().ok()? else {
        return None;
    };
    let Object::Reduce { callable, .. } = *callable else {
        return None;
    };
    let Object::Class {
        module_name,
        class_name,
    } = *callable
    else {
        return None;
    };
    Some(format!(
        "it holds a whole pickled model ({module_name}.{class_name}, saved with \
         torch.save(model)); save its state dict instead: \
         `torch.save(torch.load(FILE, weights_only=False).state_dict(), \"weights.pth\")`"
    ))
}

/// The tensors `infos` describe, each read from its storage file in the zip. candle's own
/// reader refuses strides other than C or Fortran order, so a checkpoint saved from a
/// channels-last model (`model.to(memory_format=torch.channels_last)`, timm's
/// `--channels-last`) could not be read.
fn read_zip_tensors(
    path: &Path,
    infos: Vec<candle_core::pickle::TensorInfo>,
) -> candle_core::Result<Vec<(String, Tensor)>> {
    let file = std::io::BufReader::new(std::fs::File::open(path)?);
    let mut zip = zip::ZipArchive::new(file).map_err(candle_core::Error::wrap)?;
    let mut storage = Vec::new();
    infos
        .into_iter()
        .map(|info| {
            let mut entry = zip.by_name(&info.path).map_err(|e| {
                candle_core::Error::Msg(format!(
                    "tensor {}: storage {} is missing: {e}",
                    info.name, info.path
                ))
            })?;
            storage.clear();
            entry.read_to_end(&mut storage)?;
            Ok((info.name.clone(), tensor_from_storage(&info, &storage)?))
        })
        .collect()
}

/// The tensor `info` describes, read out of the raw bytes of its storage (little-endian, as
/// torch writes them) for any strides: channels-last convolutions, transposed matrices
/// (checkpoints converted from TensorFlow), views into a larger storage, expanded (stride 0)
/// dimensions. An element outside the storage is an error, never a read past it.
pub(crate) fn tensor_from_storage(
    info: &candle_core::pickle::TensorInfo,
    storage: &[u8],
) -> candle_core::Result<Tensor> {
    let (dims, strides) = (info.layout.dims(), info.layout.stride());
    let elem = info.dtype.size_in_bytes();
    let count = info.layout.shape().elem_count();
    // candle's pickle reader gives the tensor's offset in bytes, its strides in elements.
    let start = info.layout.start_offset();
    let outside = || {
        candle_core::Error::Msg(format!(
            "tensor {} lies outside its storage ({} bytes)",
            info.name,
            storage.len()
        ))
    };
    if count > 0 {
        // The element furthest into the storage must lie inside it.
        let end = dims
            .iter()
            .zip(strides)
            .try_fold(0usize, |last, (&d, &s)| {
                last.checked_add((d - 1).checked_mul(s)?)
            })
            .and_then(|last| last.checked_add(1)?.checked_mul(elem)?.checked_add(start))
            .ok_or_else(outside)?;
        if end > storage.len() {
            return Err(outside());
        }
    }
    if info.layout.is_contiguous() {
        let bytes = &storage[start.min(storage.len())..][..count * elem];
        return Tensor::from_raw_buffer(bytes, info.dtype, dims, &Device::Cpu);
    }
    // Walk the elements in row-major order, keeping the storage offset of the current index.
    let mut out = Vec::with_capacity(count * elem);
    let mut index = vec![0usize; dims.len()];
    let mut offset = 0;
    for _ in 0..count {
        out.extend_from_slice(&storage[start + offset * elem..][..elem]);
        for d in (0..dims.len()).rev() {
            index[d] += 1;
            if index[d] < dims[d] {
                offset += strides[d];
                break;
            }
            index[d] = 0;
            offset -= (dims[d] - 1) * strides[d];
        }
    }
    Tensor::from_raw_buffer(&out, info.dtype, dims, &Device::Cpu)
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
