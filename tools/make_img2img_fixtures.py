#!/usr/bin/env python3
"""img2img and inpainting parity fixtures for crates/stylus-diffusion (tests/img2img_parity.rs).

Runs diffusers' own StableDiffusionImg2ImgPipeline and StableDiffusionInpaintPipeline on the small
random-weight SD model of tools/make_sd_fixtures.py (tests/fixtures/sd/tiny-diffusers; VAE factor
2, so 16x16 images have 8x8 latents), and, for the inpainting model, on a tiny 9-channel UNet
made here (the same config as the tiny UNet with in_channels=9, seeded random weights rounded to
float16, saved as a diffusers `unet/` folder: tests/fixtures/img2img/inpaint-unet).

Inputs (tests/fixtures/img2img/): init.png (16x16 RGB, seeded random pixels) and mask.png (16x16
grey, a white rectangle = repaint). Both are already 16x16, so diffusers' PIL resize does not
resample them and both sides see exactly `byte / 255`.

Randomness: every Gaussian draw of the pipelines goes through diffusers' `randn_tensor` (the VAE
posterior's `sample()` and the pipelines' noise); the script wraps it, records each draw in
order and stores it by role, so the Rust test replays exactly these draws through the same code
path the sampler uses (`stylus_diffusion::sampler::start_from_image` with a draw callback):
`<case>.noise` (the initial noise), `<case>.image_eps` (posterior sample of the init image, when
the pipeline encodes it), `<case>.masked_eps` (posterior sample of the masked image, 9-channel
only; diffusers also encodes it for 4-channel UNets and ignores it).

Recorded: the latents after every step (callback_on_step_end, after the 4-channel inpainting
blend), `<case>.steps` [steps run, 1, 4, 8, 8], and the decoded images (output_type "np")
`<case>.images` [1, 3, 16, 16]. Prompt embeddings: the tiny CLIP's last hidden state of fixed
token ids (as tests/fixtures/schedulers/trajectory.* does), guidance 5, batch 1.

Strength 1 for 4-channel and 9-channel inpainting starts from pure noise in diffusers
(`is_strength_max`), as ours does. diffusers' img2img pipeline at strength 1 still adds the image
at the first timestep; ours starts from pure noise there (txt2img), so no img2img case uses 1.

Recreate the virtualenv:  python3 -m venv /work/venv && /work/venv/bin/pip install torch diffusers
transformers safetensors pillow   (used: torch 2.15, diffusers 0.42.1)
Run:  /work/venv/bin/python tools/make_img2img_fixtures.py
"""

import importlib
import inspect
import json
import sys
from pathlib import Path

import numpy as np
import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerDiscreteScheduler,
    PNDMScheduler,
    StableDiffusionImg2ImgPipeline,
    StableDiffusionInpaintPipeline,
    UNet2DConditionModel,
)
from PIL import Image
from safetensors.torch import save_file
from transformers import CLIPTextModel

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
from make_scheduler_fixtures import SD15, padded  # noqa: E402
from make_sd_fixtures import half_state, randomize_, tiny_unet  # noqa: E402

TINY = ROOT / "crates/stylus-diffusion/tests/fixtures/sd/tiny-diffusers"
OUT = ROOT / "crates/stylus-diffusion/tests/fixtures/img2img"
COND_IDS = [254, 17, 42, 99, 3, 128, 7, 255]
UNCOND_IDS = [254, 200, 31, 255]
SIZE = 16

SCHEDULERS = {
    "ddim": (DDIMScheduler, {}),
    "euler": (EulerDiscreteScheduler, {}),
    "dpmpp_2m_karras": (DPMSolverMultistepScheduler, {"use_karras_sigmas": True}),
    "pndm": (PNDMScheduler, {}),
}

CASES = [
    # name, mode, scheduler, steps, strength, unet ("regular" or "inpaint"), seed
    ("img2img_euler_0.5", "img2img", "euler", 6, 0.5, "regular", 1),
    ("img2img_euler_0.75", "img2img", "euler", 6, 0.75, "regular", 2),
    ("img2img_dpmpp_2m_karras_0.5", "img2img", "dpmpp_2m_karras", 6, 0.5, "regular", 3),
    ("img2img_dpmpp_2m_karras_0.75", "img2img", "dpmpp_2m_karras", 6, 0.75, "regular", 4),
    ("img2img_pndm_0.6", "img2img", "pndm", 5, 0.6, "regular", 5),
    ("inpaint_ddim_0.75", "inpaint", "ddim", 6, 0.75, "regular", 6),
    ("inpaint_euler_1", "inpaint", "euler", 4, 1.0, "regular", 7),
    ("inpaint9_dpmpp_2m_karras_1", "inpaint", "dpmpp_2m_karras", 5, 1.0, "inpaint", 8),
    ("inpaint9_euler_0.6", "inpaint", "euler", 5, 0.6, "inpaint", 9),
]


def inpaint_unet():
    """The tiny UNet's config with 9 input channels (latents + mask + masked-image latents)."""
    reference = tiny_unet()
    config = dict(reference.config)
    config["in_channels"] = 9
    return UNet2DConditionModel.from_config(config)


