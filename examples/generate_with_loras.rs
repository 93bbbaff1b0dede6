//! Generate images from a library with explicit LoRA files, through the facade: load an SD 1.5
//! checkpoint as a sampler (`stylus::render::load_sampler`), open a pipeline with it, and render
//! a request whose adapter set travels with it (merge and sample as one job, off the async
//! workers). Writes A1111-style PNGs.
//!
//! ```text
//! cargo run --release --example generate_with_loras -- CHECKPOINT OUT_DIR "a castle on a hill" \
//!     detail_tweaker.safetensors:0.5 film_grain.safetensors:0.3
//! ```
//! (`stylus generate --lora FILE:W ...` does the same from the command line.)

use std::path::PathBuf;

use stylus::render::{Device, load_sampler};
use stylus::{GenerationRequest, Source, Stylus, StylusConfig, StylusError};
use stylus_core::ExplicitLora;
use stylus_diffusion::png::{LoraHash, ModelInfo, a1111_parameters, lora_short_hash, write_png};

#[tokio::main]
async fn main() -> Result<(), StylusError> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [checkpoint, out, prompt, loras @ ..] = args.as_slice() else {
        return Err(StylusError::InvalidArgument(
            "usage: generate_with_loras CHECKPOINT OUT_DIR PROMPT [LORA.safetensors:WEIGHT ...]"
                .into(),
        ));
    };
    let config = StylusConfig::default();

    // 1. The adapter set: `FILE:WEIGHT` each; the weight applies to both networks.
    let explicit_loras = loras
        .iter()
        .map(|spec| {
            let (path, weight) = spec.rsplit_once(':').unwrap_or((spec, "1"));
            let weight: f32 = weight.parse().map_err(|_| {
                StylusError::InvalidArgument(format!("{spec}: the weight is not a number"))
            })?;
            Ok(ExplicitLora {
                path: PathBuf::from(path),
                weight,
            })
        })
        .collect::<Result<Vec<_>, StylusError>>()?;

    // 2. The model as a sampler, and a pipeline that renders with it (no selection here, so the
    //    small bundled catalog fills the catalog slot).
    let loaded = load_sampler(checkpoint.as_ref(), Device::Cpu, None)?;
    let stylus = Stylus::options()
        .sampler(loaded.sampler)
        .open(Source::Bundled, &config)?;

    // 3. Two images (seeds 1 and 2) with the config's sampler settings (the paper's).
    let request = GenerationRequest {
        prompt: prompt.clone(),
        negative_prompt: "blurry, lowres".into(),
        batch: 2,
        seed: 1,
        sampling: config.sampling.clone(),
        select: false,
        explicit_loras,
        init_latents: None,
        keep_latents: false,
        init_image: None,
    };
    let generation = stylus.generate(&request).await?;
    let hashes = generation
        .adapters
        .iter()
        .map(|a| {
            Ok(LoraHash {
                alias: a.adapter.alias.clone(),
                hash: lora_short_hash(&a.path)?,
            })
        })
        .collect::<Result<Vec<_>, StylusError>>()?;
    std::fs::create_dir_all(out).map_err(|e| StylusError::io(out, e))?;
    for (i, image) in generation.images.iter().enumerate() {
        let path = PathBuf::from(out).join(format!("{i:04}.png"));
        write_png(
            &path,
            image,
            &a1111_parameters(image, &ModelInfo::default(), &hashes),
        )?;
        println!("{}", path.display());
    }
    Ok(())
}
