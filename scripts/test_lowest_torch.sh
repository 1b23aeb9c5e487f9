#!/usr/bin/env bash
# The test suite with PyTorch at the lowest version the `torch` extra allows, the rest at their newest. The test
# extra pins the CPU build this project measures, so scripts/test_lowest_versions.sh keeps that one:
#   bash scripts/test_lowest_torch.sh [FOLDER]    # FOLDER: where the environment goes (default: a new temporary one)
# On Linux, PyPI's wheel of that version is the CUDA build, about 3 GB with the NVIDIA libraries it pulls in (the
# tests never load them). After `bash scripts/setup.sh test` (Debian's packages); about 10 minutes on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
work="${1:-$(mktemp -d)}"
mkdir -p "$work"

# the torch extra's lower bound, and the test extra without its pinned torch
read -r torch tests < <(python3 - <<'PY'
import tomllib
extras = tomllib.load(open("pyproject.toml", "rb"))["project"]["optional-dependencies"]
(bound,) = [requirement for requirement in extras["torch"] if requirement.startswith("torch>=")]
tests = [requirement for requirement in extras["test"] if not requirement.startswith("torch")]
print("torch==" + bound.removeprefix("torch>="), " ".join(tests))
PY
)

rm -rf "$work/venv"
python3.11 -m venv "$work/venv"
# shellcheck disable=SC2086  # the test requirements, one word each
"$work/venv/bin/python" -m pip install -q -e . $tests "$torch"
"$work/venv/bin/python" -m pip check
echo "$("$work/venv/bin/python" -c 'import torch; print("PyTorch", torch.__version__)'); running the tests"
"$work/venv/bin/python" -m pytest -p no:cacheprovider
