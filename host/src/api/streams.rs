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
