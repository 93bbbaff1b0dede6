#!/usr/bin/env python3
"""Scheduler parity fixtures for crates/stylus-diffusion (tests/scheduler_parity.rs).

For every case (scheduler x timestep spacing x step count) on Stable Diffusion 1.5's
scheduler_config.json (scaled_linear betas 0.00085..0.012, 1000 steps, steps_offset 1,
set_alpha_to_one false, clip_sample false), records diffusers' timesteps, sigmas (where the
scheduler has them), init_noise_sigma and the whole chain of `step()` outputs from a fixed sample,
with a fixed "model output" per step (seeded Gaussian tensors, shape [2, 4, 4, 4]).

Betas: torch.linspace's float32 result depends on the CPU's vector width (AVX2 vs AVX-512 give
different last bits), so the schedulers get the exact scaled_linear betas through `trained_betas`
(rounded to float32 by diffusers, as our Rust code rounds them); the script checks that these
betas equal torch.linspace's to 3e-7 relative. Everything after the betas is diffusers' own code.

Euler ancestral: the noise of each step is drawn from a torch.Generator seeded per step; the same
noise is stored, and the Rust test passes it to our step (in the sampler the noise comes from our
own SplitMix64, so only the deterministic part can be compared with diffusers).

Output (tests/fixtures/schedulers/): cases.json (metadata, schedules) and tensors.safetensors
(`sample`, `model_output` [steps_max, N], `noise` [steps_max, N], `out.<case>` [model calls, N]).

Sampler trajectories (tests/fixtures/schedulers/trajectory.safetensors + trajectory.json): the
small random-weight SD model of tools/make_sd_fixtures.py (its saved diffusers folder
tests/fixtures/sd/tiny-diffusers: CLIP vocabulary 256, hidden 24; UNet 2 levels; VAE factor 2)
run through diffusers' StableDiffusionPipeline with fixed initial latents [2, 4, 8, 8]
(16x16 images), fixed token ids (< 256, as that CLIP's vocabulary is tiny) encoded by the
pipeline's own text encoder, guidance 5 (one batched [uncond, cond] UNet call per step); the
latents after every step (callback_on_step_end) and the final images (output_type "np") are
recorded. Cases: DDIM 4 steps with clip skip 1; DPM++ 2M Karras 3 steps with clip skip 2
(diffusers `clip_skip=1`: hidden_states[-2] + final_layer_norm).

Recreate the virtualenv:  python3 -m venv /work/venv && /work/venv/bin/pip install torch diffusers
transformers safetensors   (used: torch 2.15, diffusers 0.42.1)
Run:  /work/venv/bin/python tools/make_scheduler_fixtures.py
"""

import inspect
import json
from pathlib import Path

import numpy as np
import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    PNDMScheduler,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)
from safetensors.torch import save_file
from transformers import CLIPTextModel

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "crates/stylus-diffusion/tests/fixtures/schedulers"
SHAPE = (2, 4, 4, 4)
MAX_CALLS = 41

BETAS = (np.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=np.float64) ** 2).tolist()
SD15 = dict(
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    trained_betas=BETAS,
    steps_offset=1,
    set_alpha_to_one=False,
    clip_sample=False,
    skip_prk_steps=True,
)

