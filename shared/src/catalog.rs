//! The test catalog as it crosses the wire: where tests came from, the filters of `polarizer tests list`,
//! and the rows the coordinator answers with. Field order is the wire format: append, never reorder.

use serde::{Deserialize, Serialize};

/// Where an import came from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Source {
    /// A directory path, or a git URL.
    pub location: String,
    pub git_ref: String,
    pub git_commit: String,
    /// The fmf tree root actually read (a checkout directory for git sources).
    pub tree_path: String,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImportSummary {
    pub tests: u64,
    pub features: u64,
    pub added: u64,
    pub removed: u64,
    /// Tests already stored whose metadata changed (the others were left as they were).
    pub changed: u64,
    /// What the tree should change but did not stop the import (a feature named but not declared),
    /// each `file:line: warning: …`.
    pub warnings: Vec<String>,
}

/// Filters of `polarizer tests list`; every one given must hold.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TestQuery {
    /// Tests covering the feature directly, or through a feature that depends on it.
    pub feature: Option<String>,
    pub platform: Option<String>,
    pub arch: Option<String>,
    pub distro: Option<String>,
    pub test_type: Option<String>,
    pub tag: Option<String>,
    pub tier: Option<String>,
    pub component: Option<String>,
    /// `relation:target`, or just `target` for any relation.
    pub linked: Option<String>,
    /// Tests that need, create or modify it.
    pub resource: Option<String>,
    /// Tests that must run after this one (`after` names it).
    pub depends_on: Option<String>,
    /// Only tests whose adjusted metadata differs between distros.
    pub differs_by_distro: bool,
    pub include_removed: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TestRow {
    pub id: String,
    pub name: String,
    pub summary: String,
    pub test_type: String,
    pub feature: String,
    pub tier: String,
    pub enabled: bool,
    pub platform_kind: String,
    pub duration_seconds: u64,
    pub differs_by: String,
    pub removed: bool,
    pub source: String,
    /// The Polarion work item id an import's log named for this test; empty until then.
    #[serde(default)]
    pub polarion_id: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeatureRow {
    pub name: String,
    pub description: String,
    pub paths: Vec<String>,
    pub depends: Vec<String>,
    pub dependents: Vec<String>,
    /// Tests naming this feature.
    pub direct_tests: u64,
    /// Tests selected when this feature changes: its own and those of every feature depending on it.
    pub selected_tests: u64,
    /// Declared under `/features`; false for a feature tests name that is not (it has no paths, so
    /// no change selects it).
    pub declared: bool,
}
