//! The `examples/` test repository, built into the binary so `polarizer demo` works wherever it is installed.
//! Generated list: keep it in step with `examples/` (a unit test checks that it is).

pub const FILES: &[(&str, &str)] = &[
    (
        ".fmf/version",
        include_str!("../../../examples/.fmf/version"),
    ),
    ("README.md", include_str!("../../../examples/README.md")),
    (
        "features/main.fmf",
        include_str!("../../../examples/features/main.fmf"),
    ),
    ("main.fmf", include_str!("../../../examples/main.fmf")),
    (
        "src/attach/pools.py",
        include_str!("../../../examples/src/attach/pools.py"),
    ),
    (
        "src/cli/main.py",
        include_str!("../../../examples/src/cli/main.py"),
    ),
    (
        "src/identity/uuid.py",
        include_str!("../../../examples/src/identity/uuid.py"),
    ),
    (
        "src/register.py",
        include_str!("../../../examples/src/register.py"),
    ),
    (
        "src/repos/redhat_repo.py",
        include_str!("../../../examples/src/repos/redhat_repo.py"),
    ),
    (
        "tests/attach/main.fmf",
        include_str!("../../../examples/tests/attach/main.fmf"),
    ),
    (
        "tests/cli/main.fmf",
        include_str!("../../../examples/tests/cli/main.fmf"),
    ),
    (
        "tests/identity/main.fmf",
        include_str!("../../../examples/tests/identity/main.fmf"),
    ),
    (
        "tests/register/main.fmf",
        include_str!("../../../examples/tests/register/main.fmf"),
    ),
    (
        "tests/repos/main.fmf",
        include_str!("../../../examples/tests/repos/main.fmf"),
    ),
];

/// Writes the example repository into `directory` and commits it with the system `git`, so agents can
/// fetch it at a commit like any test repository.
pub fn materialize(directory: &std::path::Path) -> anyhow::Result<()> {
    use anyhow::Context;
    for (path, contents) in FILES {
        let target = directory.join(path);
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("cannot create {}", parent.display()))?;
        }
        std::fs::write(&target, contents)
            .with_context(|| format!("cannot write {}", target.display()))?;
    }
    for args in [
        &["init", "--quiet", "--initial-branch", "main"][..],
        &["add", "."],
        &[
            "-c",
            "user.name=Polarizer demo",
            "-c",
            "user.email=demo@polarizer.invalid",
            "commit",
            "--quiet",
            "-m",
            "Example tests",
        ],
    ] {
        let status = std::process::Command::new("git")
            .arg("-C")
            .arg(directory)
            .args(args)
            .status()
            .context("cannot run git: the demo needs git installed")?;
        if !status.success() {
            anyhow::bail!("git {} failed in {}", args.join(" "), directory.display());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_built_in_copy_matches_the_examples_directory() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
        let mut on_disk = Vec::new();
        let mut pending = vec![root.clone()];
        while let Some(directory) = pending.pop() {
            for entry in std::fs::read_dir(&directory).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    pending.push(path);
                } else {
                    on_disk.push(path.strip_prefix(&root).unwrap().display().to_string());
                }
            }
        }
        on_disk.sort();
        let built_in: Vec<&str> = super::FILES.iter().map(|(path, _)| *path).collect();
        assert_eq!(
            on_disk, built_in,
            "regenerate coordinator/src/cli/examples.rs"
        );
    }
}
