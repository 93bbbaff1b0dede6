//! Parity of the LoRA merge against reference implementations (tools/make_lora_fixtures.py):
//! kohya's merge_lora.py math, PEFT's merge (what diffusers' fuse_lora runs) and LyCORIS'
//! functional API, on the tiny SD fixture model. Relative error per tensor <= 1e-5.

mod lora_support;

use std::collections::BTreeSet;

use lora_support::*;
use stylus_diffusion::backend::cpu_device;
use stylus_diffusion::lora::{
    LoraAdapter, Network, ParseOptions, ScaledAdapter, TensorFile, load_adapter, merge_targets,
};

const TOLERANCE: f64 = 1e-5;

/// Merges `files` at `strengths` into the tiny model and compares every changed tensor with
/// `<expected>.expected.safetensors`; returns the largest relative error.
fn check(expected: &str, files: &[&str], strengths: &[f32]) -> f64 {
    check_tensors(expected, files, strengths, false)
}

/// [`check`]; with `reference_is_subset` the reference holds only some of the changed tensors
/// (to keep the committed fixture small), and only those are compared.
fn check_tensors(
    expected: &str,
    files: &[&str],
    strengths: &[f32],
    reference_is_subset: bool,
) -> f64 {
    let table = tiny_table();
    let weights = TinyWeights::open();
    let adapters: Vec<LoraAdapter> = files
        .iter()
        .map(|f| load_adapter(&lora_fixture(f), &table, ParseOptions { strict: true }).unwrap())
        .collect();
    let scaled: Vec<ScaledAdapter<'_>> = adapters
        .iter()
        .zip(strengths)
        .map(|(adapter, s)| ScaledAdapter {
            adapter,
            unet: *s,
            text_encoder: *s,
        })
        .collect();
    let merged = merge_targets(&table, &scaled, |t| weights.base(t), &cpu_device()).unwrap();
    let reference =
        TensorFile::open(&lora_fixture(&format!("{expected}.expected.safetensors"))).unwrap();

    let mut compared = BTreeSet::new();
    let mut worst: f64 = 0.0;
    for result in &merged {
        let target = table.module(result.target);
        let prefix = match target.network {
            Network::Unet => "unet",
            Network::TextEncoder => "text_encoder",
        };
        let key = format!("{prefix}.{}.weight", target.id);
        if reference_is_subset && !reference.tensors().contains_key(&key) {
            continue;
        }
        let want = reference
            .f32(&key)
            .unwrap_or_else(|e| panic!("{expected}: merged `{key}` has no reference: {e}"));
        let error = relative_error(&values(result.weight.clone()), &want);
        assert!(
            error <= TOLERANCE,
            "{expected}: {key}: relative error {error:e}"
        );
        worst = worst.max(error);
        compared.insert(key);
        if let Some(bias) = &result.bias {
            let key = format!("{prefix}.{}.bias", target.id);
            let error = relative_error(&values(bias.clone()), &reference.f32(&key).unwrap());
            assert!(
                error <= TOLERANCE,
                "{expected}: {key}: relative error {error:e}"
            );
            compared.insert(key);
        }
    }
    let all: BTreeSet<String> = reference.tensors().keys().cloned().collect();
    let missing: Vec<&String> = all.difference(&compared).collect();
    assert!(
        missing.is_empty(),
        "{expected}: reference tensors not produced: {missing:?}"
    );
    println!(
        "{expected}: {} tensors, max relative error {worst:e}",
        compared.len()
    );
    worst
}

#[test]
fn kohya_lora_matches_kohya_merge() {
    check("kohya_lora", &["kohya_lora.safetensors"], &[0.8]);
}

#[test]
fn kohya_locon_with_3x3_convs_matches_kohya_merge() {
    check("kohya_locon", &["kohya_locon.safetensors"], &[1.0]);
}

#[test]
fn two_weighted_loras_match_sequential_kohya_merge() {
    check_tensors(
        "two_loras",
        &["kohya_lora.safetensors", "kohya_locon.safetensors"],
        &[0.7, -0.4],
        true,
    );
}

#[test]
fn sgm_ldm_named_kohya_keys_merge_like_diffusers_names() {
    check("kohya_lora", &["kohya_ldm_lora.safetensors"], &[0.8]);
}

#[test]
fn peft_keys_with_adapter_metadata_alphas_match_peft_merge() {
    check("peft", &["peft.safetensors"], &[0.6]);
}

#[test]
fn diffusers_lora_down_up_keys_match_peft_merge() {
    check("diffusers", &["diffusers.safetensors"], &[1.0]);
}

#[test]
fn locon_tucker_lora_mid_matches_lycoris() {
    check("locon_tucker", &["locon_tucker.safetensors"], &[0.9]);
}

#[test]
fn loha_matches_lycoris() {
    check("loha", &["loha.safetensors"], &[1.0]);
}

#[test]
fn loha_tucker_matches_lycoris() {
    check("loha_tucker", &["loha_tucker.safetensors"], &[0.5]);
}

#[test]
fn lokr_with_flattened_and_tucker_convs_matches_lycoris() {
    check("lokr", &["lokr.safetensors"], &[1.0]);
}

#[test]
fn full_diff_and_ia3_match_reference_math() {
    check("full_ia3", &["full_ia3.safetensors"], &[0.75]);
}

#[test]
fn dora_on_both_axes_matches_reference() {
    check("dora", &["dora.safetensors"], &[0.6]);
}
