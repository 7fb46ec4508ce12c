//! The checker and the run record.
//!
//! - [`history`]: what a run emitted, what had to be applied, what each store applied in
//!   which order; [`check`] turns it into verdicts.
//! - [`store_history`]: the same, read back from a store's apply log and balances.
//! - [`record`]: the JSON run record every run writes, latency histograms and process
//!   figures, and the human table.
//!
//! Architecture invariant: the checker never trusts the system under test. It reads the
//! apply log and the final balances back from the store and compares them with the
//! oracle, which it computes from the workload alone.

pub mod history;
pub mod orders;
pub mod record;
pub mod store_history;

pub use history::{Applied, CheckInput, CheckReport, Verdict, check};
pub use record::{
    BacklogSample, BackwardCommit, Drain, DrainWatch, FaultRecord, LagSample, LatencyRecorder, LatencySummary, PartitionLag, ProcessStats,
    RunProgress, RunRecord, backward_commits, duration_and_throughput,
};
pub use store_history::{check_store, check_workload};
