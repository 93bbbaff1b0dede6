//! One full-size SD 1.5 UNet call on the CPU backend (latents [2, 4, 64, 64], context
//! [2, 77, 768], random weights), timed call by call, for a per-op profile under `perf`
//! (docs/benchmarks.md, "UNet per-op profile on CPU"). The peer is `benches/unet_diffusers.py`,
//! run right after on the same box.
//!
//! Run: `cargo bench --bench unet_profile --no-run`, then
//! `perf record -F 49 -g --call-graph dwarf,16384 -o unet.perf TARGET/release/deps/unet_profile-* --calls 2`
//! and `perf report -i unet.perf --no-children --sort symbol --stdio | python3 benches/unet_profile_classes.py`.

use std::time::Instant;

use stylus_diffusion::backend::{CpuBackend, cpu_device};
use stylus_diffusion::burn::module::{Module, ModuleVisitor, Param};
use stylus_diffusion::burn::tensor::{Distribution, Tensor};
use stylus_diffusion::models::unet::UNetConfig;

type B = CpuBackend;

/// Forces lazily initialized parameters, so that random init is not timed with the call.
struct Materialize;

impl ModuleVisitor<B> for Materialize {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        param.val();
    }
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn main() {
    // `cargo bench` passes `--bench`; only `--calls N` is ours.
    let args: Vec<String> = std::env::args().collect();
    let calls = args
        .iter()
        .position(|a| a == "--calls")
        .and_then(|i| args.get(i + 1)?.parse().ok())
        .unwrap_or(1usize);
    let device = cpu_device();
    let unet = UNetConfig::v1_5().init::<B>(&device);
    unet.visit(&mut Materialize);
    let latents = Tensor::<B, 4>::random([2, 4, 64, 64], Distribution::Normal(0.0, 1.0), &device);
    let context = Tensor::<B, 3>::random([2, 77, 768], Distribution::Normal(0.0, 1.0), &device);
    for call in 0..calls {
        let before = load_average();
        let started = Instant::now();
        let noise = unet
            .forward(latents.clone(), 500.0, context.clone())
            .into_data();
        eprintln!(
            "unet_profile: call {call}: {:.2} s (load average before {before}, after {}; {} values)",
            started.elapsed().as_secs_f64(),
            load_average(),
            noise.num_elements()
        );
    }
}
