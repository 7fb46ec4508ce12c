//! What a consumer of the balance service does, one JSON line per step, for a host that
//! watches it from outside its process (`tradeflow balance-service --journal`).
//!
//! A host that kills the process with SIGKILL reads the journal to its end once the
//! process is gone: every line written before the kill is there, so the host knows what
//! the consumer held when it died (received, not yet applied) and which offsets the broker
//! had confirmed committed. Messages held and already committed are lost to a consumer
//! that resumes from the committed offsets: that is what the wrong commit policies cost.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::Write;
use std::sync::Mutex;

/// One step of a consumer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum JournalEntry {
    /// The process listens for SIGTERM: from now on a stop request is a clean stop.
    Listening,
    /// The consumer's partitions changed; it owns `partitions` now.
    Assigned {
        /// Partitions owned after the change.
        partitions: i64,
        /// Which they are (absent from journals of earlier versions).
        #[serde(default)]
        owned: Vec<i32>,
    },
    /// A batch was received: per partition, its first and last offset.
    Received {
        /// The batch's number in this process.
        batch: u64,
        /// Messages in it.
        messages: usize,
        /// `(partition, first offset, last offset)`.
        ranges: Vec<(i32, i64, i64)>,
    },
    /// The broker confirmed a commit: per partition, the next offset to read. Written for
    /// the auto-commit timer's commits and the before-database policy's; the commit after
    /// each batch is not reported back to the consumer (see `commit_callback`).
    Committed {
        /// `(partition, offset)`.
        offsets: Vec<(i32, i64)>,
    },
    /// The broker no longer had messages this consumer was to read next (retention deleted
    /// them): it jumped from `expected` to `received`.
    Skipped {
        /// The partition.
        partition: i32,
        /// The offset it was to read.
        expected: i64,
        /// The offset it got.
        received: i64,
    },
    /// A batch was dropped by the fence: its partitions were revoked while it was held.
    Fenced {
        /// The batch's number.
        batch: u64,
        /// Messages dropped.
        messages: usize,
    },
    /// A batch's database transaction committed (and, under the safe policy, its offsets
    /// were handed to the commit).
    Applied {
        /// The batch's number.
        batch: u64,
        /// Events applied.
        applied: u64,
        /// Events the apply log skipped.
        duplicates: u64,
        /// Messages dead-lettered.
        dead_lettered: u64,
        /// The database commit, ns since the epoch.
        committed_at_ns: i64,
    },
}

/// Where journal lines go: each line is written whole and flushed at once, so a process
/// killed right after a step has that step's line in its pipe.
pub struct Journal {
    out: Mutex<Box<dyn Write + Send>>,
}

impl std::fmt::Debug for Journal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Journal")
    }
}

impl Journal {
    /// A journal on standard output.
    pub fn stdout() -> Journal {
        Journal::to(Box::new(std::io::stdout()))
    }

    /// A journal on `out`.
    pub fn to(out: Box<dyn Write + Send>) -> Journal {
        Journal { out: Mutex::new(out) }
    }

    /// Writes one entry. A journal that cannot be written (its reader gone) is logged, not
    /// fatal: the journal is for a watcher, and the service goes on without one.
    pub fn write(&self, entry: &JournalEntry) {
        let Ok(mut line) = serde_json::to_vec(entry) else { return };
        line.push(b'\n');
        let written = self
            .out
            .lock()
            .map_err(|_| std::io::Error::other("journal lock poisoned"))
            .and_then(|mut out| out.write_all(&line).and_then(|()| out.flush()));
        if let Err(error) = written {
            tracing::warn!(%error, "writing the journal");
        }
    }
}

/// A batch received and not applied: per partition `(partition, first, last)`, and its
/// size.
pub type Held = (Vec<(i32, i64, i64)>, usize);

