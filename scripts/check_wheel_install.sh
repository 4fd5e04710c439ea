#!/usr/bin/env bash
# CI step for users who already have torch and fairseq: build this package's wheel, install it
# (with the requirements setup.py declares) into a fresh virtual environment that already has
# torch and fairseq, check that pip added nothing but the plugin (no second torch, no fairseq
# rebuild), and run the end-to-end test from outside the source tree against the installed
# package. The "existing" torch and fairseq are .venv's (scripts/setup.sh), seen by the new
# environment through a .pth file, which costs seconds instead of a fairseq build.
# Usage: bash scripts/check_wheel_install.sh
set -euo pipefail
cd "$(dirname "$0")/.."
OLD=$PWD/.venv
WORK=$(mktemp -d "${TMPDIR:-/tmp}/gglm-wheel.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
unset PYTHONPATH  # the source tree must not be importable
purelib() { "$1" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])'; }

# Built from the tracked files alone, so no stale build/ folder can leak into the wheel.
mkdir "$WORK/src"
git ls-files -z | tar --null -T - -cf - | tar -xf - -C "$WORK/src"
"$OLD/bin/python" -m pip wheel --disable-pip-version-check -q --no-deps --no-build-isolation \
  -w "$WORK/dist" "$WORK/src"
"$OLD/bin/python" -m venv "$WORK/venv"
NEW=$WORK/venv
# Every package of .venv but this one (its editable install would point at the source).
mkdir "$WORK/existing"
for entry in "$(purelib "$OLD/bin/python")"/*; do
  case $(basename "$entry") in gglm_fairseq* | __editable__*gglm_fairseq*) continue ;; esac
  ln -s "$entry" "$WORK/existing/"
done
echo "$WORK/existing" > "$(purelib "$NEW/bin/python")/existing-torch-and-fairseq.pth"
# The console scripts a fairseq installation has, run by the new environment's interpreter.
for script in fairseq-preprocess fairseq-train fairseq-generate sacrebleu; do
  sed "1s|.*|#!$NEW/bin/python|" "$OLD/bin/$script" > "$NEW/bin/$script"
  chmod +x "$NEW/bin/$script"
done

site=$(purelib "$NEW/bin/python")
before=$(ls "$site")
"$NEW/bin/python" -m pip install --disable-pip-version-check -q "$WORK"/dist/gglm_fairseq-*.whl
added=$(comm -13 <(echo "$before") <(ls "$site") | grep -v '^gglm_fairseq' || true)
if [ -n "$added" ]; then
  echo "pip installed more than the plugin:" $added >&2
  exit 1
fi

mkdir "$WORK/run"
cp tests/test_end_to_end.py tests/helpers.py tests/conftest.py pytest.ini "$WORK/run/"
cd "$WORK/run"
"$NEW/bin/python" -c 'import sys, gglm_fairseq
assert gglm_fairseq.__file__.startswith(sys.prefix), gglm_fairseq.__file__
print("testing the installed", gglm_fairseq.__file__)'
"$NEW/bin/python" -m pytest -q -p no:cacheprovider test_end_to_end.py
