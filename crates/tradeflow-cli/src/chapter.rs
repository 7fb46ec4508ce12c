//! `tradeflow chapter`: the workshop under `chapters/`. `list` shows every chapter and how
//! the learner's last check went; `check NN` builds the learner's code, runs the chapter's
//! experiment on it and prints a verdict (exit 0 pass, 1 fail, 2 unknown); `run NN` does
//! the same without building; `hint NN` and `solution NN` (after a pass, or `--give-up`).

use crate::args::StoreArgs;
use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use tradeflow_lab::Setup;
use tradeflow_lab::chapters::{CHAPTERS, Chapter, Judgement};

/// `tradeflow chapter`.
#[derive(Subcommand)]
pub enum ChapterCommand {
    /// Every chapter, in order, with the status of your last check: not started, failing
    /// (with which violation), unknown, or passed.
    List {
        /// One line per chapter, `FOLDER<TAB>VIOLATION<TAB>BACKEND<TAB>STORE`: the violation
        /// each exercise as shipped must fail with, and the backend and store it runs on
        /// (for the workshop's proof in CI).
        #[arg(long, hide = true)]
        declared: bool,
    },
    /// Builds your code (cargo build), runs the chapter's experiment on its default backend
    /// and prints the claim, the run's table and a verdict. Exit code 0 pass, 1 fail, 2
    /// unknown (the run could not show the lesson: run it again).
    Check(ChapterRunArgs),
    /// Like check, on the code this binary was built from (no build): what `Run it` in a
    /// chapter's README runs.
    Run(ChapterRunArgs),
    /// A nudge for the chapter's exercise.
    Hint {
        /// The chapter: 1, 01 or its folder name.
        chapter: String,
    },
    /// The chapter's solution: shown once your check has passed, or with --give-up.
    Solution {
        /// The chapter: 1, 01 or its folder name.
        chapter: String,
        /// Show it even though your check has not passed.
        #[arg(long)]
        give_up: bool,
    },
}

/// Arguments of `chapter check` and `chapter run`.
#[derive(Args)]
pub struct ChapterRunArgs {
    /// The chapter: 1, 01 or its folder name.
    chapter: String,
    /// Seed of the workload and of the fault's timing; random when omitted (and printed
    /// first).
    #[arg(long)]
    seed: Option<u64>,
    #[command(flatten)]
    store: StoreArgs,
}

/// A chapter's verdict as the process's exit code (0 pass, 1 fail, 2 unknown).
#[derive(Debug)]
pub struct Exit {
    /// The code.
    pub code: u8,
}

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "chapter verdict: exit code {}", self.code)
    }
}

impl std::error::Error for Exit {}

/// Events of a chapter's run, and their offered rate: a run of a few seconds.
const EVENTS: u64 = 6_000;
const RATE_PER_S: f64 = 2_000.0;

/// Runs a `chapter` command.
pub async fn run(command: ChapterCommand) -> anyhow::Result<bool> {
    let workspace = workspace()?;
    match command {
        ChapterCommand::List { declared: true } => {
            for chapter in CHAPTERS {
                println!(
                    "{}\t{}\t{}\t{}",
                    chapter.folder,
                    chapter.violation,
                    chapter.backend,
                    chapter.store.as_str()
                );
            }
            Ok(true)
        }
        ChapterCommand::List { declared: false } => list(&workspace),
        ChapterCommand::Check(arguments) => check(&workspace, &arguments),
        ChapterCommand::Run(arguments) => run_chapter(&workspace, &arguments).await,
        ChapterCommand::Hint { chapter } => {
            let chapter = find(&chapter)?;
            print!("{}", read(&workspace.join("chapters").join(chapter.folder).join("hint.md"))?);
            Ok(true)
        }
        ChapterCommand::Solution { chapter, give_up } => solution(&workspace, &chapter, give_up),
    }
}

fn find(number: &str) -> anyhow::Result<&'static Chapter> {
    tradeflow_lab::chapters::find(number).with_context(|| {
        format!(
            "no chapter {number:?}; these exist: {}",
            CHAPTERS.iter().map(|chapter| chapter.folder).collect::<Vec<_>>().join(", ")
        )
    })
}

fn read(path: &Path) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
}

