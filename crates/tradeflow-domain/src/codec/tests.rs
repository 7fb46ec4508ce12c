//! Codec tests: round trips for every event, and a named reason for every refusal.

use super::*;
use crate::money::QUANTITY_MAX;
use proptest::prelude::*;

fn arbitrary_event() -> impl Strategy<Value = Event> {
    let kind = prop_oneof![
        (1..=AMOUNT_MAX).prop_map(|amount| EventKind::Deposit {
            amount: Money::from_minor(amount)
        }),
        (1..=AMOUNT_MAX).prop_map(|amount| EventKind::Withdrawal {
            amount: Money::from_minor(amount)
        }),
        (1..=AMOUNT_MAX).prop_map(|amount| EventKind::FeeCharged {
            amount: Money::from_minor(amount)
        }),
        (any::<bool>(), "[A-Z][A-Z0-9.]{0,11}", 1..=QUANTITY_MAX, 1..=PRICE_MAX).prop_map(|(buy, symbol, quantity, price)| {
            EventKind::TradeExecuted {
                side: if buy { Side::Buy } else { Side::Sell },
                symbol: Symbol::new(symbol).expect("strategy yields valid symbols"),
                quantity: Quantity::new(quantity).expect("strategy yields valid quantities"),
                price: Money::from_minor(price),
            }
        }),
    ];
    (any::<u128>(), "[A-Za-z0-9_-]{1,64}", 1..=u64::MAX / 2, any::<i64>(), kind).prop_map(
        |(id, account, account_seq, occurred_at_ns, kind)| Event {
            event_id: EventId::from_uuid(uuid::Uuid::from_u128(id)),
            account_id: AccountId::new(account).expect("strategy yields valid ids"),
            account_seq,
            occurred_at_ns,
            kind,
        },
    )
}

proptest! {
    #[test]
    fn every_event_round_trips(event in arbitrary_event()) {
        prop_assert_eq!(decode(&encode(&event)), Ok(event));
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = decode(&bytes);
    }

    #[test]
    fn arbitrary_json_objects_never_panic(
        fields in proptest::collection::btree_map("[a-z_]{1,16}", prop_oneof![any::<i64>().prop_map(Value::from), ".{0,20}".prop_map(Value::from), Just(Value::Null)], 0..10)
    ) {
        let object: Map<String, Value> = fields.into_iter().collect();
        let _ = decode(&serde_json::to_vec(&Value::Object(object)).expect("serializable"));
    }
}

fn deposit_json() -> Value {
    json!({
        "schema_version": 1,
        "event_id": "0190b7c4-8f3e-7b2a-9c1d-2e3f4a5b6c7d",
        "account_id": "acct-00001",
        "account_seq": 1,
        "occurred_at": 1_767_225_600_000_000_000_i64,
        "type": "deposit",
        "amount": 500
    })
}

fn trade_json() -> Value {
    json!({
        "schema_version": 1,
        "event_id": "0190b7c4-8f3e-7b2a-9c1d-2e3f4a5b6c7d",
        "account_id": "acct-00001",
        "account_seq": 2,
        "occurred_at": 1_767_225_600_000_000_000_i64,
        "type": "trade_executed",
        "side": "buy",
        "symbol": "ACME",
        "quantity": 3,
        "price": 1250
    })
}

fn decode_with(mut value: Value, field: &str, replacement: Option<Value>) -> Result<Event, DecodeError> {
    let object = value.as_object_mut().expect("test fixtures are objects");
    match replacement {
        Some(replacement) => object.insert(field.to_owned(), replacement),
        None => object.remove(field),
    };
    decode(&serde_json::to_vec(&value).expect("serializable"))
}

#[test]
fn the_fixtures_decode() {
    assert!(decode_with(deposit_json(), "amount", Some(json!(500))).is_ok());
    assert!(decode_with(trade_json(), "side", Some(json!("sell"))).is_ok());
}

