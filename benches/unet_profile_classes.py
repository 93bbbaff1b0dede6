#!/usr/bin/env python3
"""Per-op-class shares of a `perf record --call-graph dwarf` profile of benches/unet_profile.rs.

Reads `perf script` output on stdin. Each sample is attributed to the first class whose pattern
matches any frame of its call stack, in the order of CLASSES (so a gemm called from a convolution
counts as convolution, a reduction inside GroupNorm as group norm). Samples outside the UNet call
(process start, random init) are left out. Prints one markdown table row per class: share of the
call's samples and seconds when `--call-seconds S` gives the call's wall time.

Run: perf script -i unet.perf | python3 benches/unet_profile_classes.py --call-seconds 80
"""

import argparse
import re
import sys
from collections import Counter

# (class, frame pattern); first match over the whole stack wins.
CLASSES = [
    ("random init (outside the call)", r"random|rand::|distribution|lazy_init|Materialize"),
    ("attention (QK^T, softmax, AV)", r"attention|softmax|flash"),
    ("convolution (im2col + gemm, 3x3 and 1x1)", r"conv"),
    ("group norm", r"group_?norm|GroupNorm"),
    ("layer norm", r"layer_?norm|LayerNorm"),
    ("matmul / linear (gemm)", r"matmul|gemm|Linear"),
    ("activations (SiLU, GELU)", r"silu|gelu|sigmoid|erf|tanh|activation"),
    ("layout copies (permute, contiguous, cat, slice)", r"contiguous|permute|swap_dims|transpose|cat|slice|copy|strided|reshape|repeat|expand|interpolate|upsample|nearest"),
    ("elementwise (add, mul, scalar ops)", r"binary|unary|add|mul|sub|div|scalar|float_"),
    ("allocation / page faults", r"alloc|malloc|free|memset|page|clear_page|__memset|madvise|munmap|mmap"),
]


def samples(lines):
    stack = []
    for line in lines:
        line = line.rstrip("\n")
        if not line.strip():
            if stack:
                yield stack
                stack = []
            continue
        if line.startswith((" ", "\t")):
            parts = line.strip().split(None, 1)
            if len(parts) == 2:
                symbol = re.sub(r"\+0x[0-9a-f]+", "", parts[1])
                symbol = re.sub(r"\s*\([^)]*\)$", "", symbol)
                stack.append(symbol)
        # header lines start a sample; nothing to keep from them
    if stack:
        yield stack


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--call-seconds", type=float, default=None)
    parser.add_argument("--top", type=int, default=0, help="also print the top leaf symbols")
    args = parser.parse_args()
    compiled = [(name, re.compile(pattern, re.IGNORECASE)) for name, pattern in CLASSES]
    counts = Counter()
    leaves = Counter()
    for stack in samples(sys.stdin):
        joined = "\n".join(stack)
        for name, pattern in compiled:
            if pattern.search(joined):
                counts[name] += 1
                break
        else:
            counts["other"] += 1
        leaves[stack[0][:110]] += 1
    outside = counts.pop("random init (outside the call)", 0)
    total = sum(counts.values())
    print(f"samples in the call: {total} (left out: {outside} of random init / start-up)")
    print("| op class | share of the call | seconds |")
    print("|---|---|---|")
    for name, count in counts.most_common():
        share = count / total if total else 0.0
        seconds = f"{share * args.call_seconds:.1f}" if args.call_seconds else "-"
        print(f"| {name} | {100 * share:.1f}% | {seconds} |")
    if args.top:
        print()
        for symbol, count in leaves.most_common(args.top):
            print(f"{count:6d}  {symbol}")


if __name__ == "__main__":
    main()
