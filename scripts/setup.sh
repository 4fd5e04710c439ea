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
pip_install numpy cython wheel setuptools
if ! python -c "import fairseq" 2>/dev/null; then
  echo "building fairseq-fixed==0.12.3.1 (C++ extensions, about 2 minutes the first time)"
  # --no-deps: its torchaudio requirement would pull a second torch; its other needs follow.
  pip_install --no-build-isolation --no-deps fairseq-fixed==0.12.3.1
fi
echo "(pip may warn that fairseq-fixed requires torchaudio: translation does not use it)"
pip_install "hydra-core==1.3.2" "omegaconf==2.3.0" regex tqdm bitarray cffi packaging \
  scikit-learn "sacrebleu>=2.0" sentencepiece matplotlib pytest ruff
pip_install --no-deps -e .
python -c "import fairseq, torch, gglm_fairseq; print('ready: torch', torch.__version__, '| fairseq', fairseq.__version__, '| gglm_fairseq', gglm_fairseq.__version__)"
