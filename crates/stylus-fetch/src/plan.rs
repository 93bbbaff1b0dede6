//! From a selection plan (or ids and URLs) to fetch requests, and [`fetch_missing`], the call
//! `generate --fetch` makes for the adapters the LoRA folder does not have.

use std::path::PathBuf;

use serde_json::Value;
use stylus_core::{AdapterId, WeightedAdapter};

use crate::{FetchError, FetchRequest, Fetched, Fetcher};

/// The Civitai download endpoint of a model version.
pub const CIVITAI_DOWNLOAD: &str = "https://civitai.com/api/download/models/";

/// The distinct adapters of plans as `stylus select --json` writes them (one JSON object per
/// line, or one object, or an array of them): every topic's adapters, first occurrence first.
pub fn plan_adapters(text: &str) -> Result<Vec<WeightedAdapter>, FetchError> {
    let bad = |message: String| FetchError::InvalidArgument(format!("plan: {message}"));
    let mut plans = Vec::new();
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Array(items)) => plans.extend(items),
        Ok(value) => plans.push(value),
        Err(_) => {
            for (n, line) in text.lines().enumerate() {
                if line.trim().is_empty() {
                    continue;
                }
                let value = serde_json::from_str::<Value>(line)
                    .map_err(|e| bad(format!("line {}: {e}", n + 1)))?;
                plans.push(value);
            }
        }
    }
    let mut out: Vec<WeightedAdapter> = Vec::new();
    for plan in &plans {
        let topics = plan
            .get("topics")
            .and_then(Value::as_array)
            .ok_or_else(
                || bad("no `topics` array (write it with `stylus select --json`)".into()),
            )?;
        for topic in topics {
            let adapters = topic.get("adapters").and_then(Value::as_array);
            for adapter in adapters.into_iter().flatten() {
                let adapter: WeightedAdapter = serde_json::from_value(adapter.clone())
                    .map_err(|e| bad(format!("an adapter does not parse: {e}")))?;
                if !out.iter().any(|a| a.id == adapter.id) {
                    out.push(adapter);
                }
            }
        }
    }
    Ok(out)
}

/// A request from a command-line spec: an `http(s)://` URL, or `civitai:<version id>` (a bare
/// number is a version id too), which is Civitai's download endpoint of that model version.
pub fn parse_spec(spec: &str) -> Result<FetchRequest, FetchError> {
    let spec = spec.trim();
    if spec.starts_with("http://") || spec.starts_with("https://") {
        return Ok(FetchRequest::url(spec));
    }
    let number = spec.strip_prefix("civitai:").unwrap_or(spec);
    match number.parse::<u64>() {
        Ok(version) => {
            let mut request = FetchRequest::url(format!("{CIVITAI_DOWNLOAD}{version}"));
            request.label = format!("civitai version {version}");
            Ok(request)
        }
        Err(_) => Err(FetchError::InvalidArgument(format!(
            "`{spec}`: expected an http(s) URL or civitai:<model version id>"
        ))),
    }
}

/// Fetches the adapters that `is_local` does not find (a user's LoRA folder is checked there and
/// never written to): from the cache when they are there, else from the network, at most the
/// fetcher's concurrency at once. Returns each fetched adapter's id and file, pinned: keep the
/// [`Fetched`] values alive until the render is done, so eviction cannot remove them. Every
/// failure is reported, each naming its adapter ([`FetchError::Several`] when more than one).
pub async fn fetch_missing(
    adapters: &[WeightedAdapter],
    fetcher: &Fetcher,
    is_local: impl Fn(&WeightedAdapter) -> bool,
) -> Result<Vec<(AdapterId, Fetched)>, FetchError> {
    let mut wanted = Vec::new();
    let mut errors = Vec::new();
    for adapter in adapters {
        if is_local(adapter) || wanted.iter().any(|(id, _)| *id == adapter.id) {
            continue;
        }
        match FetchRequest::from_adapter(adapter) {
            Ok(request) => wanted.push((adapter.id.clone(), request)),
            Err(error) => errors.push(error),
        }
    }
    let requests: Vec<FetchRequest> = wanted.iter().map(|(_, r)| r.clone()).collect();
    let results = fetcher.fetch_all(&requests).await;
    let mut out = Vec::new();
    for ((id, _), result) in wanted.into_iter().zip(results) {
        match result {
            Ok(fetched) => out.push((id, fetched)),
            Err(error) => errors.push(error),
        }
    }
    match errors.len() {
        0 => Ok(out),
        1 => Err(errors.remove(0)),
        _ => Err(FetchError::Several { errors }),
    }
}

/// The paths of [`fetch_missing`]'s answer (for callers that hold the pins elsewhere).
pub fn paths(fetched: &[(AdapterId, Fetched)]) -> Vec<PathBuf> {
    fetched.iter().map(|(_, f)| f.path.clone()).collect()
}
