//! The AUTOMATIC1111 WebUI API subset: `POST /sdapi/v1/txt2img`, `GET /sdapi/v1/loras`,
//! `/sd-models`, `/samplers`, `/progress`, `POST /sdapi/v1/interrupt` (`/options` is in
//! [`super::settings`], `/img2img` in [`super::img2img`]).
//!
//! Request fields are A1111's; fields this server does not implement are ignored when off
//! (clients send all of them) and refused when turned on (`enable_hr`, `restore_faces`,
//! `tiling`). Missing fields take the Stylus config's defaults. One extension: `stylus: true`
//! selects adapters for the prompt (as `stylus generate` does) on top of the prompt's own
//! `<lora:...>` tags.

use std::collections::HashMap;
use std::time::Instant;

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::extract::rejection::JsonRejection;
use axum::http::StatusCode;
use axum::routing::{get, post};
use base64::Engine as _;
use serde::Deserialize;
use serde_json::{Value, json};
use stylus_core::pipeline::strip_lora_tags;
use stylus_core::{
    AdapterLocator, ExplicitLora, GeneratedImage, GenerationRequest, SAMPLER_NAMES, SamplingParams,
    WeightedAdapter, limits,
};
use stylus_diffusion::png::{LoraHash, ModelInfo as PngModel, a1111_parameters, encode_png};
use stylus_diffusion::schedulers::a1111_sampler_name;

use super::AppState;
use super::error::{ApiError, ApiResult};
use super::loras::parse_tags;
use super::queue::{CancelReason, JobError, RunningJob};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/sdapi/v1/txt2img", post(txt2img))
        .route("/sdapi/v1/loras", get(loras))
        .route("/sdapi/v1/sd-models", get(sd_models))
        .route("/sdapi/v1/samplers", get(samplers))
        .route(
            "/sdapi/v1/options",
            get(super::settings::get_options).post(super::settings::set_options),
        )
        .route("/sdapi/v1/progress", get(progress))
        .route("/sdapi/v1/interrupt", post(interrupt))
}

/// A1111's `StableDiffusionTxt2ImgProcessingAPI`, the fields this server reads. Numbers are
/// read wide and checked here, so a bad value gets its allowed range in the answer.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct Txt2ImgRequest {
    pub prompt: String,
    pub negative_prompt: String,
    pub steps: Option<i64>,
    pub cfg_scale: Option<f64>,
    pub sampler_name: Option<String>,
    /// Older clients send the sampler here.
    pub sampler_index: Option<String>,
    /// A1111 1.9+: the noise schedule apart from the sampler (`Karras`).
    pub scheduler: Option<String>,
    /// -1: a random seed.
    pub seed: i64,
    pub width: Option<i64>,
    pub height: Option<i64>,
    pub batch_size: i64,
    pub n_iter: i64,
    pub send_images: bool,
    pub enable_hr: bool,
    pub restore_faces: Option<bool>,
    pub tiling: Option<bool>,
    /// `null` from some clients means none.
    pub override_settings: Option<HashMap<String, Value>>,
    /// Stylus: select adapters for the prompt.
    pub stylus: bool,
}

impl Default for Txt2ImgRequest {
    fn default() -> Self {
        Self {
            prompt: String::new(),
            negative_prompt: String::new(),
            steps: None,
            cfg_scale: None,
            sampler_name: None,
            sampler_index: None,
            scheduler: None,
            seed: -1,
            width: None,
            height: None,
            batch_size: 1,
            n_iter: 1,
            send_images: true,
            enable_hr: false,
            restore_faces: None,
            tiling: None,
            override_settings: None,
            stylus: false,
        }
    }
}

/// `Err` naming `field` and the range when `value` is outside `lo..=hi`.
fn in_range<T: PartialOrd + std::fmt::Display + Copy>(
    field: &str,
    value: T,
    lo: T,
    hi: T,
) -> ApiResult<T> {
    if value >= lo && value <= hi {
        Ok(value)
    } else {
        Err(ApiError::bad_request(format!(
            "{field} {value}: must be in {lo}..={hi}"
        )))
    }
}

