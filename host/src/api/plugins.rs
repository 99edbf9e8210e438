//! `/plugins`: deploy, inspect, control and read plugins.

use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use super::AppState;
use super::error::ApiError;
use super::extract::{Path, Query};
use crate::cluster::Deployed;
use crate::plugins::{DeployOutcome, PluginName};

fn name(raw: String) -> Result<PluginName, ApiError> {
    Ok(PluginName::new(raw)?)
}

/// Deploys or replaces a plugin: the body is the component.
#[utoipa::path(
    put,
    path = "/plugins/{name}",
    tag = "plugins",
    params(("name" = String, Path, pattern = "^[a-z0-9][a-z0-9_-]{0,63}$", example = "counter", description = "The plugin: 1-64 of a-z, 0-9, - and _, starting with a letter or digit"), ("labels" = Option<String>, Query, description = "Comma-separated labels a node's --hold may select the plugin by")),
    request_body(content((Vec<u8> = "application/wasm"), (Vec<u8> = "application/octet-stream")), description = "The component (.wasm)"),
    responses(
        (status = 201, description = "`created`: a new plugin", body = crate::api::openapi::PluginAnswer),
        (status = 202, description = "`rebuilding` beside the serving version, or `recorded` for other nodes", body = crate::api::openapi::PluginAnswer),
        (status = 200, description = "`unchanged`: the same code serves already", body = crate::api::openapi::PluginAnswer),
        (status = 400, description = "`invalid_plugin_name`, `invalid_query` or `empty_body`", body = crate::api::openapi::Error),
        (status = 409, description = "`conflict`: the deploy would change the plugin's kind", body = crate::api::openapi::Error),
        (status = 413, description = "`body_too_large`", body = crate::api::openapi::Error),
        (status = 415, description = "`unsupported_media_type`: send application/wasm", body = crate::api::openapi::Error),
        (status = 422, description = "`invalid_plugin`", body = crate::api::openapi::Error),
        (status = 503, description = "`cluster_unavailable` (several nodes): the shared records could not be read or written", body = crate::api::openapi::Error),
        crate::api::openapi::EveryRoute
    )
)]
pub async fn deploy(
    State(state): State<AppState>,
    Path(raw): Path<String>,
    Query(query): Query<DeployQuery>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let name = name(raw)?;
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !matches!(
        content_type,
        "application/wasm" | "application/octet-stream"
    ) {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            format!("send the component as Content-Type: application/wasm, got {content_type:?}"),
        ));
    }
    if body.is_empty() {
        return Err(ApiError::bad_request(
            "empty_body",
            "the body must be the plugin's .wasm component",
        ));
    }
    let labels = query
        .labels
        .map(|labels| parse_labels(&labels))
        .transpose()?;
    let outcome = match state.deployments.deploy(name.clone(), body, labels).await? {
        Deployed::Here(outcome) => outcome,
        Deployed::Recorded => {
            let body = json!({ "name": name.as_str(), "deploy": "recorded", "held_here": false });
            return Ok((StatusCode::ACCEPTED, axum::Json(body)).into_response());
        }
    };
    let mut body = serde_json::to_value(state.plugins.status(&name).await?).unwrap_or(Value::Null);
    let status = match outcome {
        DeployOutcome::Created => StatusCode::CREATED,
        DeployOutcome::Rebuilding(generation) => {
            body["replay"] = json!({ "generation": generation });
            StatusCode::ACCEPTED
        }
        DeployOutcome::Unchanged => StatusCode::OK,
    };
    body["deploy"] = json!(match outcome {
        DeployOutcome::Created => "created",
        DeployOutcome::Rebuilding(_) => "rebuilding",
        DeployOutcome::Unchanged => "unchanged",
    });
    Ok((status, axum::Json(body)).into_response())
}

/// `PUT /plugins/{name}?labels=a,b`: labels a node's `--hold` may select
/// the plugin by (kept from the last deploy when absent).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeployQuery {
    labels: Option<String>,
}

