#!/usr/bin/env python3
"""Parity fixtures for the SD 1.x networks of crates/stylus-diffusion.

Builds SMALL-config models of the three SD 1.x networks with seeded random weights (diffusers
UNet2DConditionModel and AutoencoderKL, transformers CLIPTextModel), saves them

  * as a diffusers folder   (tiny-diffusers/{unet,vae,text_encoder}/...), and
  * as a single-file LDM checkpoint (tiny-ldm.safetensors: model.diffusion_model.*,
    first_stage_model.*, cond_stage_model.transformer.text_model.*, plus the buffers real
    checkpoints carry: position_ids, DDPM schedule, model_ema counters),

and records reference outputs computed by diffusers/transformers in float32 (reference.safetensors):
CLIP last + penultimate hidden states for several token-id sequences, UNet noise predictions at
three latent sizes (8x8 batch 2 with per-item timesteps, 16x8, and the odd 9x7 that needs
diffusers' `upsample_size`), VAE decode and encode (posterior mean).

Weights are rounded to float16 before the references are computed and stored as float16 (this
keeps the committed set small and exercises the f16 -> f32 cast of the loader); all math runs in
float32. The diffusers-to-LDM key conversion below is written from the LDM module layout
(openaimodel.py / autoencoder model.py), independently of the Rust mapping it tests.

Recreate the virtualenv:  python3 -m venv /work/venv && /work/venv/bin/pip install torch diffusers
transformers safetensors   (used: torch 2.15, diffusers 0.42.1, transformers 5.24)
Run:  /work/venv/bin/python tools/make_sd_fixtures.py [out_dir]
      (default out_dir: crates/stylus-diffusion/tests/fixtures/sd)
"""

import json
import shutil
import sys
from pathlib import Path

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from safetensors.torch import save_file
from transformers import CLIPTextConfig, CLIPTextModel

ROOT = Path(__file__).resolve().parent.parent
OUT = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "crates/stylus-diffusion/tests/fixtures/sd"

LAYERS_PER_BLOCK = 1
UNET_CHANNELS = (32, 32)
UNET_CROSS_ATTENTION = (True, False)
CONTEXT_DIM = 24


def tiny_unet():
    return UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        block_out_channels=UNET_CHANNELS,
        layers_per_block=LAYERS_PER_BLOCK,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=CONTEXT_DIM,
        attention_head_dim=8,  # diffusers' name for the number of heads in SD 1.x configs
        norm_num_groups=32,
    )


def tiny_vae():
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        block_out_channels=(32, 32),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=32,
        sample_size=16,
    )


def tiny_clip():
    config = CLIPTextConfig(
        vocab_size=256,
        hidden_size=CONTEXT_DIM,
        intermediate_size=48,
        num_hidden_layers=3,
        num_attention_heads=12,
        max_position_embeddings=77,
        hidden_act="quick_gelu",
        attn_implementation="eager",
        bos_token_id=254,
        eos_token_id=255,
        pad_token_id=255,
    )
    return CLIPTextModel(config)


def randomize_(model, generator):
    """Kaiming-style init is kept for matrices; every 1-D parameter (biases, norm scales/shifts)
    gets a random offset so that a swapped or missing bias/gamma/beta is visible. Then all
    weights are rounded to float16."""
    with torch.no_grad():
        for _, p in model.named_parameters():
            if p.ndim == 1:
                p.add_(0.1 * torch.randn(p.shape, generator=generator))
            else:
                p.copy_(p + 0.02 * torch.randn(p.shape, generator=generator))
            p.copy_(p.half().float())


def final_layer_norm(clip):
    # transformers 5.x flattened CLIPTextModel (no `.text_model`); older versions nest it.
    return getattr(clip, "text_model", clip).final_layer_norm


def half_state(model):
    return {k: v.detach().half().contiguous() for k, v in model.state_dict().items()}


# ---------------------------------------------------------------- diffusers -> LDM key names

RESNET_TO_LDM = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}


def resnet_to_ldm(rest):
    module, param = rest.split(".", 1)
    return f"{RESNET_TO_LDM[module]}.{param}"


