//! The watch service's durable queue: an SQLite database in the results folder.
//!
//! In: observations of slide files (path, size, modification time) and analysis outcomes. Out:
//! each slide version's state — `stable` (settled, waiting), `running`, `done`, `failed`
//! (waiting for a retry), `quarantined` — with its fingerprint, attempts, times and last
//! error, and for a done slide its QC verdict and the state of its rescan action (`pending`,
//! `started`, `done`; see [`Queue::claim_action`]). Every change is one transaction, so a process killed at any moment leaves the queue
//! consistent; [`Queue::recover`] turns the `running` rows of a dead process back into work.

use std::path::{Path, PathBuf};

use rusqlite::{params, Connection, OptionalExtension};

use crate::error::{Error, Result};

/// One slide version in the queue.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// Row id (`tessera queue retry ID`).
    pub id: i64,
    /// The slide in the inbox.
    pub path: PathBuf,
    /// Its content fingerprint (a changed file is a new version, a new row).
    pub fingerprint: String,
    /// stable, running, done, failed or quarantined.
    pub state: String,
    /// Analysis attempts so far.
    pub attempts: u32,
    /// The last error, if any.
    pub last_error: String,
    /// The last error's stable kind (e.g. `corrupt`, `worker_died`), if any.
    pub last_error_kind: String,
    /// The output folder name under the results folder.
    pub output: String,
    /// Seconds since the epoch of the last change.
    pub updated: f64,
    /// Slide QC's verdict once done (`pass`, `review`, `rescan`; empty before, or without QC).
    pub qc_verdict: String,
    /// The rescan action: empty (none), `pending`, `started` or `done`.
    pub rescan_action: String,
}

/// The queue database.
pub struct Queue {
    db: Connection,
    path: PathBuf,
}

/// Seconds since the epoch.
pub(crate) fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

impl Queue {
    /// Opens (creating if needed) `DIR/queue.sqlite`.
    pub fn open(dir: &Path) -> Result<Queue> {
        std::fs::create_dir_all(dir).map_err(|e| Error::from_io(dir, e))?;
        let path = dir.join("queue.sqlite");
        let db = Connection::open(&path).map_err(|e| qerr(&path, e))?;
        db.busy_timeout(std::time::Duration::from_secs(10))
            .map_err(|e| qerr(&path, e))?;
        db.execute_batch(
            "PRAGMA journal_mode=WAL;
             PRAGMA synchronous=FULL;
             CREATE TABLE IF NOT EXISTS observed(
                 path TEXT PRIMARY KEY, size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL,
                 since REAL NOT NULL, fingerprint TEXT);
             CREATE TABLE IF NOT EXISTS slides(
                 id INTEGER PRIMARY KEY AUTOINCREMENT,
                 path TEXT NOT NULL, fingerprint TEXT NOT NULL, state TEXT NOT NULL,
                 attempts INTEGER NOT NULL DEFAULT 0, next_try REAL NOT NULL DEFAULT 0,
                 last_error TEXT NOT NULL DEFAULT '', output TEXT NOT NULL,
                 discovered REAL NOT NULL, updated REAL NOT NULL,
                 UNIQUE(path, fingerprint));",
        )
        .map_err(|e| qerr(&path, e))?;
        // Queues made before a column existed gain it.
        for column in ["last_error_kind", "qc_verdict", "rescan_action"] {
            let has = db
                .prepare("SELECT 1 FROM pragma_table_info('slides') WHERE name = ?1")
                .and_then(|mut st| st.exists([column]))
                .map_err(|e| qerr(&path, e))?;
            if !has {
                db.execute_batch(&format!(
                    "ALTER TABLE slides ADD COLUMN {column} TEXT NOT NULL DEFAULT ''"
                ))
                .map_err(|e| qerr(&path, e))?;
            }
        }
        Ok(Queue { db, path })
    }

    fn err(&self, e: rusqlite::Error) -> Error {
        qerr(&self.path, e)
    }

