//! Validated settings, built once from the command line and passed around whole.

use std::path::PathBuf;
use std::str::FromStr;

use crate::hub::ModelRef;
pub use crate::output::OutputFormat;
use crate::preprocess::{Interpolation, PreprocessConfig};

/// Which model to load and how to feed it; shared by classification, `serve` and `bench`.
#[derive(Debug, Clone)]
pub struct ModelSettings {
    /// The `--model` text as given (reported as `model` in results).
    pub name: String,
    pub model: ModelRef,
    pub weights: Option<PathBuf>,
    pub labels: Option<PathBuf>,
    pub preprocess: PreprocessOverrides,
    pub device: DeviceChoice,
    pub max_pixels: u64,
}

/// Preprocessing options given on the command line; each replaces what the model's config
/// (or its architecture's default) says.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PreprocessOverrides {
    pub input_size: Option<u32>,
    pub crop_pct: Option<f64>,
    pub resize_size: Option<u32>,
    pub interpolation: Option<Interpolation>,
    pub mean: Option<[f32; 3]>,
    pub std: Option<[f32; 3]>,
}

impl PreprocessOverrides {
    /// Apply on top of `base`. The resize size follows the (possibly new) input size and
    /// crop fraction unless given explicitly.
    pub fn apply(&self, base: &PreprocessConfig, base_crop_pct: f64) -> PreprocessConfig {
        let input_size = self.input_size.unwrap_or(base.input_size);
        let crop_pct = self.crop_pct.unwrap_or(base_crop_pct);
        let resize_size = match (
            self.resize_size,
            self.input_size.is_some() || self.crop_pct.is_some(),
        ) {
            (Some(r), _) => r,
            (None, true) => crate::preprocess::resize_size_for(input_size, crop_pct),
            (None, false) => base.resize_size,
        };
        PreprocessConfig {
            input_size,
            resize_size,
            interpolation: self.interpolation.unwrap_or(base.interpolation),
            mean: self.mean.unwrap_or(base.mean),
            std: self.std.unwrap_or(base.std),
        }
    }
}

/// `--device`: where the network runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceChoice {
    /// CUDA or Metal when compiled in and present, else CPU.
    #[default]
    Auto,
    Cpu,
    Cuda(usize),
    Metal(usize),
}

impl FromStr for DeviceChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (kind, index) = match s.split_once(':') {
            Some((k, i)) => (
                k,
                i.parse::<usize>()
                    .map_err(|_| format!("bad device index in `{s}`"))?,
            ),
            None => (s, 0),
        };
        match kind {
            "auto" => Ok(DeviceChoice::Auto),
            "cpu" => Ok(DeviceChoice::Cpu),
            "cuda" => Ok(DeviceChoice::Cuda(index)),
            "metal" => Ok(DeviceChoice::Metal(index)),
            _ => Err(format!(
                "unknown device `{s}` (cpu, cuda[:N], metal[:N], auto)"
            )),
        }
    }
}

/// A place to run the network, before it is opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    Cpu,
    Cuda(usize),
    Metal(usize),
}

/// The GPU back-ends this build was compiled with (cargo features `cuda`, `metal`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backends {
    pub cuda: bool,
    pub metal: bool,
}

impl Backends {
    pub const COMPILED: Backends = Backends {
        cuda: cfg!(feature = "cuda"),
        metal: cfg!(feature = "metal"),
    };
}

impl DeviceChoice {
    /// Open the device this choice names (see [`DeviceChoice::place`]).
    pub fn open(self) -> candle_core::Result<candle_core::Device> {
        use candle_core::Device;
        let missing = |gpu: &str, feature: &str| {
            candle_core::Error::Msg(format!(
                "this classify was built without {gpu} support (reinstall with `cargo install \
                 --locked --path . --features {feature}`)"
            ))
        };
        let built = Backends::COMPILED;
        let (placement, device) = self.place(built, |p| match p {
            Placement::Cpu => Ok(Device::Cpu),
            Placement::Cuda(_) if !built.cuda => Err(missing("CUDA", "cuda")),
            Placement::Metal(_) if !built.metal => Err(missing("Metal", "metal")),
            Placement::Cuda(i) => Device::new_cuda(i),
            Placement::Metal(i) => Device::new_metal(i),
        })?;
        tracing::info!(?placement, "device");
        Ok(device)
    }