#[test]
fn refusals_name_the_field_and_the_reason() {
    let cases: Vec<(Value, &str, Option<Value>, DecodeError)> = vec![
        (
            deposit_json(),
            "schema_version",
            Some(json!(3)),
            DecodeError::UnknownSchemaVersion {
                version: "3".into(),
                newest: SCHEMA_VERSION,
            },
        ),
        (
            deposit_json(),
            "schema_version",
            Some(json!("1")),
            DecodeError::UnknownSchemaVersion {
                version: "\"1\"".into(),
                newest: SCHEMA_VERSION,
            },
        ),
        (
            deposit_json(),
            "schema_version",
            None,
            DecodeError::MissingField { field: "schema_version" },
        ),
        (deposit_json(), "amount", None, DecodeError::MissingField { field: "amount" }),
        (
            deposit_json(),
            "amount",
            Some(json!(0)),
            DecodeError::InvalidValue {
                field: "amount",
                reason: "must be greater than zero, got 0".into(),
            },
        ),
        (
            deposit_json(),
            "amount",
            Some(json!(-10)),
            DecodeError::InvalidValue {
                field: "amount",
                reason: "must be greater than zero, got -10".into(),
            },
        ),
        (
            deposit_json(),
            "amount",
            Some(json!(1.5)),
            DecodeError::InvalidValue {
                field: "amount",
                reason: "must be an integer that fits in 64 bits, got 1.5".into(),
            },
        ),
        (
            deposit_json(),
            "amount",
            Some(json!("500")),
            DecodeError::WrongType {
                field: "amount",
                expected: "an integer",
                found: "a string",
            },
        ),
        (
            deposit_json(),
            "account_seq",
            Some(json!(0)),
            DecodeError::InvalidValue {
                field: "account_seq",
                reason: "must be at least 1, got 0".into(),
            },
        ),
        (
            deposit_json(),
            "account_id",
            Some(json!("a b")),
            DecodeError::InvalidValue {
                field: "account_id",
                reason: "character ' ' is not allowed (ASCII letters, digits, '-' and '_')".into(),
            },
        ),
        (
            deposit_json(),
            "type",
            Some(json!("refund")),
            DecodeError::InvalidValue {
                field: "type",
                reason: "unknown event type \"refund\" in schema_version 1 (expected deposit, withdrawal or trade_executed)".into(),
            },
        ),
        (
            deposit_json(),
            "colour",
            Some(json!("red")),
            DecodeError::UnknownField {
                field: "colour".into(),
                event_type: "deposit".into(),
                version: 1,
            },
        ),
        (
            trade_json(),
            "quantity",
            Some(json!(0)),
            DecodeError::InvalidValue {
                field: "quantity",
                reason: "must be greater than zero, got 0".into(),
            },
        ),
        (
            trade_json(),
            "price",
            Some(json!(-1)),
            DecodeError::InvalidValue {
                field: "price",
                reason: "must be greater than zero, got -1".into(),
            },
        ),
        (
            trade_json(),
            "side",
            Some(json!("hold")),
            DecodeError::InvalidValue {
                field: "side",
                reason: "must be \"buy\" or \"sell\", got \"hold\"".into(),
            },
        ),
        (
            trade_json(),
            "amount",
            Some(json!(5)),
            DecodeError::UnknownField {
                field: "amount".into(),
                event_type: "trade_executed".into(),
                version: 1,
            },
        ),
    ];
    for (fixture, field, replacement, expected) in cases {
        assert_eq!(
            decode_with(fixture, field, replacement.clone()),
            Err(expected),
            "field {field} set to {replacement:?}"
        );
    }
}

#[test]
fn non_objects_and_non_json_are_refused() {
    assert!(matches!(decode(b"not json"), Err(DecodeError::NotJson { .. })));
    assert_eq!(decode(b"[1,2]"), Err(DecodeError::NotAnObject { found: "an array" }));
    assert!(matches!(
        decode(&vec![b' '; ENCODED_LEN_MAX + 1]),
        Err(DecodeError::TooLarge { .. })
    ));
}

#[test]
fn each_event_is_written_in_the_oldest_version_that_carries_it() {
    let deposit = decode(&serde_json::to_vec(&deposit_json()).expect("serializable")).expect("a deposit");
    let written: Value = serde_json::from_slice(&encode(&deposit)).expect("JSON");
    assert_eq!(written["schema_version"], json!(1));
    let fee = Event {
        kind: EventKind::FeeCharged {
            amount: Money::from_minor(250),
        },
        ..deposit.clone()
    };
    let written: Value = serde_json::from_slice(&encode(&fee)).expect("JSON");
    assert_eq!(written["schema_version"], json!(2));
    assert_eq!(written["type"], json!("fee_charged"));
    assert_eq!(
        encode_as(&fee, 1, None),
        Err(EncodeError::TooNew {
            event_type: "fee_charged",
            needs: 2,
            version: 1
        })
    );
    assert_eq!(encode_as(&fee, 3, None), Err(EncodeError::UnknownVersion { version: 3 }));
    // A producer upgraded to version 2 stamps it on every message; readers of 2 take both.
    let as_two = encode_as(&deposit, 2, None).expect("a deposit in version 2");
    assert_eq!(decode(&as_two), Ok(deposit.clone()));
    assert_eq!(decode(&encode(&deposit)), Ok(deposit));
}

