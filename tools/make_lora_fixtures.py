#!/usr/bin/env python3
"""Parity fixtures for the LoRA loader and merger of crates/stylus-diffusion (src/lora).

Base model: the tiny SD 1.x diffusers folder of the network parity fixtures
(crates/stylus-diffusion/tests/fixtures/sd/tiny-diffusers, built by tools/make_sd_fixtures.py),
so the same weights serve both. For it, this script writes adapter files with seeded random
factors, in the layouts real files use, and the weights a reference implementation gets after
merging them:

  kohya_lora        kohya LoRA (Transformer2D + text encoder, per-module ranks, some modules
                    without alpha), f16 factors           -> kohya merge_lora.py math
  kohya_locon       kohya LoCon (adds ResNet 3x3/1x1 convs, time_emb_proj, down/upsamplers)
                                                          -> kohya merge_lora.py math
  kohya_ldm_lora    kohya_lora's factors under SGM/LDM names (lora_unet_input_blocks_1_1_...)
                                                          -> the same merged weights as kohya_lora
  two_loras         kohya_lora at 0.7 then kohya_locon at -0.4 (modules both change)
  peft              PEFT keys (unet./text_encoder. + lora_A/lora_B) with lora_adapter_metadata
                    alphas, written by diffusers save_lora_weights -> PEFT merge (fuse_lora's math)
  diffusers         `.lora.down/.lora.up` keys (convert_state_dict_to_diffusers), no alphas
                                                          -> PEFT merge

Every kohya and PEFT/diffusers fixture is also loaded with diffusers' own load_lora_weights +
set_adapters + fuse_lora; diffusers_crosscheck.json records how many modules agree with the
reference within 1e-5. With diffusers 0.42.1 + peft 0.21.2 + transformers 5.24 the PEFT and
diffusers files agree exactly, while kohya files with per-module alphas/ranks do not: diffusers'
kohya conversion builds an `alpha_pattern` from processor-style names that PEFT then ignores
("alpha_pattern keys did not match any targeted module"), and its text-encoder path expects the
`text_model.` wrapper transformers 5.x removed. That is why kohya references use kohya's math.
  locon_tucker      LyCORIS LoCon with lora_mid (CP)      -> lycoris.functional.locon
  loha, loha_tucker LyCORIS LoHa, plain and Tucker (bf16) -> lycoris.functional.loha
  lokr              LyCORIS LoKr: whole w1 + decomposed w2, old flattened 3x3 conv layout,
                    Tucker lokr_t2                        -> lycoris.functional.lokr
  full_ia3          full `diff`/`diff_b` and (IA)^3       -> W + s*diff, W + s*(W*w) (A1111 math)
  dora              LoRA + dora_scale on both axes: output axis written from ComfyUI
                    weight_decompose, input axis via lycoris.functional.apply_dora_scale

Each `<name>.safetensors` adapter gets `<name>.expected.safetensors`: the merged f32 weights of
every changed module, keyed `unet.<diffusers module>.weight` / `text_encoder.text_model.<...>.weight`
(our model ids), plus `.bias` where a bias changes. `strengths.json` records the strength used.
All reference math runs in float32 on the factors as stored (f16/bf16 rounded).

Recreate the virtualenv:  python3 -m venv /work/venv && /work/venv/bin/pip install torch diffusers
transformers safetensors peft lycoris-lora==4.1.3 einops toml
(used: torch 2.15, diffusers 0.42.1, transformers 5.24, peft 0.21.2, lycoris-lora 4.1.3)
Run:  /work/venv/bin/python tools/make_lora_fixtures.py
"""

import json
import sys
from pathlib import Path

import torch
from diffusers import DiffusionPipeline, UNet2DConditionModel
from diffusers.loaders import StableDiffusionLoraLoaderMixin
from diffusers.utils import convert_state_dict_to_diffusers
from lycoris.functional import apply_dora_scale, locon, loha, lokr
from peft import LoraConfig, get_peft_model
from peft.tuners.lora import LoraLayer
from peft.utils import get_peft_model_state_dict
from safetensors.torch import load_file, save_file
from transformers import CLIPTextModel

ROOT = Path(__file__).resolve().parent.parent
BASE = ROOT / "crates/stylus-diffusion/tests/fixtures/sd/tiny-diffusers"
OUT = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "crates/stylus-diffusion/tests/fixtures/lora"
LAYERS_PER_BLOCK = 1  # of the tiny UNet (make_sd_fixtures.py)

