//! Requests and results of image generation.

use std::path::PathBuf;
use std::sync::Arc;

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
    /// img2img / inpainting: start from this image instead of pure noise. Refused together with
    /// `init_latents`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init_image: Option<InitImage>,
}

/// How an init image or mask of another size is fitted to the requested size (A1111's "resize
/// mode").
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[serde(rename_all = "snake_case")]
pub enum ResizeMode {
    /// Scale to cover the requested size, keeping the aspect ratio, and crop the middle (A1111
    /// "Crop and resize").
    #[default]
    Fill,
    /// Scale to fit inside, keeping the aspect ratio, and pad with the image's edge pixels (A1111
    /// "Resize and fill").
    Fit,
    /// Scale each side on its own (A1111 "Just resize").
    Stretch,
}

impl ResizeMode {
    /// The name in requests and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Self::Fill => "fill",
            Self::Fit => "fit",
            Self::Stretch => "stretch",
        }
    }
}

/// The image img2img starts from, and for inpainting the mask of what to repaint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InitImage {
    /// A PNG or JPEG file (8 or 16 bit, grey, palette, RGB or RGBA; alpha is composited on white;
    /// JPEG EXIF orientation is applied). With [`InitImage::bytes`] it only names the image in
    /// messages and records (`init_images[0]`).
    pub path: PathBuf,
    /// The encoded file held in memory (an HTTP upload): decoded from here, with the same checks
    /// as a file, instead of reading `path`. Not serialized (a plan records the name).
    #[serde(skip)]
    pub bytes: Option<ImageBytes>,
    /// How much of the image is replaced, in [0, 1] (A1111's "denoising strength"): the sampler
    /// runs the last `floor(steps * strength)` of its steps from the image noised to that level
    /// (diffusers' `get_timesteps`). 1 starts from pure noise (txt2img, or inpainting with a
    /// fresh masked area); 0 returns the image through the VAE.
    #[serde(default = "InitImage::default_strength")]
    pub strength: f32,
    #[serde(default)]
    pub resize_mode: ResizeMode,
    /// Inpainting: white (or opaque, for an RGBA mask with transparency) = repaint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mask: Option<InpaintMask>,
    /// The checkpoint must be an inpainting model (9-channel UNet); a regular one is refused.
    #[serde(default)]
    pub inpaint_model: bool,
}

/// The mask of an inpainting request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InpaintMask {
    /// A grey, RGB or RGBA PNG/JPEG of the init image's size (after its EXIF rotation). With
    /// [`InpaintMask::bytes`] it only names the mask in messages.
    pub path: PathBuf,
    /// The encoded mask held in memory (see [`InitImage::bytes`]).
    #[serde(skip)]
    pub bytes: Option<ImageBytes>,
    /// Gaussian blur radius in pixels applied to the mask (A1111's "mask blur").
    #[serde(default)]
    pub blur: u32,
    /// Fit a mask of another size like the image (else a size mismatch is an error).
    #[serde(default)]
    pub resize: bool,
    /// Repaint where the mask is black instead (A1111's `inpainting_mask_invert`).
    #[serde(default)]
    pub invert: bool,
}

impl InpaintMask {
    /// The mask in `path`, not blurred, resized or inverted.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            bytes: None,
            blur: 0,
            resize: false,
            invert: false,
        }
    }
}

/// An encoded image (PNG or JPEG file content) held in memory, shared without copying.
#[derive(Clone, PartialEq, Eq)]
pub struct ImageBytes(pub Arc<[u8]>);

impl std::fmt::Debug for ImageBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ImageBytes({} bytes)", self.0.len())
    }
}

impl From<Vec<u8>> for ImageBytes {
    fn from(bytes: Vec<u8>) -> Self {
        Self(bytes.into())
    }
}

impl InitImage {
    /// A1111's default denoising strength.
    pub const DEFAULT_STRENGTH: f32 = 0.75;

    fn default_strength() -> f32 {
        Self::DEFAULT_STRENGTH
    }

