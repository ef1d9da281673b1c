//! The coordinator's SQLite store. One writer thread owns the write connection and commits every command
//! that is waiting in one transaction; readers open their own connections (WAL lets them run alongside).
//! It stops on an explicit [`StoreHandle::shutdown`], after committing everything sent before.
//! The queue to the writer is bounded ([`MAX_PENDING_COMMANDS`]): a writer that falls behind makes
//! senders wait, and the wait reaches back to the network (an agent session stops reading its peer).
//!
//! One module per table group (`agents`, `catalog`, `runs`, `events`), every migration in `migrations`.
//! States go in and out of SQL as typed enums; an unknown one read back is an error, never a default.
//! May import `core` (for its types and decisions) and `shared`; never `daemon` or `cli`.

mod agents;
pub mod analysis;
pub mod bus;
pub mod catalog;
pub mod events;
pub mod health;
pub mod migrations;
pub mod platforms;
pub mod polarion;
pub mod runs;
pub mod sql;
pub mod triggers;

pub use sql::{insert_rows, insert_rows_sharing, Reader, StoreError};

pub use agents::Enrollment;
pub use migrations::SCHEMA_VERSION;

use std::path::{Path, PathBuf};
use std::sync::mpsc as std_mpsc;
use std::sync::Arc;
use std::thread;

use polarizer_shared::AgentFacts;
use rusqlite::Connection;
use tokio::sync::{oneshot, OwnedSemaphorePermit, Semaphore};

use self::catalog::{FacetPostings, Import, ImportSummary};
use self::migrations::MIGRATIONS;
use self::sql::sqlite_error;

