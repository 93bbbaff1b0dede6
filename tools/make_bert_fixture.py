"""Parity fixture for the BERT embedder (crates/stylus-refiner/tests/bert_parity.rs).

Embeds real Civitai card texts with sentence-transformers and all-MiniLM-L6-v2 and writes
`crates/stylus-refiner/tests/fixtures/bert/minilm_cards.safetensors`:

- `card_ids` (I64 [N]): the Civitai model ids whose texts were embedded, in order;
- `embeddings` (F32 [N, 384]): the model as published (mean pooling, normalized);
- `cls_embeddings` (F32 [M, 384]): the first M texts with the same weights but CLS pooling
  (the pooling bge models use), normalized.

Only ids are stored, never the card texts: the test rebuilds each text from
../shared/data/civitai with the rule in `card_text` below (the Rust test implements the same rule).

Environment (the shared venv /work/venv has it):
    python -m venv venv && venv/bin/pip install torch sentence-transformers safetensors numpy
Model: run tools/fetch-minilm.sh first (it installs the weights this script and the test use).
Usage: /work/venv/bin/python tools/make_bert_fixture.py
"""

import json
import os
import re
from pathlib import Path

import numpy as np
import sentence_transformers
import torch
from safetensors.numpy import save_file
from sentence_transformers import SentenceTransformer
from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer

REPO = Path(__file__).resolve().parent.parent
CARDS = REPO.parent / "shared/data/civitai/civitai_lora_sfw_2023-07_part1.jsonl"
OUT = REPO / "crates/stylus-refiner/tests/fixtures/bert/minilm_cards.safetensors"
NUM_CARDS = 120
NUM_CLS = 24
DESCRIPTION_CHARS = 500

TAG = re.compile(r"<[^>]*>")
SPACES = re.compile(r"[ \t\n\r]+")


def card_text(card: dict) -> str:
    """`{name}. {tags joined by ", "}. {description}`: the description with every `<...>` tag
    replaced by a space, runs of space/tab/CR/LF collapsed to one space, leading and trailing
    spaces removed, cut to its first 500 characters (code points). Missing tags or description
    count as empty."""
    description = SPACES.sub(" ", TAG.sub(" ", card.get("description") or "")).strip(" ")
    tags = ", ".join(card.get("tags") or [])
    return f"{card['name']}. {tags}. {description[:DESCRIPTION_CHARS]}"


def model_dir() -> Path:
    env = os.environ.get("STYLUS_MINILM_DIR")
    return Path(env) if env else Path.home() / ".cache/stylus/models/all-MiniLM-L6-v2"


def main() -> None:
    torch.manual_seed(0)
    with CARDS.open(encoding="utf-8") as lines:
        cards = [json.loads(line) for _, line in zip(range(NUM_CARDS), lines)]
    texts = [card_text(card) for card in cards]

    path = str(model_dir())
    model = SentenceTransformer(path, device="cpu")
    assert model.max_seq_length == 256, model.max_seq_length
    embeddings = model.encode(texts, batch_size=32, normalize_embeddings=True, convert_to_numpy=True)

    transformer = Transformer(path, max_seq_length=256)
    cls = Pooling(transformer.get_embedding_dimension(), pooling_mode="cls")
    cls_model = SentenceTransformer(modules=[transformer, cls, Normalize()], device="cpu")
    cls_embeddings = cls_model.encode(texts[:NUM_CLS], batch_size=32, convert_to_numpy=True)

    tokens = [len(ids) for ids in model.tokenizer(texts)["input_ids"]]
    print(f"{len(texts)} texts, tokens min {min(tokens)} max {max(tokens)}, "
          f"{sum(t > 256 for t in tokens)} truncated to 256")

    OUT.parent.mkdir(parents=True, exist_ok=True)
    save_file(
        {
            "card_ids": np.array([card["id"] for card in cards], dtype=np.int64),
            "embeddings": embeddings.astype(np.float32),
            "cls_embeddings": cls_embeddings.astype(np.float32),
        },
        str(OUT),
        metadata={
            "model": "sentence-transformers/all-MiniLM-L6-v2 (model.safetensors sha256 53aa5117...)",
            "source": f"first {NUM_CARDS} lines of ../shared/data/civitai/{CARDS.name}",
            "rule": " ".join(card_text.__doc__.split()),
            "sentence_transformers": sentence_transformers.__version__,
            "torch": torch.__version__,
        },
    )
    print(f"wrote {OUT.relative_to(REPO)}")


if __name__ == "__main__":
    main()