/// Labels, comma-separated: each 1-64 of `a-z 0-9 - _`, like plugin names.
fn parse_labels(list: &str) -> Result<Vec<String>, ApiError> {
    list.split(',')
        .filter(|l| !l.is_empty())
        .map(|label| match PluginName::new(label) {
            Ok(_) => Ok(label.to_owned()),
            Err(_) => Err(ApiError::bad_request(
                "invalid_query",
                format!("label {label:?}: use 1-64 of a-z, 0-9, '-' and '_', starting with a letter or digit"),
            )),
        })
        .collect()
}

/// Every plugin's status.
#[utoipa::path(
    get,
    path = "/plugins",
    tag = "plugins",
    responses(
        (status = 200, description = "Every plugin's status, by name", body = crate::api::openapi::PluginList),
        crate::api::openapi::EveryRoute
    )
)]
pub async fn list(State(state): State<AppState>) -> Result<Response, ApiError> {
    let plugins = state.plugins.list().await?;
    Ok(axum::Json(json!({ "plugins": plugins })).into_response())
}

/// One plugin's status.
#[utoipa::path(
    get,
    path = "/plugins/{name}",
    tag = "plugins",
    params(("name" = String, Path, pattern = "^[a-z0-9][a-z0-9_-]{0,63}$", example = "counter", description = "The plugin: 1-64 of a-z, 0-9, - and _, starting with a letter or digit")),
    responses(
        (status = 200, description = "The plugin's status", body = crate::api::openapi::PluginAnswer),
        (status = 400, description = "`invalid_plugin_name`", body = crate::api::openapi::Error),
        (status = 404, description = "`plugin_not_found`", body = crate::api::openapi::Error),
        crate::api::openapi::EveryRoute
    )
)]
pub async fn status(
    State(state): State<AppState>,
    Path(raw): Path<String>,
) -> Result<Response, ApiError> {
    let name = name(raw)?;
    let status = state.plugins.status(&name).await?;
    let notifier = status.notifications.is_some();
    let mut body = serde_json::to_value(status).unwrap_or(Value::Null);
    if let (Some(cluster), true) = (state.deployments.cluster(), notifier) {
        // Which node delivers this notifier, and since when it does.
        body["delivery"] = json!(cluster.delivery(name.as_str()).await);
    }
    Ok(axum::Json(body).into_response())
}

/// Unloads a plugin and deletes its state.
#[utoipa::path(
    delete,
    path = "/plugins/{name}",
    tag = "plugins",
    params(("name" = String, Path, pattern = "^[a-z0-9][a-z0-9_-]{0,63}$", example = "counter", description = "The plugin: 1-64 of a-z, 0-9, - and _, starting with a letter or digit"), ("purge" = Option<bool>, Query, description = "Also delete a notifier's mailbox")),
    responses(
        (status = 200, description = "`{\"deleted\", \"purged\"}`", body = crate::api::openapi::CommandAnswer),
        (status = 400, description = "`invalid_plugin_name` or `invalid_query`", body = crate::api::openapi::Error),
        (status = 404, description = "`plugin_not_found`", body = crate::api::openapi::Error),
        (status = 503, description = "`plugin_compiling`: try again once it has started", body = crate::api::openapi::Error),
        crate::api::openapi::EveryRoute
    )
)]
pub async fn remove(
    State(state): State<AppState>,
    Path(raw): Path<String>,
    Query(query): Query<RemoveQuery>,
) -> Result<Response, ApiError> {
    let name = name(raw)?;
    let purge = query.purge.unwrap_or(false);
    state.deployments.remove(&name, purge).await?;
    Ok(axum::Json(json!({ "deleted": name.as_str(), "purged": purge })).into_response())
}

/// `DELETE /plugins/{name}?purge=true` also deletes a notifier's mailbox,
/// which a remove otherwise keeps for a notifier deployed again under the
/// name (so that it sends nothing twice).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RemoveQuery {
    purge: Option<bool>,
}

