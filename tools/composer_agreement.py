"""How a `stylus select --prompts` run over the PartiPrompts compares with the reference composer.

The reference (the Stylus authors' composer, `ranked_adapters` in parti_prompts.csv) picked
Civitai model ids from a larger, later catalog; only the picks that exist in our store can be
compared. Prints adapters per prompt, the share of topics with an adapter, and how many of the
comparable reference picks our plans contain.

Usage:
    stylus index --civitai ../shared/data/civitai --out /tmp/lex-full
    python3 -c "import csv; print('\\n'.join(r['caption'].replace('\\n', ' ') for r in \
        csv.DictReader(open('../shared/data/stylus/parti_prompts.csv'))))" > /tmp/parti.txt
    stylus select --index /tmp/lex-full --prompts /tmp/parti.txt --json > /tmp/plans.jsonl
    python3 tools/composer_agreement.py /tmp/lex-full /tmp/plans.jsonl
"""

import ast
import csv
import json
import sys
from pathlib import Path

PARTI = Path(__file__).resolve().parent.parent.parent / "shared/data/stylus/parti_prompts.csv"


def main() -> None:
    store, plans_path = Path(sys.argv[1]), Path(sys.argv[2])
    with (store / "docs.jsonl").open(encoding="utf-8") as lines:
        ids = {json.loads(line)["card"]["id"] for line in lines}
    with PARTI.open(encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    with plans_path.open(encoding="utf-8") as lines:
        plans = [json.loads(line) for line in lines]
    if len(plans) != len(rows):
        sys.exit(f"{plans_path}: {len(plans)} plans for {len(rows)} prompts")
    adapters = topics = topics_with = comparable = agreed = 0
    for row, plan in zip(rows, plans):
        reference = ast.literal_eval(row["ranked_adapters"]) if row["ranked_adapters"] else {}
        picks = {i for chosen in reference.values() for i in chosen if i in ids}
        ours = {a["id"] for t in plan["topics"] for a in t["adapters"]}
        adapters += len(ours)
        topics += len(plan["topics"])
        topics_with += sum(1 for t in plan["topics"] if t["adapters"])
        comparable += len(picks)
        agreed += len(picks & ours)
    print(
        f"{len(plans)} prompts: {adapters / len(plans):.2f} adapters per prompt, "
        f"{topics_with / topics:.1%} of topics with an adapter, "
        f"{agreed} of {comparable} comparable reference picks chosen"
    )


if __name__ == "__main__":
    main()