class Recorder:
    """Wraps diffusers' randn_tensor: every draw is kept in order with the module that made it."""

    def __init__(self):
        self.draws = []
        self.originals = {}

    def install(self):
        for name in (
            "diffusers.models.autoencoders.vae",
            "diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion_img2img",
            "diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion_inpaint",
        ):
            module = importlib.import_module(name)
            original = module.randn_tensor
            self.originals[name] = original
            role = "posterior" if name.endswith(".vae") else "noise"

            def wrapped(*args, _original=original, _role=role, **kwargs):
                value = _original(*args, **kwargs)
                self.draws.append((_role, value.clone()))
                return value

            module.randn_tensor = wrapped

    def take(self):
        draws, self.draws = self.draws, []
        return draws


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(20261203)
    pixels = torch.randint(0, 256, (SIZE, SIZE, 3), generator=gen, dtype=torch.uint8).numpy()
    Image.fromarray(pixels, "RGB").save(OUT / "init.png")
    mask = np.zeros((SIZE, SIZE), dtype=np.uint8)
    mask[3:11, 5:14] = 255
    Image.fromarray(mask, "L").save(OUT / "mask.png")
    init_image = Image.open(OUT / "init.png")
    mask_image = Image.open(OUT / "mask.png")

    unet9 = inpaint_unet()
    randomize_(unet9, torch.Generator().manual_seed(20261204))
    unet9.eval()
    folder = OUT / "inpaint-unet"
    folder.mkdir(exist_ok=True)
    unet9.save_config(folder)
    save_file(half_state(unet9), folder / "diffusion_pytorch_model.safetensors")

    unet = UNet2DConditionModel.from_pretrained(TINY / "unet", torch_dtype=torch.float32).eval()
    vae = AutoencoderKL.from_pretrained(TINY / "vae", torch_dtype=torch.float32, variant="fp16").eval()
    text_encoder = CLIPTextModel.from_pretrained(TINY / "text_encoder", torch_dtype=torch.float32).eval()
    with torch.no_grad():
        cond = text_encoder(input_ids=padded(COND_IDS)).last_hidden_state
        uncond = text_encoder(input_ids=padded(UNCOND_IDS)).last_hidden_state

    recorder = Recorder()
    recorder.install()
    tensors = {"cond_ids": padded(COND_IDS)[0].contiguous(), "uncond_ids": padded(UNCOND_IDS)[0].contiguous()}
    meta = []
    for name, mode, scheduler_name, steps, strength, which, seed in CASES:
        cls, extra = SCHEDULERS[scheduler_name]
        config = {k: v for k, v in SD15.items() if k in inspect.signature(cls.__init__).parameters}
        scheduler = cls(**config, **extra)
        model = unet9 if which == "inpaint" else unet
        common = dict(
            vae=vae,
            text_encoder=text_encoder,
            tokenizer=None,
            unet=model,
            scheduler=scheduler,
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
        steps_seen = []

        def record(pipeline, step, timestep, callback_kwargs):
            steps_seen.append(callback_kwargs["latents"].clone())
            return callback_kwargs

        kwargs = dict(
            prompt_embeds=cond,
            negative_prompt_embeds=uncond,
            image=init_image,
            strength=strength,
            num_inference_steps=steps,
            guidance_scale=5.0,
            output_type="np",
            generator=torch.Generator().manual_seed(seed),
            callback_on_step_end=record,
        )
        with torch.no_grad():
            if mode == "img2img":
                images = StableDiffusionImg2ImgPipeline(**common)(**kwargs).images
            else:
                images = StableDiffusionInpaintPipeline(**common)(
                    mask_image=mask_image, height=SIZE, width=SIZE, **kwargs
                ).images
        draws = recorder.take()
        noise = [v for role, v in draws if role == "noise"]
        posterior = [v for role, v in draws if role == "posterior"]
        assert len(noise) == 1, (name, [r for r, _ in draws])
        tensors[f"{name}.noise"] = noise[0].contiguous()
        # Which posterior draw is which (see the module docstring).
        encodes_image = strength < 1.0 or (mode == "inpaint" and which == "regular")
        if encodes_image:
            tensors[f"{name}.image_eps"] = posterior[0].contiguous()
        if which == "inpaint":
            tensors[f"{name}.masked_eps"] = posterior[-1].contiguous()
        # prepare_mask_latents encodes the masked image for every UNet.
        expected_posteriors = int(encodes_image) + int(mode == "inpaint")
        assert len(posterior) == expected_posteriors, (name, len(posterior))
        tensors[f"{name}.steps"] = torch.stack(steps_seen).contiguous()
        tensors[f"{name}.images"] = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
        meta.append(
            {
                "name": name,
                "mode": mode,
                "scheduler": scheduler_name,
                "steps": steps,
                "strength": strength,
                "unet": which,
                "guidance_scale": 5.0,
                "steps_run": len(steps_seen),
            }
        )
        print(name, "steps run:", len(steps_seen))
    save_file(tensors, str(OUT / "tensors.safetensors"))
    (OUT / "cases.json").write_text(json.dumps(meta, indent=1) + "\n")
    total = sum(f.stat().st_size for f in OUT.rglob("*") if f.is_file())
    print(f"{len(meta)} cases written to {OUT} ({total / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
