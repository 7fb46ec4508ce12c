//! A workload's events: held in memory, or, for a run too large for that, packed into
//! fixed-size records kept outside the process (a file: the store crate's `spill`) and
//! read back one run of records at a time. The domain stays free of I/O: it packs and
//! unpacks records; whoever holds them does the reading and writing ([`RecordTable`]).

use super::ScheduledEvent;
use crate::event::{Event, EventKind, Side};
use crate::ids::{AccountId, EventId, Symbol};
use crate::money::{Money, Quantity};
use std::sync::Arc;

/// Bytes of one packed event.
pub const RECORD_BYTES: usize = 64;

/// One packed event: id, account (its index among the workload's accounts), `account_seq`,
/// occurrence and intended send time, and the kind with its symbol (an index), quantity
/// and amount or price.
pub type Record = [u8; RECORD_BYTES];

/// Records read at once when events are iterated in order.
const READ_RUN: usize = 1_024;

/// Where packed events are kept, outside the process's memory. A failure to read or write
/// its own records means the run's evidence is gone: the caller panics with the message.
pub trait RecordTable: Send + Sync + std::fmt::Debug {
    /// Appends `records` after the last one.
    fn append(&mut self, records: &[Record]) -> Result<(), String>;
    /// Reads `into.len()` records, from the one at `first` on.
    fn read(&self, first: usize, into: &mut [Record]) -> Result<(), String>;
    /// Overwrites the record at `index`.
    fn write(&self, index: usize, record: &Record) -> Result<(), String>;
}

/// The events of a workload in emission order, wherever they are kept.
#[derive(Debug, Clone)]
pub struct Events {
    storage: Storage,
}

#[derive(Debug, Clone)]
enum Storage {
    Memory(Vec<ScheduledEvent>),
    Table {
        table: Arc<dyn RecordTable>,
        len: usize,
        accounts: Arc<[AccountId]>,
        symbols: Arc<[Symbol]>,
    },
}

impl Events {
    /// Events held in memory.
    pub fn in_memory(events: Vec<ScheduledEvent>) -> Events {
        Events {
            storage: Storage::Memory(events),
        }
    }

    /// Events packed in `table` (`len` of them), whose records name accounts and symbols
    /// by their index in these lists.
    pub(super) fn in_table(table: Box<dyn RecordTable>, len: usize, accounts: Arc<[AccountId]>, symbols: Arc<[Symbol]>) -> Events {
        Events {
            storage: Storage::Table {
                table: Arc::from(table),
                len,
                accounts,
                symbols,
            },
        }
    }

    /// Whether the events are held outside the process.
    pub fn spilled(&self) -> bool {
        matches!(self.storage, Storage::Table { .. })
    }

    /// How many.
    pub fn len(&self) -> usize {
        match &self.storage {
            Storage::Memory(events) => events.len(),
            Storage::Table { len, .. } => *len,
        }
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The event at `index` (a copy).
    pub fn get(&self, index: usize) -> Option<ScheduledEvent> {
        self.copies(index, 1).pop()
    }

    /// Copies of up to `count` events from `first` on: from memory, or read from the
    /// table in one go.
    fn copies(&self, first: usize, count: usize) -> Vec<ScheduledEvent> {
        match &self.storage {
            Storage::Memory(events) => events.iter().skip(first).take(count).cloned().collect(),
            Storage::Table {
                table,
                len,
                accounts,
                symbols,
            } => {
                let mut records = vec![[0; RECORD_BYTES]; count.min(len.saturating_sub(first))];
                read(table.as_ref(), first, &mut records);
                records
                    .iter()
                    .enumerate()
                    .map(|(offset, record)| unpack(record, accounts, symbols, first + offset))
                    .collect()
            }
        }
    }

    /// The last event.
    pub fn last(&self) -> Option<ScheduledEvent> {
        self.len().checked_sub(1).and_then(|index| self.get(index))
    }

    /// Every event from `first` on, in order.
    pub fn iter_from(&self, first: usize) -> Iter<'_> {
        Iter {
            events: self,
            next: first,
            run: Vec::new(),
            run_first: 0,
        }
    }