def unet_key_to_ldm(key):
    parts = key.split(".")
    per_level = LAYERS_PER_BLOCK + 1
    if parts[0] == "conv_in":
        return "input_blocks.0.0." + parts[1]
    if parts[0] == "time_embedding":
        return {"linear_1": "time_embed.0.", "linear_2": "time_embed.2."}[parts[1]] + parts[2]
    if parts[0] == "conv_norm_out":
        return "out.0." + parts[1]
    if parts[0] == "conv_out":
        return "out.2." + parts[1]
    if parts[0] == "down_blocks":
        level, kind, index = int(parts[1]), parts[2], int(parts[3])
        rest = ".".join(parts[4:])
        if kind == "resnets":
            return f"input_blocks.{1 + level * per_level + index}.0.{resnet_to_ldm(rest)}"
        if kind == "attentions":
            return f"input_blocks.{1 + level * per_level + index}.1.{rest}"
        if kind == "downsamplers":
            return f"input_blocks.{1 + level * per_level + LAYERS_PER_BLOCK}.0.op.{parts[-1]}"
    if parts[0] == "mid_block":
        kind, index = parts[1], int(parts[2])
        rest = ".".join(parts[3:])
        if kind == "resnets":
            return f"middle_block.{0 if index == 0 else 2}.{resnet_to_ldm(rest)}"
        return f"middle_block.1.{rest}"
    if parts[0] == "up_blocks":
        up_level, kind, index = int(parts[1]), parts[2], int(parts[3])
        rest = ".".join(parts[4:])
        level = len(UNET_CHANNELS) - 1 - up_level
        if kind == "resnets":
            return f"output_blocks.{up_level * per_level + index}.0.{resnet_to_ldm(rest)}"
        if kind == "attentions":
            return f"output_blocks.{up_level * per_level + index}.1.{rest}"
        if kind == "upsamplers":
            slot = 2 if UNET_CROSS_ATTENTION[level] else 1
            return f"output_blocks.{up_level * per_level + LAYERS_PER_BLOCK}.{slot}.conv.{parts[-1]}"
    raise KeyError(key)


VAE_RESNET_TO_LDM = {"conv_shortcut": "nin_shortcut"}
VAE_ATTENTION_TO_LDM = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out": "proj_out"}


def vae_key_to_ldm(key, value, levels):
    parts = key.split(".")
    if parts[0] in ("quant_conv", "post_quant_conv"):
        return key, value
    side, rest = parts[0], parts[1:]
    if rest[0] in ("conv_in", "conv_out"):
        return key, value
    if rest[0] == "conv_norm_out":
        return f"{side}.norm_out.{rest[1]}", value
    if rest[0] == "mid_block":
        kind, index = rest[1], int(rest[2])
        if kind == "resnets":
            module = VAE_RESNET_TO_LDM.get(rest[3], rest[3])
            return f"{side}.mid.block_{index + 1}.{module}.{rest[-1]}", value
        module = VAE_ATTENTION_TO_LDM[rest[3]]
        if value.ndim == 2:  # LDM's attention projections are 1x1 convolutions
            value = value[:, :, None, None]
        return f"{side}.mid.attn_1.{module}.{rest[-1]}", value
    if rest[0] == "down_blocks":
        level, kind = int(rest[1]), rest[2]
        if kind == "resnets":
            module = VAE_RESNET_TO_LDM.get(rest[4], rest[4])
            return f"{side}.down.{level}.block.{rest[3]}.{module}.{rest[-1]}", value
        return f"{side}.down.{level}.downsample.conv.{rest[-1]}", value
    if rest[0] == "up_blocks":
        level, kind = levels - 1 - int(rest[1]), rest[2]
        if kind == "resnets":
            module = VAE_RESNET_TO_LDM.get(rest[4], rest[4])
            return f"{side}.up.{level}.block.{rest[3]}.{module}.{rest[-1]}", value
        return f"{side}.up.{level}.upsample.conv.{rest[-1]}", value
    raise KeyError(key)