/// Why [`StoreHandle::import_checked`] stored nothing: the import's checks failed, or the store did.
#[derive(Debug, thiserror::Error)]
pub enum ImportFailed<E> {
    #[error("{0}")]
    Check(E),
    #[error(transparent)]
    Store(#[from] StoreError),
}

enum Command {
    Enroll {
        enrollment: Enrollment,
        reply: oneshot::Sender<Result<(), StoreError>>,
    },
    Connected {
        name: String,
        facts: AgentFacts,
        address: String,
        now_ms: i64,
    },
    FactsChanged {
        name: String,
        facts: AgentFacts,
    },
    Disconnected {
        name: String,
        now_ms: i64,
    },
    Revoke {
        name: String,
        now_ms: i64,
        reply: oneshot::Sender<Result<bool, StoreError>>,
    },
    /// Commit everything sent before, then stop: the writer thread ends, later commands fail `Closed`.
    Shutdown,
    /// Its tests are written at once; the rest waits for `facets`, which come once its checks pass.
    ImportCatalog {
        import: Arc<Import>,
        facets: oneshot::Receiver<FacetPostings>,
        reply: oneshot::Sender<Result<ImportSummary, StoreError>>,
    },
    /// Any other write, in a savepoint of its own inside the batch's transaction.
    Write(WriteWork),
}

/// Runs on the writer thread; pushes the reply that goes out after the commit.
type WriteWork = Box<dyn FnOnce(&mut rusqlite::Transaction<'_>, &Path, &mut Vec<Reply>) + Send>;

/// Commands sent but not yet committed, at most (two of the writer's batches). One more waits in
/// [`StoreHandle`]'s send until the writer commits a batch: memory stays bounded however far the disk
/// falls behind, and the wait is the backpressure.
pub const MAX_PENDING_COMMANDS: usize = 2 * MAX_BATCH_COMMANDS;
/// Commands the writer takes into one transaction.
const MAX_BATCH_COMMANDS: usize = 4096;

/// A command with its place in the queue, given back once the batch holding it has committed.
struct Queued {
    command: Command,
    /// `None` for `Shutdown` only: stopping never waits for room.
    slot: Option<OwnedSemaphorePermit>,
}

/// Cheap to clone; every clone talks to the one writer thread.
#[derive(Clone)]
pub struct StoreHandle {
    commands_tx: std_mpsc::Sender<Queued>,
    /// Room in the queue: one permit per command sent and not yet committed.
    slots: Arc<Semaphore>,
    capacity: usize,
    path: PathBuf,
    health: Arc<health::StoreHealth>,
}

pub struct Store;

/// Whether this process owns the database (the coordinator) or works beside its owner.
enum Opening {
    Owner,
    Beside,
}

impl Store {
    /// Opens (creating if needed) the database, migrates it, marks every agent offline (no connection
    /// survives a coordinator restart), and starts the writer thread.
    pub fn open(path: &Path) -> Result<(StoreHandle, thread::JoinHandle<()>), StoreError> {
        Self::open_with_capacity(path, MAX_PENDING_COMMANDS)
    }

    /// Opens an existing database that a running coordinator may be using at the same time (for
    /// `polarizer tokens create --offline`): nothing migrated (a schema other than this binary's is
    /// refused) and no agent marked offline; SQLite's locking keeps the two writers apart.
    pub fn open_beside(path: &Path) -> Result<(StoreHandle, thread::JoinHandle<()>), StoreError> {
        Self::start(path, MAX_PENDING_COMMANDS, Opening::Beside)
    }

    /// [`open`](Self::open) with room for `capacity` uncommitted commands (tests use a few).
    pub fn open_with_capacity(
        path: &Path,
        capacity: usize,
    ) -> Result<(StoreHandle, thread::JoinHandle<()>), StoreError> {
        Self::start(path, capacity, Opening::Owner)
    }

    fn start(
        path: &Path,
        capacity: usize,
        opening: Opening,
    ) -> Result<(StoreHandle, thread::JoinHandle<()>), StoreError> {
        debug_assert!(capacity > 0);
        let mut connection = open_connection(path)?;
        match opening {
            Opening::Owner => {
                migrate(&mut connection, path)?;
                agents::all_offline(&connection).map_err(sqlite_error(path))?;
            }
            Opening::Beside => {
                let found: i64 = connection
                    .query_row("PRAGMA user_version", [], |row| row.get(0))
                    .map_err(sqlite_error(path))?;
                if found != SCHEMA_VERSION {
                    return Err(StoreError::SchemaMismatch {
                        path: path.to_path_buf(),
                        found,
                        expected: SCHEMA_VERSION,
                    });
                }
            }
        }
        let (commands_tx, commands_rx) = std_mpsc::channel();
        let checkpoints = spawn_checkpointer(path)?;
        let writer_path = path.to_path_buf();
        let health = Arc::new(health::StoreHealth::default());
        let writer_health = health.clone();
        let join = thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || {
                run_writer(
                    connection,
                    commands_rx,
                    checkpoints,
                    writer_path,
                    &writer_health,
                )
            })
            .map_err(|err| StoreError::Sqlite {
                path: path.to_path_buf(),
                source: rusqlite::Error::ToSqlConversionFailure(Box::new(err)),
            })?;
        Ok((
            StoreHandle {
                commands_tx,
                slots: Arc::new(Semaphore::new(capacity)),
                capacity,
                path: path.to_path_buf(),
                health,
            },
            join,
        ))
    }
}

/// The writer's connection. `synchronous = FULL`: every commit syncs the WAL before it returns, and
/// agents are acknowledged only after the commit, so an acknowledged record survives a power cut, not
/// only a crash of this process (with `NORMAL` the last commits before a power cut may be lost while
/// the agents have already forgotten them).
fn open_connection(path: &Path) -> Result<Connection, StoreError> {
    let connection = Connection::open(path).map_err(sqlite_error(path))?;
    connection
        .execute_batch("PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON; PRAGMA busy_timeout = 5000; PRAGMA cache_size = -65536; PRAGMA temp_store = MEMORY;")
        .map_err(sqlite_error(path))?;
    connection.set_prepared_statement_cache_capacity(sql::STATEMENT_CACHE);
    Ok(connection)
}

fn migrate(connection: &mut Connection, path: &Path) -> Result<(), StoreError> {
    let found: i64 = connection
        .query_row("PRAGMA user_version", [], |row| row.get(0))
        .map_err(sqlite_error(path))?;
    if found > SCHEMA_VERSION {
        return Err(StoreError::SchemaTooNew {
            path: path.to_path_buf(),
            found,
            supported: SCHEMA_VERSION,
        });
    }
    for (index, migration) in MIGRATIONS.iter().enumerate().skip(found as usize) {
        let transaction = connection.transaction().map_err(sqlite_error(path))?;
        transaction
            .execute_batch(migration)
            .map_err(sqlite_error(path))?;
        transaction
            .pragma_update(None, "user_version", index as i64 + 1)
            .map_err(sqlite_error(path))?;
        transaction.commit().map_err(sqlite_error(path))?;
    }
    Ok(())
}

/// Sent once the batch's transaction has committed (or failed), never before.
type Reply = Box<dyn FnOnce(Result<(), &StoreError>)>;

/// At most this often the checkpointer copies committed pages from the WAL into the database file.
const CHECKPOINT_INTERVAL: std::time::Duration = std::time::Duration::from_millis(250);
/// WAL pages after a commit that ask the checkpointer to run (SQLite's own autocheckpoint default).
const CHECKPOINT_PAGES: i32 = 1_000;
/// WAL pages at which the writer checkpoints by itself: only when the checkpointer falls far behind.
const WRITER_CHECKPOINT_PAGES: i32 = 65_536;

/// A busy writer hands checkpoints to a thread of their own: once a commit leaves `CHECKPOINT_PAGES`
/// in the WAL and the writer was busy more than half the time since the last checkpoint, it asks for one (a
/// channel of one: requests coalesce) and the checkpointer, with its own connection, runs a passive
/// checkpoint, then rests for `CHECKPOINT_INTERVAL`. A writer with time to spare checkpoints itself: a
/// checkpoint beside commits makes them wait on the file system's syncs (measured: tail latency p99
/// 5 ms → 40 ms at 10,000 events/s), so it runs beside them only when throughput is what counts. It
/// ends when the writer does.
fn spawn_checkpointer(path: &Path) -> Result<std_mpsc::SyncSender<()>, StoreError> {
    let connection = open_connection(path)?;
    let (committed_tx, committed_rx) = std_mpsc::sync_channel::<()>(1);
    let checkpoint_path = path.to_path_buf();
    thread::Builder::new()
        .name("store-checkpoint".into())
        .spawn(move || {
            while committed_rx.recv().is_ok() {
                checkpoint(&connection, &checkpoint_path);
                thread::sleep(CHECKPOINT_INTERVAL);
            }
        })
        .map_err(|err| StoreError::Sqlite {
            path: path.to_path_buf(),
            source: rusqlite::Error::ToSqlConversionFailure(Box::new(err)),
        })?;
    Ok(committed_tx)
}

/// A passive checkpoint: copies what it can from the WAL without waiting for readers. A failure is
/// logged; the next one retries.
fn checkpoint(connection: &Connection, path: &Path) {
    if let Err(error) = connection.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
        tracing::warn!(path = %path.display(), %error, "WAL checkpoint failed; the next one retries");
    }
}

