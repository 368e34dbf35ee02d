//! The embedded event log: one SQLite file (WAL), the same append contract as DynamoDB.
//!
//! Tables: `events` (global `position`, `UNIQUE(stream, seq)`), `streams` (the head:
//! version, status, folded state; partial indexes for open streams and instance ids),
//! `commands` (command id → first outcome), `checkpoints`. A `CHECK` on `streams`
//! refuses a closed head while an instance may be alive without `Terminated`, so
//! the database refuses what the domain refuses. See ADR-0002.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use jitr_domain::{
    InstanceId, LaunchOutcome, RunnerEvent, RunnerState, RunnerStatus, StreamId, Timestamp, evolve,
    is_terminal,
};
use rusqlite::{Connection, OpenFlags, OptionalExtension, TransactionBehavior, params};

use crate::ports::{
    AppendOutcome, Checkpoint, CheckpointStore, ClosedStream, CommandId, EVENT_SCHEMA, EventStore,
    ExpiringLog, Lease, OpenStreams, RecordedEvent, StoreError, StreamHead,
};

const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS events (
    position   INTEGER PRIMARY KEY AUTOINCREMENT,
    stream     TEXT    NOT NULL,
    seq        INTEGER NOT NULL,
    kind       TEXT    NOT NULL,
    schema     INTEGER NOT NULL,
    at         INTEGER NOT NULL,
    body       TEXT    NOT NULL,
    command_id TEXT    NOT NULL,
    UNIQUE (stream, seq)
);
CREATE TABLE IF NOT EXISTS streams (
    stream            TEXT PRIMARY KEY,
    version           INTEGER NOT NULL,
    status            TEXT    NOT NULL,
    instance_id       TEXT,
    runner_name       TEXT,
    instance_possible INTEGER NOT NULL,
    terminated        INTEGER NOT NULL,
    open              INTEGER NOT NULL,
    updated_at        INTEGER NOT NULL,
    state             TEXT    NOT NULL,
    CHECK (open = 1 OR terminated = 1 OR instance_possible = 0),
    CHECK (status NOT IN ('completed', 'failed') OR open = 0)
);
CREATE INDEX IF NOT EXISTS streams_open ON streams (stream) WHERE open = 1;
CREATE TABLE IF NOT EXISTS commands (
    command_id TEXT PRIMARY KEY,
    stream     TEXT    NOT NULL,
    version    INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS checkpoints (
    name       TEXT PRIMARY KEY,
    position   INTEGER NOT NULL,
    snapshot   BLOB    NOT NULL,
    generation INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS leases (
    name       TEXT PRIMARY KEY,
    holder     TEXT    NOT NULL,
    expires_at INTEGER NOT NULL
) WITHOUT ROWID;
INSERT OR IGNORE INTO meta (key, value) VALUES ('schema_version', '1');
"#;

/// The heads' look-up indexes (part of the schema; a bulk import may drop
/// them for its duration).
const HEAD_INDEXES: &str = r#"
CREATE INDEX IF NOT EXISTS streams_instance ON streams (instance_id) WHERE instance_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS streams_runner ON streams (runner_name) WHERE runner_name IS NOT NULL;
"#;

/// Rows a feed read makes room for at once.
const FEED_READ_RESERVE: usize = 10_000;

/// How much of the log file SQLite reads through a memory map instead of
/// copying each page out of the kernel (measured: 15 % of a replay's time).
const MMAP_BYTES: i64 = 1 << 36;

/// Rows one `INSERT` writes at most (at most 10 parameters each: well under
/// SQLite's 32,766).
const ROWS_PER_INSERT: usize = 256;

/// The events table's columns, in the order [`bind_event`] binds them.
const EVENT_COLUMNS: &str = "events (stream, seq, kind, schema, at, body, command_id)";
/// The heads' columns, in the order [`EncodedAppend::bind_head`] binds them.
const HEAD_COLUMNS: &str = "streams (stream, version, status, instance_id, instance_possible,
    terminated, open, updated_at, state, runner_name)";
/// The command records' columns.
const COMMAND_COLUMNS: &str = "commands (command_id, stream, version)";

/// `INSERT INTO {columns} VALUES` with `rows` rows of `width` parameters.
fn multi_insert(columns: &str, width: usize, rows: usize) -> String {
    let mut sql = format!("INSERT INTO {columns} VALUES ");
    for i in 0..rows {
        if i > 0 {
            sql.push(',');
        }
        sql.push('(');
        for j in 0..width {
            sql.push_str(if j == 0 { "?" } else { ",?" });
        }
        sql.push(')');
    }
    sql
}

/// Inserts `rows` into `columns`, [`ROWS_PER_INSERT`] to a statement;
/// `bind` binds one row's `width` values from the parameter index given.
fn insert_rows<T>(
    tx: &rusqlite::Transaction<'_>,
    columns: &str,
    width: usize,
    rows: &[T],
    bind: impl Fn(&mut rusqlite::CachedStatement<'_>, usize, &T) -> rusqlite::Result<()>,
) -> Result<(), StoreError> {
    for chunk in rows.chunks(ROWS_PER_INSERT) {
        let mut insert = tx
            .prepare_cached(&multi_insert(columns, width, chunk.len()))
            .map_err(unavailable)?;
        for (i, row) in chunk.iter().enumerate() {
            bind(&mut insert, i * width + 1, row).map_err(unavailable)?;
        }
        insert.raw_execute().map_err(map_write_error)?;
    }
    Ok(())
}

/// One event row: its stream's append, its index in the append.
type EventRow<'a> = (&'a EncodedAppend, usize);

/// Binds one event row from parameter `at`.
fn bind_event(
    stmt: &mut rusqlite::CachedStatement<'_>,
    at: usize,
    &(append, i): &EventRow<'_>,
) -> rusqlite::Result<()> {
    let (kind, time, body) = &append.events[i];
    stmt.raw_bind_parameter(at, append.stream.as_str())?;
    stmt.raw_bind_parameter(at + 1, append.first_seq + i as u64)?;
    stmt.raw_bind_parameter(at + 2, kind)?;
    stmt.raw_bind_parameter(at + 3, EVENT_SCHEMA)?;
    stmt.raw_bind_parameter(at + 4, time)?;
    stmt.raw_bind_parameter(at + 5, body)?;
    stmt.raw_bind_parameter(at + 6, &append.command_id.0)
}

/// The page cache of a connection that bulk-writes, KiB.
const IMPORT_CACHE_KIB: i64 = 256 * 1024;

/// The SQLite event log. Cheap to clone; each clone shares one connection.
/// Two `SqliteEventStore`s opened on the same file are two independent writers.
#[derive(Clone)]
pub struct SqliteEventStore {
    conn: Arc<Mutex<Connection>>,
    path: PathBuf,
    import: Arc<AtomicU8>,
}

/// No bulk import under way.
const NOT_IMPORTING: u8 = 0;
/// A bulk import into this new log is under way (ADR-0023).
const IMPORTING: u8 = 1;
/// A batch of the import failed: the log is unfinished for good.
const IMPORT_FAILED: u8 = 2;

/// The `meta` key whose presence marks a log whose bulk import did not finish.
const UNFINISHED_IMPORT: &str = "unfinished_import";

/// Refuses a log whose bulk import did not finish (its pages were written
/// without a journal: it may be incomplete or torn).
fn refuse_unfinished_import(conn: &Connection, path: &Path) -> Result<(), StoreError> {
    let unfinished: bool = conn
        .query_row(
            "SELECT EXISTS (SELECT 1 FROM meta WHERE key = ?1)",
            [UNFINISHED_IMPORT],
            |r| r.get(0),
        )
        .map_err(unavailable)?;
    if unfinished {
        return Err(StoreError::Refused(format!(
            "{}: a bulk import into this log did not finish; delete the file and import again",
            path.display()
        )));
    }
    Ok(())
}

fn unavailable(e: impl std::error::Error + Send + Sync + 'static) -> StoreError {
    StoreError::Unavailable(Box::new(e))
}

impl SqliteEventStore {
    /// Opens (creating if needed) the log at `path`.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, StoreError> {
        let path = path.as_ref().to_path_buf();
        let conn = Connection::open(&path).map_err(unavailable)?;
        conn.busy_timeout(Duration::from_secs(10))
            .map_err(unavailable)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(unavailable)?;
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(unavailable)?;
        conn.pragma_update(None, "mmap_size", MMAP_BYTES)
            .map_err(unavailable)?;
        migrate(&conn)?;
        conn.execute_batch(SCHEMA).map_err(unavailable)?;
        refuse_unfinished_import(&conn, &path)?;
        conn.execute_batch(HEAD_INDEXES).map_err(unavailable)?;
        conn.set_prepared_statement_cache_capacity(64);
        Ok(SqliteEventStore {
            conn: Arc::new(Mutex::new(conn)),
            path,
            import: Arc::default(),
        })
    }

    /// Opens an existing log for reading only: no schema migration, no journal-mode
    /// switch, nothing written (for `jitr audit` and `jitr history`). On read-only
    /// media, where SQLite cannot create the WAL index beside the file, it reads the
    /// file as immutable (a copy nothing else writes). Any write is refused.
    pub fn open_read_only(path: impl AsRef<Path>) -> Result<Self, StoreError> {
        let path = path.as_ref().to_path_buf();
        let flags = OpenFlags::SQLITE_OPEN_READ_ONLY
            | OpenFlags::SQLITE_OPEN_URI
            | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let usable = |conn: Connection| -> Result<Connection, StoreError> {
            conn.busy_timeout(Duration::from_secs(10))
                .map_err(unavailable)?;
            conn.pragma_update(None, "mmap_size", MMAP_BYTES)
                .map_err(unavailable)?;
            let version: String = conn
                .query_row(
                    "SELECT value FROM meta WHERE key = 'schema_version'",
                    [],
                    |r| r.get(0),
                )
                .map_err(unavailable)?;
            if version != "1" {
                return Err(StoreError::Refused(format!(
                    "{}: log schema {version}; this jitr reads schema 1",
                    path.display()
                )));
            }
            refuse_unfinished_import(&conn, &path)?;
            Ok(conn)
        };
        let live = Connection::open_with_flags(&path, flags)
            .map_err(unavailable)
            .and_then(usable);
        let conn = match live {
            Ok(conn) => conn,
            Err(StoreError::Refused(reason)) => return Err(StoreError::Refused(reason)),
            Err(live_error) => {
                let uri = format!("file:{}?immutable=1", uri_path(&path));
                Connection::open_with_flags(&uri, flags)
                    .map_err(unavailable)
                    .and_then(usable)
                    .map_err(|_| live_error)?
            }
        };
        Ok(SqliteEventStore {
            conn: Arc::new(Mutex::new(conn)),
            path,
            import: Arc::default(),
        })
    }

    /// Starts a bulk import into this log, which must be new (no event, no
    /// stream, no checkpoint): until [`Self::finish_import`] the log is
    /// marked unfinished (any `open` refuses it), [`Self::import_new_streams`]
    /// writes without a journal and without syncing, and the heads' random-key
    /// indexes are gone (built once at the end). Other writes keep an
    /// in-memory rollback journal, so a refused one still writes nothing. A
    /// crash, or a batch the import refuses, leaves a log to delete.
    pub fn begin_import(&self) -> Result<(), StoreError> {
        let conn = self.lock()?;
        let used: bool = conn
            .query_row(
                "SELECT EXISTS (SELECT 1 FROM events) OR EXISTS (SELECT 1 FROM streams)
                     OR EXISTS (SELECT 1 FROM checkpoints)
                     OR EXISTS (SELECT 1 FROM sqlite_sequence WHERE name = 'events')",
                [],
                |r| r.get(0),
            )
            .map_err(unavailable)?;
        if used {
            return Err(StoreError::Refused(format!(
                "{}: a bulk import writes only into a new log",
                self.path.display()
            )));
        }
        conn.execute(
            "INSERT OR REPLACE INTO meta (key, value) VALUES (?1, 'yes')",
            [UNFINISHED_IMPORT],
        )
        .map_err(unavailable)?;
        conn.execute_batch(
            "DROP INDEX IF EXISTS streams_instance; DROP INDEX IF EXISTS streams_runner;
             PRAGMA journal_mode = MEMORY; PRAGMA synchronous = OFF;",
        )
        .map_err(unavailable)?;
        self.import.store(IMPORTING, Ordering::SeqCst);
        Ok(())
    }

    /// Ends a bulk import that wrote every batch: builds the heads' indexes,
    /// syncs the file, returns to the write-ahead log and marks the log whole.
    pub fn finish_import(&self) -> Result<(), StoreError> {
        match self.import.load(Ordering::SeqCst) {
            IMPORTING => {}
            IMPORT_FAILED => {
                return Err(self.import_failed());
            }
            _ => return Err(StoreError::Refused("no bulk import under way".into())),
        }
        let conn = self.lock()?;
        // Built in a rollback-journal transaction synced in full: its commit
        // syncs the pages the import wrote unsynced too.
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(unavailable)?;
        conn.execute_batch(&format!("BEGIN; {HEAD_INDEXES} COMMIT;"))
            .map_err(unavailable)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(unavailable)?;
        conn.execute("DELETE FROM meta WHERE key = ?1", [UNFINISHED_IMPORT])
            .map_err(unavailable)?;
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(unavailable)?;
        self.import.store(NOT_IMPORTING, Ordering::SeqCst);
        Ok(())
    }

    /// The refusal of a write after a batch of the import failed.
    fn import_failed(&self) -> StoreError {
        StoreError::Refused(format!(
            "{}: a batch of this import failed; the log is unfinished: delete it",
            self.path.display()
        ))
    }

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, Connection>, StoreError> {
        self.conn
            .lock()
            .map_err(|_| StoreError::Refused("connection lock poisoned".into()))
    }

    /// Writes whole new streams in one transaction, each as one append at
    /// version 0 would (positions in the order given): the bulk writer of
    /// imports and benchmarks. Nothing is written when any stream exists or
    /// any command id was used ([`StoreError::Refused`]), except during a
    /// bulk import ([`Self::begin_import`]), which such a refusal ends,
    /// leaving an unfinished log. Blocks.
    pub fn import_new_streams(&self, streams: &[EncodedAppend]) -> Result<u64, StoreError> {
        let mut conn = self.lock()?;
        let importing = match self.import.load(Ordering::SeqCst) {
            IMPORT_FAILED => {
                return Err(self.import_failed());
            }
            state => state == IMPORTING,
        };
        // The indexes' pages stay in memory across a bulk write's batches.
        conn.pragma_update(None, "cache_size", -IMPORT_CACHE_KIB)
            .map_err(unavailable)?;
        if importing {
            conn.pragma_update(None, "journal_mode", "OFF")
                .map_err(unavailable)?;
        }
        let written = Self::write_new_streams(&mut conn, streams);
        if importing {
            if written.is_err() {
                // Without a journal nothing was rolled back.
                self.import.store(IMPORT_FAILED, Ordering::SeqCst);
            }
            conn.pragma_update(None, "journal_mode", "MEMORY")
                .map_err(unavailable)?;
        }
        written
    }

    fn write_new_streams(
        conn: &mut Connection,
        streams: &[EncodedAppend],
    ) -> Result<u64, StoreError> {
        if let Some(stream) = streams.iter().find(|s| s.first_seq != 1) {
            return Err(StoreError::Refused(format!(
                "{}: not a new stream's first events",
                stream.stream
            )));
        }
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(unavailable)?;
        // Many streams' rows to a statement, events in the order given.
        let mut written = 0;
        let mut rows: Vec<EventRow<'_>> = Vec::with_capacity(ROWS_PER_INSERT);
        let mut first = 0;
        for (n, stream) in streams.iter().enumerate() {
            rows.extend((0..stream.events.len()).map(|i| (stream, i)));
            if rows.len() < ROWS_PER_INSERT && n + 1 < streams.len() {
                continue;
            }
            let group = &streams[first..=n];
            insert_rows(&tx, EVENT_COLUMNS, 7, &rows, bind_event)?;
            insert_rows(&tx, HEAD_COLUMNS, 10, group, EncodedAppend::bind_head)?;
            insert_rows(&tx, COMMAND_COLUMNS, 3, group, EncodedAppend::bind_command)?;
            written += rows.len() as u64;
            rows.clear();
            first = n + 1;
        }
        tx.commit().map_err(map_write_error)?;
        Ok(written)
    }

    /// The file behind this log.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `f` on the connection off the async executor.
    async fn with_conn<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let conn = Arc::clone(&self.conn);
        tokio::task::spawn_blocking(move || {
            let mut guard = conn
                .lock()
                .map_err(|_| StoreError::Refused("connection lock poisoned".into()))?;
            f(&mut guard)
        })
        .await
        .map_err(unavailable)?
    }

    /// The stream whose head has `column = value` (an indexed column).
    async fn stream_where(
        &self,
        column: &'static str,
        value: String,
    ) -> Result<Option<StreamId>, StoreError> {
        self.with_conn(move |conn| {
            let found: Option<String> = conn
                .query_row(
                    &format!("SELECT stream FROM streams WHERE {column} = ?1"),
                    [&value],
                    |r| r.get(0),
                )
                .optional()
                .map_err(unavailable)?;
            found
                .map(|s| {
                    StreamId::parse(&s).map_err(|e| StoreError::Corrupt {
                        stream: s.clone(),
                        position: 0,
                        reason: e.to_string(),
                    })
                })
                .transpose()
        })
        .await
    }

    /// Runs raw SQL against the log, bypassing the domain: for tests that show the
    /// database itself refuses an invariant-breaking write.
    pub async fn execute_raw(&self, sql: impl Into<String>) -> Result<usize, StoreError> {
        let sql = sql.into();
        self.with_conn(move |conn| conn.execute(&sql, []).map_err(map_write_error))
            .await
    }
}

