//! Model id -> architecture, weights file and `config.json`.
//!
//! `--model` is a short architecture name (mapped to its default Hugging Face repo), a hub
//! repo `owner/name[@revision]`, or a local folder holding `config.json` and weights.
//! Downloads go through `hf-hub` into the shared Hugging Face cache, laid out as Python's
//! huggingface_hub lays it out (`models--owner--name/{refs,snapshots,blobs}`), so caches are
//! shared both ways. Honoured: `HF_HUB_CACHE`, `HF_HOME`, `HF_ENDPOINT`, `HF_TOKEN`, and
//! `HF_HUB_OFFLINE=1` (use only the cache; never touch the network).

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::model::Arch;

/// Weight files looked for in a repo or folder, in order of preference.
pub const WEIGHT_FILES: [&str; 4] = [
    "model.safetensors",
    "pytorch_model.bin",
    "model.pth",
    "model.pt",
];

/// What `--model` named.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelRef {
    /// A hub repo; `arch` is known up front when it came from a short name.
    Hub {
        repo: String,
        revision: String,
        arch: Option<Arch>,
    },
    LocalDir(PathBuf),
    /// A short name whose architecture has no published weights: `--weights` must say.
    Unpublished(Arch),
}

#[derive(Debug, thiserror::Error)]
pub enum HubError {
    #[error("`{spec}` is not a model name ({}), a hub repo (owner/name[@revision]) or an existing folder",
        match nearest { Some(name) => format!("did you mean `{name}`? `classify models` lists them all"), None => Arch::names().join(", ") })]
    BadModelRef {
        spec: String,
        /// The model name the user most likely meant, if one is close.
        nearest: Option<&'static str>,
    },
    #[error(
        "cannot get {file} of hub repo {repo} (revision {revision}): {cause}\n\
         It is not in the local cache {cache}.\n\
         Ways out: pass the weights with --weights FILE; point HF_ENDPOINT at a reachable mirror; \
         or fill the cache on a connected machine (`classify --model {repo} ...` or huggingface-cli download) \
         and copy it here: with HF_HUB_OFFLINE=1 classify then never touches the network."
    )]
    Unavailable {
        repo: String,
        revision: String,
        file: String,
        cache: PathBuf,
        cause: String,
    },
    #[error("`{}` is a file, and --model names an architecture, a hub repo or a folder; give the file with --weights and the architecture with --model (for example --model resnet50 --weights {})", .0.display(), .0.display())]
    FileAsModel(PathBuf),
    #[error("folder {dir} has no weights file (looked for {})", WEIGHT_FILES.join(", "))]
    NoWeightsInDir { dir: PathBuf },
    #[error("cannot read {path}: {reason}")]
    BadConfig { path: PathBuf, reason: String },
    #[error("{origin}: cannot tell the architecture (no usable `architecture` in config.json); pass --model with one of {}", Arch::names().join(", "))]
    UnknownArch { origin: String },
    #[error(
        "{0} has no published ImageNet weights on the hub; pass a checkpoint with --weights FILE"
    )]
    NoPublishedWeights(Arch),
    #[error(transparent)]
    Arch(#[from] crate::model::ModelError),
}

impl ModelRef {
    pub fn parse(spec: &str) -> Result<Self, HubError> {
        let path = Path::new(spec);
        if path.is_dir() {
            return Ok(ModelRef::LocalDir(path.to_path_buf()));
        }
        if let Ok(arch) = Arch::from_name(spec) {
            if !spec.contains('/') {
                return Ok(match arch.default_repo() {
                    Some(repo) => ModelRef::Hub {
                        repo: repo.to_string(),
                        revision: "main".into(),
                        arch: Some(arch),
                    },
                    None => ModelRef::Unpublished(arch),
                });
            }
        }
        if path.is_file() {
            // Before the repo form, which `weights/r50.pth` also fits.
            return Err(HubError::FileAsModel(path.to_path_buf()));
        }
        let (repo, revision) = spec.split_once('@').unwrap_or((spec, "main"));
        let valid_part = |s: &str| {
            !s.is_empty()
                && s != "."
                && s != ".."
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        };
        match repo.split_once('/') {
            Some((owner, name))
                if valid_part(owner) && valid_part(name) && !revision.is_empty() =>
            {
                Ok(ModelRef::Hub {
                    repo: repo.to_string(),
                    revision: revision.to_string(),
                    arch: None,
                })
            }
            _ => Err(HubError::BadModelRef {
                spec: spec.to_string(),
                nearest: nearest_name(spec),
            }),
        }
    }
}

