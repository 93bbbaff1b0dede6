//! Real adapter files (../shared/fixtures/loras) against the SD 1.5 target table: the LyCORIS
//! LoKr files resolve completely and reproduce the reference ΔW values of SOURCES.md; the legacy
//! cloneofsimo files are refused by name. Those tests skip without ../shared (see
//! `stylus-test-data`).

mod lora_support;

use std::path::Path;

use lora_support::*;
use stylus_core::StylusError;
use stylus_diffusion::backend::cpu_device;
use stylus_diffusion::lora::delta::module_delta;
use stylus_diffusion::lora::{
    LoraAdapter, Network, ParseOptions, TargetTable, TensorFile, guess_base_model, load_adapter,
};

fn sd15() -> TargetTable {
    TargetTable::sd15()
}

#[test]
fn sd15_table_has_282_unet_and_72_text_encoder_modules() {
    let table = sd15();
    assert_eq!(table.count(Network::Unet), 282);
    assert_eq!(table.count(Network::TextEncoder), 72);
    let transformer_linears = table
        .modules()
        .iter()
        .filter(|m| m.id.contains(".attentions.") && m.network == Network::Unet)
        .count();
    assert_eq!(transformer_linears, 192);
    // kohya, LDM and PEFT spellings of one module resolve to the same target.
    let to_k = table
        .by_id("up_blocks.1.attentions.2.transformer_blocks.0.attn2.to_k")
        .unwrap();
    for name in [
        "lora_unet_up_blocks_1_attentions_2_transformer_blocks_0_attn2_to_k",
        "lora_unet_output_blocks_5_1_transformer_blocks_0_attn2_to_k",
        "lycoris_up_blocks_1_attentions_2_transformer_blocks_0_attn2_to_k",
        "unet.up_blocks.1.attentions.2.transformer_blocks.0.attn2.to_k",
        "unet.up_blocks.1.attentions.2.transformer_blocks.0.attn2.processor.to_k",
        "diffusion_model.output_blocks.5.1.transformer_blocks.0.attn2.to_k",
    ] {
        assert_eq!(table.resolve(name), Some(to_k), "{name}");
    }
    let upsampler = table.by_id("up_blocks.0.upsamplers.0.conv").unwrap();
    assert_eq!(
        table.resolve("lora_unet_output_blocks_2_1_conv"),
        Some(upsampler)
    );
    let fc1 = table.by_id("text_model.encoder.layers.3.mlp.fc1").unwrap();
    for name in [
        "lora_te_text_model_encoder_layers_3_mlp_fc1",
        "lora_te1_text_model_encoder_layers_3_mlp_fc1",
        "lora_te_encoder_layers_3_mlp_fc1",
        "text_encoder.text_model.encoder.layers.3.mlp.fc1",
        "text_encoder.encoder.layers.3.mlp.fc1",
    ] {
        assert_eq!(table.resolve(name), Some(fc1), "{name}");
    }
    // Names are generated from the model, never by turning `_` into `.`: no such module.
    assert_eq!(
        table.resolve("lora_unet_down_blocks_0_attentions_0_transformer_blocks_1_attn1_to_q"),
        None
    );
}

#[test]
fn ldm_names_round_trip_through_the_checkpoint_mapping() {
    use stylus_diffusion::checkpoint::mapping::{LdmUNetLayout, ldm_unet_to_diffusers};
    let table = sd15();
    let layout = LdmUNetLayout {
        layers_per_block: 2,
        cross_attention: vec![true, true, true, false],
    };
    for module in table
        .modules()
        .iter()
        .filter(|m| m.network == Network::Unet)
    {
        let back = ldm_unet_to_diffusers(&format!("{}.weight", module.ldm_id), &layout);
        assert_eq!(
            back,
            Some(format!("{}.weight", module.id)),
            "{}",
            module.ldm_id
        );
    }
}

fn lokr(loras: &Path, name: &str) -> LoraAdapter {
    load_adapter(&loras.join(name), &sd15(), ParseOptions { strict: true }).unwrap()
}

#[test]
fn real_lokr_files_resolve_all_350_modules() {
    let Some(loras) = shared_loras() else { return };
    for file in [
        "smart_falcon_4_lokr.safetensors",
        "smart_falcon_8_lokr.safetensors",
        "smart_falcon_16_lokr.safetensors",
    ] {
        let adapter = lokr(&loras, file);
        assert_eq!(adapter.format, "lycoris_lokr", "{file}");
        assert_eq!(adapter.count(Network::TextEncoder), 72, "{file}");
        assert_eq!(adapter.count(Network::Unet), 278, "{file}");
        assert!(adapter.unmatched.is_empty() && adapter.unknown_keys.is_empty());
        // alpha == rank in these files.
        assert!(
            adapter.modules.iter().all(|m| (m.scale - 1.0).abs() < 1e-6),
            "{file}"
        );
        let file_data = TensorFile::open(&loras.join(file)).unwrap();
        assert_eq!(
            Some(&adapter.content_hash),
            file_data.metadata().get("sshs_model_hash")
        );
        assert_eq!(guess_base_model(&file_data).family, "sd1");
    }
}

