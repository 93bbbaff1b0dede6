//! The full-size SD 1.5 UNet on CPU, with random weights, against diffusers on the same weights.
//!
//! Ignored by default: it needs the 3.4 GB folder written by `benches/unet_diffusers.py`
//! (`/work/venv/bin/python benches/unet_diffusers.py DIR`) and about a minute of CPU. Run:
//! `STYLUS_SD15_RANDOM=DIR cargo test -p stylus-diffusion --test sd_full_size -- --ignored --nocapture`

use std::path::PathBuf;
use std::time::Instant;

use burn::tensor::{DType, Tensor, TensorData};
use safetensors::SafeTensors;
use stylus_diffusion::backend::{CpuBackend, cpu_device};
use stylus_diffusion::checkpoint::diffusers::load_unet;
use stylus_diffusion::models::unet::UNetConfig;

type B = CpuBackend;

fn reference(bytes: &[u8], name: &str) -> (Vec<usize>, Vec<f32>) {
    let file = SafeTensors::deserialize(bytes).unwrap();
    let view = file.tensor(name).unwrap();
    let values = view
        .data()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    (view.shape().to_vec(), values)
}

/// Peak resident memory of this process so far, from /proc (Linux).
fn peak_rss_gb() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1e6)
}

#[test]
#[ignore = "needs the 3.4 GB random-weight SD 1.5 UNet written by benches/unet_diffusers.py"]
fn full_size_sd15_unet_matches_diffusers_on_random_weights() {
    let dir = PathBuf::from(
        std::env::var("STYLUS_SD15_RANDOM")
            .expect("set STYLUS_SD15_RANDOM to the folder of benches/unet_diffusers.py"),
    );
    let device = cpu_device();
    let start = Instant::now();
    let (unet, config, report) = load_unet::<B>(&dir.join("unet"), &device, DType::F32).unwrap();
    let load_s = start.elapsed().as_secs_f64();
    assert_eq!(config, UNetConfig::v1_5());
    println!("loaded {} tensors in {load_s:.1} s", report.loaded);

    let bytes = std::fs::read(dir.join("reference.safetensors")).unwrap();
    let tensor = |name: &str| {
        let (shape, values) = reference(&bytes, name);
        (shape, values)
    };
    let (latent_shape, latents) = tensor("latents");
    let (context_shape, context) = tensor("context");
    let timestep = tensor("timestep").1[0];
    let (expected_shape, expected) = tensor("noise_pred");
    let latents = Tensor::<B, 4>::from_data(TensorData::new(latents, latent_shape), &device);
    let context = Tensor::<B, 3>::from_data(TensorData::new(context, context_shape), &device);

    let mut times = Vec::new();
    let mut prediction = None;
    for _ in 0..2 {
        let start = Instant::now();
        let out = unet.forward(latents.clone(), timestep, context.clone());
        let values: Vec<f32> = out.into_data().to_vec().unwrap();
        times.push(start.elapsed().as_secs_f64());
        prediction = Some(values);
    }
    let prediction = prediction.unwrap();
    assert_eq!(prediction.len(), expected.len(), "{expected_shape:?}");
    let (mut diff, mut norm) = (0f64, 0f64);
    for (a, e) in prediction.iter().zip(&expected) {
        diff += (f64::from(*a) - f64::from(*e)).powi(2);
        norm += f64::from(*e).powi(2);
    }
    let relative = (diff / norm).sqrt();
    println!(
        "SD 1.5 UNet 64x64 batch 2: rel. L2 {relative:.3e}; forward {times:.2?} s; peak RSS {:.2?} GB",
        peak_rss_gb()
    );
    assert!(relative <= 1e-4, "relative L2 error {relative}");
}
