//! Rendering: an SD 1.5 checkpoint loaded on a device, as the pipeline's [`Sampler`] (merge and
//! sample as one job; see `stylus_diffusion::sampler::SdSampler`).

use std::path::Path;
use std::sync::{Arc, Mutex};

use burn::tensor::DType;
use burn::tensor::backend::Backend;
use stylus_core::{Result, Sampler, StylusError};
use stylus_diffusion::StableDiffusion;
use stylus_diffusion::clip_tokenizer::ClipTokenizer;
use stylus_diffusion::lora::{LoraMerger, MergeCacheStats};
use stylus_diffusion::sampler::{InterruptFn, ProgressFn, SdSampler, vae_scale_factor};

/// The compute device. GPU ones need the matching cargo feature (`cuda`, `wgpu`).
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    serde::Serialize,
    serde::Deserialize,
    clap::ValueEnum,
)]
#[value(rename_all = "snake_case")]
#[serde(rename_all = "snake_case")]
pub enum Device {
    #[default]
    Cpu,
    Wgpu,
    Cuda,
}

impl Device {
    /// `Ok` when this build has the device's backend; checked before any model loads.
    pub fn check(self) -> Result<()> {
        match self {
            Self::Cpu => Ok(()),
            #[cfg(feature = "cuda")]
            Self::Cuda => Ok(()),
            #[cfg(feature = "wgpu")]
            Self::Wgpu => Ok(()),
            #[allow(unreachable_patterns)]
            other => Err(StylusError::Device(format!(
                "this build has no `{}` support; rebuild with `--features {}`",
                other.name(),
                other.name()
            ))),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Cpu => "cpu",
            Self::Wgpu => "wgpu",
            Self::Cuda => "cuda",
        }
    }
}

/// The parameter dtype a model is loaded in.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::ValueEnum,
)]
#[value(rename_all = "snake_case")]
#[serde(rename_all = "snake_case")]
pub enum Dtype {
    F32,
    /// Half precision (GPU backends).
    F16,
}

impl Dtype {
    /// What a device runs by default: f32 on the CPU, f16 on a GPU.
    pub fn default_for(device: Device) -> Self {
        match device {
            Device::Cpu => Self::F32,
            Device::Cuda | Device::Wgpu => Self::F16,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::F32 => "f32",
            Self::F16 => "f16",
        }
    }
}

/// A loaded checkpoint as a sampler, and what callers need to know about its latents.
#[derive(Clone)]
pub struct LoadedSampler {
    pub sampler: Arc<dyn Sampler>,
    /// Latent channels of the VAE (4 for SD 1.x).
    pub latent_channels: usize,
    /// Pixels per latent per side (8 for SD 1.x).
    pub vae_factor: usize,
    /// What the merger's merged-set cache has done (merges, hits, bytes held).
    pub merge_stats: Arc<dyn Fn() -> MergeCacheStats + Send + Sync>,
}

/// How [`load_sampler_with`] sets up the sampler (every field off by default).
#[derive(Default, Clone)]
pub struct RenderOptions {
    /// Called after every model evaluation.
    pub progress: Option<ProgressFn>,
    /// Asked between steps; `true` stops the job with `StylusError::Cancelled`.
    pub interrupt: Option<InterruptFn>,
    /// Bytes of merged adapter sets kept besides the active one, so a repeated set is not merged
    /// again (see `LoraMerger::with_cache_budget`); 0 keeps the active set only.
    pub merge_cache_bytes: usize,
}

impl std::fmt::Debug for RenderOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RenderOptions")
            .field("progress", &self.progress.is_some())
            .field("interrupt", &self.interrupt.is_some())
            .field("merge_cache_bytes", &self.merge_cache_bytes)
            .finish()
    }
}

impl std::fmt::Debug for LoadedSampler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedSampler")
            .field("latent_channels", &self.latent_channels)
            .field("vae_factor", &self.vae_factor)
            .finish_non_exhaustive()
    }
}

/// Loads `checkpoint` (a diffusers folder or a single-file `.safetensors`) in f32 on `device`
/// with its CLIP tokenizer, and returns a sampler that merges each job's LoRAs for that job
/// alone. `progress` is called after every model evaluation.
pub fn load_sampler(
    checkpoint: &Path,
    device: Device,
    progress: Option<ProgressFn>,
) -> Result<LoadedSampler> {
    load_sampler_with(
        checkpoint,
        device,
        RenderOptions {
            progress,
            ..RenderOptions::default()
        },
    )
}

/// [`load_sampler`] with an interrupt hook and a merged-set cache (what a server needs).
pub fn load_sampler_with(
    checkpoint: &Path,
    device: Device,
    options: RenderOptions,
) -> Result<LoadedSampler> {
    device.check()?;
    match device {
        Device::Cpu => load::<stylus_diffusion::backend::CpuBackend>(
            checkpoint,
            stylus_diffusion::backend::cpu_device(),
            options,
        ),
        #[cfg(feature = "cuda")]
        Device::Cuda => load::<stylus_diffusion::backend::CudaBackend>(
            checkpoint,
            stylus_diffusion::backend::cuda_device(0)?,
            options,
        ),
        #[cfg(feature = "wgpu")]
        Device::Wgpu => load::<stylus_diffusion::backend::WgpuBackend>(
            checkpoint,
            stylus_diffusion::backend::wgpu_device()?,
            options,
        ),
        #[allow(unreachable_patterns)]
        _ => unreachable!("Device::check refused it"),
    }
}

fn load<B: Backend>(
    checkpoint: &Path,
    device: B::Device,
    options: RenderOptions,
) -> Result<LoadedSampler> {
    let (model, _report) = StableDiffusion::<B>::load(checkpoint, &device, DType::F32)?;
    let vae_factor = vae_scale_factor(&model);
    let latent_channels = model.config.vae.latent_channels;
    let tokenizer = ClipTokenizer::for_checkpoint(Some(checkpoint).filter(|path| path.is_dir()))?;
    let merger = Arc::new(
        LoraMerger::new(
            model.unet.clone(),
            &model.config.unet,
            model.text_encoder.clone(),
            &device,
        )
        .with_cache_budget(options.merge_cache_bytes),
    );
    let stats_merger = merger.clone();
    let mut sampler =
        SdSampler::new(Arc::new(Mutex::new(model)), tokenizer, device).with_merger(merger);
    if let Some(progress) = options.progress {
        sampler = sampler.with_progress(progress);
    }
    if let Some(interrupt) = options.interrupt {
        sampler = sampler.with_interrupt(interrupt);
    }
    Ok(LoadedSampler {
        sampler: Arc::new(sampler),
        latent_channels,
        vae_factor,
        merge_stats: Arc::new(move || stats_merger.cache_stats()),
    })
}
