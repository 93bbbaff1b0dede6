//! Loading SD 1.x checkpoints into the [`crate::models`] networks.
//!
//! One entry point: [`StableDiffusion::load`]`(path, device, dtype)` takes either a diffusers
//! folder (`unet/`, `vae/`, `text_encoder/`) or a single-file LDM `.safetensors` checkpoint and
//! returns the three networks plus a [`LoadReport`]. Loading is all-or-nothing: every model
//! parameter must be filled from the file; a missing, unexpected or mis-shaped tensor is a
//! [`StylusError::Model`] listing them, a NaN/inf weight or non-float tensor a
//! [`StylusError::Tensor`] naming file and tensor, a truncated file a
//! [`StylusError::Safetensors`]; pickle files (`.ckpt/.pt/.pth/.bin`) and SD 2.x / SDXL
//! checkpoints are [`StylusError::UnsupportedFormat`] with a message saying which.
//! f32/f16/bf16 files are converted to the requested `dtype` (F32, F16 or BF16).
//!
//! The single-file layout is converted by name through the one table in [`mapping`]; diffusers
//! keys are our module paths already (see [`crate::models::parameters`] to enumerate them).

pub mod apply;
pub mod decode;
pub mod diffusers;
pub mod infer;
pub mod mapped;
pub mod mapping;
pub mod report;
pub mod safetensors_file;
pub mod single_file;

use std::path::Path;

use burn::tensor::DType;
use burn::tensor::backend::Backend;
use stylus_core::{Result, StylusError};

pub use report::{ComponentReport, LoadReport};

use crate::models::clip::{ClipTextConfig, ClipTextModel};
use crate::models::unet::{UNet2DConditionModel, UNetConfig};
use crate::models::vae::{AutoencoderKL, VaeConfig};

/// One of the three SD networks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Component {
    /// The CLIP text encoder.
    TextEncoder,
    /// The denoising UNet.
    Unet,
    /// The autoencoder.
    Vae,
}

impl Component {
    /// The key prefix of this network in a single-file LDM checkpoint.
    pub fn ldm_prefix(self) -> &'static str {
        match self {
            Self::TextEncoder => mapping::LDM_TEXT_PREFIX,
            Self::Unet => mapping::LDM_UNET_PREFIX,
            Self::Vae => mapping::LDM_VAE_PREFIX,
        }
    }
}

/// The configs of the three networks of a loaded model.
#[derive(Debug, Clone, PartialEq)]
pub struct SdConfig {
    /// CLIP text encoder.
    pub text_encoder: ClipTextConfig,
    /// UNet.
    pub unet: UNetConfig,
    /// VAE.
    pub vae: VaeConfig,
}

/// The three networks of an SD 1.x model.
///
/// - `text_encoder.forward(token_ids [b, 77] Int)` -> hidden states `[b, 77, 768]`
///   (or `encode(ids, clip_skip)`);
/// - `unet.forward(latents [b, 4, h, w], timestep, context [b, 77, 768])` -> noise `[b, 4, h, w]`;
/// - `vae.decode_latents(latents)` (= `decode(latents / 0.18215)`) -> images in [-1, 1].
#[derive(Debug)]
pub struct StableDiffusion<B: Backend> {
    /// CLIP text encoder.
    pub text_encoder: ClipTextModel<B>,
    /// Denoising UNet.
    pub unet: UNet2DConditionModel<B>,
    /// Autoencoder.
    pub vae: AutoencoderKL<B>,
    /// The configs the networks were built from.
    pub config: SdConfig,
}

impl<B: Backend> StableDiffusion<B> {
    /// Loads a diffusers folder or a single-file `.safetensors` checkpoint onto `device`, with
    /// parameters in `dtype` (F32, F16 or BF16).
    pub fn load(
        path: impl AsRef<Path>,
        device: &B::Device,
        dtype: DType,
    ) -> Result<(Self, LoadReport)> {
        let path = path.as_ref();
        if path.is_dir() {
            Self::load_diffusers(path, device, dtype)
        } else if path.is_file() {
            single_file::load(path, device, dtype)
        } else {
            Err(StylusError::io(
                path,
                std::io::Error::new(std::io::ErrorKind::NotFound, "no such file or directory"),
            ))
        }
    }

    fn load_diffusers(
        folder: &Path,
        device: &B::Device,
        dtype: DType,
    ) -> Result<(Self, LoadReport)> {
        let (text_encoder, text_config, text_report) =
            diffusers::load_text_encoder(&folder.join("text_encoder"), device, dtype)?;
        let (unet, unet_config, unet_report) =
            diffusers::load_unet(&folder.join("unet"), device, dtype)?;
        let (vae, vae_config, vae_report) =
            diffusers::load_vae(&folder.join("vae"), device, dtype)?;
        Ok((
            Self {
                text_encoder,
                unet,
                vae,
                config: SdConfig {
                    text_encoder: text_config,
                    unet: unet_config,
                    vae: vae_config,
                },
            },
            LoadReport {
                layout: "diffusers folder",
                components: vec![text_report, unet_report, vae_report],
            },
        ))
    }
}