fn run_writer(
    mut connection: Connection,
    commands_rx: std_mpsc::Receiver<Queued>,
    checkpoints: std_mpsc::SyncSender<()>,
    path: PathBuf,
    health: &health::StoreHealth,
) {
    // The hook replaces SQLite's autocheckpoint: it runs after each commit with the WAL's page count.
    let wal_pages = std::sync::Arc::new(std::sync::atomic::AtomicI32::new(0));
    let hook_pages = wal_pages.clone();
    let hooked = connection
        .execute_batch("PRAGMA journal_size_limit = 67108864;")
        .and_then(|()| {
            connection.wal_hook(Some(move |wal: &mut rusqlite::hooks::Wal, pages: i32| {
                hook_pages.store(pages, std::sync::atomic::Ordering::Relaxed);
                if pages >= WRITER_CHECKPOINT_PAGES {
                    wal.checkpoint()?;
                }
                Ok(())
            }))
        });
    if let Err(error) = hooked {
        tracing::warn!(path = %path.display(), %error, "cannot hand checkpoints to their own thread");
    }
    // Time spent working and waiting since the last checkpoint.
    let (mut busy, mut idle) = (std::time::Duration::ZERO, std::time::Duration::ZERO);
    let mut waiting = std::time::Instant::now();
    // Block for the first command, then take everything else already waiting: one transaction for all.
    while let Ok(first) = commands_rx.recv() {
        let working = std::time::Instant::now();
        idle += working - waiting;
        let mut stopping = matches!(first.command, Command::Shutdown);
        let mut batch = Vec::new();
        // Their places in the queue, freed once the batch has committed.
        let mut slots = Vec::new();
        if !stopping {
            batch.push(first.command);
            slots.push(first.slot);
            while let Ok(next) = commands_rx.try_recv() {
                if matches!(next.command, Command::Shutdown) {
                    stopping = true;
                    break;
                }
                batch.push(next.command);
                slots.push(next.slot);
                if batch.len() >= MAX_BATCH_COMMANDS {
                    break;
                }
            }
        }
        // An import is a transaction of its own: one savepoint around it would journal every page it
        // changes. The commands before it commit first, those after it in the next transaction.
        let mut commands = batch.into_iter().peekable();
        while commands.peek().is_some() {
            if let Some(Command::ImportCatalog { .. }) = commands.peek() {
                if let Some(Command::ImportCatalog {
                    import,
                    facets,
                    reply,
                }) = commands.next()
                {
                    import_catalog(&mut connection, &import, facets, reply, &path);
                    // Freeing a large catalog takes a while; the next writes need not wait for it.
                    polarizer_shared::parallel::drop_elsewhere(import);
                }
                continue;
            }
            let mut replies: Vec<Reply> = Vec::new();
            let outcome = (|| -> Result<(), StoreError> {
                let mut transaction = connection.transaction().map_err(sqlite_error(&path))?;
                while let Some(command) =
                    commands.next_if(|command| !matches!(command, Command::ImportCatalog { .. }))
                {
                    apply(&mut transaction, command, &path, &mut replies)?;
                }
                transaction.commit().map_err(sqlite_error(&path))
            })();
            match &outcome {
                Ok(()) => health.committed(),
                Err(err) => {
                    tracing::error!(error = %err, "store transaction failed; its commands are rolled back");
                    health.failed(err);
                }
            }
            // Replies go out only after the commit, so a caller never acts on uncommitted state.
            for reply in replies {
                reply(outcome.as_ref().map(|_| ()));
            }
        }
        drop(slots);
        busy += working.elapsed();
        if wal_pages.load(std::sync::atomic::Ordering::Relaxed) >= CHECKPOINT_PAGES {
            // Busy more than half the time: hand it over; otherwise there is time for it here.
            if busy > idle {
                let _ = checkpoints.try_send(());
            } else {
                checkpoint(&connection, &path);
            }
            wal_pages.store(0, std::sync::atomic::Ordering::Relaxed);
            (busy, idle) = (std::time::Duration::ZERO, std::time::Duration::ZERO);
        }
        if stopping {
            break;
        }
        waiting = std::time::Instant::now();
    }
    tracing::debug!(path = %path.display(), "store writer stopped");
}

