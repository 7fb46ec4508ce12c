//! The wire format: one JSON object per event, versioned by `schema_version`.
//!
//! Decoding reads the object field by field so that every refusal names the field and the
//! reason; it never panics, whatever the bytes. `docs/wire-format.md` describes the format
//! for producers in other languages.

use crate::event::{Event, EventKind, Side};
use crate::ids::{AccountId, EventId, Symbol};
use crate::money::{AMOUNT_MAX, Money, PRICE_MAX, Quantity};
use serde_json::{Map, Value, json};

/// The newest schema version this build reads and writes. It reads every version from
/// [`SCHEMA_VERSION_OLDEST`] to this one; it writes each event in the oldest version that
/// can carry it (see [`encode`]), so that consumers not yet upgraded keep reading what
/// did not change.
pub const SCHEMA_VERSION: u64 = 2;
/// The oldest schema version this build reads.
pub const SCHEMA_VERSION_OLDEST: u64 = 1;
/// The optional field schema_version 2 added to `trade_executed`: the client's id of the
/// order the trade filled, for consumers that trace orders (the balance service checks it
/// and has no use for it).
pub const CLIENT_ORDER_ID: &str = "client_order_id";
/// The longest `client_order_id`, in characters.
pub const CLIENT_ORDER_ID_LEN_MAX: usize = 64;
/// The largest encoded event accepted, in bytes.
pub const ENCODED_LEN_MAX: usize = 64 * 1024;

const COMMON_FIELDS: [&str; 6] = ["schema_version", "event_id", "account_id", "account_seq", "occurred_at", "type"];

/// Why bytes are not an event this build accepts.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Over [`ENCODED_LEN_MAX`].
    #[error("message is {len} bytes, more than the {max} accepted")]
    TooLarge {
        /// Size of the message.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// Not JSON, or not UTF-8.
    #[error("not JSON: {reason}")]
    NotJson {
        /// What the parser said.
        reason: String,
    },
    /// JSON, but not an object.
    #[error("expected a JSON object, got {found}")]
    NotAnObject {
        /// The JSON type found.
        found: &'static str,
    },
    /// `schema_version` is one this reader does not know.
    #[error("unknown schema_version {version} (this reader reads {SCHEMA_VERSION_OLDEST} to {newest})")]
    UnknownSchemaVersion {
        /// The version found, as written.
        version: String,
        /// The newest version the reader reads.
        newest: u64,
    },
    /// A required field is absent.
    #[error("field `{field}` is missing")]
    MissingField {
        /// The field.
        field: &'static str,
    },
    /// A field has the wrong JSON type.
    #[error("field `{field}` must be {expected}, got {found}")]
    WrongType {
        /// The field.
        field: &'static str,
        /// The type wanted.
        expected: &'static str,
        /// The JSON type found.
        found: &'static str,
    },
    /// A field has the right type but a refused value.
    #[error("field `{field}`: {reason}")]
    InvalidValue {
        /// The field.
        field: &'static str,
        /// Why the value is refused.
        reason: String,
    },
    /// A field this version does not define.
    #[error("field `{field}` is not part of schema_version {version} for type `{event_type}`")]
    UnknownField {
        /// The field.
        field: String,
        /// The event type.
        event_type: String,
        /// The message's schema version.
        version: u64,
    },
}

/// Why an event cannot be written in the schema version asked for.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    /// The version is not one this build writes.
    #[error("schema_version {version} is not one this build writes ({SCHEMA_VERSION_OLDEST} to {SCHEMA_VERSION})")]
    UnknownVersion {
        /// The version asked for.
        version: u64,
    },
    /// The event's type came after the version.
    #[error("type `{event_type}` needs schema_version {needs} or later, not {version}")]
    TooNew {
        /// The event type.
        event_type: &'static str,
        /// The oldest version that carries it.
        needs: u64,
        /// The version asked for.
        version: u64,
    },
}

