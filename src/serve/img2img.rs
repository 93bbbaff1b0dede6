//! `POST /sdapi/v1/img2img`: A1111's img2img and inpainting on the library's [`InitImage`].
//!
//! The request is A1111's `StableDiffusionImg2ImgProcessingAPI`: every txt2img field, plus
//! `init_images` and `mask` (base64, with or without a `data:image/...;base64,` prefix),
//! `denoising_strength`, `resize_mode`, `mask_blur` (or `mask_blur_x`/`_y`),
//! `inpainting_mask_invert`, `inpainting_fill` and `inpaint_full_res`. The uploads are decoded in
//! memory (no temporary files) with the library's checks; their headers are read here first, so
//! a bad or oversized image is a 400 naming its field before the request queues.
//!
//! What differs from A1111, each refused with a 400 naming the field rather than rendered
//! otherwise:
//! - `resize_mode` 3 (latent upscale);
//! - `inpainting_fill` other than 1 ("original": the masked area starts from the noised image,
//!   as diffusers' inpainting does); A1111's default 0 ("fill") must be set to 1 explicitly;
//! - `inpaint_full_res: true` ("only masked");
//! - `mask_blur_x` != `mask_blur_y` (the blur is isotropic);
//! - a mask of another size than the init image (A1111 resizes it);
//! - more than one init image, and `initial_noise_multiplier` other than 1.

use std::path::Path;

use axum::Json;
use axum::extract::State;
use axum::extract::rejection::JsonRejection;
use axum::http::StatusCode;
use base64::Engine as _;
use serde::Deserialize;
use serde_json::Value;
use stylus_core::blocking::run_cpu;
use stylus_core::{ImageBytes, InitImage, InpaintMask, ResizeMode, limits};
use stylus_diffusion::image_input::{Input, probe};

use super::AppState;
use super::error::{ApiError, ApiResult};
use super::routes_a1111::{Txt2ImgRequest, ready_to_render, render, to_generation};

/// A1111's img2img request: the txt2img fields and the image ones.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct Img2ImgRequest {
    #[serde(flatten)]
    pub common: Txt2ImgRequest,
    pub init_images: Option<Vec<String>>,
    pub mask: Option<String>,
    pub denoising_strength: Option<f64>,
    /// 0 just resize, 1 crop and resize, 2 resize and fill, 3 latent upscale.
    pub resize_mode: i64,
    /// Sets both axes (A1111's property); else `mask_blur_x`/`_y`, 4 by default.
    pub mask_blur: Option<i64>,
    pub mask_blur_x: Option<i64>,
    pub mask_blur_y: Option<i64>,
    /// 0 or 1 (some clients send a boolean).
    pub inpainting_mask_invert: Value,
    /// 0 fill, 1 original, 2 latent noise, 3 latent nothing; absent: what this server does (1).
    pub inpainting_fill: Option<i64>,
    /// "Only masked"; absent: whole picture.
    pub inpaint_full_res: Value,
    pub initial_noise_multiplier: Option<f64>,
    /// Echo the uploads in `parameters` (A1111 drops them from the echo by default).
    pub include_init_images: bool,
}

impl Default for Img2ImgRequest {
    fn default() -> Self {
        Self {
            common: Txt2ImgRequest::default(),
            init_images: None,
            mask: None,
            denoising_strength: None,
            resize_mode: 0,
            mask_blur: None,
            mask_blur_x: None,
            mask_blur_y: None,
            inpainting_mask_invert: Value::Null,
            inpainting_fill: None,
            inpaint_full_res: Value::Null,
            initial_noise_multiplier: None,
            include_init_images: false,
        }
    }
}

/// A1111's mask blur when no field sets it.
const DEFAULT_MASK_BLUR: i64 = 4;

/// `inpainting_fill` "original", the only fill this server's inpainting does.
const FILL_ORIGINAL: i64 = 1;

/// The library's resize mode for A1111's `resize_mode`.
pub fn resize_mode(value: i64) -> ApiResult<ResizeMode> {
    match value {
        0 => Ok(ResizeMode::Stretch),
        1 => Ok(ResizeMode::Fill),
        2 => Ok(ResizeMode::Fit),
        3 => Err(ApiError::bad_request(
            "resize_mode 3 (latent upscale): not supported by this server; use 0 (just resize), \
             1 (crop and resize) or 2 (resize and fill)",
        )),
        other => Err(ApiError::bad_request(format!(
            "resize_mode {other}: must be 0 (just resize), 1 (crop and resize) or 2 (resize and \
             fill)"
        ))),
    }
}

