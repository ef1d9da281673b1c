//! `polarizer tests lint DIR`: every problem of an fmf tree, read here, with no coordinator (no
//! connection, no data dir). For CI jobs: exit 0 when clean (warnings are shown, and fail only with
//! `--strict`), 1 when the tree has errors, 2 when there is no tree to read.

use std::path::Path;

use polarizer_shared::fmf::Context;
use polarizer_shared::lint::{lint_tree, LintOptions, Report};

/// The tree has errors (or, with `--strict`, warnings).
pub const EXIT_LINT_PROBLEMS: u8 = 1;
/// No tree at that path, or it cannot be read at all; also clap's status for a usage error.
pub const EXIT_LINT_UNREADABLE: u8 = 2;

/// A lint that did not pass; its report is printed already. `code` is the process's exit status.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct LintFailed {
    pub code: u8,
    pub message: String,
}

impl LintFailed {
    /// The failed lint in `error`'s chain, if it is one.
    pub fn of(error: &anyhow::Error) -> Option<&LintFailed> {
        error
            .chain()
            .find_map(|cause| cause.downcast_ref::<LintFailed>())
    }
}

pub fn lint(path: &Path, context: &[String], json: bool, strict: bool) -> anyhow::Result<()> {
    let unreadable = |message: String| LintFailed {
        code: EXIT_LINT_UNREADABLE,
        message,
    };
    let dimensions = crate::core::source::parse_context(context)
        .map_err(|err| unreadable(format!("{err:#}")))?;
    let mut fmf_context = Context::new();
    for (key, value) in &dimensions {
        fmf_context = fmf_context.with_dimension(key, [value.as_str()]);
    }
    if !path.is_dir() {
        return Err(unreadable(format!("{}: no such directory", path.display())).into());
    }
    let options = LintOptions {
        suggest_extra_keys: true,
    };
    let report =
        lint_tree(path, &fmf_context, options).map_err(|err| unreadable(err.to_string()))?;
    print_report(&report, json)?;
    let failed = report.errors > 0 || (strict && report.warnings > 0);
    if failed {
        return Err(LintFailed {
            code: EXIT_LINT_PROBLEMS,
            message: if report.errors > 0 {
                format!("{}: the tree has {} errors", path.display(), report.errors)
            } else {
                format!(
                    "{}: the tree has {} warnings (--strict)",
                    path.display(),
                    report.warnings
                )
            },
        }
        .into());
    }
    Ok(())
}

fn print_report(report: &Report, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(report)?);
    } else {
        println!("{report}");
    }
    Ok(())
}