    /// Records a file's size and modification time; returns how long (seconds) they have been
    /// unchanged.
    pub fn observe(&self, path: &Path, size: u64, mtime_ns: i64) -> Result<f64> {
        let p = path.to_string_lossy();
        let t = now();
        let old: Option<(i64, i64, f64)> = self
            .db
            .query_row(
                "SELECT size, mtime_ns, since FROM observed WHERE path = ?1",
                params![p],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()
            .map_err(|e| self.err(e))?;
        match old {
            Some((s, m, since)) if s == size as i64 && m == mtime_ns => Ok(t - since),
            _ => {
                self.db
                    .execute(
                        "INSERT INTO observed(path, size, mtime_ns, since) VALUES (?1, ?2, ?3, ?4)
                         ON CONFLICT(path) DO UPDATE SET size = ?2, mtime_ns = ?3, since = ?4,
                         fingerprint = NULL",
                        params![p, size as i64, mtime_ns, t],
                    )
                    .map_err(|e| self.err(e))?;
                Ok(0.0)
            }
        }
    }

    /// The fingerprint computed for `path` since its size and modification time last changed
    /// (so a rescan of an inbox full of finished slides reads none of them again).
    pub fn cached_fingerprint(&self, path: &Path) -> Result<Option<String>> {
        self.db
            .query_row(
                "SELECT fingerprint FROM observed WHERE path = ?1",
                params![path.to_string_lossy()],
                |r| r.get::<_, Option<String>>(0),
            )
            .optional()
            .map(Option::flatten)
            .map_err(|e| self.err(e))
    }

    /// Remembers `path`'s fingerprint until its size or modification time changes.
    pub fn set_fingerprint(&self, path: &Path, fingerprint: &str) -> Result<()> {
        self.db
            .execute(
                "UPDATE observed SET fingerprint = ?2 WHERE path = ?1",
                params![path.to_string_lossy(), fingerprint],
            )
            .map(|_| ())
            .map_err(|e| self.err(e))
    }

    /// Adds a settled slide version unless it is known; returns true when it was new.
    pub fn add(&self, path: &Path, fingerprint: &str, output: &str) -> Result<bool> {
        let t = now();
        let n = self
            .db
            .execute(
                "INSERT OR IGNORE INTO slides(path, fingerprint, state, output, discovered, updated)
                 VALUES (?1, ?2, 'stable', ?3, ?4, ?4)",
                params![path.to_string_lossy(), fingerprint, output, t],
            )
            .map_err(|e| self.err(e))?;
        Ok(n == 1)
    }

    /// Is this version of `path` already queued (in any state)?
    pub fn known(&self, path: &Path, fingerprint: &str) -> Result<bool> {
        self.db
            .query_row(
                "SELECT 1 FROM slides WHERE path = ?1 AND fingerprint = ?2",
                params![path.to_string_lossy(), fingerprint],
                |_| Ok(()),
            )
            .optional()
            .map(|o| o.is_some())
            .map_err(|e| self.err(e))
    }

    /// Claims the oldest slide that is ready (stable, or failed and due for a retry): marks it
    /// running and counts the attempt, in one transaction.
    pub fn claim(&mut self) -> Result<Option<Entry>> {
        let t = now();
        // IMMEDIATE: the write lock is taken before reading, so two workers (connections) never
        // claim the same row, and neither fails upgrading a read snapshot to a write.
        let tx = self
            .db
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(|e| qerr(&self.path, e))?;
        let id: Option<i64> = tx
            .query_row(
                "SELECT id FROM slides WHERE state = 'stable' OR (state = 'failed' AND next_try <= ?1)
                 ORDER BY id LIMIT 1",
                params![t],
                |r| r.get(0),
            )
            .optional()
            .map_err(|e| qerr(&self.path, e))?;
        let Some(id) = id else {
            return Ok(None);
        };
        tx.execute(
            "UPDATE slides SET state = 'running', attempts = attempts + 1, updated = ?2 WHERE id = ?1",
            params![id, t],
        )
        .map_err(|e| qerr(&self.path, e))?;
        tx.commit().map_err(|e| qerr(&self.path, e))?;
        self.get(id)
    }

    /// One row.
    pub fn get(&self, id: i64) -> Result<Option<Entry>> {
        self.db
            .query_row(
                &format!("SELECT {COLUMNS} FROM slides WHERE id = ?1"),
                params![id],
                row,
            )
            .optional()
            .map_err(|e| self.err(e))
    }

    /// Every row, oldest first.
    pub fn list(&self) -> Result<Vec<Entry>> {
        let mut st = self
            .db
            .prepare(&format!("SELECT {COLUMNS} FROM slides ORDER BY id"))
            .map_err(|e| self.err(e))?;
        let rows = st
            .query_map([], row)
            .map_err(|e| self.err(e))?
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| self.err(e))?;
        Ok(rows)
    }

