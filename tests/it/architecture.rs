//! ARCHITECTURE.md's "Lessons → code" table and the lesson files agree: every file under
//! `src/lessons/` has a row, and every file a row names exists (a tidy test, as
//! rust-analyzer keeps its own).

use std::collections::BTreeSet;
use std::path::Path;

const LESSONS_DIR: &str = "crates/tradeflow-lab/src/lessons/";

fn workspace() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

/// The rows of the "Lessons → code" table: the file each names.
fn table_files() -> Vec<String> {
    let text = std::fs::read_to_string(workspace().join("ARCHITECTURE.md")).expect("ARCHITECTURE.md reads");
    let section = text
        .split("## Lessons → code")
        .nth(1)
        .expect("ARCHITECTURE.md has a \"Lessons → code\" section");
    let section = section.split("\n## ").next().unwrap_or_default();
    section
        .lines()
        .filter(|line| line.starts_with('|') && !line.starts_with("|---") && !line.starts_with("| lesson "))
        .map(|line| {
            let file = line.split('|').nth(2).unwrap_or_default().trim().trim_matches('`');
            assert!(!file.is_empty(), "a row names no file: {line}");
            file.to_owned()
        })
        .collect()
}

#[test]
fn every_lesson_file_has_a_row_and_every_row_names_a_file_that_exists() {
    let rows = table_files();
    assert!(!rows.is_empty(), "the table has no rows");
    for file in &rows {
        assert!(
            workspace().join(file).is_file(),
            "ARCHITECTURE.md names {file}, which does not exist"
        );
    }
    let named: BTreeSet<&str> = rows.iter().map(String::as_str).collect();
    let lessons = std::fs::read_dir(workspace().join(LESSONS_DIR)).expect("the lessons directory reads");
    for entry in lessons {
        let name = entry.expect("a directory entry").file_name().to_string_lossy().into_owned();
        if name == "mod.rs" || !name.ends_with(".rs") {
            continue;
        }
        let file = format!("{LESSONS_DIR}{name}");
        assert!(
            named.contains(file.as_str()),
            "{file} has no row in ARCHITECTURE.md's \"Lessons → code\" table"
        );
    }
}

#[test]
fn every_lesson_file_opens_with_its_lesson() {
    for entry in std::fs::read_dir(workspace().join(LESSONS_DIR)).expect("the lessons directory reads") {
        let path = entry.expect("a directory entry").path();
        let text = std::fs::read_to_string(&path).expect("a lesson file reads");
        if path.ends_with("mod.rs") {
            continue;
        }
        assert!(
            text.starts_with("//! Lesson: "),
            "{} does not open with `//! Lesson: `",
            path.display()
        );
        assert!(text.contains("From the field:"), "{} names no source in the field", path.display());
        assert!(
            text.contains("Variants") || text.contains("'s run"),
            "{} says nothing of its variants or its chapter's run",
            path.display()
        );
    }
}

#[test]
fn every_experiment_has_a_lesson_file_named_after_it() {
    for lesson in tradeflow_lab::LESSONS {
        let file = workspace().join(LESSONS_DIR).join(format!("{}.rs", lesson.name.replace('-', "_")));
        assert!(file.is_file(), "experiment {} has no file {}", lesson.name, file.display());
    }
}
