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
        self.prune_at(now_ms())
    }

    /// [`Journal::prune`] as at `now` (ms): entries first seen before
    /// `now - max_age` are over the age bound.
    fn prune_at(&self, now: u64) -> Result<usize, JournalError> {
        let cutoff = now.saturating_sub(self.max_age.as_millis() as u64);
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

    /// A journal at a fresh path, removed when the test's value drops.
    struct Fresh(Journal, std::path::PathBuf);

    impl Drop for Fresh {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.1);
        }
    }

    fn fresh(name: &str, max_age: Duration, max_entries: u64) -> Fresh {
        let path = temp(name);
        let _ = std::fs::remove_file(&path);
        Fresh(
            Journal::open(&path, max_age, max_entries).expect("open"),
            path,
        )
    }

    fn entry(state: State, first_seen: u64) -> Entry {
        Entry {
            state,
            command: "vm.pause".into(),
            attempts: 1,
            first_seen,
            status: (state == State::Done).then(|| "ok".into()),
            content_type: None,
            body: None,
        }
    }

    fn ids(j: &Journal) -> Vec<String> {
        let txn = j.db.begin_read().expect("read");
        let table = txn.open_table(COMMANDS).expect("table");
        let mut ids: Vec<String> = table
            .iter()
            .expect("iter")
            .map(|item| item.expect("item").0.value().to_owned())
            .collect();
        ids.sort();
        ids
    }

    /// Each reply status reads back as itself, with the reply's encoding
    /// and body; an entry without one reads as an error.
    #[test]
    fn replies_read_back_with_their_status_encoding_and_body() {
        let f = fresh("status", Duration::from_secs(3600), 100);
        let j = &f.0;
        assert!(j.is_empty().expect("empty"));
        for (id, status, ct) in [
            ("ok", ReplyStatus::Ok, ContentType::MsgPack),
            ("task", ReplyStatus::Task, ContentType::Json),
            ("error", ReplyStatus::Error, ContentType::MsgPack),
        ] {
            j.finish(id, "vm.start", status, ct, id.as_bytes())
                .expect("finish");
            let e = j.get(id).expect("get").expect("entry");
            assert_eq!(e.reply_status(), status, "{id}");
            assert_eq!(e.content_type.as_deref(), Some(ct.as_str()), "{id}");
            assert_eq!(e.body.as_deref(), Some(id.as_bytes()), "{id}");
            assert_eq!((e.state, e.command.as_str()), (State::Done, "vm.start"));
        }
        assert!(!j.is_empty().expect("empty"));
        assert_eq!(j.len().expect("len"), 3);
        assert_eq!(entry(State::Started, 1).reply_status(), ReplyStatus::Error);
        assert_eq!(j.get("never").expect("get"), None);
    }

    /// A finish keeps the attempts and first sighting its starts recorded;
    /// a finish never started counts one attempt.
    #[test]
    fn a_finish_keeps_the_attempts_and_first_sighting_of_its_starts() {
        let f = fresh("finish", Duration::from_secs(3600), 100);
        let j = &f.0;
        j.put("a", &entry(State::Started, 1_000)).expect("put");
        assert_eq!(j.start("a", "vm.pause").expect("start"), 2);
        assert_eq!(j.start("a", "vm.pause").expect("start"), 3);
        j.finish("a", "vm.pause", ReplyStatus::Ok, ContentType::MsgPack, b"")
            .expect("finish");
        let a = j.get("a").expect("get").expect("a");
        assert_eq!((a.attempts, a.first_seen), (3, 1_000));
        let before = now_ms();
        j.finish("b", "vm.pause", ReplyStatus::Ok, ContentType::MsgPack, b"")
            .expect("finish");
        let b = j.get("b").expect("get").expect("b");
        assert_eq!(b.attempts, 1);
        assert!(
            (before..=now_ms()).contains(&b.first_seen),
            "{}",
            b.first_seen
        );
    }

    /// The age bound drops finished entries first seen before `now -
    /// max_age` (one at the bound stays); started ones stay however old.
    #[test]
    fn the_age_bound_drops_finished_entries_older_than_it() {
        let f = fresh("age", Duration::from_millis(1_000), 100);
        let j = &f.0;
        j.put("old", &entry(State::Done, 8_999)).expect("put");
        j.put("at-bound", &entry(State::Done, 9_000)).expect("put");
        j.put("young", &entry(State::Done, 9_500)).expect("put");
        j.put("old-started", &entry(State::Started, 1))
            .expect("put");
        assert_eq!(j.prune_at(10_000).expect("prune"), 1);
        assert_eq!(ids(j), ["at-bound", "old-started", "young"]);
        // Long after: all finished ones go, the started one stays.
        assert_eq!(j.prune_at(u64::MAX).expect("prune"), 2);
        assert_eq!(ids(j), ["old-started"]);
    }

    /// The entry bound drops the oldest finished entries until the journal
    /// is within it, counting one both old and over the bound once, and
    /// never a started one.
    #[test]
    fn the_entry_bound_drops_the_oldest_finished_entries() {
        let f = fresh("size", Duration::from_millis(1_000), 3);
        let j = &f.0;
        j.put("s", &entry(State::Started, 1)).expect("put");
        for (id, t) in [
            ("d5", 9_500),
            ("d2", 9_200),
            ("d4", 9_400),
            ("d3", 9_300),
            ("d1", 8_000),
        ] {
            j.put(id, &entry(State::Done, t)).expect("put");
        }
        // Six entries, three over: d1 (also past the age bound), d2, d3.
        assert_eq!(j.prune_at(10_000).expect("prune"), 3);
        assert_eq!(ids(j), ["d4", "d5", "s"]);
        assert_eq!(j.prune_at(10_000).expect("prune"), 0, "within both bounds");
        // Started entries over the bound stay.
        let g = fresh("size-started", Duration::from_secs(3600), 1);
        for id in ["s1", "s2", "s3"] {
            g.0.put(id, &entry(State::Started, 5)).expect("put");
        }
        assert_eq!(g.0.prune_at(10_000).expect("prune"), 0);
        assert_eq!(g.0.len().expect("len"), 3);
    }
}
