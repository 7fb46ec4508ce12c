//! `tradeflow dlq replay`.

use clap::{Args, Subcommand};

/// Dead-letter commands.
#[derive(Subcommand)]
pub enum DlqCommand {
    /// Send dead letters back to the topic they came from (after a fix), and say how many.
    Replay(ReplayArgs),
}

/// Arguments of `tradeflow dlq replay`.
#[derive(Args)]
pub struct ReplayArgs {
    /// Kafka bootstrap servers, HOST:PORT[,HOST:PORT...].
    #[arg(long)]
    bootstrap: String,
    /// The source topic; its dead letters are in TOPIC.dlq.
    #[arg(long, default_value = "trades")]
    topic: String,
    /// The group that remembers which dead letters were already replayed.
    #[arg(long, default_value = "tradeflow-dlq-replay")]
    group: String,
}

/// Runs a dead-letter command.
pub async fn run(command: DlqCommand) -> anyhow::Result<bool> {
    match command {
        DlqCommand::Replay(arguments) => {
            let dlq_topic = tradeflow_stream::dlq::dlq_topic(&arguments.topic);
            tradeflow_stream::topic_partitions(&arguments.bootstrap, &dlq_topic).await?;
            let report = tradeflow_stream::dlq::replay(&arguments.bootstrap, &dlq_topic, &arguments.group).await?;
            println!("moved {} dead letter(s) from {dlq_topic} back to their source topic", report.moved);
            for (kind, count) in &report.by_kind {
                println!("  {kind}: {count}");
            }
            Ok(true)
        }
    }
}
