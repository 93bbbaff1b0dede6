//! Text-to-image sampling with classifier-free guidance: [`SdSampler`] implements
//! stylus-core's [`Sampler`] on a [`StableDiffusion`] model that a merger may change between
//! jobs.
//!
//! One job: the prompt and the negative prompt go through A1111's emphasis and chunking
//! ([`crate::prompt_weights`]) and the text encoder; each step runs the UNet ONCE on the batch
//! `[uncond x batch, cond x batch]` (diffusers' order) and combines
//! `uncond + scale * (cond - uncond)`; the scheduler ([`crate::schedulers`]) advances the latents
//! on the host; the VAE decodes `latents / scaling_factor` and the result becomes 8-bit RGB like
//! diffusers' `numpy_to_pil` (`round(clamp(x / 2 + 0.5, 0, 1) * 255)`).
//!
//! Randomness: image `i` of a request draws its initial latents, then any ancestral noise, from
//! `SplitMix64::new(seed + i)`, so an image does not depend on the batch it was rendered in.
//! Initial latents may come from a safetensors file instead (one f32 tensor `latents`
//! `[n, 4, h, w]`; the job takes rows `first_image..first_image + batch`), and they are scaled by
//! the scheduler's `init_noise_sigma` exactly as diffusers scales the `latents` argument.
//!
//! img2img and inpainting ([`SampleJob::init_image`]): [`start_from_image`] fits and encodes the
//! image and noises it to the step the strength picks, [`denoise_with`] runs the remaining steps
//! (blending the image back outside the mask for regular UNets, or feeding mask and masked-image
//! latents to a 9-channel inpainting UNet), and an inpainted result is pasted over the original
//! with the blurred mask. Each image's stream draws the start noise first, then the VAE posterior
//! samples, so strength 1 gives the txt2img image of the same seed.

use std::path::Path;
use std::sync::{Arc, Mutex};

use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};
use stylus_core::rng::SplitMix64;
use stylus_core::{GeneratedImage, InitImage, Result, SampleJob, Sampler, StylusError};

use crate::checkpoint::StableDiffusion;
use crate::clip_tokenizer::{CONTEXT_LENGTH, ClipTokenizer};
use crate::image_input;
use crate::lora::LoraMerger;
use crate::prompt_weights::{PromptChunk, apply_emphasis, prompt_chunks};
use crate::schedulers::{ScheduleConfig, Scheduler, scheduler_by_name};

/// The tensor name in latents files.
pub const LATENTS_KEY: &str = "latents";

/// Text-encoder outputs for one CFG pair, each `[tokens, width]` row-major on the host.
#[derive(Debug, Clone, PartialEq)]
pub struct PromptPair {
    /// The negative prompt's conditioning.
    pub uncond: Vec<f32>,
    /// The prompt's conditioning.
    pub cond: Vec<f32>,
    /// Sequence length: 77 per chunk.
    pub tokens: usize,
    /// Hidden size of the text encoder.
    pub width: usize,
}

/// The shape of a latent batch `[batch, channels, height, width]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LatentShape {
    pub batch: usize,
    pub channels: usize,
    pub height: usize,
    pub width: usize,
}

impl LatentShape {
    /// Values per image.
    pub fn per_image(&self) -> usize {
        self.channels * self.height * self.width
    }

    /// Values in the batch.
    pub fn len(&self) -> usize {
        self.batch * self.per_image()
    }

    /// Whether the batch holds no values.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn dims(&self, batch: usize) -> [usize; 4] {
        [batch, self.channels, self.height, self.width]
    }
}

/// Where sampling is, for progress bars.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SamplingProgress {
    /// Index in the request of the job's first image.
    pub first_image: usize,
    /// Images in the job.
    pub batch: usize,
    /// Model evaluations done.
    pub step: usize,
    /// Model evaluations in total.
    pub steps: usize,
}

/// A progress callback.
pub type ProgressFn = Arc<dyn Fn(SamplingProgress) + Send + Sync>;

/// Asked before the merge, after every model evaluation and before each decode: `true` stops
/// the job with [`StylusError::Cancelled`] (a server's interrupt or a closed connection).
pub type InterruptFn = Arc<dyn Fn() -> bool + Send + Sync>;

/// txt2img on an SD model; with a [`LoraMerger`], each job renders with its own adapter set
/// ([`SampleJob::adapters`]) merged for it alone ([`LoraMerger::models_for`]): merge and sample
/// are one step, and concurrent jobs never see each other's LoRAs.
pub struct SdSampler<B: Backend> {
    /// The loaded model (VAE, configs, and the networks used when there is no merger). burn
    /// modules are `Send` but not `Sync`, hence the lock.
    model: Arc<Mutex<StableDiffusion<B>>>,
    merger: Option<Arc<LoraMerger<B>>>,
    tokenizer: ClipTokenizer,
    schedule: ScheduleConfig,
    device: B::Device,
    progress: Option<ProgressFn>,
    interrupt: Option<InterruptFn>,
}

