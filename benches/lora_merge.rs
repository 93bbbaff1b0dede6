//! LoRA merge on the CPU backend: three rank-32 kohya LoRAs (all 264 modules: the 192 UNet
//! Transformer2D linears/projections and the 72 text-encoder linears) merged into a full-size
//! SD 1.5 UNet + text encoder (random f32 weights), against the memory-bandwidth floor, and the
//! cost of switching between two masks. The peer (diffusers load_lora_weights + fuse_lora on the
//! same machine) is `benches/lora_merge_diffusers.py`; numbers in docs/benchmarks.md, "LoRA merge".
//!
//! - `lora_merge/merge_3_rank32`: `LoraMerger::merge` of the three (files already parsed), from
//!   the base (the empty set is made active before each iteration, untimed).
//! - `lora_merge/switch_mask`: alternating between mask A = {lora0, lora1} and B = {lora2}; one
//!   iteration is one switch (every target changes).
//! - `lora_merge/switch_disjoint`: alternating between C = lora0 on the UNet only and D = lora1
//!   on the text encoder only; a switch recomputes only the new mask's targets (the old mask's
//!   get their base tensors back), so it should cost about the touched share of a full merge.
//! - `lora_merge/parse_3_files`: reading and validating the three files.
//! - `lora_merge/bandwidth_scale_copy`: `dst = src * k` over 512 MiB on both cores, the floor's
//!   bandwidth. The floor of a merge is (bytes of the touched base weights read + merged weights
//!   written) / that bandwidth; the bench prints it.
//!
//! Run: `cargo bench --bench lora_merge` (needs about 6 GiB of RAM).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use safetensors::tensor::{Dtype, TensorView, serialize};
use stylus_diffusion::backend::{CpuBackend, cpu_device};
use stylus_diffusion::lora::{
    AdapterStrength, LoraMerger, Network, ParseOptions, TargetTable, load_adapter,
};
use stylus_diffusion::models::clip::ClipTextConfig;
use stylus_diffusion::models::unet::UNetConfig;

const RANK: usize = 32;

/// A small deterministic generator for the factors (values in about ±0.01).
fn factors(seed: u64, count: usize) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..count)
        .flat_map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let unit = (state >> 40) as f32 / (1u64 << 24) as f32 - 0.5;
            half::f16::from_f32(unit * 0.02).to_le_bytes()
        })
        .collect()
}

