//! Bad adapter files give typed errors that name the file and the module, never a panic or a
//! silent no-op: wrong base model, unknown format, incomplete modules, rank and shape
//! mismatches, non-finite values, bad alphas, unsupported algorithms, out-of-range strengths.

mod lora_support;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use lora_support::*;
use safetensors::tensor::{Dtype, TensorView, serialize};
use stylus_core::StylusError;
use stylus_diffusion::backend::cpu_device;
use stylus_diffusion::lora::{
    ParseOptions, ScaledAdapter, TargetTable, load_adapter, merge_targets,
};

const TO_K: &str = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k";
const TO_Q: &str = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q";

/// Writes a safetensors file of f32 tensors `(key, shape, fill)` (fill NaN to poison one value).
fn write(
    dir: &Path,
    name: &str,
    tensors: &[(&str, &[usize], f32)],
    metadata: &[(&str, &str)],
) -> PathBuf {
    let data: Vec<(String, Vec<u8>, Vec<usize>)> = tensors
        .iter()
        .map(|(key, shape, fill)| {
            let count: usize = shape.iter().product();
            let mut values: Vec<f32> = (0..count).map(|i| 0.01 * ((i % 7) as f32 - 3.0)).collect();
            if fill.is_nan() {
                values[count / 2] = f32::NAN;
            } else if *fill != 0.0 {
                values.iter_mut().for_each(|v| *v = *fill);
            }
            (
                key.to_string(),
                values.iter().flat_map(|v| v.to_le_bytes()).collect(),
                shape.to_vec(),
            )
        })
        .collect();
    let views: Vec<(String, TensorView<'_>)> = data
        .iter()
        .map(|(key, bytes, shape)| {
            (
                key.clone(),
                TensorView::new(Dtype::F32, shape.clone(), bytes).unwrap(),
            )
        })
        .collect();
    let metadata: HashMap<String, String> = metadata
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let bytes = serialize(
        views,
        if metadata.is_empty() {
            None
        } else {
            Some(metadata)
        },
    )
    .unwrap();
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

fn parse(path: &Path) -> Result<stylus_diffusion::lora::LoraAdapter, StylusError> {
    load_adapter(path, &TargetTable::sd15(), ParseOptions::default())
}

fn message(error: &StylusError) -> String {
    error.to_string()
}

#[test]
fn sdxl_lora_is_a_base_model_mismatch() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        dir.path(),
        "xl.safetensors",
        &[
            (&format!("{TO_Q}.lora_down.weight"), &[4, 320], 0.0),
            (&format!("{TO_Q}.lora_up.weight"), &[320, 4], 0.0),
            (
                "lora_te2_text_model_encoder_layers_0_mlp_fc1.lora_down.weight",
                &[4, 1280],
                0.0,
            ),
        ],
        &[],
    );
    let error = parse(&path).unwrap_err();
    assert!(matches!(error, StylusError::Model { .. }), "{error}");
    assert!(
        message(&error).contains("sdxl") && message(&error).contains("lora_te2_"),
        "{error}"
    );
}

#[test]
fn sd2_context_width_is_a_base_model_mismatch() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        dir.path(),
        "sd2.safetensors",
        &[
            (&format!("{TO_K}.lora_down.weight"), &[4, 1024], 0.0),
            (&format!("{TO_K}.lora_up.weight"), &[320, 4], 0.0),
        ],
        &[],
    );
    let error = parse(&path).unwrap_err();
    assert!(
        message(&error).contains("sd2") && message(&error).contains("1024"),
        "{error}"
    );
}

#[test]
fn sdxl_metadata_without_structural_evidence_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        dir.path(),
        "meta.safetensors",
        &[
            (&format!("{TO_Q}.lora_down.weight"), &[4, 320], 0.0),
            (&format!("{TO_Q}.lora_up.weight"), &[320, 4], 0.0),
        ],
        &[("ss_base_model_version", "sdxl_base_v1-0")],
    );
    let error = parse(&path).unwrap_err();
    assert!(message(&error).contains("ss_base_model_version"), "{error}");
}

#[test]
fn a_lora_that_matches_nothing_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        dir.path(),
        "nothing.safetensors",
        &[
            ("lora_unet_not_a_module.lora_down.weight", &[4, 8], 0.0),
            ("lora_unet_not_a_module.lora_up.weight", &[8, 4], 0.0),
        ],
        &[],
    );
    let error = parse(&path).unwrap_err();
    assert!(
        message(&error).contains("matches no module")
            && message(&error).contains("lora_unet_not_a_module"),
        "{error}"
    );
}

#[test]
fn unmatched_modules_are_reported_and_strict_mode_refuses_them() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        dir.path(),
        "partial.safetensors",
        &[
            (&format!("{TO_Q}.lora_down.weight"), &[4, 320], 0.0),
            (&format!("{TO_Q}.lora_up.weight"), &[320, 4], 0.0),
            ("lora_unet_not_a_module.lora_down.weight", &[4, 8], 0.0),
            ("lora_unet_not_a_module.lora_up.weight", &[8, 4], 0.0),
        ],
        &[],
    );
    let adapter = parse(&path).unwrap();
    assert_eq!(adapter.modules.len(), 1);
    assert_eq!(
        adapter.unmatched,
        vec!["lora_unet_not_a_module".to_string()]
    );
    let error =
        load_adapter(&path, &TargetTable::sd15(), ParseOptions { strict: true }).unwrap_err();
    assert!(
        message(&error).contains("lora_unet_not_a_module"),
        "{error}"
    );
}