/// timm's `config.json`, the parts we use.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ModelConfig {
    pub architecture: Option<String>,
    pub num_classes: Option<usize>,
    pub label_names: Option<ConfigLabelNames>,
    /// timm's `label_descriptions`: a label name (an ImageNet-22k WordNet id, say) -> what
    /// it is in words.
    #[serde(default)]
    pub label_descriptions: std::collections::HashMap<String, String>,
    #[serde(default)]
    pub pretrained_cfg: PretrainedCfg,
}

/// timm's `label_names`: a list (class `i` the `i`-th), or a map from class index to name
/// where some classes have none.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum ConfigLabelNames {
    List(Vec<String>),
    ById(std::collections::BTreeMap<String, String>),
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct PretrainedCfg {
    pub input_size: Option<Vec<u32>>,
    pub crop_pct: Option<f64>,
    pub crop_mode: Option<String>,
    pub interpolation: Option<String>,
    pub mean: Option<Vec<f32>>,
    pub std: Option<Vec<f32>>,
}

impl ModelConfig {
    pub fn load(path: &Path) -> Result<Self, HubError> {
        let bad = |reason: String| HubError::BadConfig {
            path: path.to_path_buf(),
            reason,
        };
        let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
        serde_json::from_str(&text).map_err(|e| bad(e.to_string()))
    }
}

/// Where and how to reach the hub.
#[derive(Debug, Clone)]
pub struct HubOptions {
    pub cache_dir: PathBuf,
    pub offline: bool,
    pub endpoint: Option<String>,
    pub token: Option<String>,
    pub progress: bool,
}

fn env_nonempty(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

fn truthy(v: &str) -> bool {
    matches!(v.to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on")
}

impl HubOptions {
    /// Settings from the standard Hugging Face environment variables.
    pub fn from_env() -> Self {
        let hf_home = env_nonempty("HF_HOME")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                let cache = env_nonempty("XDG_CACHE_HOME")
                    .map(PathBuf::from)
                    .or_else(|| env_nonempty("HOME").map(|h| Path::new(&h).join(".cache")))
                    .unwrap_or_else(|| PathBuf::from(".cache"));
                cache.join("huggingface")
            });
        let cache_dir = env_nonempty("HF_HUB_CACHE")
            .map(PathBuf::from)
            .unwrap_or_else(|| hf_home.join("hub"));
        let token = env_nonempty("HF_TOKEN").or_else(|| {
            std::fs::read_to_string(hf_home.join("token"))
                .ok()
                .map(|t| t.trim().to_string())
                .filter(|t| !t.is_empty())
        });
        Self {
            cache_dir,
            offline: env_nonempty("HF_HUB_OFFLINE").is_some_and(|v| truthy(&v)),
            endpoint: env_nonempty("HF_ENDPOINT"),
            token,
            progress: false,
        }
    }

    fn repo_dir(&self, repo: &str) -> PathBuf {
        self.cache_dir
            .join(format!("models--{}", repo.replace('/', "--")))
    }

    /// The cached copy of `file`, if any: `snapshots/<commit>/<file>`, the commit being the
    /// revision itself or what `refs/<revision>` names.
    pub fn cached(&self, repo: &str, revision: &str, file: &str) -> Option<PathBuf> {
        let dir = self.repo_dir(repo);
        let is_commit = revision.len() == 40 && revision.bytes().all(|b| b.is_ascii_hexdigit());
        let commit = if is_commit {
            revision.to_string()
        } else {
            std::fs::read_to_string(dir.join("refs").join(revision))
                .ok()?
                .trim()
                .to_string()
        };
        let path = dir.join("snapshots").join(commit).join(file);
        path.is_file().then_some(path)
    }

    /// The local path of `file` from the repo: from the cache, else downloaded into it.
    pub fn fetch(&self, repo: &str, revision: &str, file: &str) -> Result<PathBuf, HubError> {
        if let Some(path) = self.cached(repo, revision, file) {
            return Ok(path);
        }
        let unavailable = |cause: String| HubError::Unavailable {
            repo: repo.to_string(),
            revision: revision.to_string(),
            file: file.to_string(),
            cache: self.cache_dir.clone(),
            cause,
        };
        if self.offline {
            return Err(unavailable(
                "HF_HUB_OFFLINE is set, so the network is not used".into(),
            ));
        }
        tracing::info!(repo, revision, file, "downloading from the hub");
        let mut builder =
            hf_hub::api::sync::ApiBuilder::from_cache(hf_hub::Cache::new(self.cache_dir.clone()))
                .with_progress(self.progress)
                .with_token(self.token.clone())
                .with_user_agent("classify", env!("CARGO_PKG_VERSION"));
        if let Some(endpoint) = &self.endpoint {
            builder = builder.with_endpoint(endpoint.clone());
        }
        let api = builder.build().map_err(|e| unavailable(e.to_string()))?;
        let repo_handle = hf_hub::Repo::with_revision(
            repo.to_string(),
            hf_hub::RepoType::Model,
            revision.to_string(),
        );
        api.repo(repo_handle)
            .get(file)
            .map_err(|e| unavailable(e.to_string()))
    }
}

