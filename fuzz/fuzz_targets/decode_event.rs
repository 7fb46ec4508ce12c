//! Fuzz target: the event decoder's promises on any bytes (`decode`, `decode_up_to`,
//! `decode_tolerant`, and the round trip through `encode`/`encode_as` of whatever they
//! accept). The properties are in `src/decode_properties.rs`.

#![no_main]

libfuzzer_sys::fuzz_target!(|bytes: &[u8]| tradeflow_fuzz::decode_properties::check(bytes));
