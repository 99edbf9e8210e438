//! One bare HTTP/1 connection (hyper's, no pool), for the benchmarks that
//! count each request's status: the open-loop load, and the calls that
//! fill a log, deploy a plugin and follow its status.

use anyhow::{Context, bail};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::client::conn::http1;
use hyper::{Method, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// An answer: its status, whether it said `Retry-After`, and its body.
pub struct Answer {
    /// The HTTP status.
    pub status: StatusCode,
    /// Whether a `Retry-After` header came with it.
    pub retry_after: bool,
    /// The whole body.
    pub body: Bytes,
}

impl Answer {
    /// The body as JSON.
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> anyhow::Result<T> {
        serde_json::from_slice(&self.body).with_context(|| {
            format!(
                "decoding a {} answer: {}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    /// Fails unless the status is a success, with the body in the error.
    pub fn success(self) -> anyhow::Result<Self> {
        if !self.status.is_success() {
            bail!("{} {}", self.status, String::from_utf8_lossy(&self.body));
        }
        Ok(self)
    }

    /// The `error.code` of an error body (empty when it has none).
    pub fn error_code(&self) -> String {
        #[derive(serde::Deserialize)]
        struct Body {
            error: Error,
        }
        #[derive(serde::Deserialize)]
        struct Error {
            code: String,
        }
        serde_json::from_slice::<Body>(&self.body).map_or_else(|_| String::new(), |b| b.error.code)
    }
}

/// One open HTTP/1 connection to a server.
pub struct Connection {
    sender: http1::SendRequest<Full<Bytes>>,
    host: String,
}

impl Connection {
    /// Opens a connection to `url` (`http://host:port`).
    pub async fn open(url: &str) -> anyhow::Result<Self> {
        let host = url
            .strip_prefix("http://")
            .context("the benchmark speaks plain http only")?
            .trim_end_matches('/')
            .to_owned();
        let tcp = TcpStream::connect(&host)
            .await
            .with_context(|| format!("connecting to {url}"))?;
        tcp.set_nodelay(true)?;
        let (sender, connection) = http1::handshake(TokioIo::new(tcp)).await?;
        tokio::spawn(connection);
        Ok(Self { sender, host })
    }

    /// Whether the server has closed it (or it failed).
    pub fn is_closed(&self) -> bool {
        self.sender.is_closed()
    }

    /// Sends one request and reads the whole answer.
    pub async fn send(
        &mut self,
        method: Method,
        path: &str,
        content_type: &str,
        body: impl Into<Bytes>,
    ) -> anyhow::Result<Answer> {
        let request = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, self.host.as_str())
            .header(hyper::header::CONTENT_TYPE, content_type)
            .body(Full::new(body.into()))?;
        self.sender.ready().await?;
        let response = self.sender.send_request(request).await?;
        let status = response.status();
        let retry_after = response.headers().contains_key(hyper::header::RETRY_AFTER);
        let body = response.into_body().collect().await?.to_bytes();
        Ok(Answer {
            status,
            retry_after,
            body,
        })
    }

    /// `GET path`.
    pub async fn get(&mut self, path: &str) -> anyhow::Result<Answer> {
        self.send(Method::GET, path, "application/json", Bytes::new())
            .await
    }

    /// `POST path` with a JSON body.
    pub async fn post_json(
        &mut self,
        path: &str,
        body: impl Into<Bytes>,
    ) -> anyhow::Result<Answer> {
        self.send(Method::POST, path, "application/json", body)
            .await
    }
}
