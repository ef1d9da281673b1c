//! Images built from a suite's Containerfile, for podman pools. The build context is the Containerfile's
//! directory at the run's commit, taken from the coordinator's git cache with `git archive` (so nothing
//! outside the tree, and no symlink out of it, reaches the build), and the image is named by its
//! content: the git tree of that directory and the file's name. The same content is built once.

use std::path::Path;
use std::time::Duration;

use polarizer_transport::git;
use tokio::process::Command;

const GIT_TIMEOUT: Duration = Duration::from_secs(300);

/// The tag of the image for `file` (a path in the repository) at `commit`, building it if no image of
/// that content exists yet; whether it was built now.
pub async fn build(
    repository: &Path,
    repo: &str,
    commit: &str,
    file: &str,
    work_root: &Path,
    timeout: Duration,
) -> Result<(String, bool), String> {
    let (directory, name) = match file.rsplit_once('/') {
        Some((directory, name)) => (directory.to_string(), name.to_string()),
        None => (String::new(), file.to_string()),
    };
    let repository = repository.to_path_buf();
    let (repo, commit, file) = (repo.to_string(), commit.to_string(), file.to_string());
    let tree = {
        let directory = directory.clone();
        tokio::task::spawn_blocking(move || {
            context_tree(&repository, &repo, &commit, &file, &directory)
                .map(|tree| (tree, repository, commit))
        })
        .await
        .map_err(|err| err.to_string())??
    };
    let (tree, repository, commit) = tree;
    let digest = polarizer_transport::state_files::secret_digest(&format!("{tree}\0{name}"));
    let tag = format!("localhost/polarizer-image:{}", &digest[..24]);
    let exists = Command::new("podman")
        .args(["image", "exists", "--", &tag])
        .kill_on_drop(true)
        .status()
        .await
        .map_err(|err| format!("cannot run podman: {err}"))?;
    if exists.success() {
        return Ok((tag, false));
    }

    let context = work_root.join(format!(".image-{}", &digest[..24]));
    let _ = std::fs::remove_dir_all(&context);
    std::fs::create_dir_all(&context)
        .map_err(|err| format!("cannot create {}: {err}", context.display()))?;
    let built = async {
        let archive = context.with_extension("tar");
        {
            let archive = archive.clone();
            let treeish = format!("{commit}:{directory}");
            tokio::task::spawn_blocking(move || {
                let _guard = git::RepoLocks::global().lock(&repository);
                let mut output = std::ffi::OsString::from("--output=");
                output.push(&archive);
                git::run_blocking(
                    &repository,
                    [
                        std::ffi::OsString::from("archive"),
                        "--format=tar".into(),
                        output,
                        treeish.into(),
                    ],
                    GIT_TIMEOUT,
                )
                .map_err(|err| format!("cannot take the Containerfile's directory from git: {err}"))
            })
            .await
            .map_err(|err| err.to_string())??;
        }
        let untar = Command::new("tar")
            .arg("--extract")
            .arg("--no-same-owner")
            .arg("--file")
            .arg(&archive)
            .arg("--directory")
            .arg(&context)
            .kill_on_drop(true)
            .output()
            .await
            .map_err(|err| format!("cannot run tar: {err}"))?;
        let _ = std::fs::remove_file(&archive);
        if !untar.status.success() {
            return Err(format!(
                "cannot unpack the build context: {}",
                String::from_utf8_lossy(&untar.stderr).trim()
            ));
        }
        let build = Command::new("podman")
            .args(["build", "--quiet", "--tag", &tag, "--file"])
            .arg(context.join(&name))
            .arg("--")
            .arg(&context)
            .kill_on_drop(true)
            .output();
        let output = tokio::time::timeout(timeout, build)
            .await
            .map_err(|_| format!("podman build of {name} did not finish within {timeout:?}"))?
            .map_err(|err| format!("cannot run podman build: {err}"))?;
        if output.status.success() {
            Ok((tag.clone(), true))
        } else {
            let stderr = String::from_utf8_lossy(&output.stderr);
            let tail: Vec<&str> = stderr.lines().rev().take(3).collect();
            Err(format!(
                "podman build of {name} failed: {}",
                tail.into_iter().rev().collect::<Vec<_>>().join(" / ")
            ))
        }
    }
    .await;
    let _ = std::fs::remove_dir_all(&context);
    built
}

/// The git tree id of the Containerfile's directory at `commit`, fetching the commit into the cache
/// if it is not there (as shipping does); an error when the file is not in the commit.
fn context_tree(
    repository: &Path,
    repo: &str,
    commit: &str,
    file: &str,
    directory: &str,
) -> Result<String, String> {
    // Triggers and shipping use the same cache: one git command on it at a time.
    let _guard = git::RepoLocks::global().lock(repository);
    crate::daemon::shipping::ensure_commit(repository, repo, commit)?;
    let blob = format!("{commit}:{file}");
    git::run_blocking(repository, ["cat-file", "-e", blob.as_str()], GIT_TIMEOUT)
        .map_err(|_| format!("the Containerfile {file} is not in commit {commit}"))?;
    let tree = format!("{commit}:{directory}");
    git::run_blocking(
        repository,
        ["rev-parse", "--verify", tree.as_str()],
        GIT_TIMEOUT,
    )
    .map(|out| out.trim().to_string())
    .map_err(|err| err.to_string())
}
