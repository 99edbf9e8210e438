//! The OpenAPI 3.1 document of the API, generated with utoipa from the
//! `#[utoipa::path]` attribute of every handler and from the wire shapes
//! below. It is served at `GET /openapi.json` and committed as
//! `docs/openapi.json` (a test fails when the two differ); `scripts/test`
//! runs schemathesis against a live server with it, so a response that does
//! not match it is a failing test.
//!
//! Where a handler serialises a type of its own (a plugin's status, the
//! webhook settings it takes), the schema is derived on that type. The
//! shapes declared here are those the handlers assemble with `json!` or
//! splice together from stored payloads (`render.rs`), which no type
//! describes.

#![allow(dead_code)]

use serde::Serialize;
use serde_json::Value;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};

/// The document, for `GET /openapi.json` and `docs/openapi.json`.
pub fn document() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}

/// `GET /openapi.json`.
pub async fn serve() -> axum::Json<utoipa::openapi::OpenApi> {
    axum::Json(document())
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "eventfold",
        description = "An append-only event log that runs WebAssembly plugins against it. \
                       Every failure answers `{\"error\": {\"code\", \"message\", …}}` (see `Error`).",
        license(name = "Apache-2.0")
    ),
    paths(
        super::streams::append,
        super::streams::read,
        super::batch::append_batch,
        super::events::read,
        super::events::live,
        super::appends::upgrade,
        super::plugins::list,
        super::plugins::deploy,
        super::plugins::status,
        super::plugins::remove,
        super::plugins::replay,
        super::plugins::pause,
        super::plugins::resume,
        super::plugins::skip,
        super::plugins::parked,
        super::plugins::state_scan,
        super::plugins::state_get,
        super::plugins::query,
        super::notifications::put_webhook,
        super::notifications::get_webhook,
        super::notifications::delete_webhook,
        super::notifications::list,
        super::notifications::dead_letters,
        super::notifications::retry_dead_letter,
        super::notifications::live,
        super::plugins_live::live,
        super::cluster::view,
        super::health::health,
        super::health::metrics,
        openapi_json,
    ),
    modifiers(&BearerToken),
    tags(
        (name = "log", description = "Appending and reading events"),
        (name = "plugins", description = "Deploying, running and reading plugins"),
        (name = "notifiers", description = "Notifier webhooks, notifications and dead letters"),
        (name = "server", description = "Health, metrics, the cluster and this document"),
    )
)]
struct ApiDoc;

/// `--token`: every request carries `Authorization: Bearer <token>`.
struct BearerToken;

impl Modify for BearerToken {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "token",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
        openapi.security = Some(vec![
            utoipa::openapi::security::SecurityRequirement::new("token", Vec::<String>::new()),
            utoipa::openapi::security::SecurityRequirement::default(),
        ]);
    }
}

/// This document.
#[utoipa::path(get, path = "/openapi.json", tag = "server",
    responses((status = 200, description = "The OpenAPI document", content_type = "application/json", body = Object)))]
fn openapi_json() {}

/// The failures any route may answer.
#[derive(utoipa::IntoResponses)]
pub enum EveryRoute {
    /// A token is required and missing or wrong.
    #[response(
        status = 401,
        description = "`unauthorized`: a token is required and missing or wrong"
    )]
    Unauthorized(Error),
    /// The request ran too long.
    #[response(
        status = 408,
        description = "`timeout`: the request took longer than the request timeout"
    )]
    Timeout(Error),
    /// Storage or I/O failed.
    #[response(status = 500, description = "`internal`: storage or I/O failed")]
    Internal(Error),
}

/// Every failure: a machine-readable `code` and a message for people, and
/// for some codes more fields beside them.
#[derive(Serialize, ToSchema)]
pub struct Error {
    pub error: ErrorDetail,
}

/// What went wrong.
#[derive(Serialize, ToSchema)]
pub struct ErrorDetail {
    pub code: ErrorCode,
    pub message: String,
    /// The append of a `POST /batch` (or append-socket message) that failed.
    pub append_index: Option<u64>,
    /// The event within its append.
    pub event_index: Option<u64>,
    /// The stream of a version conflict.
    pub stream: Option<String>,
    /// The expected version of a conflict, as sent.
    pub expected_version: Option<String>,
    /// The stream's version in a conflict (`null`: no stream).
    pub actual_version: Option<u64>,
    /// The event id of an id error.
    pub id: Option<String>,
    /// The plugin's checkpoint (reads with `min_position`, `key_not_found`,
    /// `query_rejected`).
    pub checkpoint: Option<u64>,
    /// The position a read asked for.
    pub min_position: Option<u64>,
    /// The plugin's state when a read with `min_position` gave up.
    pub state: Option<String>,
    /// The limit a request went over.
    pub limit: Option<u64>,
}