UNET_LORA_PARENTS = ("Transformer2DModel",)
UNET_LOCON_PARENTS = ("Transformer2DModel", "ResnetBlock2D", "Downsample2D", "Upsample2D")
TE_PARENTS = ("CLIPAttention", "CLIPSdpaAttention", "CLIPMLP")


class TinyPipeline(DiffusionPipeline, StableDiffusionLoraLoaderMixin):
    """Just the two LoRA-loadable networks, so diffusers' own loader and fuse run on them."""

    _lora_loadable_modules = ["unet", "text_encoder"]
    text_encoder_name = "text_encoder"
    unet_name = "unet"

    def __init__(self, unet, text_encoder):
        super().__init__()
        self.register_modules(unet=unet, text_encoder=text_encoder)


def load_base():
    unet = UNet2DConditionModel.from_pretrained(BASE / "unet", torch_dtype=torch.float32)
    text_encoder = CLIPTextModel.from_pretrained(BASE / "text_encoder", torch_dtype=torch.float32)
    return unet.eval(), text_encoder.eval()


def te_id(path):
    """Our text-encoder module id: transformers >= 5.6 dropped the `text_model.` wrapper."""
    return path if path.startswith("text_model.") else f"text_model.{path}"


def targets(model, parents):
    """(module path, module) of every Linear/Conv2d child of a module whose class is in parents."""
    found = {}
    for name, module in model.named_modules():
        if type(module).__name__ in parents:
            for child_name, child in module.named_modules():
                if isinstance(child, (torch.nn.Linear, torch.nn.Conv2d)) and child_name:
                    found[f"{name}.{child_name}"] = child
    return sorted(found.items())


def rounded(tensor, dtype):
    """The tensor as it will be stored (f16/bf16 rounding), back in f32."""
    return tensor.to(dtype).to(torch.float32)


def weight_shape(module):
    return tuple(module.weight.shape)


def kohya_factors(generator, module, rank, dtype, scale=0.2):
    """kohya LoRA/LoCon factors: down [r, in(, kh, kw)], up [out, r(, 1, 1)]."""
    shape = weight_shape(module)
    if len(shape) == 2:
        down_shape, up_shape = (rank, shape[1]), (shape[0], rank)
    else:
        down_shape, up_shape = (rank, shape[1], shape[2], shape[3]), (shape[0], rank, 1, 1)
    down = rounded(torch.randn(down_shape, generator=generator) * scale, dtype)
    up = rounded(torch.randn(up_shape, generator=generator) * scale, dtype)
    return down, up


def kohya_name(prefix, path):
    return f"{prefix}_{path.replace('.', '_')}"


def ldm_name(path):
    """diffusers UNet module path -> LDM path, written from the openaimodel.py layout."""
    per_level = LAYERS_PER_BLOCK + 1
    top = {
        "conv_in": "input_blocks.0.0",
        "conv_out": "out.2",
        "time_embedding.linear_1": "time_embed.0",
        "time_embedding.linear_2": "time_embed.2",
    }
    if path in top:
        return top[path]
    parts = path.split(".")
    if parts[0] == "down_blocks" and parts[2] == "attentions":
        return ".".join(["input_blocks", str(per_level * int(parts[1]) + int(parts[3]) + 1), "1"] + parts[4:])
    if parts[0] == "up_blocks" and parts[2] == "attentions":
        return ".".join(["output_blocks", str(per_level * int(parts[1]) + int(parts[3])), "1"] + parts[4:])
    if parts[0] == "mid_block" and parts[1] == "attentions":
        return ".".join(["middle_block", "1"] + parts[3:])
    raise ValueError(f"no LDM name for {path} in this fixture")


def save_expected(name, unet, text_encoder, unet_ids, te_ids, biases=()):
    unet_sd = unet.state_dict()
    te_sd = text_encoder.state_dict()
    expected = {}
    for path in unet_ids:
        expected[f"unet.{path}.weight"] = unet_sd[f"{path}.weight"].float().contiguous()
    for path in te_ids:
        expected[f"text_encoder.{te_id(path)}.weight"] = te_sd[f"{path}.weight"].float().contiguous()
    for network, path in biases:
        sd = unet_sd if network == "unet" else te_sd
        key_id = path if network == "unet" else te_id(path)
        expected[f"{network}.{key_id}.bias"] = sd[f"{path}.bias"].float().contiguous()
    save_file(expected, OUT / f"{name}.expected.safetensors")


