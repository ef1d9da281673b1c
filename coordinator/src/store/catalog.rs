//! The test catalog in SQLite: where tests came from, their metadata, and the feature graph.
//! Written by the store's one writer (`write_tests`, then `write_facets_and_features`, in one transaction
//! of its own per import); read with indexed queries.

use std::collections::{BTreeMap, BTreeSet};

use foldhash::{HashMap, HashMapExt, HashSet, HashSetExt};

use polarizer_shared::metadata::{
    problems_of, Catalog, Compact, Feature, Problems, TestMetadata, TestRefs, TestType,
};
use rusqlite::{params, OptionalExtension};

pub use polarizer_shared::catalog::{FeatureRow, ImportSummary, Source, TestQuery, TestRow};

use crate::store::sql::{sqlite_error, Reader, StoreError};

pub struct Import {
    pub source: Source,
    /// In tree order, each with its stored form (worked out off the writer thread). Boxed: gathered
    /// from every core, each test is then moved as a pointer, never copied.
    pub tests: Vec<Box<ImportedTest>>,
    pub features: Vec<Feature>,
    pub now_ms: i64,
    /// The tree's warnings, placed (`file:line: warning: …`): the import's answer carries them.
    pub warnings: Vec<String>,
}

/// Which tests carry each facet value: (kind, value, places in `catalog.tests`, ascending), sorted.
pub type FacetPostings = Vec<(&'static str, String, Vec<u32>)>;

impl Import {
    /// The import of a catalog whose tests' stored forms are `rows` (one per test, in order).
    pub fn new(source: Source, catalog: Catalog, rows: Vec<TestRowData>, now_ms: i64) -> Import {
        let tests = catalog
            .tests
            .into_iter()
            .zip(rows)
            .map(|(test, row)| Box::new(ImportedTest::new(test, row)))
            .collect();
        Import::of_tests(source, tests, catalog.features, now_ms)
    }

    pub fn of_tests(
        source: Source,
        tests: Vec<Box<ImportedTest>>,
        features: Vec<Feature>,
        now_ms: i64,
    ) -> Import {
        Import {
            source,
            tests,
            features,
            now_ms,
            warnings: Vec::new(),
        }
    }

    /// The whole-catalog problems of its tests and features (see `metadata::problems_of`).
    pub fn problems(&self) -> Problems {
        problems_of(&self.features, &self.tests)
    }

    /// Its facets, gathered on every core: the writer then looks up each distinct value once, instead
    /// of each of a million test-value pairs.
    pub fn facet_postings(&self) -> FacetPostings {
        facet_postings(&self.tests)
    }
}

/// What an import keeps of a test: the columns and facets the store writes, what the whole-tree checks
/// read, and its stored form. Its strings are kept end to end in one allocation, the rest of its
/// metadata only in the stored JSON: a 100,000-test import holds a fraction of what whole
/// `TestMetadata` would take, in a few allocations per test rather than dozens (small allocations
/// made on every core are what fragments the heap).
#[derive(Debug)]
pub struct ImportedTest {
    /// id, name, summary, feature, tier and platform kind, then the values of each facet kind
    /// ([`FACET_KINDS`]; links as `relation:target`), end to end.
    text: Box<str>,
    /// Where each string of `text` ends.
    ends: Box<[u32]>,
    /// Per facet kind: the index in `ends` just past its last value.
    list_ends: [u32; FACET_KINDS.len()],
    pub test_type: Option<TestType>,
    pub enabled: bool,
    pub duration_seconds: u64,
    pub row: TestRowData,
}

/// The single strings an [`ImportedTest`] keeps, in order, before its lists.
const FIELDS: usize = 6;

impl ImportedTest {
    /// Keeps what the store needs of `test`, whose stored form is `row`.
    pub fn new(test: TestMetadata, row: TestRowData) -> ImportedTest {
        let platform_kind = test.platform.kind_text();
        let fields = [
            &test.id,
            &test.name,
            &test.summary,
            &test.feature,
            &test.tier,
            &platform_kind,
        ];
        let lists = lists(&test);
        let values = lists.iter().map(|list| list.len()).sum::<usize>() + test.links.len();
        let length = fields.iter().map(|field| field.len()).sum::<usize>()
            + lists
                .iter()
                .flat_map(|list| list.iter())
                .map(String::len)
                .sum::<usize>()
            + test
                .links
                .iter()
                .map(|link| link.relation.len() + 1 + link.target.len())
                .sum::<usize>();
        let mut text = String::with_capacity(length);
        let mut ends = Vec::with_capacity(FIELDS + values);
        let mut end = |text: &String| ends.push(u32::try_from(text.len()).unwrap_or(u32::MAX));
        for field in fields {
            text.push_str(field);
            end(&text);
        }
        let mut list_ends = [0; FACET_KINDS.len()];
        let mut count = FIELDS;
        for (place, list) in lists.iter().enumerate() {
            for value in list.iter() {
                text.push_str(value);
                end(&text);
            }
            count += list.len();
            list_ends[place] = count as u32;
        }
        for link in &test.links {
            text.push_str(&link.relation);
            text.push(':');
            text.push_str(&link.target);
            end(&text);
        }
        list_ends[lists.len()] = (count + test.links.len()) as u32;
        ImportedTest {
            text: text.into_boxed_str(),
            ends: ends.into_boxed_slice(),
            list_ends,
            test_type: test.test_type,
            enabled: test.enabled,
            duration_seconds: test.duration_seconds,
            row,
        }
    }

    /// The `index`th string kept.
    fn string(&self, index: usize) -> &str {
        let start = match index {
            0 => 0,
            _ => self.ends[index - 1] as usize,
        };
        self.text
            .get(start..self.ends[index] as usize)
            .unwrap_or_default()
    }

    pub fn id(&self) -> &str {
        self.string(0)
    }

    pub fn name(&self) -> &str {
        self.string(1)
    }

    pub fn summary(&self) -> &str {
        self.string(2)
    }

    pub fn feature(&self) -> &str {
        self.string(3)
    }

    pub fn tier(&self) -> &str {
        self.string(4)
    }

    /// `vm`, `vm|baremetal`, or empty for any kind.
    pub fn platform_kind(&self) -> &str {
        self.string(5)
    }

    /// The values of the `kind`th facet kind ([`FACET_KINDS`]; links as `relation:target`).
    fn list(&self, kind: usize) -> impl Iterator<Item = &str> {
        let start = match kind {
            0 => FIELDS,
            _ => self.list_ends[kind - 1] as usize,
        };
        (start..self.list_ends[kind] as usize).map(|index| self.string(index))
    }

    /// Its facets: one (kind, value) per value of each multi-valued filter.
    pub fn facets(&self) -> impl Iterator<Item = (&'static str, &str)> {
        FACET_KINDS
            .iter()
            .enumerate()
            .flat_map(|(place, kind)| self.list(place).map(move |value| (*kind, value)))
    }
}

impl TestRefs for ImportedTest {
    fn id(&self) -> &str {
        self.id()
    }
    fn name(&self) -> &str {
        self.name()
    }
    fn feature(&self) -> &str {
        self.feature()
    }
    fn after(&self) -> impl Iterator<Item = &str> {
        self.list(AFTER)
    }
}

fn facet_postings(tests: &[Box<ImportedTest>]) -> FacetPostings {
    /// A facet value, borrowed from the tests: its place in [`FACET_KINDS`], and the value.
    type Key<'t> = (usize, &'t str);
    /// Distinct values numbered as they are first seen.
    #[derive(Default)]
    struct Numbered<'t> {
        numbers: HashMap<Key<'t>, u32>,
        keys: Vec<Key<'t>>,
    }
    impl<'t> Numbered<'t> {
        fn number(&mut self, key: Key<'t>) -> u32 {
            let next = self.keys.len() as u32;
            let number = *self.numbers.entry(key).or_insert(next);
            if number == next {
                self.keys.push(key);
            }
            number
        }
    }
    // Per chunk: its values and a flat list of (value, test) pairs, nothing allocated per pair.
    let partial = polarizer_shared::parallel::parallel_chunks(tests, |start, part| {
        let mut values = Numbered::default();
        let mut pairs: Vec<(u32, u32)> = Vec::with_capacity(part.len() * 12);
        // The chunk, borrowed from `tests` itself: the keys outlive this call.
        for (offset, test) in tests[start..start + part.len()].iter().enumerate() {
            let place = (start + offset) as u32;
            for kind in 0..FACET_KINDS.len() {
                for value in test.list(kind) {
                    pairs.push((values.number((kind, value)), place));
                }
            }
        }
        (values, pairs)
    });
    // One numbering for all chunks, then the pairs grouped by value with a counting sort: chunks come
    // in order and the sort is stable, so each value's tests stay ascending.
    let mut values = Numbered::default();
    let renumbered: Vec<Vec<u32>> = partial
        .iter()
        .map(|(chunk, _)| chunk.keys.iter().map(|key| values.number(*key)).collect())
        .collect();
    let mut starts = vec![0usize; values.keys.len() + 1];
    for ((_, pairs), global) in partial.iter().zip(&renumbered) {
        for (value, _) in pairs {
            starts[global[*value as usize] as usize + 1] += 1;
        }
    }
    for index in 1..starts.len() {
        starts[index] += starts[index - 1];
    }
    let mut places = vec![0u32; starts[values.keys.len()]];
    let mut next = starts.clone();
    for ((_, pairs), global) in partial.iter().zip(&renumbered) {
        for (value, place) in pairs {
            let slot = &mut next[global[*value as usize] as usize];
            places[*slot] = *place;
            *slot += 1;
        }
    }
    let mut facets: FacetPostings = values
        .keys
        .iter()
        .enumerate()
        .map(|(number, key)| {
            let (kind, value) = *key;
            (
                FACET_KINDS[kind],
                value.to_string(),
                places[starts[number]..starts[number + 1]].to_vec(),
            )
        })
        .collect();
    facets.sort_unstable_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
    facets
}