impl<B: Backend> std::fmt::Debug for SdSampler<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SdSampler")
            .field("schedule", &self.schedule)
            .field("merger", &self.merger.is_some())
            .field("progress", &self.progress.is_some())
            .field("interrupt", &self.interrupt.is_some())
            .finish_non_exhaustive()
    }
}

impl<B: Backend> SdSampler<B> {
    /// A sampler on `model` with SD 1.5's noise schedule.
    pub fn new(
        model: Arc<Mutex<StableDiffusion<B>>>,
        tokenizer: ClipTokenizer,
        device: B::Device,
    ) -> Self {
        Self {
            model,
            merger: None,
            tokenizer,
            schedule: ScheduleConfig::sd15(),
            device,
            progress: None,
            interrupt: None,
        }
    }

    /// Merges each job's adapters with `merger` (build the merger on this model's UNet and text
    /// encoder). Without a merger, a job with adapters is refused.
    pub fn with_merger(mut self, merger: Arc<LoraMerger<B>>) -> Self {
        self.merger = Some(merger);
        self
    }

    /// Uses another training noise schedule.
    pub fn with_schedule(mut self, schedule: ScheduleConfig) -> Self {
        self.schedule = schedule;
        self
    }

    /// Calls `progress` after every model evaluation.
    pub fn with_progress(mut self, progress: ProgressFn) -> Self {
        self.progress = Some(progress);
        self
    }

    /// Stops a job when `interrupt` returns `true` (see [`InterruptFn`]).
    pub fn with_interrupt(mut self, interrupt: InterruptFn) -> Self {
        self.interrupt = Some(interrupt);
        self
    }

    fn check_interrupt(&self) -> Result<()> {
        match &self.interrupt {
            Some(interrupted) if interrupted() => {
                Err(StylusError::Cancelled("the render was interrupted".into()))
            }
            _ => Ok(()),
        }
    }

    /// The model for one job: the base networks with the job's adapters merged in (clones share
    /// tensor storage; the job owns them).
    fn job_model(&self, job: &SampleJob) -> Result<StableDiffusion<B>> {
        let (text_encoder, unet) = match &self.merger {
            Some(merger) => {
                let models = merger.models_for(&crate::lora::merger::strengths(&job.adapters))?;
                (models.text_encoder, models.unet)
            }
            None if !job.adapters.is_empty() => {
                return Err(StylusError::MissingStage("merger"));
            }
            None => {
                let model = self.lock_model()?;
                (model.text_encoder.clone(), model.unet.clone())
            }
        };
        let model = self.lock_model()?;
        Ok(StableDiffusion {
            text_encoder,
            unet,
            vae: model.vae.clone(),
            config: model.config.clone(),
        })
    }
}

impl<B: Backend> SdSampler<B> {
    fn lock_model(&self) -> Result<std::sync::MutexGuard<'_, StableDiffusion<B>>> {
        self.model
            .lock()
            .map_err(|_| StylusError::Device("the model lock was poisoned by a panic".into()))
    }
}