/// Brings a log written by an older build up to this schema.
fn migrate(conn: &Connection) -> Result<(), StoreError> {
    let any = |sql: &str| -> Result<bool, StoreError> {
        conn.query_row(sql, [], |r| r.get::<_, i64>(0))
            .map(|n| n > 0)
            .map_err(unavailable)
    };
    let table = |name: &str| {
        any(&format!(
            "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = '{name}'"
        ))
    };
    let column = |table: &str, name: &str| {
        any(&format!(
            "SELECT COUNT(*) FROM pragma_table_info('{table}') WHERE name = '{name}'"
        ))
    };
    if table("streams")? && !column("streams", "runner_name")? {
        conn.execute_batch(
            "ALTER TABLE streams ADD COLUMN runner_name TEXT;
             UPDATE streams SET runner_name = json_extract(state, '$.runner_name');",
        )
        .map_err(unavailable)?;
    }
    if table("checkpoints")? && !column("checkpoints", "generation")? {
        conn.execute_batch(
            "ALTER TABLE checkpoints ADD COLUMN generation INTEGER NOT NULL DEFAULT 0;
             UPDATE checkpoints SET generation = 1;",
        )
        .map_err(unavailable)?;
    }
    Ok(())
}

/// `path` as the path of an SQLite `file:` URI (`%`, `?` and `#` escaped).
fn uri_path(path: &Path) -> String {
    let mut out = String::new();
    for c in path.to_string_lossy().chars() {
        match c {
            '%' => out.push_str("%25"),
            '?' => out.push_str("%3f"),
            '#' => out.push_str("%23"),
            c => out.push(c),
        }
    }
    out
}

