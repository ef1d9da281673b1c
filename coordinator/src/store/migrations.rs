//! Every schema change, numbered, in the order it runs: `PRAGMA user_version` records how many have run,
//! and a database newer than [`SCHEMA_VERSION`] is refused. A migration is never edited once released;
//! a change is a new one at the end.

/// Numbered migrations, applied in order.
pub(super) const MIGRATIONS: &[&str] = &[
    AGENTS,
    CATALOG,
    RUNS,
    EVENTS,
    CATALOG_FACET_KEYS,
    HOST_TOKENS,
    APPROVAL,
    LOST_HOLDER,
    PLATFORMS,
    SUITE_IMAGES,
    TRIGGERS,
    POLARION,
    ANALYSIS,
    BUS,
];

pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// 1: the agent inventory (agents.rs).
const AGENTS: &str = "
    CREATE TABLE agents (
        name TEXT PRIMARY KEY NOT NULL,
        credential_sha256 TEXT NOT NULL,
        state TEXT NOT NULL CHECK (state IN ('online', 'offline', 'revoked')),
        facts_json TEXT NOT NULL,
        address TEXT NOT NULL DEFAULT '',
        first_seen_ms INTEGER NOT NULL,
        last_seen_ms INTEGER NOT NULL,
        revoked_at_ms INTEGER
    ) STRICT;
";

/// 2: the test catalog (catalog.rs).
const CATALOG: &str = "
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

/// 3: runs, suites, results and output (runs.rs).
const RUNS: &str = "
ALTER TABLE agents ADD COLUMN records_committed INTEGER NOT NULL DEFAULT 0;
CREATE TABLE runs (
    id INTEGER PRIMARY KEY,
    state TEXT NOT NULL,
    kind TEXT NOT NULL,
    repo TEXT NOT NULL,
    fetch_url TEXT NOT NULL,
    git_ref TEXT NOT NULL,
    git_commit TEXT NOT NULL,
    tree_path TEXT NOT NULL,
    trigger_json TEXT NOT NULL,
    message TEXT NOT NULL DEFAULT '',
    created_ms INTEGER NOT NULL,
    started_ms INTEGER,
    finished_ms INTEGER,
    deadline_ms INTEGER NOT NULL
) STRICT;
CREATE INDEX runs_active ON runs(state) WHERE state IN ('queued', 'running');
CREATE TABLE suites (
    id INTEGER PRIMARY KEY,
    run_id INTEGER NOT NULL REFERENCES runs(id),
    ordinal INTEGER NOT NULL,
    kind TEXT NOT NULL,
    needs_json TEXT NOT NULL,
    state TEXT NOT NULL,
    attempt INTEGER NOT NULL DEFAULT 1,
    agent TEXT NOT NULL DEFAULT '',
    incarnation INTEGER NOT NULL DEFAULT 0,
    versions_json TEXT NOT NULL DEFAULT '',
    started_ms INTEGER,
    finished_ms INTEGER
) STRICT;
CREATE INDEX suites_active ON suites(state) WHERE state IN ('queued', 'running');
CREATE INDEX suites_by_run ON suites(run_id);
CREATE TABLE run_tests (
    run_id INTEGER NOT NULL REFERENCES runs(id),
    test_id TEXT NOT NULL,
    suite_id INTEGER NOT NULL REFERENCES suites(id),
    position INTEGER NOT NULL,
    name TEXT NOT NULL,
    reasons_json TEXT NOT NULL,
    status TEXT NOT NULL,
    infra INTEGER NOT NULL DEFAULT 0,
    attempt INTEGER NOT NULL DEFAULT 1,
    agent TEXT NOT NULL DEFAULT '',
    started_ms INTEGER,
    duration_ms INTEGER,
    message TEXT NOT NULL DEFAULT '',
    output_tail TEXT NOT NULL DEFAULT '',
    subresults_json TEXT NOT NULL DEFAULT '[]',
    PRIMARY KEY (run_id, test_id)
) STRICT;
CREATE INDEX run_tests_by_suite ON run_tests(suite_id);
-- The metadata each test ran with, apart: result updates then rewrite small rows.
CREATE TABLE run_test_metadata (
    run_id INTEGER NOT NULL,
    test_id TEXT NOT NULL,
    metadata_json TEXT NOT NULL,
    PRIMARY KEY (run_id, test_id)
) STRICT;
CREATE INDEX run_tests_by_status ON run_tests(run_id, status);
CREATE INDEX run_tests_history ON run_tests(test_id, status);
CREATE TABLE lost_attempts (
    run_id INTEGER NOT NULL,
    test_id TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    agent TEXT NOT NULL,
    message TEXT NOT NULL,
    at_ms INTEGER NOT NULL
) STRICT;
CREATE INDEX lost_attempts_by_run ON lost_attempts(run_id);
";