    /// Marks a slide done.
    pub fn done(&self, id: i64) -> Result<()> {
        self.set(id, "done", "", "", 0.0)
    }

    /// Records a failure of `kind` (the error's stable kind) with its message: a retry after
    /// `backoff`, or quarantine after `max_attempts`.
    pub fn failed(
        &self,
        id: i64,
        kind: &str,
        error: &str,
        max_attempts: u32,
        backoff_s: f64,
    ) -> Result<()> {
        let attempts = self.get(id)?.map_or(0, |e| e.attempts);
        if attempts >= max_attempts {
            self.set(id, "quarantined", kind, error, 0.0)
        } else {
            let wait = backoff_s * 2f64.powi(attempts.saturating_sub(1) as i32);
            self.set(id, "failed", kind, error, now() + wait)
        }
    }

    fn set(&self, id: i64, state: &str, kind: &str, error: &str, next_try: f64) -> Result<()> {
        self.db
            .execute(
                "UPDATE slides SET state = ?2, last_error = ?3, next_try = ?4, updated = ?5,
                 last_error_kind = ?6 WHERE id = ?1",
                params![id, state, error, next_try, now(), kind],
            )
            .map(|_| ())
            .map_err(|e| self.err(e))
    }

    /// Records a done slide's QC verdict, once: with `action`, its rescan action becomes
    /// `pending` in the same transaction. Returns false when the verdict was already recorded.
    pub fn record_verdict(&self, id: i64, verdict: &str, action: bool) -> Result<bool> {
        self.db
            .execute(
                "UPDATE slides SET qc_verdict = ?2, rescan_action = ?3, updated = ?4
                 WHERE id = ?1 AND state = 'done' AND qc_verdict = ''",
                params![id, verdict, if action { "pending" } else { "" }, now()],
            )
            .map(|n| n == 1)
            .map_err(|e| self.err(e))
    }

    /// Done slides whose verdict is not recorded yet (the service stopped in between).
    pub fn without_verdict(&self) -> Result<Vec<Entry>> {
        Ok(self
            .list()?
            .into_iter()
            .filter(|e| e.state == "done" && e.qc_verdict.is_empty())
            .collect())
    }

    /// Slides whose rescan action is `pending` or was `started` by a process that died.
    pub fn actions(&self) -> Result<Vec<Entry>> {
        Ok(self
            .list()?
            .into_iter()
            .filter(|e| matches!(e.rescan_action.as_str(), "pending" | "started"))
            .collect())
    }

    /// Takes a pending rescan action (`pending` → `started`, one transaction): true for the
    /// one caller that gets it. The command runs only after this, so however the service is
    /// stopped, it never runs twice for a slide version.
    pub fn claim_action(&self, id: i64) -> Result<bool> {
        self.db
            .execute(
                "UPDATE slides SET rescan_action = 'started', updated = ?2
                 WHERE id = ?1 AND rescan_action = 'pending'",
                params![id, now()],
            )
            .map(|n| n == 1)
            .map_err(|e| self.err(e))
    }

    /// Marks a rescan action finished.
    pub fn action_done(&self, id: i64) -> Result<()> {
        self.db
            .execute(
                "UPDATE slides SET rescan_action = 'done', updated = ?2 WHERE id = ?1",
                params![id, now()],
            )
            .map(|_| ())
            .map_err(|e| self.err(e))
    }

