//! Settings for an external cluster: bootstrap servers from `KAFKA_BOOTSTRAP_SERVERS`, and
//! optional SASL/SSL settings from the environment, applied to every client tradeflow
//! builds. Secrets are never printed or logged: [`Security`]'s `Debug` and `Display` hide
//! the password.
//!
//! | variable | librdkafka property |
//! |---|---|
//! | `KAFKA_SECURITY_PROTOCOL` | `security.protocol` (`plaintext`, `ssl`, `sasl_plaintext`, `sasl_ssl`) |
//! | `KAFKA_SASL_MECHANISM` | `sasl.mechanism` (`PLAIN`, `SCRAM-SHA-256`, `SCRAM-SHA-512`) |
//! | `KAFKA_SASL_USERNAME`, `KAFKA_SASL_PASSWORD` | `sasl.username`, `sasl.password` |
//! | `KAFKA_SSL_CA_LOCATION` | `ssl.ca.location` |
//!
//! TLS (`ssl`, `sasl_ssl`) and SCRAM need librdkafka built with OpenSSL: build with
//! `--features ssl` (and the system's OpenSSL headers, Debian's `libssl-dev`).

use crate::ClusterError;
use rdkafka::ClientConfig;
use std::fmt;

/// Security settings for the clients of an external cluster.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Security {
    /// `security.protocol`.
    pub protocol: Option<String>,
    /// `sasl.mechanism`.
    pub mechanism: Option<String>,
    /// `sasl.username`.
    pub username: Option<String>,
    /// `sasl.password` (never printed).
    password: Option<String>,
    /// `ssl.ca.location`.
    pub ca_location: Option<String>,
}

const PROTOCOLS: &[&str] = &["plaintext", "ssl", "sasl_plaintext", "sasl_ssl"];
const MECHANISMS: &[&str] = &["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"];

fn setting(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|value| !value.is_empty())
}

fn invalid(reason: String) -> ClusterError {
    ClusterError::Unsupported {
        backend: "external",
        reason,
    }
}

impl Security {
    /// Reads the settings from the environment and checks them.
    pub fn from_env() -> Result<Security, ClusterError> {
        Security::checked(Security {
            protocol: setting("KAFKA_SECURITY_PROTOCOL").map(|protocol| protocol.to_ascii_lowercase()),
            mechanism: setting("KAFKA_SASL_MECHANISM").map(|mechanism| mechanism.to_ascii_uppercase()),
            username: setting("KAFKA_SASL_USERNAME"),
            password: setting("KAFKA_SASL_PASSWORD"),
            ca_location: setting("KAFKA_SSL_CA_LOCATION"),
        })
    }

    fn checked(security: Security) -> Result<Security, ClusterError> {
        let protocol = security.protocol.as_deref().unwrap_or("plaintext");
        if !PROTOCOLS.contains(&protocol) {
            return Err(invalid(format!(
                "KAFKA_SECURITY_PROTOCOL must be one of {}, got {protocol:?}",
                PROTOCOLS.join(", ")
            )));
        }
        let sasl = protocol.starts_with("sasl");
        if let Some(mechanism) = security.mechanism.as_deref().filter(|mechanism| !MECHANISMS.contains(mechanism)) {
            return Err(invalid(format!(
                "KAFKA_SASL_MECHANISM must be one of {}, got {mechanism:?}",
                MECHANISMS.join(", ")
            )));
        }
        if sasl && (security.username.is_none() || security.password.is_none()) {
            return Err(invalid(format!(
                "security protocol {protocol} needs KAFKA_SASL_USERNAME and KAFKA_SASL_PASSWORD"
            )));
        }
        let needs_openssl = protocol.ends_with("ssl")
            || security
                .mechanism
                .as_deref()
                .is_some_and(|mechanism| mechanism.starts_with("SCRAM"));
        if needs_openssl && !cfg!(feature = "ssl") {
            return Err(invalid(format!(
                "{protocol} with {} needs librdkafka built with OpenSSL: rebuild with `cargo build --release --features ssl` (needs libssl-dev)",
                security.mechanism.as_deref().unwrap_or("no SASL")
            )));
        }
        Ok(security)
    }

    /// Whether any setting is present.
    pub fn is_set(&self) -> bool {
        *self != Security::default()
    }

    /// Applies the settings to a client's configuration.
    pub fn apply(&self, config: &mut ClientConfig) {
        let pairs = [
            ("security.protocol", &self.protocol),
            ("sasl.mechanism", &self.mechanism),
            ("sasl.username", &self.username),
            ("sasl.password", &self.password),
            ("ssl.ca.location", &self.ca_location),
        ];
        for (key, value) in pairs {
            if let Some(value) = value {
                config.set(key, value);
            }
        }
    }
}

/// Applies the environment's security settings to a client configuration. Invalid
/// settings apply nothing (the client connects in plaintext) and are logged here;
/// [`Cluster::external`](crate::Cluster::external) refuses them with the reason.
pub fn apply_env_security(config: &mut ClientConfig) {
    match Security::from_env() {
        Ok(security) => security.apply(config),
        Err(error) => tracing::warn!(%error, "ignoring invalid Kafka security settings from the environment"),
    }
}