impl DecodeError {
    /// A short stable name for the kind of error, used in dead-letter headers and metrics.
    pub const fn kind(&self) -> &'static str {
        match self {
            DecodeError::TooLarge { .. } => "too_large",
            DecodeError::NotJson { .. } => "not_json",
            DecodeError::NotAnObject { .. } => "not_an_object",
            DecodeError::UnknownSchemaVersion { .. } => "unknown_schema_version",
            DecodeError::MissingField { .. } => "missing_field",
            DecodeError::WrongType { .. } => "wrong_type",
            DecodeError::InvalidValue { .. } => "invalid_value",
            DecodeError::UnknownField { .. } => "unknown_field",
        }
    }
}

/// Encodes an event as one line of JSON, in the oldest schema version that carries it:
/// version 1 for the three first types, 2 for `fee_charged`.
pub fn encode(event: &Event) -> Vec<u8> {
    object_bytes(&object_of(event, event.kind.since_schema_version()))
}

/// Encodes an event in schema version `version` (a producer upgraded to a version writes it
/// on every message); `client_order_id`, version 2's optional field of a trade, is added
/// when given.
pub fn encode_as(event: &Event, version: u64, client_order_id: Option<&str>) -> Result<Vec<u8>, EncodeError> {
    if !(SCHEMA_VERSION_OLDEST..=SCHEMA_VERSION).contains(&version) {
        return Err(EncodeError::UnknownVersion { version });
    }
    let needs = event.kind.since_schema_version();
    if needs > version {
        return Err(EncodeError::TooNew {
            event_type: event.kind.type_name(),
            needs,
            version,
        });
    }
    let mut object = object_of(event, version);
    if let (Some(id), true, EventKind::TradeExecuted { .. }) = (client_order_id, version >= 2, &event.kind) {
        object.insert(CLIENT_ORDER_ID.into(), Value::from(id));
    }
    Ok(object_bytes(&object))
}

fn object_bytes(object: &Map<String, Value>) -> Vec<u8> {
    // Serializing a map built from strings and integers cannot fail.
    serde_json::to_vec(object).unwrap_or_default()
}

/// An event's fields as a JSON object stamped with `version`.
fn object_of(event: &Event, version: u64) -> Map<String, Value> {
    let mut object = json!({
        "schema_version": version,
        "event_id": event.event_id.to_string(),
        "account_id": event.account_id.as_str(),
        "account_seq": event.account_seq,
        "occurred_at": event.occurred_at_ns,
        "type": event.kind.type_name(),
    });
    let fields = match &event.kind {
        EventKind::Deposit { amount } | EventKind::Withdrawal { amount } | EventKind::FeeCharged { amount } => {
            json!({ "amount": amount.minor() })
        }
        EventKind::TradeExecuted {
            side,
            symbol,
            quantity,
            price,
        } => json!({
            "side": side.as_str(),
            "symbol": symbol.as_str(),
            "quantity": quantity.shares(),
            "price": price.minor(),
        }),
    };
    if let (Some(object), Value::Object(fields)) = (object.as_object_mut(), fields) {
        object.extend(fields);
    }
    match object {
        Value::Object(object) => object,
        _ => Map::new(),
    }
}

/// Decodes one event of any schema version this build reads, refusing anything else.
pub fn decode(bytes: &[u8]) -> Result<Event, DecodeError> {
    decode_up_to(bytes, SCHEMA_VERSION)
}

