//! Fuzz target: the dead-letter headers as replay reads them (`dlq::header`), against what
//! was written. The input format and the property are in `src/dead_letter_headers.rs`.

#![no_main]

libfuzzer_sys::fuzz_target!(|input: &[u8]| tradeflow_fuzz::dead_letter_headers::check_in_fuzzer(input));
