//! `GET /healthz` and `GET /metrics` of the store agent, on the POS listener (loopback by
//! default) and without the POS token, so a monitoring agent on the till PC can read them.
//!
//! Healthy means the database takes a write: a store without HQ is still healthy (it sells
//! offline), and `link` says how long it has been on its own.

use super::{PosError, PosResult, PosState};
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use chainsync::transport::metrics::{Figures, METRICS_CONTENT_TYPE, NodeRole};
use serde_json::json;

/// `GET /healthz`: 200 when the database takes a write, 503 otherwise; the link's state and
/// the outbox either way.
pub(super) async fn healthz(State(state): State<PosState>) -> PosResult {
    let writable = state.replica.check_writable().await;
    let link = state.link.borrow().clone();
    let figures = state
        .read(|r| Ok(Figures::read(r, NodeRole::Store, None)?))
        .await
        .ok();
    let (code, verdict) = chainsync::transport::metrics::health_verdict(&writable);
    let status = StatusCode::from_u16(code).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
    let body = json!({
        "status": verdict,
        "store": state.store.as_str(),
        "version": env!("CARGO_PKG_VERSION"),
        "database_writable": writable.is_ok(),
        "database_error": writable.err(),
        "link": {
            "connected": link.connected,
            "last_exchange_ms": link.last_exchange_ms,
            "last_error": link.last_error,
        },
        "outbox_change_sets": figures.as_ref().map(|f| f.outbox.iter().map(|(_, n)| n).sum::<u64>()),
        "halted_streams": figures.as_ref().map(|f| f.halted_streams),
        "seeding": figures.as_ref().is_some_and(|f| f.seeding_parts > 0),
    });
    Ok((status, Json(body)).into_response())
}

/// `GET /metrics`: Prometheus text.
pub(super) async fn metrics(State(state): State<PosState>) -> PosResult {
    let last_exchange_ms = state.link.borrow().last_exchange_ms;
    let figures = state
        .read(move |r| Ok(Figures::read(r, NodeRole::Store, last_exchange_ms)?))
        .await
        .map_err(|e| {
            PosError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("reading the replica: {}", e.message),
            )
        })?;
    let text = state.metrics.encode(&figures);
    Ok((
        [(axum::http::header::CONTENT_TYPE, METRICS_CONTENT_TYPE)],
        text,
    )
        .into_response())
}