/// 4: the event log (events.rs).
pub const EVENTS: &str = "
CREATE TABLE events (
    id INTEGER PRIMARY KEY,
    agent TEXT NOT NULL,
    seq INTEGER NOT NULL,
    agent_ms INTEGER NOT NULL,
    received_ms INTEGER NOT NULL,
    kind TEXT NOT NULL,
    run_id INTEGER,
    suite_id INTEGER,
    test_id TEXT NOT NULL DEFAULT '',
    summary TEXT NOT NULL,
    data TEXT NOT NULL
) STRICT;
CREATE INDEX events_by_time ON events(received_ms);
CREATE INDEX events_by_run ON events(run_id, agent_ms) WHERE run_id IS NOT NULL;
";

/// 5: integer test keys and facet pairs (catalog.rs).
const CATALOG_FACET_KEYS: &str = "
CREATE TABLE tests_keyed (
    key INTEGER PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
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
    updated_at_ms INTEGER NOT NULL,
    content_sha256 BLOB NOT NULL DEFAULT x''
) STRICT;
INSERT INTO tests_keyed (id, name, source_id, removed, summary, test_type, feature, tier, enabled, platform_kind,
                         duration_seconds, differs_by, metadata_json, updated_at_ms)
    SELECT id, name, source_id, removed, summary, test_type, feature, tier, enabled, platform_kind,
           duration_seconds, differs_by, metadata_json, updated_at_ms FROM tests ORDER BY name;
CREATE TABLE facet_values (
    id INTEGER PRIMARY KEY,
    facet TEXT NOT NULL,
    value TEXT NOT NULL,
    UNIQUE (facet, value)
) STRICT;
INSERT INTO facet_values (facet, value) SELECT DISTINCT facet, value FROM test_facets ORDER BY facet, value;
CREATE TABLE test_facet_keys (
    value_id INTEGER NOT NULL,
    test_key INTEGER NOT NULL,
    PRIMARY KEY (value_id, test_key)
) STRICT, WITHOUT ROWID;
INSERT OR IGNORE INTO test_facet_keys (value_id, test_key)
    SELECT facet_values.id, tests_keyed.key FROM test_facets
    JOIN facet_values ON facet_values.facet = test_facets.facet AND facet_values.value = test_facets.value
    JOIN tests_keyed ON tests_keyed.id = test_facets.test_id
    ORDER BY 1, 2;
DROP TABLE test_facets;
DROP TABLE tests;
ALTER TABLE tests_keyed RENAME TO tests;
ALTER TABLE test_facet_keys RENAME TO test_facets;
CREATE INDEX tests_by_feature ON tests(feature) WHERE removed = 0;
";

/// 6: per-host enrollment tokens, kept as digests; each enrolls its one agent once, before it expires
/// (agents.rs).
const HOST_TOKENS: &str = "
CREATE TABLE host_tokens (
    digest TEXT PRIMARY KEY NOT NULL,
    name TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    expires_ms INTEGER NOT NULL,
    used_ms INTEGER
) STRICT;
";

/// 7: enrollment by approval: an agent enrolled under `--enroll approve` waits, not approved, until an
/// operator approves it; every agent enrolled before was admitted, so it counts as approved (agents.rs).
const APPROVAL: &str = "
ALTER TABLE agents ADD COLUMN approved INTEGER NOT NULL DEFAULT 1;
";