    /// Every event, in order.
    pub fn iter(&self) -> Iter<'_> {
        self.iter_from(0)
    }

    /// The events from `first` up to `end` (excluded), in order.
    pub fn range(&self, first: usize, end: usize) -> impl Iterator<Item = ScheduledEvent> + '_ {
        self.iter_from(first).take(end.saturating_sub(first))
    }

    /// The index of the first event from `from` on (at most `max` of them further) whose
    /// intended send time is after `elapsed_ns`: the end of the run of events due.
    pub(super) fn due(&self, from: usize, elapsed_ns: u64, max: usize) -> usize {
        let limit = self.len().min(from.saturating_add(max));
        match &self.storage {
            Storage::Memory(events) => {
                let window = &events[from.min(limit)..limit];
                from + window.partition_point(|scheduled| scheduled.intended_offset_ns <= elapsed_ns)
            }
            Storage::Table { .. } => {
                let (mut low, mut high) = (from.min(limit), limit);
                while low < high {
                    let middle = low + (high - low) / 2;
                    let due = self.get(middle).is_some_and(|scheduled| scheduled.intended_offset_ns <= elapsed_ns);
                    if due { low = middle + 1 } else { high = middle }
                }
                low
            }
        }
    }

    /// Changes the kind of the event at `index` (which must exist).
    pub(super) fn set_kind(&mut self, index: usize, kind: EventKind) {
        match &mut self.storage {
            Storage::Memory(events) => events[index].event.kind = kind,
            Storage::Table { table, symbols, .. } => {
                // A copy of the workload shares the table: changing it would change both.
                assert!(
                    Arc::get_mut(table).is_some(),
                    "changing event {index} of a workload kept outside the process while a copy of it shares its records"
                );
                let mut record = [[0; RECORD_BYTES]];
                read(table.as_ref(), index, &mut record);
                pack_kind(&mut record[0], &kind, symbols);
                if let Err(error) = table.write(index, &record[0]) {
                    panic!("writing event {index} of the workload back to where it is kept: {error}");
                }
            }
        }
    }
}

impl<'a> IntoIterator for &'a Events {
    type Item = ScheduledEvent;
    type IntoIter = Iter<'a>;

    fn into_iter(self) -> Iter<'a> {
        self.iter()
    }
}

/// The same events in the same order, wherever each is kept.
impl PartialEq for Events {
    fn eq(&self, other: &Events) -> bool {
        self.len() == other.len() && self.iter().eq(other.iter())
    }
}

fn read(table: &dyn RecordTable, first: usize, into: &mut [Record]) {
    if let Err(error) = table.read(first, into) {
        panic!(
            "reading events {first}..{} of the workload from where it is kept: {error}",
            first + into.len()
        );
    }
}

/// The events of an [`Events`], in order, as copies.
pub struct Iter<'a> {
    events: &'a Events,
    next: usize,
    /// Records read ahead from a table, and the index of the first.
    run: Vec<ScheduledEvent>,
    run_first: usize,
}

impl Iterator for Iter<'_> {
    type Item = ScheduledEvent;

    fn next(&mut self) -> Option<ScheduledEvent> {
        let index = self.next;
        let event = match &self.events.storage {
            Storage::Memory(events) => events.get(index).cloned(),
            Storage::Table { .. } => {
                if !(self.run_first..self.run_first + self.run.len()).contains(&index) {
                    self.run = self.events.copies(index, READ_RUN);
                    self.run_first = index;
                }
                self.run.get(index - self.run_first).cloned()
            }
        };
        self.next += usize::from(event.is_some());
        event
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = self.events.len().saturating_sub(self.next);
        (left, Some(left))
    }
}

/// Packs `event` into `record`; `account` is its account's index in the workload's list.
pub(super) fn pack(scheduled: &ScheduledEvent, account: u32, symbols: &[Symbol]) -> Record {
    let event = &scheduled.event;
    let mut record = [0; RECORD_BYTES];
    record[0..16].copy_from_slice(event.event_id.uuid().as_bytes());
    record[16..20].copy_from_slice(&account.to_le_bytes());
    record[20..28].copy_from_slice(&event.account_seq.to_le_bytes());
    record[28..36].copy_from_slice(&event.occurred_at_ns.to_le_bytes());
    record[36..44].copy_from_slice(&scheduled.intended_offset_ns.to_le_bytes());
    pack_kind(&mut record, &event.kind, symbols);
    record
}