def check_changed(name, base_unet, base_te, unet, text_encoder, unet_ids, te_ids):
    """Fail loudly if the reference left a targeted module unchanged (a silently dropped key)."""
    for model, base, ids in ((unet, base_unet, unet_ids), (text_encoder, base_te, te_ids)):
        sd, base_sd = model.state_dict(), base.state_dict()
        for path in ids:
            if torch.equal(sd[f"{path}.weight"], base_sd[f"{path}.weight"]):
                raise SystemExit(f"{name}: reference did not change {path}")


def diffusers_merge(name, files, weights):
    """Merged weights by diffusers: load_lora_weights + set_adapters + fuse_lora."""
    unet, text_encoder = load_base()
    pipe = TinyPipeline(unet, text_encoder)
    names = []
    for index, file in enumerate(files):
        adapter = f"a{index}"
        pipe.load_lora_weights(str(OUT), weight_name=file, adapter_name=adapter)
        names.append(adapter)
    pipe.set_adapters(names, adapter_weights=list(weights))
    pipe.fuse_lora(components=["unet", "text_encoder"], adapter_names=names)
    pipe.unload_lora_weights()
    return pipe.unet, pipe.text_encoder


def kohya_file(generator, name, parents, alpha_rule, dtype=torch.float16):
    """Writes a kohya LoRA/LoCon file; returns (tensors, unet ids, te ids)."""
    unet, text_encoder = load_base()
    tensors = {}
    unet_ids, te_ids = [], []
    for prefix, model, parent_set, ids in (
        ("lora_unet", unet, parents, unet_ids),
        ("lora_te", text_encoder, TE_PARENTS, te_ids),
    ):
        for index, (path, module) in enumerate(targets(model, parent_set)):
            rank = (2, 4, 3)[index % 3]  # per-module ranks, like resize_lora's "Dynamic" files
            down, up = kohya_factors(generator, module, rank, dtype)
            key = kohya_name(prefix, path if prefix == "lora_unet" else te_id(path))
            tensors[f"{key}.lora_down.weight"] = down.to(dtype)
            tensors[f"{key}.lora_up.weight"] = up.to(dtype)
            alpha = alpha_rule(index, rank)
            if alpha is not None:
                tensors[f"{key}.alpha"] = torch.tensor(float(alpha), dtype=dtype)
            ids.append(path)
    metadata = {"ss_network_module": "networks.lora", "ss_v2": "False", "ss_base_model_version": "sd_v1"}
    save_file(tensors, OUT / f"{name}.safetensors", metadata=metadata)
    return tensors, unet_ids, te_ids


def kohya_merge(files, weights):
    """Merged weights by kohya's merge math (sd-scripts networks/merge_lora.py merge_to_sd_model):
    W += ratio * (up @ down) * alpha / dim, 1x1 convs squeezed, 3x3 convs through conv2d."""
    unet, text_encoder = load_base()
    modules = {f"lora_unet_{p.replace('.', '_')}": m for p, m in unet.named_modules()}
    modules.update({f"lora_te_{te_id(p).replace('.', '_')}": m for p, m in text_encoder.named_modules()})
    with torch.no_grad():
        for file, ratio in zip(files, weights):
            tensors = load_file(OUT / file)
            for key in tensors:
                if not key.endswith(".lora_down.weight"):
                    continue
                name = key[: -len(".lora_down.weight")]
                down = tensors[key].float()
                up = tensors[f"{name}.lora_up.weight"].float()
                dim = down.size(0)
                alpha = tensors.get(f"{name}.alpha", torch.tensor(float(dim))).float().item()
                scale = alpha / dim
                weight = modules[name].weight
                if len(weight.size()) == 2:
                    if len(up.size()) == 4:
                        up, down = up.squeeze(3).squeeze(2), down.squeeze(3).squeeze(2)
                    weight += ratio * (up @ down) * scale
                elif down.size()[2:4] == (1, 1):
                    product = (up.squeeze(3).squeeze(2) @ down.squeeze(3).squeeze(2)).unsqueeze(2).unsqueeze(3)
                    weight += ratio * product * scale
                else:
                    conved = torch.nn.functional.conv2d(down.permute(1, 0, 2, 3), up).permute(1, 0, 2, 3)
                    weight += ratio * conved * scale
    return unet, text_encoder