    /// An img2img request for `path` at the default strength.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            bytes: None,
            strength: Self::DEFAULT_STRENGTH,
            resize_mode: ResizeMode::Fill,
            mask: None,
            inpaint_model: false,
        }
    }

    /// `txt2img`, `img2img` or `inpaint`, as plan.json records it.
    pub fn mode(init: Option<&Self>) -> &'static str {
        match init {
            None => "txt2img",
            Some(init) if init.mask.is_some() => "inpaint",
            Some(_) => "img2img",
        }
    }

    /// Checks the strength and mask settings; the error names the flag.
    pub fn validate(&self) -> crate::Result<()> {
        in_range("--strength", self.strength, &limits::STRENGTH)?;
        if let Some(mask) = &self.mask {
            in_range("--mask-blur", mask.blur, &limits::MASK_BLUR)?;
        }
        if self.inpaint_model && self.mask.is_none() {
            return Err(crate::StylusError::InvalidArgument(
                "--inpaint-model needs --mask: an inpainting model repaints a masked area".into(),
            ));
        }
        Ok(())
    }
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

/// The sampler names the diffusion backend knows (A1111 names: DDIM, Euler, Euler a, DPM++ 2M,
/// DPM++ 2M Karras, PLMS).
pub const SAMPLER_NAMES: [&str; 6] = [
    "ddim",
    "euler",
    "euler_ancestral",
    "dpmpp_2m",
    "dpmpp_2m_karras",
    "pndm",
];

/// The samplers (schedulers) as a type, for callers that want the name checked when it is parsed
/// (the CLI's `--sampler`, serde): [`SamplerKind::name`] is what [`SamplingParams::sampler`] holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[cfg_attr(feature = "clap", value(rename_all = "snake_case"))]
#[serde(rename_all = "snake_case")]
pub enum SamplerKind {
    Ddim,
    Euler,
    EulerAncestral,
    #[serde(rename = "dpmpp_2m")]
    #[cfg_attr(feature = "clap", value(name = "dpmpp_2m"))]
    Dpmpp2m,
    #[serde(rename = "dpmpp_2m_karras")]
    #[cfg_attr(feature = "clap", value(name = "dpmpp_2m_karras"))]
    Dpmpp2mKarras,
    Pndm,
}

impl SamplerKind {
    pub const ALL: [SamplerKind; 6] = [
        Self::Ddim,
        Self::Euler,
        Self::EulerAncestral,
        Self::Dpmpp2m,
        Self::Dpmpp2mKarras,
        Self::Pndm,
    ];

    /// The name in [`SAMPLER_NAMES`].
    pub fn name(self) -> &'static str {
        SAMPLER_NAMES[Self::ALL.iter().position(|&k| k == self).unwrap_or(0)]
    }
}

impl std::str::FromStr for SamplerKind {
    type Err = crate::StylusError;
    fn from_str(name: &str) -> crate::Result<Self> {
        Self::ALL
            .into_iter()
            .find(|k| k.name() == name.trim())
            .ok_or_else(|| {
                crate::StylusError::InvalidArgument(format!(
                    "unknown sampler `{name}`; expected one of {}",
                    SAMPLER_NAMES.join(", ")
                ))
            })
    }
}

/// Limits on what can be asked of the sampler; every value outside is refused before any work,
/// with the allowed range in the message.
pub mod limits {
    use std::ops::RangeInclusive;