CASES = [
    # name, our scheduler name, diffusers class, extra config, steps
    ("ddim_leading_10", "ddim", DDIMScheduler, {}, 10),
    ("ddim_leading_35", "ddim", DDIMScheduler, {}, 35),
    ("ddim_trailing_10", "ddim", DDIMScheduler, {"timestep_spacing": "trailing"}, 10),
    ("ddim_linspace_7", "ddim", DDIMScheduler, {"timestep_spacing": "linspace"}, 7),
    ("euler_linspace_10", "euler", EulerDiscreteScheduler, {}, 10),
    ("euler_leading_10", "euler", EulerDiscreteScheduler, {"timestep_spacing": "leading"}, 10),
    ("euler_trailing_12", "euler", EulerDiscreteScheduler, {"timestep_spacing": "trailing"}, 12),
    ("euler_ancestral_linspace_10", "euler_ancestral", EulerAncestralDiscreteScheduler, {}, 10),
    ("euler_ancestral_leading_8", "euler_ancestral", EulerAncestralDiscreteScheduler, {"timestep_spacing": "leading"}, 8),
    ("dpmpp_2m_linspace_10", "dpmpp_2m", DPMSolverMultistepScheduler, {}, 10),
    ("dpmpp_2m_linspace_20", "dpmpp_2m", DPMSolverMultistepScheduler, {}, 20),
    ("dpmpp_2m_leading_10", "dpmpp_2m", DPMSolverMultistepScheduler, {"timestep_spacing": "leading"}, 10),
    ("dpmpp_2m_trailing_10", "dpmpp_2m", DPMSolverMultistepScheduler, {"timestep_spacing": "trailing"}, 10),
    ("dpmpp_2m_karras_10", "dpmpp_2m_karras", DPMSolverMultistepScheduler, {"use_karras_sigmas": True}, 10),
    ("dpmpp_2m_karras_35", "dpmpp_2m_karras", DPMSolverMultistepScheduler, {"use_karras_sigmas": True}, 35),
    ("dpmpp_2m_karras_2", "dpmpp_2m_karras", DPMSolverMultistepScheduler, {"use_karras_sigmas": True}, 2),
    ("pndm_leading_10", "pndm", PNDMScheduler, {}, 10),
    ("pndm_leading_35", "pndm", PNDMScheduler, {}, 35),
    ("pndm_linspace_8", "pndm", PNDMScheduler, {"timestep_spacing": "linspace"}, 8),
]


def main():
    reference_betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float32) ** 2
    ours = torch.tensor(BETAS, dtype=torch.float64)
    assert ((reference_betas.double() - ours).abs() / ours).max() < 3e-7

    gen = torch.Generator().manual_seed(0)
    sample = torch.randn(SHAPE, generator=gen)
    model_outputs = torch.randn((MAX_CALLS, *SHAPE), generator=gen)
    noises = torch.stack([torch.randn(SHAPE, generator=torch.Generator().manual_seed(1000 + i)) for i in range(MAX_CALLS)])

    tensors = {
        "sample": sample.reshape(-1).contiguous(),
        "model_output": model_outputs.reshape(MAX_CALLS, -1).contiguous(),
        "noise": noises.reshape(MAX_CALLS, -1).contiguous(),
    }
    cases = []
    for name, ours_name, cls, extra, steps in CASES:
        config = {k: v for k, v in SD15.items() if k in inspect.signature(cls.__init__).parameters}
        scheduler = cls(**config, **extra)
        scheduler.set_timesteps(steps)
        timesteps = scheduler.timesteps.tolist()
        assert len(timesteps) <= MAX_CALLS, (name, len(timesteps))
        x = sample.clone()
        outputs = []
        model_input_scales = []
        for i, t in enumerate(scheduler.timesteps):
            scaled = scheduler.scale_model_input(x, t)
            model_input_scales.append(float((scaled.reshape(-1)[0] / x.reshape(-1)[0]).item()))
            kwargs = {}
            if ours_name == "euler_ancestral":
                kwargs["generator"] = torch.Generator().manual_seed(1000 + i)
            x = scheduler.step(model_outputs[i], t, x, **kwargs).prev_sample
            outputs.append(x.reshape(-1))
        tensors[f"out.{name}"] = torch.stack(outputs).contiguous()
        sigmas = getattr(scheduler, "sigmas", None)
        cases.append(
            {
                "name": name,
                "scheduler": ours_name,
                "timestep_spacing": extra.get("timestep_spacing"),
                "steps": steps,
                "timesteps": [float(t) for t in timesteps],
                "sigmas": [float(s) for s in sigmas.tolist()] if ours_name.startswith(("euler", "dpmpp")) else None,
                "init_noise_sigma": float(scheduler.init_noise_sigma),
                "model_input_scales": model_input_scales,
            }
        )
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "cases.json").write_text(json.dumps(cases, indent=1) + "\n")
    save_file(tensors, str(OUT / "tensors.safetensors"))
    print(f"{len(cases)} cases written to {OUT}")
    write_trajectories()


