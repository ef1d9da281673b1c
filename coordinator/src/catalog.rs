//! The test catalog in SQLite: where tests came from, their metadata, and the feature graph.
//! Written by the store's one writer (`write_import`, one savepoint per import); read with indexed queries.

use std::collections::BTreeMap;

use polarizer_shared::metadata::{Catalog, Feature, TestMetadata};
use rusqlite::{params, OptionalExtension, Savepoint};

pub use polarizer_shared::catalog::{FeatureRow, ImportSummary, Source, TestQuery, TestRow};

use crate::store::{sqlite_error, Reader, StoreError};

pub const MIGRATION: &str = "
CREATE TABLE sources (
    id INTEGER PRIMARY KEY,
    location TEXT NOT NULL UNIQUE,
    git_ref TEXT NOT NULL DEFAULT '',
    git_commit TEXT NOT NULL DEFAULT '',
    tree_path TEXT NOT NULL,
    imported_at_ms INTEGER NOT NULL
) STRICT;
CREATE TABLE tests (
    id TEXT PRIMARY KEY NOT NULL,
    name TEXT NOT NULL,
    source_id INTEGER NOT NULL REFERENCES sources(id),
    removed INTEGER NOT NULL DEFAULT 0,
    summary TEXT NOT NULL,
    test_type TEXT NOT NULL,
    feature TEXT NOT NULL,
    tier TEXT NOT NULL,
    enabled INTEGER NOT NULL,
    platform_kind TEXT NOT NULL,
    duration_seconds INTEGER NOT NULL,
    differs_by TEXT NOT NULL DEFAULT '',
    metadata_json TEXT NOT NULL,
    updated_at_ms INTEGER NOT NULL
) STRICT;
CREATE INDEX tests_by_feature ON tests(feature) WHERE removed = 0;
CREATE INDEX tests_by_source ON tests(source_id);
CREATE TABLE test_facets (
    test_id TEXT NOT NULL REFERENCES tests(id) ON DELETE CASCADE,
    facet TEXT NOT NULL,
    value TEXT NOT NULL
) STRICT;
CREATE INDEX test_facets_lookup ON test_facets(facet, value);
CREATE INDEX test_facets_by_test ON test_facets(test_id);
CREATE TABLE features (
    name TEXT PRIMARY KEY NOT NULL,
    source_id INTEGER NOT NULL REFERENCES sources(id),
    removed INTEGER NOT NULL DEFAULT 0,
    description TEXT NOT NULL,
    paths_json TEXT NOT NULL
) STRICT;
CREATE TABLE feature_depends (
    feature TEXT NOT NULL,
    depends TEXT NOT NULL,
    PRIMARY KEY (feature, depends)
) STRICT;
CREATE INDEX feature_dependents ON feature_depends(depends);
";

pub struct Import {
    pub source: Source,
    pub catalog: Catalog,
    /// Test id → the `when` conditions on distro of its adjust rules (its metadata differs by distro).
    pub differs_by: BTreeMap<String, Vec<String>>,
    pub now_ms: i64,
}

/// Facets: one row per (test, kind, value), for every multi-valued filter.
fn facets(test: &TestMetadata) -> Vec<(&'static str, String)> {
    let mut rows = Vec::new();
    rows.extend(test.tags.iter().map(|tag| ("tag", tag.clone())));
    rows.extend(
        test.components
            .iter()
            .map(|component| ("component", component.clone())),
    );
    rows.extend(
        test.links
            .iter()
            .map(|link| ("link", format!("{}:{}", link.relation, link.target))),
    );
    rows.extend(
        test.resources
            .needs
            .iter()
            .map(|resource| ("needs", resource.clone())),
    );
    rows.extend(
        test.resources
            .creates
            .iter()
            .map(|resource| ("creates", resource.clone())),
    );
    rows.extend(
        test.resources
            .modifies
            .iter()
            .map(|resource| ("modifies", resource.clone())),
    );
    rows.extend(test.after.iter().map(|after| ("after", after.clone())));
    rows.extend(test.platform.arch.iter().map(|arch| ("arch", arch.clone())));
    rows.extend(
        test.platform
            .distro
            .iter()
            .map(|distro| ("distro", distro.clone())),
    );
    rows
}