/// What a watcher knows of one consumer process from its journal so far.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JournalState {
    /// The batch received and not applied, if any.
    pub held: Option<Held>,
    /// Per partition, the highest committed next offset the broker confirmed.
    pub committed: BTreeMap<i32, i64>,
    /// Partitions owned now.
    pub assigned: i64,
    /// Which they are.
    pub owned: Vec<i32>,
    /// Whether the process listens for SIGTERM yet.
    pub listening: bool,
    /// Batches received so far.
    pub batches_received: u64,
}

impl JournalState {
    /// Takes one entry in.
    pub fn take(&mut self, entry: &JournalEntry) {
        match entry {
            JournalEntry::Listening => self.listening = true,
            JournalEntry::Assigned { partitions, owned } => {
                self.assigned = *partitions;
                self.owned.clone_from(owned);
            }
            JournalEntry::Received { ranges, messages, .. } => {
                self.held = Some((ranges.clone(), *messages));
                self.batches_received += 1;
            }
            JournalEntry::Committed { offsets } => {
                for (partition, offset) in offsets {
                    let committed = self.committed.entry(*partition).or_insert(*offset);
                    *committed = (*committed).max(*offset);
                }
            }
            // A batch's end, applied or dropped, is what the host's counters take in.
            JournalEntry::Fenced { .. } | JournalEntry::Applied { .. } => self.held = None,
            // What the broker deleted is counted by the host; it holds nothing.
            JournalEntry::Skipped { .. } => {}
        }
    }

    /// Messages held (received, not applied) now.
    pub fn held_messages(&self) -> usize {
        self.held.as_ref().map_or(0, |(_, messages)| *messages)
    }

    /// Of the messages held, those whose offsets the broker confirmed committed: a
    /// consumer that resumes from the committed offsets never reads them again. Offsets of
    /// a batch are taken as contiguous per partition (no compaction or transactions on
    /// these topics).
    pub fn held_and_committed(&self) -> u64 {
        let Some((ranges, _)) = &self.held else { return 0 };
        ranges
            .iter()
            .filter_map(|(partition, first, last)| {
                let committed = self.committed.get(partition)?;
                u64::try_from((*committed).min(last.saturating_add(1)).saturating_sub(*first)).ok()
            })
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn held_and_committed_counts_only_offsets_below_the_committed_one() {
        let mut state = JournalState::default();
        state.take(&JournalEntry::Received {
            batch: 1,
            messages: 30,
            ranges: vec![(0, 100, 109), (1, 50, 69)],
        });
        assert_eq!(state.held_messages(), 30);
        assert_eq!(state.batches_received, 1, "a kill that waits for a fresh batch counts them");
        assert_eq!(state.held_and_committed(), 0);
        // A commit of another partition, below its range: nothing of it.
        state.take(&JournalEntry::Committed {
            offsets: vec![(2, 5), (1, 10)],
        });
        assert_eq!(state.held_and_committed(), 0);
        // Partition 0 committed past the whole range, partition 1 up to 60 (10 of 20).
        state.take(&JournalEntry::Committed {
            offsets: vec![(0, 110), (1, 60)],
        });
        assert_eq!(state.held_and_committed(), 20);
        // An older commit arriving late does not move the committed offset back.
        state.take(&JournalEntry::Committed { offsets: vec![(1, 40)] });
        assert_eq!(state.held_and_committed(), 20);
        state.take(&JournalEntry::Applied {
            batch: 1,
            applied: 30,
            duplicates: 0,
            dead_lettered: 0,
            committed_at_ns: 5,
        });
        assert_eq!((state.held_messages(), state.held_and_committed()), (0, 0));
    }

    #[test]
    fn entries_read_back_as_written() {
        let entry = JournalEntry::Received {
            batch: 3,
            messages: 2,
            ranges: vec![(4, 7, 8)],
        };
        let line = serde_json::to_string(&entry).expect("encodes");
        assert!(line.starts_with("{\"event\":\"received\""), "{line}");
        assert_eq!(serde_json::from_str::<JournalEntry>(&line).expect("decodes"), entry);
    }
}
