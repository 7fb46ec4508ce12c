//! The properties the fuzz targets check, kept out of the targets so that a stable test can
//! run them over the committed corpus: [`decode_properties`] for `decode_event` (also
//! included by `crates/tradeflow-domain/tests/fuzz_corpus.rs`), [`dead_letter_headers`] for
//! the target of that name.

pub mod dead_letter_headers;
pub mod decode_properties;
