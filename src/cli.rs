//! Command-line arguments (clap derive). Turned into the validated settings of
//! [`crate::config`] by the `*_settings` methods; nothing else reads these structs.

use std::io::IsTerminal;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::config::{
    parse_crop_pct, parse_mean, parse_std, ClassifySettings, DeviceChoice, ModelSettings,
    OutputFormat, Shard,
};
use crate::hub::HubError;
use crate::preprocess::{DEFAULT_MAX_PIXELS, INPUT_SIZES, RESIZE_SIZES};

const AFTER_HELP: &str = "\
Examples:
  classify kitten.jpg
  classify --model resnet50 --top-k 3 photos/
  classify --json photos/ | jq -r '.predictions[0].label'
  classify --output labels.csv --resume photos/
  cat kitten.jpg | classify -
  classify serve --port 5000

Exit codes: 0 all inputs classified, 1 some inputs failed (each reported), 2 usage or model error.
Environment: HF_HOME, HF_HUB_CACHE, HF_ENDPOINT, HF_TOKEN, HF_HUB_OFFLINE, CLASSIFY_MODEL,
  RUST_LOG, NO_COLOR, RAYON_NUM_THREADS, CLASSIFY_API_KEYS (serve), CLASSIFY_CPU_ISA
  (README.md, Environment, says what each does).";

#[derive(Debug, Parser)]
#[command(
    name = "classify",
    version,
    about = "Classify images with timm's ImageNet models (ResNet, DenseNet, EfficientNet, MobileNet, ConvNeXt, RegNetY, ViT, DeiT, RepVGG), matching PyTorch's predictions",
    after_help = AFTER_HELP,
    args_conflicts_with_subcommands = true,
    arg_required_else_help = true,
    // A later flag overrides an earlier one (`--port 5000 ... --port 8080`), so a container's
    // ENTRYPOINT and its orchestrator's args compose instead of failing.
    args_override_self = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,

    #[command(flatten)]
    pub classify: ClassifyArgs,
}

/// The sizes classify takes ([`INPUT_SIZES`], [`RESIZE_SIZES`]) as clap's range.
fn sizes(r: std::ops::RangeInclusive<u32>) -> std::ops::RangeInclusive<i64> {
    i64::from(*r.start())..=i64::from(*r.end())
}

/// A count or limit that must be positive (`--top-k`, `--max-pixels`, timeouts, ...). clap's
/// own `range(1..)` would answer 0 with "0 is not in 1..18446744073709551615".
fn at_least_one(s: &str) -> Result<u64, String> {
    match s.parse::<u64>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(e) => Err(format!("`{s}` is not a whole number ({e})")),
    }
}