/// Every error code (docs/api.md#errors says when each is answered).
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    InvalidBody,
    InvalidQuery,
    InvalidPath,
    InvalidName,
    InvalidExpectedVersion,
    InvalidMetadata,
    NoEvents,
    NoAppends,
    DuplicateEventId,
    ReservedEventId,
    InvalidLastEventId,
    InvalidPluginName,
    EmptyBody,
    InvalidWebhook,
    QueryRejected,
    WebsocketRequired,
    Unauthorized,
    StreamNotFound,
    PluginNotFound,
    KeyNotFound,
    DeadLetterNotFound,
    NoRoute,
    MethodNotAllowed,
    Timeout,
    WrongExpectedVersion,
    IdempotencyConflict,
    Conflict,
    MinPositionNotReached,
    EventTooLarge,
    BodyTooLarge,
    TooManyEvents,
    UnsupportedMediaType,
    InvalidPlugin,
    Internal,
    PluginFailed,
    InsufficientStorage,
    PluginCompiling,
    ShuttingDown,
    Overloaded,
    LogUnavailable,
    MailboxUnavailable,
    ClusterUnavailable,
    TooManyLiveFeeds,
    TooManyAppendSockets,
}

/// An event to append.
#[derive(Serialize, ToSchema)]
pub struct NewEvent {
    /// The event's type: 1-256 bytes of printable text.
    #[serde(rename = "type")]
    pub event_type: String,
    /// Any JSON, kept as sent.
    pub data: Value,
    /// A JSON object, kept as sent (default `{}`).
    pub metadata: Option<Value>,
    /// The event's id (a UUID); a retry with the same ids is recognised.
    pub id: Option<uuid::Uuid>,
}

/// The check made before an append: `"any"` (the default), `"no_stream"`,
/// `"exists"`, or the stream's current version (0-based).
#[derive(Serialize, ToSchema)]
#[serde(untagged)]
pub enum ExpectedVersion {
    Named(ExpectedName),
    Version(u64),
}

/// The named expectations.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ExpectedName {
    Any,
    NoStream,
    Exists,
}

/// The body of `POST /streams/{stream}`.
#[derive(Serialize, ToSchema)]
pub struct AppendRequest {
    pub expected_version: Option<ExpectedVersion>,
    /// At least one.
    pub events: Vec<NewEvent>,
}

/// One append of a batch.
#[derive(Serialize, ToSchema)]
pub struct BatchAppend {
    pub stream: String,
    pub expected_version: Option<ExpectedVersion>,
    pub events: Vec<NewEvent>,
}

/// The body of `POST /batch`: applied all together or not at all.
#[derive(Serialize, ToSchema)]
pub struct BatchRequest {
    pub appends: Vec<BatchAppend>,
}

/// Where an append landed.
#[derive(Serialize, ToSchema)]
pub struct AppendOutcome {
    pub first_position: u64,
    /// Pass it as `min_position` to read your own write from a plugin.
    pub last_position: u64,
    /// The stream's version after the append.
    pub next_expected_version: u64,
    /// Present and true when every event was there already (a retry).
    pub duplicate: Option<bool>,
}

/// Where each append of a batch landed, in order.
#[derive(Serialize, ToSchema)]
pub struct BatchOutcome {
    pub results: Vec<BatchResult>,
}

/// One append of a batch.
#[derive(Serialize, ToSchema)]
pub struct BatchResult {
    pub stream: String,
    pub first_position: u64,
    pub last_position: u64,
    pub next_expected_version: u64,
    pub duplicate: Option<bool>,
}

/// An event as the log holds it.
#[derive(Serialize, ToSchema)]
pub struct Event {
    pub position: u64,
    pub stream: String,
    pub version: u64,
    #[serde(rename = "type")]
    pub event_type: String,
    pub id: uuid::Uuid,
    pub data: Value,
    pub metadata: Value,
    /// RFC 3339, µs.
    pub recorded_at: String,
}

/// A page of one stream.
#[derive(Serialize, ToSchema)]
pub struct StreamPage {
    pub events: Vec<Event>,
    pub stream: String,
    /// The stream's current version.
    pub stream_version: u64,
    /// The version to read from next (`null`: no more).
    pub next: Option<u64>,
}

/// A page of the global log.
#[derive(Serialize, ToSchema)]
pub struct LogPage {
    pub events: Vec<Event>,
    /// The position to read from next.
    pub next: u64,
    /// The log's head.
    pub head: u64,
}

