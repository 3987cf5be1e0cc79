//! The teaching viewer's database: local accounts (instructors and trainees), their sessions,
//! and every quiz answer, in one SQLite file beside the results
//! (`RESULTS/.tessera/viewer.sqlite`).
//!
//! In: names, roles and passwords from `tessera users`; logins, session cookies and scored
//! quiz rounds from the viewer. Out: accounts with Argon2id password hashes (PHC strings; the
//! password itself is never stored), sessions stored as the SHA-256 of their cookie value with
//! a CSRF token and an expiry, and answers tied to an account (or, in the single-user token
//! mode, to the typed trainee name). No coordinates (answers keep the marks as the quiz gave
//! them, level-0 pixels).
//!
//! The viewer runs in accounts mode as soon as the database holds one account; without any it
//! keeps the single-user token mode. Every change is one statement or transaction, so a
//! process killed at any moment leaves the database consistent.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use rusqlite::{params, Connection, OptionalExtension};
use serde::Serialize;
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::random::{hex, random_bytes};
use crate::error::{Error, Result};

/// Shortest password accepted.
pub const MIN_PASSWORD: usize = 10;
/// Longest password accepted (bytes; hashing cost does not depend on it, but a bound is kept).
pub const MAX_PASSWORD: usize = 1024;

/// What an account may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Builds courses, sees every trainee's answers and progress.
    Instructor,
    /// Answers cases; sees their own answers and progress only.
    Trainee,
}

impl Role {
    /// The stored and printed name.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Instructor => "instructor",
            Role::Trainee => "trainee",
        }
    }

    fn parse(s: &str) -> Option<Role> {
        match s {
            "instructor" => Some(Role::Instructor),
            "trainee" => Some(Role::Trainee),
            _ => None,
        }
    }
}

/// An account.
#[derive(Debug, Clone, Serialize)]
pub struct User {
    /// Row id.
    pub id: i64,
    /// Login name (unique, case-insensitively).
    pub name: String,
    /// Its role.
    pub role: Role,
    /// Disabled accounts cannot log in; their sessions are ended.
    pub disabled: bool,
}

/// A logged-in session.
#[derive(Debug, Clone)]
pub struct Session {
    /// Whose.
    pub user: User,
    /// The token every state-changing request must carry (`X-CSRF-Token`).
    pub csrf: String,
}

/// The database.
pub struct Db {
    conn: Mutex<Connection>,
    /// A second connection for the session check every request makes: in WAL mode it reads
    /// while the first one writes (an answer being saved does not hold up the tiles).
    sessions: Mutex<Connection>,
    path: PathBuf,
}

/// Where the viewer's database of a results folder lives.
pub fn db_path(results: &Path) -> PathBuf {
    results.join(".tessera").join("viewer.sqlite")
}

/// Seconds since the epoch.
fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

fn sha256_hex(s: &str) -> String {
    hex(&Sha256::digest(s.as_bytes()))
}

/// A login name is acceptable: 1–64 letters, digits, spaces, `.`, `_`, `-`, not starting with
/// `.` or a space (the same rule as the trainee names of the token mode).
pub fn name_ok(name: &str) -> bool {
    super::quiz::trainee_ok(name)
}

/// Why a password is refused, if it is.
pub fn password_problem(password: &str) -> Option<String> {
    let n = password.chars().count();
    if n < MIN_PASSWORD {
        Some(format!(
            "a password needs at least {MIN_PASSWORD} characters"
        ))
    } else if password.len() > MAX_PASSWORD {
        Some(format!("a password has at most {MAX_PASSWORD} bytes"))
    } else {
        None
    }
}

/// The Argon2id hash (PHC string) of a password, with a random salt. Argon2's recommended
/// parameters (19 MiB, 2 passes, 1 lane: OWASP's first choice).
pub fn hash_password(password: &str) -> Result<String> {
    let salt = SaltString::encode_b64(&random_bytes::<16>()?).map_err(|e| Error::Serve {
        path: PathBuf::from("argon2"),
        message: e.to_string(),
    })?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| Error::Serve {
            path: PathBuf::from("argon2"),
            message: e.to_string(),
        })
}

