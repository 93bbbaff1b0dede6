//! PNG output with the recipe inside, the way AUTOMATIC1111 writes it: a `parameters` tEXt chunk
//! that A1111's "PNG Info", ComfyUI and Civitai read back.
//!
//! ```text
//! a castle on a hill, realistic, best quality <lora:detail_tweaker:0.4>
//! Negative prompt: blurry
//! Steps: 35, Sampler: DPM++ 2M Karras, CFG scale: 5, Seed: 1, Size: 512x512, Model hash: 6ce0161689, Lora hashes: "detail_tweaker: 8e15bfa6a3f3"
//! ```
//!
//! The negative-prompt line is left out when there is none; values containing `,`, `:` or a
//! newline are JSON-quoted (A1111's `quote`); the model hash is A1111's short hash (first 10 hex
//! digits of the file's SHA-256), LoRA hashes are A1111's (first 12 hex digits of the SHA-256 of
//! a safetensors file's data after its header, Civitai's "AutoV3").

use std::io::Read;
use std::path::Path;

use sha2::{Digest, Sha256};
use stylus_core::{GeneratedImage, Result, StylusError, format_weight};

use crate::schedulers::a1111_sampler_name;

/// Model-level facts for the `parameters` line.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ModelInfo {
    /// A1111 short hash of the checkpoint file (10 hex digits).
    pub hash: Option<String>,
    /// Checkpoint name (file stem).
    pub name: Option<String>,
}

/// One `Lora hashes` entry.
#[derive(Debug, Clone, PartialEq)]
pub struct LoraHash {
    pub alias: String,
    /// 12 hex digits.
    pub hash: String,
}

/// The A1111 `parameters` text of an image.
pub fn a1111_parameters(
    image: &GeneratedImage,
    model: &ModelInfo,
    lora_hashes: &[LoraHash],
) -> String {
    // The text is line-oriented (prompt, `Negative prompt:`, settings): no line breaks inside.
    let one_line = |text: &str| text.trim().replace(|c: char| c.is_control(), " ");
    let mut prompt = one_line(&image.prompt);
    for adapter in &image.adapters {
        let alias = sanitize_alias(&adapter.alias);
        if !prompt.contains(&format!("<lora:{alias}:")) {
            if !prompt.is_empty() {
                prompt.push(' ');
            }
            prompt.push_str(&format!("<lora:{alias}:{}>", format_weight(adapter.weight)));
        }
    }
    let s = &image.sampling;
    let mut fields: Vec<(&str, String)> = vec![
        ("Steps", s.steps.to_string()),
        ("Sampler", a1111_sampler_name(&s.sampler).to_string()),
        ("CFG scale", format_number(f64::from(s.guidance_scale))),
        ("Seed", image.seed.to_string()),
        ("Size", format!("{}x{}", image.width, image.height)),
    ];
    if let Some(hash) = &model.hash {
        fields.push(("Model hash", hash.clone()));
    }
    if let Some(name) = &model.name {
        fields.push(("Model", name.clone()));
    }
    // img2img / inpainting, in A1111's order: the strength after the model, the mask settings
    // with the extra parameters.
    if let Some(init) = &image.init_image {
        fields.push((
            "Denoising strength",
            format_number(f64::from(init.strength)),
        ));
    }
    if s.clip_skip > 1 {
        fields.push(("Clip skip", s.clip_skip.to_string()));
    }
    if let Some(mask) = image.init_image.as_ref().and_then(|i| i.mask.as_ref()) {
        fields.push(("Mask blur", mask.blur.to_string()));
    }
    if !lora_hashes.is_empty() {
        let list: Vec<String> = lora_hashes
            .iter()
            .map(|l| format!("{}: {}", sanitize_alias(&l.alias), l.hash))
            .collect();
        fields.push(("Lora hashes", list.join(", ")));
    }
    let line: Vec<String> = fields
        .into_iter()
        .map(|(key, value)| format!("{key}: {}", quote(&value)))
        .collect();
    let mut text = prompt;
    if !image.negative_prompt.trim().is_empty() {
        text.push_str(&format!(
            "\nNegative prompt: {}",
            one_line(&image.negative_prompt)
        ));
    }
    text.push('\n');
    text.push_str(&line.join(", "));
    text
}

/// Writes an 8-bit RGB PNG with a `parameters` tEXt chunk.
pub fn write_png(path: &Path, image: &GeneratedImage, parameters: &str) -> Result<()> {
    check_rgb(path, image)?;
    let file = std::fs::File::create(path).map_err(|e| StylusError::io(path, e))?;
    encode(std::io::BufWriter::new(file), path, image, parameters)
}

