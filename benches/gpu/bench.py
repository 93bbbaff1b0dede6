#!/usr/bin/env python3
"""Side-by-side benchmark: stylus (burn) vs diffusers on the same card and the same random weights.

Run on a machine with PyTorch (and diffusers, or its wheel installed from a local file) but no
Rust toolchain: the `stylus` binary is built beforehand (`cargo build --release --features cuda`)
and passed with --stylus. No internet is needed: every weight is random and made here.

    python3 benches/gpu/bench.py --stylus ./stylus --device cuda --config sd15 --out /tmp/bench
    python3 benches/gpu/bench.py --stylus target/debug/stylus --device cpu --config tiny --out /tmp/b

It
  1. builds a UNet, VAE and CLIP text encoder with the chosen config and seeded random weights
     and saves them as a diffusers folder (fp16 on CUDA, fp32 on CPU);
  2. writes 3 kohya LoRA files (rank 32 on sd15) covering every attention/MLP module (264 on sd15);
  3. times diffusers: UNet call at batch 1/2/8, 25-step txt2img with CFG, CLIP encode, VAE decode,
     load + fuse 3 LoRAs, switching between two adapter sets;
  4. runs `stylus bench` on the same folder and files (it prints one JSON object) and compares its
     UNet output with diffusers' on the same inputs;
  5. prints one table with the ratios and writes everything to OUT/results.json.

Requirements: torch, diffusers (0.42), transformers, safetensors, peft (for diffusers' LoRA path).
"""
import argparse
import json
import os
import subprocess
import sys
import time

import torch
from safetensors.torch import save_file

CONFIGS = {
    "sd15": dict(
        unet=dict(sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
                  block_out_channels=(320, 640, 1280, 1280),
                  down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                  up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
                  cross_attention_dim=768, attention_head_dim=8, norm_num_groups=32),
        vae=dict(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2,
                 block_out_channels=(128, 256, 512, 512),
                 down_block_types=("DownEncoderBlock2D",) * 4,
                 up_block_types=("UpDecoderBlock2D",) * 4, sample_size=512, norm_num_groups=32),
        clip=dict(vocab_size=49408, hidden_size=768, intermediate_size=3072,
                  num_hidden_layers=12, num_attention_heads=12, max_position_embeddings=77,
                  hidden_act="quick_gelu", projection_dim=768),
        latent=64, rank=32,
    ),
    "tiny": dict(
        unet=dict(sample_size=8, in_channels=4, out_channels=4, layers_per_block=1,
                  block_out_channels=(32, 64), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                  up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
                  cross_attention_dim=32, attention_head_dim=2, norm_num_groups=32),
        vae=dict(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1,
                 block_out_channels=(32, 64), down_block_types=("DownEncoderBlock2D",) * 2,
                 up_block_types=("UpDecoderBlock2D",) * 2, sample_size=16, norm_num_groups=32),
        clip=dict(vocab_size=49408, hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                  num_attention_heads=4, max_position_embeddings=77, hidden_act="quick_gelu",
                  projection_dim=32),
        latent=8, rank=4,
    ),
}


def sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def timed(fn, device, warmup=3, iters=10):
    """Mean wall time in ms of `fn` after warm-up, synchronizing the device around each call."""
    for _ in range(warmup):
        fn()
    sync(device)
    t0 = time.perf_counter()
    for _ in range(iters):
        fn()
    sync(device)
    return (time.perf_counter() - t0) * 1e3 / iters


def build_models(cfg, dtype, device, out_dir):
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel(**cfg["unet"])
    vae = AutoencoderKL(**cfg["vae"])
    clip = CLIPTextModel(CLIPTextConfig(**cfg["clip"]))
    for name, model in (("unet", unet), ("vae", vae), ("text_encoder", clip)):
        model.to(dtype)
        model.save_pretrained(os.path.join(out_dir, name), safe_serialization=True)
        model.to(device).eval()
    return unet, vae, clip