def ldm_checkpoint(unet, vae, clip):
    state = {}
    for key, value in half_state(unet).items():
        state["model.diffusion_model." + unet_key_to_ldm(key)] = value
    for key, value in half_state(vae).items():
        new_key, new_value = vae_key_to_ldm(key, value, len(vae.config.block_out_channels))
        state["first_stage_model." + new_key] = new_value.contiguous()
    for key, value in half_state(clip).items():
        key = key if key.startswith("text_model.") else "text_model." + key
        state["cond_stage_model.transformer." + key] = value
    # Buffers every real SD 1.x single file carries, which the loader must ignore.
    state["cond_stage_model.transformer.text_model.embeddings.position_ids"] = torch.arange(77)[None]
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
    state["betas"] = betas.float()
    state["alphas_cumprod"] = torch.cumprod(1 - betas, 0).float()
    state["model_ema.decay"] = torch.tensor(0.9999)
    state["model_ema.num_updates"] = torch.tensor(1000, dtype=torch.int32)
    return state


# ---------------------------------------------------------------- references

def main():
    generator = torch.Generator().manual_seed(20261126)
    torch.manual_seed(20261126)
    unet, vae, clip = tiny_unet(), tiny_vae(), tiny_clip()
    for model in (unet, vae, clip):
        randomize_(model, generator)
        model.eval()

    if OUT.exists():
        shutil.rmtree(OUT)
    folder = OUT / "tiny-diffusers"
    for sub in ("unet", "vae", "text_encoder"):
        (folder / sub).mkdir(parents=True)
    unet.save_config(folder / "unet")
    vae.save_config(folder / "vae")
    clip.config.to_json_file(folder / "text_encoder" / "config.json")
    save_file(half_state(unet), folder / "unet" / "diffusion_pytorch_model.safetensors")
    # The VAE goes in as diffusers' fp16 *variant* file name.
    save_file(half_state(vae), folder / "vae" / "diffusion_pytorch_model.fp16.safetensors")
    # Whatever key layout this transformers version writes (5.x: no `text_model.` prefix).
    save_file(half_state(clip), folder / "text_encoder" / "model.safetensors")
    save_file(ldm_checkpoint(unet, vae, clip), OUT / "tiny-ldm.safetensors")

    refs = {}
    with torch.no_grad():
        ids = torch.full((3, 77), 255, dtype=torch.int64)
        for row, tokens in enumerate([[254, 255], [254, 5, 17, 200, 42, 255], [254] + list(range(1, 250, 3))[:75] + [255]]):
            ids[row, : len(tokens)] = torch.tensor(tokens)
        out = clip(input_ids=ids, output_hidden_states=True)
        refs["clip.input_ids"] = ids.to(torch.int64)
        refs["clip.last_hidden_state"] = out.last_hidden_state
        refs["clip.penultimate_hidden_state"] = out.hidden_states[-2]
        # diffusers' encode_prompt(clip_skip=1), i.e. A1111 "clip skip 2".
        refs["clip.clip_skip_2"] = final_layer_norm(clip)(out.hidden_states[-2])

        for name, shape, timesteps in [
            ("unet_8x8", (2, 4, 8, 8), [999.0, 10.0]),
            ("unet_16x8", (1, 4, 16, 8), [500.0]),
            ("unet_9x7", (1, 4, 9, 7), [250.0]),
        ]:
            latents = torch.randn(shape, generator=generator)
            context = torch.randn((shape[0], 77, CONTEXT_DIM), generator=generator)
            t = torch.tensor(timesteps)
            refs[f"{name}.latents"] = latents
            refs[f"{name}.timesteps"] = t
            refs[f"{name}.context"] = context
            refs[f"{name}.noise_pred"] = unet(latents, t, encoder_hidden_states=context).sample

        z = torch.randn((1, 4, 8, 8), generator=generator)
        refs["vae.decode.latents"] = z
        refs["vae.decode.image"] = vae.decode(z).sample
        image = torch.rand((1, 3, 16, 16), generator=generator) * 2 - 1
        refs["vae.encode.image"] = image
        posterior = vae.encode(image).latent_dist
        refs["vae.encode.mean"] = posterior.mean
    save_file({k: v.contiguous() for k, v in refs.items()}, OUT / "reference.safetensors")

    versions = {"torch": torch.__version__}
    import diffusers
    import transformers

    versions["diffusers"] = diffusers.__version__
    versions["transformers"] = transformers.__version__
    (OUT / "VERSIONS.json").write_text(json.dumps(versions, indent=2) + "\n")
    total = sum(f.stat().st_size for f in OUT.rglob("*") if f.is_file())
    print(f"wrote {OUT} ({total / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