/// The sampler named by an A1111 name (`Euler a`, `DPM++ 2M` + scheduler `Karras`, ...) or by
/// ours (`euler_ancestral`).
pub fn sampler_from_a1111(name: &str, scheduler: Option<&str>) -> ApiResult<String> {
    let name = name.trim();
    let karras = scheduler.is_some_and(|s| s.trim().eq_ignore_ascii_case("karras"));
    let found = SAMPLER_NAMES
        .iter()
        .find(|ours| **ours == name || a1111_sampler_name(ours).eq_ignore_ascii_case(name));
    match found {
        Some(&"dpmpp_2m") if karras => Ok("dpmpp_2m_karras".into()),
        Some(ours) => Ok((*ours).to_string()),
        None => Err(ApiError::bad_request(format!(
            "sampler_name `{name}`: unknown; this server has {}",
            SAMPLER_NAMES
                .iter()
                .map(|s| a1111_sampler_name(s))
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

/// A seed for `-1`: A1111 draws from 0..2^32 - 1.
fn random_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    // `RandomState` is seeded from the OS once per process and per instance varied; hashing the
    // time through it gives an unpredictable value without another dependency.
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    hasher.finish() % 4_294_967_295
}

/// The generation request for `body`, every field checked before any work.
pub(crate) async fn to_generation(
    state: &AppState,
    body: &Txt2ImgRequest,
) -> ApiResult<GenerationRequest> {
    let limits_ = &state.options.limits;
    if body.enable_hr || body.restore_faces == Some(true) || body.tiling == Some(true) {
        return Err(ApiError::bad_request(
            "enable_hr, restore_faces and tiling are not supported by this server",
        ));
    }
    for (field, text) in [
        ("prompt", &body.prompt),
        ("negative_prompt", &body.negative_prompt),
    ] {
        let chars = text.chars().count();
        if chars > limits_.max_prompt_chars {
            return Err(ApiError::bad_request(format!(
                "{field}: {chars} characters; at most {} are accepted",
                limits_.max_prompt_chars
            )));
        }
    }
    let prompt = stylus_core::text::clean_prompt(&body.prompt);
    let negative = stylus_core::text::clean_prompt(&body.negative_prompt);
    let defaults = &state.stylus.config().sampling;
    let steps = match body.steps {
        Some(steps) => in_range("steps", steps, 1, limits_.max_steps as i64)? as usize,
        None => defaults.steps.min(limits_.max_steps),
    };
    let side = |field: &str, value: Option<i64>, default: u32| -> ApiResult<u32> {
        let value = value.unwrap_or(i64::from(default));
        let max = i64::from(limits_.max_side);
        if value < 8 || value > max || value % 8 != 0 {
            return Err(ApiError::bad_request(format!(
                "{field} {value}: must be a multiple of 8 in 8..={max}"
            )));
        }
        Ok(value as u32)
    };
    let width = side("width", body.width, defaults.width)?;
    let height = side("height", body.height, defaults.height)?;
    let max_images = limits_.max_images as i64;
    let batch_size = in_range("batch_size", body.batch_size, 1, max_images)?;
    let n_iter = in_range("n_iter", body.n_iter, 1, max_images)?;
    if batch_size * n_iter > max_images {
        return Err(ApiError::bad_request(format!(
            "batch_size {batch_size} x n_iter {n_iter}: at most {max_images} images per request"
        )));
    }
    let cfg = match body.cfg_scale {
        Some(cfg) => in_range(
            "cfg_scale",
            cfg,
            f64::from(*limits::CFG.start()),
            f64::from(*limits::CFG.end()),
        )? as f32,
        None => defaults.guidance_scale,
    };
    let sampler = match body
        .sampler_name
        .as_deref()
        .or(body.sampler_index.as_deref())
        .filter(|s| !s.trim().is_empty())
    {
        Some(name) => sampler_from_a1111(name, body.scheduler.as_deref())?,
        None => defaults.sampler.clone(),
    };
    let clip_skip = match body
        .override_settings
        .as_ref()
        .and_then(|o| o.get("CLIP_stop_at_last_layers"))
    {
        Some(value) => {
            let skip = value.as_i64().ok_or_else(|| {
                ApiError::bad_request("override_settings.CLIP_stop_at_last_layers: not an integer")
            })?;
            in_range("override_settings.CLIP_stop_at_last_layers", skip, 1, 2)? as usize
        }
        // The default as `POST /sdapi/v1/options` last set it.
        None => state.settings.clip_skip(),
    };
    let seed = match body.seed {
        -1 => random_seed(),
        seed if seed >= 0 => seed as u64,
        seed => {
            return Err(ApiError::bad_request(format!(
                "seed {seed}: must be -1 (random) or a non-negative integer"
            )));
        }
    };
    let sampling = SamplingParams {
        steps,
        guidance_scale: cfg,
        sampler,
        width,
        height,
        clip_skip,
    };
    sampling.validate()?;
    let explicit_loras = resolve_tags(state, &prompt).await?;
    let text = strip_lora_tags(&prompt);
    if body.stylus && text.is_empty() {
        return Err(ApiError::bad_request(
            "stylus: true selects adapters for the prompt, and the prompt is empty",
        ));
    }
    Ok(GenerationRequest {
        prompt: text,
        negative_prompt: negative,
        batch: (batch_size * n_iter) as usize,
        seed,
        sampling,
        select: body.stylus,
        explicit_loras,
        init_latents: None,
        keep_latents: false,
        init_image: None,
    })
}

/// The prompt's `<lora:NAME:W>` tags as files: NAME is a file stem of the LoRA folder, else a
/// catalog id or alias whose file the folder has. Paths are refused by [`parse_tags`].
async fn resolve_tags(state: &AppState, prompt: &str) -> ApiResult<Vec<ExplicitLora>> {
    let mut loras = Vec::new();
    for tag in parse_tags(prompt)? {
        if let Some(entry) = state.loras.find(&tag.name) {
            loras.push(ExplicitLora {
                path: entry.path.clone(),
                weight: tag.weight,
            });
            continue;
        }
        let doc = state.stylus.catalog().docs.iter().find(|doc| {
            doc.id().to_string() == tag.name
                || doc.card.a1111_alias().eq_ignore_ascii_case(&tag.name)
        });
        let located = match (doc, &state.locator) {
            (Some(doc), Some(locator)) => {
                locator
                    .locate(&WeightedAdapter::new(doc, tag.weight))
                    .await?
            }
            _ => None,
        };
        match located {
            Some(file) => loras.push(ExplicitLora {
                path: file.path,
                weight: tag.weight,
            }),
            None => {
                return Err(ApiError::bad_request(format!(
                    "<lora:{}:{}>: no such LoRA on this server (GET /sdapi/v1/loras lists them)",
                    tag.name, tag.weight
                )));
            }
        }
    }
    Ok(loras)
}

async fn txt2img(
    State(state): State<AppState>,
    body: Result<Json<Value>, JsonRejection>,
) -> ApiResult<Json<Value>> {
    let Json(raw) = body?;
    let request: Txt2ImgRequest = serde_json::from_value(raw.clone()).map_err(|e| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "ValidationError",
            format!("txt2img request: {e}"),
        )
    })?;
    let model = ready_to_render(&state)?;
    let generation = to_generation(&state, &request).await?;
    render(&state, model, &request, generation, raw).await
}

/// The loaded model, or 503 when this server does not render (no checkpoint, shutting down).
pub(crate) fn ready_to_render(state: &AppState) -> ApiResult<super::ModelInfo> {
    let Some(model) = state.model.clone() else {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "NoModel",
            "this server was started without --checkpoint: it selects, it does not render",
        ));
    };
    if state.draining.load(std::sync::atomic::Ordering::SeqCst) {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "ShuttingDown",
            "the server is shutting down",
        )
        .with_retry_after(5));
    }
    Ok(model)
}

