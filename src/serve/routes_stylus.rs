//! Stylus' own endpoints: `POST /v1/select` (the plan `stylus select --json` prints),
//! `POST /v1/retrieve` (the ranking `stylus retrieve --json` prints), `GET /metrics`,
//! `GET /openapi.json`; and, without the API key, `GET /healthz` and `GET /readyz`.

use std::sync::atomic::Ordering;
use std::time::Instant;

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::extract::rejection::JsonRejection;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::{Value, json};
use stylus_core::SelectOptions;

use super::AppState;
use super::error::{ApiError, ApiResult};
use super::routes_a1111::record_selection;

/// Routes behind the API key.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/select", post(select))
        .route("/v1/retrieve", post(retrieve))
        .route("/metrics", get(metrics))
        .route("/openapi.json", get(openapi))
}

/// Probes a load balancer sends without credentials.
pub fn open_routes() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
}

/// `POST /v1/select`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SelectRequest {
    pub prompt: String,
    /// Sample this many masks (one per image, as `generate` does); absent: every mask.
    #[serde(default)]
    pub batch: Option<usize>,
    /// Seed of the mask sampling.
    #[serde(default)]
    pub seed: u64,
}

/// `POST /v1/retrieve`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetrieveRequest {
    pub prompt: String,
    /// Candidates returned (default: the config's top-K).
    #[serde(default)]
    pub top_k: Option<usize>,
}

/// The cleaned prompt, refused when empty or over the limit.
fn checked_prompt(state: &AppState, prompt: &str) -> ApiResult<String> {
    let max = state.options.limits.max_prompt_chars;
    let chars = prompt.chars().count();
    if chars > max {
        return Err(ApiError::bad_request(format!(
            "prompt: {chars} characters; at most {max} are accepted"
        )));
    }
    let prompt = stylus_core::text::clean_prompt(prompt);
    if prompt.trim().is_empty() {
        return Err(ApiError::bad_request("prompt: empty"));
    }
    Ok(prompt)
}

async fn select(
    State(state): State<AppState>,
    body: Result<Json<SelectRequest>, JsonRejection>,
) -> ApiResult<Json<Value>> {
    let Json(request) = body?;
    let prompt = checked_prompt(&state, &request.prompt)?;
    if let Some(batch) = request.batch {
        let max = state.options.limits.max_images;
        if !(1..=max).contains(&batch) {
            return Err(ApiError::bad_request(format!(
                "batch {batch}: must be in 1..={max}"
            )));
        }
    }
    let plan = state
        .stylus
        .select_with(
            &prompt,
            SelectOptions {
                batch: request.batch,
                seed: request.seed,
            },
        )
        .await?;
    record_selection(&state, &plan.timings_ms);
    let mut value = serde_json::to_value(&plan)
        .map_err(|e| ApiError::from(stylus_core::StylusError::InvalidArgument(e.to_string())))?;
    // As `stylus select --json` prints it: the catalog's open time with the stage times.
    value["timings_ms"]["open"] = json!(state.stylus.open_ms());
    Ok(Json(value))
}

async fn retrieve(
    State(state): State<AppState>,
    body: Result<Json<RetrieveRequest>, JsonRejection>,
) -> ApiResult<Json<Value>> {
    let Json(request) = body?;
    let prompt = checked_prompt(&state, &request.prompt)?;
    let max = state.options.limits.max_top_k;
    if let Some(k) = request.top_k
        && !(1..=max).contains(&k)
    {
        return Err(ApiError::bad_request(format!(
            "top_k {k}: must be in 1..={max}"
        )));
    }
    let started = Instant::now();
    let mut candidates = state.stylus.retrieve(&prompt).await?;
    let seconds = started.elapsed().as_secs_f64();
    state.metrics.stage("retrieve", seconds);
    if let Some(k) = request.top_k {
        candidates.truncate(k);
    }
    let results: Vec<Value> = candidates
        .iter()
        .map(|c| {
            json!({
                "id": c.doc.id(),
                "score": c.score,
                "title": c.doc.card.title,
                "alias": c.doc.card.a1111_alias(),
            })
        })
        .collect();
    Ok(Json(json!({
        "query": prompt,
        "results": results,
        "timings_ms": { "retrieve": seconds * 1e3 },
    })))
}

async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(&state),
    )
}

async fn openapi() -> Json<Value> {
    Json(super::openapi::document())
}

async fn healthz() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

/// Ready while not shutting down; says whether it renders (a checkpoint is loaded).
async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    let draining = state.draining.load(Ordering::SeqCst);
    let status = if draining {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    (
        status,
        Json(json!({
            "ready": !draining,
            "renders": state.model.is_some(),
            "queue_depth": state.queue.waiting(),
        })),
    )
}
