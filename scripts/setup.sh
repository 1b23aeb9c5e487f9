#!/usr/bin/env bash
# Set up everything fmnist needs on a Debian machine with Python 3.11 (as root, or with sudo):
#   bash scripts/setup.sh        # the tool: Debian's Fashion-MNIST package, .venv, the package
#   bash scripts/setup.sh test   # the same plus what the tests need
# Safe to run again: it installs only what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
purpose="${1:-run}"

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

packages=()
[ -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ] || packages+=(dataset-fashion-mnist)
python3 -c "import ensurepip, venv" 2>/dev/null || packages+=(python3-venv)
if [ "$purpose" = test ]; then
    [ -x /usr/bin/chromium ] || packages+=(chromium)  # the web page's browser test
fi
if [ ${#packages[@]} -gt 0 ]; then
    echo "setup: installing Debian packages: ${packages[*]}"
    as_root apt-get update -q
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${packages[@]}"
fi

[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
if [ "$purpose" = test ]; then
    .venv/bin/python -m pip install -q -e ".[test]"
else
    .venv/bin/python -m pip install -q -e .
fi
echo "setup: ready ($(.venv/bin/python --version), fmnist $(.venv/bin/python -c 'import fmnist; print(fmnist.__version__)'))"
