#!/usr/bin/env python3
"""A large synthetic catalog for store benchmarks: the Civitai dump replicated with distinct ids.

    tools/replicate_catalog.py COPIES OUT.jsonl [CIVITAI_DIR]

Copy k > 0 adds k * 10,000,000 to every model and version id and " #k" to the name, so the
cards stay distinct for the filters. 11 copies of ../shared/data/civitai give 76,758 kept cards
(docs/benchmarks.md, "Store opening and re-indexing").
"""
import glob
import json
import os
import sys

copies, out_path = int(sys.argv[1]), sys.argv[2]
src = sys.argv[3] if len(sys.argv) > 3 else os.path.join(
    os.path.dirname(__file__), "..", "..", "shared", "data", "civitai")
files = sorted(glob.glob(os.path.join(src, "*.jsonl")))
n = 0
with open(out_path, "w") as out:
    for k in range(copies):
        for path in files:
            for line in open(path):
                try:
                    item = json.loads(line)
                except ValueError:
                    continue
                if not isinstance(item, dict) or "id" not in item:
                    continue
                if k:
                    item["id"] += k * 10_000_000
                    item["name"] = f"{item.get('name', '')} #{k}"
                    for v in item.get("modelVersions") or []:
                        if isinstance(v, dict) and isinstance(v.get("id"), int):
                            v["id"] += k * 10_000_000
                out.write(json.dumps(item) + "\n")
                n += 1
print(f"{n} items -> {out_path}")
