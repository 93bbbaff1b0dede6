//! `stylus generate`: (select +) merge + SD 1.5 sampling -> `NNNN.png` with A1111 parameters and
//! a `plan.json` beside them.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use stylus::render::{Device, load_sampler};
use stylus::{Source, Stylus};
use stylus_core::{
    AdapterId, AdapterLocator, ExplicitLora, GenerationRequest, InitImage, InpaintMask, ResizeMode,
    SamplerKind, SamplingParams, StylusConfig, StylusError, WeightedAdapter,
};
use stylus_diffusion::png::{
    LoraHash, ModelInfo, a1111_parameters, lora_short_hash, model_short_hash, write_png,
};
use stylus_diffusion::sampler::{SamplingProgress, write_latents};
use stylus_fetch::{FetchConfig, Fetcher, FetchingLocator};
use stylus_refiner::locator::FolderLocator;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// SD 1.5 checkpoint: a diffusers folder, a single-file .safetensors, or a Hugging Face hub
    /// repo `hf:org/name[@revision]` (diffusers layout; `hf:org/name/file.safetensors` for a
    /// single file), found in or downloaded into the hub cache (HF_HUB_CACHE / HF_HOME).
    #[arg(long, value_name = "PATH|hf:REPO")]
    pub checkpoint: PathBuf,
    /// Hub checkpoints: fetch the `.fp16.safetensors` weights (half the download; run in f32).
    #[arg(long)]
    pub fp16_variant: bool,
    /// StylusDocs store directory (default: the bundled catalog).
    #[arg(long, value_name = "DIR")]
    pub index: Option<PathBuf>,
    /// Folder with the LoRA files of the selected adapters.
    #[arg(long, value_name = "DIR")]
    pub lora_dir: Option<PathBuf>,
    /// An explicit LoRA, `FILE[:WEIGHT]` (repeatable, weight 1 when left out); disables
    /// selection. Without it (and without --no-select) adapters are selected from --index (or
    /// the bundled catalog) with the local composer and looked up in --lora-dir.
    #[arg(long, value_name = "FILE[:W]")]
    pub lora: Vec<String>,
    /// Skip adapter selection.
    #[arg(long)]
    pub no_select: bool,
    /// Download the selected adapters that --lora-dir lacks (the catalog's download URLs,
    /// CIVITAI_API_KEY for gated files) into the adapter cache, verified, then render.
    #[arg(long)]
    pub fetch: bool,
    /// No network: adapters and hub checkpoints come from local folders and caches only (also
    /// STYLUS_OFFLINE=1, HF_HUB_OFFLINE=1).
    #[arg(long)]
    pub offline: bool,
    #[command(flatten)]
    pub cache: super::fetch::CacheArgs,
    /// Number of images (1..=256).
    #[arg(long, default_value_t = 1, value_parser = super::usize_in(stylus_core::limits::BATCH))]
    pub batch: usize,
    /// Sampling steps (default: the config's, 35).
    #[arg(long)]
    pub steps: Option<usize>,
    /// Classifier-free guidance scale (default: the config's, 5).
    #[arg(long)]
    pub cfg: Option<f32>,
    /// Sampler (default: the config's, dpmpp_2m_karras).
    #[arg(long, value_enum)]
    pub sampler: Option<SamplerKind>,
    /// Image width in pixels, a multiple of 8 (default: the config's, 512).
    #[arg(long)]
    pub width: Option<u32>,
    /// Image height in pixels, a multiple of 8 (default: the config's, 512).
    #[arg(long)]
    pub height: Option<u32>,
    /// CLIP skip: 1 = last layer, 2 = penultimate (default: the config's, 1).
    #[arg(long)]
    pub clip_skip: Option<usize>,
    /// Seed; image i uses seed + i.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Negative prompt: what the images should not show (e.g. "blurry, low quality").
    #[arg(long, default_value = "")]
    pub negative: String,
    /// Initial latents: safetensors with one tensor `latents` [batch, 4, h/8, w/8].
    #[arg(long, value_name = "FILE")]
    pub latents: Option<PathBuf>,
    /// img2img: start from this image (PNG or JPEG) instead of pure noise. It is fitted to
    /// --width x --height as --resize-mode says; alpha is composited on white, a JPEG's EXIF
    /// orientation applied. Not together with --latents.
    #[arg(long, value_name = "FILE", conflicts_with = "latents")]
    pub init_image: Option<PathBuf>,
    /// How much of the init image is repainted, 0..=1 (A1111's denoising strength): the last
    /// floor(steps x strength) steps run; 1 starts from pure noise.
    #[arg(long, value_name = "S", requires = "init_image")]
    pub strength: Option<f32>,
    /// How an init image (and mask) of another aspect ratio is fitted: `fill` scales to cover
    /// and crops the middle, `fit` scales to fit and repeats the edges, `stretch` scales each side.
    #[arg(long, value_enum, default_value_t = ResizeMode::Fill, requires = "init_image")]
    pub resize_mode: ResizeMode,
    /// Inpainting: a mask of the init image's size, white (or opaque, in an RGBA mask with
    /// transparency) = repaint.
    #[arg(long, value_name = "FILE", requires = "init_image")]
    pub mask: Option<PathBuf>,
    /// Gaussian blur of the mask in pixels (A1111's "mask blur").
    #[arg(long, value_name = "PX", default_value_t = 4, requires = "mask")]
    pub mask_blur: u32,
    /// Fit a mask of another size than the init image like the image (else it is an error).
    #[arg(long, requires = "mask")]
    pub resize_mask: bool,
    /// The checkpoint is an inpainting model (9-channel UNet); a regular one is refused.
    #[arg(long, requires = "mask")]
    pub inpaint_model: bool,
    /// Save the final denoised latents (before VAE decoding), same format.
    #[arg(long, value_name = "FILE")]
    pub save_latents: Option<PathBuf>,
    /// Compute device (GPU ones need the matching build feature).
    #[arg(long, value_enum, default_value_t = Device::Cpu)]
    pub device: Device,
    /// Output directory for NNNN.png and plan.json (created; existing images are never
    /// overwritten without --force).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Overwrite existing NNNN.png, plan.json and --save-latents files.
    #[arg(long)]
    pub force: bool,
    /// The prompt.
    pub prompt: String,
}

