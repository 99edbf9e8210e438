//! `ApiError`: the one shape every failure takes on the wire,
//! `{"error": {"code", "message", …}}` with the right status.

use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};

use crate::cluster::ClusterError;
use crate::log::LogError;
use crate::notify::NotifyError;
use crate::plugins::PluginError;
use crate::runtime::RuntimeError;

/// An error answered to a client.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    details: Map<String, Value>,
    /// Seconds after which a retry may succeed (`Retry-After`).
    retry_after: Option<u32>,
}

impl ApiError {
    /// An error with this status, machine-readable code and human message.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            details: Map::new(),
            retry_after: None,
        }
    }

    /// 400: the request is malformed.
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    /// 404: nothing here.
    pub fn not_found(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, code, message)
    }

    /// Adds a field beside `code` and `message`.
    pub fn with(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.details.insert(key.to_owned(), value.into());
        self
    }

    /// Tells the client to retry after `seconds` (a `Retry-After` header).
    pub fn retry_after(mut self, seconds: u32) -> Self {
        self.retry_after = Some(seconds);
        self
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        self.status
    }
}

impl ApiError {
    /// The status and the JSON body, `{"error": {"code", "message", …}}`;
    /// a server error is logged on the way out.
    pub fn into_body(self) -> (StatusCode, Value) {
        // 503 (compiling, shutting down, overloaded) is expected and passes,
        // and a full disk (507) was logged once when the log stopped.
        if self.status == StatusCode::SERVICE_UNAVAILABLE
            || self.status == StatusCode::INSUFFICIENT_STORAGE
        {
            tracing::debug!(code = self.code, "{}", self.message);
        } else if self.status.is_server_error() {
            tracing::error!(code = self.code, "{}", self.message);
        }
        let mut error = Map::new();
        error.insert("code".into(), self.code.into());
        error.insert("message".into(), self.message.into());
        error.extend(self.details);
        (self.status, json!({ "error": error }))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let retry_after = self.retry_after;
        let (status, body) = self.into_body();
        let mut response = (status, axum::Json(body)).into_response();
        if let Some(seconds) = retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from(seconds));
        }
        if status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                "Bearer".parse().expect("static header"),
            );
        }
        response
    }
}

impl From<LogError> for ApiError {
    fn from(error: LogError) -> Self {
        let message = error.to_string();
        match error {
            LogError::InvalidName { .. } => ApiError::bad_request("invalid_name", message),
            LogError::DuplicateId(id) => {
                ApiError::bad_request("duplicate_event_id", message).with("id", id.to_string())
            }
            LogError::ReservedId(id) => {
                ApiError::bad_request("reserved_event_id", message).with("id", id.to_string())
            }
            LogError::WrongExpectedVersion {
                stream,
                expected,
                actual,
                ..
            } => ApiError::new(StatusCode::CONFLICT, "wrong_expected_version", message)
                .with("stream", stream)
                .with("expected_version", expected.to_string())
                .with("actual_version", actual.map_or(Value::Null, Value::from)),
            LogError::IdempotencyConflict { id } => {
                ApiError::new(StatusCode::CONFLICT, "idempotency_conflict", message)
                    .with("id", id.to_string())
            }
            LogError::NoEvents(_) => ApiError::bad_request("no_events", message),
            LogError::TooManyEvents { limit, .. } => {
                ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "too_many_events", message)
                    .with("limit", limit)
            }
            LogError::StorageFull(_) => ApiError::new(
                StatusCode::INSUFFICIENT_STORAGE,
                "insufficient_storage",
                message,
            ),
            LogError::Unavailable(_) => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "log_unavailable", message)
                    .retry_after(1)
            }
            LogError::Overloaded { .. } => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "overloaded", message).retry_after(1)
            }
            LogError::ShuttingDown => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "shutting_down", message)
            }
            LogError::CommitFailed(_)
            | LogError::Corrupt(_)
            | LogError::UnsupportedFormat(_)
            | LogError::Io(_)
            | LogError::Internal(_)
            | LogError::Storage(_) => {
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
            }
        }
    }
}

impl From<ClusterError> for ApiError {
    fn from(error: ClusterError) -> Self {
        match error {
            ClusterError::Plugin(error) => error.into(),
            ClusterError::Unavailable(_) => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "cluster_unavailable",
                error.to_string(),
            )
            .retry_after(1),
            ClusterError::Internal(_) => ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                error.to_string(),
            ),
        }
    }
}

/// A read whose `min_position` the plugin has not reached: 412 (its
/// precondition does not hold yet) with `Retry-After` when the wait ran
/// out, 409 when the plugin is failed or paused (asking again will not help
/// until it runs).
fn behind_error(behind: crate::plugins::Behind, message: String) -> ApiError {
    let status = match behind.timed_out {
        true => StatusCode::PRECONDITION_FAILED,
        false => StatusCode::CONFLICT,
    };
    let error = ApiError::new(status, "min_position_not_reached", message)
        .with("checkpoint", behind.checkpoint)
        .with("min_position", behind.min_position)
        .with(
            "state",
            serde_json::to_value(behind.state).unwrap_or_default(),
        );
    match behind.timed_out {
        true => error.retry_after(1),
        false => error,
    }
}

impl From<PluginError> for ApiError {
    fn from(error: PluginError) -> Self {
        let message = error.to_string();
        match error {
            PluginError::InvalidName(_) => ApiError::bad_request("invalid_plugin_name", message),
            PluginError::NotFound(_) => ApiError::not_found("plugin_not_found", message),
            PluginError::Compiling(_) => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "plugin_compiling", message)
            }
            PluginError::Load(
                RuntimeError::Invalid(_) | RuntimeError::WrongWorld(_) | RuntimeError::Describe(_),
            ) => ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_plugin", message),
            PluginError::Conflict(_) => ApiError::new(StatusCode::CONFLICT, "conflict", message),
            PluginError::Call(_) => {
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "plugin_failed", message)
            }
            PluginError::ShuttingDown => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "shutting_down", message)
            }
            PluginError::Log(error) => error.into(),
            PluginError::Behind(behind) => behind_error(behind, message),
            PluginError::Notify(NotifyError::InvalidWebhook(_)) => {
                ApiError::bad_request("invalid_webhook", message)
            }
            PluginError::Load(RuntimeError::Cache(_) | RuntimeError::Setup(_))
            | PluginError::Io(_)
            | PluginError::Internal(_)
            | PluginError::Storage(_)
            | PluginError::Notify(
                NotifyError::Corrupt(_) | NotifyError::Storage(_) | NotifyError::Internal(_),
            ) => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message),
            PluginError::Notify(NotifyError::Reopening) => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "mailbox_unavailable",
                message,
            )
            .retry_after(1),
        }
    }
}

impl From<BytesRejection> for ApiError {
    fn from(rejection: BytesRejection) -> Self {
        let status = rejection.status();
        let code = if status == StatusCode::PAYLOAD_TOO_LARGE {
            "body_too_large"
        } else {
            "invalid_body"
        };
        ApiError::new(status, code, rejection.body_text())
    }
}

impl From<QueryRejection> for ApiError {
    fn from(rejection: QueryRejection) -> Self {
        ApiError::bad_request("invalid_query", rejection.body_text())
    }
}

impl From<PathRejection> for ApiError {
    fn from(rejection: PathRejection) -> Self {
        ApiError::bad_request("invalid_path", rejection.body_text())
    }
}
