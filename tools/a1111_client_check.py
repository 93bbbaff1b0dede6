#!/usr/bin/env python3
"""Checks `stylus serve` with a third-party AUTOMATIC1111 API client (the `webuiapi` package),
unchanged: txt2img, LoRA listing, progress, samplers, models.

    pip install webuiapi
    stylus serve --checkpoint MODEL --lora-dir LORAS --bind 127.0.0.1:7860 &
    python3 tools/a1111_client_check.py [--port 7860] [--lora NAME] [--size 16] [--steps 3]

Exits non-zero (with the failed check) when the client cannot use an answer. Loopback only.
"""
import argparse
import sys

import webuiapi


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--lora", default=None, help="a LoRA name the server lists")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()

    api = webuiapi.WebUIApi(host=args.host, port=args.port, sampler="Euler a", steps=args.steps)

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

    # A wait for an idle server (webuiapi's own helper over /progress).
    api.util_wait_for_ready(check_interval=0.1)
    print("OK: webuiapi", getattr(webuiapi, "__version__", "?"), "works unchanged")
    return 0


if __name__ == "__main__":
    sys.exit(main())