/// 8: who held the attempt a queued suite lost (agent, process, attempt), so that agent, back after a
/// network cut before anyone else began the suite, takes its attempt back (runs.rs).
const LOST_HOLDER: &str = "
ALTER TABLE suites ADD COLUMN lost_agent TEXT NOT NULL DEFAULT '';
ALTER TABLE suites ADD COLUMN lost_incarnation INTEGER NOT NULL DEFAULT 0;
ALTER TABLE suites ADD COLUMN lost_attempt INTEGER NOT NULL DEFAULT 0;
";

/// 9: platforms made by pools, kept so a restarted coordinator finds the ones it was making or using
/// and destroys them; `id` only ever grows, so a platform's name (and its agent's) is never reused
/// (platforms.rs).
const PLATFORMS: &str = "
CREATE TABLE platforms (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL UNIQUE,
    pool TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('creating', 'ready', 'leased', 'cleaning', 'destroying', 'failed')),
    provider_id TEXT NOT NULL DEFAULT '',
    address TEXT NOT NULL DEFAULT '',
    run_id INTEGER,
    suite_id INTEGER,
    attempt INTEGER,
    created_ms INTEGER NOT NULL,
    state_ms INTEGER NOT NULL,
    tries INTEGER NOT NULL DEFAULT 0,
    error TEXT NOT NULL DEFAULT ''
) STRICT;
";

/// 10: a suite whose tests bring a Containerfile runs on a platform made from the image built from it
/// (runs.rs); such a platform is the image's and its suite's alone (platforms.rs).
const SUITE_IMAGES: &str = "
ALTER TABLE suites ADD COLUMN containerfile TEXT NOT NULL DEFAULT '';
ALTER TABLE platforms ADD COLUMN image TEXT NOT NULL DEFAULT '';
";

/// 11: triggers from outside (GitHub deliveries), stored before they are answered, and the reports
/// they owe, stored before they are sent (triggers.rs).
const TRIGGERS: &str = "
CREATE TABLE triggers (
    id INTEGER PRIMARY KEY,
    received_ms INTEGER NOT NULL,
    source TEXT NOT NULL,
    delivery TEXT NOT NULL DEFAULT '',
    repo TEXT NOT NULL DEFAULT '',
    event TEXT NOT NULL DEFAULT '',
    kind TEXT NOT NULL DEFAULT '',
    sha TEXT NOT NULL DEFAULT '',
    git_ref TEXT NOT NULL DEFAULT '',
    outcome TEXT NOT NULL CHECK (outcome IN ('received', 'run', 'ignored', 'duplicate', 'refused', 'failed')),
    reason TEXT NOT NULL DEFAULT '',
    run_id INTEGER,
    change_json TEXT NOT NULL DEFAULT '',
    fetch_ms INTEGER,
    planned_ms INTEGER
) STRICT;
CREATE INDEX triggers_delivery ON triggers(source, delivery);
CREATE INDEX triggers_change ON triggers(source, repo, sha, kind, received_ms);
CREATE INDEX triggers_waiting ON triggers(id) WHERE outcome IN ('received', 'refused');
CREATE TABLE reports (
    trigger_id INTEGER PRIMARY KEY REFERENCES triggers(id),
    target TEXT NOT NULL,
    repo TEXT NOT NULL,
    sha TEXT NOT NULL,
    context TEXT NOT NULL,
    run_id INTEGER,
    state TEXT NOT NULL,
    text_json TEXT NOT NULL,
    version INTEGER NOT NULL,
    sent_version INTEGER NOT NULL DEFAULT 0,
    check_run_id INTEGER,
    tries INTEGER NOT NULL DEFAULT 0,
    next_try_ms INTEGER NOT NULL DEFAULT 0,
    error TEXT NOT NULL DEFAULT '',
    updated_ms INTEGER NOT NULL
) STRICT;
CREATE INDEX reports_unsent ON reports(next_try_ms) WHERE sent_version < version;
CREATE INDEX reports_open ON reports(run_id) WHERE state IN ('queued', 'running');
";

