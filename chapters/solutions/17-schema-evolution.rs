//! Chapter 17, a solution: refuse a newer version whole. What the consumer does not know
//! may change what the message means (a fee takes cash); set it aside on the dead-letter
//! topic, and replay it once the consumer reads that version.

use crate::NewerVersion;

/// What a consumer that reads versions up to `reads` does with a message of `version`.
pub fn on_newer_version(version: u64, reads: u64) -> NewerVersion {
    let _ = (version, reads);
    NewerVersion::Refuse
}
