//! Whole-trajectory parity of the txt2img sampler with diffusers' StableDiffusionPipeline on the
//! small random-weight model (fixtures from `tools/make_scheduler_fixtures.py`): the latents after
//! every step and the decoded images, relative L2 error <= 1e-4.

use burn::tensor::DType;
use safetensors::SafeTensors;
use stylus_core::rng::SplitMix64;
use stylus_diffusion::StableDiffusion;
use stylus_diffusion::backend::{CpuBackend, cpu_device};
use stylus_diffusion::sampler::{LatentShape, decode, denoise, encode_chunk_pair};
use stylus_diffusion::schedulers::{ScheduleConfig, scheduler_by_name};

#[path = "common/parity.rs"]
mod parity;

use parity::{chunk, fixtures, floats, relative_l2};

const TOLERANCE: f64 = 1e-4;

#[test]
fn trajectories_match_diffusers_pipeline() {
    let device = cpu_device();
    let (model, _) = StableDiffusion::<CpuBackend>::load(
        fixtures().join("sd/tiny-diffusers"),
        &device,
        DType::F32,
    )
    .unwrap();
    let bytes = std::fs::read(fixtures().join("schedulers/trajectory.safetensors")).unwrap();
    let tensors = SafeTensors::deserialize(&bytes).unwrap();
    let cases: Vec<serde_json::Value> = serde_json::from_str(
        &std::fs::read_to_string(fixtures().join("schedulers/trajectory.json")).unwrap(),
    )
    .unwrap();
    let initial = floats(&tensors, "latents");
    let shape = LatentShape {
        batch: 2,
        channels: 4,
        height: 8,
        width: 8,
    };
    let cond = chunk(&tensors, "cond_ids");
    let uncond = chunk(&tensors, "uncond_ids");

    for case in &cases {
        let name = case["name"].as_str().unwrap();
        let steps = case["steps"].as_u64().unwrap() as usize;
        let clip_skip = case["clip_skip"].as_u64().unwrap() as usize;
        let guidance = case["guidance_scale"].as_f64().unwrap();
        let mut scheduler = scheduler_by_name(
            case["scheduler"].as_str().unwrap(),
            &ScheduleConfig::sd15(),
            steps,
        )
        .unwrap();
        let pair = encode_chunk_pair(
            &model,
            std::slice::from_ref(&uncond),
            std::slice::from_ref(&cond),
            clip_skip,
            &device,
        )
        .unwrap();
        let sigma = scheduler.init_noise_sigma();
        let latents: Vec<f32> = initial
            .iter()
            .map(|&v| (f64::from(v) * sigma) as f32)
            .collect();
        let reference_steps = floats(&tensors, &format!("{name}.steps"));
        let mut errors = Vec::new();
        let mut rngs = vec![SplitMix64::new(0), SplitMix64::new(1)];
        let final_latents = denoise(
            &model,
            scheduler.as_mut(),
            &pair,
            latents,
            shape,
            guidance,
            &mut rngs,
            &device,
            &mut |step, latents| {
                let reference = &reference_steps[step * shape.len()..(step + 1) * shape.len()];
                errors.push(relative_l2(latents, reference));
                Ok(())
            },
        )
        .unwrap();
        assert_eq!(errors.len(), steps, "{name}");
        let images = decode(&model, &final_latents, shape, &device).unwrap();
        let image_error = relative_l2(&images, &floats(&tensors, &format!("{name}.images")));
        eprintln!("{name}: step errors {errors:?}, image error {image_error:e}");
        for (step, err) in errors.iter().enumerate() {
            assert!(
                *err <= TOLERANCE,
                "{name}: step {step}: relative error {err:e}"
            );
        }
        assert!(
            image_error <= TOLERANCE,
            "{name}: image relative error {image_error:e}"
        );
    }
}