pub fn run(mut args: Args, config: &StylusConfig) -> Result<(), StylusError> {
    // One line, no terminal escapes: what the pipeline, plan.json and the PNG text get.
    args.prompt = stylus_core::text::clean_prompt(&args.prompt);
    args.negative = stylus_core::text::clean_prompt(&args.negative);
    generate(&args, config)
}

/// What `plan.json` records: the request and, per image, the file and its recipe.
#[derive(Debug, Serialize)]
struct PlanFile<'a> {
    /// `txt2img`, `img2img` or `inpaint`.
    mode: &'static str,
    /// The img2img / inpainting settings (init image, strength, resize mode, mask).
    #[serde(skip_serializing_if = "Option::is_none")]
    init_image: Option<&'a InitImage>,
    prompt: &'a str,
    negative_prompt: &'a str,
    seed: u64,
    checkpoint: &'a Path,
    model_hash: Option<&'a str>,
    sampling: &'a SamplingParams,
    /// `null`: adapters were given explicitly or selection was off.
    selection: Option<serde_json::Value>,
    images: Vec<PlanImage<'a>>,
}

#[derive(Debug, Serialize)]
struct PlanImage<'a> {
    file: String,
    seed: u64,
    prompt: &'a str,
    adapters: &'a [WeightedAdapter],
    parameters: String,
}

