//! A notifier's webhook sink: its settings, and one signed delivery attempt
//! as [Standard Webhooks](https://www.standardwebhooks.com/) writes it
//! (`webhook-id`, `webhook-timestamp`, `webhook-signature: v1,<base64
//! HMAC-SHA256 of "id.timestamp.body">`).

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::Sha256;

use super::{NotifyError, StoredNotification};

/// What `PUT /plugins/{name}/webhook` accepts.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WebhookRequest {
    /// Where to POST: an `http://` or `https://` URL (certificates are
    /// checked against the system's roots).
    pub url: String,
    /// The signing secret: `whsec_` followed by base64 (24–64 random bytes is usual).
    pub secret: String,
    /// How long one attempt may take (default 10,000 ms).
    pub timeout_ms: Option<u64>,
    /// Attempts before a notification becomes a dead letter (default 10).
    pub max_attempts: Option<u32>,
    /// Most attempts started per second (default: no limit).
    pub max_per_second: Option<f64>,
    /// Most deliveries in flight at once (default 1: strictly in order).
    pub max_in_flight: Option<u32>,
    /// Wait before the first retry; doubles each time, with jitter, up to
    /// 10 minutes (default 1,000 ms).
    pub backoff_ms: Option<u64>,
    /// Only notifications on these channels go to the webhook (default: all).
    pub channels: Option<Vec<String>>,
}

/// A validated webhook sink, as kept in the plugin's mailbox.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct WebhookConfig {
    /// Where to POST.
    pub url: String,
    /// The secret, `whsec_…` (never shown back).
    secret: String,
    /// Per-attempt timeout, ms.
    pub timeout_ms: u64,
    /// Attempts before dead-lettering.
    pub max_attempts: u32,
    /// Most attempts started per second.
    pub max_per_second: Option<f64>,
    /// Most deliveries in flight.
    pub max_in_flight: u32,
    /// First retry delay, ms.
    pub backoff_ms: u64,
    /// Channels sent (empty: all).
    pub channels: Vec<String>,
}

/// The longest a retry waits.
const MAX_BACKOFF: Duration = Duration::from_secs(600);

impl WebhookRequest {
    /// Checks every field; the message says which one is wrong and why.
    pub fn validate(self) -> Result<WebhookConfig, NotifyError> {
        let bad = |m: String| Err(NotifyError::InvalidWebhook(m));
        let url = match reqwest::Url::parse(&self.url) {
            Ok(url) => url,
            Err(e) => return bad(format!("url {:?} is not a URL: {e}", self.url)),
        };
        if !matches!(url.scheme(), "http" | "https") {
            return bad(format!(
                "url must be http:// or https://, got {}://",
                url.scheme()
            ));
        }
        if url.host_str().is_none() {
            return bad("url has no host".into());
        }
        secret_key(&self.secret)?;
        let timeout_ms = self.timeout_ms.unwrap_or(10_000);
        if !(1..=300_000).contains(&timeout_ms) {
            return bad("timeout_ms must be 1-300000".into());
        }
        let max_attempts = self.max_attempts.unwrap_or(10);
        if !(1..=100).contains(&max_attempts) {
            return bad("max_attempts must be 1-100".into());
        }
        if let Some(rate) = self.max_per_second
            && !(rate.is_finite() && rate > 0.0)
        {
            return bad("max_per_second must be a positive number".into());
        }
        let max_in_flight = self.max_in_flight.unwrap_or(1);
        if !(1..=256).contains(&max_in_flight) {
            return bad("max_in_flight must be 1-256".into());
        }
        let backoff_ms = self.backoff_ms.unwrap_or(1000);
        if !(1..=MAX_BACKOFF.as_millis() as u64).contains(&backoff_ms) {
            return bad("backoff_ms must be 1-600000".into());
        }
        Ok(WebhookConfig {
            url: url.to_string(),
            secret: self.secret,
            timeout_ms,
            max_attempts,
            max_per_second: self.max_per_second,
            max_in_flight,
            backoff_ms,
            channels: self.channels.unwrap_or_default(),
        })
    }
}

/// The HMAC key of a `whsec_` secret.
fn secret_key(secret: &str) -> Result<Vec<u8>, NotifyError> {
    let Some(encoded) = secret.strip_prefix("whsec_") else {
        return Err(NotifyError::InvalidWebhook(
            "secret must be whsec_ followed by base64 (Standard Webhooks)".into(),
        ));
    };
    match BASE64.decode(encoded) {
        Ok(key) if !key.is_empty() => Ok(key),
        _ => Err(NotifyError::InvalidWebhook(
            "secret: the part after whsec_ must be non-empty base64".into(),
        )),
    }
}

