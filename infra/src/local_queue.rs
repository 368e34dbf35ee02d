//! The embedded default's queues: SQLite-backed, with SQS's semantics where jitr
//! relies on them — visibility timeout, receive counts, redrive to a dead-letter
//! queue after `max_receives`, dead-lettering with a reason, delayed messages.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use rusqlite::{Connection, params};
use tokio::sync::Notify;

use crate::ports::{DeadLetter, Queue, QueueError, QueueMessage};
use crate::sim::SimClock;

const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS messages (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    queue         TEXT    NOT NULL,
    body          TEXT    NOT NULL,
    attributes    TEXT    NOT NULL,
    visible_at    INTEGER NOT NULL,
    receive_count INTEGER NOT NULL DEFAULT 0,
    receipt       TEXT,
    dead          INTEGER NOT NULL DEFAULT 0,
    reason        TEXT
);
CREATE INDEX IF NOT EXISTS messages_ready ON messages (queue, dead, visible_at);
"#;

/// One named queue (and its dead-letter queue) in a SQLite file.
#[derive(Clone)]
pub struct LocalQueue {
    conn: Arc<Mutex<Connection>>,
    name: String,
    max_receives: u32,
    visibility: Duration,
    clock: SimClock,
    published: Arc<Notify>,
}

fn err(queue: &str, e: impl std::fmt::Display) -> QueueError {
    QueueError {
        queue: queue.to_owned(),
        source: e.to_string().into(),
    }
}

impl LocalQueue {
    /// Opens queue `name` in the file at `path`.
    pub fn open(
        path: impl AsRef<Path>,
        name: &str,
        max_receives: u32,
        visibility: Duration,
        clock: SimClock,
    ) -> Result<Self, QueueError> {
        let conn = Connection::open(path.as_ref()).map_err(|e| err(name, e))?;
        conn.busy_timeout(Duration::from_secs(10))
            .and_then(|_| conn.pragma_update(None, "journal_mode", "WAL"))
            .and_then(|_| conn.execute_batch(SCHEMA))
            .map_err(|e| err(name, e))?;
        Ok(LocalQueue {
            conn: Arc::new(Mutex::new(conn)),
            name: name.to_owned(),
            max_receives,
            visibility,
            clock,
            published: Arc::new(Notify::new()),
        })
    }

    /// The queue's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn now(&self) -> i64 {
        (self.clock)().0
    }

    /// Messages waiting (visible or not) in the main queue.
    pub fn depth(&self) -> Result<u64, QueueError> {
        self.lock()
            .query_row(
                "SELECT COUNT(*) FROM messages WHERE queue = ?1 AND dead = 0",
                [&self.name],
                |r| r.get(0),
            )
            .map_err(|e| err(&self.name, e))
    }

    /// The dead-lettered messages with their reasons.
    pub fn dead_letters(&self) -> Result<Vec<(String, String)>, QueueError> {
        let conn = self.lock();
        let mut stmt = conn
            .prepare("SELECT body, COALESCE(reason, '') FROM messages WHERE queue = ?1 AND dead = 1 ORDER BY id")
            .map_err(|e| err(&self.name, e))?;
        let rows = stmt
            .query_map([&self.name], |r| Ok((r.get(0)?, r.get(1)?)))
            .map_err(|e| err(&self.name, e))?;
        rows.collect::<Result<_, _>>()
            .map_err(|e| err(&self.name, e))
    }

    fn take(&self, max: u32) -> Result<Vec<QueueMessage>, QueueError> {
        let now = self.now();
        let mut conn = self.lock();
        let tx = conn.transaction().map_err(|e| err(&self.name, e))?;
        let candidates: Vec<(i64, String, String, u32)> = {
            let mut stmt = tx
                .prepare_cached(
                    "SELECT id, body, attributes, receive_count FROM messages
                     WHERE queue = ?1 AND dead = 0 AND visible_at <= ?2 ORDER BY id LIMIT ?3",
                )
                .map_err(|e| err(&self.name, e))?;
            let rows = stmt
                .query_map(params![self.name, now, max], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
                })
                .map_err(|e| err(&self.name, e))?;
            rows.collect::<Result<_, _>>()
                .map_err(|e| err(&self.name, e))?
        };
        let mut out = Vec::new();
        for (id, body, attributes, count) in candidates {
            let count = count + 1;
            if count > self.max_receives {
                tx.execute(
                    "UPDATE messages SET dead = 1, reason = ?2 WHERE id = ?1",
                    params![
                        id,
                        format!(
                            "received {} times without success (max receives {})",
                            count - 1,
                            self.max_receives
                        )
                    ],
                )
                .map_err(|e| err(&self.name, e))?;
                continue;
            }
            let receipt = format!("{id}-{count}-{now}");
            tx.execute(
                "UPDATE messages SET receive_count = ?2, receipt = ?3, visible_at = ?4 WHERE id = ?1",
                params![id, count, receipt, now + self.visibility.as_millis() as i64],
            )
            .map_err(|e| err(&self.name, e))?;
            out.push(QueueMessage {
                id: id.to_string(),
                receipt,
                body,
                receive_count: count,
                attributes: serde_json::from_str(&attributes).unwrap_or_default(),
            });
        }
        tx.commit().map_err(|e| err(&self.name, e))?;
        Ok(out)
    }
}

