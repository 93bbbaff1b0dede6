//! `GET`/`POST /sdapi/v1/options`: the settings A1111 clients read and set.
//!
//! This server has one model and renders with the config's defaults, so few settings can
//! change: `sd_model_checkpoint` may name the loaded model (a no-op, which clients send before
//! rendering) and nothing else (400: this server does not switch models);
//! `CLIP_stop_at_last_layers` (1 or 2) becomes the clip skip of requests that do not override
//! it. Other keys are ignored with a log line, as A1111 ignores settings it does not know. A
//! request with one bad value changes nothing.

use std::sync::Mutex;

use axum::Json;
use axum::extract::State;
use axum::extract::rejection::JsonRejection;
use serde_json::{Map, Value, json};
use stylus_core::limits;

use super::error::{ApiError, ApiResult};
use super::{AppState, ModelInfo};

/// The settings `POST /sdapi/v1/options` changes.
#[derive(Debug)]
pub struct Settings {
    clip_skip: Mutex<usize>,
}

impl Settings {
    pub fn new(clip_skip: usize) -> Self {
        Self {
            clip_skip: Mutex::new(clip_skip),
        }
    }

    /// The clip skip of requests that do not set `override_settings.CLIP_stop_at_last_layers`.
    pub fn clip_skip(&self) -> usize {
        *self.clip_skip.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Whether `name` is one of the names A1111 accepts for the loaded checkpoint: its title
/// (`name [hash]`), name, file name or short hash.
fn names_model(model: &ModelInfo, name: &str) -> bool {
    let file = model
        .path
        .file_name()
        .map(|f| f.to_string_lossy().into_owned());
    name == model.title()
        || name == model.name
        || Some(name) == file.as_deref()
        || model.hash.as_deref() == Some(name)
}

/// The changes in `body`, checked: the new clip skip, if set.
pub fn check(model: Option<&ModelInfo>, body: &Map<String, Value>) -> ApiResult<Option<usize>> {
    let mut clip_skip = None;
    for (key, value) in body {
        match key.as_str() {
            "sd_model_checkpoint" => {
                let name = value.as_str().ok_or_else(|| {
                    ApiError::bad_request(format!("sd_model_checkpoint {value}: not a string"))
                })?;
                match model {
                    Some(model) if names_model(model, name.trim()) => {}
                    Some(model) => {
                        return Err(ApiError::bad_request(format!(
                            "sd_model_checkpoint `{name}`: this server has only `{}` loaded and \
                             does not switch models",
                            model.title()
                        )));
                    }
                    None => {
                        return Err(ApiError::bad_request(format!(
                            "sd_model_checkpoint `{name}`: this server has no model loaded \
                             (started without --checkpoint)"
                        )));
                    }
                }
            }
            "CLIP_stop_at_last_layers" => {
                let (lo, hi) = (*limits::CLIP_SKIP.start(), *limits::CLIP_SKIP.end());
                match value.as_u64() {
                    Some(skip) if (lo as u64..=hi as u64).contains(&skip) => {
                        clip_skip = Some(skip as usize);
                    }
                    _ => {
                        return Err(ApiError::bad_request(format!(
                            "CLIP_stop_at_last_layers {value}: must be an integer in {lo}..={hi}"
                        )));
                    }
                }
            }
            other => {
                tracing::info!(key = other, "POST /sdapi/v1/options: setting ignored");
            }
        }
    }
    Ok(clip_skip)
}

pub async fn get_options(State(state): State<AppState>) -> Json<Value> {
    Json(json!({
        "sd_model_checkpoint": state.model.as_ref().map(|m| m.title()),
        "sd_checkpoint_hash": null,
        "CLIP_stop_at_last_layers": state.settings.clip_skip(),
        "samples_format": "png",
        "sd_lora": "None",
    }))
}

/// Answers `null` as A1111 does.
pub async fn set_options(
    State(state): State<AppState>,
    body: Result<Json<Value>, JsonRejection>,
) -> ApiResult<Json<Value>> {
    let Json(body) = body?;
    let Value::Object(body) = body else {
        return Err(ApiError::bad_request(
            "options: expected a JSON object of settings",
        ));
    };
    if let Some(skip) = check(state.model.as_ref(), &body)? {
        *state
            .settings
            .clip_skip
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = skip;
        tracing::info!(clip_skip = skip, "POST /sdapi/v1/options: clip skip set");
    }
    Ok(Json(Value::Null))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model() -> ModelInfo {
        ModelInfo {
            name: "tiny".into(),
            path: "/models/tiny.safetensors".into(),
            hash: Some("0123456789".into()),
        }
    }

    fn body(value: Value) -> Map<String, Value> {
        value.as_object().unwrap().clone()
    }

    #[test]
    fn the_loaded_model_and_clip_skip_are_accepted_others_named_in_the_error() {
        let model = model();
        for name in [
            "tiny [0123456789]",
            "tiny",
            "tiny.safetensors",
            "0123456789",
        ] {
            let set = check(Some(&model), &body(json!({"sd_model_checkpoint": name})));
            assert_eq!(set.unwrap(), None, "{name}");
        }
        let err = check(
            Some(&model),
            &body(json!({"sd_model_checkpoint": "other [abc]"})),
        )
        .unwrap_err();
        assert!(err.detail.contains("`other [abc]`"), "{}", err.detail);
        assert!(
            check(None, &body(json!({"sd_model_checkpoint": "tiny"})))
                .unwrap_err()
                .detail
                .contains("no model loaded")
        );
        let set = check(
            Some(&model),
            &body(json!({"CLIP_stop_at_last_layers": 2, "unknown_setting": true})),
        );
        assert_eq!(set.unwrap(), Some(2));
        for bad in [json!(3), json!(0), json!("2"), json!(1.5)] {
            let err = check(
                Some(&model),
                &body(json!({ "CLIP_stop_at_last_layers": bad })),
            )
            .unwrap_err();
            assert!(
                err.detail.starts_with("CLIP_stop_at_last_layers"),
                "{}",
                err.detail
            );
        }
    }
}
