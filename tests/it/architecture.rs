//! Tidy tests of the repository itself, as rust-analyzer keeps its own: ARCHITECTURE.md's
//! "Lessons → code" table and the lesson files agree (every file under `src/lessons/` has a
//! row, and every file a row names exists), and every ignored test says which server it
//! needs in words `scripts/test` can report.

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

/// The workspace's integration-test files: `tests/it/*.rs` and each crate's `tests/*.rs`.
fn integration_test_files() -> Vec<std::path::PathBuf> {
    let mut directories = vec![workspace().join("tests/it")];
    for entry in std::fs::read_dir(workspace().join("crates")).expect("the crates directory reads") {
        directories.push(entry.expect("a directory entry").path().join("tests"));
    }
    directories
        .iter()
        .filter_map(|directory| std::fs::read_dir(directory).ok())
        .flatten()
        .map(|entry| entry.expect("a directory entry").path())
        .filter(|path| path.extension().is_some_and(|extension| extension == "rs"))
        .collect()
}

#[test]
fn every_ignored_test_names_the_server_it_needs_as_scripts_test_reads_it() {
    let script = std::fs::read_to_string(workspace().join("scripts/test")).expect("scripts/test reads");
    for (backend, prefix) in tradeflow_tests::IGNORE_REASON_PREFIXES {
        assert!(
            script.lines().any(|line| line.contains(prefix) && line.contains(backend)),
            "scripts/test has no line mapping ignore reasons that begin {prefix:?} to {backend}"
        );
    }
    let mut ignored = 0;
    for path in integration_test_files() {
        let text = std::fs::read_to_string(&path).expect("a test file reads");
        for line in text.lines().map(str::trim).filter(|line| line.starts_with("#[ignore")) {
            ignored += 1;
            let known = tradeflow_tests::IGNORE_REASON_PREFIXES
                .iter()
                .any(|(_, prefix)| line.starts_with(&format!("#[ignore = \"{prefix}")));
            assert!(
                known,
                "{}: `{line}` does not begin with a reason scripts/test knows ({:?}): its last line could not name the backend",
                path.display(),
                tradeflow_tests::IGNORE_REASON_PREFIXES
            );
        }
    }
    assert!(ignored > 0, "no ignored test found: is the search looking in the right place?");
}
