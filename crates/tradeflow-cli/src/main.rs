//! `tradeflow`: run, measure and break two architectures for keeping balances correct
//! while trades execute (a poller over a table, and an event-driven pipeline on Kafka).
//!
//! Every run prints its seed first, shows progress, ends with a table and can write its
//! JSON record. Errors are one line that says what was being done and what to do.

mod args;
mod balance_service;
mod bench;
mod ceilings;
mod chapter;
mod compare;
mod dlq;
mod experiment;
mod progress;
mod run_poller;
mod run_stream;
mod topics;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

/// Exit code of a run that completed but whose checker found a violation.
pub const EXIT_VERDICT_FAIL: u8 = 3;
/// Exit code of an experiment with a row whose faults did not fire, or caught nothing the
/// lesson is about, and no row that came out wrong: it could not show its lesson.
pub const EXIT_UNKNOWN: u8 = 2;
/// Exit code of an experiment that cannot run honestly on the backend it was given (it
/// says why): a loop over every experiment skips it there.
pub const EXIT_NOT_HERE: u8 = 4;

#[derive(Parser)]
#[command(
    name = "tradeflow",
    version,
    about = "Run, measure and break two architectures for keeping customer balances correct while trades execute.",
    long_about = "Run, measure and break two architectures for keeping customer balances correct while trades execute: \
a poller over a database table, and an event-driven pipeline on Kafka. Same domain, same seeded workload, same database.\n\n\
Exit codes: 0 the run passed its checks, 1 an error stopped it, 3 it finished but the checker found lost, duplicated or \
reordered events, bad balances or mismatched accounts.\n\nLogs go to standard error; set RUST_LOG (for example RUST_LOG=debug) for more."
)]
struct Cli {
    /// Log format on standard error.
    #[arg(long, global = true, value_enum, default_value_t = args::LogFormat::Human)]
    log_format: args::LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run one architecture on a seeded workload and check the result.
    #[command(subcommand)]
    Run(RunCommand),
    /// The main job: the same seeded workload through the poller and the stream on the same
    /// store, then a side-by-side table, OUT/results.json and OUT/report.md.
    Compare(compare::CompareArgs),
    /// The balance service alone, as a long-running service against any Kafka: any
    /// producer that writes the wire format (docs/wire-format.md) can feed it.
    BalanceService(balance_service::ServiceArgs),
    /// Print the balances and positions a store holds.
    Balances(balance_service::BalancesArgs),
    /// Dead letters.
    #[command(subcommand)]
    Dlq(dlq::DlqCommand),
    /// The lessons as seeded experiments: `tradeflow experiment list`, or
    /// `tradeflow experiment NAME --seed S --broker mock|tansu|kafka|container|external --out DIR`.
    /// Prints a verdict table (expected outcome per variant, and whether it happened) and
    /// writes DIR/experiment.json. Exit code 3 when a variant did not come out as expected.
    Experiment(experiment::ExperimentArgs),
    /// The benchmark: each configuration's highest sustainable rate under an SLO, latency
    /// at fractions of it, and the raw produce, consume and store-apply limits of the same
    /// broker and store, so the stream's efficiency is a ratio. Writes results.json,
    /// report.md and SVG charts to OUT/<date-time>/ and OUT/latest/.
    Bench(bench::BenchArgs),
    /// Topics as code (topics.toml): plan shows the difference from a cluster, apply
    /// creates what is missing.
    #[command(subcommand)]
    Topics(topics::TopicsCommand),
    /// The workshop (chapters/): `chapter list`, `chapter check NN` (builds your code and
    /// runs the chapter's experiment on it: exit 0 pass, 1 fail, 2 unknown), `chapter hint
    /// NN`, `chapter solution NN` (after a pass, or with --give-up).
    #[command(subcommand)]
    Chapter(chapter::ChapterCommand),
    /// Takes the write lock of a SQLite store file and holds it until killed: the
    /// database-outage lesson's fault on SQLite, from a process of its own. Prints
    /// `locked` once it holds the lock.
    #[command(hide = true)]
    HoldSqliteLock {
        /// The SQLite file.
        file: std::path::PathBuf,
    },
}