/// What the store writes for one test, computed before the writer sees it.
#[derive(Debug, Default)]
pub struct TestRowData {
    pub metadata_json: String,
    /// The `when` conditions on distro of its adjust rules, `; `-separated: its metadata differs by distro.
    pub differs_by: String,
    /// sha256 of everything stored about the test: a re-import leaves a test whose digest is unchanged alone.
    pub digest: [u8; 32],
}

impl TestRowData {
    pub fn new(test: &TestMetadata, differs_by: String) -> TestRowData {
        let metadata_json = json_of(test);
        let mut digest = ring::digest::Context::new(&ring::digest::SHA256);
        digest.update(metadata_json.as_bytes());
        digest.update(&[0]);
        digest.update(differs_by.as_bytes());
        TestRowData {
            digest: digest.finish().as_ref().try_into().unwrap_or([0; 32]),
            metadata_json,
            differs_by,
        }
    }
}

thread_local! {
    static JSON_BUFFER: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// A test's metadata as stored: its compact JSON (no keys holding their default), written into a buffer
/// kept per thread and copied out at its exact size: 100,000 strings grown by doubling cost more in the
/// allocator than the serialising itself.
fn json_of(test: &TestMetadata) -> String {
    JSON_BUFFER.with_borrow_mut(|buffer| {
        buffer.clear();
        serde_json::to_writer(&mut *buffer, &Compact(test)).expect("metadata serializes");
        // serde_json writes UTF-8; checking that is fast, and the lossy form only a fallback.
        match std::str::from_utf8(buffer) {
            Ok(json) => json.to_owned(),
            Err(_) => String::from_utf8_lossy(buffer).into_owned(),
        }
    })
}

/// A test's multi-valued filters kept as facets, in the order of [`FACET_KINDS`] (links are the one
/// more, last).
fn lists(test: &TestMetadata) -> [&[String]; FACET_KINDS.len() - 1] {
    [
        &test.tags,
        &test.components,
        &test.resources.needs,
        &test.resources.creates,
        &test.resources.modifies,
        &test.after,
        &test.platform.arch,
        &test.platform.distro,
    ]
}

/// The place of `after` in [`FACET_KINDS`].
const AFTER: usize = 5;

/// A test's row, as bound to the `tests` columns.
struct StoredTest<'a> {
    key: i64,
    source_id: i64,
    now_ms: i64,
    test: &'a ImportedTest,
    id: &'a str,
    name: &'a str,
    summary: &'a str,
    feature: &'a str,
    tier: &'a str,
    platform_kind: &'a str,
    test_type: &'static str,
    duration_seconds: i64,
}