/// Queues `generation`, waits for it and answers as A1111 does: the images as base64 PNGs,
/// `parameters` echoed, the `info` JSON.
pub(crate) async fn render(
    state: &AppState,
    model: super::ModelInfo,
    request: &Txt2ImgRequest,
    generation: GenerationRequest,
    parameters: Value,
) -> ApiResult<Json<Value>> {
    let deadline = Instant::now() + state.options.request_timeout;
    let ticket = state
        .queue
        .submit(generation.clone(), deadline)
        .map_err(|full| {
            ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "QueueFull",
                format!(
                    "the render queue is full ({} waiting); try again later",
                    state.options.queue_depth
                ),
            )
            .with_retry_after(full.retry_after)
        })?;
    let rendered = match ticket.wait().await {
        Ok(rendered) => rendered,
        Err(JobError::Cancelled(reason)) => return Err(cancelled(reason, state)),
        Err(JobError::Failed(err)) => return Err(err.into()),
    };
    state.metrics.stage("queue", rendered.queue_seconds);
    let generation_out = rendered.generation;
    if let Some(plan) = &generation_out.plan {
        record_selection(state, &plan.timings_ms);
    }
    state.metrics.stage("render", rendered.render_seconds);

    let encode_started = Instant::now();
    let send_images = request.send_images;
    let encoded = tokio::task::spawn_blocking(move || encode(generation_out, &model, send_images))
        .await
        .map_err(|e| ApiError::from(stylus_core::StylusError::Device(e.to_string())))??;
    state
        .metrics
        .stage("encode", encode_started.elapsed().as_secs_f64());
    state.metrics.images(encoded.images.len());
    let info = info_json(request, &generation, &encoded);
    Ok(Json(json!({
        "images": encoded.images,
        "parameters": parameters,
        "info": info.to_string(),
    })))
}