TINY = ROOT / "crates/stylus-diffusion/tests/fixtures/sd/tiny-diffusers"
# Token ids per chunk (BOS 254 / EOS 255 in the tiny CLIP's config), padded with EOS to 77.
COND_IDS = [254, 17, 42, 99, 3, 128, 7, 255]
UNCOND_IDS = [254, 200, 31, 255]
TRAJECTORIES = [
    # name, scheduler, extra config, steps, clip skip (A1111 numbering)
    ("ddim_4", "ddim", DDIMScheduler, {}, 4, 1),
    ("dpmpp_2m_karras_3", "dpmpp_2m_karras", DPMSolverMultistepScheduler, {"use_karras_sigmas": True}, 3, 2),
]


def padded(ids):
    return torch.tensor([ids + [255] * (77 - len(ids))], dtype=torch.int64)


def write_trajectories():
    torch.manual_seed(0)
    unet = UNet2DConditionModel.from_pretrained(TINY / "unet", torch_dtype=torch.float32).eval()
    vae = AutoencoderKL.from_pretrained(TINY / "vae", torch_dtype=torch.float32, variant="fp16").eval()
    text_encoder = CLIPTextModel.from_pretrained(TINY / "text_encoder", torch_dtype=torch.float32).eval()
    gen = torch.Generator().manual_seed(7)
    latents = torch.randn((2, 4, 8, 8), generator=gen)
    tensors = {
        "latents": latents.contiguous(),
        "cond_ids": padded(COND_IDS)[0].contiguous(),
        "uncond_ids": padded(UNCOND_IDS)[0].contiguous(),
    }
    meta = []
    for name, ours, cls, extra, steps, clip_skip in TRAJECTORIES:
        config = {k: v for k, v in SD15.items() if k in inspect.signature(cls.__init__).parameters}
        scheduler = cls(**config, **extra)
        pipe = StableDiffusionPipeline(
            vae=vae,
            text_encoder=text_encoder,
            tokenizer=None,
            unet=unet,
            scheduler=scheduler,
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
        with torch.no_grad():
            embeds = []
            for ids in (COND_IDS, UNCOND_IDS):
                out = text_encoder(input_ids=padded(ids), output_hidden_states=True)
                if clip_skip == 1:
                    hidden = out.last_hidden_state
                else:
                    # transformers >= 5 flattened `text_model` away (diffusers still names it).
                    final_norm = getattr(text_encoder, "text_model", text_encoder).final_layer_norm
                    hidden = final_norm(out.hidden_states[-clip_skip])
                embeds.append(hidden.repeat(2, 1, 1))
            steps_seen = []

            def record(pipeline, step, timestep, callback_kwargs):
                steps_seen.append(callback_kwargs["latents"].clone())
                return callback_kwargs

            images = pipe(
                prompt_embeds=embeds[0],
                negative_prompt_embeds=embeds[1],
                latents=latents.clone(),
                height=16,
                width=16,
                num_inference_steps=steps,
                guidance_scale=5.0,
                output_type="np",
                callback_on_step_end=record,
            ).images
        tensors[f"{name}.steps"] = torch.stack(steps_seen).contiguous()
        tensors[f"{name}.images"] = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
        meta.append({"name": name, "scheduler": ours, "steps": steps, "clip_skip": clip_skip, "guidance_scale": 5.0})
    save_file(tensors, str(OUT / "trajectory.safetensors"))
    (OUT / "trajectory.json").write_text(json.dumps(meta, indent=1) + "\n")
    print(f"{len(meta)} trajectories written to {OUT}")


if __name__ == "__main__":
    main()
