//! diffusers folders: `unet/`, `vae/` and `text_encoder/`, each with a `config.json` (read when
//! present, else the config is inferred from shapes) and one safetensors file
//! (`diffusion_pytorch_model[.fp16].safetensors`, `model[.fp16].safetensors`).

use std::path::{Path, PathBuf};

use burn::tensor::DType;
use burn::tensor::backend::Backend;
use stylus_core::{Result, StylusError};

use super::Component;
use super::apply::{PlannedTensor, apply_tensors};
use super::infer::{self, Shapes};
use super::mapping::{KeyFate, diffusers_key_fate};
use super::report::ComponentReport;
use super::safetensors_file::SafetensorsFile;
use crate::models::clip::{ClipTextConfig, ClipTextModel};
use crate::models::unet::{UNet2DConditionModel, UNetConfig};
use crate::models::vae::{AutoencoderKL, VaeConfig};

/// The weight file of a component directory: the full-precision file if present, else the fp16
/// variant. Pickle-only directories get an error saying so.
pub fn weight_file(dir: &Path, stem: &str) -> Result<PathBuf> {
    for candidate in [
        format!("{stem}.safetensors"),
        format!("{stem}.fp16.safetensors"),
    ] {
        let path = dir.join(candidate);
        if path.is_file() {
            return Ok(path);
        }
    }
    for pickle in [format!("{stem}.bin"), format!("{stem}.fp16.bin")] {
        let path = dir.join(&pickle);
        if path.is_file() {
            super::safetensors_file::refuse_pickle(&path)?;
        }
    }
    Err(StylusError::Model {
        path: dir.to_path_buf(),
        message: format!("no {stem}.safetensors or {stem}.fp16.safetensors in this directory"),
    })
}

/// Reads a component file and sorts its keys into tensors to load and ignored keys.
fn plan(component: Component, file: &SafetensorsFile) -> (Vec<PlannedTensor>, Vec<String>, Shapes) {
    let mut planned = Vec::new();
    let mut ignored = Vec::new();
    let mut shapes = Shapes::new();
    for (key, entry) in file.entries() {
        match diffusers_key_fate(component, key) {
            KeyFate::Load(mapped) => {
                shapes.insert(mapped.name.clone(), entry.shape.clone());
                planned.push(PlannedTensor {
                    source_key: key.clone(),
                    target: mapped.name,
                    shape: entry.shape.clone(),
                });
            }
            KeyFate::Ignore => ignored.push(key.clone()),
            // Kept under its own name: the model has no such parameter, so the load check
            // reports it as unexpected.
            KeyFate::Unexpected => planned.push(PlannedTensor {
                source_key: key.clone(),
                target: key.clone(),
                shape: entry.shape.clone(),
            }),
        }
    }
    (planned, ignored, shapes)
}

/// Loads `unet/` of a diffusers folder (`dir` is the `unet` directory itself).
pub fn load_unet<B: Backend>(
    dir: &Path,
    device: &B::Device,
    dtype: DType,
) -> Result<(UNet2DConditionModel<B>, UNetConfig, ComponentReport)> {
    let file = SafetensorsFile::open(&weight_file(dir, "diffusion_pytorch_model")?)?;
    let (planned, ignored, shapes) = plan(Component::Unet, &file);
    let config_path = dir.join("config.json");
    let config = if config_path.is_file() {
        UNetConfig::from_diffusers_json(&config_path)?
    } else {
        infer::unet_config(&shapes, file.path())?
    };
    let mut unet = config.init(device);
    let report = apply_tensors(&mut unet, Component::Unet, &file, planned, ignored, dtype)?;
    Ok((unet, config, report))
}

/// Loads `vae/` of a diffusers folder (`dir` is the `vae` directory itself). Both VAE attention
/// spellings (`to_q...` and the old `query/key/value/proj_attn`) are accepted.
pub fn load_vae<B: Backend>(
    dir: &Path,
    device: &B::Device,
    dtype: DType,
) -> Result<(AutoencoderKL<B>, VaeConfig, ComponentReport)> {
    let file = SafetensorsFile::open(&weight_file(dir, "diffusion_pytorch_model")?)?;
    let (planned, ignored, shapes) = plan(Component::Vae, &file);
    let config_path = dir.join("config.json");
    let config = if config_path.is_file() {
        VaeConfig::from_diffusers_json(&config_path)?
    } else {
        infer::vae_config(&shapes, file.path())?
    };
    let mut vae = config.init(device);
    let report = apply_tensors(&mut vae, Component::Vae, &file, planned, ignored, dtype)?;
    Ok((vae, config, report))
}

/// Loads `text_encoder/` of a diffusers folder (`dir` is the `text_encoder` directory itself),
/// with or without the `text_model.` key prefix.
pub fn load_text_encoder<B: Backend>(
    dir: &Path,
    device: &B::Device,
    dtype: DType,
) -> Result<(ClipTextModel<B>, ClipTextConfig, ComponentReport)> {
    let file = SafetensorsFile::open(&weight_file(dir, "model")?)?;
    let (planned, ignored, shapes) = plan(Component::TextEncoder, &file);
    let config_path = dir.join("config.json");
    let config = if config_path.is_file() {
        read_clip_config(&config_path)?
    } else {
        infer::clip_config(&shapes, file.path())?
    };
    let mut clip = config.init(device);
    let report = apply_tensors(
        &mut clip,
        Component::TextEncoder,
        &file,
        planned,
        ignored,
        dtype,
    )?;
    Ok((clip, config, report))
}

/// Reads transformers' `text_encoder/config.json`, refusing the SD 2.x / SDXL text towers.
pub fn read_clip_config(path: &Path) -> Result<ClipTextConfig> {
    let text = std::fs::read_to_string(path).map_err(|e| StylusError::io(path, e))?;
    let config: ClipTextConfig = serde_json::from_str(&text).map_err(|e| StylusError::Json {
        path: path.to_path_buf(),
        line: Some(e.line()),
        message: e.to_string(),
        source: Some(Box::new(e)),
    })?;
    if config.hidden_size == 1024 || config.hidden_size == 1280 {
        return Err(StylusError::UnsupportedFormat {
            path: path.to_path_buf(),
            message: format!(
                "a {}-wide text encoder belongs to SD 2.x or SDXL; only SD 1.x (CLIP ViT-L, 768) is supported",
                config.hidden_size
            ),
        });
    }
    config.validate().map_err(|e| StylusError::Config {
        path: path.to_path_buf(),
        message: e.to_string(),
        source: Some(Box::new(e)),
    })?;
    Ok(config)
}
