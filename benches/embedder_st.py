"""Peer baseline for benches/embedder.rs: sentence-transformers' throughput on the same 32 card
texts (batch 32), same model, same CPU. Prints sentences/s (median of the timed runs).

Environment (the shared venv /work/venv has it):
    python -m venv venv && venv/bin/pip install torch sentence-transformers
Model: tools/fetch-minilm.sh. Usage: /work/venv/bin/python benches/embedder_st.py [runs]
"""

import json
import os
import statistics
import sys
import time
from pathlib import Path

import sentence_transformers
import torch
from sentence_transformers import SentenceTransformer

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))
from make_bert_fixture import CARDS, card_text, model_dir  # noqa: E402  (the same text rule)

BATCH = 32


def main() -> None:
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 10
    with CARDS.open(encoding="utf-8") as lines:
        texts = [card_text(json.loads(line)) for _, line in zip(range(BATCH), lines)]
    model = SentenceTransformer(str(model_dir()), device="cpu")
    with torch.inference_mode():
        model.encode(texts, batch_size=BATCH)  # warm-up
        seconds = []
        for _ in range(runs):
            start = time.perf_counter()
            model.encode(texts, batch_size=BATCH, normalize_embeddings=True)
            seconds.append(time.perf_counter() - start)
    median = statistics.median(seconds)
    print(
        f"sentence-transformers {sentence_transformers.__version__}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, {os.cpu_count()} CPUs: batch {BATCH} in "
        f"{median * 1000:.1f} ms median of {runs} (min {min(seconds) * 1000:.1f} ms) = "
        f"{BATCH / median:.1f} sentences/s"
    )


if __name__ == "__main__":
    main()