/// A 0/1 flag sent as an integer or a boolean (`null`: `default`).
fn flag(field: &str, value: &Value, default: bool) -> ApiResult<bool> {
    match value {
        Value::Null => Ok(default),
        Value::Bool(b) => Ok(*b),
        Value::Number(n) if n.as_i64() == Some(0) => Ok(false),
        Value::Number(n) if n.as_i64() == Some(1) => Ok(true),
        other => Err(ApiError::bad_request(format!(
            "{field} {other}: must be 0, 1, true or false"
        ))),
    }
}

/// The bytes of a base64 upload, with or without a `data:image/...;base64,` prefix.
pub fn decode_base64(field: &str, text: &str) -> ApiResult<Vec<u8>> {
    let text = text.trim();
    let payload = match text.strip_prefix("data:") {
        Some(rest) => match rest.split_once(',') {
            Some((media, payload)) if media.ends_with(";base64") => payload,
            _ => {
                return Err(ApiError::bad_request(format!(
                    "{field}: a data URL must be `data:image/...;base64,<data>`"
                )));
            }
        },
        None => text,
    };
    if payload.is_empty() {
        return Err(ApiError::bad_request(format!("{field}: empty")));
    }
    base64::engine::general_purpose::STANDARD
        .decode(payload)
        .map_err(|e| ApiError::bad_request(format!("{field}: not valid base64 ({e})")))
}

/// An upload decoded from base64 with its size read from its header (the pixel limit checked),
/// before anything is queued.
fn upload(field: &str, text: &str, max_pixels: u64) -> ApiResult<(ImageBytes, (u32, u32))> {
    let bytes = ImageBytes::from(decode_base64(field, text)?);
    let (width, height) = probe(Input::new(Path::new(field), Some(&bytes)))?;
    let pixels = u64::from(width) * u64::from(height);
    if pixels > max_pixels {
        return Err(ApiError::bad_request(format!(
            "{field}: {width}x{height} pixels; this server accepts at most {max_pixels}"
        )));
    }
    Ok((bytes, (width, height)))
}

/// The init image (and mask) of `body`, every field checked and the uploads' headers read.
pub fn init_image(body: &Img2ImgRequest, max_pixels: u64) -> ApiResult<InitImage> {
    let images = body.init_images.as_deref().unwrap_or_default();
    let first = match images {
        [one] => one,
        [] => {
            return Err(ApiError::bad_request(
                "init_images: no image; img2img needs one (base64 PNG or JPEG)",
            ));
        }
        more => {
            return Err(ApiError::bad_request(format!(
                "init_images: {} images; this server takes one per request (use batch_size for \
                 more outputs)",
                more.len()
            )));
        }
    };
    let strength = match body.denoising_strength {
        Some(s) => {
            let (lo, hi) = (*limits::STRENGTH.start(), *limits::STRENGTH.end());
            if !(s >= f64::from(lo) && s <= f64::from(hi)) {
                return Err(ApiError::bad_request(format!(
                    "denoising_strength {s}: must be in {lo}..={hi}"
                )));
            }
            s as f32
        }
        None => InitImage::DEFAULT_STRENGTH,
    };
    if let Some(m) = body.initial_noise_multiplier
        && m != 1.0
    {
        return Err(ApiError::bad_request(format!(
            "initial_noise_multiplier {m}: this server only renders with 1"
        )));
    }
    let resize_mode = resize_mode(body.resize_mode)?;
    let name = "init_images[0]";
    let (bytes, size) = upload(name, first, max_pixels)?;
    let mask = match body.mask.as_deref().filter(|m| !m.trim().is_empty()) {
        Some(text) => Some(mask(body, text, size, max_pixels)?),
        None => None,
    };
    Ok(InitImage {
        path: name.into(),
        bytes: Some(bytes),
        strength,
        resize_mode,
        mask,
        inpaint_model: false,
    })
}

