//! The benchmark harness of tradeflow: how fast each part is alone, how fast the broker and
//! the store can go with nothing in between, and charts of the results.
//!
//! - `benches/micro.rs` (criterion, `cargo bench -p tradeflow-bench --bench micro`): the
//!   codec (encode and decode), the ledger (checked and blind apply) and the store's batch
//!   apply on SQLite and PostgreSQL at batch sizes 1, 100 and 1000. Every store iteration
//!   applies events the store has not seen, so the apply log's deduplication is never
//!   what is measured.
//! - [`limits`]: the raw ceilings a pipeline is read against: producing to a topic with the
//!   publisher's guarantee (`acks=all`, idempotence), reading a topic back with no
//!   processing, and applying batches to a store from one task.
//! - [`svg`]: a dependency-free SVG line and scatter chart writer for reports.
//! - [`harness`]: the macro benchmark behind `tradeflow bench`: per configuration of a
//!   matrix (poller: interval × batch × pollers; stream: partitions × consumers × linger ×
//!   batch), the highest sustainable rate under a stated SLO, latency at fractions of it,
//!   and the raw limits of the same broker and store, so that the stream's efficiency is a
//!   ratio measured in one run.
//! - [`results`]: what was measured, shared by the harness and the report (neither imports
//!   the other).
//! - [`report`]: results.json (OpenMessaging-Benchmark-like), report.md and the charts.
//!
//! Architecture invariant: nothing here asserts on timings. Benchmarks measure and report;
//! the tests of this crate check only that the measurements are of the right things.

pub mod harness;
pub mod limits;
pub mod report;
pub mod results;
pub mod svg;
pub mod threads;