/// A model ready to load: what it is, where its weights are, how it wants its input.
#[derive(Debug, Clone)]
pub struct ResolvedModel {
    pub arch: Arch,
    pub weights: PathBuf,
    pub config: Option<ModelConfig>,
}

fn arch_from_config(config: &ModelConfig, origin: &str) -> Result<Arch, HubError> {
    let name = config
        .architecture
        .as_deref()
        .ok_or_else(|| HubError::UnknownArch {
            origin: origin.to_string(),
        })?;
    Ok(Arch::from_name(name)?)
}

/// Resolve `model` (and an optional explicit weights file) to something loadable.
pub fn resolve(
    model: &ModelRef,
    weights: Option<&Path>,
    hub: &HubOptions,
) -> Result<ResolvedModel, HubError> {
    match model {
        ModelRef::Unpublished(arch) => Ok(ResolvedModel {
            arch: *arch,
            weights: weights
                .ok_or(HubError::NoPublishedWeights(*arch))?
                .to_path_buf(),
            config: None,
        }),
        ModelRef::LocalDir(dir) => {
            let config_path = dir.join("config.json");
            let config = if config_path.is_file() {
                Some(ModelConfig::load(&config_path)?)
            } else {
                None
            };
            let origin = dir.display().to_string();
            let arch = match &config {
                Some(c) => arch_from_config(c, &origin)?,
                None => return Err(HubError::UnknownArch { origin }),
            };
            let weights = match weights {
                Some(w) => w.to_path_buf(),
                None => WEIGHT_FILES
                    .iter()
                    .map(|f| dir.join(f))
                    .find(|p| p.is_file())
                    .ok_or_else(|| HubError::NoWeightsInDir { dir: dir.clone() })?,
            };
            Ok(ResolvedModel {
                arch,
                weights,
                config,
            })
        }
        ModelRef::Hub {
            repo,
            revision,
            arch,
        } => {
            // A known architecture with explicit weights needs nothing from the hub.
            if let (Some(arch), Some(weights)) = (arch, weights) {
                return Ok(ResolvedModel {
                    arch: *arch,
                    weights: weights.to_path_buf(),
                    config: None,
                });
            }
            let config = match hub.fetch(repo, revision, "config.json") {
                Ok(path) => Some(ModelConfig::load(&path)?),
                // The short names' repos are known timm repos: without their config the
                // architecture's defaults apply, and the weights error below says why.
                Err(_) if arch.is_some() => None,
                Err(e) => return Err(e),
            };
            let arch = match (arch, &config) {
                (Some(a), _) => *a,
                (None, Some(c)) => arch_from_config(c, repo)?,
                (None, None) => {
                    return Err(HubError::UnknownArch {
                        origin: repo.clone(),
                    })
                }
            };
            let weights = match weights {
                Some(w) => w.to_path_buf(),
                None => fetch_first(hub, repo, revision, &WEIGHT_FILES[..2])?,
            };
            Ok(ResolvedModel {
                arch,
                weights,
                config,
            })
        }
    }
}

/// The first of `files` the repo has; the error of the first one if none.
fn fetch_first(
    hub: &HubOptions,
    repo: &str,
    revision: &str,
    files: &[&str],
) -> Result<PathBuf, HubError> {
    let mut first_err = None;
    for file in files {
        match hub.fetch(repo, revision, file) {
            Ok(path) => return Ok(path),
            Err(e) => {
                first_err.get_or_insert(e);
            }
        }
    }
    Err(first_err.unwrap_or_else(|| HubError::BadModelRef {
        spec: repo.to_string(),
        nearest: None,
    }))
}