impl<B: Backend> Sampler for SdSampler<B> {
    fn sample(&self, job: &SampleJob) -> Result<Vec<GeneratedImage>> {
        let params = &job.sampling;
        // Checked before any merge.
        params.validate()?;
        self.check_interrupt()?;
        let model = self.job_model(job)?;
        let factor = vae_scale_factor(&model);
        let shape = latent_shape(job, factor, model.config.vae.latent_channels)?;
        let mut scheduler = scheduler_by_name(&params.sampler, &self.schedule, params.steps)?;
        let pair = encode_prompt_pair(
            &model,
            &self.tokenizer,
            &job.prompt,
            &job.negative_prompt,
            params.clip_skip,
            &self.device,
        )?;
        let mut rngs: Vec<SplitMix64> = (0..job.batch)
            .map(|i| SplitMix64::new(job.seed.wrapping_add((job.first_image + i) as u64)))
            .collect();
        let unet_channels = model.config.unet.in_channels;
        let (latents, options, paste) = match &job.init_image {
            Some(init) => {
                if job.init_latents.is_some() {
                    return Err(StylusError::InvalidArgument(
                        "--init-image and --latents both set the starting latents; give one".into(),
                    ));
                }
                let start = start_from_image(
                    &model,
                    init,
                    scheduler.as_ref(),
                    params.steps,
                    shape,
                    &mut |_| gaussian_latents(&mut rngs, shape.per_image()),
                    &self.device,
                )?;
                (start.latents, start.options, start.paste)
            }
            None => {
                if unet_channels != shape.channels {
                    return Err(inpaint_model_needs_mask(unet_channels));
                }
                let initial = match &job.init_latents {
                    Some(path) => read_latents(path, shape, job.first_image)?,
                    None => gaussian_latents(&mut rngs, shape.per_image()),
                };
                let sigma = scheduler.init_noise_sigma();
                let latents = initial
                    .iter()
                    .map(|&v| (f64::from(v) * sigma) as f32)
                    .collect();
                (latents, DenoiseOptions::default(), None)
            }
        };
        let steps = scheduler.timesteps().len() - options.start.min(scheduler.timesteps().len());
        let mut on_step = |step: usize, _: &[f32]| {
            if let Some(progress) = &self.progress {
                progress(SamplingProgress {
                    first_image: job.first_image,
                    batch: job.batch,
                    step: step + 1,
                    steps,
                });
            }
            self.check_interrupt()
        };
        let latents = denoise_with(
            &model,
            scheduler.as_mut(),
            &pair,
            latents,
            shape,
            f64::from(params.guidance_scale),
            &mut rngs,
            &self.device,
            &options,
            &mut on_step,
        )?;
        let mut images = Vec::with_capacity(job.batch);
        for (i, image_latents) in latents.chunks(shape.per_image()).enumerate() {
            self.check_interrupt()?;
            let one = LatentShape { batch: 1, ..shape };
            let decoded = decode(&model, image_latents, one, &self.device)?;
            let mut rgb = to_rgb8(&decoded, (shape.height * factor) * (shape.width * factor));
            if let Some((original, mask)) = &paste {
                image_input::overlay(&mut rgb, original, &mask.soft);
            }
            images.push(GeneratedImage {
                width: params.width,
                height: params.height,
                rgb,
                seed: job.seed.wrapping_add((job.first_image + i) as u64),
                prompt: job.prompt.clone(),
                negative_prompt: job.negative_prompt.clone(),
                adapters: Vec::new(),
                sampling: params.clone(),
                latents: job.keep_latents.then(|| image_latents.to_vec()),
                init_image: job.init_image.clone(),
            });
        }
        Ok(images)
    }
}

fn inpaint_model_needs_mask(unet_channels: usize) -> StylusError {
    StylusError::InvalidArgument(format!(
        "the checkpoint's UNet takes {unet_channels} input channels: an inpainting model, which \
         needs --init-image and --mask (or use a regular checkpoint)"
    ))
}

/// The starting point of an img2img / inpainting job.
#[derive(Debug, Clone)]
pub struct ImageStart {
    /// The initial latents (noised image, or pure noise at strength 1).
    pub latents: Vec<f32>,
    /// The first step and the inpainting inputs for [`denoise_with`].
    pub options: DenoiseOptions,
    /// The fitted init image and mask, for pasting the result over the original (inpainting).
    pub paste: Option<(image_input::RgbImage, image_input::PreparedMask)>,
}

/// Which N(0, 1) tensor [`start_from_image`] asks for, in the order it asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Draw {
    /// The noise the image is noised with (the initial latents at strength 1).
    Noise,
    /// The VAE posterior sample of the init image (below strength 1; always for 4-channel
    /// inpainting).
    ImagePosterior,
    /// The VAE posterior sample of the masked image (9-channel inpainting).
    MaskedImagePosterior,
}