fn verify_password(password: &str, phc: &str) -> bool {
    PasswordHash::new(phc).is_ok_and(|h| {
        Argon2::default()
            .verify_password(password.as_bytes(), &h)
            .is_ok()
    })
}

/// A hash to verify against when the name is unknown, so that a wrong name costs the same time
/// as a wrong password (no guessing which names exist from the answer's speed).
fn decoy_hash() -> &'static str {
    static DECOY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DECOY.get_or_init(|| hash_password("decoy password, never valid").unwrap_or_default())
}

impl Db {
    /// Opens the database at `path`, creating it (and its folder) when `create` is set.
    /// Returns `None` when it does not exist and `create` is not set.
    pub fn open(path: &Path, create: bool) -> Result<Option<Db>> {
        if !create && !path.is_file() {
            return Ok(None);
        }
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| Error::from_io(dir, e))?;
        }
        let err = |e: rusqlite::Error| Error::Serve {
            path: path.to_path_buf(),
            message: format!("viewer database: {e}"),
        };
        let conn = Connection::open(path).map_err(err)?;
        conn.busy_timeout(std::time::Duration::from_secs(10))
            .map_err(err)?;
        conn.execute_batch(
            "PRAGMA journal_mode=WAL;
             PRAGMA foreign_keys=ON;
             CREATE TABLE IF NOT EXISTS users (
                 id INTEGER PRIMARY KEY,
                 name TEXT NOT NULL UNIQUE COLLATE NOCASE,
                 role TEXT NOT NULL,
                 password TEXT NOT NULL,
                 disabled INTEGER NOT NULL DEFAULT 0,
                 created INTEGER NOT NULL);
             CREATE TABLE IF NOT EXISTS sessions (
                 token_sha256 TEXT PRIMARY KEY,
                 user_id INTEGER NOT NULL REFERENCES users(id),
                 csrf TEXT NOT NULL,
                 created INTEGER NOT NULL,
                 expires INTEGER NOT NULL);
             CREATE TABLE IF NOT EXISTS answers (
                 id INTEGER PRIMARY KEY,
                 user_id INTEGER REFERENCES users(id),
                 trainee TEXT NOT NULL,
                 case_id TEXT NOT NULL,
                 time TEXT NOT NULL,
                 record TEXT NOT NULL);
             CREATE INDEX IF NOT EXISTS answers_user ON answers(user_id, time);
             CREATE INDEX IF NOT EXISTS answers_trainee ON answers(trainee, time);
             CREATE TABLE IF NOT EXISTS courses (
                 id INTEGER PRIMARY KEY,
                 title TEXT NOT NULL,
                 doc TEXT NOT NULL,
                 created_by INTEGER REFERENCES users(id),
                 updated INTEGER NOT NULL);
             CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);",
        )
        .map_err(err)?;
        let reader = Connection::open(path).map_err(err)?;
        reader
            .busy_timeout(std::time::Duration::from_secs(10))
            .map_err(err)?;
        Ok(Some(Db {
            conn: Mutex::new(conn),
            sessions: Mutex::new(reader),
            path: path.to_path_buf(),
        }))
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn with<T>(&self, f: impl FnOnce(&mut Connection) -> rusqlite::Result<T>) -> Result<T> {
        self.on(&self.conn, f)
    }

    fn with_reader<T>(&self, f: impl FnOnce(&mut Connection) -> rusqlite::Result<T>) -> Result<T> {
        self.on(&self.sessions, f)
    }

    /// Runs `f` on one of the two connections, its error naming the database.
    fn on<T>(
        &self,
        conn: &Mutex<Connection>,
        f: impl FnOnce(&mut Connection) -> rusqlite::Result<T>,
    ) -> Result<T> {
        let mut c = match conn.lock() {
            Ok(c) => c,
            Err(e) => e.into_inner(),
        };
        f(&mut c).map_err(|e| Error::Serve {
            path: self.path.clone(),
            message: format!("viewer database: {e}"),
        })
    }

    fn refuse(&self, message: String) -> Error {
        Error::Serve {
            path: self.path.clone(),
            message,
        }
    }

    /// How many accounts exist (enabled or not): with any, the viewer runs in accounts mode.
    pub fn accounts(&self) -> Result<i64> {
        self.with(|c| c.query_row("SELECT count(*) FROM users", [], |r| r.get(0)))
    }

    /// Adds an account.
    pub fn add_user(&self, name: &str, role: Role, password: &str) -> Result<User> {
        if !name_ok(name) {
            return Err(self.refuse(format!(
                "{name:?}: a name has 1–64 letters, digits, spaces, '.', '_' or '-'"
            )));
        }
        if let Some(p) = password_problem(password) {
            return Err(self.refuse(p));
        }
        if self.user(name)?.is_some() {
            return Err(self.refuse(format!("an account named {name:?} exists already")));
        }
        let phc = hash_password(password)?;
        self.with(|c| {
            c.execute(
                "INSERT INTO users (name, role, password, created) VALUES (?1, ?2, ?3, ?4)",
                params![name, role.as_str(), phc, now()],
            )
        })?;
        self.user(name)?
            .ok_or_else(|| self.refuse(format!("{name:?} was not stored")))
    }

    /// An account by name (case-insensitive).
    pub fn user(&self, name: &str) -> Result<Option<User>> {
        self.with(|c| {
            c.query_row(
                "SELECT id, name, role, disabled FROM users WHERE name = ?1",
                [name],
                row_user,
            )
            .optional()
        })
    }

    /// Every account, by name.
    pub fn users(&self) -> Result<Vec<User>> {
        self.with(|c| {
            let mut s = c.prepare(
                "SELECT id, name, role, disabled FROM users ORDER BY name COLLATE NOCASE",
            )?;
            let rows = s.query_map([], row_user)?;
            rows.collect()
        })
    }

    /// Sets a new password; the account's sessions end.
    pub fn set_password(&self, name: &str, password: &str) -> Result<()> {
        if let Some(p) = password_problem(password) {
            return Err(self.refuse(p));
        }
        let user = self.existing(name)?;
        let phc = hash_password(password)?;
        self.with(|c| {
            let tx = c.transaction()?;
            tx.execute(
                "UPDATE users SET password = ?1 WHERE id = ?2",
                params![phc, user.id],
            )?;
            tx.execute("DELETE FROM sessions WHERE user_id = ?1", [user.id])?;
            tx.commit()
        })
    }

    /// Disables (or enables again) an account; disabling ends its sessions.
    pub fn set_disabled(&self, name: &str, disabled: bool) -> Result<()> {
        let user = self.existing(name)?;
        self.with(|c| {
            let tx = c.transaction()?;
            tx.execute(
                "UPDATE users SET disabled = ?1 WHERE id = ?2",
                params![disabled, user.id],
            )?;
            if disabled {
                tx.execute("DELETE FROM sessions WHERE user_id = ?1", [user.id])?;
            }
            tx.commit()
        })
    }

    fn existing(&self, name: &str) -> Result<User> {
        self.user(name)?
            .ok_or_else(|| self.refuse(format!("no account named {name:?}")))
    }

    /// Checks a name and password (Argon2id; as slow for an unknown name as for a wrong
    /// password). `Some` only for an enabled account with that password.
    pub fn verify(&self, name: &str, password: &str) -> Result<Option<User>> {
        let row: Option<(User, String)> = self.with(|c| {
            c.query_row(
                "SELECT id, name, role, disabled, password FROM users WHERE name = ?1",
                [name],
                |r| Ok((row_user(r)?, r.get(4)?)),
            )
            .optional()
        })?;
        Ok(match row {
            Some((user, phc)) => {
                let ok = verify_password(password, &phc);
                (ok && !user.disabled).then_some(user)
            }
            None => {
                let _ = verify_password(password, decoy_hash());
                None
            }
        })
    }

    /// Starts a session for an account: returns the cookie value (256 random bits; only its
    /// SHA-256 is stored) and the session.
    pub fn start_session(&self, user: &User, lifetime_s: i64) -> Result<(String, Session)> {
        let token = hex(&random_bytes::<32>()?);
        let csrf = hex(&random_bytes::<32>()?);
        let t = now();
        self.with(|c| {
            c.execute("DELETE FROM sessions WHERE expires <= ?1", [t])?;
            c.execute(
                "INSERT INTO sessions (token_sha256, user_id, csrf, created, expires)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                params![sha256_hex(&token), user.id, csrf, t, t + lifetime_s],
            )
        })?;
        Ok((
            token,
            Session {
                user: user.clone(),
                csrf,
            },
        ))
    }

    /// The live session of a cookie value, if any (unknown, expired, or of a disabled account:
    /// none).
    pub fn session(&self, token: &str) -> Result<Option<Session>> {
        if token.len() != 64 || !token.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Ok(None);
        }
        self.with_reader(|c| {
            c.query_row(
                "SELECT u.id, u.name, u.role, u.disabled, s.csrf FROM sessions s
                 JOIN users u ON u.id = s.user_id
                 WHERE s.token_sha256 = ?1 AND s.expires > ?2 AND u.disabled = 0",
                params![sha256_hex(token), now()],
                |r| {
                    Ok(Session {
                        user: row_user(r)?,
                        csrf: r.get(4)?,
                    })
                },
            )
            .optional()
        })
    }

    /// Ends a session.
    pub fn end_session(&self, token: &str) -> Result<()> {
        self.with(|c| {
            c.execute(
                "DELETE FROM sessions WHERE token_sha256 = ?1",
                [sha256_hex(token)],
            )
        })
        .map(|_| ())
    }

    /// Saves a scored quiz round; returns its number.
    pub fn save_answer(
        &self,
        user: Option<&User>,
        trainee: &str,
        case: &str,
        time: &str,
        record: &Value,
    ) -> Result<i64> {
        self.with(|c| {
            c.execute(
                "INSERT INTO answers (user_id, trainee, case_id, time, record)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                params![user.map(|u| u.id), trainee, case, time, record.to_string()],
            )?;
            Ok(c.last_insert_rowid())
        })
    }

    /// A trainee's rounds, oldest first: an account's (accounts mode) or those saved under a
    /// typed name without an account (token mode).
    pub fn answers(&self, who: Who<'_>) -> Result<Vec<Value>> {
        let (sql, key): (&str, rusqlite::types::Value) = match who {
            Who::Account(u) => (
                "SELECT record FROM answers WHERE user_id = ?1 ORDER BY time, id",
                u.id.into(),
            ),
            Who::Typed(name) => (
                "SELECT record FROM answers WHERE user_id IS NULL AND trainee = ?1
                 ORDER BY time, id",
                name.to_string().into(),
            ),
        };
        let texts: Vec<String> = self.with(|c| {
            let mut s = c.prepare(sql)?;
            let rows = s.query_map([key], |r| r.get(0))?;
            rows.collect()
        })?;
        Ok(texts
            .iter()
            .filter_map(|t| serde_json::from_str(t).ok())
            .collect())
    }

    /// Every answer with its trainee's name: the accounts' (under the account's name) when
    /// `accounts`, else those saved under typed names. Oldest first.
    pub fn all_answers(&self, accounts: bool) -> Result<Vec<(String, Value)>> {
        let sql = if accounts {
            "SELECT u.name, a.record FROM answers a JOIN users u ON u.id = a.user_id
             ORDER BY a.time, a.id"
        } else {
            "SELECT trainee, record FROM answers WHERE user_id IS NULL ORDER BY time, id"
        };
        let rows: Vec<(String, String)> = self.with(|c| {
            let mut s = c.prepare(sql)?;
            let rows = s.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
            rows.collect()
        })?;
        Ok(rows
            .into_iter()
            .filter_map(|(n, t)| serde_json::from_str(&t).ok().map(|v| (n, v)))
            .collect())
    }

    /// Imports the answers an older viewer saved as files (`RESULTS/.quiz/<trainee>/<case>/
    /// *.json`) once, as answers under a typed name; the files are left in place.
    pub fn import_quiz_files(&self, results: &Path) -> Result<usize> {
        let done: Option<String> = self.with(|c| {
            c.query_row(
                "SELECT value FROM meta WHERE key = 'quiz_files_imported'",
                [],
                |r| r.get(0),
            )
            .optional()
        })?;
        if done.is_some() {
            return Ok(0);
        }
        let mut rounds = Vec::new();
        let root = results.join(".quiz");
        for trainee in read_dir_sorted(&root) {
            for case in read_dir_sorted(&trainee) {
                for f in read_dir_sorted(&case) {
                    if f.extension().is_none_or(|e| e != "json") {
                        continue;
                    }
                    if let Some(v) = std::fs::read(&f)
                        .ok()
                        .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
                    {
                        let (Some(t), Some(c), Some(time)) = (
                            v["trainee"].as_str(),
                            v["case"].as_str(),
                            v["time"].as_str(),
                        ) else {
                            continue;
                        };
                        rounds.push((t.to_string(), c.to_string(), time.to_string(), v.clone()));
                    }
                }
            }
        }
        let n = rounds.len();
        self.with(|c| {
            let tx = c.transaction()?;
            for (t, case, time, v) in &rounds {
                tx.execute(
                    "INSERT INTO answers (user_id, trainee, case_id, time, record)
                     VALUES (NULL, ?1, ?2, ?3, ?4)",
                    params![t, case, time, v.to_string()],
                )?;
            }
            tx.execute(
                "INSERT INTO meta (key, value) VALUES ('quiz_files_imported', ?1)",
                [n.to_string()],
            )?;
            tx.commit()
        })?;
        Ok(n)
    }
}