def cross_check(name, reference, other, unet_ids, te_ids, report):
    """Relative errors of another implementation's merged weights against the reference."""
    errors = {}
    for (ref_model, other_model, ids, network) in (
        (reference[0], other[0], unet_ids, "unet"),
        (reference[1], other[1], te_ids, "text_encoder"),
    ):
        ref_sd, other_sd = ref_model.state_dict(), other_model.state_dict()
        worst, agreeing = 0.0, 0
        for path in ids:
            a, b = ref_sd[f"{path}.weight"], other_sd[f"{path}.weight"]
            error = ((a - b).norm() / a.norm()).item()
            worst = max(worst, error)
            agreeing += error <= 1e-5
        errors[network] = {"modules": len(ids), "within_1e-5": agreeing, "max_relative_error": worst}
    report[name] = errors


def make_kohya(generator, strengths, report):
    base_unet, base_te = load_base()
    _, lora_unet, lora_te = kohya_file(
        generator, "kohya_lora", UNET_LORA_PARENTS, lambda i, r: None if i % 4 == 0 else (1.0, r, 8.0, 0.5)[i % 4]
    )
    _, locon_unet, locon_te = kohya_file(
        generator, "kohya_locon", UNET_LOCON_PARENTS, lambda i, r: (1.0, 2.0, None)[i % 3]
    )
    cases = [
        ("kohya_lora", ["kohya_lora.safetensors"], [0.8], lora_unet, lora_te),
        ("kohya_locon", ["kohya_locon.safetensors"], [1.0], locon_unet, locon_te),
        (
            "two_loras",
            ["kohya_lora.safetensors", "kohya_locon.safetensors"],
            [0.7, -0.4],
            # The modules both files change (keeps the committed set small).
            sorted(set(lora_unet) & set(locon_unet)),
            sorted(set(lora_te) & set(locon_te)),
        ),
    ]
    for name, files, weights, unet_ids, te_ids in cases:
        unet, te = kohya_merge(files, weights)
        check_changed(name, base_unet, base_te, unet, te, unet_ids, te_ids)
        save_expected(name, unet, te, unet_ids, te_ids)
        strengths[name] = weights
        cross_check(name, (unet, te), diffusers_merge(name, files, weights), unet_ids, te_ids, report)

    # The same factors under SGM/LDM names: the merged weights must equal kohya_lora's.
    tensors = load_file(OUT / "kohya_lora.safetensors")
    renamed = {}
    for key, value in tensors.items():
        module, suffix = key.split(".", 1)
        if module.startswith("lora_unet_"):
            path = next(p for p in lora_unet if kohya_name("lora_unet", p) == module)
            module = kohya_name("lora_unet", ldm_name(path))
        renamed[f"{module}.{suffix}"] = value
    save_file(renamed, OUT / "kohya_ldm_lora.safetensors", metadata={"ss_network_module": "networks.lora"})
    strengths["kohya_ldm_lora"] = [0.8]


def randomize_lora_b(model, generator):
    for name, parameter in model.named_parameters():
        if "lora_B" in name or "lora_A" in name:
            with torch.no_grad():
                parameter.copy_(rounded(torch.randn(parameter.shape, generator=generator) * 0.2, torch.float32))


def peft_merge(model, strength):
    """PEFT's own merge (what diffusers' fuse_lora runs): scale_layer(strength) + merge() on every
    LoRA layer; returns {module path: merged weight}."""
    merged = {}
    with torch.no_grad():
        for path, module in model.named_modules():
            if isinstance(module, LoraLayer):
                module.scale_layer(strength)
                module.merge()
                merged[path] = module.get_base_layer().weight.detach().clone()
    return merged


def strip_peft_prefix(path):
    return path[len("base_model.model."):] if path.startswith("base_model.model.") else path