/// Replaces what `import.source` said before with what it says now. Tests it no longer has are marked
/// removed (results will refer to them), never deleted.
pub fn write_import(savepoint: &Savepoint<'_>, import: &Import) -> rusqlite::Result<ImportSummary> {
    let source = &import.source;
    savepoint.execute(
        "INSERT INTO sources (location, git_ref, git_commit, tree_path, imported_at_ms) VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT(location) DO UPDATE SET git_ref = ?2, git_commit = ?3, tree_path = ?4, imported_at_ms = ?5",
        params![source.location, source.git_ref, source.git_commit, source.tree_path, import.now_ms],
    )?;
    let source_id: i64 = savepoint.query_row(
        "SELECT id FROM sources WHERE location = ?1",
        [&source.location],
        |row| row.get(0),
    )?;
    let previously_present: i64 = savepoint.query_row(
        "SELECT count(*) FROM tests WHERE source_id = ?1 AND removed = 0",
        [source_id],
        |row| row.get(0),
    )?;
    savepoint.execute(
        "UPDATE tests SET removed = 1 WHERE source_id = ?1",
        [source_id],
    )?;
    savepoint.execute(
        "DELETE FROM test_facets WHERE test_id IN (SELECT id FROM tests WHERE source_id = ?1)",
        [source_id],
    )?;
    let mut added = 0u64;
    {
        let mut existed = savepoint.prepare_cached("SELECT removed FROM tests WHERE id = ?1")?;
        let mut upsert = savepoint.prepare_cached(
            "INSERT INTO tests (id, name, source_id, removed, summary, test_type, feature, tier, enabled, platform_kind,
                                duration_seconds, differs_by, metadata_json, updated_at_ms)
             VALUES (?1, ?2, ?3, 0, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)
             ON CONFLICT(id) DO UPDATE SET name = ?2, source_id = ?3, removed = 0, summary = ?4, test_type = ?5,
                feature = ?6, tier = ?7, enabled = ?8, platform_kind = ?9, duration_seconds = ?10, differs_by = ?11,
                metadata_json = ?12, updated_at_ms = ?13",
        )?;
        let mut facet = savepoint.prepare_cached(
            "INSERT INTO test_facets (test_id, facet, value) VALUES (?1, ?2, ?3)",
        )?;
        for test in &import.catalog.tests {
            let was_present: Option<i64> =
                existed.query_row([&test.id], |row| row.get(0)).optional()?;
            if was_present.is_none() {
                added += 1;
            }
            let differs = import
                .differs_by
                .get(&test.id)
                .map(|conditions| conditions.join("; "))
                .unwrap_or_default();
            upsert.execute(params![
                test.id,
                test.name,
                source_id,
                test.summary,
                test.test_type.map(|kind| kind.as_str()).unwrap_or(""),
                test.feature,
                test.tier,
                test.enabled,
                test.platform.kind.map(|kind| kind.as_str()).unwrap_or(""),
                test.duration_seconds as i64,
                differs,
                serde_json::to_string(test).expect("metadata serializes"),
                import.now_ms,
            ])?;
            for (kind, value) in facets(test) {
                facet.execute(params![test.id, kind, value])?;
            }
        }
    }
    savepoint.execute(
        "UPDATE features SET removed = 1 WHERE source_id = ?1",
        [source_id],
    )?;
    savepoint.execute(
        "DELETE FROM feature_depends WHERE feature IN (SELECT name FROM features WHERE source_id = ?1)",
        [source_id],
    )?;
    for feature in &import.catalog.features {
        savepoint.execute(
            "INSERT INTO features (name, source_id, removed, description, paths_json) VALUES (?1, ?2, 0, ?3, ?4)
             ON CONFLICT(name) DO UPDATE SET source_id = ?2, removed = 0, description = ?3, paths_json = ?4",
            params![feature.name, source_id, feature.description, serde_json::to_string(&feature.paths).expect("paths serialize")],
        )?;
        for depends in &feature.depends {
            savepoint.execute(
                "INSERT OR IGNORE INTO feature_depends (feature, depends) VALUES (?1, ?2)",
                params![feature.name, depends],
            )?;
        }
    }
    let present = import.catalog.tests.len() as u64;
    let kept = present - added;
    Ok(ImportSummary {
        tests: present,
        features: import.catalog.features.len() as u64,
        added,
        removed: (previously_present as u64).saturating_sub(kept),
    })
}

