//! `GET /cluster`: the nodes sharing this log, the plugins each holds with
//! checkpoint and lag, who delivers each notifier, and the log's stream
//! with its replicas and leader. A node alone (the embedded log) answers
//! that it is one.

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::AppState;
use super::error::ApiError;

/// The cluster as this node sees it.
#[utoipa::path(
    get,
    path = "/cluster",
    tag = "server",
    responses(
        (status = 200, description = "The nodes, their plugins, the leases, the records and the log's stream (docs/api.md#the-cluster)", body = Object),
        crate::api::openapi::EveryRoute
    )
)]
pub async fn view(State(state): State<AppState>) -> Result<Response, ApiError> {
    match state.deployments.cluster() {
        Some(cluster) => Ok(axum::Json(cluster.view().await).into_response()),
        None => Ok(axum::Json(json!({
            "node": null,
            "nodes": [],
            "clustered": false,
            "message": "this server is alone on its embedded log: a cluster needs --log jetstream",
        }))
        .into_response()),
    }
}