/// Rebuilds a plugin from position 0 beside its serving version.
#[utoipa::path(
    post,
    path = "/plugins/{name}/replay",
    tag = "plugins",
    params(("name" = String, Path, pattern = "^[a-z0-9][a-z0-9_-]{0,63}$", example = "counter", description = "The plugin: 1-64 of a-z, 0-9, - and _, starting with a letter or digit")),
    responses(
        (status = 202, description = "Rebuilding from position 0 beside the serving version (or `recorded` for other nodes)", body = crate::api::openapi::PluginAnswer),
        (status = 400, description = "`invalid_plugin_name`", body = crate::api::openapi::Error),
        (status = 404, description = "`plugin_not_found`", body = crate::api::openapi::Error),
        (status = 503, description = "`plugin_compiling`: try again once it has started", body = crate::api::openapi::Error),
        crate::api::openapi::EveryRoute
    )
)]
pub async fn replay(
    State(state): State<AppState>,
    Path(raw): Path<String>,
) -> Result<Response, ApiError> {
    let name = name(raw)?;
    let Some(generation) = state.deployments.replay(&name).await? else {
        let body = json!({ "name": name.as_str(), "replay": "recorded", "held_here": false });
        return Ok((StatusCode::ACCEPTED, axum::Json(body)).into_response());
    };
    let mut body = serde_json::to_value(state.plugins.status(&name).await?).unwrap_or(Value::Null);
    body["replay"] = json!({ "generation": generation });
    Ok((StatusCode::ACCEPTED, axum::Json(body)).into_response())
}

/// Pauses a plugin.
#[utoipa::path(
    post,
    path = "/plugins/{name}/pause",
    tag = "plugins",
    params(("name" = String, Path, pattern = "^[a-z0-9][a-z0-9_-]{0,63}$", example = "counter", description = "The plugin: 1-64 of a-z, 0-9, - and _, starting with a letter or digit")),
    responses(
        (status = 200, description = "`{\"paused\": name}`", body = crate::api::openapi::CommandAnswer),
        (status = 400, description = "`invalid_plugin_name`", body = crate::api::openapi::Error),
        (status = 404, description = "`plugin_not_found`", body = crate::api::openapi::Error),
        (status = 503, description = "`plugin_compiling`: try again once it has started", body = crate::api::openapi::Error),
        crate::api::openapi::EveryRoute
    )
)]
pub async fn pause(
    State(state): State<AppState>,
    Path(raw): Path<String>,
) -> Result<Response, ApiError> {
    let name = name(raw)?;
    state.deployments.pause(&name).await?;
    Ok(axum::Json(json!({ "paused": name.as_str() })).into_response())
}

/// Resumes a paused plugin, or retries a failed one now.
#[utoipa::path(
    post,
    path = "/plugins/{name}/resume",
    tag = "plugins",
    params(("name" = String, Path, pattern = "^[a-z0-9][a-z0-9_-]{0,63}$", example = "counter", description = "The plugin: 1-64 of a-z, 0-9, - and _, starting with a letter or digit")),
    responses(
        (status = 200, description = "`{\"resumed\": name}`", body = crate::api::openapi::CommandAnswer),
        (status = 400, description = "`invalid_plugin_name`", body = crate::api::openapi::Error),
        (status = 404, description = "`plugin_not_found`", body = crate::api::openapi::Error),
        (status = 503, description = "`plugin_compiling`: try again once it has started", body = crate::api::openapi::Error),
        crate::api::openapi::EveryRoute
    )
)]
pub async fn resume(
    State(state): State<AppState>,
    Path(raw): Path<String>,
) -> Result<Response, ApiError> {
    let name = name(raw)?;
    state.deployments.resume(&name).await?;
    Ok(axum::Json(json!({ "resumed": name.as_str() })).into_response())
}

