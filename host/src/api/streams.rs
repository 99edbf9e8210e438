//! `POST /streams/{stream}` (append) and `GET /streams/{stream}` (read one stream).

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use super::AppState;
use super::error::ApiError;
use super::extract::{JsonBytes, Path, Query, parse_json};
use super::intake::AppendBody;
use super::render::events_response;
use crate::log::{AppendOutcome, Direction, StreamName};

/// Appends events to one stream: 201 with where they landed, 200 when every
/// event was already there (an idempotent retry), 409 on a version conflict.
#[utoipa::path(
    post,
    path = "/streams/{stream}",
    tag = "log",
    params(("stream" = String, Path, description = "The stream: 1-256 bytes, no control characters")),
    request_body = crate::api::openapi::AppendRequest,
    responses(
        (status = 201, description = "Appended", body = crate::api::openapi::AppendOutcome),
        (status = 200, description = "A retry: every event was there already; nothing was appended", body = crate::api::openapi::AppendOutcome),
        (status = 400, description = "`invalid_body`, `invalid_name`, `invalid_expected_version`, `invalid_metadata`, `no_events`, `no_appends`, `duplicate_event_id`, `reserved_event_id`", body = crate::api::openapi::Error),
        (status = 409, description = "`wrong_expected_version` or `idempotency_conflict`: nothing was appended", body = crate::api::openapi::Error),
        (status = 413, description = "`event_too_large`, `body_too_large` or `too_many_events`", body = crate::api::openapi::Error),
        (status = 415, description = "`unsupported_media_type`: send application/json", body = crate::api::openapi::Error),
        (status = 503, description = "`overloaded`, `log_unavailable` or `shutting_down` (`Retry-After`)", body = crate::api::openapi::Error),
        (status = 507, description = "`insufficient_storage`: the disk is full; nothing was appended", body = crate::api::openapi::Error),
        crate::api::openapi::EveryRoute
    )
)]
pub async fn append(
    State(state): State<AppState>,
    Path(stream): Path<String>,
    JsonBytes(body): JsonBytes,
) -> Result<Response, ApiError> {
    let outcome = state
        .append_one(|| {
            let stream = StreamName::new(stream)?;
            let body: AppendBody<'_> = parse_json(&body)?;
            body.into_append(stream, &state.limits)
        })
        .await?;
    Ok((status_of(&outcome), axum::Json(outcome)).into_response())
}

/// 201 when something was appended, 200 for a retry that appended nothing.
pub(super) fn status_of(outcome: &AppendOutcome) -> StatusCode {
    if outcome.duplicate {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    }
}

/// Query of a stream read.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReadStreamQuery {
    /// First version to return (default: the first forward, the last backward).
    from: Option<u64>,
    /// Most events to return.
    limit: Option<usize>,
    /// `forward` (default) or `backward`.
    #[serde(default)]
    direction: DirectionParam,
}

#[derive(Deserialize, Default, Clone, Copy)]
#[serde(rename_all = "lowercase")]
enum DirectionParam {
    #[default]
    Forward,
    Backward,
}

/// Reads one stream; 404 when it has no events.
#[utoipa::path(
    get,
    path = "/streams/{stream}",
    tag = "log",
    params(("stream" = String, Path, description = "The stream: 1-256 bytes, no control characters"), ("from" = Option<u64>, Query, description = "First version (default: the first forward, the last backward)"), ("limit" = Option<u32>, Query, minimum = 1, description = "Most events (default 1000, at most --max-read-count)"), ("direction" = Option<String>, Query, description = "`forward` (default) or `backward`")),
    responses(
        (status = 200, description = "A page of the stream", body = crate::api::openapi::StreamPage),
        (status = 400, description = "`invalid_name` or `invalid_query`", body = crate::api::openapi::Error),
        (status = 404, description = "`stream_not_found`", body = crate::api::openapi::Error),
        (status = 503, description = "`log_unavailable`", body = crate::api::openapi::Error),
        crate::api::openapi::EveryRoute
    )
)]
pub async fn read(
    State(state): State<AppState>,
    Path(stream): Path<String>,
    Query(query): Query<ReadStreamQuery>,
) -> Result<Response, ApiError> {
    let stream = StreamName::new(stream)?;
    let limit = state.read_limit(query.limit)?;
    let direction = match query.direction {
        DirectionParam::Forward => Direction::Forward,
        DirectionParam::Backward => Direction::Backward,
    };
    let name = stream.as_str().to_owned();
    let page = state
        .log
        .read_stream(stream, query.from, limit, direction)
        .await?
        .ok_or_else(|| {
            ApiError::not_found("stream_not_found", format!("stream {name} has no events"))
        })?;
    Ok(events_response(
        &page.events,
        &[
            ("stream", json!(name)),
            ("stream_version", json!(page.stream_version)),
            ("next", page.next.map_or(Value::Null, Value::from)),
        ],
    ))
}
