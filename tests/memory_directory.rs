//! Memory of a directory run is flat in the number of inputs: classifying 10x more (tiny)
//! images raises peak RSS by little more than the list of their paths. Each run's own peak
//! comes from wait4(2). The figures at 10^3..10^5 images are in the README
//! (bench/dir-run.sh); this checks a generous bound at 300 vs 3000.

mod common;

use std::path::Path;
use std::process::Stdio;

/// Extra peak RSS allowed for 2700 more inputs: their paths and records are a few hundred
/// KiB; decoded images or results held for every input would be far more (3000 x 3 x 32 x 32
/// floats alone is 37 MiB).
const BOUND_MIB: i64 = 16;

// The child is reaped by wait4 (which also gives its own peak RSS), not by Child::wait.
#[allow(clippy::zombie_processes)]
fn peak_rss_mib(hub: &common::HubCache, dir: &Path, out: &Path) -> i64 {
    let child = hub
        .command()
        .args([
            "--model",
            "tf_efficientnet_lite0",
            "--input-size",
            "32",
            "--quiet",
        ])
        .args(["--batch-size", "16", "--output"])
        .arg(out)
        .arg(dir)
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut status = 0;
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: waits for our own child and writes into the locals we pass.
    let pid = unsafe { libc::wait4(child.id() as i32, &mut status, 0, &mut usage) };
    assert_eq!(pid, child.id() as i32);
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "status {status}"
    );
    usage.ru_maxrss / 1024
}

#[test]
fn peak_rss_is_flat_in_the_number_of_inputs() {
    let hub = common::HubCache::new();
    let tmp = tempfile::tempdir().unwrap();
    let png = std::fs::read(common::fixtures().join("preprocess/random_37x53.png")).unwrap();
    let mut peaks = Vec::new();
    for n in [300, 3000] {
        let dir = tmp.path().join(format!("n{n}"));
        for i in 0..n {
            let sub = dir.join(format!("{:02}", i % 20));
            std::fs::create_dir_all(&sub).unwrap();
            std::fs::write(sub.join(format!("{i:05}.png")), &png).unwrap();
        }
        let out = tmp.path().join(format!("n{n}.jsonl"));
        peaks.push(peak_rss_mib(&hub, &dir, &out));
        assert_eq!(std::fs::read_to_string(&out).unwrap().lines().count(), n);
    }
    eprintln!(
        "peak RSS: 300 images {} MiB, 3000 images {} MiB",
        peaks[0], peaks[1]
    );
    assert!(
        peaks[1] - peaks[0] <= BOUND_MIB,
        "peak RSS grew from {} to {} MiB",
        peaks[0],
        peaks[1]
    );
}
