//! One atomic render: two `generate` calls running at the same time on one pipeline (one model,
//! one merger) with different adapter sets each render exactly what they would alone, bit for bit.
//! The tiny random-weight SD model (widened to CLIP's vocabulary) and two LoRA fixtures.

#[path = "../crates/stylus-diffusion/tests/common/mod.rs"]
mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use stylus::render::{Device, load_sampler};
use stylus::{GenerationRequest, Source, Stylus, StylusConfig};
use stylus_core::{ExplicitLora, GeneratedImage, SamplingParams};

fn fixture(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("crates/stylus-diffusion/tests/fixtures")
        .join(path)
}

fn request(loras: &[(&str, f32)]) -> GenerationRequest {
    GenerationRequest {
        prompt: "a castle on a hill, (golden hour:1.3)".into(),
        negative_prompt: "blurry".into(),
        batch: 2,
        seed: 11,
        sampling: SamplingParams {
            steps: 3,
            guidance_scale: 5.0,
            sampler: "euler_ancestral".into(),
            width: 16,
            height: 16,
            clip_skip: 1,
        },
        select: false,
        explicit_loras: loras
            .iter()
            .map(|(file, weight)| ExplicitLora {
                path: fixture(&format!("lora/{file}")),
                weight: *weight,
            })
            .collect(),
        init_latents: None,
        keep_latents: false,
        init_image: None,
    }
}

fn pixels(images: &[GeneratedImage]) -> Vec<Vec<u8>> {
    images.iter().map(|i| i.rgb.clone()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_generates_render_their_own_adapters_bit_for_bit() {
    let dir = tempfile::tempdir().unwrap();
    let checkpoint =
        common::full_vocab::full_vocab_checkpoint(&fixture("sd/tiny-ldm.safetensors"), dir.path());
    let loaded = load_sampler(&checkpoint, Device::Cpu, None).unwrap();
    let stylus = Arc::new(
        Stylus::options()
            .sampler(loaded.sampler)
            .open(Source::Bundled, &StylusConfig::default())
            .unwrap(),
    );
    let a = request(&[("kohya_lora.safetensors", 0.9)]);
    let b = request(&[("lokr.safetensors", 1.0), ("peft.safetensors", -0.7)]);
    let plain = request(&[]);

    // Sequential twins first.
    let alone_a = pixels(&stylus.generate(&a).await.unwrap().images);
    let alone_b = pixels(&stylus.generate(&b).await.unwrap().images);
    let alone_plain = pixels(&stylus.generate(&plain).await.unwrap().images);
    assert_ne!(alone_a, alone_b, "the two adapter sets render differently");
    assert_ne!(alone_a, alone_plain);

    // Then interleaved: several rounds of A and B (and the base) at once.
    for _ in 0..3 {
        let (s1, s2, s3) = (stylus.clone(), stylus.clone(), stylus.clone());
        let (ra, rb, rp) = (a.clone(), b.clone(), plain.clone());
        let (ga, gb, gp) = tokio::join!(
            tokio::spawn(async move { s1.generate(&ra).await }),
            tokio::spawn(async move { s2.generate(&rb).await }),
            tokio::spawn(async move { s3.generate(&rp).await }),
        );
        assert_eq!(pixels(&ga.unwrap().unwrap().images), alone_a);
        assert_eq!(pixels(&gb.unwrap().unwrap().images), alone_b);
        assert_eq!(pixels(&gp.unwrap().unwrap().images), alone_plain);
    }
}
