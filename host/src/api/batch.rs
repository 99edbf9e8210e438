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
use crate::log::{AppendOutcome, ExpectedVersion, LogError};

/// Applies every append of the batch or none: one failed `expected_version`
/// (409, naming the append's index) appends nothing at all.
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
        let expected: Vec<ExpectedVersion> = appends.iter().map(|a| a.expected_version).collect();
        let outcomes = state.log.append_all(appends).await.map_err(|e| {
            let failed = failed_append(&streams, &expected, &e);
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

/// The index of the append that a `WrongExpectedVersion` refused. The log
/// names the stream, not the append, and a batch may name a stream more than
/// once: the append that failed is one to that stream whose expectation is
/// the error's and refuses the version the log found. When exactly one append
/// fits, it is that one; when several do (two appends to a stream expecting
/// the same version), the error alone cannot tell which, and no index is
/// given rather than a wrong one.
fn failed_append(
    streams: &[String],
    expected: &[ExpectedVersion],
    error: &LogError,
) -> Option<usize> {
    let LogError::WrongExpectedVersion {
        stream,
        expected: refused,
        actual,
    } = error
    else {
        return None;
    };
    let mut fits = streams
        .iter()
        .zip(expected)
        .enumerate()
        .filter(|(_, (s, e))| *s == stream && *e == refused && !e.admits(*actual))
        .map(|(i, _)| i);
    let first = fits.next()?;
    fits.next().is_none().then_some(first)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(stream: &str, expected: ExpectedVersion, actual: Option<u64>) -> LogError {
        LogError::WrongExpectedVersion {
            stream: stream.into(),
            expected,
            actual,
        }
    }

    #[test]
    fn the_append_that_refused_the_version_is_named() {
        let streams = ["a", "b", "a"].map(String::from);
        let expected = [
            ExpectedVersion::NoStream,
            ExpectedVersion::Any,
            ExpectedVersion::Exact(5),
        ];
        let error = refused("a", ExpectedVersion::Exact(5), Some(1));
        assert_eq!(failed_append(&streams, &expected, &error), Some(2));
        let error = refused("a", ExpectedVersion::NoStream, Some(3));
        assert_eq!(failed_append(&streams, &expected, &error), Some(0));
    }

    #[test]
    fn no_index_when_the_error_fits_two_appends() {
        let streams = ["a", "a"].map(String::from);
        let expected = [ExpectedVersion::NoStream; 2];
        let error = refused("a", ExpectedVersion::NoStream, Some(0));
        assert_eq!(failed_append(&streams, &expected, &error), None);
        assert_eq!(
            failed_append(&streams, &expected, &LogError::ShuttingDown),
            None
        );
    }
}