/// The model name a mistyped one most likely meant: within two edits (`resnet51`,
/// `efficientnet-lite0`), else the first that starts with it (`densenet`).
fn nearest_name(spec: &str) -> Option<&'static str> {
    let spec = spec.to_ascii_lowercase();
    let names = Arch::names();
    names
        .iter()
        .map(|name| (strsim::levenshtein(&spec, name), *name))
        .filter(|(distance, _)| *distance <= 2)
        .min_by_key(|(distance, _)| *distance)
        .map(|(_, name)| name)
        .or_else(|| names.into_iter().find(|name| name.starts_with(&spec)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_refs() {
        assert_eq!(
            ModelRef::parse("densenet121").unwrap(),
            ModelRef::Hub {
                repo: "timm/densenet121.tv_in1k".into(),
                revision: "main".into(),
                arch: Some(Arch::from_name("densenet121").unwrap())
            }
        );
        assert_eq!(
            ModelRef::parse("me/my-resnet@v2").unwrap(),
            ModelRef::Hub {
                repo: "me/my-resnet".into(),
                revision: "v2".into(),
                arch: None
            }
        );
        // timm's two Lite variants have their own repos; Lite1-4 of the PyTorch-trained
        // one have none, so they need --weights.
        let lite = |n: &str| ModelRef::parse(n).unwrap();
        assert!(matches!(lite("efficientnet_lite0"),
            ModelRef::Hub { repo, .. } if repo == "timm/efficientnet_lite0.ra_in1k"));
        assert!(matches!(lite("tf_efficientnet_lite2"),
            ModelRef::Hub { repo, .. } if repo == "timm/tf_efficientnet_lite2.in1k"));
        let unpublished = lite("efficientnet_lite2");
        assert!(
            matches!(unpublished, ModelRef::Unpublished(a) if a.name() == "efficientnet_lite2")
        );
        let hub = HubOptions {
            cache_dir: std::env::temp_dir(),
            offline: true,
            endpoint: None,
            token: None,
            progress: false,
        };
        let err = resolve(&unpublished, None, &hub).unwrap_err().to_string();
        assert!(err.contains("no published ImageNet weights"), "{err}");
        let with = resolve(&unpublished, Some(Path::new("x.pth")), &hub).unwrap();
        assert_eq!(with.weights, Path::new("x.pth"));

        assert!(ModelRef::parse("resnet9000").is_err());
        let file = tempfile::NamedTempFile::new().unwrap();
        let err = ModelRef::parse(&file.path().to_string_lossy()).unwrap_err();
        assert!(err.to_string().contains("is a file"), "{err}");
        assert!(err.to_string().contains("--weights"), "{err}");
        let hint = |spec: &str| ModelRef::parse(spec).unwrap_err().to_string();
        assert!(hint("resnet51").contains("(did you mean `resnet50`? `classify models`"));
        assert!(hint("DenseNet").contains("did you mean `densenet121`?"));
        assert!(hint("mobilenetv3_large").contains("did you mean `mobilenetv3_large_100`?"));
        // Nothing close: the whole list.
        assert!(
            hint("yolo").contains("(resnet18, resnet34, "),
            "{}",
            hint("yolo")
        );
        assert!(ModelRef::parse("a/b/c").is_err());
        assert!(ModelRef::parse("../etc").is_err() || Path::new("../etc").is_dir());
    }

    #[test]
    fn cache_layout_matches_huggingface_hub() {
        let tmp = tempfile::tempdir().unwrap();
        let hub = HubOptions {
            cache_dir: tmp.path().to_path_buf(),
            offline: true,
            endpoint: None,
            token: None,
            progress: false,
        };
        let commit = "0123456789abcdef0123456789abcdef01234567";
        let repo_dir = tmp.path().join("models--timm--resnet18.tv_in1k");
        std::fs::create_dir_all(repo_dir.join("refs")).unwrap();
        std::fs::create_dir_all(repo_dir.join("snapshots").join(commit)).unwrap();
        std::fs::write(repo_dir.join("refs/main"), commit).unwrap();
        std::fs::write(
            repo_dir.join("snapshots").join(commit).join("config.json"),
            "{}",
        )
        .unwrap();
        assert!(hub
            .cached("timm/resnet18.tv_in1k", "main", "config.json")
            .is_some());
        assert!(hub
            .cached("timm/resnet18.tv_in1k", commit, "config.json")
            .is_some());
        assert!(hub
            .cached("timm/resnet18.tv_in1k", "main", "model.safetensors")
            .is_none());
        let err = hub
            .fetch("timm/resnet18.tv_in1k", "main", "model.safetensors")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("timm/resnet18.tv_in1k") && err.contains("model.safetensors"),
            "{err}"
        );
        assert!(
            err.contains("--weights") && err.contains("HF_HUB_OFFLINE"),
            "{err}"
        );
    }
}