def make_peft(generator, strengths, report):
    unet, _ = load_base()
    _, text_encoder = load_base()
    unet_config = LoraConfig(
        r=4,
        lora_alpha=8,
        target_modules=["to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.2"],
        alpha_pattern={"to_k": 2},
        init_lora_weights=False,
    )
    te_config = LoraConfig(r=2, lora_alpha=1, target_modules=["q_proj", "v_proj", "fc1"], init_lora_weights=False)
    unet.add_adapter(unet_config)
    # transformers 5.24's add_adapter wants peft >= 0.22 (not released); inject with peft itself.
    text_encoder = get_peft_model(text_encoder, te_config)
    randomize_lora_b(unet, generator)
    randomize_lora_b(text_encoder, generator)
    unet_layers = get_peft_model_state_dict(unet)
    te_layers = {strip_peft_prefix(k): v for k, v in get_peft_model_state_dict(text_encoder).items()}
    TinyPipeline.save_lora_weights(
        OUT,
        unet_lora_layers=unet_layers,
        text_encoder_lora_layers=te_layers,
        weight_name="peft.safetensors",
        unet_lora_adapter_metadata=unet_config.to_dict(),
        text_encoder_lora_adapter_metadata=te_config.to_dict(),
    )
    strength = 0.6
    merged_unet = peft_merge(unet, strength)
    merged_te = {strip_peft_prefix(k): v for k, v in peft_merge(text_encoder, strength).items()}
    base_unet, base_te = load_base()
    with torch.no_grad():
        for path, weight in merged_unet.items():
            base_unet.get_submodule(path).weight.copy_(weight)
        for path, weight in merged_te.items():
            base_te.get_submodule(path).weight.copy_(weight)
    unet_ids, te_ids = sorted(merged_unet), sorted(merged_te)
    save_expected("peft", base_unet, base_te, unet_ids, te_ids)
    strengths["peft"] = [strength]
    cross_check("peft", (base_unet, base_te), diffusers_merge("peft", ["peft.safetensors"], [strength]), unet_ids, te_ids, report)

    # Old diffusers keys (`.lora.down.weight`), no alphas: scale 1 needs lora_alpha == r.
    unet2, _ = load_base()
    config = LoraConfig(r=3, lora_alpha=3, target_modules=["to_q", "to_v", "ff.net.0.proj"], init_lora_weights=False)
    unet2.add_adapter(config)
    randomize_lora_b(unet2, generator)
    layers = {f"unet.{k}": v for k, v in convert_state_dict_to_diffusers(get_peft_model_state_dict(unet2)).items()}
    save_file({k: v.contiguous() for k, v in layers.items()}, OUT / "diffusers.safetensors")
    merged = peft_merge(unet2, 1.0)
    reference_unet, reference_te = load_base()
    with torch.no_grad():
        for path, weight in merged.items():
            reference_unet.get_submodule(path).weight.copy_(weight)
    ids = sorted(merged)
    save_expected("diffusers", reference_unet, reference_te, ids, [])
    strengths["diffusers"] = [1.0]
    cross_check("diffusers", (reference_unet, reference_te), diffusers_merge("diffusers", ["diffusers.safetensors"], [1.0]), ids, [], report)


def lycoris_file(name, strength, build):
    """Writes a LyCORIS file built by `build(path, module) -> (tensors, delta fn)` for a few modules
    and the merged weights `W + strength * delta(W)`."""
    unet, text_encoder = load_base()
    chosen = {
        "unet": [
            "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q",
            "down_blocks.0.attentions.0.proj_in",
            "down_blocks.0.resnets.0.conv1",
            "up_blocks.0.upsamplers.0.conv",
            "mid_block.attentions.0.transformer_blocks.0.ff.net.0.proj",
        ],
        "te": ["encoder.layers.0.self_attn.k_proj", "encoder.layers.1.mlp.fc2"],
    }
    tensors, unet_ids, te_ids, biases = {}, [], [], []
    with torch.no_grad():
        for network, model, prefix in (("unet", unet, "lora_unet"), ("te", text_encoder, "lora_te")):
            modules = dict(model.named_modules())
            for index, path in enumerate(chosen[network]):
                module = modules[path]
                key = kohya_name(prefix, path if network == "unet" else te_id(path))
                module_tensors, apply = build(index, module)
                tensors.update({f"{key}.{k}": v for k, v in module_tensors.items()})
                new_weight, new_bias = apply(module.weight.detach().clone(), strength)
                module.weight.copy_(new_weight)
                if new_bias is not None:
                    module.bias.copy_(new_bias)
                    biases.append(("unet" if network == "unet" else "text_encoder", path))
                (unet_ids if network == "unet" else te_ids).append(path)
    save_file(tensors, OUT / f"{name}.safetensors", metadata={"ss_network_module": "lycoris.kohya"})
    save_expected(name, unet, text_encoder, unet_ids, te_ids, biases)


