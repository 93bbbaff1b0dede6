//! img2img and inpainting from a library, through the facade: load an SD 1.5 checkpoint as a
//! sampler, and render a request that starts from a photo (`GenerationRequest::init_image`)
//! instead of pure noise, optionally repainting only a masked area. With selection on
//! (`select: true` and a locator for the LoRA files, as `stylus generate --lora-dir` sets up), the
//! prompt still picks the adapters; here selection is off.
//!
//! ```text
//! cargo run --release --example img2img -- CHECKPOINT photo.png OUT_DIR "an oil painting of a harbour" \
//!     [STRENGTH] [MASK.png]
//! ```
//! (`stylus generate --init-image photo.png --strength 0.6 [--mask mask.png] ...` does the same
//! from the command line.)

use std::path::PathBuf;

use stylus::render::{Device, load_sampler};
use stylus::{
    GenerationRequest, InitImage, InpaintMask, Source, Stylus, StylusConfig, StylusError,
};
use stylus_diffusion::png::{ModelInfo, a1111_parameters, write_png};

#[tokio::main]
async fn main() -> Result<(), StylusError> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [checkpoint, photo, out, prompt, rest @ ..] = args.as_slice() else {
        return Err(StylusError::InvalidArgument(
            "usage: img2img CHECKPOINT PHOTO OUT_DIR PROMPT [STRENGTH] [MASK]".into(),
        ));
    };
    let config = StylusConfig::default();

    // 1. What to start from: the photo, fitted to 512x512 (scaled to cover, centre cropped),
    //    repainted at the given strength (A1111's "denoising strength"; 0.75 by default).
    let mut init = InitImage::new(photo);
    if let Some(strength) = rest.first() {
        init.strength = strength.parse().map_err(|_| {
            StylusError::InvalidArgument(format!("strength `{strength}` is not a number"))
        })?;
    }
    // 2. Inpainting: white in the mask is repainted; the rest of the photo is kept.
    if let Some(mask) = rest.get(1) {
        init.mask = Some(InpaintMask {
            blur: 4,
            ..InpaintMask::new(PathBuf::from(mask))
        });
    }

    let loaded = load_sampler(checkpoint.as_ref(), Device::Cpu, None)?;
    let stylus = Stylus::options()
        .sampler(loaded.sampler)
        .open(Source::Bundled, &config)?;
    let request = GenerationRequest {
        prompt: prompt.clone(),
        negative_prompt: "blurry, lowres".into(),
        batch: 1,
        seed: 1,
        sampling: config.sampling.clone(),
        select: false,
        explicit_loras: Vec::new(),
        init_latents: None,
        keep_latents: false,
        init_image: Some(init),
    };
    let generation = stylus.generate(&request).await?;
    std::fs::create_dir_all(out).map_err(|e| StylusError::io(out, e))?;
    for (i, image) in generation.images.iter().enumerate() {
        let path = PathBuf::from(out).join(format!("{i:04}.png"));
        // The parameters say "Denoising strength" (and "Mask blur"), as A1111 writes them.
        write_png(
            &path,
            image,
            &a1111_parameters(image, &ModelInfo::default(), &[]),
        )?;
        println!("{}", path.display());
    }
    Ok(())
}
