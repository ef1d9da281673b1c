//! Every fmf tree in the shared corpus read as Polarizer metadata: a catalog or a clear error naming the
//! node, never a panic. (The conformance of the tree reader itself is in fmf_conformance.rs.)

use std::path::{Path, PathBuf};

use polarizer_shared::fmf::{Context, Tree};
use polarizer_shared::metadata::Catalog;

fn tree_roots(directory: &Path, roots: &mut Vec<PathBuf>) {
    if directory.join(".fmf/version").is_file() {
        roots.push(directory.to_path_buf());
    }
    let Ok(entries) = std::fs::read_dir(directory) else {
        return;
    };
    let mut children: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|path| path.is_dir())
        .collect();
    children.sort();
    for child in children {
        tree_roots(&child, roots);
    }
}

#[test]
fn every_corpus_tree_reads_as_a_catalog_or_a_named_error() {
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/corpus/fmf");
    let mut roots = Vec::new();
    tree_roots(&corpus, &mut roots);
    assert!(
        !roots.is_empty(),
        "no fmf trees under {} (shared/ must sit beside the project)",
        corpus.display()
    );
    let (mut catalogs, mut tests) = (0, 0);
    for root in roots {
        let Ok(mut tree) = Tree::load(&root) else {
            continue;
        };
        if tree
            .adjust(&Context::new().with_dimension("distro", ["fedora-41"]))
            .is_err()
        {
            continue;
        }
        match Catalog::from_tree(&tree) {
            Ok(catalog) => {
                catalogs += 1;
                tests += catalog.tests.len();
            }
            Err(err) => {
                let message = err.to_string();
                assert!(
                    message.contains('/') || message.contains("cycle"),
                    "{}: error names no node: {message}",
                    root.display()
                );
            }
        }
    }
    assert!(
        catalogs > 0 && tests > 0,
        "no corpus tree produced a catalog"
    );
}