impl<'a> StoredTest<'a> {
    const WIDTH: usize = 15;

    fn new(key: i64, source_id: i64, now_ms: i64, test: &'a ImportedTest) -> StoredTest<'a> {
        StoredTest {
            key,
            source_id,
            now_ms,
            test,
            id: test.id(),
            name: test.name(),
            summary: test.summary(),
            feature: test.feature(),
            tier: test.tier(),
            platform_kind: test.platform_kind(),
            test_type: test.test_type.map(|kind| kind.as_str()).unwrap_or(""),
            duration_seconds: test.duration_seconds as i64,
        }
    }

    /// key, id, name, summary, test_type, feature, tier, enabled, platform_kind, duration_seconds,
    /// differs_by, metadata_json, content_sha256, source_id, updated_at_ms: the columns `insert_rows`
    /// names and the update's ?1 to ?15.
    fn bind<'s>(&'s self, values: &mut Vec<&'s dyn rusqlite::ToSql>) {
        values.extend([
            &self.key as &dyn rusqlite::ToSql,
            &self.id,
            &self.name,
            &self.summary,
            &self.test_type,
            &self.feature,
            &self.tier,
            &self.test.enabled,
            &self.platform_kind,
            &self.duration_seconds,
            &self.test.row.differs_by,
            &self.test.row.metadata_json,
            &self.test.row.digest,
            &self.source_id,
            &self.now_ms,
        ]);
    }
}

