//! Scheduler parity with diffusers (fixtures from `tools/make_scheduler_fixtures.py`): timesteps,
//! sigmas, initial noise scale, model-input scales and every `step()` output of a whole chain,
//! relative error <= 1e-6.

use std::path::PathBuf;

use safetensors::SafeTensors;
use stylus_diffusion::schedulers::{ScheduleConfig, TimestepSpacing, scheduler_by_name};

const TOLERANCE: f64 = 1e-6;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/schedulers")
}

fn rows(tensors: &SafeTensors, name: &str) -> Vec<Vec<f32>> {
    let view = tensors.tensor(name).unwrap();
    let values: Vec<f32> = view
        .data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    let width = *view.shape().last().unwrap();
    values.chunks(width).map(<[f32]>::to_vec).collect()
}

fn relative_error(ours: &[f32], reference: &[f32]) -> f64 {
    let diff: f64 = ours
        .iter()
        .zip(reference)
        .map(|(&a, &b)| (f64::from(a) - f64::from(b)).powi(2))
        .sum();
    let norm: f64 = reference.iter().map(|&b| f64::from(b).powi(2)).sum();
    (diff / norm).sqrt()
}

fn assert_close_scalars(what: &str, ours: &[f64], reference: &[f64]) {
    assert_eq!(ours.len(), reference.len(), "{what}: length");
    for (i, (&a, &b)) in ours.iter().zip(reference).enumerate() {
        let err = (a - b).abs() / b.abs().max(1e-12);
        assert!(
            err <= TOLERANCE || (a - b).abs() < 1e-12,
            "{what}[{i}]: ours {a} diffusers {b}"
        );
    }
}

#[test]
fn schedulers_match_diffusers_step_by_step() {
    let cases: Vec<serde_json::Value> =
        serde_json::from_str(&std::fs::read_to_string(fixtures().join("cases.json")).unwrap())
            .unwrap();
    let bytes = std::fs::read(fixtures().join("tensors.safetensors")).unwrap();
    let tensors = SafeTensors::deserialize(&bytes).unwrap();
    let sample0 = rows(&tensors, "sample").concat();
    let model_outputs = rows(&tensors, "model_output");
    let noises = rows(&tensors, "noise");
    let mut worst = 0.0f64;

    for case in &cases {
        let name = case["name"].as_str().unwrap();
        let mut config = ScheduleConfig::sd15();
        config.timestep_spacing = case["timestep_spacing"].as_str().map(|s| match s {
            "linspace" => TimestepSpacing::Linspace,
            "leading" => TimestepSpacing::Leading,
            "trailing" => TimestepSpacing::Trailing,
            other => panic!("{other}"),
        });
        let steps = case["steps"].as_u64().unwrap() as usize;
        let mut scheduler =
            scheduler_by_name(case["scheduler"].as_str().unwrap(), &config, steps).unwrap();
        let floats = |key: &str| -> Vec<f64> {
            case[key]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap())
                .collect()
        };
        assert_eq!(
            scheduler.timesteps(),
            floats("timesteps").as_slice(),
            "{name}: timesteps"
        );
        assert_close_scalars(
            &format!("{name}: init_noise_sigma"),
            &[scheduler.init_noise_sigma()],
            &[case["init_noise_sigma"].as_f64().unwrap()],
        );
        let scales: Vec<f64> = (0..scheduler.timesteps().len())
            .map(|i| scheduler.model_input_scale(i))
            .collect();
        assert_close_scalars(
            &format!("{name}: model input scales"),
            &scales,
            &floats("model_input_scales"),
        );
        if !case["sigmas"].is_null() {
            assert_close_scalars(
                &format!("{name}: sigmas"),
                scheduler.sigmas().unwrap(),
                &floats("sigmas"),
            );
        }

        let expected = rows(&tensors, &format!("out.{name}"));
        assert_eq!(
            expected.len(),
            scheduler.timesteps().len(),
            "{name}: model calls"
        );
        let mut x = sample0.clone();
        for (i, reference) in expected.iter().enumerate() {
            let noise = scheduler.needs_noise().then(|| noises[i].as_slice());
            x = scheduler.step(i, &model_outputs[i], &x, noise).unwrap();
            let err = relative_error(&x, reference);
            worst = worst.max(err);
            assert!(err <= TOLERANCE, "{name}: step {i}: relative error {err:e}");
            // Compare each step from diffusers' own state, so errors cannot compound unseen.
            x.clone_from(reference);
        }
    }
    eprintln!("worst relative error over {} cases: {worst:e}", cases.len());
}
