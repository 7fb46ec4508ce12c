//! The headers of a dead letter as replay reads them, checked against what was written.
//!
//! `dlq::header` is what `tradeflow dlq replay` reads a dead letter's headers with (the
//! source topic to send it back to, the error kind it counts), and what the balance
//! service reads `tradeflow.intended_at_ns` with on every message. It takes any rdkafka
//! `Message` and does no I/O, so it is fuzzed as it is, on the message type replay holds
//! (`OwnedMessage`).
//!
//! The input is one header a line, `key=value` (the key ends at the first `=`); a line
//! without `=` is a header without a value (Kafka's null). Keys and values are raw bytes,
//! as the Kafka protocol carries them: nothing on the wire makes a key UTF-8 or free of
//! NUL, and any producer allowed to write to a topic can send either.
//!
//! The promise checked: for every name, `dlq::header` returns the value of the first header
//! whose key is exactly that name (UTF-8 decoded lossily), `None` when that header has no
//! value or there is no such header, and it returns rather than panics.
//!
//! Two findings (docs/fuzzing.md): a key that is not UTF-8 panicked inside rdkafka (fixed:
//! `dlq::header` catches the panic and passes over that header), and a key with a NUL byte
//! is read as the part before the NUL (open). A run started with [`SKIP_KNOWN_FINDINGS`] set
//! passes over inputs with a NUL in a key, so that it can look for anything else; without
//! it the target fails on them, as it should while the finding is open. Inputs with a key
//! that is not UTF-8 are passed over by the fuzz target always ([`check_in_fuzzer`]):
//! libFuzzer's panic hook aborts the process before `dlq::header` can catch rdkafka's
//! panic, so only the corpus test, under the test harness, can check them.

use rdkafka::bindings::{rd_kafka_header_add, rd_kafka_headers_t, rd_kafka_resp_err_t};
use rdkafka::message::{BorrowedHeaders, Headers, OwnedHeaders, OwnedMessage, Timestamp};
use tradeflow_stream::dlq;

/// The most headers one input builds; the rest of the input is ignored. Real dead letters
/// carry six.
pub const HEADERS_MAX: usize = 64;

/// The names the product reads: the six a dead letter carries, and the send time the
/// balance service reads on every message.
pub const NAMES_READ: [&str; 7] = [
    dlq::HEADER_SOURCE_TOPIC,
    dlq::HEADER_ERROR_KIND,
    dlq::HEADER_ERROR_REASON,
    dlq::HEADER_SOURCE_PARTITION,
    dlq::HEADER_SOURCE_OFFSET,
    dlq::HEADER_FAILED_AT_NS,
    tradeflow_stream::HEADER_INTENDED_AT_NS,
];

/// The environment variable that, set to anything, passes over inputs holding a key of a
/// finding still open (a key holding a NUL byte).
pub const SKIP_KNOWN_FINDINGS: &str = "TRADEFLOW_FUZZ_SKIP_KNOWN_FINDINGS";

/// One header as the wire carries it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WireHeader<'a> {
    /// The key's bytes.
    pub key: &'a [u8],
    /// The value's bytes; `None` is Kafka's null value.
    pub value: Option<&'a [u8]>,
}

/// The headers an input describes: one a line, at most [`HEADERS_MAX`]; a final newline
/// ends the last line rather than starting an empty one.
pub fn parse_input(bytes: &[u8]) -> Vec<WireHeader<'_>> {
    let bytes = bytes.strip_suffix(b"\n").unwrap_or(bytes);
    if bytes.is_empty() {
        return Vec::new();
    }
    bytes
        .split(|byte| *byte == b'\n')
        .take(HEADERS_MAX)
        .map(|line| match line.iter().position(|byte| *byte == b'=') {
            Some(equals) => WireHeader {
                key: &line[..equals],
                value: Some(&line[equals + 1..]),
            },
            None => WireHeader { key: line, value: None },
        })
        .collect()
}

