//! The full-size SD 1.5 generation path on CPU with random weights: real-size text encoder, UNet
//! (64x64 latents, CFG batch 2) and VAE (512x512), through the `Sampler` trait with the real
//! tokenizer. Ignored by default (about two minutes of a 2-core CPU and ~6 GB of memory); run:
//! `cargo test -p stylus-diffusion --test sampler_full_size -- --ignored --nocapture`
//! It prints the time per sampling step and of the whole job, then of one img2img step from the
//! generated image (VAE encode + 1 of 2 steps at strength 0.5 + decode).

use std::sync::{Arc, Mutex};
use std::time::Instant;

use stylus_core::{InitImage, SampleJob, Sampler, SamplingParams};
use stylus_diffusion::backend::{CpuBackend, cpu_device};
use stylus_diffusion::clip_tokenizer::ClipTokenizer;
use stylus_diffusion::models::clip::ClipTextConfig;
use stylus_diffusion::models::unet::UNetConfig;
use stylus_diffusion::models::vae::VaeConfig;
use stylus_diffusion::sampler::{SamplingProgress, SdSampler};
use stylus_diffusion::{SdConfig, StableDiffusion};

#[test]
#[ignore = "full-size SD 1.5 on CPU: minutes and gigabytes"]
fn full_size_sd15_txt2img_runs_on_cpu() {
    let device = cpu_device();
    let started = Instant::now();
    let config = SdConfig {
        text_encoder: ClipTextConfig::v1_5(),
        unet: UNetConfig::v1_5(),
        vae: VaeConfig::v1_5(),
    };
    let model = StableDiffusion::<CpuBackend> {
        text_encoder: config.text_encoder.init(&device),
        unet: config.unet.init(&device),
        vae: config.vae.init(&device),
        config,
    };
    eprintln!("random init: {:.1} s", started.elapsed().as_secs_f64());
    let step_times = Arc::new(Mutex::new(vec![Instant::now()]));
    let times = step_times.clone();
    let sampler = SdSampler::new(
        Arc::new(Mutex::new(model)),
        ClipTokenizer::bundled().unwrap(),
        device,
    )
    .with_progress(Arc::new(move |_: SamplingProgress| {
        times.lock().unwrap().push(Instant::now());
    }));
    let job = SampleJob {
        adapters: Vec::new(),
        prompt: "a castle on a hill at golden hour, realistic, best quality".into(),
        negative_prompt: "blurry".into(),
        seed: 1,
        first_image: 0,
        batch: 1,
        sampling: SamplingParams {
            steps: 2,
            ..SamplingParams::default()
        },
        init_latents: None,
        keep_latents: true,
        init_image: None,
    };
    let started = Instant::now();
    step_times.lock().unwrap()[0] = started;
    let images = sampler.sample(&job).unwrap();
    let total = started.elapsed().as_secs_f64();
    let times = step_times.lock().unwrap();
    let steps: Vec<f64> = times
        .windows(2)
        .map(|w| (w[1] - w[0]).as_secs_f64())
        .collect();
    eprintln!(
        "512x512, DPM++ 2M Karras, CFG batch 2: step times {steps:.2?} s (the first includes \
         text encoding), whole job {total:.1} s (VAE decode included)"
    );
    assert_eq!(images.len(), 1);
    assert_eq!(images[0].rgb.len(), 512 * 512 * 3);
    assert_eq!(images[0].latents.as_ref().unwrap().len(), 4 * 64 * 64);
    assert!(
        images[0]
            .latents
            .as_ref()
            .unwrap()
            .iter()
            .all(|v| v.is_finite())
    );
    drop(times);

    // img2img from the image just made: strength 0.5 of 2 steps = one UNet step.
    let dir = tempfile::tempdir().unwrap();
    let photo = dir.path().join("photo.png");
    stylus_diffusion::png::write_png(&photo, &images[0], "").unwrap();
    let mut init = InitImage::new(&photo);
    init.strength = 0.5;
    let img2img = SampleJob {
        init_image: Some(init),
        ..job
    };
    let started = Instant::now();
    step_times.lock().unwrap().truncate(0);
    let images = sampler.sample(&img2img).unwrap();
    let total = started.elapsed().as_secs_f64();
    eprintln!(
        "img2img 512x512, strength 0.5 of 2 steps: {} UNet step(s), whole job {total:.1} s \
         (VAE encode and decode included)",
        step_times.lock().unwrap().len()
    );
    assert_eq!(step_times.lock().unwrap().len(), 1);
    assert_eq!(images[0].rgb.len(), 512 * 512 * 3);
    assert!(
        images[0]
            .latents
            .as_ref()
            .unwrap()
            .iter()
            .all(|v| v.is_finite())
    );
}