#[async_trait]
impl Queue for LocalQueue {
    async fn publish(
        &self,
        body: &str,
        delay: Option<Duration>,
        attributes: &[(&str, &str)],
    ) -> Result<String, QueueError> {
        let attributes: HashMap<&str, &str> = attributes.iter().copied().collect();
        let visible_at = self.now() + delay.map_or(0, |d| d.as_millis() as i64);
        let id = {
            let conn = self.lock();
            conn.execute(
                "INSERT INTO messages (queue, body, attributes, visible_at) VALUES (?1, ?2, ?3, ?4)",
                params![
                    self.name,
                    body,
                    serde_json::to_string(&attributes).map_err(|e| err(&self.name, e))?,
                    visible_at
                ],
            )
            .map_err(|e| err(&self.name, e))?;
            conn.last_insert_rowid()
        };
        self.published.notify_waiters();
        Ok(id.to_string())
    }

    async fn receive(&self, max: u32, wait: Duration) -> Result<Vec<QueueMessage>, QueueError> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let got = self.take(max.clamp(1, 10))?;
            if !got.is_empty() || tokio::time::Instant::now() >= deadline {
                return Ok(got);
            }
            // Woken by a publish, or re-check for delayed and re-visible messages.
            let _ =
                tokio::time::timeout(Duration::from_millis(50), self.published.notified()).await;
        }
    }

    async fn ack(&self, message: &QueueMessage) -> Result<(), QueueError> {
        self.lock()
            .execute(
                "DELETE FROM messages WHERE receipt = ?1 AND dead = 0",
                [&message.receipt],
            )
            .map_err(|e| err(&self.name, e))?;
        Ok(())
    }

    async fn retry_later(&self, message: &QueueMessage, after: Duration) -> Result<(), QueueError> {
        self.lock()
            .execute(
                "UPDATE messages SET visible_at = ?2 WHERE receipt = ?1",
                params![message.receipt, self.now() + after.as_millis() as i64],
            )
            .map_err(|e| err(&self.name, e))?;
        Ok(())
    }

    async fn dead_letter(&self, message: &QueueMessage, reason: &str) -> Result<(), QueueError> {
        self.lock()
            .execute(
                "UPDATE messages SET dead = 1, reason = ?2 WHERE receipt = ?1",
                params![message.receipt, reason],
            )
            .map_err(|e| err(&self.name, e))?;
        Ok(())
    }

    async fn dead_letter_depth(&self) -> Result<u64, QueueError> {
        self.lock()
            .query_row(
                "SELECT COUNT(*) FROM messages WHERE queue = ?1 AND dead = 1",
                [&self.name],
                |r| r.get(0),
            )
            .map_err(|e| err(&self.name, e))
    }

    async fn waiting(&self) -> Result<u64, QueueError> {
        self.depth()
    }

    async fn list_dead_letters(&self, max: usize) -> Result<Vec<DeadLetter>, QueueError> {
        let conn = self.lock();
        let mut stmt = conn
            .prepare(
                "SELECT id, body, attributes, receive_count, COALESCE(reason, '') FROM messages
                 WHERE queue = ?1 AND dead = 1 ORDER BY id LIMIT ?2",
            )
            .map_err(|e| err(&self.name, e))?;
        let rows = stmt
            .query_map(params![self.name, max as i64], |r| {
                Ok(DeadLetter {
                    id: r.get::<_, i64>(0)?.to_string(),
                    body: r.get(1)?,
                    attributes: serde_json::from_str(&r.get::<_, String>(2)?).unwrap_or_default(),
                    receive_count: r.get(3)?,
                    reason: r.get(4)?,
                })
            })
            .map_err(|e| err(&self.name, e))?;
        rows.collect::<Result<_, _>>()
            .map_err(|e| err(&self.name, e))
    }

    async fn redrive(&self, ids: Option<&[String]>) -> Result<u64, QueueError> {
        let now = self.now();
        let moved = {
            let mut conn = self.lock();
            let tx = conn.transaction().map_err(|e| err(&self.name, e))?;
            let back = "UPDATE messages SET dead = 0, reason = NULL, receive_count = 0,
                        receipt = NULL, visible_at = ?2 WHERE queue = ?1 AND dead = 1";
            let moved = match ids {
                None => tx
                    .execute(back, params![self.name, now])
                    .map_err(|e| err(&self.name, e))?,
                Some(ids) => {
                    let mut moved = 0;
                    for id in ids {
                        let Ok(id) = id.parse::<i64>() else { continue };
                        moved += tx
                            .execute(&format!("{back} AND id = ?3"), params![self.name, now, id])
                            .map_err(|e| err(&self.name, e))?;
                    }
                    moved
                }
            };
            tx.commit().map_err(|e| err(&self.name, e))?;
            moved
        };
        self.published.notify_waiters();
        Ok(moved as u64)
    }

    async fn dead_letter_reasons(&self, max: usize) -> Result<Vec<String>, QueueError> {
        let conn = self.lock();
        let mut stmt = conn
            .prepare(
                "SELECT COALESCE(reason, '') FROM messages
                 WHERE queue = ?1 AND dead = 1 ORDER BY id DESC LIMIT ?2",
            )
            .map_err(|e| err(&self.name, e))?;
        let rows = stmt
            .query_map(params![self.name, max as i64], |r| r.get(0))
            .map_err(|e| err(&self.name, e))?;
        rows.collect::<Result<_, _>>()
            .map_err(|e| err(&self.name, e))
    }

    async fn purge_dead_letters(&self) -> Result<u64, QueueError> {
        let purged = self
            .lock()
            .execute(
                "DELETE FROM messages WHERE queue = ?1 AND dead = 1",
                [&self.name],
            )
            .map_err(|e| err(&self.name, e))?;
        Ok(purged as u64)
    }
}