/// 12: Polarion: the work item id learnt for each test, and every import (an XUnit file of a run, a
/// TestCase file of the catalog) from waiting to be uploaded until Polarion's job ends (polarion.rs).
const POLARION: &str = "
CREATE TABLE polarion_ids (
    test_id TEXT PRIMARY KEY NOT NULL,
    polarion_id TEXT NOT NULL,
    learnt_ms INTEGER NOT NULL
) STRICT;
CREATE TABLE polarion_imports (
    id INTEGER PRIMARY KEY,
    kind TEXT NOT NULL CHECK (kind IN ('xunit', 'testcase')),
    origin TEXT NOT NULL,
    run_id INTEGER,
    part INTEGER NOT NULL,
    parts INTEGER NOT NULL,
    file TEXT NOT NULL,
    dry_run INTEGER NOT NULL,
    names_json TEXT NOT NULL DEFAULT '{}',
    state TEXT NOT NULL CHECK (state IN ('waiting', 'queued', 'running', 'success', 'failed')),
    job_ids TEXT NOT NULL DEFAULT '',
    testrun_url TEXT NOT NULL DEFAULT '',
    message TEXT NOT NULL DEFAULT '',
    tries INTEGER NOT NULL DEFAULT 0,
    next_try_ms INTEGER NOT NULL DEFAULT 0,
    uploaded_ms INTEGER,
    created_ms INTEGER NOT NULL,
    updated_ms INTEGER NOT NULL
) STRICT;
CREATE INDEX polarion_imports_open ON polarion_imports(next_try_ms) WHERE state IN ('waiting', 'queued', 'running');
CREATE UNIQUE INDEX polarion_imports_on_finish ON polarion_imports(run_id, part) WHERE origin = 'on-finish';
";

/// 13: failure analysis: the clusters failures fall into (their templates, so a restarted coordinator
/// goes on with the same ids) and the labels operators put on them; each failed result's cluster and
/// the text it was clustered by; tests quarantined for being flaky (analysis.rs).
const ANALYSIS: &str = "
CREATE TABLE failure_clusters (
    id INTEGER PRIMARY KEY,
    template TEXT NOT NULL,
    lines INTEGER NOT NULL DEFAULT 0,
    merged_into INTEGER,
    first_ms INTEGER NOT NULL,
    last_ms INTEGER NOT NULL,
    issue TEXT NOT NULL DEFAULT '',
    kind TEXT NOT NULL DEFAULT '' CHECK (kind IN ('', 'product', 'automation', 'system', 'no-defect')),
    note TEXT NOT NULL DEFAULT '',
    labelled_ms INTEGER
) STRICT;
ALTER TABLE run_tests ADD COLUMN cluster_id INTEGER;
ALTER TABLE run_tests ADD COLUMN quarantined INTEGER NOT NULL DEFAULT 0;
ALTER TABLE run_tests ADD COLUMN failure_text TEXT NOT NULL DEFAULT '';
CREATE INDEX run_tests_by_cluster ON run_tests(cluster_id) WHERE cluster_id IS NOT NULL;
CREATE TABLE quarantine (
    name TEXT PRIMARY KEY NOT NULL,
    reason TEXT NOT NULL,
    since_ms INTEGER NOT NULL,
    passes INTEGER NOT NULL DEFAULT 0
) STRICT;
";

/// 14: message buses: the runs a build message started, with what their CI messages say of the build,
/// and every CI message from stored to sent (bus.rs).
const BUS: &str = "
CREATE TABLE bus_runs (
    run_id INTEGER PRIMARY KEY,
    trigger_id INTEGER NOT NULL REFERENCES triggers(id),
    bus TEXT NOT NULL,
    build_json TEXT NOT NULL,
    rule_name TEXT NOT NULL,
    announced TEXT NOT NULL DEFAULT ''
) STRICT;
CREATE INDEX bus_runs_open ON bus_runs(run_id) WHERE announced NOT IN ('complete', 'error');
CREATE TABLE bus_outbox (
    id INTEGER PRIMARY KEY,
    bus TEXT NOT NULL,
    topic TEXT NOT NULL,
    message_id TEXT NOT NULL,
    body TEXT NOT NULL,
    run_id INTEGER,
    created_ms INTEGER NOT NULL,
    sent_ms INTEGER,
    tries INTEGER NOT NULL DEFAULT 0,
    error TEXT NOT NULL DEFAULT ''
) STRICT;
CREATE INDEX bus_outbox_unsent ON bus_outbox(bus, id) WHERE sent_ms IS NULL;
";
