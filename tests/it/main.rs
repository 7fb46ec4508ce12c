//! The integration tests, one binary: stores, the poller, and (later) the stream against
//! real databases and brokers. Helpers are in `tests/lib.rs`.

mod architecture;
mod brokers;
mod chapters;
mod kafka;
mod poller;
mod properties;
mod store;
mod stream;
mod topics;