def make_lycoris(generator, strengths):
    def rand(*shape, dtype=torch.float32, scale=0.3):
        return rounded(torch.randn(shape, generator=generator) * scale, dtype)

    def locon_tucker(index, module):
        shape = weight_shape(module)
        rank, alpha = 3, 1.5
        kernel = shape[2:] if len(shape) == 4 else ()
        if not kernel:  # the CP form is for convolutions; linears get plain factors
            down, up = rand(rank, shape[1]), rand(shape[0], rank)
            tensors = {"lora_down.weight": down, "lora_up.weight": up, "alpha": torch.tensor(alpha)}
            return tensors, lambda w, s: (w + s * locon.diff_weight(down, up, None, gamma=alpha / rank), None)
        down, up, mid = rand(rank, shape[1], 1, 1), rand(shape[0], rank, 1, 1), rand(rank, rank, *kernel)
        tensors = {"lora_down.weight": down, "lora_up.weight": up, "lora_mid.weight": mid, "alpha": torch.tensor(alpha)}
        return tensors, lambda w, s: (w + s * locon.diff_weight(down, up, mid, gamma=alpha / rank), None)

    lycoris_file("locon_tucker", 0.9, locon_tucker)
    strengths["locon_tucker"] = [0.9]

    def loha_plain(index, module):
        shape = weight_shape(module)
        rank, alpha = 4, 2.0
        cols = int(torch.tensor(shape[1:]).prod())
        bf16 = torch.bfloat16  # stored as bf16; the reference uses the same rounded values
        w1a, w1b = rand(shape[0], rank, dtype=bf16), rand(rank, cols, dtype=bf16)
        w2a, w2b = rand(shape[0], rank, dtype=bf16), rand(rank, cols, dtype=bf16)
        tensors = {"hada_w1_a": w1a, "hada_w1_b": w1b, "hada_w2_a": w2a, "hada_w2_b": w2b, "alpha": torch.tensor(alpha)}
        tensors = {k: v.to(torch.bfloat16) if k != "alpha" else v for k, v in tensors.items()}

        def apply(w, s):
            delta = loha.diff_weight(
                w1b.reshape(rank, *shape[1:]), w1a, w2b.reshape(rank, *shape[1:]), w2a, None, None, gamma=alpha / rank
            )
            return w + s * delta.reshape(shape), None

        return tensors, apply

    lycoris_file("loha", 1.0, loha_plain)
    strengths["loha"] = [1.0]

    def loha_tucker(index, module):
        shape = weight_shape(module)
        rank, alpha = 3, 3.0
        kernel = shape[2:] if len(shape) == 4 else (1, 1)
        if len(shape) == 2 or kernel == (1, 1):
            return loha_plain(index, module)
        t1, t2 = rand(rank, rank, *kernel), rand(rank, rank, *kernel)
        w1a, w1b, w2a, w2b = rand(rank, shape[0]), rand(rank, shape[1]), rand(rank, shape[0]), rand(rank, shape[1])
        tensors = {
            "hada_w1_a": w1a, "hada_w1_b": w1b, "hada_w2_a": w2a, "hada_w2_b": w2b,
            "hada_t1": t1, "hada_t2": t2, "alpha": torch.tensor(alpha),
        }
        return tensors, lambda w, s: (w + s * loha.diff_weight(w1b, w1a, w2b, w2a, t1, t2, gamma=alpha / rank), None)

    lycoris_file("loha_tucker", 0.5, loha_tucker)
    strengths["loha_tucker"] = [0.5]

    def lokr_module(index, module):
        shape = weight_shape(module)
        out, cols = shape[0], int(torch.tensor(shape[1:]).prod())
        # w1 [a, c] whole (a, c small), w2 decomposed [b, r] @ [r, d*k*k]; the conv weight is
        # the flattened [out, in*kh*kw] (old LyCORIS layout) unless a Tucker core is used.
        a = 4 if out % 4 == 0 else 1
        c = 4 if shape[1] % 4 == 0 else 1
        b, d = out // a, cols // c
        rank, alpha = 2, 4.0
        w1 = rand(a, c)
        if len(shape) == 4 and shape[2] == 3 and index % 2 == 0:
            # Tucker: t2 [r, r, 3, 3], w2_a [r, b], w2_b [r, in/c].
            t2, w2a, w2b = rand(rank, rank, 3, 3), rand(rank, b), rand(rank, shape[1] // c)
            tensors = {"lokr_w1": w1, "lokr_w2_a": w2a, "lokr_w2_b": w2b, "lokr_t2": t2, "alpha": torch.tensor(alpha)}
            # lycoris' kron_weight with the scale alpha / r explicit: its diff_weight would take
            # the rank from w2_a.shape[1], which is b (not r) in the Tucker layout.
            return tensors, lambda w, s: (
                w + s * lokr.kron_weight(w1, None, None, None, w2a, w2b, t2, scale=alpha / rank).reshape(shape),
                None,
            )
        w2a, w2b = rand(b, rank), rand(rank, d)
        tensors = {"lokr_w1": w1, "lokr_w2_a": w2a, "lokr_w2_b": w2b, "alpha": torch.tensor(alpha)}
        return tensors, lambda w, s: (
            w + s * lokr.kron_weight(w1, None, None, None, w2a, w2b, None, scale=alpha / rank).reshape(shape),
            None,
        )

    lycoris_file("lokr", 1.0, lokr_module)
    strengths["lokr"] = [1.0]

    def full_ia3(index, module):
        shape = weight_shape(module)
        if index % 2 == 0:
            diff = rand(*shape, scale=0.05)
            tensors = {"diff": diff}
            if module.bias is not None:
                diff_b = rand(shape[0], scale=0.05)
                tensors["diff_b"] = diff_b
                return tensors, lambda w, s: (w + s * diff, module.bias.detach() + s * diff_b)
            return tensors, lambda w, s: (w + s * diff, None)
        on_input = index % 4 == 3
        vector = rand(shape[1] if on_input else shape[0])
        tensors = {"weight": vector, "on_input": torch.tensor(on_input)}
        view = (1, -1) + (1,) * (len(shape) - 2) if on_input else (-1,) + (1,) * (len(shape) - 1)
        return tensors, lambda w, s: (w + s * (w * vector.reshape(view)), None)

    lycoris_file("full_ia3", 0.75, full_ia3)
    strengths["full_ia3"] = [0.75]

    def dora(index, module):
        shape = weight_shape(module)
        rank, alpha = 4, 2.0
        down, up = kohya_factors(generator, module, rank, torch.float32, scale=0.3)
        delta = locon.diff_weight(down, up, None, gamma=alpha / rank)
        base = module.weight.detach()
        if index % 2 == 0:
            # Output axis ([out, 1, ..]), written from ComfyUI weight_decompose.
            magnitude = rand(shape[0], *([1] * (len(shape) - 1)), scale=0.5).abs() + 0.5
            tensors = {"lora_down.weight": down, "lora_up.weight": up, "alpha": torch.tensor(alpha), "dora_scale": magnitude}

            def apply(w, s):
                combined = w + delta
                norm = combined.reshape(shape[0], -1).norm(dim=1).reshape(magnitude.shape) + torch.finfo(torch.float32).eps
                return w + s * (combined * (magnitude / norm) - w), None

            return tensors, apply
        # Input axis ([1, in, ..]): LyCORIS / A1111 apply_dora_scale.
        magnitude = rand(1, shape[1], *([1] * (len(shape) - 2)), scale=0.5).abs() + 0.5
        tensors = {"lora_down.weight": down, "lora_up.weight": up, "alpha": torch.tensor(alpha), "dora_scale": magnitude}
        return tensors, lambda w, s: (apply_dora_scale(base, delta, magnitude, s), None)

    lycoris_file("dora", 0.6, dora)
    strengths["dora"] = [0.6]


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(20261126)
    strengths, report = {}, {}
    make_kohya(generator, strengths, report)
    make_peft(generator, strengths, report)
    make_lycoris(generator, strengths)
    (OUT / "strengths.json").write_text(json.dumps(strengths, indent=1, sort_keys=True) + "\n")
    # How far diffusers' own load_lora_weights + fuse_lora lands from the references above.
    (OUT / "diffusers_crosscheck.json").write_text(json.dumps(report, indent=1, sort_keys=True) + "\n")
    versions = {
        "torch": torch.__version__,
        "diffusers": __import__("diffusers").__version__,
        "peft": __import__("peft").__version__,
        "lycoris-lora": __import__("importlib.metadata").metadata.version("lycoris-lora"),
    }
    (OUT / "VERSIONS.json").write_text(json.dumps(versions, indent=1) + "\n")


if __name__ == "__main__":
    main()
