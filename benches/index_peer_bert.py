"""Peer baseline for `stylus index --embedder bert`: sentence-transformers embedding the same
documents (the `embedding_text` of each doc in a StylusDocs store that `stylus index` wrote), same
model (all-MiniLM-L6-v2), same batch size (32), same CPU. Prints the time and sentences/s, and the
largest cosine gap to the store's own vectors for the texts it embedded (a parity check on real
documents).

Environment (the shared venv /work/venv has it):
    python -m venv venv && venv/bin/pip install torch sentence-transformers safetensors
Model: tools/fetch-minilm.sh.
Usage: /work/venv/bin/python benches/index_peer_bert.py STORE_DIR [N (default: all)]
"""

import json
import sys
import time
from pathlib import Path

import numpy as np
import sentence_transformers
import torch
from safetensors.numpy import load_file
from sentence_transformers import SentenceTransformer

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))
from make_bert_fixture import model_dir  # noqa: E402  (where tools/fetch-minilm.sh installs it)

BATCH = 32


def main() -> None:
    store = Path(sys.argv[1])
    limit = int(sys.argv[2]) if len(sys.argv) > 2 else None
    with (store / "docs.jsonl").open(encoding="utf-8") as lines:
        texts = [json.loads(line)["embedding_text"] for line in lines]
    texts = texts[:limit] if limit else texts
    ours = next(iter(load_file(str(store / "vectors.safetensors")).values()))[: len(texts)]
    model = SentenceTransformer(str(model_dir()), device="cpu")
    with torch.inference_mode():
        start = time.perf_counter()
        theirs = model.encode(texts, batch_size=BATCH, normalize_embeddings=True)
        seconds = time.perf_counter() - start
    cosines = np.sum(np.asarray(theirs, dtype=np.float64) * ours.astype(np.float64), axis=1)
    print(
        f"sentence-transformers {sentence_transformers.__version__}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads: {len(texts)} documents in {seconds:.1f} s = "
        f"{len(texts) / seconds:.2f} sentences/s; min cosine to the store's vectors "
        f"{cosines.min():.7f}"
    )


if __name__ == "__main__":
    main()