fn map_write_error(e: rusqlite::Error) -> StoreError {
    match &e {
        rusqlite::Error::SqliteFailure(f, msg)
            if f.code == rusqlite::ErrorCode::ConstraintViolation =>
        {
            StoreError::Refused(msg.clone().unwrap_or_else(|| e.to_string()))
        }
        _ => unavailable(e),
    }
}

/// Events of one stream encoded as rows, with the head they leave: the CPU
/// half of an append, which the bulk writer runs on another thread than the
/// SQLite half.
pub struct EncodedAppend {
    stream: StreamId,
    first_seq: u64,
    events: Vec<(&'static str, i64, String)>,
    command_id: CommandId,
    version: u64,
    status: &'static str,
    instance_id: Option<String>,
    instance_possible: bool,
    terminated: bool,
    open: bool,
    updated_at: i64,
    state: String,
    runner_name: Option<String>,
}

impl EncodedAppend {
    /// Encodes `events` appended after version `actual` of `stream`, whose
    /// state at that version is `state`.
    pub fn new(
        stream: &StreamId,
        actual: u64,
        mut state: RunnerState,
        events: &[RunnerEvent],
        command_id: &CommandId,
    ) -> Result<Self, StoreError> {
        if events.is_empty() {
            return Err(StoreError::NothingToAppend);
        }
        let mut rows = Vec::with_capacity(events.len());
        for event in events {
            let body = serde_json::to_string(event).map_err(unavailable)?;
            rows.push((event.kind(), event.at().0, body));
            state = evolve(state, event);
        }
        Ok(EncodedAppend {
            stream: stream.clone(),
            first_seq: actual + 1,
            events: rows,
            command_id: command_id.clone(),
            version: actual + events.len() as u64,
            status: state.status().as_str(),
            instance_id: state.instance().map(|i| i.id.0.clone()),
            instance_possible: matches!(
                state.launch.as_ref().map(|l| &l.outcome),
                Some(LaunchOutcome::Pending | LaunchOutcome::Launched(_))
            ),
            terminated: state.terminated_at.is_some(),
            open: !is_terminal(&state),
            updated_at: events.last().map(|e| e.at().0).unwrap_or_default(),
            state: serde_json::to_string(&state).map_err(unavailable)?,
            runner_name: state.runner_name.clone(),
        })
    }

