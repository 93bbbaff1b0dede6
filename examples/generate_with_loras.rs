//! Generate images from a library with explicit LoRA files: load an SD 1.5 checkpoint, put a
//! `LoraMerger` on its UNet and text encoder, make a weighted adapter set active, sample with
//! `SdSampler` (DPM++ 2M Karras, CFG 5) and write A1111-style PNGs.
//!
//! ```text
//! cargo run --release --example generate_with_loras -- CHECKPOINT OUT_DIR "a castle on a hill" \
//!     detail_tweaker.safetensors:0.5 film_grain.safetensors:0.3
//! ```
//! (`stylus generate --lora FILE:W ...` does the same from the command line.)

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use burn::tensor::DType;
use stylus_core::{
    Merger, ResolvedAdapter, SampleJob, Sampler, SamplingParams, StylusError, WeightedAdapter,
};
use stylus_diffusion::StableDiffusion;
use stylus_diffusion::backend::{CpuBackend, cpu_device};
use stylus_diffusion::clip_tokenizer::ClipTokenizer;
use stylus_diffusion::lora::LoraMerger;
use stylus_diffusion::png::{LoraHash, ModelInfo, a1111_parameters, lora_short_hash, write_png};
use stylus_diffusion::sampler::SdSampler;

fn main() -> Result<(), StylusError> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [checkpoint, out, prompt, loras @ ..] = args.as_slice() else {
        return Err(StylusError::InvalidArgument(
            "usage: generate_with_loras CHECKPOINT OUT_DIR PROMPT [LORA.safetensors:WEIGHT ...]"
                .into(),
        ));
    };
    let device = cpu_device();

    // 1. The model, and a merger that shares its UNet and text encoder (clones share storage).
    let (model, _report) = StableDiffusion::<CpuBackend>::load(checkpoint, &device, DType::F32)?;
    let merger = Arc::new(LoraMerger::new(
        model.unet.clone(),
        &model.config.unet,
        model.text_encoder.clone(),
        &device,
    ));
    let sampler = SdSampler::new(
        Arc::new(Mutex::new(model)),
        ClipTokenizer::bundled()?,
        device,
    )
    .with_merger(merger.clone());

    // 2. The adapter set: `FILE:WEIGHT` each; the merger applies the weight to both networks.
    let adapters: Vec<ResolvedAdapter> = loras
        .iter()
        .map(|spec| {
            let (path, weight) = spec.rsplit_once(':').unwrap_or((spec, "1"));
            let weight: f32 = weight.parse().map_err(|_| {
                StylusError::InvalidArgument(format!("{spec}: the weight is not a number"))
            })?;
            let path = PathBuf::from(path);
            Ok(ResolvedAdapter {
                adapter: WeightedAdapter::from_path(&path, weight),
                path,
            })
        })
        .collect::<Result<_, StylusError>>()?;
    let report = merger.set_adapters(&adapters)?;
    println!(
        "merged {} adapter(s), {} parameters, {:.0} ms",
        report.adapters.len(),
        report.touched_parameters,
        report.millis
    );

    // 3. Two images (seeds 1 and 2) with the paper's sampler settings.
    let job = SampleJob {
        prompt: prompt.clone(),
        negative_prompt: "blurry, lowres".into(),
        seed: 1,
        first_image: 0,
        batch: 2,
        sampling: SamplingParams::default(),
        init_latents: None,
        keep_latents: false,
    };
    let hashes = adapters
        .iter()
        .map(|a| {
            Ok(LoraHash {
                alias: a.adapter.alias.clone(),
                hash: lora_short_hash(&a.path)?,
            })
        })
        .collect::<Result<Vec<_>, StylusError>>()?;
    std::fs::create_dir_all(out).map_err(|e| StylusError::io(out, e))?;
    for (i, mut image) in sampler.sample(&job)?.into_iter().enumerate() {
        image.adapters = adapters.iter().map(|a| a.adapter.clone()).collect();
        let path = PathBuf::from(out).join(format!("{i:04}.png"));
        write_png(
            &path,
            &image,
            &a1111_parameters(&image, &ModelInfo::default(), &hashes),
        )?;
        println!("{}", path.display());
    }
    Ok(())
}