/// The workspace this binary was built from (where `chapters/` is), or the nearest one
/// above the current directory.
fn workspace() -> anyhow::Result<PathBuf> {
    let built_from = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    if built_from.join("chapters").is_dir() {
        return Ok(built_from);
    }
    let here = std::env::current_dir().context("reading the current directory")?;
    here.ancestors()
        .find(|folder| folder.join("chapters").is_dir() && folder.join("Cargo.toml").is_file())
        .map(Path::to_path_buf)
        .context("no tradeflow workspace (a folder with chapters/ and Cargo.toml) here or above: run this from your clone")
}

/// Where the learner's progress is kept: beside the build, never committed
/// (`TRADEFLOW_CHAPTER_STATUS` puts it elsewhere: the workshop's proof keeps its own).
fn status_path(workspace: &Path) -> PathBuf {
    std::env::var_os("TRADEFLOW_CHAPTER_STATUS")
        .map(PathBuf::from)
        .unwrap_or_else(|| target_dir(workspace).join("chapters-status.json"))
}

fn target_dir(workspace: &Path) -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace.join("target"))
}

/// The last check's outcome per chapter folder.
type Progress = BTreeMap<String, String>;

fn load_progress(workspace: &Path) -> Progress {
    std::fs::read_to_string(status_path(workspace))
        .ok()
        .and_then(|text| serde_json::from_str(&text).ok())
        .unwrap_or_default()
}

fn save_progress(workspace: &Path, chapter: &Chapter, status: String) -> anyhow::Result<()> {
    let mut progress = load_progress(workspace);
    progress.insert(chapter.folder.to_owned(), status);
    let path = status_path(workspace);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    }
    std::fs::write(&path, serde_json::to_string_pretty(&progress)?).with_context(|| format!("writing {}", path.display()))
}

fn list(workspace: &Path) -> anyhow::Result<bool> {
    let progress = load_progress(workspace);
    let width = CHAPTERS.iter().map(|chapter| chapter.title.len()).max().unwrap_or(0);
    println!("{:<4} {:<width$}  {:<28} you write", "", "chapter", "status");
    for chapter in CHAPTERS {
        let status = progress.get(chapter.folder).map_or("not started", String::as_str);
        println!(
            "{:<4} {:<width$}  {:<28} {} in chapters/{}/exercise.rs",
            chapter.number, chapter.title, status, chapter.function, chapter.folder
        );
    }
    println!("\nstart with chapters/README.md; check a chapter with: cargo run -q --bin tradeflow -- chapter check NN");
    Ok(true)
}

fn solution(workspace: &Path, number: &str, give_up: bool) -> anyhow::Result<bool> {
    let chapter = find(number)?;
    let passed = load_progress(workspace)
        .get(chapter.folder)
        .is_some_and(|status| status.starts_with("passed"));
    if !passed && !give_up {
        bail!(
            "chapter {} has not passed yet: check it with `cargo run -q --bin tradeflow -- chapter check {}`, ask for a hint with `chapter hint {}`, or see the solution anyway with --give-up",
            chapter.number,
            chapter.number,
            chapter.number
        );
    }
    let path = workspace.join("chapters/solutions").join(format!("{}.rs", chapter.folder));
    print!("{}", read(&path)?);
    Ok(true)
}

/// Builds the learner's code, then runs the chapter with the binary just built.
fn check(workspace: &Path, arguments: &ChapterRunArgs) -> anyhow::Result<bool> {
    let chapter = find(&arguments.chapter)?;
    println!("building your code (cargo build --bin tradeflow) ...");
    let built = std::process::Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
        .args(["build", "--quiet", "--bin", "tradeflow"])
        .current_dir(workspace)
        .status()
        .context("running cargo build (is the Rust toolchain on PATH?)")?;
    if !built.success() {
        save_progress(workspace, chapter, "failing: does not compile".into())?;
        println!("\nFAIL: your code does not compile; the errors are above");
        return Err(Exit { code: 1 }.into());
    }
    let binary = target_dir(workspace).join("debug/tradeflow");
    let mut command = std::process::Command::new(&binary);
    command.args(["chapter", "run", chapter.folder]);
    if let Some(seed) = arguments.seed {
        command.args(["--seed", &seed.to_string()]);
    }
    command.args(["--store", arguments.store.choice_name()]);
    // A PostgreSQL URL (it may hold a password) goes on in the environment, never on the
    // child's command line; a SQLite path as it was given.
    if let Some(url) = &arguments.store.database_url {
        match arguments.store.store {
            crate::args::StoreChoice::Postgres => command.env("DATABASE_URL", url),
            crate::args::StoreChoice::Sqlite => command.args(["--database-url", url]),
        };
    }
    let status = command.status().with_context(|| format!("running {}", binary.display()))?;
    match status.code() {
        Some(0) => Ok(true),
        Some(code @ (1 | 2)) => Err(Exit { code: code as u8 }.into()),
        _ => bail!("the chapter's run ended badly ({status}); its errors are above"),
    }
}