/// Writes a kohya LoRA (f16 factors, alpha 16) for the 264 standard SD 1.5 modules.
fn write_kohya_lora(table: &TargetTable, path: &Path, seed: u64) {
    let mut data: Vec<(String, Vec<u8>, Vec<usize>)> = Vec::new();
    for (index, module) in table.modules().iter().enumerate() {
        if module.network == Network::Unet && !module.id.contains(".attentions.") {
            continue;
        }
        let prefix = match module.network {
            Network::Unet => "lora_unet",
            Network::TextEncoder => "lora_te",
        };
        let name = format!("{prefix}_{}", module.id.replace('.', "_"));
        let (down_shape, up_shape) = if module.shape.len() == 4 {
            (
                vec![RANK, module.shape[1], 1, 1],
                vec![module.shape[0], RANK, 1, 1],
            )
        } else {
            (vec![RANK, module.shape[1]], vec![module.shape[0], RANK])
        };
        let seed = seed * 1000 + index as u64;
        data.push((
            format!("{name}.lora_down.weight"),
            factors(seed, RANK * module.shape[1]),
            down_shape,
        ));
        data.push((
            format!("{name}.lora_up.weight"),
            factors(seed + 7, RANK * module.shape[0]),
            up_shape,
        ));
        data.push((
            format!("{name}.alpha"),
            half::f16::from_f32(16.0).to_le_bytes().to_vec(),
            vec![],
        ));
    }
    let views: Vec<(String, TensorView<'_>)> = data
        .iter()
        .map(|(k, bytes, shape)| {
            (
                k.clone(),
                TensorView::new(Dtype::F16, shape.clone(), bytes).unwrap(),
            )
        })
        .collect();
    std::fs::write(
        path,
        serialize(views, None::<HashMap<String, String>>).unwrap(),
    )
    .unwrap();
}

/// Best-of-5 bandwidth of `dst = src * k` over `bytes` per buffer on two threads, in bytes/s
/// (read + write counted).
fn scale_copy(src: &[f32], dst: &mut [f32]) {
    let half = src.len() / 2;
    let (src_a, src_b) = src.split_at(half);
    let (dst_a, dst_b) = dst.split_at_mut(half);
    std::thread::scope(|scope| {
        scope.spawn(|| {
            dst_a
                .iter_mut()
                .zip(src_a)
                .for_each(|(d, s)| *d = s * 1.0001)
        });
        scope.spawn(|| {
            dst_b
                .iter_mut()
                .zip(src_b)
                .for_each(|(d, s)| *d = s * 1.0001)
        });
    });
}

fn lora_merge(c: &mut Criterion) {
    let device = cpu_device();
    let unet_config = UNetConfig::v1_5();
    let started = Instant::now();
    let merger = LoraMerger::<CpuBackend>::new(
        unet_config.init(&device),
        &unet_config,
        ClipTextConfig::v1_5().init(&device),
        &device,
    );
    eprintln!(
        "random SD 1.5 UNet + text encoder: {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let dir = tempfile::tempdir().unwrap();
    let files: Vec<PathBuf> = (0..3u64)
        .map(|seed| {
            let path = dir.path().join(format!("lora{seed}.safetensors"));
            write_kohya_lora(merger.table(), &path, seed + 1);
            path
        })
        .collect();
    let strength = |path: &PathBuf, s: f32| AdapterStrength {
        path: path.clone(),
        unet: s,
        text_encoder: s,
    };
    let all = vec![
        strength(&files[0], 0.4),
        strength(&files[1], 0.3),
        strength(&files[2], 0.5),
    ];
    let mask_a = vec![strength(&files[0], 0.4), strength(&files[1], 0.4)];
    let mask_b = vec![strength(&files[2], 0.8)];
    let mask_c = vec![AdapterStrength {
        path: files[0].clone(),
        unet: 0.7,
        text_encoder: 0.0,
    }];
    let mask_d = vec![AdapterStrength {
        path: files[1].clone(),
        unet: 0.0,
        text_encoder: 0.7,
    }];

    // Bytes a merge must move at least: every touched base weight read once and written once.
    // The first merge also reads each base weight's max |W| once (cached for later merges).
    let started = Instant::now();
    let report = merger.merge(&all).unwrap();
    eprintln!(
        "first merge (includes the one-time max |W| reads): {:.2} s",
        started.elapsed().as_secs_f64()
    );
    let touched: usize = merger
        .table()
        .modules()
        .iter()
        .filter(|m| m.network == Network::TextEncoder || m.id.contains(".attentions."))
        .map(|m| m.shape.iter().product::<usize>())
        .sum();
    let floor_bytes = touched * 4 * 2;
    eprintln!(
        "touched: {} parameters ({} tensors), {:.2} GiB read + written at f32",
        touched,
        report.touched_parameters,
        floor_bytes as f64 / (1u64 << 30) as f64
    );

    let mut group = c.benchmark_group("lora_merge");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(30))
        .warm_up_time(Duration::from_secs(3));

    let buffer = 128 << 20; // floats = 512 MiB
    let src = vec![1.0f32; buffer];
    let mut dst = vec![0.0f32; buffer];
    group.throughput(Throughput::Bytes((buffer * 4 * 2) as u64));
    group.bench_function("bandwidth_scale_copy", |b| {
        b.iter(|| scale_copy(&src, &mut dst))
    });
    let mut best = f64::MAX;
    for _ in 0..5 {
        let start = Instant::now();
        scale_copy(&src, &mut dst);
        best = best.min(start.elapsed().as_secs_f64());
    }
    let bandwidth = (buffer * 4 * 2) as f64 / best;
    eprintln!(
        "bandwidth {:.1} GB/s -> merge floor {:.0} ms",
        bandwidth / 1e9,
        floor_bytes as f64 / bandwidth * 1e3
    );
    drop((src, dst));

    group.throughput(Throughput::Bytes(floor_bytes as u64));
    group.bench_function("merge_3_rank32", |b| {
        b.iter_batched(
            || merger.merge(&[]).unwrap(),
            |_| merger.merge(&all).unwrap(),
            BatchSize::PerIteration,
        )
    });
    let mut next_is_a = true;
    group.bench_function("switch_mask", |b| {
        b.iter(|| {
            let mask = if next_is_a { &mask_a } else { &mask_b };
            next_is_a = !next_is_a;
            merger.merge(mask).unwrap()
        })
    });
    let unet_share: usize = merger
        .table()
        .modules()
        .iter()
        .filter(|m| m.network == Network::Unet && m.id.contains(".attentions."))
        .map(|m| m.shape.iter().product::<usize>())
        .sum();
    eprintln!(
        "disjoint masks: UNet mask touches {:.0}% of the merged bytes, text-encoder mask {:.0}%",
        100.0 * unet_share as f64 / touched as f64,
        100.0 * (touched - unet_share) as f64 / touched as f64
    );
    merger.merge(&mask_c).unwrap();
    let mut next_is_c = false;
    group.bench_function("switch_disjoint", |b| {
        b.iter(|| {
            let mask = if next_is_c { &mask_c } else { &mask_d };
            next_is_c = !next_is_c;
            merger.merge(mask).unwrap()
        })
    });
    group.throughput(Throughput::Bytes(
        files
            .iter()
            .map(|f| std::fs::metadata(f).unwrap().len())
            .sum(),
    ));
    group.bench_function("parse_3_files", |b| {
        b.iter(|| {
            for file in &files {
                load_adapter(file, merger.table(), ParseOptions::default()).unwrap();
            }
        })
    });
    group.finish();
}

criterion_group!(benches, lora_merge);
criterion_main!(benches);