/// diffusers' img2img / inpainting `prepare_latents` (+ `prepare_mask_latents`): loads and fits
/// the image (and mask), VAE-encodes what is needed, and noises the image to the first step
/// that `init.strength` picks over `steps` steps. `draw` supplies each N(0, 1) tensor
/// (`[batch, 4, h, w]`); the sampler draws them from each image's seeded stream in [`Draw`]'s
/// order (noise first, so strength 1 is txt2img with the same seed).
pub fn start_from_image<B: Backend>(
    model: &StableDiffusion<B>,
    init: &InitImage,
    scheduler: &dyn Scheduler,
    steps: usize,
    shape: LatentShape,
    draw: &mut dyn FnMut(Draw) -> Vec<f32>,
    device: &B::Device,
) -> Result<ImageStart> {
    let factor = vae_scale_factor(model);
    init.validate()?;
    let unet_channels = model.config.unet.in_channels;
    let inpainting_unet = unet_channels == 2 * shape.channels + 1;
    if !inpainting_unet && unet_channels != shape.channels {
        return Err(StylusError::InvalidArgument(format!(
            "the UNet takes {unet_channels} input channels; expected {} (regular) or {} \
             (inpainting)",
            shape.channels,
            2 * shape.channels + 1
        )));
    }
    if inpainting_unet && init.mask.is_none() {
        return Err(inpaint_model_needs_mask(unet_channels));
    }
    if init.inpaint_model && !inpainting_unet {
        return Err(StylusError::InvalidArgument(format!(
            "--inpaint-model: the checkpoint's UNet takes {unet_channels} input channels, a \
             regular model; an inpainting checkpoint's takes {}",
            2 * shape.channels + 1
        )));
    }
    let (width, height) = (shape.width * factor, shape.height * factor);
    let input = image_input::Input::new(&init.path, init.bytes.as_ref());
    let source_size = image_input::probe(input)?;
    let image = image_input::prepare_image(input, width as u32, height as u32, init.resize_mode)?;
    let planar = image.to_planar_signed();
    let mask = init
        .mask
        .as_ref()
        .map(|m| {
            image_input::prepare_mask(
                image_input::Input::new(&m.path, m.bytes.as_ref()),
                source_size,
                (width as u32, height as u32),
                init.resize_mode,
                m.blur,
                m.resize,
                m.invert,
            )
        })
        .transpose()?;
    let timesteps = scheduler.timesteps().len();
    // `get_timesteps` counts the requested steps (PNDM has one timestep more).
    let start = crate::schedulers::img2img_start(steps, init.strength).min(timesteps);
    let strength_max = init.strength >= 1.0;
    let mut draw = |what: Draw| -> Result<Vec<f32>> {
        let values = draw(what);
        if values.len() != shape.len() {
            return Err(StylusError::InvalidArgument(format!(
                "{what:?}: {} values drawn for a batch of {shape:?}",
                values.len()
            )));
        }
        Ok(values)
    };
    let noise = draw(Draw::Noise)?;
    // The init image's latents: the starting point below strength 1, and what 4-channel
    // inpainting blends back outside the mask.
    let needs_image = !strength_max || (mask.is_some() && !inpainting_unet);
    let image_latents = if needs_image {
        let eps = draw(Draw::ImagePosterior)?;
        Some(encode_image_latents(model, &planar, &eps, shape, device)?)
    } else {
        None
    };
    let latents = match &image_latents {
        Some(clean) if !strength_max && start < timesteps => {
            scheduler.add_noise(start, clean, &noise)?
        }
        Some(clean) if !strength_max => clean.clone(),
        // Strength 1: pure noise, as diffusers' inpainting pipeline starts (`is_strength_max`).
        _ => {
            let sigma = scheduler.init_noise_sigma();
            noise
                .iter()
                .map(|&v| (f64::from(v) * sigma) as f32)
                .collect()
        }
    };
    let inpaint = match &mask {
        None => None,
        Some(mask) => {
            let plane = image_input::latent_mask(&mask.binary, width, height, factor);
            let masks: Vec<f32> = (0..shape.batch)
                .flat_map(|_| plane.iter().copied())
                .collect();
            if inpainting_unet {
                let masked = image_input::masked_planar(&planar, &mask.binary);
                let eps = draw(Draw::MaskedImagePosterior)?;
                Some(InpaintLatents {
                    mask: masks,
                    image_latents: Vec::new(),
                    noise: Vec::new(),
                    masked_image_latents: Some(encode_image_latents(
                        model, &masked, &eps, shape, device,
                    )?),
                })
            } else {
                Some(InpaintLatents {
                    mask: masks,
                    image_latents: image_latents.clone().unwrap_or_default(),
                    noise: noise.clone(),
                    masked_image_latents: None,
                })
            }
        }
    };
    let paste = mask.map(|mask| (image, mask));
    Ok(ImageStart {
        latents,
        options: DenoiseOptions { start, inpaint },
        paste,
    })
}

/// VAE-encodes one image (planar `[3, H, W]` in [-1, 1]) and draws a posterior sample per image
/// of the batch, `(mean + exp(logvar / 2) * eps) * scaling_factor` with `eps` `[batch, 4, h, w]`
/// (diffusers' `latent_dist.sample() * scaling_factor`).
pub fn encode_image_latents<B: Backend>(
    model: &StableDiffusion<B>,
    planar: &[f32],
    eps: &[f32],
    shape: LatentShape,
    device: &B::Device,
) -> Result<Vec<f32>> {
    let factor = vae_scale_factor(model);
    let (height, width) = (shape.height * factor, shape.width * factor);
    if planar.len() != 3 * height * width || eps.len() != shape.len() {
        return Err(StylusError::InvalidArgument(format!(
            "encode: {} pixel values and {} noise values for a batch of {shape:?}",
            planar.len(),
            eps.len()
        )));
    }
    let input = Tensor::<B, 4>::from_data(
        TensorData::new(planar.to_vec(), [1, 3, height, width]),
        device,
    );
    let posterior = model.vae.encode(input);
    let mean = to_host(posterior.mean)?;
    let logvar = to_host(posterior.logvar)?;
    let scaling = model.vae.scaling_factor as f32;
    Ok(eps
        .chunks(shape.per_image())
        .flat_map(|eps| {
            eps.iter()
                .zip(mean.iter().zip(&logvar))
                .map(|(&e, (&m, &lv))| (m + (0.5 * lv).exp() * e) * scaling)
                .collect::<Vec<_>>()
        })
        .collect())
}