    /// Sampling steps (the schedules have 1000 training timesteps).
    pub const STEPS: RangeInclusive<usize> = 1..=1000;
    /// Image width and height in pixels (multiples of 8).
    pub const SIDE: RangeInclusive<u32> = 8..=2048;
    /// Classifier-free guidance scale.
    pub const CFG: RangeInclusive<f32> = 0.0..=50.0;
    /// CLIP skip: 1 = last layer, 2 = penultimate.
    pub const CLIP_SKIP: RangeInclusive<usize> = 1..=2;
    /// Images per `generate` call.
    pub const BATCH: RangeInclusive<usize> = 1..=256;
    /// Adapters per query (`retrieve --top-k`, `retriever.top_k`).
    pub const TOP_K: RangeInclusive<usize> = 1..=100_000;
    /// LoRA weights (`--lora FILE:W`).
    pub const LORA_WEIGHT: RangeInclusive<f32> = -10.0..=10.0;
    /// img2img denoising strength.
    pub const STRENGTH: RangeInclusive<f32> = 0.0..=1.0;
    /// Inpainting mask blur radius in pixels.
    pub const MASK_BLUR: RangeInclusive<u32> = 0..=256;
    /// Pixels of an input image (init image, mask), checked from the header before decoding:
    /// 8192 x 8192, a 192 MiB RGB buffer (decompression bombs are refused unread).
    pub const IMAGE_PIXELS: u64 = 8192 * 8192;
}

impl SamplingParams {
    /// Checks every field against [`limits`] and [`SAMPLER_NAMES`]; the error names the field
    /// (as its CLI flag) and the allowed range.
    pub fn validate(&self) -> crate::Result<()> {
        let bad = |message: String| Err(crate::StylusError::InvalidArgument(message));
        in_range("--steps", self.steps, &limits::STEPS)?;
        for (flag, side) in [("--width", self.width), ("--height", self.height)] {
            if !limits::SIDE.contains(&side) || !side.is_multiple_of(8) {
                return bad(format!(
                    "{flag} {side}: must be a multiple of 8 in {}..={}",
                    limits::SIDE.start(),
                    limits::SIDE.end()
                ));
            }
        }
        in_range("--cfg", self.guidance_scale, &limits::CFG)?;
        if !limits::CLIP_SKIP.contains(&self.clip_skip) {
            return bad(format!(
                "--clip-skip {}: must be 1 (last CLIP layer) or 2 (penultimate)",
                self.clip_skip
            ));
        }
        if !SAMPLER_NAMES.contains(&self.sampler.as_str()) {
            return bad(format!(
                "--sampler {}: unknown sampler; expected one of {}",
                self.sampler,
                SAMPLER_NAMES.join(", ")
            ));
        }
        Ok(())
    }
}

/// `Ok` when `value` is in `range` (NaN never is), else an error naming `flag` and the range.
pub fn in_range<T: PartialOrd + std::fmt::Display>(
    flag: &str,
    value: T,
    range: &std::ops::RangeInclusive<T>,
) -> crate::Result<()> {
    if range.contains(&value) {
        return Ok(());
    }
    Err(crate::StylusError::InvalidArgument(format!(
        "{flag} {value}: must be in {}..={}",
        range.start(),
        range.end()
    )))
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

/// One call of the sampler: a prompt (A1111 emphasis allowed, no `<lora:>` tags) rendered with
/// exactly the adapters of the job, merged for this job alone.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SampleJob {
    /// The adapter set every image of the job is rendered with (empty: the base model).
    #[serde(default)]
    pub adapters: Vec<ResolvedAdapter>,
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
    /// img2img / inpainting input (see [`GenerationRequest::init_image`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init_image: Option<InitImage>,
}

/// An adapter whose file was found, ready to merge.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResolvedAdapter {
    pub adapter: WeightedAdapter,
    pub path: PathBuf,
    /// Hex SHA-256 of the file's bytes after the safetensors header, when the locator computed
    /// it (see [`crate::LocatedFile`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tensor_sha256: Option<String>,
}

impl ResolvedAdapter {
    /// An adapter and its file, hash unknown.
    pub fn new(adapter: WeightedAdapter, path: impl Into<PathBuf>) -> Self {
        Self {
            adapter,
            path: path.into(),
            tensor_sha256: None,
        }
    }

    /// An explicitly given file (`--lora FILE:W`) at `weight`.
    pub fn from_path(path: impl Into<PathBuf>, weight: f32) -> Self {
        let path = path.into();
        Self::new(WeightedAdapter::from_path(&path, weight), path)
    }
}

