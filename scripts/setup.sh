#!/usr/bin/env bash
# One idempotent set-up: a virtual environment in .venv with the CPU build of torch,
# fairseq (PyPI fairseq-fixed, the Python 3.11 build of fairseq 0.12) and this package.
# Usage: bash scripts/setup.sh            (then: . .venv/bin/activate)
# Set GGLM_TORCH to pick another torch (e.g. GGLM_TORCH=torch==2.5.1 on a GPU machine).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
TORCH=${GGLM_TORCH:-torch==2.13.0}

[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
. .venv/bin/activate
pip_install() { python -m pip install --disable-pip-version-check -q "$@"; }

# Build tools and torch first: fairseq-fixed compiles against the torch already installed.
python -c "import torch" 2>/dev/null || pip_install "$TORCH"
pip_install -c constraints.txt numpy cython wheel setuptools
if ! python -c "import fairseq" 2>/dev/null; then
  echo "building fairseq-fixed==0.12.3.1 (C++ extensions, about 2 minutes the first time)"
  # --no-deps: its torchaudio requirement would pull a second torch; its other needs follow.
  pip_install --no-build-isolation --no-deps fairseq-fixed==0.12.3.1
fi
echo "(pip may warn that fairseq-fixed requires torchaudio: translation does not use it)"
# fairseq's own requirements and the test tools; tensorboardX only silences the "Please
# install tensorboardX" line that importing fairseq logs without it.
pip_install -c constraints.txt hydra-core omegaconf regex tqdm bitarray cffi packaging \
  sacrebleu scikit-learn tensorboardX pytest ruff
# This package in editable mode with its requirements from setup.py (none pulls torch).
pip_install -c constraints.txt -e .
python -c "import fairseq, torch, gglm_fairseq; print('ready: torch', torch.__version__, '| fairseq', fairseq.__version__, '| gglm_fairseq', gglm_fairseq.__version__)"
