//! Extractors whose rejections are [`ApiError`]s, so that a malformed path,
//! query or body gets the same JSON error body as every other failure.

use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::header;
use bytes::Bytes;

use super::error::ApiError;

/// A path parameter.
#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(ApiError))]
pub struct Path<T>(pub T);

/// Query parameters.
#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(ApiError))]
pub struct Query<T>(pub T);

/// The raw bytes of a JSON request body: the content type must say JSON and
/// the size must be within the configured limit (413 otherwise). Parsing is
/// left to the handler, which borrows from the bytes to keep payloads as sent.
pub struct JsonBytes(pub Bytes);

impl<S: Send + Sync> FromRequest<S> for JsonBytes {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let content_type = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let mime = content_type
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        if mime != "application/json" && !mime.ends_with("+json") {
            return Err(ApiError::new(
                axum::http::StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                format!("expected Content-Type: application/json, got {content_type:?}"),
            ));
        }
        Ok(JsonBytes(Bytes::from_request(req, state).await?))
    }
}

/// Parses a JSON body into `T`, with serde's message (line and column) on failure.
pub fn parse_json<'a, T: serde::Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, ApiError> {
    serde_json::from_slice(bytes).map_err(|e| ApiError::bad_request("invalid_body", e.to_string()))
}

/// The `Last-Event-ID` a reconnecting live feed sends: the number of the
/// last item it received (a position, or a notification sequence). One that
/// is not a number is refused rather than ignored: resuming from the start
/// instead would replay what the client already has.
pub fn last_event_id(headers: &axum::http::HeaderMap) -> Result<Option<u64>, ApiError> {
    let Some(value) = headers.get("last-event-id") else {
        return Ok(None);
    };
    let id = value
        .to_str()
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .ok_or_else(|| {
            ApiError::bad_request(
                "invalid_last_event_id",
                "Last-Event-ID must be the number of the last item received",
            )
        })?;
    Ok(Some(id))
}
