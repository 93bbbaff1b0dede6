//! img2img and inpainting through the `Sampler` trait on the small random-weight model: a
//! 9-channel (inpainting) UNet in a single file is found from its shapes; the wrong model for the
//! request, a strength outside [0, 1] and an init image with init latents are clear errors.

mod common;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use burn::tensor::DType;
use stylus_core::{InitImage, InpaintMask, SampleJob, Sampler, SamplingParams, StylusError};
use stylus_diffusion::StableDiffusion;
use stylus_diffusion::backend::{CpuBackend, cpu_device};
use stylus_diffusion::clip_tokenizer::ClipTokenizer;
use stylus_diffusion::sampler::SdSampler;

/// The conv_in weight of the single-file UNet.
const CONV_IN: &str = "model.diffusion_model.input_blocks.0.0.weight";

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// The tiny single file (widened to CLIP's vocabulary), and the same with a 9-channel conv_in:
/// an inpainting checkpoint as far as shapes tell.
fn checkpoints(dir: &Path) -> (PathBuf, PathBuf) {
    let regular =
        common::full_vocab::full_vocab_checkpoint(&fixtures().join("sd/tiny-ldm.safetensors"), dir);
    let bytes = std::fs::read(&regular).unwrap();
    let tensors = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let conv_in = tensors.tensor(CONV_IN).unwrap();
    let shape = conv_in.shape().to_vec();
    assert_eq!(shape[1], 4);
    let wide_shape = vec![shape[0], 9, shape[2], shape[3]];
    // Channels 0..4 as before, the 5 new ones (mask, masked-image latents) small.
    let per_out_in = shape[2] * shape[3] * 2; // f16 bytes per (out, in) kernel
    let mut wide = Vec::new();
    for out in 0..shape[0] {
        let old = &conv_in.data()[out * 4 * per_out_in..(out + 1) * 4 * per_out_in];
        wide.extend_from_slice(old);
        wide.extend(std::iter::repeat_n(half_bytes(0.01), 5 * per_out_in / 2).flatten());
    }
    let mut views: Vec<(String, safetensors::tensor::TensorView)> = Vec::new();
    for (name, view) in tensors.tensors() {
        if name == CONV_IN {
            continue;
        }
        views.push((name, view));
    }
    views.push((
        CONV_IN.to_string(),
        safetensors::tensor::TensorView::new(conv_in.dtype(), wide_shape, &wide).unwrap(),
    ));
    let inpainting = dir.join("tiny-inpainting.safetensors");
    std::fs::write(&inpainting, safetensors::serialize(views, None).unwrap()).unwrap();
    (regular, inpainting)
}

fn half_bytes(v: f32) -> [u8; 2] {
    half::f16::from_f32(v).to_le_bytes()
}

fn sampler(checkpoint: &Path) -> (SdSampler<CpuBackend>, usize) {
    let (model, _) =
        StableDiffusion::<CpuBackend>::load(checkpoint, &cpu_device(), DType::F32).unwrap();
    let channels = model.config.unet.in_channels;
    let sampler = SdSampler::new(
        Arc::new(Mutex::new(model)),
        ClipTokenizer::bundled().unwrap(),
        cpu_device(),
    );
    (sampler, channels)
}

fn inputs(dir: &Path) -> (PathBuf, PathBuf) {
    let photo = dir.join("photo.png");
    let image = stylus_core::GeneratedImage {
        width: 16,
        height: 16,
        rgb: (0..16 * 16 * 3).map(|i| (i * 7 % 256) as u8).collect(),
        seed: 0,
        prompt: String::new(),
        negative_prompt: String::new(),
        adapters: Vec::new(),
        sampling: SamplingParams::default(),
        latents: None,
        init_image: None,
    };
    stylus_diffusion::png::write_png(&photo, &image, "").unwrap();
    let mask = dir.join("mask.png");
    let mask_image = stylus_core::GeneratedImage {
        rgb: (0..16 * 16)
            .flat_map(|i| if i % 16 >= 8 { [255; 3] } else { [0; 3] })
            .collect(),
        ..image
    };
    stylus_diffusion::png::write_png(&mask, &mask_image, "").unwrap();
    (photo, mask)
}