/// How many pixels one latent covers per side: 2^(VAE levels - 1), 8 for SD 1.x.
pub fn vae_scale_factor<B: Backend>(model: &StableDiffusion<B>) -> usize {
    1 << model.config.vae.block_out_channels.len().saturating_sub(1)
}

fn latent_shape(job: &SampleJob, factor: usize, channels: usize) -> Result<LatentShape> {
    let params = &job.sampling;
    params.validate()?;
    let (width, height) = (params.width as usize, params.height as usize);
    let fits = |side: usize| side > 0 && side.is_multiple_of(8) && side.is_multiple_of(factor);
    if !fits(width) || !fits(height) {
        return Err(StylusError::InvalidArgument(format!(
            "width and height must be positive multiples of 8 (and of the VAE factor {factor}), got {width}x{height}"
        )));
    }
    if job.batch == 0 {
        return Err(StylusError::InvalidArgument(
            "batch must be at least 1".into(),
        ));
    }
    if !params.guidance_scale.is_finite() {
        return Err(StylusError::InvalidArgument(format!(
            "guidance scale must be finite, got {}",
            params.guidance_scale
        )));
    }
    Ok(LatentShape {
        batch: job.batch,
        channels,
        height: height / factor,
        width: width / factor,
    })
}

/// N(0, 1) latents, image after image, each from its own stream.
fn gaussian_latents(rngs: &mut [SplitMix64], per_image: usize) -> Vec<f32> {
    rngs.iter_mut()
        .flat_map(|rng| {
            (0..per_image)
                .map(|_| rng.normal() as f32)
                .collect::<Vec<_>>()
        })
        .collect()
}

/// Encodes the prompt and the negative prompt (A1111 syntax) into one CFG pair; the shorter one
/// is padded with empty-prompt chunks so both have the same length (A1111's padding).
pub fn encode_prompt_pair<B: Backend>(
    model: &StableDiffusion<B>,
    tokenizer: &ClipTokenizer,
    prompt: &str,
    negative_prompt: &str,
    clip_skip: usize,
    device: &B::Device,
) -> Result<PromptPair> {
    let cond = prompt_chunks(tokenizer, prompt);
    let uncond = prompt_chunks(tokenizer, negative_prompt);
    encode_chunk_pair(model, &uncond, &cond, clip_skip, device)
}

/// Encodes two chunk lists (negative first) in one text-encoder call and applies emphasis.
pub fn encode_chunk_pair<B: Backend>(
    model: &StableDiffusion<B>,
    uncond: &[PromptChunk],
    cond: &[PromptChunk],
    clip_skip: usize,
    device: &B::Device,
) -> Result<PromptPair> {
    let count = uncond.len().max(cond.len()).max(1);
    let pad = |chunks: &[PromptChunk]| {
        let mut chunks = chunks.to_vec();
        chunks.resize(count, PromptChunk::empty());
        chunks
    };
    let all: Vec<PromptChunk> = pad(uncond).into_iter().chain(pad(cond)).collect();
    let vocab = model.config.text_encoder.vocab_size;
    let mut ids = Vec::with_capacity(all.len() * CONTEXT_LENGTH);
    for chunk in &all {
        for &id in &chunk.ids {
            if id as usize >= vocab {
                return Err(StylusError::InvalidArgument(format!(
                    "token id {id} is outside the text encoder's vocabulary ({vocab} tokens): \
                     the checkpoint's CLIP does not match the CLIP tokenizer"
                )));
            }
            ids.push(i64::from(id));
        }
    }
    let clip_skip = u32::try_from(clip_skip)
        .map_err(|_| StylusError::InvalidArgument(format!("clip skip {clip_skip} is too large")))?;
    let ids =
        Tensor::<B, 2, Int>::from_data(TensorData::new(ids, [all.len(), CONTEXT_LENGTH]), device);
    let hidden = model.text_encoder.encode(ids, clip_skip)?;
    let [_, _, width] = hidden.dims();
    let mut values = to_host(hidden)?;
    for (chunk, output) in all.iter().zip(values.chunks_mut(CONTEXT_LENGTH * width)) {
        apply_emphasis(output, &chunk.weights, width);
    }
    let half = count * CONTEXT_LENGTH * width;
    let cond = values.split_off(half);
    Ok(PromptPair {
        uncond: values,
        cond,
        tokens: count * CONTEXT_LENGTH,
        width,
    })
}