/// Passes over the event a failed plugin is stuck on (it is parked, not lost).
#[utoipa::path(
    post,
    path = "/plugins/{name}/skip",
    tag = "plugins",
    params(("name" = String, Path, pattern = "^[a-z0-9][a-z0-9_-]{0,63}$", example = "counter", description = "The plugin: 1-64 of a-z, 0-9, - and _, starting with a letter or digit")),
    responses(
        (status = 200, description = "`{\"skipped\": position}`", body = crate::api::openapi::CommandAnswer),
        (status = 400, description = "`invalid_plugin_name`", body = crate::api::openapi::Error),
        (status = 404, description = "`plugin_not_found`", body = crate::api::openapi::Error),
        (status = 503, description = "`plugin_compiling`: try again once it has started", body = crate::api::openapi::Error),
        (status = 409, description = "`conflict`: the plugin has not failed", body = crate::api::openapi::Error),
        crate::api::openapi::EveryRoute
    )
)]
pub async fn skip(
    State(state): State<AppState>,
    Path(raw): Path<String>,
) -> Result<Response, ApiError> {
    let name = name(raw)?;
    let position = state.deployments.skip(&name).await?;
    Ok(axum::Json(json!({ "skipped": position })).into_response())
}

/// The events skipped so far, with the errors that stopped them.
#[utoipa::path(
    get,
    path = "/plugins/{name}/parked",
    tag = "plugins",
    params(("name" = String, Path, pattern = "^[a-z0-9][a-z0-9_-]{0,63}$", example = "counter", description = "The plugin: 1-64 of a-z, 0-9, - and _, starting with a letter or digit")),
    responses(
        (status = 200, description = "The events skipped, with their errors", body = crate::api::openapi::Parked),
        (status = 400, description = "`invalid_plugin_name`", body = crate::api::openapi::Error),
        (status = 404, description = "`plugin_not_found`", body = crate::api::openapi::Error),
        (status = 503, description = "`plugin_compiling`: try again once it has started", body = crate::api::openapi::Error),
        crate::api::openapi::EveryRoute
    )
)]
pub async fn parked(
    State(state): State<AppState>,
    Path(raw): Path<String>,
) -> Result<Response, ApiError> {
    let name = name(raw)?;
    let parked: Vec<Value> = state
        .plugins
        .parked(&name)
        .await?
        .into_iter()
        .map(|(position, error)| json!({ "position": position, "error": error }))
        .collect();
    Ok(axum::Json(json!({ "parked": parked })).into_response())
}

/// The header that says which position of the log an answer from a
/// plugin's state reflects: every event up to it, none after.
pub const CHECKPOINT_HEADER: &str = "eventfold-checkpoint";

/// `response` with the checkpoint it reflects (`Eventfold-Checkpoint`).
fn at_checkpoint(checkpoint: u64, mut response: Response) -> Response {
    response
        .headers_mut()
        .insert(CHECKPOINT_HEADER, axum::http::HeaderValue::from(checkpoint));
    response
}

/// A value as JSON when it is JSON, else as a string.
fn value_json(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(bytes).into_owned()))
}

/// Answers stored bytes as they are, typed JSON when they parse.
fn raw_response(bytes: Vec<u8>) -> Response {
    let content_type = if serde_json::from_slice::<serde::de::IgnoredAny>(&bytes).is_ok() {
        "application/json"
    } else {
        "application/octet-stream"
    };
    ([(header::CONTENT_TYPE, content_type)], bytes).into_response()
}

/// `?min_position=P&wait=5s` on a read of a plugin's state: answer once
/// the state includes position P (the `last_position` of the client's
/// append), waiting at most `wait` (default 5 s, at most 20 s, within the request timeout).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AtQuery {
    min_position: Option<u64>,
    wait: Option<String>,
}

/// The longest a read waits for `min_position`.
const MAX_WAIT: Duration = Duration::from_secs(20);
/// How long a read waits for `min_position` without `wait`.
const DEFAULT_WAIT: Duration = Duration::from_secs(5);

