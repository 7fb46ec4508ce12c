//! The fuzz seed corpus on the stable toolchain: every file in `fuzz/corpus/decode_event/`
//! goes through the properties the `decode_event` fuzz target checks. The properties live
//! in `fuzz/src/decode_properties.rs`, included here by path, so the fuzz target and this
//! test cannot drift apart, and the domain crate carries no test code.

#[path = "../../../fuzz/src/decode_properties.rs"]
mod decode_properties;

use std::path::{Path, PathBuf};
use tradeflow_domain::codec::ENCODED_LEN_MAX;

/// The seed corpus of the `decode_event` fuzz target.
const CORPUS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../fuzz/corpus/decode_event");
/// Fewer seeds than this means the corpus moved or was emptied, and the test would check
/// next to nothing.
const CORPUS_FILES_MIN: usize = 10;

fn corpus_files() -> Vec<PathBuf> {
    let entries = std::fs::read_dir(CORPUS).unwrap_or_else(|error| panic!("reading the seed corpus {CORPUS}: {error}"));
    let mut files: Vec<PathBuf> = entries
        .map(|entry| entry.unwrap_or_else(|error| panic!("listing {CORPUS}: {error}")).path())
        .filter(|path| path.is_file())
        .collect();
    files.sort();
    files
}

/// Runs the properties on `bytes`, turning a broken one into the name of what broke it.
fn broken_by(name: &Path, bytes: &[u8]) -> Option<String> {
    std::panic::catch_unwind(|| decode_properties::check(bytes))
        .err()
        .map(|_| name.display().to_string())
}

#[test]
fn every_seed_keeps_the_decoders_promises() {
    let files = corpus_files();
    assert!(
        files.len() >= CORPUS_FILES_MIN,
        "{} seeds in {CORPUS}, expected at least {CORPUS_FILES_MIN}",
        files.len()
    );
    let broken: Vec<String> = files
        .iter()
        .filter_map(|path| {
            let bytes = std::fs::read(path).unwrap_or_else(|error| panic!("reading {}: {error}", path.display()));
            broken_by(path, &bytes)
        })
        .collect();
    assert!(
        broken.is_empty(),
        "seeds that break a promise (the panics above say which): {broken:?}"
    );
}

/// libFuzzer writes inputs of at most 4 KiB unless told otherwise, so the size limit is
/// checked here, on a valid event padded to it and one byte past it.
#[test]
fn the_size_limit_holds_at_its_edge() {
    let deposit =
        std::fs::read(Path::new(CORPUS).join("v1_deposit.json")).unwrap_or_else(|error| panic!("reading v1_deposit.json: {error}"));
    let mut at_limit = deposit.clone();
    at_limit.resize(ENCODED_LEN_MAX, b' ');
    assert!(
        tradeflow_domain::decode(&at_limit).is_ok(),
        "a valid event padded to the limit is accepted"
    );
    decode_properties::check(&at_limit);
    let mut over_limit = at_limit;
    over_limit.push(b' ');
    assert!(tradeflow_domain::decode(&over_limit).is_err(), "one byte over the limit is refused");
    decode_properties::check(&over_limit);
}
