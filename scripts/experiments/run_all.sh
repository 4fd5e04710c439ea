#!/usr/bin/env bash
# Run every experiment of one profile and regenerate docs/results.md from the results.
#
#   scripts/experiments/run_all.sh --profile quick [--runs DIR] [--variants "warmup ema"]
#
# Steps (each skips what its results.json already holds with the same command):
#   1. noisy Multi30k, noise 0.4: baseline, gglm, oracle, finetune
#   2. ParaCrawl with human labels: one GGLM run, mask-rate AUC vs bicleaner
#   3. GGLM variants on the noisy Multi30k data (chosen later on validation BLEU)
#   4. scripts/experiments/make_results.py -> docs/results.md and docs/*.png
set -euo pipefail
cd "$(dirname "$0")/../.."

profile=quick
runs=runs
variants="warmup clean-all ema running token"
while [ $# -gt 0 ]; do
  case "$1" in
    --profile) profile="$2"; shift 2 ;;
    --runs) runs="$2"; shift 2 ;;
    --variants) variants="$2"; shift 2 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
done

# Variant name -> extra GGLM flags.
declare -A flags=(
  [warmup]="--gglm-warmup-updates 100"
  [clean-all]="--clean-max-tokens 16384"
  [ema]="--gglm-clean-grad-ema 0.9"
  [running]="--gglm-score running"
  [token]="--gglm-granularity token"
)

m30k="$runs/m30k-$profile-p0.4"
python scripts/experiments/noisy_multi30k.py --profile "$profile" --work "$m30k" \
  --noise 0.4 --seed 1 --systems baseline,gglm,oracle,finetune
# quick: half the updates for ParaCrawl (the runs shared 2 cores with other jobs).
paracrawl_updates=()
[ "$profile" = quick ] && paracrawl_updates=(--updates 150)
python scripts/experiments/paracrawl_human.py --profile "$profile" --work "$runs/paracrawl-$profile" \
  "${paracrawl_updates[@]}"
for name in $variants; do
  python scripts/experiments/noisy_multi30k.py --profile "$profile" --work "$m30k" \
    --noise 0.4 --seed 1 --systems gglm --tag "$name" --gglm-args "${flags[$name]}"
done
python scripts/experiments/make_results.py "$m30k/results.json" \
  "$runs/paracrawl-$profile/results.json" --out docs/results.md \
  --command "scripts/experiments/run_all.sh --profile $profile"
