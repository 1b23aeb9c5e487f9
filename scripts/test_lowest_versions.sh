#!/usr/bin/env bash
# The test suite with every dependency at the lowest version pyproject.toml allows (its own and the test extra's),
# in a scratch environment, so that the lower bounds there stay true (the "minimum versions" job of other projects):
#   bash scripts/test_lowest_versions.sh [FOLDER]    # FOLDER: where the environments go (default: a new temporary one)
# After `bash scripts/setup.sh test` (Debian's packages); about 10 minutes on 2 cores, most of it the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
work="${1:-$(mktemp -d)}"
mkdir -p "$work"

[ -x "$work/uv/bin/uv" ] || { python3 -m venv "$work/uv" && "$work/uv/bin/pip" install -q uv; }
uv="$work/uv/bin/uv"
# The lowest version of each direct dependency that resolves with the rest (yanked releases are skipped)
"$uv" pip compile -q pyproject.toml --extra test --resolution lowest-direct --python-version 3.11 \
    -o "$work/lowest.txt"
# PyTorch apart: on Linux, PyPI's wheel is the CUDA build, with gigabytes of NVIDIA libraries the tests never load;
# pip installs the pinned CPU build as setup.sh does (from pip's own configuration, which may name a folder of wheels)
grep -v -E '^(nvidia-|cuda-|torch==|triton==)' "$work/lowest.txt" > "$work/lowest-cpu.txt"
torch=$(grep -o -E '^torch==[^ ]+' "$work/lowest.txt")

rm -rf "$work/venv"
"$uv" venv -q --seed -p python3.11 "$work/venv"
VIRTUAL_ENV="$work/venv" "$uv" pip install -q -r "$work/lowest-cpu.txt"
"$work/venv/bin/python" -m pip install -q --no-deps "$torch"
"$work/venv/bin/python" -m pip install -q --no-deps -e .
"$work/venv/bin/python" -m pip check
echo "lowest versions: $(grep -c '==' "$work/lowest.txt") packages ($work/lowest.txt); running the tests"
"$work/venv/bin/python" -m pytest -p no:cacheprovider