fn generate(args: &Args, config: &StylusConfig) -> Result<(), StylusError> {
    if args.batch == 0 {
        return Err(StylusError::InvalidArgument(
            "--batch must be at least 1".into(),
        ));
    }
    if args.prompt.is_empty() {
        return Err(StylusError::InvalidArgument(
            "the prompt is empty (after removing control characters)".into(),
        ));
    }
    let explicit = args
        .lora
        .iter()
        .map(|spec| parse_lora(spec))
        .collect::<Result<Vec<_>, _>>()?;
    let selecting = !args.no_select && explicit.is_empty();
    let defaults = &config.sampling;
    let sampling = SamplingParams {
        steps: args.steps.unwrap_or(defaults.steps),
        guidance_scale: args.cfg.unwrap_or(defaults.guidance_scale),
        sampler: args
            .sampler
            .map_or(defaults.sampler.clone(), |kind| kind.name().to_string()),
        width: args.width.unwrap_or(defaults.width),
        height: args.height.unwrap_or(defaults.height),
        clip_skip: args.clip_skip.unwrap_or(defaults.clip_skip),
    };
    // Everything is checked before the checkpoint is loaded (seconds to minutes).
    sampling.validate()?;
    let init_image = init_image(args)?;
    if selecting && args.lora_dir.is_none() && !args.fetch {
        return Err(StylusError::InvalidArgument(
            "selection picks adapters from the catalog and needs their files: give --lora-dir \
             DIR (a folder with the LoRA files) and/or --fetch (download them), or --lora \
             FILE[:W] / --no-select"
                .into(),
        ));
    }
    if let Some(dir) = &args.lora_dir
        && !dir.is_dir()
    {
        return Err(StylusError::InvalidArgument(format!(
            "--lora-dir {}: not a directory",
            dir.display()
        )));
    }
    let hub = super::hub_checkpoint(&args.checkpoint)?;
    args.device.check()?;
    check_outputs(args)?;
    // The catalog opens before the checkpoint loads (seconds to minutes): a bad store fails fast.
    let source = if selecting {
        Source::Catalog(stylus::catalog::open(args.index.as_deref(), config, false)?)
    } else {
        // No selection: nothing is searched; the small bundled catalog fills the slot.
        Source::Bundled
    };
    let checkpoint = match &hub {
        Some(hub) => super::resolve_hub_checkpoint(hub, args.offline, args.fp16_variant)?,
        None => args.checkpoint.clone(),
    };
    std::fs::create_dir_all(&args.out).map_err(|e| StylusError::io(&args.out, e))?;

    let bar = ProgressBar::new(sampling.steps as u64);
    bar.set_style(
        ProgressStyle::with_template("{msg} [{bar:30}] step {pos}/{len} {elapsed}")
            .expect("the progress template is valid"),
    );
    let progress_bar = bar.clone();
    let loaded = load_sampler(
        &checkpoint,
        args.device,
        Some(Arc::new(move |p: SamplingProgress| {
            progress_bar.set_length(p.steps as u64);
            progress_bar.set_position(p.step as u64);
            progress_bar.set_message(format!(
                "images {}..{}",
                p.first_image + 1,
                p.first_image + p.batch
            ));
        })),
    )?;
    let save_dims = [
        args.batch,
        loaded.latent_channels,
        (sampling.height as usize) / loaded.vae_factor,
        (sampling.width as usize) / loaded.vae_factor,
    ];

    let mut options = Stylus::options().sampler(loaded.sampler.clone());
    let folder = match &args.lora_dir {
        Some(dir) => Some(Arc::new(FolderLocator::new(dir)?) as Arc<dyn AdapterLocator>),
        None => None,
    };
    if args.fetch {
        let network = super::network("CIVITAI", config)?;
        let mut fetch_config = FetchConfig::from_env(&network)?;
        fetch_config.offline |= args.offline;
        fetch_config.progress = std::io::IsTerminal::is_terminal(&std::io::stderr());
        let fetcher = Fetcher::new(args.cache.open(&config.cache)?, fetch_config)?;
        options = options.locator(Arc::new(FetchingLocator::new(folder, fetcher)));
    } else if let Some(folder) = folder {
        options = options.locator(folder);
    }
    let stylus = options.open(source, config)?;
    let request = GenerationRequest {
        prompt: args.prompt.clone(),
        negative_prompt: args.negative.clone(),
        batch: args.batch,
        seed: args.seed,
        sampling: sampling.clone(),
        select: selecting,
        explicit_loras: explicit,
        init_latents: args.latents.clone(),
        keep_latents: args.save_latents.is_some(),
        init_image: init_image.clone(),
    };
    // Selection runs once, inside `generate`; plan.json records the plan the images came from.
    let generation = super::runtime()?.block_on(stylus.generate(&request))?;
    bar.finish_and_clear();
    let images = generation.images;
    let selection = generation
        .plan
        .as_ref()
        .map(|plan| serde_json::to_value(plan).expect("a selection plan serializes"));
    // A1111's "Lora hashes": each file hashed once per run (the locator's hash when it made one).
    let mut hashes: HashMap<&AdapterId, String> = HashMap::new();
    for resolved in &generation.adapters {
        let hash = match &resolved.tensor_sha256 {
            Some(sha) => sha.chars().take(12).collect(),
            None => lora_short_hash(&resolved.path)?,
        };
        hashes.insert(&resolved.adapter.id, hash);
    }

    let model_info = ModelInfo {
        hash: checkpoint
            .is_file()
            .then(|| model_short_hash(&checkpoint))
            .transpose()?,
        // A hub snapshot folder is named by its commit: the repo names the model.
        name: match &hub {
            Some(hub) if hub.file.is_none() => hub.repo_id.rsplit('/').next().map(str::to_owned),
            _ => checkpoint
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned()),
        },
    };
    let mut plan_images = Vec::with_capacity(images.len());
    for (i, image) in images.iter().enumerate() {
        let file = format!("{i:04}.png");
        let lora_hashes = image
            .adapters
            .iter()
            .map(|adapter| {
                let hash = hashes.get(&adapter.id).cloned().ok_or_else(|| {
                    StylusError::adapter(&adapter.id, "rendered, but not among the run's files")
                })?;
                Ok(LoraHash {
                    alias: adapter.alias.clone(),
                    hash,
                })
            })
            .collect::<Result<Vec<_>, StylusError>>()?;
        let parameters = a1111_parameters(image, &model_info, &lora_hashes);
        write_png(&args.out.join(&file), image, &parameters)?;
        println!("{}", args.out.join(&file).display());
        plan_images.push(PlanImage {
            file,
            seed: image.seed,
            prompt: &image.prompt,
            adapters: &image.adapters,
            parameters,
        });
    }
    if let Some(path) = &args.save_latents {
        let values: Vec<f32> = images
            .iter()
            .flat_map(|i| i.latents.clone().unwrap_or_default())
            .collect();
        write_latents(path, &values, save_dims)?;
    }
    let plan = PlanFile {
        mode: InitImage::mode(init_image.as_ref()),
        init_image: init_image.as_ref(),
        prompt: &args.prompt,
        negative_prompt: &args.negative,
        seed: args.seed,
        checkpoint: &checkpoint,
        model_hash: model_info.hash.as_deref(),
        sampling: &sampling,
        selection,
        images: plan_images,
    };
    let plan_path = args.out.join("plan.json");
    let json = serde_json::to_string_pretty(&plan).expect("the plan serializes");
    std::fs::write(&plan_path, json + "\n").map_err(|e| StylusError::io(&plan_path, e))
}