    /// Events encoded.
    pub fn len(&self) -> usize {
        self.events.len()
    }

    /// Whether no event is encoded (never: [`EncodedAppend::new`] refuses).
    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }

    /// Writes the rows: the events, the head (inserted, or updated when
    /// `upsert`), the command. Returns the new version.
    fn write(&self, tx: &rusqlite::Transaction<'_>, upsert: bool) -> Result<u64, StoreError> {
        // One statement for a stream's events, not one each.
        let rows: Vec<EventRow<'_>> = (0..self.events.len()).map(|i| (self, i)).collect();
        insert_rows(tx, EVENT_COLUMNS, 7, &rows, bind_event)?;
        let one = std::slice::from_ref(self);
        if upsert {
            let mut stmt = tx
                .prepare_cached(
                    "INSERT INTO streams (stream, version, status, instance_id, instance_possible,
                                          terminated, open, updated_at, state, runner_name)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)
                     ON CONFLICT (stream) DO UPDATE SET
                         version = excluded.version, status = excluded.status,
                         instance_id = excluded.instance_id,
                         instance_possible = excluded.instance_possible,
                         terminated = excluded.terminated, open = excluded.open,
                         updated_at = excluded.updated_at, state = excluded.state,
                         runner_name = excluded.runner_name",
                )
                .map_err(unavailable)?;
            Self::bind_head(&mut stmt, 1, self).map_err(unavailable)?;
            stmt.raw_execute().map_err(map_write_error)?;
        } else {
            insert_rows(tx, HEAD_COLUMNS, 10, one, Self::bind_head)?;
        }
        insert_rows(tx, COMMAND_COLUMNS, 3, one, Self::bind_command)?;
        Ok(self.version)
    }

    /// Binds the head this append leaves from parameter `at`.
    fn bind_head(
        stmt: &mut rusqlite::CachedStatement<'_>,
        at: usize,
        head: &Self,
    ) -> rusqlite::Result<()> {
        stmt.raw_bind_parameter(at, head.stream.as_str())?;
        stmt.raw_bind_parameter(at + 1, head.version)?;
        stmt.raw_bind_parameter(at + 2, head.status)?;
        stmt.raw_bind_parameter(at + 3, &head.instance_id)?;
        stmt.raw_bind_parameter(at + 4, head.instance_possible)?;
        stmt.raw_bind_parameter(at + 5, head.terminated)?;
        stmt.raw_bind_parameter(at + 6, head.open)?;
        stmt.raw_bind_parameter(at + 7, head.updated_at)?;
        stmt.raw_bind_parameter(at + 8, &head.state)?;
        stmt.raw_bind_parameter(at + 9, &head.runner_name)
    }

    /// Binds the record of this append's command from parameter `at`.
    fn bind_command(
        stmt: &mut rusqlite::CachedStatement<'_>,
        at: usize,
        append: &Self,
    ) -> rusqlite::Result<()> {
        stmt.raw_bind_parameter(at, &append.command_id.0)?;
        stmt.raw_bind_parameter(at + 1, append.stream.as_str())?;
        stmt.raw_bind_parameter(at + 2, append.version)
    }
}