/// A stored test as the import compares it.
struct Existing {
    key: i64,
    source_id: i64,
    removed: bool,
    digest: Vec<u8>,
}

/// What [`write_tests`] leaves for [`write_facets_and_features`].
pub struct TestsWritten {
    source_id: i64,
    /// Per test (by its place in the catalog): its key, when its facets are to be written.
    facets_to_write: Vec<Option<i64>>,
    facet_ids: FacetIds,
    summary: ImportSummary,
}

/// Replaces what `import.source` said before with what it says now, in two halves: this one writes the
/// source and its tests' rows, which need nothing from the whole-catalog checks (so the writer can do
/// this while they run); [`write_facets_and_features`] the rest. Tests it no longer has are marked
/// removed (results will refer to them), never deleted; tests whose stored form is unchanged are not
/// touched, so re-importing a large tree after a small change writes little.
pub fn write_tests(
    transaction: &rusqlite::Transaction<'_>,
    import: &Import,
) -> rusqlite::Result<TestsWritten> {
    let source = &import.source;
    transaction.execute(
        "INSERT INTO sources (location, git_ref, git_commit, tree_path, imported_at_ms) VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT(location) DO UPDATE SET git_ref = ?2, git_commit = ?3, tree_path = ?4, imported_at_ms = ?5",
        params![source.location, source.git_ref, source.git_commit, source.tree_path, import.now_ms],
    )?;
    let source_id: i64 = transaction.query_row(
        "SELECT id FROM sources WHERE location = ?1",
        [&source.location],
        |row| row.get(0),
    )?;
    // Ids are unique across sources: a test may move from one source to another.
    let mut existing: HashMap<String, Existing> = HashMap::new();
    {
        let mut statement =
            transaction.prepare("SELECT id, key, source_id, removed, content_sha256 FROM tests")?;
        let mut rows = statement.query([])?;
        while let Some(row) = rows.next()? {
            existing.insert(
                row.get(0)?,
                Existing {
                    key: row.get(1)?,
                    source_id: row.get(2)?,
                    removed: row.get(3)?,
                    digest: row.get(4)?,
                },
            );
        }
    }
    let facet_ids = FacetIds::load(transaction)?;
    // Per test (by its place in the catalog): its key, when its facets are to be written.
    let mut facets_to_write: Vec<Option<i64>> = vec![None; import.tests.len()];
    let mut summary = ImportSummary {
        tests: import.tests.len() as u64,
        features: import.features.len() as u64,
        warnings: import.warnings.clone(),
        ..ImportSummary::default()
    };
    let mut present: HashSet<i64> = HashSet::with_capacity(import.tests.len());
    // New tests get the next keys, in tree order: their rows append to the table.
    let mut next_key: i64 =
        transaction.query_row("SELECT coalesce(max(key), 0) + 1 FROM tests", [], |row| {
            row.get(0)
        })?;
    let mut new_tests: Vec<StoredTest<'_>> = Vec::new();
    {
        let mut update = transaction.prepare_cached(
            "UPDATE tests SET id = ?2, name = ?3, summary = ?4, test_type = ?5, feature = ?6, tier = ?7, enabled = ?8,
                platform_kind = ?9, duration_seconds = ?10, differs_by = ?11, metadata_json = ?12,
                content_sha256 = ?13, source_id = ?14, updated_at_ms = ?15, removed = 0
             WHERE key = ?1",
        )?;
        let mut old_json =
            transaction.prepare_cached("SELECT metadata_json FROM tests WHERE key = ?1")?;
        let mut drop_facet = transaction
            .prepare_cached("DELETE FROM test_facets WHERE value_id = ?1 AND test_key = ?2")?;
        for (index, test) in import.tests.iter().enumerate() {
            let Some(before) = existing.get(test.id()) else {
                new_tests.push(StoredTest::new(next_key, source_id, import.now_ms, test));
                facets_to_write[index] = Some(next_key);
                next_key += 1;
                summary.added += 1;
                continue;
            };
            present.insert(before.key);
            let unchanged = before.digest == test.row.digest;
            if unchanged && before.source_id == source_id && !before.removed {
                continue;
            }
            if !unchanged {
                summary.changed += 1;
                // The facets the stored metadata gave it go; the new ones are added below.
                let json: String = old_json.query_row([before.key], |row| row.get(0))?;
                if let Ok(old) = serde_json::from_str::<TestMetadata>(&json) {
                    for (kind, value) in ImportedTest::new(old, TestRowData::default()).facets() {
                        if let Some(id) = facet_ids.get(kind, value) {
                            drop_facet.execute([id, before.key])?;
                        }
                    }
                }
                facets_to_write[index] = Some(before.key);
            }
            let stored = StoredTest::new(before.key, source_id, import.now_ms, test);
            let mut values = Vec::with_capacity(StoredTest::WIDTH);
            stored.bind(&mut values);
            update.execute(values.as_slice())?;
        }
    }
    crate::store::sql::insert_rows(
        transaction,
        "INSERT INTO tests (key, id, name, summary, test_type, feature, tier, enabled, platform_kind,
                            duration_seconds, differs_by, metadata_json, content_sha256, source_id, updated_at_ms)",
        StoredTest::WIDTH,
        &new_tests,
        |stored, values| stored.bind(values),
    )?;
    {
        let mut mark_removed =
            transaction.prepare_cached("UPDATE tests SET removed = 1 WHERE key = ?1")?;
        for before in existing.values() {
            if before.source_id == source_id && !before.removed && !present.contains(&before.key) {
                mark_removed.execute([before.key])?;
                summary.removed += 1;
            }
        }
    }
    Ok(TestsWritten {
        source_id,
        facets_to_write,
        facet_ids,
        summary,
    })
}

