//! Telling adapters for other base models (SDXL, SD 2.x, DiT models) apart from SD 1.x ones, from
//! their key names and factor shapes first and their metadata second.

use stylus_core::{Result, StylusError};

use super::file::TensorFile;

/// The base-model family an adapter was trained for, with the key or metadata entry that shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BaseModelGuess {
    /// `sd1`, `sd2`, `sdxl`, `dit (Flux/SD3)` or `unknown`.
    pub family: &'static str,
    /// What decided it.
    pub evidence: String,
}

/// Name patterns that only other architectures have.
const FOREIGN_NAMES: &[(&str, &str)] = &[
    ("lora_te2_", "sdxl"),
    ("text_encoder_2.", "sdxl"),
    ("label_emb", "sdxl"),
    ("add_embedding", "sdxl"),
    ("double_blocks", "dit (Flux/SD3)"),
    ("single_blocks", "dit (Flux/SD3)"),
    ("lora_transformer_", "dit (Flux/SD3)"),
    ("joint_blocks", "dit (Flux/SD3)"),
];

/// Guesses the base model of an adapter file. Structure (names, cross-attention and text
/// widths) wins over metadata.
pub fn guess_base_model(file: &TensorFile) -> BaseModelGuess {
    let guess = |family, evidence: String| BaseModelGuess { family, evidence };
    for key in file.tensors().keys() {
        if let Some((_, family)) = FOREIGN_NAMES
            .iter()
            .find(|(pattern, _)| key.contains(pattern))
        {
            return guess(family, format!("key `{key}`"));
        }
        if key.starts_with("transformer.") {
            return guess("dit (Flux/SD3)", format!("key `{key}`"));
        }
        // SD 1.x and 2.x have one transformer block per Transformer2D; SDXL has up to ten.
        for index in 1..10 {
            if key.contains(&format!("transformer_blocks_{index}_"))
                || key.contains(&format!("transformer_blocks.{index}."))
            {
                return guess("sdxl", format!("key `{key}`"));
            }
        }
    }
    // Cross-attention key/value inputs: 768 (SD 1), 1024 (SD 2), 2048 (SDXL); text-encoder
    // widths: 768 (CLIP-L), 1024 (OpenCLIP-H), 1280 (OpenCLIP-bigG).
    for (key, info) in file.tensors() {
        let is_down = [
            ".lora_down.weight",
            ".lora_A.weight",
            ".lora.down.weight",
            "_lora.down.weight",
            ".hada_w1_b",
        ]
        .iter()
        .any(|s| key.ends_with(s));
        if !is_down || info.shape.len() < 2 {
            continue;
        }
        let width = info.shape[1];
        let cross_attention = [
            "attn2_to_k",
            "attn2_to_v",
            "attn2.to_k",
            "attn2.to_v",
            "attn2.processor.to_k",
            "attn2.processor.to_v",
        ]
        .iter()
        .any(|p| key.contains(p));
        let text_q = key.contains("q_proj") || key.contains("self_attn.to_q");
        match (cross_attention, text_q, width) {
            (true, _, 768) | (_, true, 768) => {
                return guess("sd1", format!("`{key}` reads {width} features"));
            }
            (true, _, 1024) | (_, true, 1024) => {
                return guess("sd2", format!("`{key}` reads {width} features"));
            }
            (true, _, 2048) | (_, true, 1280) => {
                return guess("sdxl", format!("`{key}` reads {width} features"));
            }
            _ => {}
        }
    }
    let metadata = file.metadata();
    if let Some(version) = metadata.get("ss_base_model_version") {
        let family = if version.starts_with("sdxl") {
            "sdxl"
        } else if version.starts_with("sd_v2") {
            "sd2"
        } else if version.starts_with("sd_v1") {
            "sd1"
        } else {
            "unknown"
        };
        return guess(family, format!("metadata ss_base_model_version={version}"));
    }
    if let Some(architecture) = metadata.get("modelspec.architecture") {
        let family = if architecture.starts_with("stable-diffusion-v1") {
            "sd1"
        } else if architecture.starts_with("stable-diffusion-xl") {
            "sdxl"
        } else if architecture.starts_with("stable-diffusion-v2") {
            "sd2"
        } else {
            "unknown"
        };
        return guess(
            family,
            format!("metadata modelspec.architecture={architecture}"),
        );
    }
    match metadata.get("ss_v2").map(String::as_str) {
        Some("True") => guess("sd2", "metadata ss_v2=True".into()),
        Some(_) => guess("sd1", "metadata ss_v2=False".into()),
        None => guess("unknown", "no structural or metadata evidence".into()),
    }
}

/// Refuses adapters whose structure or metadata says they were made for another base model.
pub fn check_base_model(file: &TensorFile) -> Result<()> {
    let guess = guess_base_model(file);
    match guess.family {
        "sd1" | "unknown" => Ok(()),
        found => Err(StylusError::Model {
            path: file.path().to_path_buf(),
            message: format!(
                "base model mismatch: this adapter is for {found} (evidence: {}), the model is SD 1.x",
                guess.evidence
            ),
        }),
    }
}
