//! The command journal: every changing command's id with its state and
//! reply, so a redelivered or duplicated command is answered from here and
//! never executed twice, and a command cut short by a crash is found and
//! reconciled after restart.
//!
//! Stored in redb: an embedded, pure-Rust, ACID key-value store in one file
//! with crash-safe commits (copy-on-write B-trees, fsync on commit). It needs
//! no C toolchain, no server, and no schema migration; see
//! docs/operations.md for why it was chosen over sled, SQLite and RocksDB.

use std::path::Path;
use std::time::Duration;

use hostbus_protocol::{decode, encode, now_ms, ContentType, ReplyStatus};
use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use serde::{Deserialize, Serialize};

const COMMANDS: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("commands");

/// Where a journaled command stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// Execution began; no reply recorded yet.
    Started,
    /// Finished; the reply is recorded.
    Done,
}

/// One journal entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// State.
    pub state: State,
    /// Command name.
    pub command: String,
    /// How many times execution began (crashes before `Done` count).
    pub attempts: u32,
    /// When first seen, ms.
    pub first_seen: u64,
    /// The reply status, when done.
    pub status: Option<String>,
    /// The reply's content type, when done.
    pub content_type: Option<String>,
    /// The encoded reply body, when done.
    pub body: Option<Vec<u8>>,
}

impl Entry {
    /// The recorded reply status.
    pub fn reply_status(&self) -> ReplyStatus {
        match self.status.as_deref() {
            Some("ok") => ReplyStatus::Ok,
            Some("task") => ReplyStatus::Task,
            _ => ReplyStatus::Error,
        }
    }
}

/// Journal failures: the agent refuses to run changing commands it cannot record.
#[derive(Debug, thiserror::Error)]
#[error("command journal: {0}")]
pub struct JournalError(String);

fn err(e: impl std::fmt::Display) -> JournalError {
    JournalError(e.to_string())
}

/// The journal, bounded by age and entry count.
pub struct Journal {
    db: Database,
    max_age: Duration,
    max_entries: u64,
}