impl WebhookConfig {
    /// The settings as shown to operators: everything but the secret.
    pub fn view(&self) -> Value {
        json!({
            "url": self.url,
            "secret": "(set)",
            "timeout_ms": self.timeout_ms,
            "max_attempts": self.max_attempts,
            "max_per_second": self.max_per_second,
            "max_in_flight": self.max_in_flight,
            "backoff_ms": self.backoff_ms,
            "channels": self.channels,
        })
    }

    /// Whether notifications on `channel` go to this webhook.
    pub fn wants(&self, channel: &str) -> bool {
        self.channels.is_empty() || self.channels.iter().any(|c| c == channel)
    }

    /// The `webhook-signature` header value for this message.
    pub fn signature(&self, id: &str, timestamp: u64, body: &[u8]) -> String {
        // The secret was checked when the settings were accepted.
        let key = secret_key(&self.secret).unwrap_or_default();
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&key).expect("HMAC takes any key size");
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        format!("v1,{}", BASE64.encode(mac.finalize().into_bytes()))
    }

    /// How long to wait after failed attempt number `attempt` (1-based):
    /// exponential, capped, with ±50% jitter so that many senders spread out.
    pub fn backoff(&self, attempt: u32) -> Duration {
        let base = Duration::from_millis(self.backoff_ms)
            .saturating_mul(1u32 << attempt.saturating_sub(1).min(20))
            .min(MAX_BACKOFF);
        base.mul_f64(0.5 + fastrand::f64())
    }

    /// One attempt to deliver `notification` of `plugin`: Ok on a 2xx answer.
    pub async fn send(
        &self,
        client: &reqwest::Client,
        plugin: &str,
        notification: &StoredNotification,
    ) -> Result<(), String> {
        let id = notification.id(plugin);
        let body = serde_json::to_vec(&notification.to_json(plugin)).map_err(|e| e.to_string())?;
        let timestamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let signature = self.signature(&id, timestamp, &body);
        let response = client
            .post(&self.url)
            .timeout(Duration::from_millis(self.timeout_ms))
            .header("content-type", "application/json")
            .header("webhook-id", &id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signature)
            .body(body)
            .send()
            .await
            .map_err(|e| {
                if e.is_timeout() {
                    format!("timed out after {} ms", self.timeout_ms)
                } else {
                    error_chain(&e)
                }
            })?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        let text = response.text().await.unwrap_or_default();
        let mut end = text.len().min(200);
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        Err(format!("the receiver answered {status}: {}", &text[..end]))
    }
}

/// An error with its causes, `outer: inner: root` (reqwest's own message
/// only says that sending failed; the cause says why).
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(secret: &str) -> WebhookRequest {
        WebhookRequest {
            url: "http://127.0.0.1:9/hook".into(),
            secret: secret.into(),
            timeout_ms: None,
            max_attempts: None,
            max_per_second: None,
            max_in_flight: None,
            backoff_ms: None,
            channels: None,
        }
    }

    #[test]
    fn signature_matches_the_standard_webhooks_example() {
        // The example of the Standard Webhooks specification.
        let config = request("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
            .validate()
            .expect("valid");
        let body = br#"{"test": 2432232314}"#;
        assert_eq!(
            config.signature("msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    #[test]
    fn bad_settings_are_refused_with_the_reason() {
        for (secret, url, expected) in [
            ("nope", "http://x/", "whsec_"),
            ("whsec_!!!", "http://x/", "base64"),
            ("whsec_AAAA", "ftp://x/", "https://"),
            ("whsec_AAAA", "not a url", "not a URL"),
        ] {
            let mut r = request(secret);
            r.url = url.into();
            let error = r.validate().expect_err("refused").to_string();
            assert!(error.contains(expected), "{error}");
        }
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let mut r = request("whsec_AAAA");
        r.backoff_ms = Some(100);
        let config = r.validate().expect("valid");
        let first = config.backoff(1);
        assert!(first >= Duration::from_millis(50) && first <= Duration::from_millis(150));
        let fourth = config.backoff(4);
        assert!(fourth >= Duration::from_millis(400) && fourth <= Duration::from_millis(1200));
        assert!(config.backoff(40) <= MAX_BACKOFF.mul_f64(1.5));
    }
}