/// The second half of an import (see [`write_tests`]): the facets of the tests written, and the feature graph.
pub fn write_facets_and_features(
    transaction: &rusqlite::Transaction<'_>,
    import: &Import,
    facets: &FacetPostings,
    tests: TestsWritten,
) -> rusqlite::Result<ImportSummary> {
    let TestsWritten {
        source_id,
        facets_to_write,
        mut facet_ids,
        summary,
    } = tests;
    let mut new_pairs: Vec<(i64, i64)> = Vec::new();
    for (kind, value, indices) in facets {
        let mut keys = indices
            .iter()
            .filter_map(|index| facets_to_write[*index as usize])
            .peekable();
        if keys.peek().is_some() {
            let id = facet_ids.get_or_insert(transaction, kind, value)?;
            new_pairs.extend(keys.map(|key| (id, key)));
        }
    }
    // Facet pairs in key order: each lands next to the one before it in the b-tree.
    new_pairs.sort_unstable();
    new_pairs.dedup();
    crate::store::sql::insert_rows(
        transaction,
        "INSERT OR IGNORE INTO test_facets (value_id, test_key)",
        2,
        &new_pairs,
        |(value_id, key), values| {
            values.push(value_id);
            values.push(key);
        },
    )?;
    transaction.execute(
        "UPDATE features SET removed = 1 WHERE source_id = ?1",
        [source_id],
    )?;
    transaction.execute(
        "DELETE FROM feature_depends WHERE feature IN (SELECT name FROM features WHERE source_id = ?1)",
        [source_id],
    )?;
    for feature in &import.features {
        transaction.execute(
            "INSERT INTO features (name, source_id, removed, description, paths_json) VALUES (?1, ?2, 0, ?3, ?4)
             ON CONFLICT(name) DO UPDATE SET source_id = ?2, removed = 0, description = ?3, paths_json = ?4",
            params![feature.name, source_id, feature.description, serde_json::to_string(&feature.paths).expect("paths serialize")],
        )?;
        for depends in &feature.depends {
            transaction.execute(
                "INSERT OR IGNORE INTO feature_depends (feature, depends) VALUES (?1, ?2)",
                params![feature.name, depends],
            )?;
        }
    }
    Ok(summary)
}