/// Stores an import all or nothing, replying after the commit. Its tests are written while its checks
/// still run elsewhere; nothing commits unless they pass and send its facets. Other writes wait
/// meanwhile, as they would for any import.
fn import_catalog(
    connection: &mut Connection,
    import: &Import,
    facets: oneshot::Receiver<FacetPostings>,
    reply: oneshot::Sender<Result<ImportSummary, StoreError>>,
    path: &Path,
) {
    let outcome = (|| {
        let transaction = connection.transaction().map_err(sqlite_error(path))?;
        let tests =
            crate::store::catalog::write_tests(&transaction, import).map_err(sqlite_error(path))?;
        let facets = facets
            .blocking_recv()
            .map_err(|_| StoreError::Transaction {
                reason: "the import failed its checks; nothing of it is stored".into(),
            })?;
        let summary =
            crate::store::catalog::write_facets_and_features(&transaction, import, &facets, tests)
                .map_err(sqlite_error(path))?;
        transaction.commit().map_err(sqlite_error(path))?;
        Ok(summary)
    })();
    let _ = reply.send(outcome);
}

fn apply(
    transaction: &mut rusqlite::Transaction<'_>,
    command: Command,
    path: &Path,
    replies: &mut Vec<Reply>,
) -> Result<(), StoreError> {
    let on_sqlite = sqlite_error(path);
    match command {
        Command::Enroll { enrollment, reply } => {
            let name = enrollment.name.clone();
            if let Some(digest) = &enrollment.host_token {
                if !agents::spend_host_token(transaction, digest, &name, enrollment.now_ms)
                    .map_err(&on_sqlite)?
                {
                    let _ = reply.send(Err(StoreError::HostTokenRefused { name }));
                    return Ok(());
                }
            }
            if !agents::enroll(transaction, &enrollment).map_err(&on_sqlite)? {
                let _ = reply.send(Err(StoreError::NameTaken { name }));
                return Ok(());
            }
            replies.push(Box::new(move |outcome| {
                let _ = reply.send(outcome.map_err(|err| StoreError::Transaction {
                    reason: err.to_string(),
                }));
            }));
        }
        Command::Connected {
            name,
            facts,
            address,
            now_ms,
        } => agents::connected(transaction, &name, &facts, &address, now_ms).map_err(&on_sqlite)?,
        Command::FactsChanged { name, facts } => {
            agents::facts_changed(transaction, &name, &facts).map_err(&on_sqlite)?
        }
        Command::Disconnected { name, now_ms } => {
            agents::disconnected(transaction, &name, now_ms).map_err(&on_sqlite)?
        }
        Command::Revoke {
            name,
            now_ms,
            reply,
        } => {
            let changed = agents::revoke(transaction, &name, now_ms).map_err(&on_sqlite)?;
            replies.push(Box::new(move |outcome| {
                let _ =
                    reply.send(
                        outcome
                            .map(|_| changed)
                            .map_err(|err| StoreError::Transaction {
                                reason: err.to_string(),
                            }),
                    );
            }));
        }
        Command::Write(work) => work(transaction, path, replies),
        // run_writer stops at it; it never reaches a transaction.
        Command::Shutdown => {}
        Command::ImportCatalog { import, reply, .. } => {
            // run_writer gives imports a transaction of their own; one arriving here is stored alone.
            let _ = reply.send(Err(StoreError::Transaction {
                reason: format!(
                    "import of {} reached a shared transaction",
                    import.source.location
                ),
            }));
        }
    }
    Ok(())
}

impl StoreHandle {
    /// `Some` while the store cannot commit (a full disk, an I/O error): since when, and why.
    pub fn failing(&self) -> Option<health::Failing> {
        self.health.failing()
    }