fn append_blocking(
    conn: &mut Connection,
    stream: &StreamId,
    expected_version: u64,
    events: &[RunnerEvent],
    command_id: &CommandId,
) -> Result<AppendOutcome, StoreError> {
    if events.is_empty() {
        return Err(StoreError::NothingToAppend);
    }
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(unavailable)?;
    let earlier: Option<(String, u64)> = tx
        .query_row(
            "SELECT stream, version FROM commands WHERE command_id = ?1",
            [&command_id.0],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()
        .map_err(unavailable)?;
    if let Some((first_stream, version)) = earlier {
        let stream = StreamId::parse(&first_stream).map_err(|e| StoreError::Corrupt {
            stream: first_stream,
            position: 0,
            reason: e.to_string(),
        })?;
        return Ok(AppendOutcome::Duplicate { stream, version });
    }
    let head: Option<(u64, String)> = tx
        .query_row(
            "SELECT version, state FROM streams WHERE stream = ?1",
            [stream.as_str()],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()
        .map_err(unavailable)?;
    let (actual, state) = match head {
        Some((version, json)) => (
            version,
            serde_json::from_str::<RunnerState>(&json).map_err(|e| StoreError::Corrupt {
                stream: stream.to_string(),
                position: 0,
                reason: format!("head state: {e}"),
            })?,
        ),
        None => (0, RunnerState::default()),
    };
    if actual != expected_version {
        return Err(StoreError::Conflict {
            stream: stream.clone(),
            expected: expected_version,
            actual,
        });
    }
    let version =
        EncodedAppend::new(stream, actual, state, events, command_id)?.write(&tx, true)?;
    tx.commit().map_err(map_write_error)?;
    Ok(AppendOutcome::Appended { version })
}

/// Every event of `stream`, in order.
fn stream_blocking(conn: &Connection, stream: &StreamId) -> Result<Vec<RecordedEvent>, StoreError> {
    let mut stmt = conn
        .prepare_cached(
            "SELECT position, seq, schema, body FROM events
             WHERE stream = ?1 ORDER BY seq",
        )
        .map_err(unavailable)?;
    let rows = stmt
        .query_map([stream.as_str()], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get::<_, String>(3)?))
        })
        .map_err(unavailable)?;
    rows.map(|row| {
        let (position, seq, schema, body) = row.map_err(unavailable)?;
        recorded(position, stream.as_str(), seq, schema, &body)
    })
    .collect()
}