/// The answer for a stopped render.
fn cancelled(reason: CancelReason, state: &AppState) -> ApiError {
    match reason {
        CancelReason::Deadline => ApiError::new(
            StatusCode::GATEWAY_TIMEOUT,
            "Timeout",
            format!(
                "the render did not finish within {} s (--request-timeout)",
                state.options.request_timeout.as_secs_f64()
            ),
        ),
        CancelReason::Shutdown => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "ShuttingDown",
            "the server shut down before the render finished",
        )
        .with_retry_after(5),
        CancelReason::Interrupted => ApiError::new(
            StatusCode::CONFLICT,
            "Interrupted",
            "the render was interrupted (POST /sdapi/v1/interrupt)",
        ),
        CancelReason::ClientGone => ApiError::new(
            StatusCode::CONFLICT,
            "Cancelled",
            "the render was cancelled",
        ),
    }
}

pub(crate) fn record_selection(state: &AppState, timings: &stylus_core::plan::Timings) {
    state.metrics.stage("embed", timings.embed / 1e3);
    state.metrics.stage("retrieve", timings.retrieve / 1e3);
    state.metrics.stage("compose", timings.compose / 1e3);
}

/// Images as base64 PNGs with their A1111 infotexts.
struct Encoded {
    images: Vec<String>,
    infotexts: Vec<String>,
    prompts: Vec<String>,
    seeds: Vec<u64>,
    lora_hashes: String,
    plan: Option<Value>,
    model: super::ModelInfo,
}

fn encode(
    generation: stylus_core::Generation,
    model: &super::ModelInfo,
    send_images: bool,
) -> ApiResult<Encoded> {
    // A1111's "Lora hashes": each file hashed once (the locator's hash when it made one).
    let mut hashes: HashMap<String, String> = HashMap::new();
    for resolved in &generation.adapters {
        let hash = match &resolved.tensor_sha256 {
            Some(sha) => sha.chars().take(12).collect(),
            None => stylus_diffusion::png::lora_short_hash(&resolved.path)?,
        };
        hashes.insert(resolved.adapter.alias.clone(), hash);
    }
    let png_model = PngModel {
        hash: model.hash.clone(),
        name: Some(model.name.clone()),
    };
    let mut out = Encoded {
        images: Vec::new(),
        infotexts: Vec::new(),
        prompts: Vec::new(),
        seeds: Vec::new(),
        lora_hashes: String::new(),
        plan: generation
            .plan
            .as_ref()
            .and_then(|p| serde_json::to_value(p).ok()),
        model: model.clone(),
    };
    let mut all_hashes: Vec<LoraHash> = Vec::new();
    for image in &generation.images {
        let lora_hashes: Vec<LoraHash> = image
            .adapters
            .iter()
            .filter_map(|a| {
                hashes.get(&a.alias).map(|hash| LoraHash {
                    alias: a.alias.clone(),
                    hash: hash.clone(),
                })
            })
            .collect();
        for hash in &lora_hashes {
            if !all_hashes.contains(hash) {
                all_hashes.push(hash.clone());
            }
        }
        let parameters = a1111_parameters(image, &png_model, &lora_hashes);
        if send_images {
            let png = encode_png(image, &parameters)?;
            out.images
                .push(base64::engine::general_purpose::STANDARD.encode(png));
        }
        out.prompts.push(prompt_with_tags(image));
        out.seeds.push(image.seed);
        out.infotexts.push(parameters);
    }
    out.lora_hashes = all_hashes
        .iter()
        .map(|h| format!("{}: {}", h.alias, h.hash))
        .collect::<Vec<_>>()
        .join(", ");
    Ok(out)
}

/// The image's prompt as A1111 reports it: the text with a `<lora:alias:w>` per adapter.
fn prompt_with_tags(image: &GeneratedImage) -> String {
    let mut prompt = image.prompt.clone();
    for adapter in &image.adapters {
        if !prompt.is_empty() {
            prompt.push(' ');
        }
        prompt.push_str(&format!("<lora:{}:{}>", adapter.alias, adapter.weight));
    }
    prompt
}