/// Runs the chapter's experiment on the code this binary holds, and judges it.
async fn run_chapter(workspace: &Path, arguments: &ChapterRunArgs) -> anyhow::Result<bool> {
    let chapter = find(&arguments.chapter)?;
    let seed = arguments.seed.unwrap_or_else(crate::args::random_seed);
    println!("seed: {seed}");
    println!("chapter {} · {}\n\nthe claim: {}\n", chapter.number, chapter.title, chapter.claim);
    let setup = Setup {
        seed,
        events: EVENTS,
        rate: RATE_PER_S,
        broker: chapter.backend,
        store: arguments.store.config()?.kind,
        service: Some(tradeflow_stream::process::ServiceProcesses {
            executable: std::env::current_exe().context("finding this tradeflow executable, to start the balance service as processes")?,
            store: arguments.store.config()?,
        }),
    };
    let variants = (chapter.run)(&setup).map_err(|reason| anyhow::anyhow!("chapter {} cannot run: {reason}", chapter.number))?;
    let store = arguments.store.open().await?;
    let mut runs = Vec::with_capacity(variants.len());
    for variant in variants {
        println!("{}", variant.label);
        match crate::experiment::run_variant(&store, chapter.backend, None, &variant).await {
            Ok(record) => {
                print_run(&record);
                runs.push((variant, record));
            }
            Err(error) => {
                store.close().await;
                return Err(error);
            }
        }
    }
    store.close().await;
    let judgement = chapter.judge(&runs);
    let (status, code) = match &judgement {
        Judgement::Pass(evidence) => {
            println!("\nPASS: {evidence}");
            println!(
                "solution to compare with yours: cargo run -q --bin tradeflow -- chapter solution {}",
                chapter.number
            );
            ("passed".to_owned(), 0)
        }
        Judgement::Fail { violation, detail } => {
            println!("\nFAIL: {detail}");
            println!("a hint: cargo run -q --bin tradeflow -- chapter hint {}", chapter.number);
            (format!("failing: {violation}"), 1)
        }
        Judgement::Unknown(why) => {
            println!("\nUNKNOWN: {why}");
            ("unknown: run the check again".to_owned(), 2)
        }
    };
    save_progress(workspace, chapter, status)?;
    if code == 0 { Ok(true) } else { Err(Exit { code }.into()) }
}

/// Prints a chapter run's table, each fault with what it did, and what the balance service
/// counted.
fn print_run(record: &tradeflow_check::RunRecord) {
    println!("\n{}", record.table());
    for fault in &record.faults {
        let outcome = match (&fault.error, &fault.effect) {
            (Some(error), _) => format!("NOT APPLIED: {error}"),
            (None, Some(effect)) => effect.clone(),
            (None, None) => "applied".into(),
        };
        println!("  fault at {:>6} ms  {}: {outcome}", fault.at_ms, fault.fault);
    }
    let service: Vec<String> = ["dead_lettered", "poison_retries", "redelivered", "fenced", "crashed_holding"]
        .iter()
        .filter_map(|count| {
            let value = record.config.get(*count)?.as_u64()?;
            (value > 0).then(|| format!("{} {value}", count.replace('_', " ")))
        })
        .collect();
    if !service.is_empty() {
        println!("  the balance service: {}", service.join(", "));
    }
    if let Some(settled) = record
        .config
        .get("assignments")
        .and_then(|settled| settled.as_array())
        .and_then(|settled| settled.last())
    {
        println!("  partitions per consumer, last settled: {}", settled["partitions_per_member"]);
    }
}
