//! What the event decoder promises about any bytes, checked by panicking when a promise is
//! broken. One copy for both callers: the `decode_event` fuzz target, and the domain
//! crate's stable test `crates/tradeflow-domain/tests/fuzz_corpus.rs`, which includes this
//! file by path and runs it over the committed seed corpus. It uses only the public API
//! of `tradeflow-domain`.
//!
//! The promises, from `codec.rs` and `docs/wire-format.md`:
//!
//! - `decode`, `decode_up_to` and `decode_tolerant` return, whatever the bytes; every
//!   error displays, and one about a field names it.
//! - Anything `decode` accepts re-encodes (`encode`, and `encode_as` in every version that
//!   carries it) to bytes that decode to an equal event.
//! - `decode_up_to(bytes, newest)` reads versions 1 to `newest`: what it accepts, `decode`
//!   accepts as the same event; below version 1 it accepts nothing; from version 2 up it
//!   is `decode`; a reader of version 1 never yields a `fee_charged`.
//! - `decode_tolerant(bytes, newest)` yields what `decode_up_to(bytes, newest)` accepts,
//!   unchanged; a tolerant reader of version 1 never yields a `fee_charged`.
//! - An accepted event keeps the wire format's rules: `account_seq` from 1 and within 64
//!   signed bits, amounts in `1..=10^13`, quantity and price in `1..=10^9`.

use tradeflow_domain::codec::{CLIENT_ORDER_ID_LEN_MAX, ENCODED_LEN_MAX};
use tradeflow_domain::money::{AMOUNT_MAX, PRICE_MAX, QUANTITY_MAX};
use tradeflow_domain::{
    DecodeError, Event, EventKind, SCHEMA_VERSION, SCHEMA_VERSION_OLDEST, decode, decode_tolerant, decode_up_to, encode, encode_as,
};

/// The `newest` versions tried with `decode_up_to` and `decode_tolerant`: below, at and
/// above the versions this build reads.
pub const NEWEST_TRIED: [u64; 5] = [0, 1, 2, 3, u64::MAX];

/// Checks every promise on `bytes`; panics, naming the promise, at the first one broken.
pub fn check(bytes: &[u8]) {
    let decoded = decode(bytes);
    match &decoded {
        Ok(event) => check_event(event),
        Err(error) => check_error(error),
    }
    if bytes.len() > ENCODED_LEN_MAX {
        assert!(
            matches!(decoded, Err(DecodeError::TooLarge { len, .. }) if len == bytes.len()),
            "{} bytes, over the limit, must be refused as too large: {decoded:?}",
            bytes.len()
        );
    }
    for newest in NEWEST_TRIED {
        let up_to = decode_up_to(bytes, newest);
        check_up_to(newest, &up_to, &decoded);
        check_tolerant(bytes, newest, &up_to);
    }
}

/// What a reader of versions up to `newest` decoded, against what `decode` did.
fn check_up_to(newest: u64, up_to: &Result<Event, DecodeError>, decoded: &Result<Event, DecodeError>) {
    match up_to {
        Ok(event) => {
            assert!(
                newest >= SCHEMA_VERSION_OLDEST,
                "decode_up_to(_, {newest}) reads no version, yet accepted {event:?}"
            );
            assert_eq!(
                decoded.as_ref(),
                Ok(event),
                "decode_up_to(_, {newest}) accepted an event that decode did not read the same"
            );
            if newest < 2 {
                assert!(
                    !matches!(event.kind, EventKind::FeeCharged { .. }),
                    "a reader of version {newest} yielded a fee_charged, a version 2 type: {event:?}"
                );
            }
        }
        Err(error) => check_error(error),
    }
    if newest >= SCHEMA_VERSION {
        assert_eq!(up_to, decoded, "decode_up_to(_, {newest}) must be decode");
    }
}

