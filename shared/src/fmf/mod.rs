//! An fmf metadata tree reader (the format tmt uses), matching the Python `fmf` package's results.
//!
//! `Tree::load(root)` reads the tree under a directory holding `.fmf/version`: `main.fmf` files, `name.fmf`
//! children, in-file `/child` keys, directory inheritance with the `+ +< - ~ -~` merge suffixes and the
//! `/:` directives. `Tree::adjust(&Context)` then applies `adjust` rules whose `when` conditions hold.
//! Nothing here does IO beyond reading the tree's files.
//!
//! A tree may be hostile (a pull request's): a symlink leading out of it is refused by name, never read;
//! YAML aliases may not expand far beyond the file's size; errors quote at most a short, escaped snippet
//! of a file.
//!
//! ```no_run
//! use polarizer_shared::fmf::{Context, Tree};
//! let mut tree = Tree::load("tests")?;
//! tree.adjust(&Context::new().with_dimension("distro", ["fedora-33"]))?;
//! for test in tree.tests() {
//!     println!("{} {:?}", test.name(), test.get("test"));
//! }
//! # Ok::<(), polarizer_shared::fmf::FmfError>(())
//! ```
//!
//! May import its siblings here, the YAML parser and `crate::parallel`; nothing else of `shared` (the
//! metadata model reads trees, never the other way round).

mod adjust;
mod condition;
mod error;
mod merge;
mod pattern;
mod quote;
mod tree;
mod value;
mod yaml;

pub use adjust::AdjustOptions;
pub use condition::{
    Condition, ConditionError, Context, ContextValue, Decision, Expression, Operator,
};
pub use error::FmfError;
pub use tree::{Node, Tree};
pub use value::{FmfMap, FmfText, FmfValue};