    /// Queues `command` once there is room: waits while [`MAX_PENDING_COMMANDS`] are uncommitted.
    async fn send(&self, command: Command) -> Result<(), StoreError> {
        let slot = self
            .slots
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| StoreError::Closed)?;
        self.commands_tx
            .send(Queued {
                command,
                slot: Some(slot),
            })
            .map_err(|_| StoreError::Closed)
    }

    /// Commands sent and not yet committed (for `/metrics`, and to show the bound holds).
    pub fn pending_commands(&self) -> usize {
        self.capacity - self.slots.available_permits()
    }

    /// Enrolls a new agent; with `host_token` (a per-host token's digest) that token is spent in the
    /// same transaction, or nothing is stored.
    pub async fn enroll(&self, enrollment: Enrollment) -> Result<(), StoreError> {
        let (reply, reply_rx) = oneshot::channel();
        self.send(Command::Enroll { enrollment, reply }).await?;
        reply_rx.await.map_err(|_| StoreError::Closed)?
    }

    /// Queued, not awaited: the caller goes on once the queue has room for it.
    pub async fn agent_connected(
        &self,
        name: &str,
        facts: AgentFacts,
        address: String,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        self.send(Command::Connected {
            name: name.to_string(),
            facts,
            address,
            now_ms,
        })
        .await
    }

    pub async fn facts_changed(&self, name: &str, facts: AgentFacts) -> Result<(), StoreError> {
        self.send(Command::FactsChanged {
            name: name.to_string(),
            facts,
        })
        .await
    }

    pub async fn agent_disconnected(&self, name: &str, now_ms: i64) -> Result<(), StoreError> {
        self.send(Command::Disconnected {
            name: name.to_string(),
            now_ms,
        })
        .await
    }

    /// Marks an agent revoked. Returns whether such an agent exists.
    pub async fn revoke(&self, name: &str, now_ms: i64) -> Result<bool, StoreError> {
        let (reply, reply_rx) = oneshot::channel();
        self.send(Command::Revoke {
            name: name.to_string(),
            now_ms,
            reply,
        })
        .await?;
        reply_rx.await.map_err(|_| StoreError::Closed)?
    }

    /// Admits an agent waiting for approval.
    pub async fn approve(&self, name: &str) -> Result<(), StoreError> {
        let name = name.to_string();
        self.write(move |savepoint, path| {
            agents::approve(savepoint, &name).map_err(sqlite_error(path))?
        })
        .await
    }

    /// Runs `work` on the writer thread in a savepoint; answers once the batch has committed. A failed
    /// `work` rolls back only its own savepoint.
    pub async fn write<T, F>(&self, work: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&rusqlite::Savepoint<'_>, &Path) -> Result<T, StoreError> + Send + 'static,
    {
        self.write_then(work, |_: &mut T| {}).await
    }

    /// [`write`](Self::write), and `committed` runs on the writer thread right after the commit: hooks
    /// of successive writes run in commit order (what live followers rely on).
    pub async fn write_then<T, F, H>(&self, work: F, committed: H) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&rusqlite::Savepoint<'_>, &Path) -> Result<T, StoreError> + Send + 'static,
        H: FnOnce(&mut T) + Send + 'static,
    {
        let (reply, reply_rx) = oneshot::channel();
        self.send(Command::Write(Box::new(
            move |transaction: &mut rusqlite::Transaction<'_>,
                  path: &Path,
                  replies: &mut Vec<Reply>| {
                let outcome = (|| {
                    let savepoint = transaction.savepoint().map_err(sqlite_error(path))?;
                    let value = work(&savepoint, path)?;
                    savepoint.commit().map_err(sqlite_error(path))?;
                    Ok(value)
                })();
                match outcome {
                    Ok(mut value) => replies.push(Box::new(move |outcome| match outcome {
                        Ok(()) => {
                            committed(&mut value);
                            let _ = reply.send(Ok(value));
                        }
                        Err(err) => {
                            let _ = reply.send(Err(StoreError::Transaction {
                                reason: err.to_string(),
                            }));
                        }
                    })),
                    Err(err) => {
                        let _ = reply.send(Err(err));
                    }
                }
            },
        )))
        .await?;
        reply_rx.await.map_err(|_| StoreError::Closed)?
    }

    /// Stores a checked catalog in one step: all of it, or (on error) nothing.
    pub async fn import_catalog(&self, import: Import) -> Result<ImportSummary, StoreError> {
        self.import_checked(import, |import| {
            Ok::<_, std::convert::Infallible>(import.facet_postings())
        })
        .await
        .map_err(|failed| match failed {
            ImportFailed::Store(err) => err,
            ImportFailed::Check(never) => match never {},
        })
    }

    /// Stores a catalog in one step, all of it or (on error) nothing, once `check` passes. `check` runs
    /// on a thread of its own while the writer already writes the tests' rows, and gives the facets the
    /// writer needs to finish; if it fails, the writer rolls back and that is the error.
    pub async fn import_checked<E: Send + 'static>(
        &self,
        import: Import,
        check: impl FnOnce(&Import) -> Result<FacetPostings, E> + Send + 'static,
    ) -> Result<ImportSummary, ImportFailed<E>> {
        let import = Arc::new(import);
        let (facets_tx, facets) = oneshot::channel();
        let (reply, reply_rx) = oneshot::channel();
        self.send(Command::ImportCatalog {
            import: import.clone(),
            facets,
            reply,
        })
        .await?;
        let checked = tokio::task::spawn_blocking(move || {
            let checked = check(&import);
            // The writer frees the import once it is done with it.
            polarizer_shared::parallel::drop_elsewhere(import);
            checked
        })
        .await;
        let checked = match checked {
            Ok(checked) => checked.map_err(ImportFailed::Check),
            Err(join) => Err(ImportFailed::Store(StoreError::Transaction {
                reason: format!("the import's checks stopped: {join}"),
            })),
        };
        // With the facets the writer commits. Without them it rolls back: on a failed check the sender
        // is dropped with this closure. A writer that failed already has dropped its end; its reply
        // says why. Either way, answer once it is done.
        let checked = checked.map(move |facets| {
            let _ = facets_tx.send(facets);
        });
        let stored = reply_rx.await.map_err(|_| StoreError::Closed);
        checked?;
        Ok(stored??)
    }

    /// Records a per-host enrollment token's digest for the agent `name`, valid until `expires_ms`.
    pub async fn create_host_token(
        &self,
        digest: String,
        name: String,
        now_ms: i64,
        expires_ms: i64,
    ) -> Result<(), StoreError> {
        self.write(move |savepoint, path| {
            agents::create_host_token(savepoint, &digest, &name, now_ms, expires_ms)
                .map_err(sqlite_error(path))
        })
        .await
    }

    /// Asks the writer to commit everything sent before and stop; join its thread to wait for that.
    /// Clones of this handle see `StoreError::Closed` from then on.
    pub fn shutdown(&self) {
        // Past the queue's bound: stopping never waits for room. Senders still waiting for room
        // were not sent before; they get `Closed`.
        self.slots.close();
        let _ = self.commands_tx.send(Queued {
            command: Command::Shutdown,
            slot: None,
        });
    }

    /// A read connection of its own (WAL: reads never wait for the writer).
    pub fn reader(&self) -> Result<Reader, StoreError> {
        Reader::open(&self.path)
    }

    /// Runs a read on a blocking thread with its own connection.
    pub async fn read<T, F>(&self, query: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Reader) -> Result<T, StoreError> + Send + 'static,
    {
        let handle = self.clone();
        tokio::task::spawn_blocking(move || query(&handle.reader()?))
            .await
            .map_err(|_| StoreError::Closed)?
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use polarizer_shared::protocol::AgentState;
    use rusqlite::params;

    #[tokio::test]
    async fn a_host_token_enrolls_its_agent_once_before_it_expires() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _writer) = Store::open(&dir.path().join("polarizer.db")).unwrap();
        store
            .create_host_token("t1".into(), "vm-1".into(), 10, 1_000)
            .await
            .unwrap();
        store
            .create_host_token("t2".into(), "vm-2".into(), 10, 20)
            .await
            .unwrap();
        let enroll = |name: &'static str, token: &'static str, now_ms: i64| {
            let store = store.clone();
            async move {
                store
                    .enroll(Enrollment {
                        name: name.to_string(),
                        credential_sha256: format!("secret of {name}"),
                        host_token: Some(token.to_string()),
                        approved: true,
                        facts: AgentFacts::for_test(name),
                        address: String::new(),
                        now_ms,
                    })
                    .await
            }
        };
        // Another agent's token, an expired one: refused, nothing stored.
        assert!(matches!(
            enroll("vm-3", "t1", 11).await,
            Err(StoreError::HostTokenRefused { .. })
        ));
        assert!(matches!(
            enroll("vm-2", "t2", 20).await,
            Err(StoreError::HostTokenRefused { .. })
        ));
        enroll("vm-1", "t1", 12).await.unwrap();
        // Spent: once is all.
        assert!(matches!(
            enroll("vm-1", "t1", 13).await,
            Err(StoreError::HostTokenRefused { .. })
        ));
        let agents = store.read(|reader| reader.agents()).await.unwrap();
        assert_eq!(agents.len(), 1);
        let token = store
            .read(|reader| reader.host_token("t1"))
            .await
            .unwrap()
            .unwrap();
        assert!(token.used);
    }

    #[test]
    fn the_writer_commits_durably_before_anything_is_acknowledged() {
        let dir = tempfile::tempdir().unwrap();
        let connection = open_connection(&dir.path().join("polarizer.db")).unwrap();
        let synchronous: i64 = connection
            .query_row("PRAGMA synchronous", [], |row| row.get(0))
            .unwrap();
        assert_eq!(synchronous, 2, "FULL: the WAL is synced at every commit");
        let journal: String = connection
            .query_row("PRAGMA journal_mode", [], |row| row.get(0))
            .unwrap();
        assert_eq!(journal, "wal");
    }

    #[tokio::test]
    async fn an_agent_enrolled_for_approval_waits_until_approved_once() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _writer) = Store::open(&dir.path().join("polarizer.db")).unwrap();
        for (name, approved) in [("vm-1", false), ("vm-2", true)] {
            store
                .enroll(Enrollment {
                    name: name.to_string(),
                    credential_sha256: format!("secret of {name}"),
                    host_token: None,
                    approved,
                    facts: AgentFacts::for_test(name),
                    address: String::new(),
                    now_ms: 1,
                })
                .await
                .unwrap();
        }
        let states = |store: StoreHandle| async move {
            let agents = store.read(|reader| reader.agents()).await.unwrap();
            agents.into_iter().map(|a| a.state).collect::<Vec<_>>()
        };
        assert_eq!(
            states(store.clone()).await,
            [AgentState::Pending, AgentState::Online]
        );
        let pending = |store: StoreHandle| async move {
            store
                .read(|reader| reader.agent("vm-1"))
                .await
                .unwrap()
                .unwrap()
                .pending
        };
        assert!(pending(store.clone()).await);
        assert!(matches!(
            store.approve("vm-2").await,
            Err(StoreError::NotPending { .. })
        ));
        assert!(matches!(
            store.approve("nobody").await,
            Err(StoreError::NoSuchAgent { .. })
        ));
        store.approve("vm-1").await.unwrap();
        assert!(!pending(store.clone()).await);
        assert!(matches!(
            store.approve("vm-1").await,
            Err(StoreError::NotPending { .. })
        ));
        assert_eq!(
            states(store.clone()).await,
            [AgentState::Offline, AgentState::Online]
        );
    }

    #[tokio::test]
    async fn a_store_opened_beside_the_coordinator_leaves_its_agents_and_schema_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("polarizer.db");
        let (owner, _writer) = Store::open(&path).unwrap();
        owner
            .enroll(Enrollment {
                name: "vm-1".to_string(),
                credential_sha256: "digest".into(),
                host_token: None,
                approved: true,
                facts: AgentFacts::for_test("vm-1"),
                address: String::new(),
                now_ms: 1,
            })
            .await
            .unwrap();
        let (beside, _beside_writer) = Store::open_beside(&path).unwrap();
        beside
            .create_host_token("t".into(), "vm-2".into(), 1, 100)
            .await
            .unwrap();
        let agents = owner.read(|reader| reader.agents()).await.unwrap();
        assert_eq!(agents[0].state, AgentState::Online, "still online");
        assert!(owner
            .read(|reader| reader.host_token("t"))
            .await
            .unwrap()
            .is_some());
        // An older or newer schema is not this binary's to touch.
        let other = dir.path().join("other.db");
        rusqlite::Connection::open(&other)
            .unwrap()
            .pragma_update(None, "user_version", 1)
            .unwrap();
        assert!(matches!(
            Store::open_beside(&other),
            Err(StoreError::SchemaMismatch { found: 1, .. })
        ));
    }

    #[tokio::test]
    async fn enrollment_revocation_and_restart_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("polarizer.db");
        {
            let (store, _writer) = Store::open(&path).unwrap();
            store
                .enroll(Enrollment {
                    name: "vm-1".to_string(),
                    credential_sha256: "digest".into(),
                    host_token: None,
                    approved: true,
                    facts: AgentFacts::for_test("vm-1"),
                    address: "127.0.0.1:1".into(),
                    now_ms: 10,
                })
                .await
                .unwrap();
            let taken = store
                .enroll(Enrollment {
                    name: "vm-1".to_string(),
                    credential_sha256: "other".into(),
                    host_token: None,
                    approved: true,
                    facts: AgentFacts::for_test("vm-1"),
                    address: String::new(),
                    now_ms: 11,
                })
                .await;
            assert!(matches!(taken, Err(StoreError::NameTaken { .. })));
            store
                .enroll(Enrollment {
                    name: "vm-2".to_string(),
                    credential_sha256: "digest2".into(),
                    host_token: None,
                    approved: true,
                    facts: AgentFacts::for_test("vm-2"),
                    address: String::new(),
                    now_ms: 12,
                })
                .await
                .unwrap();
            assert!(store.revoke("vm-2", 13).await.unwrap());
            assert!(!store.revoke("nobody", 13).await.unwrap());
            let agents = store.read(|reader| reader.agents()).await.unwrap();
            assert_eq!(
                agents
                    .iter()
                    .map(|a| (a.name.as_str(), a.state))
                    .collect::<Vec<_>>(),
                vec![("vm-1", AgentState::Online), ("vm-2", AgentState::Revoked)]
            );
        }
        // A restart finds the same rows, with no agent left online.
        let (store, _writer) = Store::open(&path).unwrap();
        let agents = store.read(|reader| reader.agents()).await.unwrap();
        assert_eq!(agents[0].state, AgentState::Offline);
        assert_eq!(agents[0].facts, AgentFacts::for_test("vm-1"));
        assert_eq!(agents[1].state, AgentState::Revoked);
        let stored = store
            .read(|reader| reader.agent("vm-1"))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(stored.credential_sha256, "digest");
    }

    /// A writer that cannot keep up holds at most its queue's capacity of commands; more senders
    /// wait for room (with an unbounded queue all 51 would sit in memory), and all commit once it can.
    #[tokio::test]
    async fn a_stuck_writer_holds_at_most_its_queue_and_senders_wait_for_room() {
        let dir = tempfile::tempdir().unwrap();
        let capacity = 4;
        let (store, _writer) =
            Store::open_with_capacity(&dir.path().join("polarizer.db"), capacity).unwrap();
        let (release_tx, release_rx) = std_mpsc::channel::<()>();
        let stuck = tokio::spawn({
            let store = store.clone();
            async move {
                store
                    .write(move |_, _| {
                        let _ = release_rx.recv();
                        Ok(())
                    })
                    .await
            }
        });
        let writes: Vec<_> = (0..50)
            .map(|seq| {
                let store = store.clone();
                tokio::spawn(async move {
                    store
                        .write(move |savepoint, path| {
                            savepoint
                                .execute(
                                    "INSERT INTO events (agent, seq, agent_ms, received_ms, kind, summary, data)
                                     VALUES ('vm-1', ?1, 0, 0, 'queued', '', '')",
                                    [seq],
                                )
                                .map_err(sqlite_error(path))
                        })
                        .await
                })
            })
            .collect();
        // Every sender runs as far as it can (one thread: each yield lets all of them take a step).
        for _ in 0..100 {
            tokio::task::yield_now().await;
        }
        assert_eq!(store.pending_commands(), capacity);
        release_tx.send(()).unwrap();
        stuck.await.unwrap().unwrap();
        for write in writes {
            assert_eq!(write.await.unwrap().unwrap(), 1);
        }
        let stored = store
            .read(|reader| {
                let everything = events::PageLimit {
                    rows: 100,
                    bytes: usize::MAX,
                };
                reader.events_page(&Default::default(), 0, everything)
            })
            .await
            .unwrap();
        assert_eq!(stored.len(), 50);
        // Every place is given back (by the writer, just after the replies go out).
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while store.pending_commands() > 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "places in the queue leak"
            );
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
    }

    /// Committed pages leave the WAL for the database file, by the checkpointer or by the writer: a WAL
    /// that is never copied back grows without bound.
    #[tokio::test]
    async fn the_wal_is_copied_back_into_the_database() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("polarizer.db");
        let (store, _writer) = Store::open(&path).unwrap();
        let database_bytes = || std::fs::metadata(&path).map(|meta| meta.len()).unwrap_or(0);
        let before = database_bytes();
        // About 8 MB of rows in a few transactions: well past the 1,000 pages that ask for a checkpoint.
        for batch in 0..4 {
            store
                .write(move |savepoint, path| {
                    let mut insert = savepoint
                        .prepare("INSERT INTO events (agent, seq, agent_ms, received_ms, kind, summary, data)
                                  VALUES ('vm-1', ?1, 0, 0, 'bench', '', ?2)")
                        .map_err(sqlite_error(path))?;
                    for seq in 0..2_000 {
                        insert
                            .execute(params![batch * 2_000 + seq, "x".repeat(1_000)])
                            .map_err(sqlite_error(path))?;
                    }
                    Ok(())
                })
                .await
                .unwrap();
        }
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while database_bytes() < before + 6_000_000 {
            assert!(
                std::time::Instant::now() < deadline,
                "the database file stayed at {} bytes: no checkpoint ran",
                database_bytes()
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    /// A catalog stored under schema 4 (text facet rows) reads the same after migration 5.
    #[test]
    fn facets_survive_the_migration_to_test_keys() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("polarizer.db");
        let connection = open_connection(&path).unwrap();
        for migration in &MIGRATIONS[..4] {
            connection.execute_batch(migration).unwrap();
        }
        connection
            .execute_batch(
                "PRAGMA user_version = 4;
                 INSERT INTO sources (id, location, tree_path, imported_at_ms) VALUES (1, '/tree', '/tree', 1);
                 INSERT INTO tests (id, name, source_id, summary, test_type, feature, tier, enabled, platform_kind,
                                    duration_seconds, metadata_json, updated_at_ms)
                 VALUES ('/b', '/b', 1, '', '', '', '', 1, '', 1, '{}', 1),
                        ('/a', '/a', 1, '', '', '', '', 1, '', 1, '{}', 1);
                 INSERT INTO test_facets VALUES ('/a', 'tag', 'smoke'), ('/b', 'tag', 'smoke'),
                                                ('/b', 'arch', 'x86_64');",
            )
            .unwrap();
        drop(connection);
        let (store, _writer) = Store::open(&path).unwrap();
        let reader = store.reader().unwrap();
        let names = |query: crate::store::catalog::TestQuery| -> Vec<String> {
            reader
                .tests(&query)
                .unwrap()
                .into_iter()
                .map(|test| test.name)
                .collect()
        };
        let query = crate::store::catalog::TestQuery {
            tag: Some("smoke".into()),
            ..Default::default()
        };
        assert_eq!(names(query), ["/a", "/b"]);
        let query = crate::store::catalog::TestQuery {
            arch: Some("aarch64".into()),
            ..Default::default()
        };
        assert_eq!(names(query), ["/a"], "/b needs x86_64");
    }

    #[test]
    fn a_newer_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("polarizer.db");
        Connection::open(&path)
            .unwrap()
            .pragma_update(None, "user_version", 99)
            .unwrap();
        let Err(err) = Store::open(&path) else {
            panic!("a newer schema must be refused")
        };
        assert!(err.to_string().contains("schema version 99"), "{err}");
    }
}