/// What [`crate::Stylus::generate`] made: the plan it selected with (once), the images, and every
/// adapter file the images used.
#[derive(Debug, Clone, PartialEq)]
pub struct Generation {
    /// The selection the images were rendered from; `None` when selection was off.
    pub plan: Option<crate::SelectionPlan>,
    pub images: Vec<GeneratedImage>,
    /// Each adapter file used by some image, once (selected ones first, then explicit ones),
    /// with the hash the locator computed while finding it.
    pub adapters: Vec<ResolvedAdapter>,
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
    /// The img2img / inpainting settings the image was made with (`None`: txt2img).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init_image: Option<InitImage>,
}

#[cfg(test)]
mod validate_tests {
    use super::*;

    #[test]
    fn sampler_kinds_are_the_sampler_names() {
        for (kind, name) in SamplerKind::ALL.iter().zip(SAMPLER_NAMES) {
            assert_eq!(kind.name(), name);
            assert_eq!(name.parse::<SamplerKind>().unwrap(), *kind);
            assert_eq!(serde_json::to_string(kind).unwrap(), format!("\"{name}\""));
        }
        assert!("bogus".parse::<SamplerKind>().is_err());
    }

    #[test]
    fn init_image_checks_strength_and_mask_and_reads_old_json() {
        let mut init = InitImage::new("photo.png");
        assert!(init.validate().is_ok());
        assert_eq!(InitImage::mode(Some(&init)), "img2img");
        for bad in [-0.01, 1.01, f32::NAN] {
            init.strength = bad;
            assert!(
                init.validate()
                    .unwrap_err()
                    .to_string()
                    .contains("--strength")
            );
        }
        init.strength = 1.0;
        init.inpaint_model = true;
        assert!(init.validate().unwrap_err().to_string().contains("--mask"));
        init.mask = Some(InpaintMask {
            blur: 1000,
            ..InpaintMask::new("mask.png")
        });
        assert!(
            init.validate()
                .unwrap_err()
                .to_string()
                .contains("--mask-blur 1000")
        );
        init.mask.as_mut().unwrap().blur = 4;
        assert!(init.validate().is_ok());
        assert_eq!(InitImage::mode(Some(&init)), "inpaint");
        assert_eq!(InitImage::mode(None), "txt2img");
        // Defaults when a field is left out: strength 0.75, fill.
        let parsed: InitImage = serde_json::from_str(r#"{"path": "p.png"}"#).unwrap();
        assert_eq!(parsed, InitImage::new("p.png"));
        // A request written before img2img existed still reads.
        let request: GenerationRequest = serde_json::from_str(
            r#"{"prompt": "a", "batch": 1, "seed": 0, "sampling": {}, "select": false}"#,
        )
        .unwrap();
        assert_eq!(request.init_image, None);
    }

    #[test]
    fn sampling_limits_name_the_flag_and_the_range() {
        assert!(SamplingParams::default().validate().is_ok());
        let check = |edit: &dyn Fn(&mut SamplingParams), needle: &str| {
            let mut params = SamplingParams::default();
            edit(&mut params);
            let err = params.validate().unwrap_err().to_string();
            assert!(err.contains(needle), "{err}");
        };
        check(&|p| p.steps = 0, "--steps 0: must be in 1..=1000");
        check(&|p| p.steps = 100_000, "--steps 100000");
        check(&|p| p.width = 513, "--width 513: must be a multiple of 8");
        check(&|p| p.height = 4, "--height 4");
        check(&|p| p.width = 1 << 20, "8..=2048");
        check(&|p| p.guidance_scale = f32::NAN, "--cfg NaN");
        check(&|p| p.guidance_scale = -1.0, "0..=50");
        check(&|p| p.clip_skip = 0, "--clip-skip 0: must be 1");
        check(&|p| p.clip_skip = 50, "--clip-skip 50: must be 1");
        check(&|p| p.sampler = "bogus".into(), "expected one of ddim");
    }
}