/// `--host`: an IP address, or `localhost` (127.0.0.1, as Flask and uvicorn take it).
fn parse_host(s: &str) -> Result<std::net::IpAddr, String> {
    if s.eq_ignore_ascii_case("localhost") {
        return Ok(std::net::Ipv4Addr::LOCALHOST.into());
    }
    s.parse().map_err(|_| {
        format!("`{s}` is not an IP address (for example 127.0.0.1, 0.0.0.0, ::) or localhost")
    })
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// List supported architectures, their default hub repos, and what is cached locally.
    Models {
        /// One JSON object per model instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Serve the classifier over HTTP (Flask-recipe /predict, upload page, KServe v2, metrics).
    Serve(Box<ServeArgs>),
    /// Measure forward-pass speed and memory (synthetic weights unless --weights is given).
    Bench(BenchArgs),
    /// Print a shell completion script (e.g. `classify completions bash > /etc/bash_completion.d/classify`).
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

pub use crate::config::InterpolationArg;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum FormatArg {
    /// Aligned blocks for people: the path, then one line per prediction.
    Table,
    /// JSON Lines: one object per input.
    Jsonl,
    /// Comma-separated, one row per input, with a header row.
    Csv,
    /// Tab-separated, like csv.
    Tsv,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ColorChoice {
    Auto,
    Always,
    Never,
}

/// Which model, and how images are prepared for it.
#[derive(Debug, Args)]
pub struct ModelArgs {
    /// Model: a short name (`classify models` lists them: ResNet, DenseNet, EfficientNet B and
    /// Lite, MobileNetV3/V4, ConvNeXt, RegNetY, ViT, DeiT, RepVGG), a Hugging Face repo
    /// `owner/name[@revision]` such as timm/convnext_tiny.fb_in1k, or a local folder with
    /// config.json and weights. [default: $CLASSIFY_MODEL, else densenet121]. A later
    /// --model replaces an earlier one, except under `serve`, which serves each one given.
    #[arg(short, long, value_name = "MODEL", action = clap::ArgAction::Append)]
    pub model: Vec<String>,

    /// Use this checkpoint (safetensors, .pth/.pt/.bin, or legacy PyTorch pickle) for the model.
    #[arg(short, long, value_name = "FILE")]
    pub weights: Option<PathBuf>,

    /// Class names: a text file (one per line), an index_to_name.json, or a JSON list.
    #[arg(long, value_name = "FILE")]
    pub labels: Option<PathBuf>,

    /// Side of the square crop fed to the network [default: from the model config].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(sizes(INPUT_SIZES)))]
    pub input_size: Option<u32>,

    /// Fraction of the resized image kept by the center crop: the short side is resized to
    /// floor(input_size / crop_pct) [default: from the model config].
    #[arg(long, value_name = "F", conflicts_with = "resize_size", value_parser = parse_crop_pct)]
    pub crop_pct: Option<f64>,

    /// Resize the short side to exactly N before cropping (e.g. 255 for the PyTorch Flask tutorial).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(sizes(RESIZE_SIZES)))]
    pub resize_size: Option<u32>,

    /// Resampling filter (PIL-style, antialiased) [default: from the model config].
    #[arg(long, value_enum)]
    pub interpolation: Option<InterpolationArg>,

    /// Per-channel mean for normalisation, e.g. 0.485,0.456,0.406 [default: from the model config].
    #[arg(long, value_name = "R,G,B", value_parser = parse_mean)]
    pub mean: Option<[f32; 3]>,

    /// Per-channel standard deviation for normalisation [default: from the model config].
    #[arg(long, value_name = "R,G,B", value_parser = parse_std)]
    pub std: Option<[f32; 3]>,

    /// Where to run the network: cpu, cuda[:N], metal[:N], or auto.
    #[arg(long, default_value = "auto")]
    pub device: DeviceChoice,

    /// CPU threads for decoding and inference [default: all cores].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    pub threads: Option<u16>,

    /// Refuse images with more pixels than this (decompression-bomb guard).
    #[arg(long, value_name = "N", default_value_t = DEFAULT_MAX_PIXELS, value_parser = at_least_one)]
    pub max_pixels: u64,
}

#[derive(Debug, Args)]
pub struct ClassifyArgs {
    /// Images or directories to classify; `-` reads one image from standard input.
    #[arg(value_name = "INPUT")]
    pub inputs: Vec<PathBuf>,

    #[command(flatten)]
    pub model: ModelArgs,

    /// How many predictions to show per image (clamped to the number of classes).
    #[arg(short = 'k', long, default_value_t = 5, value_parser = at_least_one)]
    pub top_k: u64,

    /// Output format [default: from the --output file's extension (.jsonl/.ndjson, .csv,
    /// .tsv), else table].
    #[arg(long, value_enum, value_name = "FORMAT")]
    pub format: Option<FormatArg>,

    /// Same as --format jsonl.
    #[arg(long, conflicts_with = "format")]
    pub json: bool,

    /// Write the results to FILE instead of standard output (`-` is standard output).
    /// Each record is written whole; the file is replaced unless --resume is given.
    #[arg(short, long, value_name = "FILE")]
    pub output: Option<PathBuf>,

    /// Keep the records already in the --output file (from an interrupted run), skip their
    /// inputs and append the rest. An incomplete last record is redone.
    #[arg(long, requires = "output")]
    pub resume: bool,

    /// With --resume: classify the inputs recorded as failed again (their records are removed).
    #[arg(long, requires = "resume")]
    pub retry_errors: bool,

    /// Images per forward pass.
    #[arg(short, long, default_value_t = 8, value_parser = clap::value_parser!(u64).range(1..=1024))]
    pub batch_size: u64,

    /// Do not descend into subdirectories.
    #[arg(long)]
    pub no_recursive: bool,

    /// In directories, also take files and subdirectories whose name starts with a dot
    /// (skipped by default: macOS `._NAME` files, thumbnail caches).
    #[arg(long)]
    pub hidden: bool,

    /// Process only the I-th (0-based) of N deterministic slices of the inputs.
    #[arg(long, value_name = "I/N")]
    pub shard: Option<Shard>,

    /// No progress bar, no per-input error lines and no summary on stderr.
    #[arg(short, long)]
    pub quiet: bool,

    /// Colour in the human-readable output.
    #[arg(long, value_enum, default_value = "auto")]
    pub color: ColorChoice,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub model: ModelArgs,

    /// Address to bind (an IP address, or localhost); use 0.0.0.0 to accept connections from
    /// other machines.
    #[arg(long, default_value = "127.0.0.1", value_parser = parse_host)]
    pub host: std::net::IpAddr,

    /// Port to listen on (0 picks a free one; the address is printed on stderr).
    #[arg(short, long, default_value_t = 5000)]
    pub port: u16,

    /// Also serve the Open Inference Protocol over gRPC (tritonclient.grpc, KServe) on this
    /// port, same host; off unless given.
    #[arg(long, value_name = "PORT")]
    pub grpc_port: Option<u16>,

    /// Default predictions per image (a request's ?top_k=N overrides it).
    #[arg(short = 'k', long, default_value_t = 5, value_parser = at_least_one)]
    pub top_k: u64,

    /// Most images run through the network together.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u64).range(1..=256))]
    pub max_batch_size: u64,

    /// How long the first image of a batch waits for others to join it. With 0 (the
    /// default) a batch is whatever queued up while the previous one ran: no added latency
    /// when idle, full batches under load.
    #[arg(long, default_value_t = 0)]
    pub max_batch_delay_ms: u64,

    /// Images that may wait for the network; beyond this requests get 503 + Retry-After.
    #[arg(long, default_value_t = 256, value_parser = at_least_one)]
    pub queue_size: u64,

    /// Largest request body, in MiB (413 beyond).
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..=1024))]
    pub max_body_mb: u64,

    /// Per-request time limit in seconds (504 beyond).
    #[arg(long, default_value_t = 30, value_parser = at_least_one)]
    pub request_timeout_secs: u64,

    /// Seconds a client has to send its request headers before the connection is closed.
    #[arg(long, default_value_t = 10, value_parser = at_least_one)]
    pub header_timeout_secs: u64,

    /// Require an API key on the inference and model routes: one key per line (blank lines
    /// and # comments skipped). Keys may also come from CLASSIFY_API_KEYS (comma-separated).
    #[arg(long, value_name = "FILE")]
    pub api_key_file: Option<PathBuf>,

    /// Serve the models listed in FILE (TOML `[[models]]` tables, or JSON when it ends in
    /// .json): each with its own weights, labels, preprocessing and batching. Instead of
    /// --model; see the README for the keys.
    #[arg(long, value_name = "FILE")]
    pub models_file: Option<PathBuf>,

    /// With API keys: require one for /metrics too.
    #[arg(long)]
    pub protect_metrics: bool,

    /// Allow browser pages from this origin to call the server (CORS); repeat for several,
    /// or * for any.
    #[arg(long, value_name = "ORIGIN")]
    pub cors_origin: Vec<String>,
}

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Architecture to measure (a short name, or a timm architecture name).
    #[arg(short, long, default_value = "resnet50")]
    pub model: String,

    /// Measure with this checkpoint instead of synthetic weights.
    #[arg(short, long, value_name = "FILE")]
    pub weights: Option<PathBuf>,

    #[arg(short, long, default_value_t = 16, value_parser = clap::value_parser!(u64).range(1..=1024))]
    pub batch_size: u64,

    /// Timed forward passes (after warm-up).
    #[arg(short = 'n', long, default_value_t = 10, value_parser = at_least_one)]
    pub iterations: u64,

    /// Untimed forward passes first.
    #[arg(long, default_value_t = 2)]
    pub warmup: u64,

    /// Side of the square input [default: the architecture's, e.g. 260 for tf_efficientnet_lite2].
    #[arg(long, value_parser = clap::value_parser!(u64).range(32..=1024))]
    pub input_size: Option<u64>,

    /// Where to run: cpu, cuda[:N], metal[:N], or auto.
    #[arg(long, default_value = "auto")]
    pub device: DeviceChoice,

    /// CPU threads [default: all cores].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    pub threads: Option<u16>,

    /// One JSON object instead of text.
    #[arg(long)]
    pub json: bool,

    /// Skip the second measurement with candle's stock operations.
    #[arg(long)]
    pub no_stock: bool,
}