/// The PNG [`write_png`] writes, in memory (what a server sends).
pub fn encode_png(image: &GeneratedImage, parameters: &str) -> Result<Vec<u8>> {
    let label = Path::new("<png in memory>");
    check_rgb(label, image)?;
    let mut bytes = Vec::new();
    encode(&mut bytes, label, image, parameters)?;
    Ok(bytes)
}

fn check_rgb(path: &Path, image: &GeneratedImage) -> Result<()> {
    let expected = image.width as usize * image.height as usize * 3;
    if image.rgb.len() != expected {
        return Err(StylusError::InvalidArgument(format!(
            "{}: {} RGB bytes for a {}x{} image (expected {expected})",
            path.display(),
            image.rgb.len(),
            image.width,
            image.height
        )));
    }
    Ok(())
}

fn encode(
    out: impl std::io::Write,
    path: &Path,
    image: &GeneratedImage,
    parameters: &str,
) -> Result<()> {
    let png_error = |e: ::png::EncodingError| StylusError::io(path, std::io::Error::other(e));
    let mut encoder = ::png::Encoder::new(out, image.width, image.height);
    encoder.set_color(::png::ColorType::Rgb);
    encoder.set_depth(::png::BitDepth::Eight);
    // tEXt is Latin-1; prompts are often not, so non-Latin-1 text goes into an iTXt chunk (UTF-8),
    // which A1111 and Civitai also read.
    if parameters.chars().all(|c| (c as u32) < 256) {
        encoder
            .add_text_chunk("parameters".to_string(), parameters.to_string())
            .map_err(png_error)?;
    } else {
        encoder
            .add_itxt_chunk("parameters".to_string(), parameters.to_string())
            .map_err(png_error)?;
    }
    let mut writer = encoder.write_header().map_err(png_error)?;
    writer.write_image_data(&image.rgb).map_err(png_error)?;
    writer.finish().map_err(png_error)
}

/// A1111's short model hash: the first 10 hex digits of the file's SHA-256.
pub fn model_short_hash(path: &Path) -> Result<String> {
    let mut file = std::fs::File::open(path).map_err(|e| StylusError::io(path, e))?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 1 << 20];
    loop {
        let n = file
            .read(&mut buffer)
            .map_err(|e| StylusError::io(path, e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buffer[..n]);
    }
    Ok(hex::encode(hasher.finalize())[..10].to_string())
}

/// A1111's LoRA hash (Civitai AutoV3): the first 12 hex digits of the SHA-256 of a safetensors
/// file's bytes after its header.
pub fn lora_short_hash(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path).map_err(|e| StylusError::io(path, e))?;
    let invalid = |message: &str| StylusError::Safetensors {
        path: path.to_path_buf(),
        message: message.to_string(),
        source: None,
    };
    let header: [u8; 8] = bytes
        .get(..8)
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| invalid("shorter than the 8-byte header length"))?;
    let start = usize::try_from(u64::from_le_bytes(header))
        .ok()
        .and_then(|n| n.checked_add(8))
        .filter(|&n| n <= bytes.len())
        .ok_or_else(|| invalid("header length points past the end of the file"))?;
    Ok(hex::encode(Sha256::digest(&bytes[start..]))[..12].to_string())
}

/// Numbers as A1111 prints them: `CFG scale: 7` for a whole number, `7.5` otherwise.
fn format_number(value: f64) -> String {
    if value.fract() == 0.0 && value.abs() < 1e15 {
        format!("{}", value as i64)
    } else {
        // f32 settings printed at f32 precision: 7.5, 4.2 (not 4.199999809).
        format!("{}", value as f32)
    }
}

/// A1111's `quote`: values with `,`, `:` or a newline become JSON strings.
fn quote(value: &str) -> String {
    if value.contains([',', ':', '\n']) {
        serde_json::to_string(value).expect("a string serializes")
    } else {
        value.to_string()
    }
}

