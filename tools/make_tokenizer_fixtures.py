#!/usr/bin/env python3
"""CLIP tokenizer parity fixtures (and the bundled vocabulary) for crates/stylus-diffusion.

1. Bundled vocabulary: `crates/stylus-diffusion/assets/clip/clip_bpe_merges.txt.gz` is OpenAI's
   CLIP BPE file `bpe_simple_vocab_16e6.txt.gz` (MIT, Copyright (c) 2021 OpenAI) as shipped in the
   PyPI wheel open_clip_torch 3.3.0 (sha256 of the original .gz:
   924691ac288e54409236115652ad4aa250f48203de50a9e4722a6ecd48d6804a), cut to the version header
   plus the 48,894 merges CLIP uses (the remaining ~213k lines are never read by any CLIP
   tokenizer) and re-gzipped (level 9, mtime 0). `--write-asset` rewrites it.
2. Reference tokenizer: transformers' `CLIPTokenizer` (the tokenizers-backed class diffusers
   loads) over a `vocab.json` + `merges.txt` built from that BPE file exactly as OpenAI's
   `SimpleTokenizer` and Hugging Face's openai/clip-vit-large-patch14 files do (256 byte symbols,
   the same with `</w>`, one token per merge, `<|startoftext|>`, `<|endoftext|>`).
3. Prompts: every sample prompt of ../shared/data/civitai/*.jsonl
   (`modelVersions[v].images[i].prompt`), every caption of ../shared/data/stylus/parti_prompts.csv,
   and our own edge cases (tests/fixtures/tokenizer/edge_cases.json: emoji, CJK, accents, HTML
   entities, long prompts, empty, punctuation only). The fixture stores ids and where each prompt
   comes from (file + line/row + indices), never the shared texts.

Output: tests/fixtures/tokenizer/clip_ids.jsonl.gz, one JSON object per prompt:
  {"src": ["civitai", "<file>", line (1-based), version index, image index] |
           ["parti", row (0-based data row)] | ["edge", index],
   "ids": untruncated BPE ids without BOS/EOS}
The script also asserts, for every prompt, that the diffusers-style call
`tokenizer(p, padding="max_length", max_length=77, truncation=True)` equals
BOS + ids[:75] + EOS + EOS padding, which is what the Rust test checks for `encode`.

Recreate the virtualenv:  python3 -m venv /work/venv && /work/venv/bin/pip install torch diffusers
transformers safetensors   (used: transformers 5.24.0, tokenizers 0.23.3);
open_clip's wheel:  pip download open_clip_torch==3.3.0 --no-deps  (unzip; only the .gz is read)
Run:  /work/venv/bin/python tools/make_tokenizer_fixtures.py PATH/TO/bpe_simple_vocab_16e6.txt.gz [--write-asset]
"""

import csv
import glob
import gzip
import json
import sys
import tempfile
from pathlib import Path

import transformers
from transformers import CLIPTokenizer

ROOT = Path(__file__).resolve().parent.parent
CRATE = ROOT / "crates/stylus-diffusion"
SHARED = ROOT.parent / "shared"
OUT = CRATE / "tests/fixtures/tokenizer"
ASSET = CRATE / "assets/clip/clip_bpe_merges.txt.gz"
CLIP_MERGES = 49152 - 256 - 2


def bytes_to_unicode():
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


def build_tokenizer(bpe_lines, folder):
    merges = bpe_lines[1 : CLIP_MERGES + 1]
    symbols = list(bytes_to_unicode().values())
    vocab = symbols + [s + "</w>" for s in symbols]
    vocab += ["".join(m.split()) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    assert len(vocab) == 49408
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}, ensure_ascii=False))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    return CLIPTokenizer.from_pretrained(str(folder))


def civitai_prompts():
    for path in sorted(glob.glob(str(SHARED / "data/civitai/*.jsonl"))):
        name = Path(path).name
        with open(path, encoding="utf-8") as f:
            for line_no, line in enumerate(f, start=1):
                card = json.loads(line)
                for v, version in enumerate(card.get("modelVersions") or []):
                    for i, image in enumerate(version.get("images") or []):
                        prompt = image.get("prompt")
                        if isinstance(prompt, str):
                            yield ["civitai", name, line_no, v, i], prompt


def parti_prompts():
    with open(SHARED / "data/stylus/parti_prompts.csv", encoding="utf-8", newline="") as f:
        for row, record in enumerate(csv.DictReader(f)):
            yield ["parti", row], record["caption"]


def edge_prompts():
    cases = json.loads((OUT / "edge_cases.json").read_text(encoding="utf-8"))
    for index, prompt in enumerate(cases):
        yield ["edge", index], prompt


def main():
    bpe_path = Path(sys.argv[1])
    bpe_lines = gzip.open(bpe_path).read().decode("utf-8").split("\n")
    if "--write-asset" in sys.argv:
        data = ("\n".join(bpe_lines[: CLIP_MERGES + 1]) + "\n").encode("utf-8")
        with open(ASSET, "wb") as raw, gzip.GzipFile("clip_bpe_merges.txt", "wb", 9, raw, mtime=0) as f:
            f.write(data)
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = build_tokenizer(bpe_lines, Path(tmp))
        bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
        assert (bos, eos, tokenizer.pad_token_id) == (49406, 49407, 49407)
        records = []
        for src, prompt in [*civitai_prompts(), *parti_prompts(), *edge_prompts()]:
            try:
                prompt.encode("utf-8")
            except UnicodeEncodeError:
                continue  # lone surrogates cannot reach a Rust `str`
            ids = tokenizer(prompt, add_special_tokens=False).input_ids
            padded = tokenizer(prompt, padding="max_length", max_length=77, truncation=True).input_ids
            expected = [bos] + ids[:75] + [eos]
            assert padded == expected + [eos] * (77 - len(expected)), src
            records.append({"src": src, "ids": ids})
    OUT.mkdir(parents=True, exist_ok=True)
    with open(OUT / "clip_ids.jsonl.gz", "wb") as raw, gzip.GzipFile("clip_ids.jsonl", "wb", 9, raw, mtime=0) as f:
        for record in records:
            f.write((json.dumps(record, separators=(",", ":"), ensure_ascii=False) + "\n").encode("utf-8"))
    kinds = {}
    for r in records:
        kinds[r["src"][0]] = kinds.get(r["src"][0], 0) + 1
    print(f"transformers {transformers.__version__}: {len(records)} prompts {kinds}")


if __name__ == "__main__":
    main()