impl BenchArgs {
    pub fn settings(&self) -> anyhow::Result<crate::bench::BenchSettings> {
        let arch = crate::model::Arch::from_name(&self.model)?;
        let input_size = match self.input_size {
            Some(size) => size as usize,
            None => arch.default_preprocess().input_size as usize,
        };
        Ok(crate::bench::BenchSettings {
            arch,
            weights: self.weights.clone(),
            batch_size: self.batch_size as usize,
            iterations: self.iterations as usize,
            warmup: self.warmup as usize,
            input_size,
            device: self.device.open()?,
            compare_stock: !self.no_stock,
        })
    }
}

impl ServeArgs {
    pub fn settings(&self) -> anyhow::Result<crate::server::ServeSettings> {
        use crate::server::{Access, ApiKeys, KEYS_ENV};
        use std::time::Duration;
        let env_keys = std::env::var(KEYS_ENV).ok();
        let key_file = match &self.api_key_file {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| {
                    anyhow::anyhow!("{}: cannot read the API key file: {e}", path.display())
                })?;
                Some((path.display().to_string(), text))
            }
            None => None,
        };
        let access = Access {
            api_keys: ApiKeys::load(
                key_file
                    .as_ref()
                    .map(|(name, text)| (name.as_str(), text.as_str())),
                env_keys.as_deref(),
            )?,
            protect_metrics: self.protect_metrics,
            cors_origins: self.cors_origin.clone(),
        };
        access.cors()?;
        if self.protect_metrics && access.api_keys.is_none() {
            anyhow::bail!("--protect-metrics needs API keys (--api-key-file or {KEYS_ENV})");
        }
        Ok(crate::server::ServeSettings {
            models: self.models()?,
            host: self.host,
            port: self.port,
            grpc_port: self.grpc_port,
            limits: crate::server::ServerLimits {
                max_body_bytes: (self.max_body_mb as usize) * 1024 * 1024,
                request_timeout: Duration::from_secs(self.request_timeout_secs),
                default_top_k: self.top_k as usize,
                header_read_timeout: Duration::from_secs(self.header_timeout_secs),
            },
            access,
        })
    }

    /// The models to serve: each --model (or the default one), or the --models-file list.
    /// Names are checked here, before anything loads.
    fn models(&self) -> anyhow::Result<Vec<crate::server::ServeModel>> {
        use crate::server::{BatchConfig, ModelEntry, ServeModel};
        use std::time::Duration;
        let batch = BatchConfig {
            max_batch_size: self.max_batch_size as usize,
            max_batch_delay: Duration::from_millis(self.max_batch_delay_ms),
            queue_capacity: self.queue_size as usize,
        };
        let models: Vec<ServeModel> = match &self.models_file {
            Some(path) => {
                if !self.model.model.is_empty() {
                    anyhow::bail!(
                        "--models-file and --model cannot be combined: list every model in the file"
                    );
                }
                if let Some(flag) = self.model.per_model_flag() {
                    anyhow::bail!(
                        "{flag} cannot be combined with --models-file: set it for each model in the file"
                    );
                }
                let text = std::fs::read_to_string(path).map_err(|e| {
                    anyhow::anyhow!("{}: cannot read the models file: {e}", path.display())
                })?;
                let json = path
                    .extension()
                    .is_some_and(|e| e.eq_ignore_ascii_case("json"));
                let base = path.parent().unwrap_or(std::path::Path::new("."));
                let list = crate::config::ModelList::parse(&text, json, base)
                    .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
                list.models
                    .iter()
                    .map(|e| {
                        let mut entry = ModelEntry::new(&e.model, batch);
                        if let Some(name) = &e.name {
                            entry.name = name.clone();
                        }
                        entry.batch = BatchConfig {
                            max_batch_size: e.max_batch_size.unwrap_or(batch.max_batch_size),
                            max_batch_delay: e
                                .max_batch_delay_ms
                                .map_or(batch.max_batch_delay, Duration::from_millis),
                            queue_capacity: e.queue_size.unwrap_or(batch.queue_capacity),
                        };
                        Ok(ServeModel {
                            settings: e.settings(self.model.device, self.model.max_pixels)?,
                            entry,
                        })
                    })
                    .collect::<anyhow::Result<_>>()?
            }
            None => {
                if self.model.model.len() > 1 {
                    if let Some(flag) = self.model.per_model_flag() {
                        anyhow::bail!(
                            "{flag} describes one model, and {} were given with --model: set it for each model in --models-file",
                            self.model.model.len()
                        );
                    }
                }
                let names = match self.model.model.as_slice() {
                    [] => vec![self.model.chosen()],
                    given => given.to_vec(),
                };
                names
                    .iter()
                    .map(|name| {
                        Ok(ServeModel {
                            settings: self.model.settings_for(name)?,
                            entry: ModelEntry::new(name, batch),
                        })
                    })
                    .collect::<anyhow::Result<_>>()?
            }
        };
        // Refused here with the same message the server would give.
        crate::server::check_names(models.iter().map(|m| &m.entry))?;
        Ok(models)
    }
}

