//! img2img and inpainting parity with diffusers' StableDiffusionImg2ImgPipeline and
//! StableDiffusionInpaintPipeline on the small random-weight model (fixtures from
//! `tools/make_img2img_fixtures.py`): the same code path the sampler takes
//! (`start_from_image` on the fixture PNGs, then `denoise_with`), fed diffusers' recorded
//! Gaussian draws; the latents after every step and the decoded images agree to relative L2
//! error <= 1e-4. Cases: img2img at strengths 0.5 / 0.75 with Euler and DPM++ 2M Karras (and PLMS
//! at 0.6), inpainting with the regular 4-channel UNet (latent blending; DDIM 0.75, Euler 1) and
//! with a 9-channel inpainting UNet (DPM++ 2M Karras 1, Euler 0.6).

use burn::tensor::DType;
use safetensors::SafeTensors;
use stylus_core::rng::SplitMix64;
use stylus_core::{InitImage, InpaintMask};
use stylus_diffusion::StableDiffusion;
use stylus_diffusion::backend::{CpuBackend, cpu_device};
use stylus_diffusion::checkpoint::diffusers::load_unet;
use stylus_diffusion::sampler::{
    Draw, LatentShape, decode, denoise_with, encode_chunk_pair, start_from_image,
};
use stylus_diffusion::schedulers::{ScheduleConfig, scheduler_by_name};

#[path = "common/parity.rs"]
mod parity;

use parity::{chunk, fixtures, floats, relative_l2};

const TOLERANCE: f64 = 1e-4;

#[test]
fn img2img_and_inpainting_match_diffusers_pipelines() {
    let device = cpu_device();
    let dir = fixtures().join("img2img");
    let (regular, _) = StableDiffusion::<CpuBackend>::load(
        fixtures().join("sd/tiny-diffusers"),
        &device,
        DType::F32,
    )
    .unwrap();
    let (unet9, unet9_config, _) =
        load_unet::<CpuBackend>(&dir.join("inpaint-unet"), &device, DType::F32).unwrap();
    assert_eq!(unet9_config.in_channels, 9);
    let mut inpainting = StableDiffusion {
        text_encoder: regular.text_encoder.clone(),
        unet: unet9,
        vae: regular.vae.clone(),
        config: regular.config.clone(),
    };
    inpainting.config.unet = unet9_config;

    let bytes = std::fs::read(dir.join("tensors.safetensors")).unwrap();
    let tensors = SafeTensors::deserialize(&bytes).unwrap();
    let cases: Vec<serde_json::Value> =
        serde_json::from_str(&std::fs::read_to_string(dir.join("cases.json")).unwrap()).unwrap();
    assert_eq!(cases.len(), 9);
    let shape = LatentShape {
        batch: 1,
        channels: 4,
        height: 8,
        width: 8,
    };
    let pair = encode_chunk_pair(
        &regular,
        &[chunk(&tensors, "uncond_ids")],
        &[chunk(&tensors, "cond_ids")],
        1,
        &device,
    )
    .unwrap();

    for case in &cases {
        let name = case["name"].as_str().unwrap();
        let steps = case["steps"].as_u64().unwrap() as usize;
        let strength = case["strength"].as_f64().unwrap() as f32;
        let model = if case["unet"] == "inpaint" {
            &inpainting
        } else {
            &regular
        };
        let mut init = InitImage::new(dir.join("init.png"));
        init.strength = strength;
        if case["mode"] == "inpaint" {
            init.mask = Some(InpaintMask::new(dir.join("mask.png")));
        }
        let mut scheduler = scheduler_by_name(
            case["scheduler"].as_str().unwrap(),
            &ScheduleConfig::sd15(),
            steps,
        )
        .unwrap();
        let mut asked = Vec::new();
        let start = start_from_image(
            model,
            &init,
            scheduler.as_ref(),
            steps,
            shape,
            &mut |what| {
                asked.push(what);
                let key = match what {
                    Draw::Noise => "noise",
                    Draw::ImagePosterior => "image_eps",
                    Draw::MaskedImagePosterior => "masked_eps",
                };
                floats(&tensors, &format!("{name}.{key}"))
            },
            &device,
        )
        .unwrap();
        assert_eq!(asked[0], Draw::Noise, "{name}");
        let reference_steps = floats(&tensors, &format!("{name}.steps"));
        let steps_run = case["steps_run"].as_u64().unwrap() as usize;
        assert_eq!(reference_steps.len(), steps_run * shape.len(), "{name}");
        let mut errors = Vec::new();
        let mut rngs = vec![SplitMix64::new(0)];
        let final_latents = denoise_with(
            model,
            scheduler.as_mut(),
            &pair,
            start.latents,
            shape,
            case["guidance_scale"].as_f64().unwrap(),
            &mut rngs,
            &device,
            &start.options,
            &mut |step, latents| {
                let reference = &reference_steps[step * shape.len()..(step + 1) * shape.len()];
                errors.push(relative_l2(latents, reference));
                Ok(())
            },
        )
        .unwrap();
        assert_eq!(errors.len(), steps_run, "{name}: steps run");
        let images = decode(model, &final_latents, shape, &device).unwrap();
        let image_error = relative_l2(&images, &floats(&tensors, &format!("{name}.images")));
        let worst = errors.iter().copied().fold(0.0, f64::max);
        eprintln!("{name}: worst step error {worst:.2e}, image error {image_error:.2e}");
        for (step, err) in errors.iter().enumerate() {
            assert!(
                *err <= TOLERANCE,
                "{name}: step {step}: relative error {err:e} (all: {errors:?})"
            );
        }
        assert!(
            image_error <= TOLERANCE,
            "{name}: image relative error {image_error:e}"
        );
    }
}