/// Waits, if the read asked for a position, until the plugin's state is
/// there (see [`AtQuery`]); costs nothing otherwise.
async fn reach(
    state: &AppState,
    name: &PluginName,
    min_position: Option<u64>,
    wait: Option<&str>,
) -> Result<(), ApiError> {
    let wait = match wait {
        None => DEFAULT_WAIT,
        Some(text) => humantime::parse_duration(text).map_err(|e| {
            ApiError::bad_request(
                "invalid_query",
                format!("wait={text:?}: {e} (a duration such as 5s or 500ms)"),
            )
        })?,
    };
    let Some(min_position) = min_position else {
        return Ok(());
    };
    let head = state.log.head().0;
    if min_position > head && state.deployments.cluster().is_none() {
        // Alone, the head is exact: no append has been acknowledged past it.
        return Err(ApiError::bad_request(
            "invalid_query",
            format!(
                "min_position {min_position} is past the log's head, {head}: no append is there yet"
            ),
        ));
    }
    Ok(state
        .plugins
        .wait_for(name, min_position, wait.min(MAX_WAIT))
        .await?)
}

/// The serving state's value under `key`; 404 when absent.
#[utoipa::path(
    get,
    path = "/plugins/{name}/state/{key}",
    tag = "plugins",
    params(("name" = String, Path, pattern = "^[a-z0-9][a-z0-9_-]{0,63}$", example = "counter", description = "The plugin: 1-64 of a-z, 0-9, - and _, starting with a letter or digit"), ("key" = String, Path, description = "The key (may hold /)"), ("min_position" = Option<u64>, Query, description = "Answer once the state includes this position (an append's `last_position`)"), ("wait" = Option<String>, Query, description = "How long to wait for `min_position`, e.g. 500ms (default 5s, at most 20s)")),
    responses(
        (status = 200, description = "The value as stored: `application/json` when it parses, else `application/octet-stream`", content((serde_json::Value = "application/json"), (Vec<u8> = "application/octet-stream")), headers(("eventfold-checkpoint" = u64, description = "The position the answer reflects"))),
        (status = 400, description = "`invalid_plugin_name` or `invalid_query`", body = crate::api::openapi::Error),
        (status = 404, description = "`plugin_not_found` or `key_not_found` (with `checkpoint`)", body = crate::api::openapi::Error),
        (status = 409, description = "`min_position_not_reached`: the plugin is failed or paused", body = crate::api::openapi::Error),
        (status = 412, description = "`min_position_not_reached`: the wait ran out (`Retry-After`)", body = crate::api::openapi::Error),
        (status = 503, description = "`plugin_compiling`", body = crate::api::openapi::Error),
        crate::api::openapi::EveryRoute
    )
)]
pub async fn state_get(
    State(state): State<AppState>,
    Path((raw, key)): Path<(String, String)>,
    Query(at): Query<AtQuery>,
) -> Result<Response, ApiError> {
    let name = name(raw)?;
    reach(&state, &name, at.min_position, at.wait.as_deref()).await?;
    let (value, checkpoint) = state.plugins.state_get(&name, key.clone()).await?;
    match value {
        Some(bytes) => Ok(at_checkpoint(checkpoint, raw_response(bytes))),
        None => Err(ApiError::not_found(
            "key_not_found",
            format!("plugin {name} has no state under {key:?}"),
        )
        .with("checkpoint", checkpoint)),
    }
}

/// Query of a state scan.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScanQuery {
    /// Keys starting with this (default: all).
    #[serde(default)]
    prefix: String,
    /// Start after this key (the previous page's `next`).
    after: Option<String>,
    /// Most entries (default 100, at most 10,000).
    limit: Option<usize>,
    /// Answer once the state includes this position (see [`AtQuery`]).
    min_position: Option<u64>,
    /// How long to wait for `min_position`.
    wait: Option<String>,
}