/// Runs every step of `scheduler` from `latents` (already scaled by `init_noise_sigma`) and
/// returns the final latents. `guidance_scale > 1` batches `[uncond, cond]` in one UNet call per
/// step; otherwise only the prompt is evaluated (as diffusers does). `rngs` (one per image)
/// supply ancestral noise. `on_step(i, latents)` sees the latents after step `i`; an error from
/// it stops the loop (an interrupt) and is returned.
#[allow(clippy::too_many_arguments)] // one explicit input per sampling ingredient
pub fn denoise<B: Backend>(
    model: &StableDiffusion<B>,
    scheduler: &mut dyn Scheduler,
    pair: &PromptPair,
    latents: Vec<f32>,
    shape: LatentShape,
    guidance_scale: f64,
    rngs: &mut [SplitMix64],
    device: &B::Device,
    on_step: &mut dyn FnMut(usize, &[f32]) -> Result<()>,
) -> Result<Vec<f32>> {
    denoise_with(
        model,
        scheduler,
        pair,
        latents,
        shape,
        guidance_scale,
        rngs,
        device,
        &DenoiseOptions::default(),
        on_step,
    )
}

/// Inpainting inputs at latent resolution, per image of the batch.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct InpaintLatents {
    /// `[batch, 1, h, w]`: 1 = repaint.
    pub mask: Vec<f32>,
    /// 4-channel UNets: the init image's latents `[batch, 4, h, w]` (scaled), blended back
    /// outside the mask after every step, re-noised to the next step's level with `noise`
    /// (diffusers' `StableDiffusionInpaintPipeline` for `unet.in_channels == 4`).
    pub image_latents: Vec<f32>,
    /// The N(0, 1) noise the initial latents were made with (`[batch, 4, h, w]`).
    pub noise: Vec<f32>,
    /// 9-channel (inpainting) UNets: the latents of the image with the masked area grey
    /// `[batch, 4, h, w]` (scaled), given to the UNet with the mask as extra input channels.
    pub masked_image_latents: Option<Vec<f32>>,
}

/// Where [`denoise_with`] starts and what it conditions on besides the prompt.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DenoiseOptions {
    /// The first timestep index (img2img: [`crate::schedulers::img2img_start`]).
    pub start: usize,
    pub inpaint: Option<InpaintLatents>,
}

