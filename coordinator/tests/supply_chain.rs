//! What the build may depend on, read from the workspace's Cargo.lock: crates from crates.io only (no
//! git dependency, no other registry), and none of the crates that need cmake, a C toolchain's
//! OpenSSL or a download at build time (TLS is rustls with ring everywhere). A dependency update that
//! pulls one in fails here, naming it and who needs it.

use std::collections::BTreeMap;
use std::path::Path;

const CRATES_IO: &str = "registry+https://github.com/rust-lang/crates.io-index";

/// Crates that need cmake or system OpenSSL to build, or fetch at build time.
const REFUSED: &[&str] = &[
    "aws-lc-rs",
    "aws-lc-sys",
    "aws-lc-fips-sys",
    "openssl",
    "openssl-sys",
    "native-tls",
    "cmake",
    "bindgen",
];

#[derive(serde::Deserialize)]
struct Lock {
    package: Vec<Package>,
}

#[derive(serde::Deserialize)]
struct Package {
    name: String,
    version: String,
    source: Option<String>,
    #[serde(default)]
    dependencies: Vec<String>,
}

#[test]
fn every_dependency_comes_from_crates_io_and_none_needs_cmake_or_openssl() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.lock");
    let text = std::fs::read_to_string(&path).expect("Cargo.lock");
    let lock: Lock = toml::from_str(&text).expect("Cargo.lock parses");
    // Who depends on what, to name the way a refused crate came in.
    let mut needed_by: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for package in &lock.package {
        for dependency in &package.dependencies {
            let name = dependency.split(' ').next().unwrap_or(dependency);
            needed_by.entry(name).or_default().push(&package.name);
        }
    }
    let mut problems = Vec::new();
    for package in &lock.package {
        match package.source.as_deref() {
            None | Some(CRATES_IO) => {}
            Some(other) => problems.push(format!(
                "{} {} comes from {other}, not crates.io",
                package.name, package.version
            )),
        }
        if REFUSED.contains(&package.name.as_str()) {
            problems.push(format!(
                "{} {} is refused (cmake, OpenSSL or a build-time download), needed by {:?}",
                package.name,
                package.version,
                needed_by.get(package.name.as_str())
            ));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    assert!(
        lock.package.iter().any(|package| package.name == "ring"),
        "TLS uses ring"
    );
}
