//! Loading a full-size SD 1.5 single-file checkpoint (f16 on disk) into ready f32 CPU networks:
//! time and peak resident memory against the model's f32 size (docs/benchmarks.md, "Checkpoint
//! load on CPU"; bar: <= 3 s in release, peak RSS <= 1.3x).
//!
//! The checkpoint has random weights: `/work/venv/bin/python benches/make_sd15_ldm.py FILE`
//! writes it (2.1 GB); the bench reads its path from `STYLUS_SD15_LDM` and skips without it.
//!
//! - first, one load after resetting the process's peak-RSS counter (`/proc/self/clear_refs`):
//!   printed as seconds and peak RSS / model f32 size, with the load average;
//! - `checkpoint_load/sd15_ldm_f16_to_f32`: criterion over further loads (the drop of the previous
//!   model is outside the timing).
//!
//! Run: `STYLUS_SD15_LDM=FILE cargo bench --bench checkpoint_load`

use std::path::PathBuf;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use stylus_diffusion::backend::{CpuBackend, cpu_device};
use stylus_diffusion::burn::tensor::DType;
use stylus_diffusion::checkpoint::StableDiffusion;
use stylus_diffusion::models::parameters::parameters;

type B = CpuBackend;

/// A `/proc/self/status` field in GB (Linux).
fn status_gb(field: &str) -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb * 1024.0 / 1e9)
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn checkpoint_load(c: &mut Criterion) {
    let Some(path) = std::env::var_os("STYLUS_SD15_LDM").map(PathBuf::from) else {
        eprintln!(
            "checkpoint_load: skipped (set STYLUS_SD15_LDM to a file written by \
             benches/make_sd15_ldm.py)"
        );
        return;
    };
    let device = cpu_device();

    // Reset the peak so that it measures this load only (Linux >= 4.0).
    let _ = std::fs::write("/proc/self/clear_refs", "5");
    let before = status_gb("VmRSS:");
    let started = Instant::now();
    let (model, report) = StableDiffusion::<B>::load(&path, &device, DType::F32).unwrap();
    let seconds = started.elapsed().as_secs_f64();
    let peak = status_gb("VmHWM:");
    let count = |params: Vec<stylus_diffusion::models::parameters::ParameterInfo>| -> usize {
        params
            .iter()
            .map(|p| p.shape.iter().product::<usize>())
            .sum()
    };
    let numel = count(parameters::<B, _>(&model.unet))
        + count(parameters::<B, _>(&model.vae))
        + count(parameters::<B, _>(&model.text_encoder));
    let model_gb = numel as f64 * 4.0 / 1e9;
    eprintln!("{report}");
    eprintln!(
        "first load: {seconds:.2} s; peak RSS {peak:.2} GB (before {before:.2} GB) = {:.2}x the \
         model's f32 size {model_gb:.2} GB ({:.0} M parameters); load average {}",
        peak / model_gb,
        numel as f64 / 1e6,
        load_average()
    );
    drop(model);

    let mut group = c.benchmark_group("checkpoint_load");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(40));
    group.bench_function("sd15_ldm_f16_to_f32", |b| {
        b.iter_with_large_drop(|| StableDiffusion::<B>::load(&path, &device, DType::F32).unwrap())
    });
    group.finish();
    eprintln!("load average after: {}", load_average());
}

criterion_group!(benches, checkpoint_load);
criterion_main!(benches);