/// Decodes one event as a reader of versions up to `newest` does (a consumer not yet
/// upgraded reads up to 1), refusing a newer version whole: a reader that skipped what it
/// does not know would apply a `fee_charged` as nothing, and the balance would be wrong.
pub fn decode_up_to(bytes: &[u8], newest: u64) -> Result<Event, DecodeError> {
    let object = parse_object(bytes)?;
    let event_type = check_fields(&object, newest.min(SCHEMA_VERSION))?;
    let event_id = EventId::parse(string(&object, "event_id")?).map_err(|error| invalid("event_id", error))?;
    let account_id = AccountId::new(string(&object, "account_id")?).map_err(|error| invalid("account_id", error))?;
    let account_seq = integer(&object, "account_seq")?;
    if account_seq < 1 {
        return Err(DecodeError::InvalidValue {
            field: "account_seq",
            reason: format!("must be at least 1, got {account_seq}"),
        });
    }
    let occurred_at_ns = integer(&object, "occurred_at")?;
    let kind = match event_type {
        "deposit" => EventKind::Deposit {
            amount: amount(&object, "amount", AMOUNT_MAX)?,
        },
        "withdrawal" => EventKind::Withdrawal {
            amount: amount(&object, "amount", AMOUNT_MAX)?,
        },
        "fee_charged" => EventKind::FeeCharged {
            amount: amount(&object, "amount", AMOUNT_MAX)?,
        },
        _ => trade_executed(&object)?,
    };
    Ok(Event {
        event_id,
        account_id,
        account_seq: u64::try_from(account_seq).unwrap_or_default(),
        occurred_at_ns,
        kind,
    })
}

/// The bytes as a JSON object, refusing what is too large, not JSON or not an object.
fn parse_object(bytes: &[u8]) -> Result<Map<String, Value>, DecodeError> {
    if bytes.len() > ENCODED_LEN_MAX {
        return Err(DecodeError::TooLarge {
            len: bytes.len(),
            max: ENCODED_LEN_MAX,
        });
    }
    let value: Value = serde_json::from_slice(bytes).map_err(|error| DecodeError::NotJson { reason: error.to_string() })?;
    match value {
        Value::Object(object) => Ok(object),
        other => Err(DecodeError::NotAnObject { found: json_type(&other) }),
    }
}

/// Checks the object's schema version (one from the oldest to `newest`), its event type
/// (one the version defines) and that it holds no field that type does not define in that
/// version; returns the event type.
fn check_fields(object: &Map<String, Value>, newest: u64) -> Result<&str, DecodeError> {
    // The version is read first: a future version may change every other field.
    let version_field = field(object, "schema_version")?;
    let Some(version) = version_field
        .as_u64()
        .filter(|version| (SCHEMA_VERSION_OLDEST..=newest).contains(version))
    else {
        return Err(DecodeError::UnknownSchemaVersion {
            version: version_field.to_string(),
            newest,
        });
    };
    let event_type = string(object, "type")?;
    let Some(kind_fields) = kind_fields(event_type, version) else {
        let known = if version >= 2 {
            "deposit, withdrawal, trade_executed or fee_charged"
        } else {
            "deposit, withdrawal or trade_executed"
        };
        return Err(DecodeError::InvalidValue {
            field: "type",
            reason: format!("unknown event type {event_type:?} in schema_version {version} (expected {known})"),
        });
    };
    if let Some(unknown) = object
        .keys()
        .find(|key| !COMMON_FIELDS.contains(&key.as_str()) && !kind_fields.contains(&key.as_str()))
    {
        return Err(DecodeError::UnknownField {
            field: unknown.clone(),
            event_type: event_type.to_owned(),
            version,
        });
    }
    if let Some(id) = object.get(CLIENT_ORDER_ID) {
        let id = id.as_str().ok_or(DecodeError::WrongType {
            field: CLIENT_ORDER_ID,
            expected: "a string",
            found: json_type(id),
        })?;
        if id.is_empty() || id.chars().count() > CLIENT_ORDER_ID_LEN_MAX || id.chars().any(|c| c.is_control()) {
            return Err(DecodeError::InvalidValue {
                field: CLIENT_ORDER_ID,
                reason: format!("must be 1 to {CLIENT_ORDER_ID_LEN_MAX} characters without control characters"),
            });
        }
    }
    Ok(event_type)
}