#[derive(Subcommand)]
enum RunCommand {
    /// The poller baseline: the system of record inserts events into a table and pollers
    /// apply them to balances.
    Poller(run_poller::PollerArgs),
    /// The event-driven rewrite: the system of record publishes events to Kafka, keyed by
    /// account, and a balance service in a consumer group applies them.
    Stream(run_stream::StreamArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    args::init_logging(cli.log_format);
    // The one check of the environment's Kafka security settings, for every command that
    // builds a Kafka client: invalid settings stop it here, with the reason and before it
    // opens or starts anything, instead of a client connecting in plaintext.
    if builds_kafka_clients(&cli.command)
        && let Err(refused) = tradeflow_cluster::external::Security::from_env()
    {
        eprintln!("error: {refused}");
        return ExitCode::FAILURE;
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: starting the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    // The balance service stops on Ctrl-C by itself (it finishes its batch first); every
    // other command is dropped on Ctrl-C, so the brokers it started (tansu, the Kafka JVMs,
    // containers) are stopped by their destructors instead of outliving it.
    let graceful = matches!(cli.command, Command::BalanceService(_));
    let command = async {
        match cli.command {
            Command::Run(RunCommand::Poller(arguments)) => run_poller::run(arguments).await,
            Command::Run(RunCommand::Stream(arguments)) => run_stream::run(arguments).await,
            Command::Compare(arguments) => compare::run(arguments).await,
            Command::BalanceService(arguments) => balance_service::run(arguments).await,
            Command::Balances(arguments) => balance_service::balances(arguments).await,
            Command::Dlq(command) => dlq::run(command).await,
            Command::Topics(command) => topics::run(command).await,
            Command::Experiment(arguments) => experiment::run(arguments).await,
            Command::Bench(arguments) => bench::run(arguments).await,
            Command::Chapter(command) => chapter::run(command).await,
            Command::HoldSqliteLock { file } => hold_sqlite_lock(&file).await,
        }
    };
    let outcome = runtime.block_on(async {
        if graceful {
            return command.await;
        }
        tokio::select! {
            outcome = command => outcome,
            _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted (Ctrl-C): the brokers this run started were stopped")),
        }
    });
    // A Kafka node whose destructor could not run (a task still held its cluster) dies here.
    tradeflow_cluster::kafka::kill_every_node();
    match outcome {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(EXIT_VERDICT_FAIL),
        Err(ref error) if let Some(exit) = error.downcast_ref::<chapter::Exit>() => ExitCode::from(exit.code),
        Err(error) if error.downcast_ref::<experiment::Unknown>().is_some() => {
            eprintln!("{error:#}");
            ExitCode::from(EXIT_UNKNOWN)
        }
        Err(error) if error.downcast_ref::<experiment::NotHere>().is_some() => {
            eprintln!("{error:#}");
            ExitCode::from(EXIT_NOT_HERE)
        }
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// Whether the command builds Kafka clients, on any broker (the mock's clients get the
/// environment's security settings too). Every command is named, so that a new one has to
/// say. `experiment list` counts as an experiment: the name is the experiment's argument.
fn builds_kafka_clients(command: &Command) -> bool {
    use chapter::ChapterCommand;
    match command {
        Command::Run(RunCommand::Stream(_))
        | Command::Compare(_)
        | Command::BalanceService(_)
        | Command::Dlq(_)
        | Command::Topics(_)
        | Command::Experiment(_)
        | Command::Bench(_)
        | Command::Chapter(ChapterCommand::Check(_) | ChapterCommand::Run(_)) => true,
        Command::Run(RunCommand::Poller(_))
        | Command::Balances(_)
        | Command::Chapter(ChapterCommand::List { .. } | ChapterCommand::Hint { .. } | ChapterCommand::Solution { .. })
        | Command::HoldSqliteLock { .. } => false,
    }
}

/// `tradeflow hold-sqlite-lock FILE`: holds the file's write lock until the process is
/// killed.
async fn hold_sqlite_lock(file: &std::path::Path) -> anyhow::Result<bool> {
    let _connection = tradeflow_store::connect::lock_sqlite_file(file).await?;
    println!("locked");
    use std::io::Write as _;
    std::io::stdout().flush()?;
    std::future::pending::<()>().await;
    Ok(true)
}
