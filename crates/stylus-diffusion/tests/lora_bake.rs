//! `stylus merge` (lora::bake): LoRAs baked into a diffusers folder and into a single-file
//! checkpoint keep the layout, metadata and dtypes; merged tensors match the kohya reference and
//! every other tensor is byte-identical.

mod lora_support;

use std::path::Path;

use lora_support::*;
use stylus_core::StylusError;
use stylus_diffusion::lora::bake::merge_into_checkpoint;
use stylus_diffusion::lora::{AdapterStrength, TensorFile};

fn kohya_lora() -> Vec<AdapterStrength> {
    vec![AdapterStrength {
        path: lora_fixture("kohya_lora.safetensors"),
        unet: 0.8,
        text_encoder: 0.8,
    }]
}

/// Compares `out` with `base` tensor by tensor: those named by `reference_key(key)` must match
/// the reference (f16 storage tolerance), all others must be byte-identical. Returns how many
/// tensors were compared against the reference.
fn compare(
    base: &TensorFile,
    out: &TensorFile,
    reference_key: impl Fn(&str) -> Option<String>,
) -> usize {
    let reference = TensorFile::open(&lora_fixture("kohya_lora.expected.safetensors")).unwrap();
    assert_eq!(base.metadata(), out.metadata());
    assert_eq!(base.tensors().len(), out.tensors().len());
    let mut merged = 0;
    for (key, info) in base.tensors() {
        let written = out.info(key).unwrap();
        assert_eq!(
            (info.dtype, &info.shape),
            (written.dtype, &written.shape),
            "{key}"
        );
        match reference_key(key).filter(|r| reference.tensors().contains_key(r)) {
            Some(reference_key) => {
                let error = relative_error(
                    &out.f32(key).unwrap(),
                    &reference.f32(&reference_key).unwrap(),
                );
                assert!(error <= 1e-3, "{key}: relative error {error:e}");
                merged += 1;
            }
            None => assert_eq!(
                base.raw(key).unwrap(),
                out.raw(key).unwrap(),
                "{key} changed"
            ),
        }
    }
    merged
}

#[test]
fn diffusers_folder_keeps_layout_and_dtypes() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("merged");
    let report = merge_into_checkpoint(&tiny_sd(), &kohya_lora(), &out).unwrap();
    assert_eq!(report.layout, "diffusers folder");
    assert_eq!(report.merged_tensors, 66);
    assert_eq!(report.adapters[0].matched_modules, 66);
    for relative in [
        "unet/config.json",
        "text_encoder/config.json",
        "vae/config.json",
    ] {
        assert_eq!(
            std::fs::read(tiny_sd().join(relative)).unwrap(),
            std::fs::read(out.join(relative)).unwrap()
        );
    }
    let vae = "vae/diffusion_pytorch_model.fp16.safetensors";
    assert_eq!(
        std::fs::read(tiny_sd().join(vae)).unwrap(),
        std::fs::read(out.join(vae)).unwrap()
    );

    let unet_file = "unet/diffusion_pytorch_model.safetensors";
    let merged_unet = compare(
        &TensorFile::open(&tiny_sd().join(unet_file)).unwrap(),
        &TensorFile::open(&out.join(unet_file)).unwrap(),
        |key| Some(format!("unet.{key}")),
    );
    let text_file = "text_encoder/model.safetensors";
    let merged_text = compare(
        &TensorFile::open(&tiny_sd().join(text_file)).unwrap(),
        &TensorFile::open(&out.join(text_file)).unwrap(),
        |key| {
            Some(format!(
                "text_encoder.text_model.{}",
                key.trim_start_matches("text_model.")
            ))
        },
    );
    assert_eq!((merged_unet, merged_text), (48, 18));
}

#[test]
fn single_file_checkpoint_keeps_ldm_keys_and_metadata() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("merged.safetensors");
    let base_path = tiny_sd().parent().unwrap().join("tiny-ldm.safetensors");
    let report = merge_into_checkpoint(&base_path, &kohya_lora(), &out).unwrap();
    assert_eq!(report.layout, "single file");
    assert_eq!(report.merged_tensors, 66);
    // LDM key -> our id through the target table's LDM names.
    let table = tiny_table();
    let merged = compare(
        &TensorFile::open(&base_path).unwrap(),
        &TensorFile::open(&out).unwrap(),
        |key| {
            table
                .modules()
                .iter()
                .find(|m| {
                    m.ldm_weight_key() == key
                        || m.ldm_weight_key().replace("text_model.", "") == key
                })
                .map(|m| {
                    let network = if m.ldm_weight_key().starts_with("model.") {
                        "unet"
                    } else {
                        "text_encoder"
                    };
                    format!("{network}.{}.weight", m.id)
                })
        },
    );
    assert_eq!(merged, 66);
}

#[test]
fn out_must_not_be_the_base() {
    let error =
        merge_into_checkpoint(&tiny_sd(), &kohya_lora(), Path::new(&tiny_sd())).unwrap_err();
    assert!(matches!(error, StylusError::InvalidArgument(_)), "{error}");
}
