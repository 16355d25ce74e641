//! Big directory runs through the real binary: `--format csv|tsv|jsonl`, `--output`,
//! `--resume` after SIGKILLs and torn records, `--shard`, and the Kubernetes Indexed Job
//! manifest's exact container args. Real EfficientNet-Lite0 weights (fetched by
//! `scripts/test`) on a few hundred small images cut from the fixture photos.

mod common;

use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::HubCache;

/// Flags every run here shares: the test cache's model at a small input size (the runs are
/// about records, not accuracy), small batches so a kill lands mid-run.
const MODEL: [&str; 6] = [
    "--model",
    "tf_efficientnet_lite0",
    "--input-size",
    "96",
    "--batch-size",
    "4",
];

/// `classify MODEL... ARGS... --output FILE DIR`, not started yet.
fn classify_to(hub: &HubCache, args: &[&str], file: &Path, dir: &Path) -> Command {
    let mut cmd = hub.command();
    cmd.args(MODEL)
        .args(args)
        .arg("--output")
        .arg(file)
        .arg(dir);
    cmd
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// `n` distinct small PNGs (crops of the fixture photos at different places and scales),
/// spread over a few subdirectories.
fn write_images(dir: &Path, n: usize) -> Vec<PathBuf> {
    let photos: Vec<image::RgbImage> =
        ["chelsea.png", "coffee.png", "rocket.jpg", "motorcycle.jpg"]
            .iter()
            .map(|f| image::open(common::photo(f)).unwrap().to_rgb8())
            .collect();
    let mut paths = Vec::new();
    for i in 0..n {
        let photo = &photos[i % photos.len()];
        let side = 80 + (i * 7) % 120;
        let x = ((i * 13) % (photo.width() as usize - side)) as u32;
        let y = ((i * 29) % (photo.height() as usize - side)) as u32;
        let crop = image::imageops::crop_imm(photo, x, y, side as u32, side as u32).to_image();
        let small = image::imageops::resize(&crop, 48, 48, image::imageops::FilterType::Triangle);
        let sub = dir.join(format!("part{}", i % 3));
        std::fs::create_dir_all(&sub).unwrap();
        let path = sub.join(format!("img{i:04}.png"));
        small.save(&path).unwrap();
        paths.push(path);
    }
    paths
}

fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

fn path_of(line: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
    v["path"].as_str().unwrap().to_string()
}

/// Start `cmd`, SIGKILL it once `file` holds at least `records` complete lines; returns how
/// many lines the file had after the kill. Fails if the run finished first.
fn kill_after(cmd: &mut Command, file: &Path, records: usize) -> usize {
    let mut child = cmd.spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let n = std::fs::read(file)
            .map(|b| b.iter().filter(|&&c| c == b'\n').count())
            .unwrap_or(0);
        if n >= records {
            break;
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!("the run ended ({status}) before {records} records; it has {n}");
        }
        assert!(Instant::now() < deadline, "no progress: {n} records");
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    lines(file).len()
}

#[test]
fn sigkilled_runs_resume_to_exactly_one_record_per_input() {
    let hub = HubCache::new();
    let tmp = tempfile::tempdir().unwrap();
    let images = tmp.path().join("images");
    let n = 240;
    write_images(&images, n);
    std::fs::write(
        images.join("part1/broken.png"),
        b"\x89PNG\r\n\x1a\nnot really",
    )
    .unwrap();

    let reference = tmp.path().join("reference.jsonl");
    let out = classify_to(&hub, &[], &reference, &images)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let expected = lines(&reference);
    assert_eq!(expected.len(), n + 1);
    let summary = stderr(&out);
    assert!(
        summary.contains(&format!("classify: {n} classified, 1 failed in "))
            && summary.contains(" img/s)"),
        "{summary}"
    );

    let output = tmp.path().join("out/run.jsonl");
    let run = || classify_to(&hub, &["--quiet", "--resume"], &output, &images);
    let mut seen = Vec::new();
    for target in [20, 70, 130, 200] {
        let had = kill_after(&mut run(), &output, target);
        assert!(had < n + 1, "killed after the end ({had} records)");
        seen.push(had);
    }
    assert!(
        seen.windows(2).all(|w| w[0] < w[1]),
        "each resume made progress: {seen:?}"
    );
    let out = run().output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "the broken file is still failed: {}",
        stderr(&out)
    );
    assert!(stderr(&out).is_empty(), "--quiet: {}", stderr(&out));
    // Exactly the uninterrupted run's records, in the same order, with the same scores.
    assert_eq!(lines(&output), expected);

    // Resuming a finished file adds nothing.
    let before = std::fs::read(&output).unwrap();
    let out = run().arg("--retry-errors").output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let after = lines(&output);
    assert_eq!(after.len(), n + 1);
    assert_eq!(
        after.last().map(|l| path_of(l)),
        expected
            .iter()
            .find(|l| l.contains("\"error\""))
            .map(|l| path_of(l)),
        "retried error appended last"
    );
    assert_ne!(before, std::fs::read(&output).unwrap());
}