fn recorded(
    position: u64,
    stream: &str,
    seq: u64,
    schema: u32,
    body: &str,
) -> Result<RecordedEvent, StoreError> {
    let corrupt = |stream: &str, reason: String| StoreError::Corrupt {
        stream: stream.to_owned(),
        position,
        reason,
    };
    let event = crate::ports::decode_event(stream, position, schema, body)?;
    let stream = StreamId::parse(stream).map_err(|e| corrupt(stream, e.to_string()))?;
    Ok(RecordedEvent {
        stream,
        seq,
        position,
        event,
    })
}

/// A head row: stream, version, state, updated_at, and the stored status and
/// open flag (what the database holds, which a reader reports as such).
type HeadRow = (String, u64, String, i64, String, bool);

fn head_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<HeadRow> {
    Ok((
        row.get(0)?,
        row.get(1)?,
        row.get(2)?,
        row.get(3)?,
        row.get(4)?,
        row.get(5)?,
    ))
}

fn to_head(
    (stream, version, state_json, updated_at, status, open): HeadRow,
) -> Result<StreamHead, StoreError> {
    let state: RunnerState =
        serde_json::from_str(&state_json).map_err(|e| StoreError::Corrupt {
            stream: stream.clone(),
            position: 0,
            reason: format!("head state: {e}"),
        })?;
    let stream = StreamId::parse(&stream).map_err(|e| StoreError::Corrupt {
        stream,
        position: 0,
        reason: e.to_string(),
    })?;
    let status: RunnerStatus =
        serde_json::from_value(serde_json::Value::String(status)).map_err(|e| {
            StoreError::Corrupt {
                stream: stream.to_string(),
                position: 0,
                reason: format!("head status: {e}"),
            }
        })?;
    Ok(StreamHead {
        stream,
        version,
        status,
        instance_id: state.instance().map(|i| i.id.clone()),
        open,
        updated_at: Timestamp(updated_at),
        state,
    })
}

#[async_trait]
impl EventStore for SqliteEventStore {
    async fn append(
        &self,
        stream: &StreamId,
        expected_version: u64,
        events: &[RunnerEvent],
        command_id: &CommandId,
    ) -> Result<AppendOutcome, StoreError> {
        let (stream, events, command_id) = (stream.clone(), events.to_vec(), command_id.clone());
        self.with_conn(move |conn| {
            append_blocking(conn, &stream, expected_version, &events, &command_id)
        })
        .await
    }