#[test]
fn a_reader_of_version_one_refuses_version_two_whole_and_says_why() {
    let deposit_v2 = decode_with(deposit_json(), "schema_version", Some(json!(2))).expect("version 2 reads");
    let bytes = encode_as(&deposit_v2, 2, None).expect("encodes");
    assert_eq!(
        decode_up_to(&bytes, 1),
        Err(DecodeError::UnknownSchemaVersion {
            version: "2".into(),
            newest: 1
        })
    );
    let refused = decode_up_to(&bytes, 1).expect_err("refused");
    assert_eq!(refused.to_string(), "unknown schema_version 2 (this reader reads 1 to 1)");
    assert_eq!(refused.kind(), "unknown_schema_version");
}

#[test]
fn version_two_adds_fee_charged_and_a_trades_client_order_id_and_version_one_has_neither() {
    let mut fee = deposit_json();
    fee["type"] = json!("fee_charged");
    assert!(matches!(
        decode_with(fee.clone(), "schema_version", Some(json!(1))),
        Err(DecodeError::InvalidValue { field: "type", .. })
    ));
    assert_eq!(
        decode_with(fee, "schema_version", Some(json!(2))).map(|event| event.kind),
        Ok(EventKind::FeeCharged {
            amount: Money::from_minor(500)
        })
    );
    assert_eq!(
        decode_with(trade_json(), CLIENT_ORDER_ID, Some(json!("order-7"))),
        Err(DecodeError::UnknownField {
            field: CLIENT_ORDER_ID.into(),
            event_type: "trade_executed".into(),
            version: 1
        })
    );
    let mut trade = trade_json();
    trade["schema_version"] = json!(2);
    let plain = decode_with(trade.clone(), "side", Some(json!("buy"))).expect("a version 2 trade without the field");
    assert_eq!(decode_with(trade.clone(), CLIENT_ORDER_ID, Some(json!("order-7"))), Ok(plain));
    assert!(matches!(
        decode_with(trade.clone(), CLIENT_ORDER_ID, Some(json!(""))),
        Err(DecodeError::InvalidValue {
            field: CLIENT_ORDER_ID,
            ..
        })
    ));
    assert!(matches!(
        decode_with(trade, CLIENT_ORDER_ID, Some(json!(7))),
        Err(DecodeError::WrongType {
            field: CLIENT_ORDER_ID,
            ..
        })
    ));
}

#[test]
fn a_renamed_field_is_refused_naming_both_fields() {
    // A breaking change: `amount` renamed `value` without a new major version.
    let mut renamed = deposit_json();
    renamed["schema_version"] = json!(2);
    let object = renamed.as_object_mut().expect("an object");
    let amount = object.remove("amount").expect("a deposit has an amount");
    object.insert("value".into(), amount);
    let refused = decode(&serde_json::to_vec(&renamed).expect("serializable")).expect_err("refused");
    assert_eq!(
        refused.to_string(),
        "field `value` is not part of schema_version 2 for type `deposit`"
    );
}

#[test]
fn a_tolerant_reader_of_version_one_passes_over_a_fee_and_drops_the_fields_it_does_not_know() {
    let mut fee = deposit_json();
    fee["schema_version"] = json!(2);
    fee["type"] = json!("fee_charged");
    assert_eq!(decode_tolerant(&serde_json::to_vec(&fee).expect("serializable"), 1), Ok(None));
    let mut trade = trade_json();
    trade["schema_version"] = json!(2);
    trade[CLIENT_ORDER_ID] = json!("order-7");
    let read = decode_tolerant(&serde_json::to_vec(&trade).expect("serializable"), 1).expect("reads");
    assert_eq!(
        read,
        Some(decode(&serde_json::to_vec(&trade_json()).expect("serializable")).expect("a trade"))
    );
}
