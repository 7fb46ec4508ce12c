//! `tradeflow topics plan|apply`: topics as code.

use anyhow::Context;
use clap::{Args, Subcommand};
use std::path::PathBuf;
use tradeflow_cluster::topics::{self, Action, PlannedTopic, TopicsFile};

/// Topic commands.
#[derive(Subcommand)]
pub enum TopicsCommand {
    /// Show how the cluster differs from the topics file.
    Plan(TopicsArgs),
    /// Create missing topics (idempotent); add partitions where allowed.
    Apply(ApplyArgs),
}

/// Where the file and the cluster are.
#[derive(Args)]
pub struct TopicsArgs {
    /// Kafka bootstrap servers, HOST:PORT[,HOST:PORT...]. The embedded mock cluster lives only
    /// inside a run (and has no CreateTopics): runs create their topics through its mock API.
    #[arg(long, env = "KAFKA_BOOTSTRAP_SERVERS")]
    bootstrap: String,
    /// The topics file.
    #[arg(long, default_value = "topics.toml")]
    file: PathBuf,
}

/// Arguments of `topics apply`.
#[derive(Args)]
pub struct ApplyArgs {
    #[command(flatten)]
    topics: TopicsArgs,
    /// Allow adding partitions to keyed topics, which moves keys and can reorder one key's
    /// events while producers and consumers switch over.
    #[arg(long)]
    allow_reorder: bool,
}

fn load(arguments: &TopicsArgs) -> anyhow::Result<TopicsFile> {
    let text = std::fs::read_to_string(&arguments.file).with_context(|| format!("reading {}", arguments.file.display()))?;
    Ok(TopicsFile::parse(&text, &arguments.file.display().to_string())?)
}

/// Runs a topics command; false when something is refused or left undone.
pub async fn run(command: TopicsCommand) -> anyhow::Result<bool> {
    match command {
        TopicsCommand::Plan(arguments) => {
            let file = load(&arguments)?;
            let mut clean = true;
            for PlannedTopic {
                spec,
                fitted,
                state,
                action,
                ..
            } in topics::plan(&arguments.bootstrap, &file).await?
            {
                let now = state.map_or("absent".to_owned(), |state| {
                    format!("{} partitions, replication {}", state.partitions, state.replication_factor)
                });
                println!("{:<24} {:<32} -> {action}", spec.name, now);
                if let Some(why) = fitted {
                    println!("{:<24} note: {why}", "");
                }
                clean &= !matches!(action, Action::Refuse { .. } | Action::AddPartitionsReorders { .. });
            }
            Ok(clean)
        }
        TopicsCommand::Apply(arguments) => {
            let file = load(&arguments.topics)?;
            let outcomes = topics::apply(&arguments.topics.bootstrap, &file, arguments.allow_reorder).await?;
            let mut clean = true;
            for (name, outcome) in outcomes {
                println!("{name:<24} {outcome}");
                clean &= !(outcome.starts_with("refused") || outcome.starts_with("skipped"));
            }
            Ok(clean)
        }
    }
}