impl fmt::Display for Security {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "security.protocol={}", self.protocol.as_deref().unwrap_or("plaintext"))?;
        if let Some(mechanism) = &self.mechanism {
            write!(f, ", sasl.mechanism={mechanism}")?;
        }
        if let Some(username) = &self.username {
            write!(f, ", sasl.username={username}")?;
        }
        if self.password.is_some() {
            f.write_str(", sasl.password=<hidden>")?;
        }
        if let Some(ca_location) = &self.ca_location {
            write!(f, ", ssl.ca.location={ca_location}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Security {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Security({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn security(protocol: &str, mechanism: Option<&str>, password: Option<&str>) -> Security {
        Security {
            protocol: Some(protocol.to_owned()),
            mechanism: mechanism.map(str::to_owned),
            username: password.map(|_| "alice".to_owned()),
            password: password.map(str::to_owned),
            ca_location: None,
        }
    }

    #[test]
    fn the_password_is_never_shown() {
        let settings = security("sasl_plaintext", Some("PLAIN"), Some("s3cret-value"));
        let shown = format!("{settings} {settings:?}");
        assert!(!shown.contains("s3cret-value"), "{shown}");
        assert!(shown.contains("sasl.password=<hidden>"), "{shown}");
        assert!(shown.contains("sasl.username=alice"), "{shown}");
    }

    #[test]
    fn bad_settings_are_refused_with_the_reason() {
        let unknown = Security::checked(security("tls", None, None)).expect_err("tls is not a protocol");
        assert!(unknown.to_string().contains("KAFKA_SECURITY_PROTOCOL must be one of"), "{unknown}");
        let no_password = Security::checked(security("sasl_plaintext", Some("PLAIN"), None)).expect_err("SASL needs a password");
        assert!(no_password.to_string().contains("KAFKA_SASL_PASSWORD"), "{no_password}");
        let mechanism = Security::checked(security("sasl_plaintext", Some("GSSAPI"), Some("x"))).expect_err("GSSAPI is not offered");
        assert!(mechanism.to_string().contains("KAFKA_SASL_MECHANISM"), "{mechanism}");
        assert!(Security::checked(security("sasl_plaintext", Some("PLAIN"), Some("x"))).is_ok());
        if !cfg!(feature = "ssl") {
            let ssl = Security::checked(security("sasl_ssl", Some("PLAIN"), Some("x"))).expect_err("no OpenSSL in this build");
            assert!(ssl.to_string().contains("--features ssl"), "{ssl}");
        }
    }

    #[test]
    fn settings_reach_the_client_configuration() {
        let mut config = ClientConfig::new();
        security("sasl_plaintext", Some("PLAIN"), Some("pw")).apply(&mut config);
        assert_eq!(config.get("security.protocol"), Some("sasl_plaintext"));
        assert_eq!(config.get("sasl.mechanism"), Some("PLAIN"));
        assert_eq!(config.get("sasl.password"), Some("pw"));
        assert_eq!(config.get("ssl.ca.location"), None);
    }
}

/// How long [`probe`] waits for a broker to answer.
pub const PROBE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Remembers the last error the client reported (a refused or timed-out connection, a
/// failed handshake), for the message of a probe that got no answer.
#[derive(Default)]
struct LastError(std::sync::Mutex<Option<String>>);

impl rdkafka::consumer::ConsumerContext for LastError {}

impl rdkafka::ClientContext for LastError {
    // librdkafka reports a failed connection (refused, timed out, a failed handshake) as a
    // log line from its broker thread ("FAIL"), at once; its error events wait for a poll.
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, log_message: &str) {
        if fac == "FAIL"
            && let Ok(mut last) = self.0.lock()
        {
            *last = Some(log_message.to_owned());
        }
        tracing::debug!(?level, fac, log_message, "librdkafka, probing the bootstrap servers");
    }

    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        if let Ok(mut last) = self.0.lock() {
            last.get_or_insert_with(|| format!("{error}: {reason}"));
        }
    }
}

/// Asks the bootstrap servers for the cluster's metadata and waits at most
/// [`PROBE_TIMEOUT`]: an address where no broker answers fails here, in seconds, naming
/// what the client saw, instead of in the first admin request a minute later.
pub fn probe(bootstrap: &str, security: &Security) -> Result<(), crate::ClusterError> {
    use rdkafka::consumer::Consumer;
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", bootstrap)
        .set("socket.connection.setup.timeout.ms", PROBE_TIMEOUT.as_millis().to_string());
    security.apply(&mut config);
    let unreachable = |reason: String| crate::ClusterError::Unreachable {
        bootstrap: bootstrap.to_owned(),
        waited_s: PROBE_TIMEOUT.as_secs(),
        reason,
    };
    let consumer: rdkafka::consumer::BaseConsumer<LastError> = config
        .create_with_context(LastError::default())
        .map_err(|error| unreachable(format!("creating a client: {error}")))?;
    match consumer.fetch_metadata(None, PROBE_TIMEOUT) {
        Ok(metadata) if !metadata.brokers().is_empty() => Ok(()),
        Ok(_) => Err(unreachable("the metadata named no broker".into())),
        Err(error) => {
            // The client's error events (the connection's own failure among them) wait in
            // its queue until a poll serves them to the context.
            let _ = consumer.poll(std::time::Duration::from_millis(100));
            let seen = consumer.context().0.lock().ok().and_then(|last| last.clone());
            Err(unreachable(seen.unwrap_or_else(|| format!("no answer: {error}"))))
        }
    }
}

#[cfg(test)]
mod probe_tests {
    use super::*;

    #[test]
    fn an_address_where_nothing_listens_fails_within_the_probe_and_says_what_the_client_saw() {
        // A port just freed: nothing listens there, so the connection is refused.
        let address = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("a free port");
        let started = std::time::Instant::now();
        let error = probe(&address.to_string(), &Security::default()).expect_err("nothing answers");
        let elapsed = started.elapsed();
        let text = error.to_string();
        assert!(
            text.starts_with(&format!("no Kafka broker answered at {address} within 5 s")),
            "{text}"
        );
        assert!(text.to_lowercase().contains("refused"), "names the refusal: {text}");
        assert!(elapsed < PROBE_TIMEOUT + std::time::Duration::from_secs(3), "bounded: {elapsed:?}");
    }
}