fn job(init_image: Option<InitImage>) -> SampleJob {
    SampleJob {
        adapters: Vec::new(),
        prompt: "a castle on a hill".into(),
        negative_prompt: String::new(),
        seed: 9,
        first_image: 0,
        batch: 2,
        sampling: SamplingParams {
            steps: 2,
            sampler: "euler".into(),
            width: 16,
            height: 16,
            ..SamplingParams::default()
        },
        init_latents: None,
        keep_latents: false,
        init_image,
    }
}

fn invalid(result: stylus_core::Result<Vec<stylus_core::GeneratedImage>>, needle: &str) {
    let err = result.unwrap_err();
    assert!(
        matches!(err, StylusError::InvalidArgument(_)) && err.to_string().contains(needle),
        "wanted `{needle}`: {err}"
    );
}

#[test]
fn inpainting_checkpoints_are_found_from_shapes_and_need_a_mask() {
    let dir = tempfile::tempdir().unwrap();
    let (regular, inpainting) = checkpoints(dir.path());
    let (photo, mask) = inputs(dir.path());
    let with_mask = |inpaint_model: bool| {
        let mut init = InitImage::new(&photo);
        init.mask = Some(InpaintMask::new(&mask));
        init.inpaint_model = inpaint_model;
        init
    };

    let (nine, channels) = sampler(&inpainting);
    assert_eq!(channels, 9);
    invalid(nine.sample(&job(None)), "inpainting model");
    invalid(
        nine.sample(&job(Some(InitImage::new(&photo)))),
        "inpainting model",
    );
    let images = nine.sample(&job(Some(with_mask(true)))).unwrap();
    assert_eq!(images.len(), 2);
    assert_ne!(images[0].rgb, images[1].rgb, "per-image seeds");
    // The unmasked left half keeps the photo's pixels (the overlay; no mask blur).
    let photo_rgb: Vec<u8> = (0..16 * 16 * 3).map(|i| (i * 7 % 256) as u8).collect();
    for y in 0..16 {
        for x in 0..8 {
            let at = (y * 16 + x) * 3;
            assert_eq!(
                images[0].rgb[at..at + 3],
                photo_rgb[at..at + 3],
                "({x}, {y})"
            );
        }
    }
    assert_eq!(images[0].init_image, Some(with_mask(true)));

    let (four, channels) = sampler(&regular);
    assert_eq!(channels, 4);
    invalid(four.sample(&job(Some(with_mask(true)))), "--inpaint-model");
    assert_eq!(four.sample(&job(Some(with_mask(false)))).unwrap().len(), 2);
}

#[test]
fn strength_and_conflicting_starts_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (regular, _) = checkpoints(dir.path());
    let (photo, _) = inputs(dir.path());
    let (sampler, _) = sampler(&regular);
    for strength in [-0.1, 1.5, f32::NAN] {
        let mut init = InitImage::new(&photo);
        init.strength = strength;
        invalid(sampler.sample(&job(Some(init))), "--strength");
    }
    let mut both = job(Some(InitImage::new(&photo)));
    both.init_latents = Some(dir.path().join("latents.safetensors"));
    invalid(sampler.sample(&both), "--latents");

    // Strength 1 ignores the photo: the txt2img image with the same seed.
    let mut full = InitImage::new(&photo);
    full.strength = 1.0;
    let from_photo = sampler.sample(&job(Some(full))).unwrap();
    let txt2img = sampler.sample(&job(None)).unwrap();
    assert_eq!(from_photo[0].rgb, txt2img[0].rgb);
    assert_eq!(from_photo[1].rgb, txt2img[1].rgb);

    // The UNet runs floor(steps x strength) times: 0 at strength 0 (the photo through the VAE),
    // 1 of 2 at 0.5 and at 0.99 (floor(1.98) = 1), 2 at 1.
    let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = calls.clone();
    let counted = sampler.with_progress(Arc::new(move |_| {
        counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }));
    for (strength, steps_run) in [(0.0, 0), (0.5, 1), (0.99, 1), (1.0, 2)] {
        calls.store(0, std::sync::atomic::Ordering::SeqCst);
        let mut init = InitImage::new(&photo);
        init.strength = strength;
        let images = counted.sample(&job(Some(init))).unwrap();
        assert_eq!(images.len(), 2);
        assert_eq!(
            calls.load(std::sync::atomic::Ordering::SeqCst),
            steps_run,
            "strength {strength}"
        );
    }
}