/// Features reachable by following `depends` backwards from ?1: the feature and all its dependents.
const DEPENDENTS_OF: &str = "WITH RECURSIVE affected(name) AS (
        SELECT ?1 UNION SELECT feature_depends.feature FROM feature_depends JOIN affected ON feature_depends.depends = affected.name
    )";

impl Reader {
    pub fn tests(&self, query: &TestQuery) -> Result<Vec<TestRow>, StoreError> {
        let mut sql = String::new();
        let mut values: Vec<String> = Vec::new();
        let mut conditions: Vec<String> = Vec::new();
        if let Some(feature) = &query.feature {
            sql.push_str(DEPENDENTS_OF);
            values.push(feature.clone());
            conditions.push("tests.feature IN (SELECT name FROM affected)".into());
        }
        sql.push_str(
            " SELECT tests.id, tests.name, tests.summary, tests.test_type, tests.feature, tests.tier, tests.enabled,
                     tests.platform_kind, tests.duration_seconds, tests.differs_by, tests.removed, sources.location
              FROM tests JOIN sources ON sources.id = tests.source_id",
        );
        if !query.include_removed {
            conditions.push("tests.removed = 0".into());
        }
        let mut equals = |column: &str, value: &Option<String>| {
            if let Some(value) = value {
                values.push(value.clone());
                conditions.push(format!("{column} = ?{}", values.len()));
            }
        };
        equals("tests.test_type", &query.test_type);
        equals("tests.tier", &query.tier);
        let mut facet = |kinds: &[&str], value: &Option<String>, values: &mut Vec<String>| {
            if let Some(value) = value {
                values.push(value.clone());
                let kinds = kinds
                    .iter()
                    .map(|kind| format!("'{kind}'"))
                    .collect::<Vec<_>>()
                    .join(", ");
                conditions.push(format!(
                    "tests.id IN (SELECT test_id FROM test_facets WHERE facet IN ({kinds}) AND value = ?{})",
                    values.len()
                ));
            }
        };
        facet(&["tag"], &query.tag, &mut values);
        facet(&["component"], &query.component, &mut values);
        facet(
            &["needs", "creates", "modifies"],
            &query.resource,
            &mut values,
        );
        facet(&["after"], &query.depends_on, &mut values);
        // A test with no arch or distro needs runs anywhere; `rhel-9` is met by rhel-9.4, `rhel` by rhel-9.4.
        for (kind, value) in [("arch", &query.arch), ("distro", &query.distro)] {
            if let Some(value) = value {
                values.push(value.clone());
                let index = values.len();
                conditions.push(format!(
                    "(NOT EXISTS (SELECT 1 FROM test_facets WHERE test_id = tests.id AND facet = '{kind}')
                      OR EXISTS (SELECT 1 FROM test_facets WHERE test_id = tests.id AND facet = '{kind}'
                        AND (value = ?{index} OR ?{index} LIKE value || '-%' OR ?{index} LIKE value || '.%')))"
                ));
            }
        }
        // A test with no platform kind can run on any.
        if let Some(platform) = &query.platform {
            values.push(platform.clone());
            conditions.push(format!("tests.platform_kind IN (?{}, '')", values.len()));
        }
        if let Some(linked) = &query.linked {
            values.push(linked.clone());
            let index = values.len();
            let matcher = if linked.contains(':') {
                format!("value = ?{index}")
            } else {
                format!("value LIKE '%:' || ?{index}")
            };
            conditions.push(format!(
                "tests.id IN (SELECT test_id FROM test_facets WHERE facet = 'link' AND {matcher})"
            ));
        }
        if query.differs_by_distro {
            conditions.push("tests.differs_by != ''".into());
        }
        if !conditions.is_empty() {
            sql.push_str(" WHERE ");
            sql.push_str(&conditions.join(" AND "));
        }
        sql.push_str(" ORDER BY tests.name");
        let mut statement = self
            .connection
            .prepare_cached(&sql)
            .map_err(sqlite_error(&self.path))?;
        let rows = statement
            .query_map(rusqlite::params_from_iter(values.iter()), |row| {
                Ok(TestRow {
                    id: row.get(0)?,
                    name: row.get(1)?,
                    summary: row.get(2)?,
                    test_type: row.get(3)?,
                    feature: row.get(4)?,
                    tier: row.get(5)?,
                    enabled: row.get(6)?,
                    platform_kind: row.get(7)?,
                    duration_seconds: row.get::<_, i64>(8)? as u64,
                    differs_by: row.get(9)?,
                    removed: row.get(10)?,
                    source: row.get(11)?,
                })
            })
            .map_err(sqlite_error(&self.path))?;
        rows.collect::<Result<Vec<_>, _>>()
            .map_err(sqlite_error(&self.path))
    }

    /// A test's full metadata (as adjusted at import) and its source; by id or node name.
    pub fn test(
        &self,
        id_or_name: &str,
    ) -> Result<Option<(TestMetadata, Source, bool)>, StoreError> {
        let found = self
            .connection
            .query_row(
                "SELECT tests.metadata_json, tests.removed, sources.location, sources.git_ref, sources.git_commit, sources.tree_path
                 FROM tests JOIN sources ON sources.id = tests.source_id WHERE tests.id = ?1 OR tests.name = ?1
                 ORDER BY tests.removed LIMIT 1",
                [id_or_name],
                |row| {
                    Ok((
                        row.get::<_, String>(0)?,
                        row.get::<_, bool>(1)?,
                        Source { location: row.get(2)?, git_ref: row.get(3)?, git_commit: row.get(4)?, tree_path: row.get(5)? },
                    ))
                },
            )
            .optional()
            .map_err(sqlite_error(&self.path))?;
        let Some((json, removed, source)) = found else {
            return Ok(None);
        };
        let metadata = serde_json::from_str(&json).map_err(|err| StoreError::CorruptFacts {
            name: id_or_name.to_string(),
            reason: err.to_string(),
        })?;
        Ok(Some((metadata, source, removed)))
    }

    pub fn features(&self) -> Result<Vec<FeatureRow>, StoreError> {
        let on_sqlite = sqlite_error(&self.path);
        let mut statement = self
            .connection
            .prepare("SELECT name, description, paths_json FROM features WHERE removed = 0 ORDER BY name")
            .map_err(&on_sqlite)?;
        let features: Vec<(String, String, String)> = statement
            .query_map([], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))
            .map_err(&on_sqlite)?
            .collect::<Result<_, _>>()
            .map_err(&on_sqlite)?;
        let mut edges = self
            .connection
            .prepare("SELECT feature, depends FROM feature_depends")
            .map_err(&on_sqlite)?;
        let mut depends: BTreeMap<String, Vec<String>> = BTreeMap::new();
        let mut dependents: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for edge in edges
            .query_map([], |row| {
                Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?))
            })
            .map_err(&on_sqlite)?
        {
            let (feature, depended) = edge.map_err(&on_sqlite)?;
            depends
                .entry(feature.clone())
                .or_default()
                .push(depended.clone());
            dependents.entry(depended).or_default().push(feature);
        }
        let mut direct = self
            .connection
            .prepare("SELECT feature, count(*) FROM tests WHERE removed = 0 AND feature != '' GROUP BY feature")
            .map_err(&on_sqlite)?;
        let direct_counts: BTreeMap<String, u64> = direct
            .query_map([], |row| {
                Ok((row.get::<_, String>(0)?, row.get::<_, i64>(1)? as u64))
            })
            .map_err(&on_sqlite)?
            .collect::<Result<_, _>>()
            .map_err(&on_sqlite)?;
        let catalog_features: Vec<Feature> = features
            .iter()
            .map(|(name, _, _)| Feature {
                name: name.clone(),
                description: String::new(),
                paths: Vec::new(),
                depends: depends.get(name).cloned().unwrap_or_default(),
            })
            .collect();
        let catalog = Catalog {
            tests: Vec::new(),
            features: catalog_features,
        };
        Ok(features
            .into_iter()
            .map(|(name, description, paths_json)| {
                let selected_tests = catalog
                    .feature_and_dependents(&name)
                    .iter()
                    .map(|feature| direct_counts.get(feature).copied().unwrap_or(0))
                    .sum();
                FeatureRow {
                    paths: serde_json::from_str(&paths_json).unwrap_or_default(),
                    depends: depends.get(&name).cloned().unwrap_or_default(),
                    dependents: dependents.get(&name).cloned().unwrap_or_default(),
                    direct_tests: direct_counts.get(&name).copied().unwrap_or(0),
                    selected_tests,
                    description,
                    name,
                }
            })
            .collect())
    }
}