    async fn read_stream(&self, stream: &StreamId) -> Result<Vec<RecordedEvent>, StoreError> {
        let stream = stream.clone();
        self.with_conn(move |conn| stream_blocking(conn, &stream))
            .await
    }

    async fn read_all(&self, after: u64, limit: usize) -> Result<Vec<RecordedEvent>, StoreError> {
        self.with_conn(move |conn| {
            let mut stmt = conn
                .prepare_cached(
                    "SELECT position, stream, seq, schema, body FROM events
                     WHERE position > ?1 ORDER BY position LIMIT ?2",
                )
                .map_err(unavailable)?;
            let mut rows = stmt
                .query(params![after, limit as u64])
                .map_err(unavailable)?;
            let mut out = Vec::with_capacity(limit.min(FEED_READ_RESERVE));
            // Borrowed text: no copy of a row's stream and body before decoding.
            while let Some(r) = rows.next().map_err(unavailable)? {
                let text = |i: usize| -> Result<&str, StoreError> {
                    r.get_ref(i)
                        .map_err(unavailable)?
                        .as_str()
                        .map_err(unavailable)
                };
                out.push(recorded(
                    r.get(0).map_err(unavailable)?,
                    text(1)?,
                    r.get(2).map_err(unavailable)?,
                    r.get(3).map_err(unavailable)?,
                    text(4)?,
                )?);
            }
            Ok(out)
        })
        .await
    }

    async fn head(&self, stream: &StreamId) -> Result<Option<StreamHead>, StoreError> {
        let stream = stream.clone();
        self.with_conn(move |conn| {
            conn.query_row(
                "SELECT stream, version, state, updated_at, status, open FROM streams WHERE stream = ?1",
                [stream.as_str()],
                head_from_row,
            )
            .optional()
            .map_err(unavailable)?
            .map(to_head)
            .transpose()
        })
        .await
    }

    async fn stream_of_instance(
        &self,
        instance: &InstanceId,
    ) -> Result<Option<StreamId>, StoreError> {
        self.stream_where("instance_id", instance.0.clone()).await
    }

    async fn stream_of_runner(&self, runner_name: &str) -> Result<Option<StreamId>, StoreError> {
        self.stream_where("runner_name", runner_name.to_owned())
            .await
    }

    async fn open_streams(&self) -> Result<OpenStreams, StoreError> {
        self.with_conn(move |conn| {
            let mut stmt = conn
                .prepare_cached(
                    "SELECT stream, version, state, updated_at, status, open FROM streams
                     WHERE open = 1 ORDER BY stream",
                )
                .map_err(unavailable)?;
            let rows = stmt.query_map([], head_from_row).map_err(unavailable)?;
            let mut results = Vec::new();
            for row in rows {
                let row = row.map_err(unavailable)?;
                results.push((row.0.clone(), to_head(row)));
            }
            Ok(OpenStreams::collect(results))
        })
        .await
    }

    async fn last_position(&self) -> Result<u64, StoreError> {
        // The sequence remembers positions whose events were archived away.
        self.with_conn(move |conn| {
            conn.query_row(
                "SELECT MAX(COALESCE((SELECT MAX(position) FROM events), 0),
                            COALESCE((SELECT seq FROM sqlite_sequence WHERE name = 'events'), 0))",
                [],
                |r| r.get(0),
            )
            .map_err(unavailable)
        })
        .await
    }
}

#[async_trait]
impl ExpiringLog for SqliteEventStore {
    async fn closed_before(&self, before: Timestamp) -> Result<Vec<ClosedStream>, StoreError> {
        self.with_conn(move |conn| {
            let mut stmt = conn
                .prepare(
                    "SELECT stream, version, updated_at FROM streams
                     WHERE open = 0 AND updated_at < ?1 ORDER BY updated_at, stream",
                )
                .map_err(unavailable)?;
            let rows = stmt
                .query_map([before.0], |r| {
                    Ok((r.get::<_, String>(0)?, r.get(1)?, r.get(2)?))
                })
                .map_err(unavailable)?;
            rows.map(|row| {
                let (stream, version, at) = row.map_err(unavailable)?;
                Ok(ClosedStream {
                    stream: StreamId::parse(&stream).map_err(|e| StoreError::Corrupt {
                        stream,
                        position: 0,
                        reason: e.to_string(),
                    })?,
                    version,
                    closed_at: Timestamp(at),
                })
            })
            .collect()
        })
        .await
    }

    async fn read_closed(
        &self,
        streams: &[ClosedStream],
    ) -> Result<Vec<Vec<RecordedEvent>>, StoreError> {
        // One trip off the executor for them all, not one per stream.
        let streams = streams.to_vec();
        self.with_conn(move |conn| {
            streams
                .iter()
                .map(|closed| stream_blocking(conn, &closed.stream))
                .collect()
        })
        .await
    }

