//! `POST /batch`: appends to many streams in one request and one commit.

use std::time::Instant;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::AppState;
use super::error::ApiError;
use super::extract::{JsonBytes, parse_json};
use super::intake::BatchBody;
use crate::log::{AppendOutcome, LogError};

/// Applies every append of the batch or none: one failed `expected_version`
/// (409, naming the append's index) appends nothing at all.
#[utoipa::path(
    post,
    path = "/batch",
    tag = "log",
    request_body = crate::api::openapi::BatchRequest,
    responses(
        (status = 201, description = "Appended, all together", body = crate::api::openapi::BatchOutcome),
        (status = 200, description = "A retry: nothing was appended", body = crate::api::openapi::BatchOutcome),
        (status = 400, description = "`invalid_body`, `invalid_name`, `invalid_expected_version`, `invalid_metadata`, `no_events`, `no_appends`, `duplicate_event_id`, `reserved_event_id`", body = crate::api::openapi::Error),
        (status = 409, description = "`wrong_expected_version` or `idempotency_conflict`: nothing was appended", body = crate::api::openapi::Error),
        (status = 413, description = "`event_too_large`, `body_too_large` or `too_many_events`", body = crate::api::openapi::Error),
        (status = 415, description = "`unsupported_media_type`: send application/json", body = crate::api::openapi::Error),
        (status = 503, description = "`overloaded`, `log_unavailable` or `shutting_down` (`Retry-After`)", body = crate::api::openapi::Error),
        (status = 507, description = "`insufficient_storage`: the disk is full; nothing was appended", body = crate::api::openapi::Error),
        crate::api::openapi::EveryRoute
    )
)]
pub async fn append_batch(
    State(state): State<AppState>,
    JsonBytes(body): JsonBytes,
) -> Result<Response, ApiError> {
    let started = Instant::now();
    let result = async {
        let body: BatchBody<'_> = parse_json(&body)?;
        if body.appends.is_empty() {
            return Err(ApiError::bad_request(
                "no_appends",
                "`appends` must hold at least one append",
            ));
        }
        let appends = body
            .appends
            .into_iter()
            .enumerate()
            .map(|(i, item)| {
                item.into_append(&state.limits)
                    .map_err(|e| e.with("append_index", i))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let events: usize = appends.iter().map(|a| a.events.len()).sum();
        let streams: Vec<String> = appends.iter().map(|a| a.stream.to_string()).collect();
        let outcomes = state.log.append_all(appends).await.map_err(|e| {
            let failed = match &e {
                LogError::WrongExpectedVersion { append_index, .. } => Some(*append_index),
                _ => None,
            };
            let error = ApiError::from(e);
            match failed {
                Some(i) => error.with("append_index", i),
                None => error,
            }
        })?;
        Ok((outcomes, streams, events))
    }
    .await;
    let duplicate = |outcomes: &[AppendOutcome]| outcomes.iter().all(|o| o.duplicate);
    state.record_append(
        started,
        result.as_ref().ok().map(|(o, _, n)| (*n, duplicate(o))),
    );
    let (outcomes, streams, _) = result?;
    let status = if duplicate(&outcomes) {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    let results: Vec<_> = streams
        .iter()
        .zip(&outcomes)
        .map(|(stream, outcome)| {
            let mut result = json!(outcome);
            result["stream"] = json!(stream);
            result
        })
        .collect();
    Ok((status, axum::Json(json!({ "results": results }))).into_response())
}