    /// Where to run, and the opened device. An explicit choice is opened or fails (a GPU
    /// this build lacks, or one that does not open, is an error, never a silent CPU run).
    /// `auto` tries CUDA device 0, then Metal device 0, where the build has them, and uses
    /// the CPU when none opens (said at `RUST_LOG=info`, with the reason).
    pub fn place<D, E: std::fmt::Display>(
        self,
        built: Backends,
        mut open: impl FnMut(Placement) -> Result<D, E>,
    ) -> Result<(Placement, D), E> {
        let explicit = match self {
            DeviceChoice::Cpu => Some(Placement::Cpu),
            DeviceChoice::Cuda(i) => Some(Placement::Cuda(i)),
            DeviceChoice::Metal(i) => Some(Placement::Metal(i)),
            DeviceChoice::Auto => None,
        };
        if let Some(p) = explicit {
            return open(p).map(|d| (p, d));
        }
        let gpus = [
            (built.cuda, Placement::Cuda(0)),
            (built.metal, Placement::Metal(0)),
        ];
        for (_, p) in gpus.into_iter().filter(|(b, _)| *b) {
            match open(p) {
                Ok(d) => return Ok((p, d)),
                Err(e) => tracing::info!("--device auto: {p:?} unavailable ({e}); trying the next"),
            }
        }
        open(Placement::Cpu).map(|d| (Placement::Cpu, d))
    }
}

/// Three comma-separated floats (`--mean 0.5,0.5,0.5`).
pub fn parse_triple(s: &str) -> Result<[f32; 3], String> {
    let parts: Vec<f32> = s
        .split(',')
        .map(|p| {
            p.trim()
                .parse::<f32>()
                .map_err(|_| format!("`{p}` is not a number"))
        })
        .collect::<Result<_, _>>()?;
    <[f32; 3]>::try_from(parts)
        .map_err(|_| format!("expected three comma-separated numbers, got `{s}`"))
}

/// `--crop-pct`: a positive number.
pub fn parse_crop_pct(s: &str) -> Result<f64, String> {
    let v: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("`{s}` is not a number"))?;
    crate::preprocess::crop_pct_problem(v).map_or(Ok(v), Err)
}

/// `--mean R,G,B`: three numbers.
pub fn parse_mean(s: &str) -> Result<[f32; 3], String> {
    let v = parse_triple(s)?;
    crate::preprocess::mean_problem(&v).map_or(Ok(v), Err)
}

/// `--std R,G,B`: three positive numbers.
pub fn parse_std(s: &str) -> Result<[f32; 3], String> {
    let v = parse_triple(s)?;
    crate::preprocess::std_problem(&v).map_or(Ok(v), Err)
}

/// `--shard I/N`: the I-th (0-based) of N slices.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    pub index: usize,
    pub count: usize,
}

impl FromStr for Shard {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (i, n) = s.split_once('/').ok_or("expected I/N, e.g. 0/4")?;
        let index: usize = i
            .trim()
            .parse()
            .map_err(|_| format!("bad shard index `{i}`"))?;
        let count: usize = n
            .trim()
            .parse()
            .map_err(|_| format!("bad shard count `{n}`"))?;
        if count == 0 || index >= count {
            return Err(format!("shard {index}/{count}: need 0 <= I < N"));
        }
        Ok(Shard { index, count })
    }
}

/// Everything a classification run needs.
#[derive(Debug, Clone)]
pub struct ClassifySettings {
    pub model: ModelSettings,
    pub inputs: Vec<PathBuf>,
    pub walk: crate::pipeline::Walk,
    pub top_k: usize,
    pub batch_size: usize,
    pub shard: Option<Shard>,
    pub format: OutputFormat,
    /// `--output FILE` (stdout when `None`).
    pub output_file: Option<PathBuf>,
    /// `--resume`: skip the inputs `output_file` already records, append the rest.
    pub resume: bool,
    /// `--retry-errors`: with `resume`, classify the inputs recorded as failed again.
    pub retry_errors: bool,
    pub progress: bool,
    pub quiet: bool,
}