/// A1111's `info` object (sent as a JSON string), plus `stylus_plan` when selection ran.
fn info_json(request: &Txt2ImgRequest, generation: &GenerationRequest, out: &Encoded) -> Value {
    let s = &generation.sampling;
    let first = |v: &[String]| v.first().cloned().unwrap_or_default();
    let mut extra = serde_json::Map::new();
    if !out.lora_hashes.is_empty() {
        extra.insert("Lora hashes".into(), json!(out.lora_hashes));
    }
    let init = generation.init_image.as_ref();
    if let Some(mask) = init.and_then(|i| i.mask.as_ref()) {
        extra.insert("Mask blur".into(), json!(mask.blur));
    }
    json!({
        "prompt": first(&out.prompts),
        "all_prompts": out.prompts,
        "negative_prompt": generation.negative_prompt,
        "all_negative_prompts": vec![&generation.negative_prompt; out.seeds.len()],
        "seed": generation.seed,
        "all_seeds": out.seeds,
        "subseed": generation.seed,
        "all_subseeds": out.seeds,
        "subseed_strength": 0,
        "width": s.width,
        "height": s.height,
        "sampler_name": a1111_sampler_name(&s.sampler),
        "cfg_scale": s.guidance_scale,
        "steps": s.steps,
        "batch_size": request.batch_size,
        "n_iter": request.n_iter,
        "restore_faces": false,
        "face_restoration_model": null,
        "sd_model_name": out.model.name,
        "sd_model_hash": out.model.hash,
        "sd_vae_name": null,
        "sd_vae_hash": null,
        "seed_resize_from_w": -1,
        "seed_resize_from_h": -1,
        // Through its shortest decimal form, so 0.6 reads 0.6 (not 0.6000000238).
        "denoising_strength": init.and_then(|i| i.strength.to_string().parse::<f64>().ok()),
        "extra_generation_params": extra,
        "index_of_first_image": 0,
        "infotexts": out.infotexts,
        "styles": [],
        "job_timestamp": null,
        "clip_skip": s.clip_skip,
        "is_using_inpainting_conditioning": false,
        "version": concat!("stylus-", env!("CARGO_PKG_VERSION")),
        "stylus_plan": out.plan,
    })
}

async fn loras(State(state): State<AppState>) -> Json<Value> {
    let list: Vec<Value> = state
        .loras
        .entries()
        .iter()
        .map(|e| {
            json!({
                "name": e.name,
                "alias": e.name,
                "path": e.relative.to_string_lossy(),
                "metadata": {},
            })
        })
        .collect();
    Json(Value::Array(list))
}

async fn sd_models(State(state): State<AppState>) -> Json<Value> {
    let list: Vec<Value> = state
        .model
        .iter()
        .map(|m| {
            json!({
                "title": m.title(),
                "model_name": m.name,
                "hash": m.hash,
                "sha256": null,
                "filename": m.path.file_name().map(|f| f.to_string_lossy().into_owned()),
                "config": null,
            })
        })
        .collect();
    Json(Value::Array(list))
}

async fn samplers() -> Json<Value> {
    let list: Vec<Value> = SAMPLER_NAMES
        .iter()
        .map(|name| {
            json!({
                "name": a1111_sampler_name(name),
                "aliases": [name],
                "options": {},
            })
        })
        .collect();
    Json(Value::Array(list))
}

async fn progress(State(state): State<AppState>) -> Json<Value> {
    let status = state.queue.status();
    let waiting = state.queue.waiting();
    let (progress, eta, step, steps, stamp, job) = match status.running() {
        Some(RunningJob {
            step,
            steps,
            seconds: elapsed,
            timestamp,
            kind,
        }) => {
            let fraction = if steps == 0 {
                0.0
            } else {
                step as f64 / steps as f64
            };
            let eta = if fraction > 0.0 {
                elapsed / fraction - elapsed
            } else {
                0.0
            };
            (fraction, eta, step, steps, timestamp, kind)
        }
        None => (0.0, 0.0, 0, 0, String::new(), ""),
    };
    let running = !job.is_empty();
    Json(json!({
        "progress": progress,
        "eta_relative": eta,
        "state": {
            "skipped": false,
            "interrupted": false,
            "job": job,
            "job_count": waiting + usize::from(running),
            "job_timestamp": stamp,
            "job_no": status.jobs_started(),
            "sampling_step": step,
            "sampling_steps": steps,
        },
        "current_image": null,
        "textinfo": null,
        "current_task": null,
    }))
}

async fn interrupt(State(state): State<AppState>) -> Json<Value> {
    Json(json!({ "interrupted": state.queue.interrupt() }))
}