impl Journal {
    /// Opens (or creates) the journal at `path`.
    pub fn open(path: &Path, max_age: Duration, max_entries: u64) -> Result<Self, JournalError> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| JournalError(format!("cannot create {}: {e}", dir.display())))?;
        }
        let db = Database::create(path)
            .map_err(|e| JournalError(format!("cannot open {}: {e}", path.display())))?;
        let txn = db.begin_write().map_err(err)?;
        txn.open_table(COMMANDS).map_err(err)?;
        txn.commit().map_err(err)?;
        Ok(Self {
            db,
            max_age,
            max_entries,
        })
    }

    /// The entry of a command id.
    pub fn get(&self, id: &str) -> Result<Option<Entry>, JournalError> {
        let txn = self.db.begin_read().map_err(err)?;
        let table = txn.open_table(COMMANDS).map_err(err)?;
        let Some(v) = table.get(id).map_err(err)? else {
            return Ok(None);
        };
        decode(ContentType::MsgPack, v.value(), usize::MAX)
            .map(Some)
            .map_err(err)
    }

    fn put(&self, id: &str, e: &Entry) -> Result<(), JournalError> {
        let bytes = encode(ContentType::MsgPack, e).map_err(err)?;
        let txn = self.db.begin_write().map_err(err)?;
        {
            let mut table = txn.open_table(COMMANDS).map_err(err)?;
            table.insert(id, bytes.as_slice()).map_err(err)?;
        }
        txn.commit().map_err(err)
    }

    /// Records that execution of `id` begins; returns the attempt number.
    pub fn start(&self, id: &str, command: &str) -> Result<u32, JournalError> {
        let mut e = self.get(id)?.unwrap_or(Entry {
            state: State::Started,
            command: command.to_owned(),
            attempts: 0,
            first_seen: now_ms(),
            status: None,
            content_type: None,
            body: None,
        });
        e.attempts += 1;
        self.put(id, &e)?;
        Ok(e.attempts)
    }

    /// Records the reply of `id`.
    pub fn finish(
        &self,
        id: &str,
        command: &str,
        status: ReplyStatus,
        ct: ContentType,
        body: &[u8],
    ) -> Result<(), JournalError> {
        let prev = self.get(id)?;
        let e = Entry {
            state: State::Done,
            command: command.to_owned(),
            attempts: prev.as_ref().map_or(1, |p| p.attempts),
            first_seen: prev.as_ref().map_or_else(now_ms, |p| p.first_seen),
            status: Some(status.as_str().to_owned()),
            content_type: Some(ct.as_str().to_owned()),
            body: Some(body.to_vec()),
        };
        self.put(id, &e)
    }

    /// Entries in the journal.
    pub fn len(&self) -> Result<u64, JournalError> {
        let txn = self.db.begin_read().map_err(err)?;
        txn.open_table(COMMANDS).map_err(err)?.len().map_err(err)
    }

    /// Whether the journal is empty.
    pub fn is_empty(&self) -> Result<bool, JournalError> {
        Ok(self.len()? == 0)
    }

    /// Drops finished entries older than the age bound, then the oldest
    /// finished ones beyond the entry bound. Started entries stay: they are
    /// the evidence of an interrupted command. Returns how many were dropped.
    pub fn prune(&self) -> Result<usize, JournalError> {
        let cutoff = now_ms().saturating_sub(self.max_age.as_millis() as u64);
        let txn = self.db.begin_write().map_err(err)?;
        let dropped = {
            let mut table = txn.open_table(COMMANDS).map_err(err)?;
            let mut done: Vec<(u64, String)> = Vec::new();
            for item in table.iter().map_err(err)? {
                let (k, v) = item.map_err(err)?;
                if let Ok(e) = decode::<Entry>(ContentType::MsgPack, v.value(), usize::MAX) {
                    if e.state == State::Done {
                        done.push((e.first_seen, k.value().to_owned()));
                    }
                }
            }
            done.sort();
            let total = table.len().map_err(err)?;
            let over = total.saturating_sub(self.max_entries) as usize;
            let mut victims: Vec<&String> = done
                .iter()
                .filter(|(t, _)| *t < cutoff)
                .map(|(_, k)| k)
                .collect();
            for (_, k) in done.iter().take(over) {
                if !victims.contains(&k) {
                    victims.push(k);
                }
            }
            for k in &victims {
                table.remove(k.as_str()).map_err(err)?;
            }
            victims.len()
        };
        txn.commit().map_err(err)?;
        Ok(dropped)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(name: &str) -> std::path::PathBuf {
        std::env::temp_dir().join(format!("hostbus-journal-{name}-{}", std::process::id()))
    }

    #[test]
    fn entries_survive_reopening_and_count_attempts() {
        let path = temp("reopen");
        let _ = std::fs::remove_file(&path);
        {
            let j = Journal::open(&path, Duration::from_secs(3600), 100).expect("open");
            assert_eq!(j.start("a", "vm.start").expect("start"), 1);
            assert_eq!(
                j.start("a", "vm.start").expect("start"),
                2,
                "a crash and a redelivery"
            );
            j.start("b", "vm.pause").expect("start");
            j.finish(
                "b",
                "vm.pause",
                ReplyStatus::Ok,
                ContentType::MsgPack,
                b"\x81",
            )
            .expect("finish");
        }
        let j = Journal::open(&path, Duration::from_secs(3600), 100).expect("reopen");
        let a = j.get("a").expect("get").expect("a");
        assert_eq!((a.state, a.attempts), (State::Started, 2));
        let b = j.get("b").expect("get").expect("b");
        assert_eq!(
            (b.state, b.body.as_deref()),
            (State::Done, Some(&b"\x81"[..]))
        );
        assert_eq!(b.reply_status(), ReplyStatus::Ok);
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn pruning_bounds_age_and_size_but_keeps_interrupted_commands() {
        let path = temp("prune");
        let _ = std::fs::remove_file(&path);
        let j = Journal::open(&path, Duration::from_secs(3600), 3).expect("open");
        j.start("open", "vm.start").expect("start");
        for i in 0..5 {
            let id = format!("done{i}");
            j.start(&id, "vm.pause").expect("start");
            j.finish(&id, "vm.pause", ReplyStatus::Ok, ContentType::MsgPack, b"x")
                .expect("finish");
        }
        assert_eq!(j.len().expect("len"), 6);
        assert_eq!(j.prune().expect("prune"), 3);
        assert_eq!(j.len().expect("len"), 3);
        assert!(
            j.get("open").expect("get").is_some(),
            "interrupted commands are kept"
        );
        let j0 = Journal::open(&temp("prune-age"), Duration::ZERO, 100).expect("open");
        j0.start("x", "vm.pause").expect("start");
        j0.finish("x", "vm.pause", ReplyStatus::Ok, ContentType::MsgPack, b"x")
            .expect("finish");
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(j0.prune().expect("prune"), 1);
        let _ = std::fs::remove_file(&path);
        let _ = std::fs::remove_file(temp("prune-age"));
    }
}