/// A course as listed: id, title, number of cases.
#[derive(Debug, Clone, Serialize)]
pub struct CourseRow {
    /// Row id.
    pub id: i64,
    /// Its title.
    pub title: String,
    /// How many cases.
    pub cases: usize,
}

impl Db {
    /// Stores a new course (already checked); returns its id.
    pub fn create_course(&self, course: &super::course::Course, by: Option<&User>) -> Result<i64> {
        let doc = serde_json::to_string(course).unwrap_or_default();
        self.with(|c| {
            c.execute(
                "INSERT INTO courses (title, doc, created_by, updated) VALUES (?1, ?2, ?3, ?4)",
                params![course.title, doc, by.map(|u| u.id), now()],
            )?;
            Ok(c.last_insert_rowid())
        })
    }

    /// Replaces a course (already checked); false when there is no such course.
    pub fn update_course(&self, id: i64, course: &super::course::Course) -> Result<bool> {
        let doc = serde_json::to_string(course).unwrap_or_default();
        self.with(|c| {
            c.execute(
                "UPDATE courses SET title = ?1, doc = ?2, updated = ?3 WHERE id = ?4",
                params![course.title, doc, now(), id],
            )
        })
        .map(|n| n == 1)
    }

    /// A course.
    pub fn course(&self, id: i64) -> Result<Option<super::course::Course>> {
        let doc: Option<String> = self.with(|c| {
            c.query_row("SELECT doc FROM courses WHERE id = ?1", [id], |r| r.get(0))
                .optional()
        })?;
        doc.map(|d| serde_json::from_str(&d).map_err(|e| self.refuse(format!("course {id}: {e}"))))
            .transpose()
    }