/// The same with `--shard` and CSV: the shard's rows, in the shard's order, under its header.
#[test]
fn sigkilled_shard_resumes_to_the_uninterrupted_shard() {
    let hub = HubCache::new();
    let tmp = tempfile::tempdir().unwrap();
    let images = tmp.path().join("images");
    let all = write_images(&images, 150);
    let shard = ["--shard", "1/3", "--format", "csv", "--quiet"];
    let reference = tmp.path().join("reference.csv");
    let out = classify_to(&hub, &shard, &reference, &images)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let expected = lines(&reference);
    assert_eq!(expected.len(), 1 + 50, "header + every third of 150");

    let output = tmp.path().join("part-1.csv");
    let run = || {
        classify_to(
            &hub,
            &[&shard[..], &["--resume"]].concat(),
            &output,
            &images,
        )
    };
    for target in [8, 25, 40] {
        kill_after(&mut run(), &output, target);
    }
    let out = run().output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(lines(&output), expected);
    // The shard is every third input of the sorted walk, starting at the second.
    let mut walked: Vec<String> = all
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    walked.sort();
    let want: Vec<&String> = walked.iter().skip(1).step_by(3).collect();
    let got: Vec<String> = expected[1..]
        .iter()
        .map(|l| l.split(',').next().unwrap().to_string())
        .collect();
    assert_eq!(got.iter().collect::<Vec<_>>(), want);
}

#[test]
fn torn_last_records_are_redone_and_foreign_files_refused() {
    let hub = HubCache::new();
    let tmp = tempfile::tempdir().unwrap();
    let images = tmp.path().join("images");
    write_images(&images, 12);
    // A path CSV must quote, so a cut can land inside a quoted field.
    std::fs::copy(
        common::photo("coffee.png"),
        images.join("part0/a \"quoted\",\nname.png"),
    )
    .unwrap();
    for (format, ext) in [("jsonl", "jsonl"), ("csv", "csv"), ("tsv", "tsv")] {
        let reference = tmp.path().join(format!("reference.{ext}"));
        let run = |file: &Path| {
            classify_to(
                &hub,
                &["--quiet", "--resume", "--format", format],
                file,
                &images,
            )
            .output()
            .unwrap()
        };
        let out = run(&reference);
        assert!(out.status.success(), "{}", stderr(&out));
        let whole = std::fs::read(&reference).unwrap();
        let file = tmp.path().join(format!("torn.{ext}"));
        // Every cut point: the header, inside a record, inside the quoted path, on a line end.
        let quoted = whole.windows(6).position(|w| w == b"quoted").unwrap();
        let cuts = (0..whole.len()).step_by(whole.len() / 16).chain([
            quoted,
            quoted + 9,
            quoted + 10,
            whole.len() - 1,
        ]);
        for cut in cuts {
            std::fs::write(&file, &whole[..cut]).unwrap();
            let out = run(&file);
            assert!(
                out.status.success(),
                "{format} cut at {cut}: {}",
                stderr(&out)
            );
            assert_eq!(
                String::from_utf8_lossy(&std::fs::read(&file).unwrap()),
                String::from_utf8_lossy(&whole),
                "{format} cut at {cut} byte(s) did not resume to the uninterrupted file"
            );
        }
        // Another --top-k or another model: refused, the file untouched.
        let refused = |args: &[&str], why: &str| {
            let args = [args, &["--resume", "--format", format]].concat();
            let out = classify_to(&hub, &args, &reference, &images)
                .output()
                .unwrap();
            assert_eq!(out.status.code(), Some(2), "{format} {args:?}");
            let err = stderr(&out);
            assert!(
                err.contains("cannot resume from") && err.contains(why),
                "{err}"
            );
            assert!(
                std::fs::read(&reference).unwrap() == whole,
                "{format}: file changed"
            );
        };
        refused(
            &["-k", "3"],
            if format == "jsonl" {
                "--top-k"
            } else {
                "header"
            },
        );
        if format == "jsonl" {
            let weights = common::lite0_pth().to_string_lossy().into_owned();
            let other = ["--model", "efficientnet_lite0", "--weights", &weights];
            refused(&other, "is from model `tf_efficientnet_lite0`");
        }
    }
    // A damaged record in the middle is not appended to.
    let reference = tmp.path().join("reference.jsonl");
    let mut text = lines(&reference);
    text[3] = "{\"oops\":".into();
    std::fs::write(&reference, text.join("\n") + "\n").unwrap();
    let out = classify_to(&hub, &["--resume"], &reference, &images)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("record 4 is not a classify JSON record"),
        "{}",
        stderr(&out)
    );
}

