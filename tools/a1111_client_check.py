#!/usr/bin/env python3
"""Checks `stylus serve` with a third-party AUTOMATIC1111 API client (the `webuiapi` package),
unchanged: txt2img, img2img and inpainting, LoRA listing, progress, samplers, models, options.

    pip install webuiapi
    stylus serve --checkpoint MODEL --lora-dir LORAS --bind 127.0.0.1:7860 [--api-auth U:P] &
    python3 tools/a1111_client_check.py [--port 7860] [--lora NAME] [--size 16] [--steps 3] \
        [--user U --password P]

Exits non-zero (with the failed check) when the client cannot use an answer. Loopback only.
"""
import argparse
import sys

import requests
import webuiapi
from PIL import Image


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--lora", default=None, help="a LoRA name the server lists")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--user", default=None, help="basic auth (the server's --api-auth)")
    parser.add_argument("--password", default=None)
    args = parser.parse_args()

    api = webuiapi.WebUIApi(host=args.host, port=args.port, sampler="Euler a", steps=args.steps,
                            username=args.user, password=args.password)
    if args.user:
        # Without the credential the server refuses (webuiapi raises on the non-JSON-list body).
        anonymous = requests.get(f"http://{args.host}:{args.port}/sdapi/v1/loras", timeout=30)
        assert anonymous.status_code == 401, anonymous.status_code
        print("auth: anonymous request refused with 401")

    loras = api.get_loras()
    names = [lora["name"] for lora in loras]
    print("loras:", names)
    lora = args.lora or (names[0] if names else None)

    samplers = [s["name"] for s in api.get_samplers()]
    print("samplers:", samplers)
    assert "Euler a" in samplers, samplers
    models = api.get_sd_models()
    print("models:", [m["title"] for m in models])

    progress = api.get_progress()
    print("progress:", progress["progress"], progress["state"]["job_count"])
    assert progress["state"]["job_count"] == 0, progress

    prompt = "a castle on a hill" + (f" <lora:{lora}:0.8>" if lora else "")
    result = api.txt2img(prompt=prompt, negative_prompt="blurry", seed=7, batch_size=2,
                         width=args.size, height=args.size, cfg_scale=5)
    assert len(result.images) == 2, result.images
    assert result.image.size == (args.size, args.size), result.image.size
    assert result.info["all_seeds"] == [7, 8], result.info["all_seeds"]
    assert "Seed: 7" in result.info["infotexts"][0], result.info["infotexts"][0]
    # The PNG carries its recipe as A1111 writes it.
    assert "Steps:" in result.image.info["parameters"], result.image.info
    print("txt2img:", [im.size for im in result.images], result.info["all_seeds"])
    print("infotext:", result.info["infotexts"][0].replace("\n", " | "))

    # img2img from the image just rendered (webuiapi sends a data: URL).
    strength = 0.5
    i2i = api.img2img(images=[result.image], prompt="a castle at night", seed=3,
                      denoising_strength=strength, width=args.size, height=args.size,
                      cfg_scale=5)
    assert len(i2i.images) == 1 and i2i.image.size == (args.size, args.size), i2i.images
    assert i2i.info["denoising_strength"] == strength, i2i.info["denoising_strength"]
    assert f"Denoising strength: {strength}" in i2i.info["infotexts"][0], i2i.info["infotexts"]
    print("img2img:", i2i.image.size, "denoising_strength", i2i.info["denoising_strength"])

    # Inpainting the right half. webuiapi's defaults (inpainting_fill=0 "fill",
    # inpaint_full_res=True "only masked") are what this server refuses, so they are set.
    half = args.size // 2
    mask = Image.new("L", (args.size, args.size), 0)
    mask.paste(255, (half, 0, args.size, args.size))
    inpaint = api.img2img(images=[result.image], mask_image=mask, prompt="a red door", seed=3,
                          denoising_strength=1.0, mask_blur=0, inpainting_fill=1,
                          inpaint_full_res=False, width=args.size, height=args.size,
                          cfg_scale=5)
    original = result.image.convert("RGB")
    repainted = inpaint.image.convert("RGB")
    left = (0, 0, half, args.size)
    assert repainted.crop(left).tobytes() == original.crop(left).tobytes()
    assert "Mask blur: 0" in inpaint.info["infotexts"][0], inpaint.info["infotexts"][0]
    print("inpaint: unmasked half unchanged,", inpaint.info["infotexts"][0].split("\n")[-1])

    # What the server refuses, it says (A1111's `detail`); webuiapi hands back the JSON.
    try:
        api.img2img(images=[result.image], mask_image=mask, width=args.size, height=args.size)
        raise AssertionError("inpaint_full_res=True was accepted")
    except RuntimeError as refused:
        assert "inpaint_full_res" in str(refused), refused
        print("refused as expected:", str(refused)[:100])

    # Options: the loaded model may be "set" (a no-op), another is refused.
    options = api.get_options()
    model = options["sd_model_checkpoint"]
    assert model == models[0]["title"], (model, models)
    api.set_options({"sd_model_checkpoint": model, "CLIP_stop_at_last_layers": 2})
    assert api.get_options()["CLIP_stop_at_last_layers"] == 2
    api.set_options({"CLIP_stop_at_last_layers": 1})
    print("options:", model, "clip skip set and read back")

    # A wait for an idle server (webuiapi's own helper over /progress).
    api.util_wait_for_ready(check_interval=0.1)
    print("OK: webuiapi", getattr(webuiapi, "__version__", "?"), "works unchanged")
    return 0


if __name__ == "__main__":
    sys.exit(main())