/// Aliases come from untrusted catalog text: keep characters that cannot break the tag syntax.
fn sanitize_alias(alias: &str) -> String {
    alias
        .chars()
        .map(|c| match c {
            '<' | '>' | ':' | '\n' | '\r' => '_',
            c => c,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use stylus_core::{SamplingParams, WeightedAdapter};

    fn image() -> GeneratedImage {
        GeneratedImage {
            width: 16,
            height: 8,
            rgb: (0..16 * 8 * 3).map(|v| (v % 251) as u8).collect(),
            seed: 1,
            prompt: "a castle on a hill, realistic, best quality".into(),
            negative_prompt: "blurry".into(),
            adapters: vec![WeightedAdapter::from_path(
                Path::new("/loras/detail_tweaker.safetensors"),
                0.4,
            )],
            sampling: SamplingParams {
                width: 16,
                height: 8,
                ..SamplingParams::default()
            },
            latents: None,
            init_image: None,
        }
    }

    #[test]
    fn parameters_read_like_a1111() {
        let model = ModelInfo {
            hash: Some("6ce0161689".into()),
            name: Some("v1-5-pruned-emaonly".into()),
        };
        let hashes = [LoraHash {
            alias: "detail_tweaker".into(),
            hash: "8e15bfa6a3f3".into(),
        }];
        assert_eq!(
            a1111_parameters(&image(), &model, &hashes),
            "a castle on a hill, realistic, best quality <lora:detail_tweaker:0.4>\n\
             Negative prompt: blurry\n\
             Steps: 35, Sampler: DPM++ 2M Karras, CFG scale: 5, Seed: 1, Size: 16x8, \
             Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, \
             Lora hashes: \"detail_tweaker: 8e15bfa6a3f3\""
        );
        let mut plain = image();
        plain.negative_prompt.clear();
        plain.adapters.clear();
        plain.sampling.guidance_scale = 7.5;
        plain.sampling.clip_skip = 2;
        plain.sampling.sampler = "euler_ancestral".into();
        assert_eq!(
            a1111_parameters(&plain, &ModelInfo::default(), &[]),
            "a castle on a hill, realistic, best quality\n\
             Steps: 35, Sampler: Euler a, CFG scale: 7.5, Seed: 1, Size: 16x8, Clip skip: 2"
        );
        let mut init = stylus_core::InitImage::new("photo.png");
        init.strength = 0.6;
        plain.init_image = Some(init.clone());
        assert!(
            a1111_parameters(&plain, &ModelInfo::default(), &[])
                .ends_with("Size: 16x8, Denoising strength: 0.6, Clip skip: 2"),
        );
        init.mask = Some(stylus_core::InpaintMask {
            blur: 4,
            ..stylus_core::InpaintMask::new("mask.png")
        });
        plain.init_image = Some(init);
        assert!(
            a1111_parameters(&plain, &ModelInfo::default(), &[])
                .ends_with("Denoising strength: 0.6, Clip skip: 2, Mask blur: 4"),
        );
    }

    #[test]
    fn line_breaks_in_prompts_never_split_the_parameters() {
        let mut odd = image();
        odd.prompt = "a castle\non a hill\r\nNegative prompt: x".into();
        odd.negative_prompt = "blurry\nSteps: 99".into();
        odd.adapters.clear();
        let text = a1111_parameters(&odd, &ModelInfo::default(), &[]);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert!(lines[0].starts_with("a castle on a hill"), "{text}");
        assert_eq!(lines[1], "Negative prompt: blurry Steps: 99");
        assert!(lines[2].starts_with("Steps: 35,"));
    }

    #[test]
    fn png_round_trips_pixels_and_parameters() {
        let dir = tempfile::tempdir().unwrap();
        for (name, text) in [
            ("latin.png", "a cat\nSteps: 2"),
            ("utf8.png", "東京の猫 🐱\nSteps: 2"),
        ] {
            let path = dir.path().join(name);
            write_png(&path, &image(), text).unwrap();
            let decoder =
                ::png::Decoder::new(std::io::BufReader::new(std::fs::File::open(&path).unwrap()));
            let mut reader = decoder.read_info().unwrap();
            let mut pixels = vec![0; reader.output_buffer_size().unwrap()];
            reader.next_frame(&mut pixels).unwrap();
            assert_eq!(pixels, image().rgb);
            let info = reader.info();
            let found: Vec<String> = info
                .uncompressed_latin1_text
                .iter()
                .filter(|c| c.keyword == "parameters")
                .map(|c| c.text.clone())
                .chain(
                    info.utf8_text
                        .iter()
                        .filter(|c| c.keyword == "parameters")
                        .map(|c| c.get_text().unwrap()),
                )
                .collect();
            assert_eq!(found, vec![text.to_string()], "{name}");
        }
    }

    #[test]
    fn wrong_pixel_count_is_an_error() {
        let mut bad = image();
        bad.rgb.pop();
        let dir = tempfile::tempdir().unwrap();
        assert!(write_png(&dir.path().join("x.png"), &bad, "").is_err());
    }
}