/// Serving state entries by key prefix: `{"entries": [{"key", "value"}], "next"}`.
#[utoipa::path(
    get,
    path = "/plugins/{name}/state",
    tag = "plugins",
    params(("name" = String, Path, pattern = "^[a-z0-9][a-z0-9_-]{0,63}$", example = "counter", description = "The plugin: 1-64 of a-z, 0-9, - and _, starting with a letter or digit"), ("prefix" = Option<String>, Query, description = "Keys starting with this"), ("after" = Option<String>, Query, description = "Start after this key (the previous page's `next`)"), ("limit" = Option<u32>, Query, minimum = 1, description = "Most entries (default 100, at most 10,000)"), ("min_position" = Option<u64>, Query, description = "Answer once the state includes this position (an append's `last_position`)"), ("wait" = Option<String>, Query, description = "How long to wait for `min_position`, e.g. 500ms (default 5s, at most 20s)")),
    responses(
        (status = 200, description = "Entries in key order", body = crate::api::openapi::StatePage, headers(("eventfold-checkpoint" = u64, description = "The position the answer reflects"))),
        (status = 400, description = "`invalid_plugin_name` or `invalid_query`", body = crate::api::openapi::Error),
        (status = 404, description = "`plugin_not_found`", body = crate::api::openapi::Error),
        (status = 409, description = "`min_position_not_reached`: the plugin is failed or paused", body = crate::api::openapi::Error),
        (status = 412, description = "`min_position_not_reached`: the wait ran out (`Retry-After`)", body = crate::api::openapi::Error),
        (status = 503, description = "`plugin_compiling`", body = crate::api::openapi::Error),
        crate::api::openapi::EveryRoute
    )
)]
pub async fn state_scan(
    State(state): State<AppState>,
    Path(raw): Path<String>,
    Query(query): Query<ScanQuery>,
) -> Result<Response, ApiError> {
    let name = name(raw)?;
    let limit = super::page_limit(query.limit)?;
    reach(&state, &name, query.min_position, query.wait.as_deref()).await?;
    let (entries, checkpoint) = state
        .plugins
        .state_scan(&name, query.prefix, query.after, limit)
        .await?;
    let next = (entries.len() == limit)
        .then(|| entries.last().map(|(k, _)| k.clone()))
        .flatten();
    let entries: Vec<Value> = entries
        .iter()
        .map(|(key, value)| json!({ "key": key, "value": value_json(value) }))
        .collect();
    let body = axum::Json(json!({ "entries": entries, "next": next }));
    Ok(at_checkpoint(checkpoint, body.into_response()))
}

/// Runs the plugin's `query` export with the request body.
#[utoipa::path(
    post,
    path = "/plugins/{name}/query",
    tag = "plugins",
    params(("name" = String, Path, pattern = "^[a-z0-9][a-z0-9_-]{0,63}$", example = "counter", description = "The plugin: 1-64 of a-z, 0-9, - and _, starting with a letter or digit"), ("min_position" = Option<u64>, Query, description = "Answer once the state includes this position (an append's `last_position`)"), ("wait" = Option<String>, Query, description = "How long to wait for `min_position`, e.g. 500ms (default 5s, at most 20s)")),
    request_body(content = serde_json::Value, description = "Handed to the plugin's `query` export as it is"),
    responses(
        (status = 200, description = "The plugin's answer, as it wrote it: `application/json` when it parses, else `application/octet-stream`", content((serde_json::Value = "application/json"), (Vec<u8> = "application/octet-stream")), headers(("eventfold-checkpoint" = u64, description = "The position the answer reflects"))),
        (status = 400, description = "`invalid_plugin_name`, `invalid_query` or `query_rejected` (with `checkpoint`)", body = crate::api::openapi::Error),
        (status = 404, description = "`plugin_not_found`", body = crate::api::openapi::Error),
        (status = 409, description = "`min_position_not_reached`: the plugin is failed or paused", body = crate::api::openapi::Error),
        (status = 412, description = "`min_position_not_reached`: the wait ran out (`Retry-After`)", body = crate::api::openapi::Error),
        (status = 503, description = "`plugin_compiling`", body = crate::api::openapi::Error),
        crate::api::openapi::EveryRoute
    )
)]
pub async fn query(
    State(state): State<AppState>,
    Path(raw): Path<String>,
    Query(at): Query<AtQuery>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let name = name(raw)?;
    reach(&state, &name, at.min_position, at.wait.as_deref()).await?;
    match state.plugins.query(&name, body.to_vec()).await? {
        (Ok(answer), checkpoint) => Ok(at_checkpoint(checkpoint, raw_response(answer))),
        (Err(message), checkpoint) => {
            Err(ApiError::bad_request("query_rejected", message).with("checkpoint", checkpoint))
        }
    }
}
