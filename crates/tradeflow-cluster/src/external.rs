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
//!
//! Invalid settings are refused, never dropped in favour of plaintext: one check
//! ([`Security::from_env`]) that the CLI runs before any command that builds a Kafka client,
//! that [`Cluster::external`](crate::Cluster::external) runs, and that
//! [`apply_env_security`] runs for every client configuration, making the client's creation
//! fail with the reason.

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

/// Why the environment's security settings were refused. The reason names the variable at
/// fault and never holds a secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid Kafka security settings in the environment: {reason}")]
pub struct InvalidSecurity {
    /// What is wrong, naming the variable.
    pub reason: String,
}

fn invalid(reason: String) -> InvalidSecurity {
    InvalidSecurity { reason }
}

impl From<InvalidSecurity> for ClusterError {
    fn from(refused: InvalidSecurity) -> Self {
        ClusterError::Unsupported {
            backend: "external",
            reason: refused.to_string(),
        }
    }
}

impl Security {
    /// Reads the settings from the environment and checks them: the one check every client
    /// configuration goes through.
    pub fn from_env() -> Result<Security, InvalidSecurity> {
        Security::checked(Security {
            protocol: setting("KAFKA_SECURITY_PROTOCOL").map(|protocol| protocol.to_ascii_lowercase()),
            mechanism: setting("KAFKA_SASL_MECHANISM").map(|mechanism| mechanism.to_ascii_uppercase()),
            username: setting("KAFKA_SASL_USERNAME"),
            password: setting("KAFKA_SASL_PASSWORD"),
            ca_location: setting("KAFKA_SSL_CA_LOCATION"),
        })
    }

