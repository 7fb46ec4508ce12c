//! Prometheus text exposition of the latest lag sample, on a plain TCP listener.
//!
//! Bounded against misbehaving clients: at most [`CONNECTIONS_MAX`] connections are served
//! at once (more are closed at once), a client gets [`READ_TIMEOUT`] to send its request and
//! [`WRITE_TIMEOUT`] to take the answer, and a failing accept (out of file descriptors, say)
//! is retried after [`ACCEPT_BACKOFF`] instead of in a tight loop.

use crate::StreamError;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

/// The latest metrics text, shared by the sampler and the server.
pub type MetricsText = Arc<Mutex<String>>;

/// Largest request read from a scraper; the request itself is not interpreted.
const REQUEST_BYTES_MAX: usize = 8 * 1024;
/// Most connections served at once; one more is closed as soon as it is accepted.
pub const CONNECTIONS_MAX: usize = 16;
/// How long a client has to send its request before its connection is closed.
pub const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a client has to take the answer before its connection is closed.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// The pause after a failed accept.
pub const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Serves `text` to every HTTP request on `address` until the task is dropped. Returns the
/// address actually bound (useful with port 0).
pub async fn serve(address: &str, text: MetricsText) -> Result<(std::net::SocketAddr, tokio::task::JoinHandle<()>), StreamError> {
    let listener = TcpListener::bind(address).await.map_err(|error| StreamError::Config {
        reason: format!("cannot listen for metrics on {address}: {error}"),
    })?;
    let bound = listener.local_addr().map_err(|error| StreamError::Config {
        reason: format!("metrics listener on {address}: {error}"),
    })?;
    let slots = Arc::new(Semaphore::new(CONNECTIONS_MAX));
    let task = tokio::spawn(async move {
        loop {
            let mut socket = match listener.accept().await {
                Ok((socket, _)) => socket,
                Err(error) => {
                    tracing::warn!(%error, "accepting a metrics connection; trying again after {ACCEPT_BACKOFF:?}");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            };
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                // Every slot is taken: close this one at once rather than queue it.
                drop(socket);
                continue;
            };
            let body = text.lock().map(|text| text.clone()).unwrap_or_default();
            tokio::spawn(async move {
                let _slot = slot;
                let mut request = vec![0_u8; REQUEST_BYTES_MAX];
                if !matches!(tokio::time::timeout(READ_TIMEOUT, socket.read(&mut request)).await, Ok(Ok(read)) if read > 0) {
                    return;
                }
                let response = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = tokio::time::timeout(WRITE_TIMEOUT, socket.write_all(response.as_bytes())).await;
            });
        }
    });
    Ok((bound, task))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpStream;

    async fn scrape(address: std::net::SocketAddr) -> std::io::Result<String> {
        let mut socket = TcpStream::connect(address).await?;
        socket.write_all(b"GET /metrics HTTP/1.1\r\n\r\n").await?;
        let mut answer = String::new();
        tokio::time::timeout(Duration::from_secs(5), socket.read_to_string(&mut answer))
            .await
            .map_err(|_| std::io::Error::other("no answer in 5 s"))??;
        Ok(answer)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn silent_clients_past_the_limit_are_closed_and_a_scrape_still_gets_through_once_they_time_out() {
        let text: MetricsText = Arc::new(Mutex::new("tradeflow_lag 7\n".into()));
        let (address, _server) = serve("127.0.0.1:0", text).await.expect("the endpoint listens");
        // More silent connections than the limit: each holds a slot until its read times out.
        let mut silent = Vec::new();
        for _ in 0..CONNECTIONS_MAX + 4 {
            silent.push(TcpStream::connect(address).await.expect("connects"));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        // Every slot is held: a scrape now is closed without an answer.
        let refused = scrape(address).await.unwrap_or_default();
        assert!(!refused.contains("tradeflow_lag"), "served past the limit: {refused:?}");
        // The ones past the limit were closed at once: reading gives end of file.
        let mut closed = 0;
        for socket in &mut silent {
            let mut byte = [0_u8; 1];
            if let Ok(Ok(0)) = tokio::time::timeout(Duration::from_millis(100), socket.read(&mut byte)).await {
                closed += 1;
            }
        }
        assert!(closed >= 4, "connections past the limit are closed at once: {closed}");
        // Once the silent ones time out, a scrape is served.
        tokio::time::sleep(READ_TIMEOUT + Duration::from_millis(500)).await;
        let answer = scrape(address).await.expect("a scrape after the timeouts");
        assert!(
            answer.starts_with("HTTP/1.1 200 OK") && answer.ends_with("tradeflow_lag 7\n"),
            "{answer:?}"
        );
    }
}
