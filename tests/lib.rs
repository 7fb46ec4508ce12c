//! Shared helpers for the integration tests live in `helpers/`; this library is empty on purpose.
