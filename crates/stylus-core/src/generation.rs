//! Requests and results of image generation.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::WeightedAdapter;

/// An adapter given explicitly by path (`--lora FILE:W`), bypassing selection.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExplicitLora {
    pub path: PathBuf,
    pub weight: f32,
}

/// What `Stylus::generate` is asked to do.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GenerationRequest {
    pub prompt: String,
    #[serde(default)]
    pub negative_prompt: String,
    /// Number of images; with selection, image i uses mask i of the sampled masks.
    pub batch: usize,
    pub seed: u64,
    pub sampling: SamplingParams,
    /// Run selection (retrieve + compose + mask); off with `--no-select`.
    pub select: bool,
    /// Adapters added to every image, after the selected ones.
    #[serde(default)]
    pub explicit_loras: Vec<ExplicitLora>,
    /// Initial latents (safetensors, one tensor `latents` [batch, 4, h/8, w/8]).
    #[serde(default)]
    pub init_latents: Option<PathBuf>,
    /// Return the final denoised latents (before VAE decoding) with each image.
    #[serde(default)]
    pub keep_latents: bool,
}

/// Sampler settings (the paper's defaults: 35 steps, CFG 5, DPM++ 2M Karras, 512x512).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SamplingParams {
    pub steps: usize,
    pub guidance_scale: f32,
    /// Scheduler name: `ddim`, `euler`, `euler_ancestral`, `dpmpp_2m`, `dpmpp_2m_karras`, `pndm`.
    pub sampler: String,
    pub width: u32,
    pub height: u32,
    /// 1 = last CLIP layer, 2 = penultimate ("clip skip 2").
    pub clip_skip: usize,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            steps: 35,
            guidance_scale: 5.0,
            sampler: "dpmpp_2m_karras".to_string(),
            width: 512,
            height: 512,
            clip_skip: 1,
        }
    }
}

/// One call of the sampler: a prompt (A1111 emphasis allowed, no `<lora:>` tags) rendered with the
/// adapters the merger made active.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SampleJob {
    pub prompt: String,
    pub negative_prompt: String,
    /// The request's seed; image `i` of the request draws its noise from `seed + i`.
    pub seed: u64,
    /// Index in the request of this job's first image (selects seeds and initial-latent rows).
    pub first_image: usize,
    pub batch: usize,
    pub sampling: SamplingParams,
    pub init_latents: Option<PathBuf>,
    pub keep_latents: bool,
}

/// An adapter whose file was found, ready to merge.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResolvedAdapter {
    pub adapter: WeightedAdapter,
    pub path: PathBuf,
}

/// What a merge did, per adapter.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MergeReport {
    pub adapters: Vec<AdapterMergeStats>,
    /// Distinct model parameters that got new values.
    pub touched_parameters: usize,
    pub millis: f64,
}

/// Merge statistics of one adapter file.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AdapterMergeStats {
    pub path: PathBuf,
    /// Detected format (`kohya_lora`, `lycoris_lokr`, `peft`, ...).
    pub format: String,
    pub matched_modules: usize,
    /// Module names of the file that matched nothing in the model.
    pub unmatched_modules: Vec<String>,
}

/// A generated image in 8-bit RGB, with the recipe that made it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GeneratedImage {
    pub width: u32,
    pub height: u32,
    /// `width * height * 3` bytes, row-major RGB.
    #[serde(skip)]
    pub rgb: Vec<u8>,
    pub seed: u64,
    /// The A1111 prompt with `<lora:>` tags for the adapters that were on.
    pub prompt: String,
    pub negative_prompt: String,
    pub adapters: Vec<WeightedAdapter>,
    pub sampling: SamplingParams,
    /// Final denoised latents `[4, height/8, width/8]`, when asked for.
    #[serde(skip)]
    pub latents: Option<Vec<f32>>,
}
