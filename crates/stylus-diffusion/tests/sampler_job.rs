//! The `Sampler` trait end to end on the small random-weight model with the real CLIP tokenizer:
//! determinism, per-image seeds, initial-latents files, emphasis, samplers, bad input.

mod common;

use std::sync::{Arc, Mutex};

use burn::tensor::DType;
use stylus_core::rng::SplitMix64;
use stylus_core::{GeneratedImage, SampleJob, Sampler, SamplingParams, StylusError};
use stylus_diffusion::StableDiffusion;
use stylus_diffusion::backend::{CpuBackend, cpu_device};
use stylus_diffusion::clip_tokenizer::ClipTokenizer;
use stylus_diffusion::sampler::{SdSampler, write_latents};

fn sampler(dir: &std::path::Path) -> SdSampler<CpuBackend> {
    let checkpoint = common::full_vocab::full_vocab_checkpoint(&tiny_checkpoint(), dir);
    let (model, _) =
        StableDiffusion::<CpuBackend>::load(&checkpoint, &cpu_device(), DType::F32).unwrap();
    SdSampler::new(
        Arc::new(Mutex::new(model)),
        ClipTokenizer::bundled().unwrap(),
        cpu_device(),
    )
}

fn tiny_checkpoint() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/sd/tiny-ldm.safetensors")
}

fn job(sampler: &str, batch: usize, first_image: usize) -> SampleJob {
    SampleJob {
        adapters: Vec::new(),
        prompt: "a castle on a hill, (golden hour:1.3), [fog]".into(),
        negative_prompt: "blurry, lowres".into(),
        seed: 42,
        first_image,
        batch,
        sampling: SamplingParams {
            steps: 3,
            guidance_scale: 5.0,
            sampler: sampler.into(),
            width: 16,
            height: 16,
            clip_skip: 1,
        },
        init_latents: None,
        keep_latents: true,
        init_image: None,
    }
}

fn pixels(images: &[GeneratedImage]) -> Vec<Vec<u8>> {
    images.iter().map(|i| i.rgb.clone()).collect()
}

#[test]
fn sampling_is_deterministic_and_per_image() {
    let dir = tempfile::tempdir().unwrap();
    let sampler = sampler(dir.path());
    for name in ["dpmpp_2m_karras", "euler_ancestral"] {
        let batch = sampler.sample(&job(name, 2, 0)).unwrap();
        assert_eq!(batch.len(), 2);
        assert_eq!(batch[0].rgb.len(), 16 * 16 * 3);
        assert_eq!((batch[0].seed, batch[1].seed), (42, 43));
        assert_ne!(
            batch[0].rgb, batch[1].rgb,
            "{name}: different seeds, different images"
        );
        assert_eq!(
            pixels(&batch),
            pixels(&sampler.sample(&job(name, 2, 0)).unwrap()),
            "{name}"
        );
        // Image 1 alone (first_image = 1) is image 1 of the batch: noise depends on seed + index.
        let alone = sampler.sample(&job(name, 1, 1)).unwrap();
        assert_eq!(alone[0].rgb, batch[1].rgb, "{name}");
        assert_eq!(alone[0].latents, batch[1].latents, "{name}");
        assert_eq!(batch[0].latents.as_ref().unwrap().len(), 4 * 8 * 8);
    }
}

#[test]
fn initial_latents_file_replaces_the_seeded_noise() {
    let dir = tempfile::tempdir().unwrap();
    let sampler = sampler(dir.path());
    // The noise the sampler draws itself for images 0..3 of seed 42.
    let noise: Vec<f32> = (0..3u64)
        .flat_map(|i| {
            let mut rng = SplitMix64::new(42 + i);
            (0..4 * 8 * 8)
                .map(move |_| rng.normal() as f32)
                .collect::<Vec<_>>()
        })
        .collect();
    let path = dir.path().join("latents.safetensors");
    write_latents(&path, &noise, [3, 4, 8, 8]).unwrap();
    let seeded = sampler.sample(&job("euler", 2, 1)).unwrap();
    let mut from_file = job("euler", 2, 1);
    from_file.init_latents = Some(path.clone());
    from_file.seed = 7; // ignored for the initial latents, which come from rows 1..3
    let loaded = sampler.sample(&from_file).unwrap();
    assert_eq!(pixels(&seeded), pixels(&loaded));

    let mut too_many = job("euler", 3, 1);
    too_many.init_latents = Some(path);
    let err = sampler.sample(&too_many).unwrap_err();
    assert!(matches!(err, StylusError::Tensor { .. }), "{err}");
}

#[test]
fn emphasis_and_prompts_change_the_image_and_bad_sizes_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let sampler = sampler(dir.path());
    let base = sampler.sample(&job("ddim", 1, 0)).unwrap();
    let mut plain = job("ddim", 1, 0);
    plain.prompt = "a castle on a hill, golden hour, fog".into();
    assert_ne!(base[0].rgb, sampler.sample(&plain).unwrap()[0].rgb);
    let mut long = job("ddim", 1, 0);
    long.prompt = "a castle on a hill, ".repeat(30);
    assert_eq!(sampler.sample(&long).unwrap().len(), 1);

    let mut bad = job("ddim", 1, 0);
    bad.sampling.width = 20;
    assert!(matches!(
        sampler.sample(&bad),
        Err(StylusError::InvalidArgument(_))
    ));
    let mut unknown = job("ddim", 1, 0);
    unknown.sampling.sampler = "lms_turbo".into();
    assert!(matches!(
        sampler.sample(&unknown),
        Err(StylusError::InvalidArgument(_))
    ));
}

#[test]
fn sampler_renders_with_the_adapters_of_the_job() {
    use stylus_core::{Merger, ResolvedAdapter};
    use stylus_diffusion::lora::LoraMerger;

    let dir = tempfile::tempdir().unwrap();
    let checkpoint = common::full_vocab::full_vocab_checkpoint(&tiny_checkpoint(), dir.path());
    let device = cpu_device();
    let (model, _) = StableDiffusion::<CpuBackend>::load(&checkpoint, &device, DType::F32).unwrap();
    let merger = Arc::new(LoraMerger::new(
        model.unet.clone(),
        &model.config.unet,
        model.text_encoder.clone(),
        &device,
    ));
    let plain = sampler(dir.path()).sample(&job("ddim", 1, 0)).unwrap();
    let merged_sampler = SdSampler::new(
        Arc::new(Mutex::new(model)),
        ClipTokenizer::bundled().unwrap(),
        device,
    )
    .with_merger(merger.clone());
    assert_eq!(
        pixels(&merged_sampler.sample(&job("ddim", 1, 0)).unwrap()),
        pixels(&plain)
    );

    let lora = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/lora/kohya_lora.safetensors");
    let with_adapter = SampleJob {
        adapters: vec![ResolvedAdapter::from_path(&lora, 0.8)],
        ..job("ddim", 1, 0)
    };
    let with_lora = merged_sampler.sample(&with_adapter).unwrap();
    assert_ne!(pixels(&with_lora), pixels(&plain));
    // The merger's own active set does not leak into a job: the job's set is what renders.
    merger.set_adapters(&[]).unwrap();
    assert_eq!(
        pixels(&merged_sampler.sample(&with_adapter).unwrap()),
        pixels(&with_lora)
    );
    assert_eq!(
        pixels(&merged_sampler.sample(&job("ddim", 1, 0)).unwrap()),
        pixels(&plain)
    );
    // A sampler without a merger refuses a job with adapters.
    assert!(matches!(
        sampler(dir.path()).sample(&with_adapter),
        Err(StylusError::MissingStage("merger"))
    ));
}