    async fn expire(&self, streams: &[ClosedStream], _now: Timestamp) -> Result<u64, StoreError> {
        let streams = streams.to_vec();
        self.with_conn(move |conn| {
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(unavailable)?;
            let mut events = 0;
            for closed in &streams {
                let stream = closed.stream.as_str();
                let refused = |what: String| StoreError::Refused(format!("{stream}: {what}"));
                let heads = tx
                    .prepare_cached(
                        "DELETE FROM streams WHERE stream = ?1 AND open = 0 AND version = ?2",
                    )
                    .map_err(unavailable)?
                    .execute(params![stream, closed.version])
                    .map_err(map_write_error)?;
                if heads != 1 {
                    return Err(refused(format!(
                        "not closed at version {}: not let go",
                        closed.version
                    )));
                }
                tx.prepare_cached(
                    "DELETE FROM commands WHERE command_id IN
                     (SELECT command_id FROM events WHERE stream = ?1)",
                )
                .map_err(unavailable)?
                .execute([stream])
                .map_err(map_write_error)?;
                let deleted = tx
                    .prepare_cached("DELETE FROM events WHERE stream = ?1")
                    .map_err(unavailable)?
                    .execute([stream])
                    .map_err(map_write_error)? as u64;
                if deleted != closed.version {
                    return Err(refused(format!(
                        "holds {deleted} events, not its version {}: not let go",
                        closed.version
                    )));
                }
                events += deleted;
            }
            tx.commit().map_err(map_write_error)?;
            Ok(events)
        })
        .await
    }
}

#[async_trait]
impl CheckpointStore for SqliteEventStore {
    async fn load_checkpoint(&self, name: &str) -> Result<Option<Checkpoint>, StoreError> {
        let name = name.to_owned();
        self.with_conn(move |conn| {
            conn.query_row(
                "SELECT position, snapshot, generation FROM checkpoints WHERE name = ?1",
                [&name],
                |r| {
                    Ok(Checkpoint {
                        position: r.get(0)?,
                        snapshot: r.get(1)?,
                        generation: r.get(2)?,
                    })
                },
            )
            .optional()
            .map_err(unavailable)
        })
        .await
    }

    async fn save_checkpoint(
        &self,
        name: &str,
        checkpoint: &Checkpoint,
    ) -> Result<u64, StoreError> {
        let (name, checkpoint) = (name.to_owned(), checkpoint.clone());
        self.with_conn(move |conn| {
            let expected = checkpoint.generation;
            // One statement: the check and the write are atomic across processes.
            let written = if expected == 0 {
                conn.execute(
                    "INSERT INTO checkpoints (name, position, snapshot, generation)
                     VALUES (?1, ?2, ?3, 1) ON CONFLICT (name) DO NOTHING",
                    params![name, checkpoint.position, checkpoint.snapshot],
                )
            } else {
                conn.execute(
                    "UPDATE checkpoints SET position = ?2, snapshot = ?3, generation = ?4 + 1
                     WHERE name = ?1 AND generation = ?4",
                    params![name, checkpoint.position, checkpoint.snapshot, expected],
                )
            }
            .map_err(map_write_error)?;
            if written == 1 {
                return Ok(expected + 1);
            }
            let found: u64 = conn
                .query_row(
                    "SELECT generation FROM checkpoints WHERE name = ?1",
                    [&name],
                    |r| r.get(0),
                )
                .optional()
                .map_err(unavailable)?
                .unwrap_or(0);
            Err(StoreError::CheckpointMoved {
                name,
                expected,
                found,
            })
        })
        .await
    }

    async fn acquire_lease(
        &self,
        name: &str,
        holder: &str,
        now: Timestamp,
        ttl_ms: u64,
    ) -> Result<Lease, StoreError> {
        let (name, holder) = (name.to_owned(), holder.to_owned());
        self.with_conn(move |conn| {
            conn.execute(
                "INSERT INTO leases (name, holder, expires_at) VALUES (?1, ?2, ?3 + ?4)
                 ON CONFLICT (name) DO UPDATE SET
                     holder = excluded.holder, expires_at = excluded.expires_at
                 WHERE leases.holder = excluded.holder OR leases.expires_at <= ?3",
                params![name, holder, now.0, ttl_ms as i64],
            )
            .map_err(map_write_error)?;
            conn.query_row(
                "SELECT holder, expires_at FROM leases WHERE name = ?1",
                [&name],
                |r| {
                    Ok(Lease {
                        holder: r.get(0)?,
                        expires_at: Timestamp(r.get(1)?),
                    })
                },
            )
            .map_err(unavailable)
        })
        .await
    }

    async fn release_lease(&self, name: &str, holder: &str) -> Result<(), StoreError> {
        let (name, holder) = (name.to_owned(), holder.to_owned());
        self.with_conn(move |conn| {
            conn.execute(
                "DELETE FROM leases WHERE name = ?1 AND holder = ?2",
                params![name, holder],
            )
            .map(|_| ())
            .map_err(map_write_error)
        })
        .await
    }
}