    /// Every course, by id.
    pub fn courses(&self) -> Result<Vec<CourseRow>> {
        // The number of cases from SQLite's JSON functions: no document is parsed here.
        self.with(|c| {
            let mut s = c.prepare(
                "SELECT id, title, json_array_length(doc, '$.cases') FROM courses ORDER BY id",
            )?;
            let rows = s.query_map([], |r| {
                Ok(CourseRow {
                    id: r.get(0)?,
                    title: r.get(1)?,
                    cases: r.get::<_, Option<i64>>(2)?.unwrap_or(0) as usize,
                })
            })?;
            rows.collect()
        })
    }
}

/// Whose answers.
#[derive(Debug, Clone, Copy)]
pub enum Who<'a> {
    /// An account's.
    Account(&'a User),
    /// Those saved under a typed name (token mode, or imported from files).
    Typed(&'a str),
}

fn read_dir_sorted(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| rd.filter_map(|e| e.ok()).map(|e| e.path()).collect())
        .unwrap_or_default();
    v.sort();
    v
}

fn row_user(r: &rusqlite::Row<'_>) -> rusqlite::Result<User> {
    let role: String = r.get(2)?;
    Ok(User {
        id: r.get(0)?,
        name: r.get(1)?,
        role: Role::parse(&role).unwrap_or(Role::Trainee),
        disabled: r.get(3)?,
    })
}

