//! Identifiers: accounts, events and instrument symbols, each validated when built.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::sync::Arc;

/// The longest account id accepted; it is also the Kafka message key.
pub const ACCOUNT_ID_LEN_MAX: usize = 64;
/// The longest symbol accepted.
pub const SYMBOL_LEN_MAX: usize = 12;

/// Why an identifier was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    /// Empty or longer than the limit.
    #[error("length must be 1..={max} characters, got {len}")]
    Length {
        /// The length given.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A character outside the allowed set.
    #[error("character {character:?} is not allowed ({allowed})")]
    Character {
        /// The first offending character.
        character: char,
        /// What is allowed, in words.
        allowed: &'static str,
    },
    /// Not a UUID.
    #[error("not a UUID: {reason}")]
    NotUuid {
        /// What the parser said.
        reason: String,
    },
}

/// A customer account. ASCII letters, digits, `-` and `_`, 1 to 64 characters: safe as a
/// Kafka key, a SQL value and a file name. Shared text: every event of an account points
/// at one copy (a clone costs a reference count, not an allocation), which keeps a
/// workload of millions of events in memory at a fraction of the size.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct AccountId(Arc<str>);

impl AccountId {
    /// Validates and wraps an account id.
    pub fn new(id: impl Into<String>) -> Result<AccountId, IdError> {
        let id = id.into();
        check_chars(
            &id,
            ACCOUNT_ID_LEN_MAX,
            |c| c.is_ascii_alphanumeric() || c == '-' || c == '_',
            "ASCII letters, digits, '-' and '_'",
        )?;
        Ok(AccountId(id.into()))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for AccountId {
    type Error = IdError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        AccountId::new(value)
    }
}

impl From<AccountId> for String {
    fn from(value: AccountId) -> Self {
        value.0.as_ref().to_owned()
    }
}

impl fmt::Display for AccountId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An instrument ticker: 1 to 12 ASCII uppercase letters, digits or `.`. Shared text, as
/// an [`AccountId`].
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Symbol(Arc<str>);

impl Symbol {
    /// Validates and wraps a symbol.
    pub fn new(symbol: impl Into<String>) -> Result<Symbol, IdError> {
        let symbol = symbol.into();
        check_chars(
            &symbol,
            SYMBOL_LEN_MAX,
            |c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '.',
            "ASCII uppercase letters, digits and '.'",
        )?;
        Ok(Symbol(symbol.into()))
    }

    /// The symbol as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for Symbol {
    type Error = IdError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Symbol::new(value)
    }
}

impl From<Symbol> for String {
    fn from(value: Symbol) -> Self {
        value.0.as_ref().to_owned()
    }
}

impl fmt::Display for Symbol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A globally unique event id, a UUID (version 7 from the generator: time-ordered).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct EventId(uuid::Uuid);

impl EventId {
    /// Wraps a UUID.
    pub const fn from_uuid(id: uuid::Uuid) -> EventId {
        EventId(id)
    }

    /// Parses the hyphenated text form.
    pub fn parse(text: &str) -> Result<EventId, IdError> {
        uuid::Uuid::try_parse(text)
            .map(EventId)
            .map_err(|error| IdError::NotUuid { reason: error.to_string() })
    }

    /// The UUID.
    pub const fn uuid(self) -> uuid::Uuid {
        self.0
    }
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0.hyphenated(), f)
    }
}

fn check_chars(text: &str, max: usize, allowed: impl Fn(char) -> bool, allowed_words: &'static str) -> Result<(), IdError> {
    if text.is_empty() || text.len() > max {
        return Err(IdError::Length { len: text.len(), max });
    }
    match text.chars().find(|c| !allowed(*c)) {
        Some(character) => Err(IdError::Character {
            character,
            allowed: allowed_words,
        }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn account_ids_refuse_empty_long_and_odd_characters() {
        assert!(matches!(AccountId::new(""), Err(IdError::Length { len: 0, .. })));
        assert!(matches!(AccountId::new("a".repeat(65)), Err(IdError::Length { len: 65, .. })));
        assert!(matches!(AccountId::new("acct 1"), Err(IdError::Character { character: ' ', .. })));
        assert_eq!(AccountId::new("acct-00001").map(|id| id.to_string()), Ok("acct-00001".to_owned()));
    }

    #[test]
    fn symbols_are_uppercase_tickers() {
        assert!(Symbol::new("ACME").is_ok());
        assert!(matches!(Symbol::new("acme"), Err(IdError::Character { character: 'a', .. })));
    }

    #[test]
    fn event_ids_parse_uuids_only() {
        assert!(EventId::parse("0190b7c4-8f3e-7b2a-9c1d-2e3f4a5b6c7d").is_ok());
        assert!(matches!(EventId::parse("not-a-uuid"), Err(IdError::NotUuid { .. })));
    }
}
