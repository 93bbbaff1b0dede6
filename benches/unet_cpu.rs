//! SD 1.5 UNet forward on the CPU backend (burn-flex), for comparison with diffusers on the same
//! machine (`benches/unet_diffusers.py` prints the PyTorch numbers; see docs/benchmarks.md,
//! "SD 1.5 networks on CPU").
//!
//! - `unet_cpu/tiny_8x8_b2`: the parity-fixture UNet (tools/make_sd_fixtures.py config, weights
//!   from crates/stylus-diffusion/tests/fixtures/sd), latents [2, 4, 8, 8].
//! - `unet_cpu/sd15_64x64_b2`: the full SD 1.5 UNet (random weights), latents [2, 4, 64, 64],
//!   context [2, 77, 768] (one CFG step at 512x512). Minutes per sample on 2 cores, so it runs only
//!   with `STYLUS_BENCH_FULL=1`.
//!
//! - `unet_batching/*`: whether rendering several queued requests in one batched UNet call pays
//!   (the `stylus serve` queue could group compatible requests): four requests' CFG steps as
//!   four calls of batch 2 (`4x_b2`) against one call of batch 8 (`1x_b8`), same total work; on
//!   the tiny UNet, and with `STYLUS_BENCH_BATCHING=1` on the full SD 1.5 UNet at 16x16 latents
//!   (128x128 images, random weights; seconds per call).
//!
//! Run: `cargo bench --bench unet_cpu` (add `STYLUS_BENCH_FULL=1` for the full config).

use std::path::Path;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use stylus_diffusion::backend::{CpuBackend, cpu_device};
use stylus_diffusion::burn::tensor::{DType, Distribution, Tensor};
use stylus_diffusion::checkpoint::diffusers::load_unet;
use stylus_diffusion::models::unet::UNetConfig;

type B = CpuBackend;

fn unet_forward(c: &mut Criterion) {
    let device = cpu_device();
    let mut group = c.benchmark_group("unet_cpu");

    let fixture = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("crates/stylus-diffusion/tests/fixtures/sd/tiny-diffusers/unet");
    let (tiny, config, _) = load_unet::<B>(&fixture, &device, DType::F32).expect("fixture UNet");
    let latents = Tensor::<B, 4>::random([2, 4, 8, 8], Distribution::Normal(0.0, 1.0), &device);
    let context = Tensor::<B, 3>::random(
        [2, 77, config.cross_attention_dim],
        Distribution::Normal(0.0, 1.0),
        &device,
    );
    group.bench_function("tiny_8x8_b2", |b| {
        b.iter(|| {
            tiny.forward(latents.clone(), 500.0, context.clone())
                .into_data()
        })
    });

    if std::env::var("STYLUS_BENCH_FULL").is_ok_and(|v| v == "1") {
        let unet = UNetConfig::v1_5().init::<B>(&device);
        let latents =
            Tensor::<B, 4>::random([2, 4, 64, 64], Distribution::Normal(0.0, 1.0), &device);
        let context = Tensor::<B, 3>::random([2, 77, 768], Distribution::Normal(0.0, 1.0), &device);
        group.sample_size(10);
        group.warm_up_time(Duration::from_secs(1));
        group.measurement_time(Duration::from_secs(60));
        group.bench_function("sd15_64x64_b2", |b| {
            b.iter(|| {
                unet.forward(latents.clone(), 500.0, context.clone())
                    .into_data()
            })
        });
    }
    group.finish();
}

/// Four batch-2 calls against one batch-8 call of `unet` on `[_, 4, side, side]` latents.
fn batched_against_sequential(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    name: &str,
    unet: &stylus_diffusion::models::unet::UNet2DConditionModel<B>,
    side: usize,
    context_dim: usize,
) {
    let device = cpu_device();
    let latents =
        Tensor::<B, 4>::random([8, 4, side, side], Distribution::Normal(0.0, 1.0), &device);
    let context = Tensor::<B, 3>::random(
        [8, 77, context_dim],
        Distribution::Normal(0.0, 1.0),
        &device,
    );
    let pairs: Vec<_> = (0..4)
        .map(|i| {
            (
                latents.clone().narrow(0, 2 * i, 2),
                context.clone().narrow(0, 2 * i, 2),
            )
        })
        .collect();
    group.bench_function(format!("{name}_4x_b2"), |b| {
        b.iter(|| {
            for (latents, context) in &pairs {
                unet.forward(latents.clone(), 500.0, context.clone())
                    .into_data();
            }
        })
    });
    group.bench_function(format!("{name}_1x_b8"), |b| {
        b.iter(|| {
            unet.forward(latents.clone(), 500.0, context.clone())
                .into_data()
        })
    });
}

fn unet_batching(c: &mut Criterion) {
    let device = cpu_device();
    let mut group = c.benchmark_group("unet_batching");
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("crates/stylus-diffusion/tests/fixtures/sd/tiny-diffusers/unet");
    let (tiny, config, _) = load_unet::<B>(&fixture, &device, DType::F32).expect("fixture UNet");
    batched_against_sequential(&mut group, "tiny_8x8", &tiny, 8, config.cross_attention_dim);
    if std::env::var("STYLUS_BENCH_BATCHING").is_ok_and(|v| v == "1") {
        let unet = UNetConfig::v1_5().init::<B>(&device);
        group.sample_size(10);
        group.warm_up_time(Duration::from_secs(1));
        group.measurement_time(Duration::from_secs(30));
        batched_against_sequential(&mut group, "sd15_16x16", &unet, 16, 768);
    }
    group.finish();
}

criterion_group!(benches, unet_forward, unet_batching);
criterion_main!(benches);
