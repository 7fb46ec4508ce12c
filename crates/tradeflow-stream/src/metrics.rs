//! Prometheus text exposition of the latest lag sample, on a plain TCP listener.

use crate::StreamError;
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// The latest metrics text, shared by the sampler and the server.
pub type MetricsText = Arc<Mutex<String>>;

/// Largest request read from a scraper; the request itself is not interpreted.
const REQUEST_BYTES_MAX: usize = 8 * 1024;

/// Serves `text` to every HTTP request on `address` until the task is dropped. Returns the
/// address actually bound (useful with port 0).
pub async fn serve(address: &str, text: MetricsText) -> Result<(std::net::SocketAddr, tokio::task::JoinHandle<()>), StreamError> {
    let listener = TcpListener::bind(address).await.map_err(|error| StreamError::Config {
        reason: format!("cannot listen for metrics on {address}: {error}"),
    })?;
    let bound = listener.local_addr().map_err(|error| StreamError::Config {
        reason: format!("metrics listener on {address}: {error}"),
    })?;
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut socket, _)) = listener.accept().await else { continue };
            let body = text.lock().map(|text| text.clone()).unwrap_or_default();
            tokio::spawn(async move {
                let mut request = vec![0_u8; REQUEST_BYTES_MAX];
                let _ = socket.read(&mut request).await;
                let response = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = socket.write_all(response.as_bytes()).await;
            });
        }
    });
    Ok((bound, task))
}