/// A dead letter holding `headers` byte for byte, as replay holds one (`OwnedMessage`).
///
/// rdkafka's `OwnedHeaders::insert` takes keys as `&str`, so a key that is not UTF-8
/// cannot be built through it; a consumed message's headers can hold one all the same,
/// since librdkafka copies them off the wire as bytes. The headers are therefore added with
/// librdkafka's own `rd_kafka_header_add`, which is what parsing a fetched message does.
pub fn dead_letter(headers: &[WireHeader<'_>]) -> OwnedMessage {
    let owned = OwnedHeaders::new_with_capacity(headers.len());
    // rdkafka hands out `&BorrowedHeaders` as the address of the librdkafka header list it
    // wraps (it casts that pointer back itself to read the headers); the list is writable
    // and owned by `owned`, which outlives the loop.
    let list = std::ptr::from_ref::<BorrowedHeaders>(owned.as_borrowed())
        .cast::<rd_kafka_headers_t>()
        .cast_mut();
    for header in headers {
        let (value, value_len) = match header.value {
            Some(value) => (value.as_ptr().cast(), slice_len(value)),
            None => (std::ptr::null(), 0),
        };
        // SAFETY: `list` is a live, writable header list (above); librdkafka copies the key
        // and value, reading exactly the lengths given, and keeps no pointer to them.
        let added = unsafe { rd_kafka_header_add(list, header.key.as_ptr().cast(), slice_len(header.key), value, value_len) };
        assert_eq!(
            added,
            rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR,
            "librdkafka refused a header"
        );
    }
    OwnedMessage::new(
        Some(b"poison 0: not JSON".to_vec()),
        Some(b"acct-00042".to_vec()),
        "trades.dlq".into(),
        Timestamp::NotAvailable,
        0,
        0,
        Some(owned),
    )
}

/// A slice's length as librdkafka takes it (`ssize_t`); a slice never holds more than
/// `isize::MAX` bytes, so the conversion cannot fail.
fn slice_len(bytes: &[u8]) -> isize {
    isize::try_from(bytes.len()).unwrap_or_else(|_| unreachable!("a slice holds at most isize::MAX bytes"))
}

/// What `dlq::header` must return for `name`: the first header with exactly that key.
pub fn expected(headers: &[WireHeader<'_>], name: &str) -> Option<String> {
    headers
        .iter()
        .find(|header| header.key == name.as_bytes())
        .and_then(|header| header.value)
        .map(|value| String::from_utf8_lossy(value).into_owned())
}

/// Checks the promise on the headers `input` describes, for the names the product reads
/// and for every key in the input that is a name (UTF-8); panics when it is broken.
pub fn check(input: &[u8]) {
    let headers = parse_input(input);
    if skipping_known_findings() && headers.iter().any(|header| is_known_finding(header.key)) {
        return;
    }
    let message = dead_letter(&headers);
    let count = rdkafka::Message::headers(&message).map_or(0, Headers::count);
    assert_eq!(count, headers.len(), "librdkafka holds another number of headers than were added");
    let keys = headers.iter().filter_map(|header| std::str::from_utf8(header.key).ok());
    for name in NAMES_READ.into_iter().chain(keys) {
        assert_eq!(
            dlq::header(&message, name),
            expected(&headers, name),
            "dlq::header({name:?}) on headers {headers:?}"
        );
    }
}

/// A key that breaks the promise for a reason already reported and still open: holding a
/// NUL byte (librdkafka hands keys out as C strings).
pub fn is_known_finding(key: &[u8]) -> bool {
    key.contains(&0)
}

/// [`check`] as the fuzz target runs it: an input with a key that is not UTF-8 is passed
/// over, because rdkafka panics reading it and libFuzzer's panic hook aborts the process
/// before `dlq::header` can catch the panic. The corpus test checks such keys.
pub fn check_in_fuzzer(input: &[u8]) {
    if parse_input(input).iter().any(|header| std::str::from_utf8(header.key).is_err()) {
        return;
    }
    check(input);
}

/// Whether [`SKIP_KNOWN_FINDINGS`] is set; says so once, so that a run's log shows it.
fn skipping_known_findings() -> bool {
    static SKIPPING: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *SKIPPING.get_or_init(|| {
        let skipping = std::env::var_os(SKIP_KNOWN_FINDINGS).is_some();
        if skipping {
            eprintln!("{SKIP_KNOWN_FINDINGS} is set: inputs with a header key that holds a NUL are passed over");
        }
        skipping
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_headers_and_a_line_without_equals_has_no_value() {
        assert_eq!(
            parse_input(b"dlq.source.topic=trades\nflag\nk=a=b\n"),
            vec![
                WireHeader {
                    key: b"dlq.source.topic",
                    value: Some(b"trades")
                },
                WireHeader { key: b"flag", value: None },
                WireHeader {
                    key: b"k",
                    value: Some(b"a=b")
                },
            ]
        );
        assert!(parse_input(b"").is_empty());
        assert!(parse_input(b"\n").is_empty());
    }

    /// The seed corpus on the stable toolchain (`cargo test --manifest-path
    /// fuzz/Cargo.toml`): every seed keeps the promise, but those named `crash_`, which
    /// hold a known finding and must still break it, so that a fix is noticed and they can
    /// join the others.
    #[test]
    fn every_seed_keeps_the_promise_but_the_known_findings() {
        let corpus = concat!(env!("CARGO_MANIFEST_DIR"), "/corpus/dead_letter_headers");
        let entries = std::fs::read_dir(corpus).unwrap_or_else(|error| panic!("reading {corpus}: {error}"));
        let mut seeds = 0;
        for entry in entries {
            let path = entry.unwrap_or_else(|error| panic!("listing {corpus}: {error}")).path();
            let bytes = std::fs::read(&path).unwrap_or_else(|error| panic!("reading {}: {error}", path.display()));
            let known = parse_input(&bytes).iter().any(|header| is_known_finding(header.key));
            let named_crash = path.file_name().is_some_and(|name| name.to_string_lossy().starts_with("crash_"));
            assert_eq!(
                known,
                named_crash,
                "{}: only seeds named crash_ hold a known finding",
                path.display()
            );
            let kept = std::panic::catch_unwind(|| check(&bytes)).is_ok();
            assert_eq!(
                kept,
                !known,
                "{}: kept the promise: {kept}, holds a known finding: {known}",
                path.display()
            );
            seeds += 1;
        }
        assert!(seeds >= 10, "{seeds} seeds in {corpus}");
    }
}
