//! The workshop's commands as a learner meets them: the list, a hint, and a solution kept
//! back until a pass. (Each chapter's run, failing as shipped and passing solved, is proved
//! by `.ci/prove-chapters`: it needs a second build with the solutions in.)

use std::process::{Command, Output};

/// Runs `tradeflow chapter ARGS` with its progress kept in `target` (a fresh directory, so
/// no earlier check's status leaks in).
fn chapter(target: &std::path::Path, args: &[&str]) -> Output {
    Command::new(tradeflow_tests::tradeflow_executable())
        .arg("chapter")
        .args(args)
        .env("CARGO_TARGET_DIR", target)
        .env_remove("TRADEFLOW_CHAPTER_STATUS")
        .output()
        .expect("tradeflow runs")
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

#[test]
fn the_list_shows_every_chapter_not_started_with_the_file_to_edit() {
    let target = tempfile::tempdir().expect("a temporary directory");
    let listed = chapter(target.path(), &["list"]);
    assert!(listed.status.success(), "{}", text(&listed));
    for chapter in tradeflow_lab::chapters::CHAPTERS {
        let line = text(&listed)
            .lines()
            .find(|line| line.starts_with(chapter.number))
            .map(str::to_owned)
            .unwrap_or_else(|| panic!("chapter {} is listed:\n{}", chapter.number, text(&listed)));
        assert!(line.contains("not started"), "{line}");
        assert!(line.contains(&format!("chapters/{}/exercise.rs", chapter.folder)), "{line}");
    }
}

#[test]
fn a_solution_is_kept_back_until_a_pass_or_a_give_up() {
    let target = tempfile::tempdir().expect("a temporary directory");
    let refused = chapter(target.path(), &["solution", "03"]);
    assert_eq!(refused.status.code(), Some(1), "{}", text(&refused));
    assert!(text(&refused).contains("has not passed yet"), "{}", text(&refused));
    let given = chapter(target.path(), &["solution", "3", "--give-up"]);
    assert!(given.status.success(), "{}", text(&given));
    assert!(
        text(&given).contains("BatchStep::ApplyToDatabase, BatchStep::CommitOffsets"),
        "{}",
        text(&given)
    );
    std::fs::write(
        target.path().join("chapters-status.json"),
        r#"{"03-commit-after-database": "passed"}"#,
    )
    .expect("a status written");
    let after_pass = chapter(target.path(), &["solution", "03"]);
    assert!(after_pass.status.success(), "{}", text(&after_pass));
}

#[test]
fn a_hint_is_shown_and_an_unknown_chapter_is_named_with_the_ones_that_exist() {
    let target = tempfile::tempdir().expect("a temporary directory");
    let hint = chapter(target.path(), &["hint", "01"]);
    assert!(hint.status.success() && !text(&hint).trim().is_empty(), "{}", text(&hint));
    let unknown = chapter(target.path(), &["hint", "42"]);
    assert_eq!(unknown.status.code(), Some(1), "{}", text(&unknown));
    assert!(
        text(&unknown).contains("no chapter \"42\"") && text(&unknown).contains("01-offset-lag"),
        "{}",
        text(&unknown)
    );
}