/// What a tolerant reader of versions up to `newest` made of the bytes, against what a
/// strict reader of the same versions accepted.
fn check_tolerant(bytes: &[u8], newest: u64, up_to: &Result<Event, DecodeError>) {
    let tolerant = decode_tolerant(bytes, newest);
    match &tolerant {
        Ok(Some(event)) => {
            check_event(event);
            if newest < 2 {
                assert!(
                    !matches!(event.kind, EventKind::FeeCharged { .. }),
                    "a tolerant reader of version {newest} yielded a fee_charged: {event:?}"
                );
            }
        }
        Ok(None) => {}
        Err(error) => check_error(error),
    }
    if let Ok(event) = up_to {
        assert_eq!(
            tolerant.as_ref(),
            Ok(&Some(event.clone())),
            "decode_tolerant(_, {newest}) must yield what decode_up_to(_, {newest}) accepts"
        );
    }
}

/// An accepted event: it keeps the format's rules and survives every encoding of it.
fn check_event(event: &Event) {
    assert!(
        event.account_seq >= 1 && i64::try_from(event.account_seq).is_ok(),
        "account_seq out of 1..=i64::MAX: {event:?}"
    );
    match &event.kind {
        EventKind::Deposit { amount } | EventKind::Withdrawal { amount } | EventKind::FeeCharged { amount } => {
            assert!((1..=AMOUNT_MAX).contains(&amount.minor()), "amount out of 1..=10^13: {event:?}");
        }
        EventKind::TradeExecuted { quantity, price, .. } => {
            assert!(
                (1..=QUANTITY_MAX).contains(&quantity.shares()),
                "quantity out of 1..=10^9: {event:?}"
            );
            assert!((1..=PRICE_MAX).contains(&price.minor()), "price out of 1..=10^9: {event:?}");
            assert!(quantity.notional(*price).is_ok(), "notional overflows: {event:?}");
        }
    }
    let encoded = encode(event);
    assert!(
        encoded.len() <= ENCODED_LEN_MAX,
        "encode wrote {} bytes, over the limit",
        encoded.len()
    );
    assert_eq!(decode(&encoded).as_ref(), Ok(event), "encode then decode changed the event");
    let since = event.kind.since_schema_version();
    for version in SCHEMA_VERSION_OLDEST..=SCHEMA_VERSION {
        let written = encode_as(event, version, None);
        if version < since {
            assert!(
                written.is_err(),
                "encode_as wrote a {} in version {version}",
                event.kind.type_name()
            );
            continue;
        }
        match written {
            Ok(bytes) => assert_eq!(
                decode_up_to(&bytes, version).as_ref(),
                Ok(event),
                "encode_as(_, {version}) then decode"
            ),
            Err(error) => panic!("encode_as(_, {version}) refused an event it carries: {error}"),
        }
    }
    check_client_order_id(event);
}

/// A trade written in version 2 with the longest `client_order_id` reads back as the same
/// trade (the id is checked and dropped).
fn check_client_order_id(event: &Event) {
    if !matches!(event.kind, EventKind::TradeExecuted { .. }) {
        return;
    }
    let id = "o".repeat(CLIENT_ORDER_ID_LEN_MAX);
    match encode_as(event, 2, Some(&id)) {
        Ok(bytes) => assert_eq!(decode(&bytes).as_ref(), Ok(event), "a trade with a client_order_id, then decode"),
        Err(error) => panic!("encode_as(_, 2, Some(id)) refused a trade: {error}"),
    }
}

/// A refusal: it displays, and one about a field names the field.
fn check_error(error: &DecodeError) {
    let shown = error.to_string();
    assert!(!shown.is_empty(), "an error displays as nothing: {error:?}");
    assert!(!error.kind().is_empty(), "an error has no kind: {error:?}");
    let named = match error {
        DecodeError::MissingField { field } | DecodeError::WrongType { field, .. } | DecodeError::InvalidValue { field, .. } => {
            Some(*field)
        }
        DecodeError::UnknownField { field, .. } => Some(field.as_str()),
        _ => None,
    };
    if let Some(field) = named {
        assert!(shown.contains(field), "the error about `{field}` does not name it: {shown}");
    }
}