/// The fields an event type has in a schema version, beside the common ones; `None`: the
/// version has no such type.
fn kind_fields(event_type: &str, version: u64) -> Option<&'static [&'static str]> {
    match (event_type, version) {
        ("deposit" | "withdrawal", _) | ("fee_charged", 2..) => Some(&["amount"]),
        ("trade_executed", 1) => Some(&["side", "symbol", "quantity", "price"]),
        ("trade_executed", _) => Some(&["side", "symbol", "quantity", "price", CLIENT_ORDER_ID]),
        _ => None,
    }
}

/// What a tolerant reader of versions up to `newest` makes of a message, whatever its
/// version: the version taken for `newest`, the fields `newest` does not define for the
/// type left out; `Ok(None)` when `newest` has no such type (the message is passed over).
/// Chapter 17's wrong answer, for the workshop: passing over a `fee_charged` leaves the fee
/// in the customer's cash.
pub fn decode_tolerant(bytes: &[u8], newest: u64) -> Result<Option<Event>, DecodeError> {
    let mut object = parse_object(bytes)?;
    let newest = newest.clamp(SCHEMA_VERSION_OLDEST, SCHEMA_VERSION);
    let event_type = string(&object, "type")?.to_owned();
    let Some(kind_fields) = kind_fields(&event_type, newest) else {
        return Ok(None);
    };
    object.retain(|key, _| COMMON_FIELDS.contains(&key.as_str()) || kind_fields.contains(&key.as_str()));
    object.insert("schema_version".into(), Value::from(newest));
    decode_up_to(&object_bytes(&object), newest).map(Some)
}

/// The fields of a `trade_executed` event: side, symbol, quantity and price, whose
/// notional must fit too.
fn trade_executed(object: &Map<String, Value>) -> Result<EventKind, DecodeError> {
    let side = match string(object, "side")? {
        "buy" => Side::Buy,
        "sell" => Side::Sell,
        other => {
            return Err(DecodeError::InvalidValue {
                field: "side",
                reason: format!("must be \"buy\" or \"sell\", got {other:?}"),
            });
        }
    };
    let symbol = Symbol::new(string(object, "symbol")?).map_err(|error| invalid("symbol", error))?;
    let quantity = Quantity::new(integer(object, "quantity")?).map_err(|error| invalid("quantity", error))?;
    let price = amount(object, "price", PRICE_MAX)?;
    quantity.notional(price).map_err(|error| invalid("quantity", error))?;
    Ok(EventKind::TradeExecuted {
        side,
        symbol,
        quantity,
        price,
    })
}

fn invalid(field: &'static str, error: impl std::fmt::Display) -> DecodeError {
    DecodeError::InvalidValue {
        field,
        reason: error.to_string(),
    }
}

fn field<'a>(object: &'a Map<String, Value>, name: &'static str) -> Result<&'a Value, DecodeError> {
    object.get(name).ok_or(DecodeError::MissingField { field: name })
}

fn string<'a>(object: &'a Map<String, Value>, name: &'static str) -> Result<&'a str, DecodeError> {
    let value = field(object, name)?;
    value.as_str().ok_or(DecodeError::WrongType {
        field: name,
        expected: "a string",
        found: json_type(value),
    })
}

fn integer(object: &Map<String, Value>, name: &'static str) -> Result<i64, DecodeError> {
    let value = field(object, name)?;
    match value {
        Value::Number(number) => number.as_i64().ok_or_else(|| DecodeError::InvalidValue {
            field: name,
            reason: format!("must be an integer that fits in 64 bits, got {number}"),
        }),
        other => Err(DecodeError::WrongType {
            field: name,
            expected: "an integer",
            found: json_type(other),
        }),
    }
}

fn amount(object: &Map<String, Value>, name: &'static str, max: i64) -> Result<Money, DecodeError> {
    Money::positive(integer(object, name)?, max).map_err(|error| invalid(name, error))
}

fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests;
