//! `LoraMerger` on the tiny SD model loaded through the checkpoint loader: merged parameters
//! match the reference, the base is never modified and comes back bit-exactly after any sequence
//! of merges, failed merges keep the previous set, f16 models stay f16.

mod lora_support;

use std::collections::BTreeMap;

use burn::module::{Module, ModuleVisitor, Param};
use burn::tensor::backend::Backend;
use burn::tensor::{DType, Tensor};
use lora_support::*;
use stylus_core::{AdapterId, Merger, ResolvedAdapter, WeightedAdapter};
use stylus_diffusion::StableDiffusion;
use stylus_diffusion::backend::cpu_device;
use stylus_diffusion::lora::{ActiveModels, AdapterStrength, LoraMerger, TensorFile};

/// Every float parameter of a module: path -> (dtype, shape, values as f32 bits).
#[derive(Default)]
struct Snapshot {
    path: Vec<String>,
    params: BTreeMap<String, (DType, Vec<usize>, Vec<u32>)>,
}

impl<B2: Backend> ModuleVisitor<B2> for Snapshot {
    fn enter_module(&mut self, name: &str, _: &str) {
        self.path.push(name.to_string());
    }
    fn exit_module(&mut self, _: &str, _: &str) {
        self.path.pop();
    }
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B2, D>>) {
        let tensor = param.val();
        let dtype = tensor.dtype();
        let shape = tensor.dims().to_vec();
        let values = tensor
            .into_data()
            .convert::<f32>()
            .into_vec::<f32>()
            .unwrap();
        self.params.insert(
            self.path.join("."),
            (dtype, shape, values.iter().map(|v| v.to_bits()).collect()),
        );
    }
}

fn snapshot(models: &ActiveModels<B>) -> BTreeMap<String, (DType, Vec<usize>, Vec<u32>)> {
    let mut unet = Snapshot::default();
    models.unet.visit(&mut unet);
    let mut text = Snapshot::default();
    models.text_encoder.visit(&mut text);
    let mut all: BTreeMap<_, _> = unet
        .params
        .into_iter()
        .map(|(k, v)| (format!("unet.{k}"), v))
        .collect();
    all.extend(
        text.params
            .into_iter()
            .map(|(k, v)| (format!("text_encoder.{k}"), v)),
    );
    all
}

fn merger(dtype: DType) -> LoraMerger<B> {
    let device = cpu_device();
    let (sd, _) = StableDiffusion::<B>::load(tiny_sd(), &device, dtype).unwrap();
    LoraMerger::new(sd.unet, &sd.config.unet, sd.text_encoder, &device)
}

fn strength(file: &str, s: f32) -> AdapterStrength {
    AdapterStrength {
        path: lora_fixture(file),
        unet: s,
        text_encoder: s,
    }
}

/// The merged model's parameters against `<expected>.expected.safetensors` (PyTorch layout).
fn assert_matches_reference(models: &ActiveModels<B>, expected: &str, tolerance: f64) {
    let reference =
        TensorFile::open(&lora_fixture(&format!("{expected}.expected.safetensors"))).unwrap();
    let params = snapshot(models);
    for key in reference.tensors().keys() {
        let (_, shape, bits) = params
            .get(key)
            .unwrap_or_else(|| panic!("no parameter {key}"));
        let mut got: Vec<f32> = bits.iter().map(|b| f32::from_bits(*b)).collect();
        if shape.len() == 2 && key.ends_with(".weight") {
            // burn Linear [in, out] -> PyTorch [out, in].
            let (rows, cols) = (shape[0], shape[1]);
            got = (0..cols)
                .flat_map(|o| (0..rows).map(move |i| (o, i)))
                .map(|(o, i)| got[i * cols + o])
                .collect();
        }
        let error = relative_error(&got, &reference.f32(key).unwrap());
        assert!(
            error <= tolerance,
            "{expected}: {key}: relative error {error:e}"
        );
    }
}

#[test]
fn merged_parameters_match_the_reference_and_report_counts() {
    let merger = merger(DType::F32);
    let report = merger
        .merge(&[strength("kohya_locon.safetensors", 1.0)])
        .unwrap();
    assert_matches_reference(&merger.active(), "kohya_locon", 1e-5);
    let stats = &report.adapters[0];
    assert_eq!(stats.format, "kohya_locon");
    assert_eq!(stats.matched_modules, 96);
    assert!(stats.unmatched_modules.is_empty());
    assert_eq!(report.touched_parameters, 96);

    // Two sets in a row: the second replaces the first.
    merger
        .merge(&[
            strength("kohya_lora.safetensors", 0.7),
            strength("kohya_locon.safetensors", -0.4),
        ])
        .unwrap();
    assert_matches_reference(&merger.active(), "two_loras", 1e-5);
    merger.merge(&[strength("peft.safetensors", 0.6)]).unwrap();
    assert_matches_reference(&merger.active(), "peft", 1e-5);
    merger
        .merge(&[strength("full_ia3.safetensors", 0.75)])
        .unwrap();
    assert_matches_reference(&merger.active(), "full_ia3", 1e-5);
}