/// The img2img / inpainting request from the flags, checked (the files' headers are read, so a
/// missing, unreadable or oversized image fails before the checkpoint loads).
fn init_image(args: &Args) -> Result<Option<InitImage>, StylusError> {
    let Some(path) = &args.init_image else {
        return Ok(None);
    };
    if args.latents.is_some() {
        return Err(StylusError::InvalidArgument(
            "--init-image and --latents both set the starting latents; give one".into(),
        ));
    }
    let image_size = stylus_diffusion::image_input::probe(path)?;
    let mask = match &args.mask {
        Some(mask_path) => {
            let mask_size = stylus_diffusion::image_input::probe(mask_path)?;
            if mask_size != image_size && !args.resize_mask {
                return Err(StylusError::image(
                    mask_path,
                    format!(
                        "the mask is {}x{} but the init image is {}x{}; give a mask of the \
                         image's size or --resize-mask",
                        mask_size.0, mask_size.1, image_size.0, image_size.1
                    ),
                ));
            }
            Some(InpaintMask {
                blur: args.mask_blur,
                resize: args.resize_mask,
                ..InpaintMask::new(mask_path)
            })
        }
        None => None,
    };
    let init = InitImage {
        path: path.clone(),
        bytes: None,
        strength: args.strength.unwrap_or(InitImage::DEFAULT_STRENGTH),
        resize_mode: args.resize_mode,
        mask,
        inpaint_model: args.inpaint_model,
    };
    init.validate()?;
    Ok(Some(init))
}

/// `FILE[:WEIGHT]` (see [`super::parse_lora_spec`]).
fn parse_lora(spec: &str) -> Result<ExplicitLora, StylusError> {
    let (path, weight) = super::parse_lora_spec(spec)?;
    Ok(ExplicitLora { path, weight })
}

/// `--out` must be a folder (or not exist yet), and no file this run writes may exist unless
/// `--force`.
fn check_outputs(args: &Args) -> Result<(), StylusError> {
    if args.out.exists() && !args.out.is_dir() {
        return Err(StylusError::InvalidArgument(format!(
            "--out {}: an existing file; generate writes a folder (NNNN.png and plan.json), give \
             a folder path",
            args.out.display()
        )));
    }
    let mut outputs: Vec<PathBuf> = (0..args.batch)
        .map(|i| args.out.join(format!("{i:04}.png")))
        .collect();
    outputs.push(args.out.join("plan.json"));
    for path in &outputs {
        super::refuse_overwrite(path, "--out", args.force)?;
    }
    if let Some(path) = &args.save_latents {
        super::refuse_overwrite(path, "--save-latents", args.force)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lora_specs_parse_weights_and_keep_colons_in_paths() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("a:b.safetensors");
        std::fs::write(&file, b"x").unwrap();
        let spec = file.display().to_string();
        assert_eq!(parse_lora(&spec).unwrap().weight, 1.0);
        let weighted = parse_lora(&format!("{spec}:0.6")).unwrap();
        assert_eq!((weighted.path, weighted.weight), (file, 0.6));
        assert!(parse_lora("/no/such.safetensors:1").is_err());
        // A weight that is not a number is a bad weight, not a missing file.
        let err = parse_lora(&format!("{spec}:abc")).unwrap_err().to_string();
        assert!(err.contains("bad weight `abc`"), "{err}");
        let err = parse_lora(&format!("{spec}:1e9")).unwrap_err().to_string();
        assert!(err.contains("outside -10..=10"), "{err}");
        assert!(parse_lora(&format!("{spec}:inf")).is_err());
        assert_eq!(parse_lora(&format!("{spec}:-1")).unwrap().weight, -1.0);
        // A path with a colon in a folder name and no weight.
        let nested = dir.path().join("x:y");
        std::fs::create_dir(&nested).unwrap();
        let inner = nested.join("l.safetensors");
        std::fs::write(&inner, b"x").unwrap();
        assert_eq!(
            parse_lora(&inner.display().to_string()).unwrap().path,
            inner
        );
    }
}