#[test]
fn rank_mismatch_names_the_module() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        dir.path(),
        "rank.safetensors",
        &[
            (&format!("{TO_Q}.lora_down.weight"), &[8, 320], 0.0),
            (&format!("{TO_Q}.lora_up.weight"), &[320, 4], 0.0),
        ],
        &[],
    );
    let error = parse(&path).unwrap_err();
    assert!(
        matches!(&error, StylusError::Tensor { key, .. } if key == TO_Q),
        "{error}"
    );
    assert!(message(&error).contains("rank mismatch"), "{error}");
}

#[test]
fn shape_mismatch_names_the_module_and_target() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        dir.path(),
        "shape.safetensors",
        &[
            (&format!("{TO_Q}.lora_down.weight"), &[4, 640], 0.0),
            (&format!("{TO_Q}.lora_up.weight"), &[320, 4], 0.0),
        ],
        &[],
    );
    let error = parse(&path).unwrap_err();
    assert!(
        message(&error).contains("shape mismatch") && message(&error).contains(TO_Q),
        "{error}"
    );
}

#[test]
fn missing_up_is_an_incomplete_module() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        dir.path(),
        "half.safetensors",
        &[(&format!("{TO_Q}.lora_down.weight"), &[4, 320], 0.0)],
        &[],
    );
    let error = parse(&path).unwrap_err();
    assert!(
        matches!(&error, StylusError::Tensor { key, .. } if key == TO_Q),
        "{error}"
    );
    assert!(
        message(&error).contains("incomplete module") && message(&error).contains("lora_up"),
        "{error}"
    );
}

#[test]
fn nan_factor_names_the_tensor() {
    let dir = tempfile::tempdir().unwrap();
    let up = format!("{TO_Q}.lora_up.weight");
    let path = write(
        dir.path(),
        "nan.safetensors",
        &[
            (&format!("{TO_Q}.lora_down.weight"), &[4, 320], 0.0),
            (&up, &[320, 4], f32::NAN),
        ],
        &[],
    );
    let error = parse(&path).unwrap_err();
    assert!(
        matches!(&error, StylusError::Tensor { key, .. } if *key == up),
        "{error}"
    );
    assert!(message(&error).contains("non-finite"), "{error}");
}

#[test]
fn negative_alpha_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        dir.path(),
        "alpha.safetensors",
        &[
            (&format!("{TO_Q}.lora_down.weight"), &[4, 320], 0.0),
            (&format!("{TO_Q}.lora_up.weight"), &[320, 4], 0.0),
            (&format!("{TO_Q}.alpha"), &[], -2.0),
        ],
        &[],
    );
    let error = parse(&path).unwrap_err();
    assert!(
        message(&error).contains("alpha must not be negative"),
        "{error}"
    );
}

#[test]
fn oft_is_an_unsupported_algorithm() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        dir.path(),
        "oft.safetensors",
        &[(&format!("{TO_Q}.oft_blocks"), &[4, 80, 80], 0.0)],
        &[],
    );
    let error = parse(&path).unwrap_err();
    assert!(
        message(&error).contains("`oft` is not supported") && message(&error).contains(TO_Q),
        "{error}"
    );
}

#[test]
fn one_module_under_two_spellings_is_a_duplicate() {
    let dir = tempfile::tempdir().unwrap();
    let peft = "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q";
    let path = write(
        dir.path(),
        "dup.safetensors",
        &[
            (&format!("{TO_Q}.lora_down.weight"), &[4, 320], 0.0),
            (&format!("{TO_Q}.lora_up.weight"), &[320, 4], 0.0),
            (&format!("{peft}.lora_A.weight"), &[4, 320], 0.0),
            (&format!("{peft}.lora_B.weight"), &[320, 4], 0.0),
        ],
        &[],
    );
    let error = parse(&path).unwrap_err();
    assert!(message(&error).contains("reached twice"), "{error}");
}

#[test]
fn pickle_and_truncated_files_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let pickle = dir.path().join("model.ckpt");
    std::fs::write(&pickle, b"not read").unwrap();
    assert!(matches!(
        parse(&pickle).unwrap_err(),
        StylusError::UnsupportedFormat { .. }
    ));
    let good = write(
        dir.path(),
        "good.safetensors",
        &[
            (&format!("{TO_Q}.lora_down.weight"), &[4, 320], 0.0),
            (&format!("{TO_Q}.lora_up.weight"), &[320, 4], 0.0),
        ],
        &[],
    );
    let bytes = std::fs::read(&good).unwrap();
    let truncated = dir.path().join("truncated.safetensors");
    std::fs::write(&truncated, &bytes[..bytes.len() - 100]).unwrap();
    assert!(matches!(
        parse(&truncated).unwrap_err(),
        StylusError::Safetensors { .. }
    ));
}

#[test]
fn out_of_range_strength_is_refused() {
    let table = tiny_table();
    let adapter = load_adapter(
        &lora_fixture("kohya_lora.safetensors"),
        &table,
        ParseOptions::default(),
    )
    .unwrap();
    let weights = TinyWeights::open();
    for strength in [f32::NAN, 5.0, -4.5] {
        let scaled = [ScaledAdapter {
            adapter: &adapter,
            unet: strength,
            text_encoder: 1.0,
        }];
        let error = merge_targets(&table, &scaled, |t| weights.base(t), &cpu_device()).unwrap_err();
        assert!(matches!(error, StylusError::InvalidArgument(_)), "{error}");
    }
}
