#!/usr/bin/env python3
"""diffusers side of the SD 1.5 UNet CPU comparison (see benches/unet_cpu.rs and
crates/stylus-diffusion/tests/sd_full_size.rs).

1. Builds the full SD 1.5 UNet2DConditionModel with seeded random weights (diffusers' default
   init), saves it as a diffusers `unet/` folder (f32 safetensors, ~3.4 GB) under OUT_DIR, and
   records one forward pass (latents [2, 4, 64, 64], timestep 500, context [2, 77, 768]) in
   OUT_DIR/reference.safetensors for the Rust parity test.
2. Times diffusers on this CPU, in the same process and with the same thread count the Rust side
   gets: the full UNet forward (64x64 latents, batch 2) and the tiny fixture UNet forward
   (tools/make_sd_fixtures.py config, 8x8 latents, batch 2). Prints one JSON line.

Recreate the virtualenv:  python3 -m venv /work/venv && /work/venv/bin/pip install torch diffusers
transformers safetensors   (used: torch 2.15, diffusers 0.42.1)
Run:  /work/venv/bin/python benches/unet_diffusers.py OUT_DIR [--threads 2] [--runs 3]
Then: STYLUS_SD15_RANDOM=OUT_DIR cargo test -p stylus-diffusion --test sd_full_size -- --ignored --nocapture
"""

import argparse
import json
import resource
import statistics
import sys
import time
from pathlib import Path

import torch
from diffusers import UNet2DConditionModel
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))
from make_sd_fixtures import CONTEXT_DIM, tiny_unet  # noqa: E402


def sd15_unet():
    return UNet2DConditionModel(
        sample_size=64,
        in_channels=4,
        out_channels=4,
        block_out_channels=(320, 640, 1280, 1280),
        layers_per_block=2,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        cross_attention_dim=768,
        attention_head_dim=8,
        norm_num_groups=32,
    )


def time_forward(model, latents, timestep, context, runs):
    with torch.no_grad():
        model(latents, timestep, encoder_hidden_states=context)  # warm-up
        times = []
        for _ in range(runs):
            start = time.perf_counter()
            model(latents, timestep, encoder_hidden_states=context)
            times.append(time.perf_counter() - start)
    return times


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--tiny-only", action="store_true", help="time only the tiny UNet")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    generator = torch.Generator().manual_seed(15)
    torch.manual_seed(15)
    timestep = torch.tensor(500.0)
    result = {"torch": torch.__version__, "threads": torch.get_num_threads()}
    if not args.tiny_only:
        result.update(full_size(args, generator, timestep))

    tiny = tiny_unet().eval()
    tiny_latents = torch.randn((2, 4, 8, 8), generator=generator)
    tiny_context = torch.randn((2, 77, CONTEXT_DIM), generator=generator)
    tiny_times = time_forward(tiny, tiny_latents, timestep, tiny_context, 50)
    result["tiny_8x8_b2_median_ms"] = 1000 * statistics.median(tiny_times)
    result["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    print(json.dumps(result))


def full_size(args, generator, timestep):
    unet = sd15_unet().eval()
    latents = torch.randn((2, 4, 64, 64), generator=generator)
    context = torch.randn((2, 77, 768), generator=generator)

    unet_dir = args.out_dir / "unet"
    unet_dir.mkdir(parents=True, exist_ok=True)
    unet.save_config(unet_dir)
    save_file({k: v.contiguous() for k, v in unet.state_dict().items()},
              unet_dir / "diffusion_pytorch_model.safetensors")
    with torch.no_grad():
        noise_pred = unet(latents, timestep, encoder_hidden_states=context).sample
    save_file({"latents": latents, "context": context, "timestep": timestep.reshape(1),
               "noise_pred": noise_pred}, args.out_dir / "reference.safetensors")

    full = time_forward(unet, latents, timestep, context, args.runs)
    return {"full_64x64_b2_s": full, "full_64x64_b2_median_s": statistics.median(full)}


if __name__ == "__main__":
    main()