/// The model when no --model is given (unless CLASSIFY_MODEL names one).
pub const DEFAULT_MODEL: &str = "densenet121";

impl ModelArgs {
    /// The model asked for: the last --model, else CLASSIFY_MODEL, else [`DEFAULT_MODEL`].
    pub fn chosen(&self) -> String {
        match self.model.last() {
            Some(m) => m.clone(),
            None => std::env::var("CLASSIFY_MODEL")
                .ok()
                .filter(|m| !m.is_empty())
                .unwrap_or_else(|| DEFAULT_MODEL.to_string()),
        }
    }

    /// The first flag given that describes one model's files or preprocessing (and so
    /// cannot apply to several).
    pub fn per_model_flag(&self) -> Option<&'static str> {
        [
            (self.weights.is_some(), "--weights"),
            (self.labels.is_some(), "--labels"),
            (self.input_size.is_some(), "--input-size"),
            (self.crop_pct.is_some(), "--crop-pct"),
            (self.resize_size.is_some(), "--resize-size"),
            (self.interpolation.is_some(), "--interpolation"),
            (self.mean.is_some(), "--mean"),
            (self.std.is_some(), "--std"),
        ]
        .into_iter()
        .find_map(|(given, flag)| given.then_some(flag))
    }

    /// Settings for [`ModelArgs::chosen`].
    pub fn model_settings(&self) -> Result<ModelSettings, HubError> {
        self.settings_for(&self.chosen())
    }

    /// Settings for `model` with this command line's files and preprocessing.
    fn settings_for(&self, model: &str) -> Result<ModelSettings, HubError> {
        crate::config::ModelListEntry {
            model: model.to_string(),
            name: None,
            weights: self.weights.clone(),
            labels: self.labels.clone(),
            input_size: self.input_size,
            crop_pct: self.crop_pct,
            resize_size: self.resize_size,
            interpolation: self.interpolation,
            mean: self.mean,
            std: self.std,
            max_batch_size: None,
            max_batch_delay_ms: None,
            queue_size: None,
        }
        .settings(self.device, self.max_pixels)
    }
}

