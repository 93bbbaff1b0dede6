#!/usr/bin/env python3
"""Peer baseline of benches/lora_merge.rs: diffusers merging three rank-32 LoRAs (the 264
standard SD 1.5 modules: 192 UNet Transformer2D linears/projections + 72 text-encoder linears)
into a full-size SD 1.5 UNet + CLIP text encoder with random f32 weights, on the CPU.

The files use diffusers/PEFT keys (`unet.<path>.lora_A.weight`, `text_encoder.<path>...`): with
diffusers 0.42 + transformers 5.24, diffusers' kohya-key conversion drops the text-encoder part
(see tools/make_lora_fixtures.py), which would make the peer look faster than it is.

Measured (torch threads = 2, like the Rust bench's two cores):
  load_3       pipe.load_lora_weights for the three files
  fuse_3       set_adapters(all three, weights) + fuse_lora
  switch_mask  unfuse_lora + set_adapters(next mask) + fuse_lora, alternating between
               mask A = {lora0, lora1} and mask B = {lora2}; mean of 4 switches

Recreate the virtualenv: see tools/make_lora_fixtures.py. Run:
  /work/venv/bin/python benches/lora_merge_diffusers.py
"""

import json
import tempfile
import time
from pathlib import Path

import torch
from diffusers import DiffusionPipeline, UNet2DConditionModel
from diffusers.loaders import StableDiffusionLoraLoaderMixin
from safetensors.torch import save_file
from transformers import CLIPTextConfig, CLIPTextModel

RANK = 32


class Pipeline(DiffusionPipeline, StableDiffusionLoraLoaderMixin):
    _lora_loadable_modules = ["unet", "text_encoder"]
    text_encoder_name = "text_encoder"
    unet_name = "unet"

    def __init__(self, unet, text_encoder):
        super().__init__()
        self.register_modules(unet=unet, text_encoder=text_encoder)


def targets(model, parents):
    found = []
    for name, module in model.named_modules():
        if type(module).__name__ in parents:
            for child, layer in module.named_modules():
                if child and isinstance(layer, (torch.nn.Linear, torch.nn.Conv2d)):
                    found.append((f"{name}.{child}", layer))
    return found


def write_lora(path, unet, text_encoder, seed):
    generator = torch.Generator().manual_seed(seed)
    tensors = {}
    for prefix, model, parents in (
        ("unet", unet, ("Transformer2DModel",)),
        ("text_encoder", text_encoder, ("CLIPAttention", "CLIPSdpaAttention", "CLIPMLP")),
    ):
        for name, layer in targets(model, parents):
            shape = tuple(layer.weight.shape)
            down = (RANK, shape[1], *([1] * (len(shape) - 2)))
            up = (shape[0], RANK, *([1] * (len(shape) - 2)))
            tensors[f"{prefix}.{name}.lora_A.weight"] = (torch.randn(down, generator=generator) * 0.01).half()
            tensors[f"{prefix}.{name}.lora_B.weight"] = (torch.randn(up, generator=generator) * 0.01).half()
    save_file(tensors, path)
    return len(tensors) // 2


def main():
    torch.set_num_threads(2)
    torch.manual_seed(0)
    started = time.perf_counter()
    unet = UNet2DConditionModel(
        sample_size=64,
        block_out_channels=(320, 640, 1280, 1280),
        cross_attention_dim=768,
        attention_head_dim=8,
    ).eval()
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=49408,
            hidden_size=768,
            intermediate_size=3072,
            num_hidden_layers=12,
            num_attention_heads=12,
            max_position_embeddings=77,
            hidden_act="quick_gelu",
        )
    ).eval()
    setup = time.perf_counter() - started
    pipe = Pipeline(unet, text_encoder)
    results = {"torch": torch.__version__, "threads": torch.get_num_threads(), "setup_s": setup}
    with tempfile.TemporaryDirectory() as tmp, torch.no_grad():
        files = []
        for seed in range(3):
            path = Path(tmp) / f"lora{seed}.safetensors"
            results["modules_per_lora"] = write_lora(path, unet, text_encoder, seed + 1)
            files.append(path)
        start = time.perf_counter()
        for index, path in enumerate(files):
            pipe.load_lora_weights(str(path.parent), weight_name=path.name, adapter_name=f"l{index}")
        results["load_3_s"] = time.perf_counter() - start

        start = time.perf_counter()
        pipe.set_adapters(["l0", "l1", "l2"], adapter_weights=[0.4, 0.3, 0.5])
        pipe.fuse_lora(components=["unet", "text_encoder"], adapter_names=["l0", "l1", "l2"])
        results["fuse_3_s"] = time.perf_counter() - start

        masks = [(["l0", "l1"], [0.4, 0.4]), (["l2"], [0.8])]
        switches = []
        for index in range(4):
            names, weights = masks[index % 2]
            start = time.perf_counter()
            pipe.unfuse_lora(components=["unet", "text_encoder"])
            pipe.set_adapters(names, adapter_weights=weights)
            pipe.fuse_lora(components=["unet", "text_encoder"], adapter_names=names)
            switches.append(time.perf_counter() - start)
        results["switch_mask_s"] = sum(switches) / len(switches)
        results["switch_mask_all_s"] = switches
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