    /// Done slides per QC verdict.
    pub fn verdict_counts(&self) -> Result<Vec<(String, u64)>> {
        let mut st = self
            .db
            .prepare(
                "SELECT qc_verdict, COUNT(*) FROM slides WHERE state = 'done' AND qc_verdict <> ''
                 GROUP BY qc_verdict ORDER BY qc_verdict",
            )
            .map_err(|e| self.err(e))?;
        let rows = st
            .query_map([], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as u64))
            })
            .map_err(|e| self.err(e))?
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| self.err(e))?;
        Ok(rows)
    }

    /// Rows left `running` by a process that died: each becomes `done` when `finished(entry)`
    /// says its output is complete (the process died after writing it but before recording
    /// it), and goes back to `stable` otherwise. The interrupted attempt is not counted: the
    /// service was stopped, the slide did not fail. Returns the rows changed.
    pub fn recover(&self, finished: impl Fn(&Entry) -> bool) -> Result<Vec<(Entry, &'static str)>> {
        let mut changed = Vec::new();
        for e in self.list()?.into_iter().filter(|e| e.state == "running") {
            let to = if finished(&e) { "done" } else { "stable" };
            self.db
                .execute(
                    "UPDATE slides SET state = ?2, attempts = MAX(attempts - 1, 0), next_try = 0,
                     updated = ?3 WHERE id = ?1",
                    params![e.id, to, now()],
                )
                .map_err(|err| self.err(err))?;
            changed.push((e, to));
        }
        Ok(changed)
    }

    /// `tessera queue retry ID`: back to stable with a fresh attempt count.
    pub fn retry(&self, id: i64) -> Result<bool> {
        self.db
            .execute(
                "UPDATE slides SET state = 'stable', attempts = 0, last_error = '', next_try = 0,
                 last_error_kind = '', updated = ?2 WHERE id = ?1 AND state <> 'running'",
                params![id, now()],
            )
            .map(|n| n == 1)
            .map_err(|e| self.err(e))
    }

    /// `tessera queue forget ID`: removes the row (the slide will be queued again if still
    /// present).
    pub fn forget(&self, id: i64) -> Result<bool> {
        let path: Option<String> = self
            .db
            .query_row(
                "SELECT path FROM slides WHERE id = ?1 AND state <> 'running'",
                params![id],
                |r| r.get(0),
            )
            .optional()
            .map_err(|e| self.err(e))?;
        let n = self
            .db
            .execute(
                "DELETE FROM slides WHERE id = ?1 AND state <> 'running'",
                params![id],
            )
            .map_err(|e| self.err(e))?;
        if let Some(p) = path {
            self.db
                .execute("DELETE FROM observed WHERE path = ?1", params![p])
                .map_err(|e| self.err(e))?;
        }
        Ok(n == 1)
    }

    /// Rows per state.
    pub fn counts(&self) -> Result<Vec<(String, u64)>> {
        let mut st = self
            .db
            .prepare("SELECT state, COUNT(*) FROM slides GROUP BY state ORDER BY state")
            .map_err(|e| self.err(e))?;
        let rows = st
            .query_map([], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as u64))
            })
            .map_err(|e| self.err(e))?
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| self.err(e))?;
        Ok(rows)
    }
}

/// The columns [`row`] reads, in its order.
const COLUMNS: &str = "id, path, fingerprint, state, attempts, last_error, output, updated, \
                       last_error_kind, qc_verdict, rescan_action";

fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Entry> {
    Ok(Entry {
        id: r.get(0)?,
        path: PathBuf::from(r.get::<_, String>(1)?),
        fingerprint: r.get(2)?,
        state: r.get(3)?,
        attempts: r.get::<_, i64>(4)? as u32,
        last_error: r.get(5)?,
        output: r.get(6)?,
        updated: r.get(7)?,
        last_error_kind: r.get(8)?,
        qc_verdict: r.get(9)?,
        rescan_action: r.get(10)?,
    })
}