/// Parses a role as `tessera users` takes it.
pub fn parse_role(s: &str) -> Option<Role> {
    Role::parse(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accounts_sessions_and_answers() {
        let t = tempfile::tempdir().unwrap();
        let path = db_path(t.path());
        assert!(Db::open(&path, false).unwrap().is_none());
        let db = Db::open(&path, true).unwrap().unwrap();
        assert_eq!(db.accounts().unwrap(), 0);
        assert!(db.add_user("ana", Role::Trainee, "short").is_err());
        assert!(db
            .add_user("../x", Role::Trainee, "long enough pw")
            .is_err());
        let ana = db.add_user("Ana", Role::Trainee, "long enough pw").unwrap();
        assert!(db.add_user("ANA", Role::Trainee, "long enough pw").is_err());
        // The hash, not the password, is stored.
        let bytes = std::fs::read(&path).unwrap();
        assert!(!bytes.windows(14).any(|w| w == b"long enough pw"));
        assert!(db.verify("ana", "long enough pw").unwrap().is_some());
        assert!(db.verify("ana", "long enough px").unwrap().is_none());
        assert!(db.verify("bob", "long enough pw").unwrap().is_none());
        let (cookie, s) = db.start_session(&ana, 3600).unwrap();
        assert_eq!(s.user.name, "Ana");
        assert_eq!(db.session(&cookie).unwrap().unwrap().csrf, s.csrf);
        assert!(db.session(&s.csrf).unwrap().is_none());
        // A new password ends the sessions; so does disabling.
        db.set_password("ana", "another long one").unwrap();
        assert!(db.session(&cookie).unwrap().is_none());
        let (cookie, _) = db.start_session(&ana, 3600).unwrap();
        db.set_disabled("ana", true).unwrap();
        assert!(db.session(&cookie).unwrap().is_none());
        assert!(db.verify("ana", "another long one").unwrap().is_none());
        db.set_disabled("ana", false).unwrap();
        assert!(db.verify("ana", "another long one").unwrap().is_some());
        // Expired sessions are not honoured.
        let (cookie, _) = db.start_session(&ana, -1).unwrap();
        assert!(db.session(&cookie).unwrap().is_none());
        // Answers by account and by typed name stay apart.
        let r = serde_json::json!({"trainee": "Ana", "case": "c", "time": "2026-01-01T00:00:00Z"});
        db.save_answer(Some(&ana), "Ana", "c", "2026-01-01T00:00:00Z", &r)
            .unwrap();
        db.save_answer(None, "Ana", "c", "2026-01-02T00:00:00Z", &r)
            .unwrap();
        assert_eq!(db.answers(Who::Account(&ana)).unwrap().len(), 1);
        assert_eq!(db.answers(Who::Typed("Ana")).unwrap().len(), 1);
    }
}
