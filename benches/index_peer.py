"""Peer baseline of benches/index.rs: the paper's catalog filter and a hashed TF-IDF of the same
shape (4096 buckets, unigrams + bigrams, sublinear tf, smoothed IDF, L2 norm; no sign hashing,
which sklearn cannot combine with sublinear tf) in Python with
scikit-learn, on the same cards and machine. HTML is cleaned with the standard library's
html.parser (the paper uses BeautifulSoup's get_text()).

Requirements (the shared venv has them): scikit-learn, numpy. Run from the repository root:
    /work/venv/bin/python benches/index_peer.py
"""

import glob
import html.parser
import json
import time

from sklearn.feature_extraction.text import HashingVectorizer, TfidfTransformer
from sklearn.preprocessing import normalize


class Text(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.parts = []

    def handle_data(self, data):
        self.parts.append(data)


def html_text(s):
    p = Text()
    p.feed(s or "")
    return " ".join(" ".join(p.parts).split())


def keep(item):
    if item.get("type") != "LORA" or item.get("nsfw"):
        return False
    return any(
        v.get("baseModel") == "SD 1.5"
        and any(f.get("name", "").endswith(".safetensors") for f in v.get("files") or [])
        for v in item.get("modelVersions") or []
    )


def main():
    files = sorted(glob.glob("../shared/data/civitai/*.jsonl"))
    best = {}
    for _ in range(3):
        t0 = time.perf_counter()
        items = [json.loads(line) for f in files for line in open(f, encoding="utf-8")]
        kept = [i for i in items if keep(i)]
        t1 = time.perf_counter()
        texts = [
            f"{i['name']}. Tags: {', '.join(i.get('tags') or [])}. "
            f"Description: {html_text(i.get('description'))[:1000]}"
            for i in kept
        ]
        t2 = time.perf_counter()
        counts = HashingVectorizer(
            n_features=4096, ngram_range=(1, 2), alternate_sign=False, norm=None
        ).transform(texts)
        vectors = normalize(TfidfTransformer(sublinear_tf=True).fit_transform(counts)).toarray()
        t3 = time.perf_counter()
        for name, seconds in [("read_and_filter", t1 - t0), ("html_and_text", t2 - t1),
                              ("tfidf_fit_and_embed", t3 - t2), ("total", t3 - t0)]:
            best[name] = min(best.get(name, 1e9), seconds)
    print(f"cards read {len(items)}, kept {len(kept)}, vectors {vectors.shape}")
    for name, seconds in best.items():
        print(f"{name}: {seconds:.3f} s (best of 3)")


if __name__ == "__main__":
    main()
