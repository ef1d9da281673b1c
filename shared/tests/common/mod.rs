//! What the conformance tests share: finding the fmf trees under a directory.

use std::path::{Path, PathBuf};

/// Every directory under `directory` (itself included) that is an fmf tree root, in sorted order;
/// symlinked directories are not followed.
pub fn find_tree_roots(directory: &Path, roots: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(directory) else {
        return;
    };
    let mut children: Vec<PathBuf> = entries.flatten().map(|entry| entry.path()).collect();
    children.sort();
    if directory.join(".fmf").join("version").is_file() {
        roots.push(directory.to_owned());
    }
    for child in children {
        if child.is_dir() && !child.is_symlink() {
            find_tree_roots(&child, roots);
        }
    }
}