fn mask(
    body: &Img2ImgRequest,
    text: &str,
    image_size: (u32, u32),
    max_pixels: u64,
) -> ApiResult<InpaintMask> {
    if flag("inpaint_full_res", &body.inpaint_full_res, false)? {
        return Err(ApiError::bad_request(
            "inpaint_full_res true (\"only masked\"): not supported by this server; send false \
             (whole picture)",
        ));
    }
    match body.inpainting_fill {
        None | Some(FILL_ORIGINAL) => {}
        Some(other) => {
            let name = match other {
                0 => "fill",
                2 => "latent noise",
                3 => "latent nothing",
                _ => "unknown",
            };
            return Err(ApiError::bad_request(format!(
                "inpainting_fill {other} ({name}): this server inpaints from the original image \
                 only; send 1 (original)"
            )));
        }
    }
    let blur = match (body.mask_blur, body.mask_blur_x, body.mask_blur_y) {
        (Some(both), _, _) => ("mask_blur", both),
        (None, x, y) => {
            let (x, y) = (
                x.unwrap_or(DEFAULT_MASK_BLUR),
                y.unwrap_or(DEFAULT_MASK_BLUR),
            );
            if x != y {
                return Err(ApiError::bad_request(format!(
                    "mask_blur_x {x} and mask_blur_y {y}: this server blurs both axes alike; \
                     send equal values (or mask_blur)"
                )));
            }
            ("mask_blur_x", x)
        }
    };
    let (lo, hi) = (*limits::MASK_BLUR.start(), *limits::MASK_BLUR.end());
    if blur.1 < i64::from(lo) || blur.1 > i64::from(hi) {
        return Err(ApiError::bad_request(format!(
            "{} {}: must be in {lo}..={hi}",
            blur.0, blur.1
        )));
    }
    let invert = flag(
        "inpainting_mask_invert",
        &body.inpainting_mask_invert,
        false,
    )?;
    let (bytes, size) = upload("mask", text, max_pixels)?;
    if size != image_size {
        return Err(ApiError::bad_request(format!(
            "mask: {}x{} pixels but init_images[0] is {}x{}; send a mask of the image's size",
            size.0, size.1, image_size.0, image_size.1
        )));
    }
    Ok(InpaintMask {
        path: "mask".into(),
        bytes: Some(bytes),
        blur: blur.1 as u32,
        resize: false,
        invert,
    })
}

pub async fn img2img(
    State(state): State<AppState>,
    body: Result<Json<Value>, JsonRejection>,
) -> ApiResult<Json<Value>> {
    let Json(mut raw) = body?;
    let request: Img2ImgRequest = serde_json::from_value(raw.clone()).map_err(|e| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "ValidationError",
            format!("img2img request: {e}"),
        )
    })?;
    let model = ready_to_render(&state)?;
    let mut generation = to_generation(&state, &request.common).await?;
    let max_pixels = state.options.limits.max_image_pixels;
    // Base64 and header decoding: milliseconds of CPU for megabytes of upload.
    let init = run_cpu(|| init_image(&request, max_pixels))?;
    generation.init_image = Some(init);
    // A1111 echoes the request without the uploads unless asked.
    if !request.include_init_images
        && let Some(object) = raw.as_object_mut()
    {
        object.insert("init_images".into(), Value::Null);
        object.insert("mask".into(), Value::Null);
    }
    render(&state, model, &request.common, generation, raw).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_with_or_without_a_data_url_prefix() {
        assert_eq!(decode_base64("f", "aGk=").unwrap(), b"hi");
        assert_eq!(
            decode_base64("f", "data:image/png;base64,aGk=").unwrap(),
            b"hi"
        );
        for bad in ["", "data:image/png,aGk=", "not base64!", "data:;base64,"] {
            let err = decode_base64("init_images[0]", bad).unwrap_err();
            assert_eq!(err.status, StatusCode::BAD_REQUEST);
            assert!(err.detail.starts_with("init_images[0]:"), "{}", err.detail);
        }
    }

    #[test]
    fn resize_modes_map_to_the_library_and_latent_upscale_is_refused() {
        assert_eq!(resize_mode(0).unwrap(), ResizeMode::Stretch);
        assert_eq!(resize_mode(1).unwrap(), ResizeMode::Fill);
        assert_eq!(resize_mode(2).unwrap(), ResizeMode::Fit);
        for bad in [3, 4, -1] {
            assert!(resize_mode(bad).unwrap_err().detail.contains("resize_mode"));
        }
    }
}