def kohya_lora_files(unet, clip, rank, out_dir, count=3):
    """`count` kohya LoRA files with random factors on every attention/MLP module (kohya's
    default SD 1.5 target set). Returns the paths."""
    targets = []
    for name, module in unet.named_modules():
        if ".attentions." in name and isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)):
            if isinstance(module, torch.nn.Conv2d) and module.kernel_size != (1, 1):
                continue
            targets.append(("lora_unet_" + name.replace(".", "_"), module))
    for name, module in clip.named_modules():
        # transformers >= 5.6 drops the `text_model.` level; kohya names always carry it.
        name = name if name.startswith("text_model.") else "text_model." + name
        if isinstance(module, torch.nn.Linear) and ".encoder.layers." in name:
            targets.append(("lora_te_" + name.replace(".", "_"), module))
    paths = []
    for i in range(count):
        g = torch.Generator().manual_seed(100 + i)
        tensors = {}
        for key, module in targets:
            w = module.weight
            out_f, in_f = w.shape[0], w.shape[1]
            extra = (1, 1) if w.dim() == 4 else ()
            tensors[f"{key}.lora_down.weight"] = (torch.randn(rank, in_f, *extra, generator=g) * 0.01).half()
            tensors[f"{key}.lora_up.weight"] = (torch.randn(out_f, rank, *extra, generator=g) * 0.01).half()
            tensors[f"{key}.alpha"] = torch.tensor(float(rank // 2)).half()
        path = os.path.join(out_dir, f"lora_{i}.safetensors")
        save_file(tensors, path)
        paths.append(path)
    return paths, len(targets)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--stylus", required=True, help="path to the stylus binary")
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--config", default="sd15", choices=sorted(CONFIGS))
    ap.add_argument("--out", required=True)
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--stylus-timeout", type=float, default=1800, help="seconds for `stylus bench`")
    args = ap.parse_args()

    cfg = CONFIGS[args.config]
    device = args.device
    dtype = torch.float16 if device == "cuda" else torch.float32
    os.makedirs(args.out, exist_ok=True)
    model_dir = os.path.join(args.out, "model")
    unet, vae, clip = build_models(cfg, dtype, device, model_dir)
    lora_paths, lora_modules = kohya_lora_files(unet, clip, cfg["rank"], args.out)

    # Fixed inputs shared with stylus.
    g = torch.Generator().manual_seed(1)
    lat = cfg["latent"]
    ctx_dim = cfg["unet"]["cross_attention_dim"]
    inputs = {
        "latents": torch.randn(2, 4, lat, lat, generator=g),
        "context": torch.randn(2, 77, ctx_dim, generator=g),
        "timestep": torch.tensor([500.0]),
        "input_ids": torch.tensor([[49406] + [320 + i for i in range(10)] + [49407] * 66] * 2, dtype=torch.int64),
    }
    inputs_path = os.path.join(args.out, "inputs.safetensors")
    save_file(inputs, inputs_path)

    ref = {}
    with torch.no_grad():
        x = inputs["latents"].to(device, dtype)
        c = inputs["context"].to(device, dtype)
        t = inputs["timestep"].to(device)
        ref_out = unet(x, t, encoder_hidden_states=c).sample.float().cpu()
        for b in (1, 2, 8):
            xb = x[:1].repeat(b, 1, 1, 1)
            cb = c[:1].repeat(b, 1, 1)
            ref[f"unet_b{b}_ms"] = timed(lambda: unet(xb, t, encoder_hidden_states=cb), device)
        ids = inputs["input_ids"].to(device)
        ref["clip_encode_ms"] = timed(lambda: clip(ids[:1]), device)
        z = x[:1]
        ref["vae_decode_ms"] = timed(lambda: vae.decode(z / 0.18215), device, warmup=1, iters=3)

        from diffusers import DPMSolverMultistepScheduler

        sched = DPMSolverMultistepScheduler(beta_start=0.00085, beta_end=0.012,
                                            beta_schedule="scaled_linear", use_karras_sigmas=True)

        def txt2img():
            emb = clip(ids)[0]
            sched.set_timesteps(args.steps)
            latents = torch.randn(1, 4, lat, lat, device=device, dtype=dtype) * sched.init_noise_sigma
            for ts in sched.timesteps:
                inp = sched.scale_model_input(torch.cat([latents] * 2), ts)
                eps = unet(inp, ts, encoder_hidden_states=emb).sample
                un, co = eps.chunk(2)
                latents = sched.step(un + 5.0 * (co - un), ts, latents).prev_sample
            return vae.decode(latents / 0.18215).sample

        ref["txt2img_ms"] = timed(txt2img, device, warmup=1, iters=2)
    save_file({"out": ref_out.contiguous()}, os.path.join(args.out, "diffusers_unet_out.safetensors"))

    # LoRA: load + fuse 3 files, then switch to another set (unfuse, unload, load, fuse).
    try:
        from diffusers import StableDiffusionPipeline

        pipe = StableDiffusionPipeline(vae=vae, text_encoder=clip, tokenizer=None, unet=unet,
                                       scheduler=sched, safety_checker=None, feature_extractor=None,
                                       requires_safety_checker=False)

        def load_fuse(paths):
            for i, p in enumerate(paths):
                pipe.load_lora_weights(p, adapter_name=f"a{time.perf_counter_ns()}_{i}")
            pipe.fuse_lora(lora_scale=0.5)
            sync(device)

        te_linear = next(m for n, m in clip.named_modules() if n.endswith("layers.0.self_attn.q_proj"))
        te_before = te_linear.weight.detach().clone()
        t0 = time.perf_counter()
        load_fuse(lora_paths)
        ref["lora_load_merge_3_ms"] = (time.perf_counter() - t0) * 1e3
        # diffusers must really touch the text encoder too, or the comparison is unfair.
        ref["text_encoder_lora_applied"] = bool((te_linear.weight.detach() - te_before).abs().max() > 0)
        t0 = time.perf_counter()
        pipe.unfuse_lora()
        pipe.unload_lora_weights()
        load_fuse(lora_paths[:2])
        ref["lora_switch_ms"] = (time.perf_counter() - t0) * 1e3
        pipe.unfuse_lora()
        pipe.unload_lora_weights()
    except Exception as e:  # report, never hide: the table shows the reason
        ref["lora_error"] = f"{type(e).__name__}: {e}"

    cmd = [args.stylus, "bench", "--checkpoint", model_dir, "--device", device,
           "--inputs", inputs_path, "--save-unet-output", os.path.join(args.out, "stylus_unet_out.safetensors"),
           "--steps", str(args.steps), "--json"] + sum((["--lora", p] for p in lora_paths), [])
    print("running:", " ".join(cmd), file=sys.stderr, flush=True)
    with open(os.path.join(args.out, "diffusers.json"), "w") as f:
        json.dump(ref, f, indent=2)  # kept even if our side fails or times out
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.stylus_timeout)
    except subprocess.TimeoutExpired as e:
        proc = subprocess.CompletedProcess(cmd, 124, "", f"timed out after {e.timeout} s")
    if proc.returncode != 0:
        print(proc.stderr, file=sys.stderr)
        ours = {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit {proc.returncode}"}
    else:
        ours = json.loads(proc.stdout)
        from safetensors.torch import load_file
        mine = load_file(os.path.join(args.out, "stylus_unet_out.safetensors"))["out"].float()
        ours["unet_rel_err_vs_diffusers"] = float((mine - ref_out).norm() / ref_out.norm())

    device_name = torch.cuda.get_device_name() if device == "cuda" else "cpu"
    results = {"device": device_name, "config": args.config, "dtype": str(dtype),
               "lora_modules": lora_modules, "diffusers": ref, "stylus": ours,
               "torch": torch.__version__}
    try:
        import diffusers
        results["diffusers_version"] = diffusers.__version__
    except ImportError:
        pass
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(results, f, indent=2)

    print(f"\n{device_name}, config {args.config}, {dtype}, LoRA modules per file: {lora_modules}")
    print(f"{'measure':<24}{'diffusers':>12}{'stylus':>12}{'stylus/diffusers':>18}")
    for key in ("unet_b1_ms", "unet_b2_ms", "unet_b8_ms", "clip_encode_ms", "vae_decode_ms",
                "txt2img_ms", "lora_load_merge_3_ms", "lora_switch_ms"):
        a, b = ref.get(key), ours.get(key)
        ratio = f"{b / a:.2f}" if isinstance(a, float) and isinstance(b, (int, float)) and a > 0 else "-"
        fa = f"{a:.2f}" if isinstance(a, float) else "-"
        fb = f"{b:.2f}" if isinstance(b, (int, float)) else "-"
        print(f"{key:<24}{fa:>12}{fb:>12}{ratio:>18}")
    if "unet_rel_err_vs_diffusers" in ours:
        print(f"UNet output relative L2 error vs diffusers: {ours['unet_rel_err_vs_diffusers']:.3e}")
    for k in ("error", "lora_error"):
        if k in ours or k in ref:
            print(f"{k}: {ours.get(k) or ref.get(k)}")
    return 0 if "error" not in ours else 1


if __name__ == "__main__":
    sys.exit(main())
