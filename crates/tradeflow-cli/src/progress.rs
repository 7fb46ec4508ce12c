//! Progress of a long run on standard error: a bar on a terminal, a line every few seconds
//! otherwise (CI logs).

use indicatif::{ProgressBar, ProgressStyle};
use std::io::IsTerminal;
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tradeflow_check::RunProgress;

/// How often a line is printed when standard error is not a terminal.
const PLAIN_INTERVAL: Duration = Duration::from_secs(5);

/// Draws progress until the sender is dropped.
pub fn spawn(label: String, mut updates: watch::Receiver<RunProgress>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let terminal = std::io::stderr().is_terminal();
        let bar = terminal.then(|| {
            let bar = ProgressBar::new(0);
            bar.set_style(
                ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} applied, {msg} ({elapsed})")
                    .unwrap_or_else(|_| ProgressStyle::default_bar())
                    .progress_chars("=> "),
            );
            bar.set_prefix(label.clone());
            bar
        });
        let mut last_line = Instant::now();
        while updates.changed().await.is_ok() {
            let progress = *updates.borrow_and_update();
            match &bar {
                Some(bar) => {
                    bar.set_length(progress.total);
                    bar.set_position(progress.applied);
                    bar.set_message(format!("{} emitted, backlog {}", progress.emitted, progress.backlog));
                }
                None if last_line.elapsed() >= PLAIN_INTERVAL => {
                    last_line = Instant::now();
                    eprintln!(
                        "{label}: {}/{} applied, {} emitted, backlog {}",
                        progress.applied, progress.total, progress.emitted, progress.backlog
                    );
                }
                None => {}
            }
        }
        if let Some(bar) = bar {
            bar.finish_and_clear();
        }
    })
}
