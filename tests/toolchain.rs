//! The oldest Rust the project promises (`rust-version` in Cargo.toml, "Rust toolchain
//! (1.NN+)" in the README) builds every dependency in Cargo.lock. Cargo refuses to build a
//! package that declares a newer `rust-version` than the compiler's, so a lock update that
//! pulled in one would break `cargo install --locked` on toolchains the README still
//! promises; this test names the packages instead.

use std::process::Command;

/// `"1.89"` or `"1.89.0"` as `(1, 89, 0)`.
fn version(text: &str) -> (u64, u64, u64) {
    let mut parts = text.split('.').map(|p| {
        p.parse::<u64>()
            .unwrap_or_else(|_| panic!("not a Rust version: {text:?}"))
    });
    let mut next = || parts.next().unwrap_or(0);
    (next(), next(), next())
}

#[test]
fn no_locked_dependency_needs_a_newer_rust_than_promised() {
    let ours = env!("CARGO_PKG_RUST_VERSION");
    assert!(!ours.is_empty(), "Cargo.toml has no rust-version");
    let out = Command::new(env!("CARGO"))
        // Every platform's packages and every feature's (CUDA, Metal) too.
        .args([
            "metadata",
            "--locked",
            "--all-features",
            "--format-version",
            "1",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo metadata starts");
    assert!(
        out.status.success(),
        "cargo metadata failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).expect("metadata JSON");
    let packages = meta["packages"].as_array().expect("a package list");
    assert!(packages.len() > 100, "only {} packages", packages.len());
    let newer: Vec<String> = packages
        .iter()
        .filter_map(|p| {
            let needs = p["rust_version"].as_str()?;
            let name = format!("{} {}", p["name"].as_str()?, p["version"].as_str()?);
            (version(needs) > version(ours)).then(|| format!("{name} needs {needs}"))
        })
        .collect();
    assert!(
        newer.is_empty(),
        "Cargo.lock has packages that need a newer Rust than rust-version = {ours}: {newer:?}"
    );
}

#[test]
fn readme_promises_the_rust_version_cargo_toml_declares() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
        .expect("README.md");
    let promise = format!("Rust toolchain ({}+)", env!("CARGO_PKG_RUST_VERSION"));
    assert!(
        readme.contains(&promise),
        "README.md does not say {promise:?}"
    );
}

#[test]
fn versions_compare_by_number() {
    assert!(version("1.89") > version("1.88.0"));
    assert!(version("1.100") > version("1.89.9"));
    assert_eq!(version("1.89"), version("1.89.0"));
}
