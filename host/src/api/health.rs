//! `GET /health` (liveness) and `GET /metrics` (Prometheus text).

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use serde_json::json;

use std::fmt::Write as _;

use super::AppState;
use crate::notify::MailboxStats;

/// 200 with the head position once the server accepts requests; 503 with
/// `"status": "degraded"` and the reason while the log refuses appends (its
/// storage failed, e.g. a full disk) until it reopens by itself.
#[utoipa::path(
    get,
    path = "/health",
    tag = "server",
    responses(
        (status = 200, description = "Serving", body = crate::api::openapi::Health),
        (status = 503, description = "`degraded`: the log refuses appends until its storage is back", body = crate::api::openapi::Health),
        crate::api::openapi::EveryRoute
    )
)]
pub async fn health(State(state): State<AppState>) -> impl IntoResponse {
    let head = state.log.head().0;
    match state.log.storage_failure() {
        None => (
            StatusCode::OK,
            axum::Json(json!({ "status": "ok", "head": head })),
        ),
        Some(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(json!({
                "status": "degraded",
                "head": head,
                "log": {"status": "degraded", "reason": reason},
            })),
        ),
    }
}

/// The metrics in Prometheus' text format.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "server",
    responses(
        (status = 200, description = "OpenMetrics text", content_type = "application/openmetrics-text", body = String),
        crate::api::openapi::EveryRoute
    )
)]
pub async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state
            .metrics
            .render(&notifier_metrics(&notifiers(&state).await)),
    )
}

/// Every notifier's mailbox figures, by name. A status that cannot be read
/// leaves the notifier figures out of this scrape (and is logged).
async fn notifiers(state: &AppState) -> Vec<(String, MailboxStats)> {
    match state.plugins.list().await {
        Ok(plugins) => plugins
            .into_iter()
            .filter_map(|p| p.notifications.map(|n| (p.name, n.stats)))
            .collect(),
        Err(error) => {
            tracing::error!(%error, "cannot read the plugins' statuses for the metrics");
            Vec::new()
        }
    }
}

/// Per-notifier delivery figures, as OpenMetrics families labelled by plugin.
fn notifier_metrics(notifiers: &[(String, MailboxStats)]) -> String {
    type Figure = (
        &'static str,
        &'static str,
        &'static str,
        fn(&MailboxStats) -> f64,
    );
    const FIGURES: [Figure; 6] = [
        (
            "notifications_pending",
            "gauge",
            "Notifications not yet delivered to the webhook",
            |s| s.pending as f64,
        ),
        (
            "notifications_delivered",
            "counter",
            "Notifications delivered to the webhook",
            |s| s.delivered as f64,
        ),
        (
            "notification_attempts_failed",
            "counter",
            "Webhook delivery attempts that failed",
            |s| s.failed_attempts as f64,
        ),
        (
            "notifications_dead_lettered",
            "counter",
            "Notifications that ended as dead letters",
            |s| s.dead_lettered as f64,
        ),
        (
            "notification_dead_letters",
            "gauge",
            "Dead letters held now (until retried and delivered)",
            |s| s.dead_letters as f64,
        ),
        (
            "notification_oldest_pending_age_seconds",
            "gauge",
            "Age of the oldest undelivered notification",
            |s| s.oldest_pending_age_secs.unwrap_or(0.0),
        ),
    ];
    let mut out = String::new();
    if notifiers.is_empty() {
        return out;
    }
    for (name, kind, help, value) in FIGURES {
        let _ = writeln!(out, "# HELP eventfold_{name} {help}.");
        let _ = writeln!(out, "# TYPE eventfold_{name} {kind}");
        let suffix = if kind == "counter" { "_total" } else { "" };
        for (plugin, stats) in notifiers {
            let _ = writeln!(
                out,
                "eventfold_{name}{suffix}{{plugin=\"{plugin}\"}} {}",
                value(stats)
            );
        }
    }
    out
}
