//! `GET /health` (liveness) and `GET /metrics` (Prometheus text).

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use serde_json::json;

use super::AppState;

/// 200 with the head position once the server accepts requests.
pub async fn health(State(state): State<AppState>) -> impl IntoResponse {
    axum::Json(json!({ "status": "ok", "head": state.log.head().0 }))
}

/// The metrics in Prometheus' text format.
pub async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.render(),
    )
}