/// [`denoise`] from step `options.start` on, with inpainting inputs when given. `on_step(i, ..)`
/// counts the steps run, from 0.
#[allow(clippy::too_many_arguments)] // one explicit input per sampling ingredient
pub fn denoise_with<B: Backend>(
    model: &StableDiffusion<B>,
    scheduler: &mut dyn Scheduler,
    pair: &PromptPair,
    mut latents: Vec<f32>,
    shape: LatentShape,
    guidance_scale: f64,
    rngs: &mut [SplitMix64],
    device: &B::Device,
    options: &DenoiseOptions,
    on_step: &mut dyn FnMut(usize, &[f32]) -> Result<()>,
) -> Result<Vec<f32>> {
    if latents.len() != shape.len() || rngs.len() != shape.batch {
        return Err(StylusError::InvalidArgument(format!(
            "denoise: {} latent values and {} noise streams for a batch of {:?}",
            latents.len(),
            rngs.len(),
            shape
        )));
    }
    let unet_channels = model.config.unet.in_channels;
    let plane = shape.height * shape.width;
    let inpaint = options.inpaint.as_ref();
    if let Some(inpaint) = inpaint {
        let blend = inpaint.masked_image_latents.is_none();
        let bad = inpaint.mask.len() != shape.batch * plane
            || (blend
                && (inpaint.image_latents.len() != shape.len()
                    || inpaint.noise.len() != shape.len()))
            || inpaint
                .masked_image_latents
                .as_ref()
                .is_some_and(|m| m.len() != shape.len());
        if bad {
            return Err(StylusError::InvalidArgument(format!(
                "denoise: inpainting inputs do not fit a batch of {shape:?}"
            )));
        }
    }
    let extra = match inpaint {
        Some(InpaintLatents {
            masked_image_latents: Some(_),
            ..
        }) => 1 + shape.channels,
        _ => 0,
    };
    if unet_channels != shape.channels + extra {
        return Err(StylusError::InvalidArgument(format!(
            "the UNet takes {unet_channels} input channels, but {} latent channels{} are given \
             (an inpainting UNet takes latents + mask + masked-image latents)",
            shape.channels,
            if extra > 0 {
                " + mask + masked image"
            } else {
                ""
            }
        )));
    }
    let guided = guidance_scale > 1.0;
    let context = batch_context(pair, shape.batch, guided, device);
    let timesteps = scheduler.timesteps().to_vec();
    let start = options.start.min(timesteps.len());
    let per_image = shape.per_image();
    for (run, (index, &t)) in timesteps.iter().enumerate().skip(start).enumerate() {
        let scale = scheduler.model_input_scale(index);
        let scaled: Vec<f32> = latents
            .iter()
            .map(|&v| (f64::from(v) * scale) as f32)
            .collect();
        let rows = if guided { 2 * shape.batch } else { shape.batch };
        let input = match inpaint.and_then(|i| i.masked_image_latents.as_ref().map(|m| (i, m))) {
            // diffusers' `cat([scaled latents, mask, masked_image_latents], dim=1)`, the
            // conditioning repeated for the uncond half.
            Some((inpaint, masked)) => {
                let mut input = Vec::with_capacity(rows * unet_channels * plane);
                for row in 0..rows {
                    let image = row % shape.batch;
                    input.extend_from_slice(&scaled[image * per_image..(image + 1) * per_image]);
                    input.extend_from_slice(&inpaint.mask[image * plane..(image + 1) * plane]);
                    input.extend_from_slice(&masked[image * per_image..(image + 1) * per_image]);
                }
                input
            }
            None if guided => [scaled.as_slice(), scaled.as_slice()].concat(),
            None => scaled,
        };
        let input = Tensor::<B, 4>::from_data(
            TensorData::new(input, [rows, unet_channels, shape.height, shape.width]),
            device,
        );
        let prediction = to_host(model.unet.forward(input, t as f32, context.clone()))?;
        let noise_pred: Vec<f32> = if guided {
            let (uncond, cond) = prediction.split_at(shape.len());
            uncond
                .iter()
                .zip(cond)
                .map(|(&u, &c)| u + guidance_scale as f32 * (c - u))
                .collect()
        } else {
            prediction
        };
        let noise = scheduler
            .needs_noise()
            .then(|| gaussian_latents(rngs, shape.per_image()));
        latents = scheduler.step(index, &noise_pred, &latents, noise.as_deref())?;
        if let Some(inpaint) = inpaint.filter(|i| i.masked_image_latents.is_none()) {
            // Outside the mask, the image itself at the next step's noise level.
            let known = if index + 1 < timesteps.len() {
                scheduler.add_noise(index + 1, &inpaint.image_latents, &inpaint.noise)?
            } else {
                inpaint.image_latents.clone()
            };
            for (i, value) in latents.iter_mut().enumerate() {
                let image = i / per_image;
                let m = inpaint.mask[image * plane + i % plane];
                *value = (1.0 - m) * known[i] + m * *value;
            }
        }
        on_step(run, &latents)?;
    }
    Ok(latents)
}

/// `[uncond x batch, cond x batch]` (or `cond x batch` without guidance) as a tensor.
fn batch_context<B: Backend>(
    pair: &PromptPair,
    batch: usize,
    guided: bool,
    device: &B::Device,
) -> Tensor<B, 3> {
    let mut values = Vec::with_capacity((1 + usize::from(guided)) * batch * pair.cond.len());
    if guided {
        for _ in 0..batch {
            values.extend_from_slice(&pair.uncond);
        }
    }
    for _ in 0..batch {
        values.extend_from_slice(&pair.cond);
    }
    let rows = values.len() / (pair.tokens * pair.width);
    Tensor::from_data(
        TensorData::new(values, [rows, pair.tokens, pair.width]),
        device,
    )
}

/// Decodes latents with the VAE into images in [0, 1], `[batch, 3, H, W]` row-major (diffusers'
/// `postprocess` before the 8-bit conversion).
pub fn decode<B: Backend>(
    model: &StableDiffusion<B>,
    latents: &[f32],
    shape: LatentShape,
    device: &B::Device,
) -> Result<Vec<f32>> {
    let input = Tensor::<B, 4>::from_data(
        TensorData::new(latents.to_vec(), shape.dims(shape.batch)),
        device,
    );
    let images = to_host(model.vae.decode_latents(input))?;
    Ok(images
        .iter()
        .map(|&x| (x / 2.0 + 0.5).clamp(0.0, 1.0))
        .collect())
}

/// Planar `[3, H, W]` floats in [0, 1] to interleaved 8-bit RGB (`round(x * 255)`, half to even
/// like numpy).
pub fn to_rgb8(planar: &[f32], pixels: usize) -> Vec<u8> {
    let mut rgb = vec![0u8; pixels * 3];
    for channel in 0..3 {
        for (p, &x) in planar[channel * pixels..(channel + 1) * pixels]
            .iter()
            .enumerate()
        {
            rgb[p * 3 + channel] = (x * 255.0).round_ties_even() as u8;
        }
    }
    rgb
}