/// Facet (kind, value) → its id in `facet_values`, loaded once per import.
struct FacetIds {
    ids: HashMap<&'static str, HashMap<String, i64>>,
}

/// Every facet kind, in the order an [`ImportedTest`] keeps them; also turns a stored kind back into a
/// `&'static str`.
const FACET_KINDS: [&str; 9] = [
    "tag",
    "component",
    "needs",
    "creates",
    "modifies",
    "after",
    "arch",
    "distro",
    "link",
];

impl FacetIds {
    fn load(transaction: &rusqlite::Transaction<'_>) -> rusqlite::Result<FacetIds> {
        let mut ids = HashMap::new();
        let mut statement = transaction.prepare("SELECT id, facet, value FROM facet_values")?;
        let mut rows = statement.query([])?;
        while let Some(row) = rows.next()? {
            let facet: String = row.get(1)?;
            if let Some(kind) = FACET_KINDS.iter().find(|kind| **kind == facet) {
                ids.entry(*kind)
                    .or_insert_with(HashMap::new)
                    .insert(row.get(2)?, row.get(0)?);
            }
        }
        Ok(FacetIds { ids })
    }

    fn get(&self, kind: &'static str, value: &str) -> Option<i64> {
        self.ids.get(kind)?.get(value).copied()
    }