/// The rows a Python `csv.reader` sees (the module the spreadsheet world scripts with).
fn python_rows(file: &Path, dialect: &str) -> Vec<Vec<String>> {
    let script = "import csv, json, sys\n\
                  with open(sys.argv[1], newline='', encoding='utf-8') as f:\n\
                  \x20   print(json.dumps(list(csv.reader(f, dialect=sys.argv[2]))))";
    let out = Command::new("python3")
        .args(["-c", script])
        .arg(file)
        .arg(dialect)
        .output()
        .expect("python3 (the README's test requirements include it)");
    assert!(out.status.success(), "{}", stderr(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn csv_and_tsv_round_trip_hostile_paths_through_two_parsers() {
    let hub = HubCache::new();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("photos");
    std::fs::create_dir(&dir).unwrap();
    let names: Vec<&[u8]> = vec![
        b"comma,name.png",
        b"quote\"d.png",
        b"new\nline.png",
        b"tab\there.png",
        b" leading space.png",
        b"=SUM(A1).png",
        "caf\u{e9} \u{732b}.png".as_bytes(),
        b"latin1 \xe9.png",
        b"other \xff.png", // differs from the next only in a non-UTF-8 byte
        b"other \xfe.png",
    ];
    for name in &names {
        std::fs::copy(
            common::photo("coffee.png"),
            dir.join(OsStr::from_bytes(name)),
        )
        .unwrap();
    }
    std::fs::write(
        dir.join("broken, \"really\".jpg"),
        b"\xff\xd8\xff\xe0 truncated",
    )
    .unwrap();
    let jsonl = tmp.path().join("all.jsonl");
    let out = classify_to(&hub, &["-q", "-k", "2"], &jsonl, &dir)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let records: Vec<serde_json::Value> = lines(&jsonl)
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(records.len(), names.len() + 1);

    for (ext, dialect, delimiter) in [("csv", "excel", b','), ("tsv", "excel-tab", b'\t')] {
        let file = tmp.path().join(format!("all.{ext}"));
        let out = classify_to(&hub, &["-q", "-k", "2"], &file, &dir)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
        let by_python = python_rows(&file, dialect);
        let by_rust: Vec<Vec<String>> = csv::ReaderBuilder::new()
            .delimiter(delimiter)
            .has_headers(false)
            .from_path(&file)
            .unwrap()
            .records()
            .map(|r| r.unwrap().iter().map(str::to_string).collect())
            .collect();
        assert_eq!(by_python, by_rust, "{ext}: the two parsers disagree");
        assert_eq!(
            by_rust[0],
            ["path", "label_1", "score_1", "index_1", "label_2", "score_2", "index_2", "error"]
        );
        assert_eq!(by_rust.len(), records.len() + 1);
        for (row, record) in by_rust[1..].iter().zip(&records) {
            assert_eq!(row[0], record["path"].as_str().unwrap(), "{ext}");
            match record.get("predictions") {
                Some(p) => {
                    for r in 0..2 {
                        assert_eq!(row[1 + 3 * r], p[r]["label"].as_str().unwrap());
                        let score: f64 = row[2 + 3 * r].parse().unwrap();
                        assert_eq!(score as f32, p[r]["score"].as_f64().unwrap() as f32);
                        assert_eq!(row[3 + 3 * r], p[r]["index"].to_string());
                    }
                    assert_eq!(row[7], "");
                }
                None => {
                    assert!(row[1..7].iter().all(String::is_empty));
                    assert_eq!(row[7], record["error"].as_str().unwrap());
                }
            }
        }
        let paths: Vec<&str> = by_rust[1..].iter().map(|r| r[0].as_str()).collect();
        for name in &names {
            let want = dir
                .join(OsStr::from_bytes(name))
                .to_string_lossy()
                .into_owned();
            assert_eq!(
                paths.iter().filter(|p| **p == want).count(),
                if name.starts_with(b"other") { 2 } else { 1 },
                "{want:?} in {ext}"
            );
        }
        // Two inputs share the text `other \u{FFFD}.png`: a resume keeps one record each.
        let full = std::fs::read(&file).unwrap();
        let cut = full.len() - 10;
        std::fs::write(&file, &full[..cut]).unwrap();
        let out = classify_to(&hub, &["-q", "-k", "2", "--resume"], &file, &dir)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
        assert_eq!(
            String::from_utf8_lossy(&std::fs::read(&file).unwrap()),
            String::from_utf8_lossy(&full),
            "{ext} resume"
        );
    }
}

/// `deploy/classify-indexed-job.yaml` runs as written: its container command and args, with
/// `$(JOB_COMPLETION_INDEX)` expanded as Kubernetes does and its volumes pointed at
/// directories here, make one part per index; a restarted pod (the same index run again)
/// resumes instead of redoing; `cat` of the parts has every input exactly once.
#[test]
fn kubernetes_indexed_job_args_shard_and_resume() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let manifest = std::fs::read_to_string(root.join("deploy/classify-indexed-job.yaml")).unwrap();
    let field = |key: &str| -> String {
        manifest
            .lines()
            .find_map(|l| l.trim().strip_prefix(key))
            .unwrap_or_else(|| panic!("no `{key}` in the manifest"))
            .trim()
            .to_string()
    };
    let command: Vec<String> = serde_json::from_str(&field("command:")).unwrap();
    let args: Vec<String> = serde_json::from_str(&field("args:")).unwrap();
    let completions: usize = field("completions:").parse().unwrap();
    assert_eq!(field("completionMode:"), "Indexed");
    assert_eq!(command, ["classify"]);
    let mount = |name: &str| {
        let rest = field(&format!("- {{name: {name}, mountPath:"));
        rest.split([',', '}']).next().unwrap().trim().to_string()
    };
    let (photos, out_dir) = (mount("photos"), mount("out"));

    let hub = HubCache::new();
    let tmp = tempfile::tempdir().unwrap();
    let images = tmp.path().join("photos");
    let n = 30;
    write_images(&images, n);
    let parts = tmp.path().join("out");
    let run_pod = |index: usize| {
        let args: Vec<String> = args
            .iter()
            .map(|a| {
                a.replace("$(JOB_COMPLETION_INDEX)", &index.to_string())
                    .replace(&out_dir, &parts.to_string_lossy())
                    .replace(&photos, &images.to_string_lossy())
            })
            .collect();
        // The test cache's model, appended last as an orchestrator's override would be.
        hub.command().args(&args).args(MODEL).output().unwrap()
    };
    for index in 0..completions {
        let out = run_pod(index);
        assert!(out.status.success(), "index {index}: {}", stderr(&out));
    }
    let part0 = parts.join("part-0.jsonl");
    let first = std::fs::read(&part0).unwrap();
    let out = run_pod(0);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        std::fs::read(&part0).unwrap(),
        first,
        "a restarted pod resumes, adds nothing"
    );

    let mut merged: Vec<String> = Vec::new();
    for index in 0..completions {
        merged.extend(lines(&parts.join(format!("part-{index}.jsonl"))));
    }
    let mut counts: HashMap<String, usize> = HashMap::new();
    for line in &merged {
        *counts.entry(path_of(line)).or_default() += 1;
    }
    assert_eq!(merged.len(), n);
    assert_eq!(counts.len(), n);
    assert!(counts.values().all(|&c| c == 1));
}