fn pack_kind(record: &mut Record, kind: &EventKind, symbols: &[Symbol]) {
    let (tag, side, symbol, quantity, amount) = match kind {
        EventKind::Deposit { amount } => (0u8, 0u8, 0u16, 0i64, amount.minor()),
        EventKind::Withdrawal { amount } => (1, 0, 0, 0, amount.minor()),
        EventKind::TradeExecuted {
            side,
            symbol,
            quantity,
            price,
        } => {
            let index = symbols
                .iter()
                .position(|known| known == symbol)
                .unwrap_or_else(|| panic!("packing a trade in {symbol}, which is not among the workload's symbols"));
            let side = match side {
                Side::Buy => 0,
                Side::Sell => 1,
            };
            (2, side, index as u16, quantity.shares(), price.minor())
        }
        EventKind::FeeCharged { amount } => (3, 0, 0, 0, amount.minor()),
    };
    record[44] = tag;
    record[45] = side;
    record[46..48].copy_from_slice(&symbol.to_le_bytes());
    record[48..56].copy_from_slice(&quantity.to_le_bytes());
    record[56..64].copy_from_slice(&amount.to_le_bytes());
}

fn unpack(record: &Record, accounts: &[AccountId], symbols: &[Symbol], index: usize) -> ScheduledEvent {
    let bytes = |range: std::ops::Range<usize>| -> [u8; 8] { record[range].try_into().unwrap_or([0; 8]) };
    let corrupt = |what: &str| -> ! { panic!("event {index} of the workload, read back from where it is kept, has {what}") };
    let mut id = [0; 16];
    id.copy_from_slice(&record[0..16]);
    let account = u32::from_le_bytes(record[16..20].try_into().unwrap_or([0; 4])) as usize;
    let amount = Money::from_minor(i64::from_le_bytes(bytes(56..64)));
    let kind = match record[44] {
        0 => EventKind::Deposit { amount },
        1 => EventKind::Withdrawal { amount },
        2 => EventKind::TradeExecuted {
            side: if record[45] == 0 { Side::Buy } else { Side::Sell },
            symbol: symbols
                .get(usize::from(u16::from_le_bytes([record[46], record[47]])))
                .cloned()
                .unwrap_or_else(|| corrupt("a symbol index out of range")),
            quantity: Quantity::new(i64::from_le_bytes(bytes(48..56))).unwrap_or_else(|_| corrupt("a quantity out of range")),
            price: amount,
        },
        3 => EventKind::FeeCharged { amount },
        _ => corrupt("an unknown kind"),
    };
    ScheduledEvent {
        event: Event {
            event_id: EventId::from_uuid(uuid::Uuid::from_bytes(id)),
            account_id: accounts
                .get(account)
                .cloned()
                .unwrap_or_else(|| corrupt("an account index out of range")),
            account_seq: u64::from_le_bytes(bytes(20..28)),
            occurred_at_ns: i64::from_le_bytes(bytes(28..36)),
            kind,
        },
        intended_offset_ns: u64::from_le_bytes(bytes(36..44)),
    }
}

/// Records held in memory: what the tests compare a file's records against.
#[derive(Debug, Default)]
pub struct MemoryTable(std::sync::Mutex<Vec<Record>>);

impl RecordTable for MemoryTable {
    fn append(&mut self, records: &[Record]) -> Result<(), String> {
        self.0.get_mut().map_err(|error| error.to_string())?.extend_from_slice(records);
        Ok(())
    }

    fn read(&self, first: usize, into: &mut [Record]) -> Result<(), String> {
        let records = self.0.lock().map_err(|error| error.to_string())?;
        let found = records
            .get(first..first + into.len())
            .ok_or_else(|| format!("records {first}..{} of {}", first + into.len(), records.len()))?;
        into.copy_from_slice(found);
        Ok(())
    }

    fn write(&self, index: usize, record: &Record) -> Result<(), String> {
        let mut records = self.0.lock().map_err(|error| error.to_string())?;
        let held = records.len();
        let slot = records.get_mut(index).ok_or_else(|| format!("record {index} of {held}"))?;
        *slot = *record;
        Ok(())
    }
}