    fn get_or_insert(
        &mut self,
        transaction: &rusqlite::Transaction<'_>,
        kind: &'static str,
        value: &str,
    ) -> rusqlite::Result<i64> {
        if let Some(id) = self.get(kind, value) {
            return Ok(id);
        }
        transaction
            .prepare_cached("INSERT INTO facet_values (facet, value) VALUES (?1, ?2)")?
            .execute([kind, value])?;
        let id = transaction.last_insert_rowid();
        self.ids
            .entry(kind)
            .or_default()
            .insert(value.to_string(), id);
        Ok(id)
    }
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
                     tests.platform_kind, tests.duration_seconds, tests.differs_by, tests.removed, sources.location,
                     coalesce(polarion_ids.polarion_id, '')
              FROM tests JOIN sources ON sources.id = tests.source_id
              LEFT JOIN polarion_ids ON polarion_ids.test_id = tests.id",
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
                    "tests.key IN (SELECT test_key FROM test_facets WHERE value_id IN
                        (SELECT id FROM facet_values WHERE facet IN ({kinds}) AND value = ?{}))",
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
                    "(tests.key NOT IN (SELECT test_key FROM test_facets WHERE value_id IN
                         (SELECT id FROM facet_values WHERE facet = '{kind}'))
                      OR tests.key IN (SELECT test_key FROM test_facets WHERE value_id IN
                         (SELECT id FROM facet_values WHERE facet = '{kind}'
                          AND (value = ?{index} OR ?{index} LIKE value || '-%' OR ?{index} LIKE value || '.%'))))"
                ));
            }
        }
        // A test with no platform kind can run on any.
        if let Some(platform) = &query.platform {
            values.push(platform.clone());
            // Or one of its kinds: the column holds them as `vm|baremetal`.
            conditions.push(format!(
                "(tests.platform_kind = '' OR instr('|' || tests.platform_kind || '|', '|' || ?{} || '|') > 0)",
                values.len()
            ));
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
                "tests.key IN (SELECT test_key FROM test_facets WHERE value_id IN
                    (SELECT id FROM facet_values WHERE facet = 'link' AND {matcher}))"
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
                    polarion_id: row.get(12)?,
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
        let declared: BTreeSet<&str> = features.iter().map(|(name, _, _)| name.as_str()).collect();
        // Named by tests, not declared: listed too, so a typo shows.
        let undeclared: Vec<FeatureRow> = direct_counts
            .iter()
            .filter(|(name, _)| !declared.contains(name.as_str()))
            .map(|(name, count)| FeatureRow {
                name: name.clone(),
                description: String::new(),
                paths: Vec::new(),
                depends: Vec::new(),
                dependents: Vec::new(),
                direct_tests: *count,
                selected_tests: *count,
                declared: false,
            })
            .collect();
        let mut rows: Vec<FeatureRow> = features
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
                    declared: true,
                }
            })
            .collect();
        rows.extend(undeclared);
        rows.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(rows)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use polarizer_shared::metadata::Link;

    /// What an import keeps of a test reads back as the metadata said: every column, and every facet
    /// in kind order, with empty strings and lists anywhere and text beyond ASCII.
    #[test]
    fn an_imported_test_keeps_its_columns_and_facets() {
        let mut test = TestMetadata {
            id: "ÿ-1".into(),
            name: "/tests/ünïcode".into(),
            summary: String::new(),
            feature: "area/cli".into(),
            tier: "1".into(),
            enabled: true,
            duration_seconds: 90,
            test_type: Some(TestType::Functional),
            tags: vec!["fast".into(), String::new(), "ß".into()],
            after: vec!["/tests/a".into()],
            links: vec![
                Link {
                    relation: "verifies".into(),
                    target: "REQ-1".into(),
                    note: "ignored".into(),
                },
                Link {
                    relation: "relates".into(),
                    target: "https://x/y:z".into(),
                    note: String::new(),
                },
            ],
            ..TestMetadata::default()
        };
        test.resources.modifies = vec!["state".into()];
        test.platform.distro = vec!["rhel-9".into()];
        test.platform.kind = vec![
            polarizer_shared::facts::PlatformKind::Vm,
            polarizer_shared::facts::PlatformKind::Baremetal,
        ];
        let kept = ImportedTest::new(test.clone(), TestRowData::new(&test, String::new()));
        assert_eq!(
            (
                kept.id(),
                kept.name(),
                kept.summary(),
                kept.feature(),
                kept.tier()
            ),
            ("ÿ-1", "/tests/ünïcode", "", "area/cli", "1")
        );
        assert_eq!(kept.platform_kind(), "vm|baremetal");
        assert_eq!(
            (kept.test_type, kept.enabled, kept.duration_seconds),
            (Some(TestType::Functional), true, 90)
        );
        assert_eq!(
            kept.facets().collect::<Vec<_>>(),
            [
                ("tag", "fast"),
                ("tag", ""),
                ("tag", "ß"),
                ("modifies", "state"),
                ("after", "/tests/a"),
                ("distro", "rhel-9"),
                ("link", "verifies:REQ-1"),
                ("link", "relates:https://x/y:z"),
            ]
        );
        assert_eq!(TestRefs::after(&kept).collect::<Vec<_>>(), ["/tests/a"]);
        // Nothing at all kept but its id.
        let bare = TestMetadata {
            id: "bare".into(),
            ..TestMetadata::default()
        };
        let kept = ImportedTest::new(bare, TestRowData::default());
        assert_eq!(
            (kept.id(), kept.name(), kept.platform_kind()),
            ("bare", "", "")
        );
        assert_eq!(kept.facets().count(), 0);
    }

    /// Postings gathered in parallel chunks say what each test's own facets say, values sorted and
    /// each value's tests ascending.
    #[test]
    fn facet_postings_agree_with_each_tests_facets() {
        // More than one chunk's worth, with values shared within and across chunks.
        let template = TestMetadata {
            id: "/t".into(),
            name: "/t".into(),
            test: "./run.sh".into(),
            enabled: true,
            ..TestMetadata::default()
        };
        let tests: Vec<TestMetadata> = (0..3_000)
            .map(|index| {
                let mut test = template.clone();
                test.name = format!("/t/{index}");
                test.tags = vec![format!("tag-{}", index % 7), "all".into()];
                test.resources.needs = vec![format!("r-{}", index % 1_000)];
                test.links = vec![Link {
                    relation: "verifies".into(),
                    target: format!("REQ-{}", index % 11),
                    note: String::new(),
                }];
                test
            })
            .collect();
        let mut expected: BTreeMap<(&str, String), Vec<u32>> = BTreeMap::new();
        for (place, test) in tests.iter().enumerate() {
            let facets = test.tags.iter().map(|tag| ("tag", tag.clone())).chain([
                ("needs", test.resources.needs[0].clone()),
                ("link", format!("verifies:{}", test.links[0].target)),
            ]);
            for (kind, value) in facets {
                expected
                    .entry((kind, value))
                    .or_default()
                    .push(place as u32);
            }
        }
        let expected: FacetPostings = expected
            .into_iter()
            .map(|((kind, value), places)| (kind, value, places))
            .collect();
        let tests: Vec<Box<ImportedTest>> = tests
            .into_iter()
            .map(|test| Box::new(ImportedTest::new(test, TestRowData::default())))
            .collect();
        assert_eq!(facet_postings(&tests), expected);
        assert_eq!(expected.len(), 7 + 1 + 1_000 + 11);
    }
}