fn to_host<B: Backend, const D: usize>(tensor: Tensor<B, D>) -> Result<Vec<f32>> {
    tensor
        .into_data()
        .convert::<f32>()
        .to_vec::<f32>()
        .map_err(|e| StylusError::Device(format!("reading a tensor back: {e:?}")))
}

/// Reads rows `first..first + shape.batch` of the `latents` tensor of a safetensors file.
pub fn read_latents(path: &Path, shape: LatentShape, first: usize) -> Result<Vec<f32>> {
    let bytes = std::fs::read(path).map_err(|e| StylusError::io(path, e))?;
    let tensors =
        safetensors::SafeTensors::deserialize(&bytes).map_err(|e| StylusError::Safetensors {
            path: path.to_path_buf(),
            message: e.to_string(),
            source: Some(Box::new(e)),
        })?;
    let view = tensors.tensor(LATENTS_KEY).map_err(|_| {
        StylusError::tensor(
            path,
            LATENTS_KEY,
            "missing: a latents file holds one f32 tensor `latents`",
        )
    })?;
    if view.dtype() != safetensors::Dtype::F32 {
        return Err(StylusError::tensor(
            path,
            LATENTS_KEY,
            format!("dtype {:?}, expected F32", view.dtype()),
        ));
    }
    let dims = view.shape();
    let expected = [shape.channels, shape.height, shape.width];
    if dims.len() != 4 || dims[1..] != expected {
        return Err(StylusError::tensor(
            path,
            LATENTS_KEY,
            format!(
                "shape {dims:?}, expected [n, {}, {}, {}] for this size",
                expected[0], expected[1], expected[2]
            ),
        ));
    }
    if dims[0] < first + shape.batch {
        return Err(StylusError::tensor(
            path,
            LATENTS_KEY,
            format!(
                "{} rows, but images {}..{} need them",
                dims[0],
                first,
                first + shape.batch
            ),
        ));
    }
    let per_image = shape.per_image() * 4;
    let data = &view.data()[first * per_image..(first + shape.batch) * per_image];
    let values: Vec<f32> = data
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    if let Some(bad) = values.iter().position(|v| !v.is_finite()) {
        return Err(StylusError::tensor(
            path,
            LATENTS_KEY,
            format!("value {bad} is not finite"),
        ));
    }
    Ok(values)
}

/// Writes latents `[n, c, h, w]` as a safetensors file with one f32 tensor `latents`.
pub fn write_latents(path: &Path, values: &[f32], dims: [usize; 4]) -> Result<()> {
    if dims.iter().product::<usize>() != values.len() {
        return Err(StylusError::InvalidArgument(format!(
            "{} latent values do not fill a {dims:?} tensor",
            values.len()
        )));
    }
    let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    let view = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, dims.to_vec(), &bytes)
        .map_err(|e| StylusError::Safetensors {
            path: path.to_path_buf(),
            message: e.to_string(),
            source: Some(Box::new(e)),
        })?;
    let file = safetensors::serialize([(LATENTS_KEY, view)], None).map_err(|e| {
        StylusError::Safetensors {
            path: path.to_path_buf(),
            message: e.to_string(),
            source: Some(Box::new(e)),
        }
    })?;
    std::fs::write(path, file).map_err(|e| StylusError::io(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rgb8_rounds_and_interleaves() {
        // 2 pixels, planar R, G, B; 127.5 rounds to 128, 63.75 to 64.
        let planar = [0.0, 1.0, 0.5, 0.25, 0.75, 0.2];
        assert_eq!(to_rgb8(&planar, 2), vec![0, 128, 191, 255, 64, 51]);
    }

    #[test]
    fn latents_file_round_trips_and_bad_files_name_the_tensor() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("l.safetensors");
        let values: Vec<f32> = (0..2 * 4 * 2 * 3).map(|v| v as f32).collect();
        write_latents(&path, &values, [2, 4, 2, 3]).unwrap();
        let shape = LatentShape {
            batch: 1,
            channels: 4,
            height: 2,
            width: 3,
        };
        assert_eq!(
            read_latents(&path, shape, 1).unwrap(),
            values[24..].to_vec()
        );
        let err = read_latents(&path, LatentShape { batch: 2, ..shape }, 1)
            .unwrap_err()
            .to_string();
        assert!(err.contains("latents") && err.contains("2 rows"), "{err}");
        let err = read_latents(&path, LatentShape { width: 4, ..shape }, 0)
            .unwrap_err()
            .to_string();
        assert!(err.contains("shape"), "{err}");
    }
}