/// `--interpolation` on the command line, `interpolation` in a models file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InterpolationArg {
    Bilinear,
    Bicubic,
}

impl From<InterpolationArg> for Interpolation {
    fn from(i: InterpolationArg) -> Self {
        match i {
            InterpolationArg::Bilinear => Interpolation::Bilinear,
            InterpolationArg::Bicubic => Interpolation::Bicubic,
        }
    }
}

/// `classify serve --models-file`: the models one server hosts, each with its own weights,
/// labels, preprocessing and batching. TOML (`[[models]]` tables) or JSON
/// (`{"models": [...]}`); unknown keys are refused, so a typo cannot pass silently.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelList {
    pub models: Vec<ModelListEntry>,
}

/// One `[[models]]` entry; every key but `model` is optional (the model's own config, or
/// the command line's batching flags, apply where one is left out).
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelListEntry {
    /// As `--model`: a short name, `owner/name[@revision]`, or a local folder.
    pub model: String,
    /// Its name in URLs [default: derived from `model`, e.g. `resnet50.tv_in1k`].
    pub name: Option<String>,
    pub weights: Option<PathBuf>,
    pub labels: Option<PathBuf>,
    pub input_size: Option<u32>,
    pub crop_pct: Option<f64>,
    pub resize_size: Option<u32>,
    /// `bilinear` or `bicubic`.
    pub interpolation: Option<InterpolationArg>,
    pub mean: Option<[f32; 3]>,
    pub std: Option<[f32; 3]>,
    pub max_batch_size: Option<usize>,
    pub max_batch_delay_ms: Option<u64>,
    pub queue_size: Option<usize>,
}

impl ModelList {
    /// Parse and check a list: JSON when `json`, else TOML. Relative `weights` and
    /// `labels` paths are taken from `base` (the file's folder).
    pub fn parse(text: &str, json: bool, base: &std::path::Path) -> Result<Self, String> {
        let mut list: ModelList = if json {
            serde_json::from_str(text).map_err(|e| e.to_string())?
        } else {
            toml::from_str(text).map_err(|e| e.to_string())?
        };
        if list.models.is_empty() {
            return Err("no models listed".into());
        }
        for (i, e) in list.models.iter_mut().enumerate() {
            let at = |what: String| format!("model {} (`{}`): {what}", i + 1, e.model);
            if let Some(name) = &e.name {
                let ok = !name.is_empty()
                    && name.len() <= 128
                    && !name.chars().all(|c| c == '.')
                    && name
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
                if !ok {
                    return Err(at(format!(
                        "name `{name}` must be 1-128 of A-Z a-z 0-9 - _ . (it is a URL segment)"
                    )));
                }
            }
            let check = |v: Option<u64>, (lo, hi): (u64, u64), key: &str| match v {
                Some(v) if !(lo..=hi).contains(&v) => {
                    Err(at(format!("{key} = {v} is outside {lo}..={hi}")))
                }
                _ => Ok(()),
            };
            // The flags' ranges (`--input-size`, `--resize-size`).
            let sizes =
                |r: std::ops::RangeInclusive<u32>| (u64::from(*r.start()), u64::from(*r.end()));
            let input = sizes(crate::preprocess::INPUT_SIZES);
            check(e.input_size.map(u64::from), input, "input_size")?;
            let resize = sizes(crate::preprocess::RESIZE_SIZES);
            check(e.resize_size.map(u64::from), resize, "resize_size")?;
            check(
                e.max_batch_size.map(|v| v as u64),
                (1, 256),
                "max_batch_size",
            )?;
            check(e.queue_size.map(|v| v as u64), (1, u64::MAX), "queue_size")?;
            let problems = [
                e.crop_pct.and_then(crate::preprocess::crop_pct_problem),
                e.mean.as_ref().and_then(crate::preprocess::mean_problem),
                e.std.as_ref().and_then(crate::preprocess::std_problem),
            ];
            if let Some(problem) = problems.into_iter().flatten().next() {
                return Err(at(problem));
            }
            for path in [&mut e.weights, &mut e.labels].into_iter().flatten() {
                if path.is_relative() {
                    *path = base.join(&*path);
                }
            }
        }
        Ok(list)
    }
}