/// `GET /plugins`.
#[derive(Serialize, ToSchema)]
pub struct PluginList {
    pub plugins: Vec<crate::plugins::PluginStatus>,
}

/// A plugin's status as `GET /plugins/{name}` answers it: the status the
/// runner publishes, and what the route adds.
#[derive(Serialize, ToSchema)]
pub struct PluginAnswer {
    #[serde(flatten)]
    pub status: crate::plugins::PluginStatus,
    /// On a cluster, a notifier's lease: `{"node", "since_ms"}`.
    pub delivery: Option<Object>,
    /// After a deploy: `created`, `rebuilding`, `unchanged` or `recorded`.
    pub deploy: Option<String>,
    /// After a replay or a deploy of new code: `{"generation"}`.
    pub replay: Option<Value>,
}

/// A JSON object.
#[derive(Serialize, ToSchema)]
#[schema(value_type = Object)]
pub struct Object(serde_json::Map<String, Value>);

/// What an operator's command answers (`{"paused": name}`, …).
#[derive(Serialize, ToSchema)]
pub struct CommandAnswer(serde_json::Map<String, Value>);

/// `GET /plugins/{name}/state`.
#[derive(Serialize, ToSchema)]
pub struct StatePage {
    pub entries: Vec<StateEntry>,
    /// Pass as `after` for the next page (`null` on the last).
    pub next: Option<String>,
}

/// One entry of a plugin's state.
#[derive(Serialize, ToSchema)]
pub struct StateEntry {
    pub key: String,
    /// The stored JSON, or a string when it is not JSON.
    pub value: Value,
}

/// `GET /plugins/{name}/parked`.
#[derive(Serialize, ToSchema)]
pub struct Parked {
    pub parked: Vec<ParkedEvent>,
}

/// An event an operator skipped.
#[derive(Serialize, ToSchema)]
pub struct ParkedEvent {
    pub position: u64,
    pub error: String,
}

/// `{"webhook": settings without the secret, or null}`.
#[derive(Serialize, ToSchema)]
pub struct WebhookAnswer {
    pub webhook: Option<Object>,
}

/// A notification.
#[derive(Serialize, ToSchema)]
pub struct Notification {
    pub id: String,
    pub plugin: String,
    pub sequence: u64,
    pub channel: String,
    pub key: String,
    pub timestamp: String,
    pub data: Value,
}

/// `GET /plugins/{name}/notifications`.
#[derive(Serialize, ToSchema)]
pub struct NotificationPage {
    pub notifications: Vec<Notification>,
    pub next: u64,
}

/// A dead letter.
#[derive(Serialize, ToSchema)]
pub struct DeadLetter {
    pub id: u64,
    pub notification: Notification,
    pub attempts: u32,
    pub error: String,
    pub at: String,
    pub retrying: bool,
}

/// `GET /plugins/{name}/dead-letters`.
#[derive(Serialize, ToSchema)]
pub struct DeadLetterPage {
    pub dead_letters: Vec<DeadLetter>,
    pub next: u64,
}

/// `GET /health`.
#[derive(Serialize, ToSchema)]
pub struct Health {
    /// `ok`, or `degraded` while the log refuses appends.
    pub status: String,
    pub head: u64,
    pub log: Option<Object>,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `docs/openapi.json` is this document: regenerate it with
    /// `EVENTFOLD_WRITE_OPENAPI=1 cargo test -p eventfold --lib openapi`.
    #[test]
    fn the_committed_document_is_the_generated_one() {
        let generated = document().to_pretty_json().expect("the document as JSON") + "\n";
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/openapi.json");
        if std::env::var_os("EVENTFOLD_WRITE_OPENAPI").is_some() {
            std::fs::write(path, &generated).expect("writing docs/openapi.json");
        }
        let committed = std::fs::read_to_string(path).unwrap_or_default();
        assert!(
            committed == generated,
            "docs/openapi.json differs from the generated document: \
             run EVENTFOLD_WRITE_OPENAPI=1 cargo test -p eventfold --lib openapi"
        );
    }

    /// Every route the router serves is in the document, with its methods.
    #[test]
    fn every_route_is_documented() {
        let document = document();
        let router = include_str!("mod.rs");
        for line in router.lines().map(str::trim) {
            let Some(rest) = line.strip_prefix(".route(\"") else {
                continue;
            };
            let Some(path) = rest.split('"').next() else {
                continue;
            };
            if path.starts_with("/ui") {
                continue;
            }
            let path = path.replace("{*key}", "{key}");
            assert!(
                document.paths.paths.contains_key(&path),
                "route {path} is not in the OpenAPI document"
            );
        }
    }
}