#[test]
fn base_is_untouched_and_restored_bit_exactly_after_any_sequence() {
    let merger = merger(DType::F32);
    let base = snapshot(&merger.base());
    assert_eq!(snapshot(&merger.active()), base);
    for set in [
        vec![strength("kohya_lora.safetensors", 0.8)],
        vec![
            strength("kohya_lora.safetensors", 0.8),
            strength("loha.safetensors", 1.0),
        ],
        vec![
            strength("dora.safetensors", 0.6),
            strength("lokr.safetensors", -1.0),
        ],
        vec![strength("kohya_lora.safetensors", 0.8)],
        vec![],
    ] {
        merger.merge(&set).unwrap();
        assert_eq!(snapshot(&merger.base()), base, "the base changed");
        if !set.is_empty() {
            assert_ne!(snapshot(&merger.active()), base);
        }
    }
    assert_eq!(
        snapshot(&merger.active()),
        base,
        "the empty set did not restore the base"
    );
}

#[test]
fn a_failed_merge_keeps_the_previous_set() {
    let merger = merger(DType::F32);
    merger
        .merge(&[strength("kohya_lora.safetensors", 0.8)])
        .unwrap();
    let before = snapshot(&merger.active());
    let bad = [
        strength("kohya_lora.safetensors", 0.8),
        strength("kohya_locon.safetensors", 9.0),
    ];
    assert!(merger.merge(&bad).is_err());
    let missing = [strength("no_such_file.safetensors", 1.0)];
    assert!(merger.merge(&missing).is_err());
    assert_eq!(snapshot(&merger.active()), before);
}

#[test]
fn f16_models_stay_f16() {
    let merger = merger(DType::F16);
    let base = snapshot(&merger.base());
    merger
        .merge(&[strength("kohya_lora.safetensors", 0.8)])
        .unwrap();
    let active = snapshot(&merger.active());
    assert!(active.values().all(|(dtype, _, _)| *dtype == DType::F16));
    // f16 rounding of the merged weights: about 2^-11 relative.
    assert_matches_reference(&merger.active(), "kohya_lora", 1e-3);
    merger.merge(&[]).unwrap();
    assert_eq!(snapshot(&merger.active()), base);
}

#[test]
fn merger_trait_uses_the_adapter_weight_for_both_networks() {
    let merger = merger(DType::F32);
    let resolved = ResolvedAdapter {
        adapter: WeightedAdapter {
            id: "local:kohya_lora".parse::<AdapterId>().unwrap(),
            title: "kohya_lora".into(),
            alias: "kohya_lora".into(),
            weight: 0.8,
            category: None,
            trigger_words: vec![],
            file: None,
        },
        path: lora_fixture("kohya_lora.safetensors"),
        tensor_sha256: None,
    };
    let dyn_merger: &dyn Merger = &merger;
    let report = dyn_merger.set_adapters(&[resolved]).unwrap();
    assert_eq!(report.adapters[0].format, "kohya_lora");
    assert_matches_reference(&merger.active(), "kohya_lora", 1e-5);
}

#[test]
fn cached_sets_are_not_merged_again_and_render_the_same_parameters() {
    let a = [strength("kohya_lora.safetensors", 0.8)];
    let b = [strength("peft.safetensors", -0.5)];

    // No budget: only the active set is kept, so A, B, A merges three times.
    let plain = merger(DType::F32);
    for set in [&a[..], &b[..], &a[..], &a[..]] {
        plain.models_for(set).unwrap();
    }
    let stats = plain.cache_stats();
    assert_eq!((stats.merges, stats.hits, stats.sets), (3, 1, 1));

    // A budget for both: A and B merge once each, every later job is a hit.
    let cached = merger(DType::F32).with_cache_budget(64 << 20);
    let first_a = snapshot(&cached.models_for(&a).unwrap());
    let first_b = snapshot(&cached.models_for(&b).unwrap());
    assert_eq!(snapshot(&cached.models_for(&a).unwrap()), first_a);
    assert_eq!(snapshot(&cached.models_for(&b).unwrap()), first_b);
    let stats = cached.cache_stats();
    assert_eq!((stats.merges, stats.hits, stats.sets), (2, 2, 3));
    assert!(stats.bytes > 0);
    // The empty set (the base) is still held, and costs nothing beyond the base.
    assert_eq!(
        snapshot(&cached.models_for(&[]).unwrap()),
        snapshot(&cached.base())
    );
    assert_eq!(cached.cache_stats().merges, 2);

    // A budget smaller than one set keeps only the active one.
    let tight = merger(DType::F32).with_cache_budget(1);
    for set in [&a[..], &b[..], &a[..]] {
        tight.models_for(set).unwrap();
    }
    assert_eq!(tight.cache_stats().merges, 3);
}

#[test]
fn a_switch_from_a_cached_set_recomputes_from_that_set_not_the_last_merge() {
    // A merge recomputes only the targets that change from the set it switches from; with a
    // cache that set is whichever was used last (here A, a hit after B was merged), so its
    // own targets, not B's, must be the starting point.
    let a = [strength("kohya_lora.safetensors", 0.8)];
    let b = [strength("peft.safetensors", -0.5)];
    let a_and_b = [a[0].clone(), b[0].clone()];
    let cached = merger(DType::F32).with_cache_budget(64 << 20);
    for set in [&a[..], &b[..], &a[..]] {
        cached.models_for(set).unwrap();
    }
    let switched = snapshot(&cached.models_for(&a_and_b).unwrap());
    let switched_to_b = snapshot(&cached.models_for(&b).unwrap());

    let fresh = merger(DType::F32);
    assert_eq!(switched, snapshot(&fresh.models_for(&a_and_b).unwrap()));
    assert_eq!(switched_to_b, snapshot(&fresh.models_for(&b).unwrap()));
    assert_eq!(
        snapshot(&cached.models_for(&[]).unwrap()),
        snapshot(&cached.base())
    );
}