impl ModelListEntry {
    /// How to load this model; `device` and `max_pixels` are the process's.
    pub fn settings(
        &self,
        device: DeviceChoice,
        max_pixels: u64,
    ) -> Result<ModelSettings, crate::hub::HubError> {
        Ok(ModelSettings {
            name: self.model.clone(),
            model: ModelRef::parse(&self.model)?,
            weights: self.weights.clone(),
            labels: self.labels.clone(),
            preprocess: PreprocessOverrides {
                input_size: self.input_size,
                crop_pct: self.crop_pct,
                resize_size: self.resize_size,
                interpolation: self.interpolation.map(Interpolation::from),
                mean: self.mean,
                std: self.std,
            },
            device,
            max_pixels,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_devices_shards_and_triples() {
        assert_eq!(
            "cuda:1".parse::<DeviceChoice>().unwrap(),
            DeviceChoice::Cuda(1)
        );
        assert_eq!("cpu".parse::<DeviceChoice>().unwrap(), DeviceChoice::Cpu);
        assert!("tpu".parse::<DeviceChoice>().is_err());
        assert_eq!(
            "2/4".parse::<Shard>().unwrap(),
            Shard { index: 2, count: 4 }
        );
        assert!("4/4".parse::<Shard>().is_err());
        assert!("1/0".parse::<Shard>().is_err());
        assert_eq!(parse_triple("0.5, 0.5,0.5").unwrap(), [0.5; 3]);
        assert!(parse_triple("1,2").is_err());
    }

    #[test]
    fn auto_prefers_a_gpu_that_opens_and_falls_back_to_the_cpu() {
        let none = Backends {
            cuda: false,
            metal: false,
        };
        let cuda = Backends {
            cuda: true,
            metal: false,
        };
        let both = Backends {
            cuda: true,
            metal: true,
        };
        let opens_all = |p: Placement| Ok::<_, String>(p);
        let no_gpu = |p: Placement| match p {
            Placement::Cpu => Ok(p),
            _ => Err("no device".to_string()),
        };
        let metal_only = |p: Placement| match p {
            Placement::Cuda(_) => Err("no CUDA device".to_string()),
            _ => Ok(p),
        };
        let auto = DeviceChoice::Auto;
        assert_eq!(auto.place(none, opens_all).unwrap().0, Placement::Cpu);
        assert_eq!(auto.place(cuda, opens_all).unwrap().0, Placement::Cuda(0));
        assert_eq!(auto.place(cuda, no_gpu).unwrap().0, Placement::Cpu);
        assert_eq!(auto.place(both, metal_only).unwrap().0, Placement::Metal(0));
        // Explicit choices are never replaced by the CPU.
        assert!(DeviceChoice::Cuda(1).place(cuda, no_gpu).is_err());
        assert_eq!(
            DeviceChoice::Cuda(1).place(cuda, opens_all).unwrap().0,
            Placement::Cuda(1)
        );
        assert_eq!(
            DeviceChoice::Cpu.place(both, opens_all).unwrap().0,
            Placement::Cpu
        );
        // The real CPU build: auto is the CPU, and asking for CUDA is a clear error.
        if !cfg!(feature = "cuda") && !cfg!(feature = "metal") {
            assert!(DeviceChoice::Auto.open().unwrap().is_cpu());
            assert!(DeviceChoice::Cuda(0).open().is_err());
        }
    }

    #[test]
    fn overrides_recompute_resize_size() {
        let base = PreprocessConfig::default();
        let o = PreprocessOverrides {
            input_size: Some(320),
            ..Default::default()
        };
        let cfg = o.apply(&base, 0.875);
        assert_eq!((cfg.input_size, cfg.resize_size), (320, 365));
        let o = PreprocessOverrides {
            resize_size: Some(255),
            ..Default::default()
        };
        assert_eq!(o.apply(&base, 0.875).resize_size, 255);
        assert_eq!(PreprocessOverrides::default().apply(&base, 0.875), base);
    }
}