fn qerr(path: &Path, e: rusqlite::Error) -> Error {
    Error::Queue {
        path: path.into(),
        message: e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_slide_goes_through_retries_to_quarantine_and_back() {
        let t = tempfile::tempdir().unwrap();
        let mut q = Queue::open(t.path()).unwrap();
        let p = Path::new("/inbox/a.svs");
        assert!(q.add(p, "f1", "a.svs-f1").unwrap());
        assert!(
            !q.add(p, "f1", "a.svs-f1").unwrap(),
            "a known version is not added twice"
        );
        for attempt in 1..=3 {
            let e = q.claim().unwrap().expect("ready");
            assert_eq!((e.state.as_str(), e.attempts), ("running", attempt));
            q.failed(e.id, "corrupt", "bad", 3, 0.0).unwrap();
        }
        let e = q.get(1).unwrap().unwrap();
        assert_eq!(e.state, "quarantined");
        assert_eq!(
            (e.last_error_kind.as_str(), e.last_error.as_str()),
            ("corrupt", "bad")
        );
        assert!(q.claim().unwrap().is_none());
        assert!(q.retry(1).unwrap());
        assert_eq!(q.get(1).unwrap().unwrap().last_error_kind, "");
        let e = q.claim().unwrap().unwrap();
        q.done(e.id).unwrap();
        assert_eq!(q.counts().unwrap(), [("done".to_string(), 1)]);
    }

    /// A queue written before the error's kind was stored gains the column, keeps its rows,
    /// and records kinds from then on.
    #[test]
    fn a_queue_from_before_error_kinds_is_upgraded_in_place() {
        let t = tempfile::tempdir().unwrap();
        {
            let db = Connection::open(t.path().join("queue.sqlite")).unwrap();
            db.execute_batch(
                "CREATE TABLE slides(
                     id INTEGER PRIMARY KEY AUTOINCREMENT,
                     path TEXT NOT NULL, fingerprint TEXT NOT NULL, state TEXT NOT NULL,
                     attempts INTEGER NOT NULL DEFAULT 0, next_try REAL NOT NULL DEFAULT 0,
                     last_error TEXT NOT NULL DEFAULT '', output TEXT NOT NULL,
                     discovered REAL NOT NULL, updated REAL NOT NULL,
                     UNIQUE(path, fingerprint));
                 INSERT INTO slides(path, fingerprint, state, attempts, last_error, output,
                     discovered, updated)
                 VALUES('/inbox/old.svs', 'f0', 'failed', 1, 'it broke', 'old.svs-f0', 1, 1);",
            )
            .unwrap();
        }
        let q = Queue::open(t.path()).unwrap();
        let old = q.get(1).unwrap().unwrap();
        assert_eq!(
            (old.last_error.as_str(), old.last_error_kind.as_str()),
            ("it broke", "")
        );
        q.failed(1, "missing_mpp", "no MPP", 3, 0.0).unwrap();
        assert_eq!(q.get(1).unwrap().unwrap().last_error_kind, "missing_mpp");
        drop(q);
        // Opening it again does not add the column twice.
        assert!(Queue::open(t.path()).is_ok());
    }

    #[test]
    fn running_rows_of_a_dead_process_are_recovered() {
        let t = tempfile::tempdir().unwrap();
        let mut q = Queue::open(t.path()).unwrap();
        q.add(Path::new("/a"), "x", "a").unwrap();
        q.add(Path::new("/b"), "y", "b").unwrap();
        q.claim().unwrap();
        q.claim().unwrap();
        // /a's output was written before the crash, /b's was not.
        let changed = q.recover(|e| e.output == "a").unwrap();
        let to: Vec<&str> = changed.iter().map(|(_, s)| *s).collect();
        assert_eq!(to, ["done", "stable"]);
        // The interrupted attempt does not count against /b.
        assert_eq!(q.get(2).unwrap().unwrap().attempts, 0);
    }

    #[test]
    fn observations_measure_how_long_a_file_is_unchanged() {
        let t = tempfile::tempdir().unwrap();
        let q = Queue::open(t.path()).unwrap();
        let p = Path::new("/a");
        assert_eq!(q.observe(p, 10, 1).unwrap(), 0.0);
        std::thread::sleep(std::time::Duration::from_millis(20));
        assert!(q.observe(p, 10, 1).unwrap() > 0.0);
        assert_eq!(
            q.observe(p, 11, 1).unwrap(),
            0.0,
            "growing restarts the clock"
        );
        q.set_fingerprint(p, "f").unwrap();
        assert_eq!(q.cached_fingerprint(p).unwrap().as_deref(), Some("f"));
        assert_eq!(q.observe(p, 12, 1).unwrap(), 0.0);
        assert_eq!(
            q.cached_fingerprint(p).unwrap(),
            None,
            "a change forgets it"
        );
    }
}