/// Whether what goes to `stream` may be coloured: it is a terminal, and `NO_COLOR` is not
/// set (the table on stdout, the log lines on stderr).
pub fn colour_on(stream: &impl IsTerminal) -> bool {
    stream.is_terminal() && std::env::var_os("NO_COLOR").is_none()
}

impl ClassifyArgs {
    pub fn settings(&self) -> anyhow::Result<ClassifySettings> {
        let color = match self.color {
            ColorChoice::Always => true,
            ColorChoice::Never => false,
            ColorChoice::Auto => {
                self.output.as_ref().is_none_or(|p| p.as_os_str() == "-")
                    && colour_on(&std::io::stdout())
            }
        };
        Ok(ClassifySettings {
            model: self.model.model_settings()?,
            inputs: self.inputs.clone(),
            walk: crate::pipeline::Walk {
                recursive: !self.no_recursive,
                hidden: self.hidden,
            },
            top_k: self.top_k as usize,
            batch_size: self.batch_size as usize,
            shard: self.shard,
            format: {
                let explicit = match (self.format, self.json) {
                    (Some(FormatArg::Table), _) => Some(OutputFormat::Human { color }),
                    (Some(FormatArg::Jsonl), _) | (None, true) => Some(OutputFormat::JsonLines),
                    (Some(FormatArg::Csv), _) => Some(OutputFormat::Csv),
                    (Some(FormatArg::Tsv), _) => Some(OutputFormat::Tsv),
                    (None, false) => None,
                };
                let format = explicit
                    .or_else(|| {
                        self.output
                            .as_deref()
                            .and_then(OutputFormat::from_extension)
                    })
                    .unwrap_or(OutputFormat::Human { color });
                if self.resume && !format.resumable() {
                    anyhow::bail!(
                        "--resume reads the --output file back, which a table cannot be: \
                         give --format jsonl, csv or tsv (or a .jsonl/.csv/.tsv file name)"
                    );
                }
                format
            },
            output_file: self.output.clone().filter(|p| p.as_os_str() != "-"),
            resume: self.resume,
            retry_errors: self.retry_errors,
            progress: !self.quiet && std::io::stderr().is_terminal(),
            quiet: self.quiet,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    const README: &str = include_str!("../README.md");

    /// Every long flag of every subcommand, as `(subcommand, --flag)`.
    fn long_flags(cmd: &clap::Command, path: &str, out: &mut Vec<(String, String)>) {
        for arg in cmd.get_arguments() {
            if let Some(long) = arg.get_long() {
                if long != "help" && long != "version" {
                    out.push((path.to_string(), format!("--{long}")));
                }
            }
        }
        for sub in cmd.get_subcommands() {
            long_flags(sub, &format!("{path} {}", sub.get_name()), out);
        }
    }

    #[test]
    fn readme_documents_every_flag() {
        let mut flags = Vec::new();
        long_flags(&Cli::command(), "classify", &mut flags);
        assert!(flags.len() > 40, "{flags:?}");
        let missing: Vec<_> = flags
            .iter()
            .filter(|(_, flag)| {
                // In a table cell or an example: `--flag`, `--flag VALUE`, `-x, --flag`.
                ![format!("{flag}`"), format!("{flag} "), format!("{flag}=")]
                    .iter()
                    .any(|f| README.contains(f.as_str()))
            })
            .collect();
        assert!(missing.is_empty(), "README.md never names {missing:?}");
    }

    #[test]
    fn help_names_every_variable_the_readme_lists() {
        let table = README
            .split("### Environment")
            .nth(1)
            .and_then(|rest| rest.split("\n#").next())
            .expect("README.md has an Environment section");
        let variables: Vec<&str> = table
            .lines()
            .filter_map(|line| line.strip_prefix("| `")?.split(['`', '=']).next())
            .collect();
        assert!(variables.len() >= 10, "{variables:?}");
        let missing: Vec<_> = variables
            .iter()
            .filter(|v| !AFTER_HELP.contains(*v))
            .collect();
        assert!(missing.is_empty(), "--help does not name {missing:?}");
    }

    #[test]
    fn counts_and_limits_refuse_zero_in_words() {
        for args in [
            &["classify", "--top-k", "0", "a.jpg"][..],
            &["classify", "--max-pixels", "0", "a.jpg"],
            &["classify", "serve", "--queue-size", "0"],
            &["classify", "serve", "--request-timeout-secs", "0"],
            &["classify", "bench", "--iterations", "0"],
        ] {
            let err = Cli::try_parse_from(args).unwrap_err().to_string();
            assert!(
                err.contains("'0'") && err.contains("must be at least 1"),
                "{args:?}: {err}"
            );
        }
        let err = Cli::try_parse_from(["classify", "-k", "five", "a.jpg"]).unwrap_err();
        assert!(
            err.to_string().contains("`five` is not a whole number"),
            "{err}"
        );
    }

    #[test]
    fn parses_a_typical_command_line() {
        let cli = Cli::try_parse_from([
            "classify", "--model", "resnet50", "-k", "3", "--json", "a.jpg", "dir",
        ])
        .unwrap();
        let s = cli.classify.settings().unwrap();
        assert_eq!(s.top_k, 3);
        assert_eq!(s.inputs.len(), 2);
        assert_eq!(s.format, OutputFormat::JsonLines);
        let parse = |args: &[&str]| {
            Cli::try_parse_from(["classify"].iter().chain(args))
                .map_err(|e| e.to_string())
                .and_then(|c| c.classify.settings().map_err(|e| e.to_string()))
        };
        let s = parse(&["-o", "out/labels.CSV", "--resume", "d"]).unwrap();
        assert_eq!(s.format, OutputFormat::Csv);
        assert_eq!(s.output_file, Some(PathBuf::from("out/labels.CSV")));
        assert!(s.resume && !s.retry_errors);
        assert_eq!(
            parse(&["-o", "x.csv", "--format", "tsv", "d"])
                .unwrap()
                .format,
            OutputFormat::Tsv
        );
        assert_eq!(
            parse(&["-o", "-", "--format", "jsonl", "d"])
                .unwrap()
                .output_file,
            None
        );
        assert!(parse(&["--resume", "d"]).unwrap_err().contains("--output"));
        assert!(parse(&["-o", "x.txt", "--resume", "d"])
            .unwrap_err()
            .contains("a table cannot"));
        assert!(parse(&["--json", "--format", "csv", "d"]).is_err());
        assert!(parse(&["-o", "x.csv", "--retry-errors", "d"]).is_err());
        assert!(Cli::try_parse_from([
            "classify",
            "--crop-pct",
            "0.9",
            "--resize-size",
            "255",
            "a.jpg"
        ])
        .is_err());
        assert!(Cli::try_parse_from(["classify", "--mean", "1,2", "a.jpg"]).is_err());
        assert!(matches!(
            Cli::try_parse_from(["classify", "models"]).unwrap().command,
            Some(Command::Models { json: false })
        ));
    }

    /// `classify serve ARGS` as far as its settings (errors as the CLI prints them).
    fn serve(args: &[&str]) -> Result<crate::server::ServeSettings, String> {
        let cli = Cli::try_parse_from(["classify", "serve"].iter().chain(args))
            .map_err(|e| e.to_string())?;
        match cli.command {
            Some(Command::Serve(s)) => s.settings().map_err(|e| format!("{e:#}")),
            _ => unreachable!(),
        }
    }

    #[test]
    fn serve_models_from_flags_and_from_a_models_file() {
        let names = |s: &crate::server::ServeSettings| -> Vec<String> {
            s.models.iter().map(|m| m.entry.name.clone()).collect()
        };
        // Each --model is served, in order; a later --port still overrides.
        let s = serve(&[
            "--model",
            "densenet121",
            "--port",
            "1",
            "--model",
            "timm/resnet50.tv_in1k@main",
            "--port",
            "2",
        ])
        .unwrap();
        assert_eq!(names(&s), ["densenet121", "resnet50.tv_in1k"]);
        assert_eq!(s.port, 2);
        assert_eq!(s.models[1].settings.name, "timm/resnet50.tv_in1k@main");
        // One model's files cannot apply to two.
        let err = serve(&["-m", "resnet18", "-m", "resnet50", "--weights", "w.pth"]).unwrap_err();
        assert!(err.contains("--weights describes one model"), "{err}");
        let err = serve(&["-m", "resnet18", "-m", "timm/resnet18"]).unwrap_err();
        assert!(
            err.contains("two models would be served as `resnet18`"),
            "{err}"
        );

        let dir = tempfile::tempdir().unwrap();
        let toml = dir.path().join("models.toml");
        std::fs::write(
            &toml,
            r#"
[[models]]
model = "tf_efficientnet_lite0"
weights = "lite0.pth"
interpolation = "bilinear"
mean = [0.5, 0.5, 0.5]
std = [0.5, 0.5, 0.5]

[[models]]
model = "efficientnet_lite2"
name = "lite2"
weights = "/abs/lite2.pth"
max_batch_size = 4
queue_size = 8
"#,
        )
        .unwrap();
        let s = serve(&[
            "--models-file",
            toml.to_str().unwrap(),
            "--max-batch-size",
            "32",
        ])
        .unwrap();
        assert_eq!(names(&s), ["tf_efficientnet_lite0", "lite2"]);
        let (a, b) = (&s.models[0], &s.models[1]);
        assert_eq!(
            a.settings.weights.as_deref(),
            Some(dir.path().join("lite0.pth").as_path())
        );
        assert_eq!(a.settings.preprocess.mean, Some([0.5; 3]));
        assert_eq!(
            a.settings.preprocess.interpolation,
            Some(crate::preprocess::Interpolation::Bilinear)
        );
        assert_eq!(
            a.entry.batch.max_batch_size, 32,
            "the flag is every model's default"
        );
        assert_eq!(
            b.settings.weights.as_deref(),
            Some(std::path::Path::new("/abs/lite2.pth"))
        );
        assert_eq!(
            (b.entry.batch.max_batch_size, b.entry.batch.queue_capacity),
            (4, 8)
        );

        let json = dir.path().join("models.json");
        std::fs::write(
            &json,
            r#"{"models": [{"model": "resnet18"}, {"model": "resnet50", "input_size": 288}]}"#,
        )
        .unwrap();
        let s = serve(&["--models-file", json.to_str().unwrap()]).unwrap();
        assert_eq!(names(&s), ["resnet18", "resnet50"]);
        assert_eq!(s.models[1].settings.preprocess.input_size, Some(288));

        let bad = |text: &str| {
            std::fs::write(&toml, text).unwrap();
            serve(&["--models-file", toml.to_str().unwrap()]).unwrap_err()
        };
        let err = bad("[[models]]\nmodel = \"resnet18\"\nweight = \"w.pth\"\n");
        assert!(err.contains("unknown field `weight`"), "{err}");
        let err = bad("[[models]]\nmodel = \"resnet18\"\nname = \"../x\"\n");
        assert!(err.contains("model 1 (`resnet18`): name `../x`"), "{err}");
        let err = bad("[[models]]\nmodel = \"resnet18\"\n[[models]]\nmodel = \"resnet18\"\n");
        assert!(
            err.contains("two models would be served as `resnet18`"),
            "{err}"
        );
        let err = bad("[[models]]\nmodel = \"resnet18\"\ninterpolation = \"nearest\"\n");
        assert!(err.contains("unknown variant `nearest`"), "{err}");
        let host = |h: &str| serve(&["--host", h]).map(|s| s.host.to_string());
        assert_eq!(host("localhost").unwrap(), "127.0.0.1");
        assert_eq!(host("LOCALHOST").unwrap(), "127.0.0.1");
        assert_eq!(host("::").unwrap(), "::");
        assert!(host("example.com")
            .unwrap_err()
            .contains("not an IP address"));
        let err = bad("models = []\n");
        assert!(err.contains("no models listed"), "{err}");
        let err = bad("[[models]]\nmodel = \"resnet18\"\nstd = [0.0, 0.0, 0.0]\n");
        assert!(
            err.contains("model 1 (`resnet18`): std [0.0, 0.0, 0.0] is not three positive"),
            "{err}"
        );
        let err = bad("[[models]]\nmodel = \"resnet18\"\ncrop_pct = 0.0\n");
        assert!(err.contains("crop_pct 0 is not a positive number"), "{err}");
        let err = serve(&["--models-file", "/nonexistent/models.toml"]).unwrap_err();
        assert!(
            err.contains("/nonexistent/models.toml: cannot read"),
            "{err}"
        );
        std::fs::write(&toml, "[[models]]\nmodel = \"resnet18\"\n").unwrap();
        let file = toml.to_str().unwrap();
        let err = serve(&["--models-file", file, "--model", "resnet50"]).unwrap_err();
        assert!(err.contains("cannot be combined"), "{err}");
        let err = serve(&["--models-file", file, "--labels", "l.txt"]).unwrap_err();
        assert!(
            err.contains("--labels cannot be combined with --models-file"),
            "{err}"
        );
    }

    #[test]
    fn serve_access_settings_are_checked_before_anything_loads() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("keys.txt");
        std::fs::write(&file, "k-1\nk-2\n").unwrap();
        let file = file.to_str().unwrap();
        let s = serve(&["--api-key-file", file, "--protect-metrics"]).unwrap();
        assert!(s.access.api_keys.is_some_and(|k| k.len() >= 2));
        assert!(s.access.protect_metrics);
        if std::env::var_os(crate::server::KEYS_ENV).is_none() {
            let err = serve(&["--protect-metrics"]).unwrap_err();
            assert!(err.contains("needs API keys"), "{err}");
        }
        let err = serve(&["--api-key-file", "/nonexistent/keys"]).unwrap_err();
        assert!(err.contains("/nonexistent/keys"), "{err}");
        let err = serve(&["--cors-origin", "app.example.com"]).unwrap_err();
        assert!(err.contains("not an origin"), "{err}");
        let s = serve(&["--cors-origin", "https://a.example", "--cors-origin", "*"]).unwrap();
        assert_eq!(s.access.cors_origins.len(), 2);
    }
}
