#!/usr/bin/env python3
"""Writes a full-size SD 1.5 single-file LDM checkpoint with random weights, stored in float16
(~2.1 GB), for benches/checkpoint_load.rs (load time and peak memory of the full model).

The three networks are diffusers' UNet2DConditionModel and AutoencoderKL and transformers'
CLIPTextModel with the SD 1.5 configs and their default random init; key names are converted to
the LDM layout with the conversion of tools/make_sd_fixtures.py (written independently of the Rust
mapping), switched to the SD 1.5 block layout.

Run:  /work/venv/bin/python benches/make_sd15_ldm.py OUT.safetensors
Then: STYLUS_SD15_LDM=OUT.safetensors cargo bench --bench checkpoint_load
"""

import sys
from pathlib import Path

import torch
from diffusers import AutoencoderKL
from safetensors.torch import save_file
from transformers import CLIPTextConfig, CLIPTextModel

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import make_sd_fixtures  # noqa: E402
from unet_diffusers import sd15_unet  # noqa: E402

# The fixture script's conversion reads the UNet block layout from these module constants.
make_sd_fixtures.LAYERS_PER_BLOCK = 2
make_sd_fixtures.UNET_CHANNELS = (320, 640, 1280, 1280)
make_sd_fixtures.UNET_CROSS_ATTENTION = (True, True, True, False)


def sd15_vae():
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(128, 256, 512, 512),
        layers_per_block=2,
        latent_channels=4,
        norm_num_groups=32,
        sample_size=512,
    )


def sd15_clip():
    return CLIPTextModel(
        CLIPTextConfig(
            vocab_size=49408,
            hidden_size=768,
            intermediate_size=3072,
            num_hidden_layers=12,
            num_attention_heads=12,
            max_position_embeddings=77,
            hidden_act="quick_gelu",
        )
    )


def main():
    out = Path(sys.argv[1])
    torch.manual_seed(20261203)
    with torch.no_grad():
        state = make_sd_fixtures.ldm_checkpoint(sd15_unet(), sd15_vae(), sd15_clip())
    save_file(state, out)
    count = sum(v.numel() for v in state.values() if v.dtype == torch.float16)
    print(f"{out}: {len(state)} tensors, {count / 1e6:.1f} M float16 parameters")


if __name__ == "__main__":
    main()