/// (file, module, sum, Frobenius norm, [0][0], [5][17], [100][200]) from SOURCES.md.
const REFERENCE: &[(&str, &str, f64, f64, f64, f64, f64)] = &[
    (
        "smart_falcon_4_lokr.safetensors",
        "lora_te_text_model_encoder_layers_0_self_attn_k_proj",
        9.312697e-02,
        1.950680e+00,
        1.347713e-03,
        -4.472561e-04,
        -6.779238e-04,
    ),
    (
        "smart_falcon_4_lokr.safetensors",
        "lora_unet_up_blocks_3_resnets_2_conv2",
        -1.452288e-01,
        8.829490e-01,
        -1.506265e-04,
        5.838617e-05,
        -3.239530e-04,
    ),
    (
        "smart_falcon_4_lokr.safetensors",
        "lora_unet_down_blocks_0_attentions_0_proj_in",
        6.053398e-02,
        3.323293e-01,
        -1.427537e-04,
        3.390681e-04,
        -1.209439e-03,
    ),
    (
        "smart_falcon_16_lokr.safetensors",
        "lora_te_text_model_encoder_layers_0_self_attn_k_proj",
        4.992098e+00,
        6.041093e+00,
        1.015099e-03,
        -2.424105e-03,
        -2.249064e-04,
    ),
    (
        "smart_falcon_16_lokr.safetensors",
        "lora_unet_up_blocks_3_resnets_2_conv2",
        2.881131e-01,
        1.256080e+00,
        -1.941641e-03,
        3.240764e-04,
        -1.925295e-03,
    ),
    (
        "smart_falcon_16_lokr.safetensors",
        "lora_unet_down_blocks_0_attentions_0_proj_in",
        1.577073e-01,
        4.599649e-01,
        -9.868846e-05,
        4.812212e-04,
        -1.035499e-04,
    ),
];

fn close(got: f64, want: f64, relative: f64, what: &str) {
    let error = (got - want).abs() / want.abs();
    assert!(
        error <= relative,
        "{what}: got {got:e}, want {want:e} (relative error {error:e})"
    );
}

#[test]
fn real_lokr_deltas_match_the_reference_values() {
    let Some(loras) = shared_loras() else { return };
    let table = sd15();
    for (file, module_name, sum, norm, at_0_0, at_5_17, at_100_200) in REFERENCE {
        let adapter = lokr(&loras, file);
        let module = adapter
            .modules
            .iter()
            .find(|m| m.name == *module_name)
            .unwrap();
        let target = table.module(module.target);
        let delta = module_delta(module, target, &cpu_device()).unwrap();
        let cols = target.in_elements();
        let values = values(delta);
        let what = format!("{file} {module_name}");
        // The reference printed 7 significant digits; sums also carry f32 accumulation error.
        close(
            values.iter().map(|v| f64::from(*v)).sum(),
            *sum,
            1e-4,
            &format!("{what} sum"),
        );
        close(
            values
                .iter()
                .map(|v| f64::from(*v).powi(2))
                .sum::<f64>()
                .sqrt(),
            *norm,
            1e-5,
            &format!("{what} norm"),
        );
        close(
            f64::from(values[0]),
            *at_0_0,
            1e-5,
            &format!("{what} [0][0]"),
        );
        close(
            f64::from(values[5 * cols + 17]),
            *at_5_17,
            1e-5,
            &format!("{what} [5][17]"),
        );
        close(
            f64::from(values[100 * cols + 200]),
            *at_100_200,
            1e-5,
            &format!("{what} [100][200]"),
        );
    }
}

#[test]
fn real_lokr_zero_factor_modules_still_match_with_zero_delta() {
    let Some(loras) = shared_loras() else { return };
    let table = sd15();
    let adapter = lokr(&loras, "smart_falcon_8_lokr.safetensors");
    for suffix in ["conv1", "conv2", "time_emb_proj"] {
        let name = format!("lora_unet_down_blocks_0_resnets_0_{suffix}");
        let module = adapter.modules.iter().find(|m| m.name == name).unwrap();
        let delta = module_delta(module, table.module(module.target), &cpu_device()).unwrap();
        assert!(values(delta).iter().all(|v| *v == 0.0), "{name}");
    }
}

#[test]
fn cloneofsimo_files_are_an_unsupported_format() {
    let Some(loras) = shared_loras() else { return };
    for file in [
        "legacy_cloneofsimo/analog_svd_rank4.safetensors",
        "legacy_cloneofsimo/lora_disney.safetensors",
    ] {
        let error = load_adapter(&loras.join(file), &sd15(), ParseOptions::default()).unwrap_err();
        match &error {
            StylusError::UnsupportedFormat { path, message } => {
                assert!(path.ends_with(file));
                assert!(message.contains("cloneofsimo"), "{message}");
            }
            other => panic!("{file}: expected UnsupportedFormat, got {other}"),
        }
    }
}
