//! Memory stays bounded on hostile input: classifying the whole hostile corpus (which claims
//! 50000x50000-pixel images and holds a 1x20000 strip) plus real photos peaks below
//! `BOUND_MB` of resident memory. Alone in its own test binary, so the peak RSS of waited-for
//! children (getrusage RUSAGE_CHILDREN) is this run's alone.

mod common;

const BOUND_MB: i64 = 300;

#[test]
fn peak_rss_stays_bounded_on_the_hostile_corpus() {
    let hub = common::HubCache::new();
    let dir = tempfile::tempdir().unwrap();
    common::hostile::write_corpus(dir.path(), &common::fixtures().join("photos"));
    let out = hub
        .command()
        .args([
            "--model",
            "tf_efficientnet_lite0",
            "--json",
            "--batch-size",
            "8",
        ])
        .arg(dir.path())
        .arg(common::fixtures().join("photos"))
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage only writes into the struct we pass.
    assert_eq!(
        unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage) },
        0
    );
    let peak_mb = usage.ru_maxrss / 1024; // Linux reports KiB
    eprintln!("peak RSS {peak_mb} MiB (bound {BOUND_MB} MiB)");
    assert!(peak_mb > 0 && peak_mb < BOUND_MB, "peak RSS {peak_mb} MiB");
}
