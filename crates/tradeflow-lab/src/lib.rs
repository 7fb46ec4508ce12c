//! The lessons of running Kafka in production, as seeded experiments.
//!
//! Each lesson lives in one file under [`lessons`]: what the field learned, where it comes
//! from, and the variants that show it, each with the outcome it must show ([`expect`]).
//! [`variant`] holds the setup every lesson builds from and the runner (a fresh broker per
//! stream variant). The command line only parses arguments and renders the tables; the
//! property tests reuse the lessons' option builders.
//!
//! | component | file |
//! |---|---|
//! | the lessons, by experiment name | `lessons/mod.rs` |
//! | expected outcomes, violations, faults that must fire | `expect.rs` |
//! | a variant, the setup, the runner | `variant.rs` |
//! | the workshop's chapters: claim, run, judge | `chapters.rs` |

pub mod chapters;
pub mod expect;
pub mod lessons;
pub mod variant;

pub use expect::{Expected, RowVerdict, TimeLag, Violation, faults_fired};
pub use lessons::{LESSONS, Lesson, find};
pub use variant::{Setup, Variant, VariantRun};

/// An experiment that could not run, with the reason.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    /// The broker could not be started or refused something.
    #[error(transparent)]
    Cluster(#[from] tradeflow_cluster::ClusterError),
    /// The stream run failed.
    #[error(transparent)]
    Stream(#[from] tradeflow_stream::StreamError),
    /// The poller run failed.
    #[error(transparent)]
    Poller(#[from] tradeflow_poller::PollerError),
    /// The experiment cannot run as asked.
    #[error("{reason}")]
    Setup {
        /// Why.
        reason: String,
    },
}