    /// The settings, if librdkafka would use every one of them as given. A setting it would
    /// ignore (SASL credentials or a CA file on a protocol without SASL or TLS) is refused
    /// too: the client would connect in plaintext, or unauthenticated, while the settings
    /// say otherwise.
    fn checked(security: Security) -> Result<Security, InvalidSecurity> {
        let protocol = security.protocol.as_deref().unwrap_or("plaintext");
        if !PROTOCOLS.contains(&protocol) {
            return Err(invalid(format!(
                "KAFKA_SECURITY_PROTOCOL must be one of {}, got {protocol:?}",
                PROTOCOLS.join(", ")
            )));
        }
        let sasl = protocol.starts_with("sasl");
        let tls = protocol.ends_with("ssl");
        if let Some(mechanism) = security.mechanism.as_deref().filter(|mechanism| !MECHANISMS.contains(mechanism)) {
            return Err(invalid(format!(
                "KAFKA_SASL_MECHANISM must be one of {}, got {mechanism:?}",
                MECHANISMS.join(", ")
            )));
        }
        // The SASL settings, and whether each is set: all of them on a SASL protocol, none
        // on another (librdkafka would ignore them there).
        let sasl_settings = [
            ("KAFKA_SASL_MECHANISM", security.mechanism.is_some()),
            ("KAFKA_SASL_USERNAME", security.username.is_some()),
            ("KAFKA_SASL_PASSWORD", security.password.is_some()),
        ];
        let named = |set: bool| -> Vec<&str> {
            sasl_settings
                .iter()
                .filter(|(_, is_set)| *is_set == set)
                .map(|(variable, _)| *variable)
                .collect()
        };
        let (missing, ignored) = (named(false), named(true));
        if sasl && !missing.is_empty() {
            return Err(invalid(format!(
                "{} not set: KAFKA_SECURITY_PROTOCOL={protocol} needs KAFKA_SASL_MECHANISM, KAFKA_SASL_USERNAME and KAFKA_SASL_PASSWORD",
                missing.join(", ")
            )));
        }
        if !sasl && !ignored.is_empty() {
            return Err(invalid(format!(
                "{} set, but KAFKA_SECURITY_PROTOCOL is {protocol}, which sends no credentials: set it to sasl_plaintext or sasl_ssl, or unset them",
                ignored.join(", ")
            )));
        }
        if !tls && security.ca_location.is_some() {
            return Err(invalid(format!(
                "KAFKA_SSL_CA_LOCATION set, but KAFKA_SECURITY_PROTOCOL is {protocol}, which uses no TLS: set it to ssl or sasl_ssl, or unset KAFKA_SSL_CA_LOCATION"
            )));
        }
        let scram = security
            .mechanism
            .as_deref()
            .is_some_and(|mechanism| mechanism.starts_with("SCRAM"));
        if (tls || scram) && !cfg!(feature = "ssl") {
            let variable = if tls {
                format!("KAFKA_SECURITY_PROTOCOL={protocol}")
            } else {
                format!("KAFKA_SASL_MECHANISM={}", security.mechanism.as_deref().unwrap_or_default())
            };
            return Err(invalid(format!(
                "{variable} needs librdkafka built with OpenSSL: rebuild with `cargo build --release --features ssl` (needs libssl-dev)"
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

/// Applies the environment's security settings to a client configuration. Invalid settings
/// fail closed: creating the client then fails with the reason (see [`refuse_in`]), instead
/// of connecting in plaintext.
pub fn apply_env_security(config: &mut ClientConfig) {
    apply_or_refuse(config, Security::from_env());
}

fn apply_or_refuse(config: &mut ClientConfig, checked: Result<Security, InvalidSecurity>) {
    match checked {
        Ok(security) => security.apply(config),
        Err(refused) => refuse_in(config, &refused),
    }
}

/// Makes creating a client from `config` fail, naming why: the refusal becomes the value of
/// `security.protocol`, which librdkafka checks against its list of protocols when the
/// client is created, so the creation fails with `Client config error: Invalid value
/// "invalid Kafka security settings in the environment: ..." for configuration property
/// "security.protocol"`. No other property is set, so no credential reaches the client.
fn refuse_in(config: &mut ClientConfig, refused: &InvalidSecurity) {
    config.set("security.protocol", refused.to_string());
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
    fn settings_the_protocol_would_ignore_are_refused_not_dropped() {
        let mut plaintext = security("plaintext", Some("PLAIN"), Some("s3cret-value"));
        let refused = Security::checked(plaintext.clone()).expect_err("credentials on plaintext");
        let text = refused.to_string();
        assert!(text.contains("KAFKA_SASL_PASSWORD") && text.contains("plaintext"), "{text}");
        assert!(!text.contains("s3cret-value"), "{text}");
        plaintext.protocol = None;
        let unset = Security::checked(plaintext).expect_err("credentials with no protocol: plaintext");
        assert!(unset.to_string().contains("KAFKA_SASL_USERNAME"), "{unset}");
        let no_mechanism = Security::checked(security("sasl_plaintext", None, Some("x"))).expect_err("SASL needs a mechanism");
        assert!(no_mechanism.to_string().contains("KAFKA_SASL_MECHANISM not set"), "{no_mechanism}");
        let mut ca = security("sasl_plaintext", Some("PLAIN"), Some("x"));
        ca.ca_location = Some("/etc/ca.pem".into());
        let no_tls = Security::checked(ca).expect_err("a CA file on a protocol without TLS");
        assert!(no_tls.to_string().contains("KAFKA_SSL_CA_LOCATION"), "{no_tls}");
    }

    #[test]
    fn a_refused_configuration_fails_to_create_a_client_naming_the_reason() {
        use rdkafka::consumer::BaseConsumer;
        let refused = Security::checked(security("sasl_plaintext", Some("PLAIN"), None)).expect_err("no password");
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", "127.0.0.1:9");
        apply_or_refuse(&mut config, Err(refused.clone()));
        assert_eq!(config.get("sasl.username"), None, "no credential reaches a refused client");
        let error = match config.create::<BaseConsumer>() {
            Ok(_) => panic!("a client was created from refused security settings"),
            Err(error) => error.to_string(),
        };
        assert!(error.contains(&refused.to_string()), "{error}");
        assert!(error.contains("security.protocol"), "{error}");
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

/// Checks a bootstrap list's form (`HOST:PORT[,HOST:PORT...]`), before any client is made
/// of it: one check for every command that takes `--bootstrap`.
pub fn check_bootstrap(bootstrap: &str) -> Result<(), crate::ClusterError> {
    let valid = !bootstrap.is_empty()
        && bootstrap.split(',').all(|server| {
            server
                .rsplit_once(':')
                .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok())
        });
    if valid {
        return Ok(());
    }
    Err(crate::ClusterError::Unsupported {
        backend: "external",
        reason: format!("bootstrap servers must be HOST:PORT[,HOST:PORT...], got {bootstrap:?}"),
    })
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
