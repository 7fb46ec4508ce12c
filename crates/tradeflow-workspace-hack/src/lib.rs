//! No code: see this crate's `Cargo.toml`. The `tradeflow` binary depends on it so that its
//! build and the tests' build resolve the same features of a few shared dependencies, and
//! `cargo run` after `cargo test` compiles none of them again.
