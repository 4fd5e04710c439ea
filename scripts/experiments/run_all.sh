#!/usr/bin/env bash
# Run the experiments and regenerate docs/results.md from their results.
#
#   scripts/experiments/run_all.sh [--profiles "quick full"] [--runs DIR] [--variants "adam ema"]
#                                  [--noise-levels "0.2 0"] [--seeds "1 2 3"]
#                                  [--clean-sets "wmt21 val100 val50"]
#                                  [--full-variants "keep-tokens mask-8192 baseline-8192"]
#                                  [--setups "d0.3 spm-clean"] [--setup-seeds "1 2 3"]
#                                  [--finetune-recipes "10 25"]
#                                  [--page-only] [--docs docs]
#
# Steps (each skips what its results.json already holds with the same command):
#   quick (all systems in ~20-40 min on 2 cores):
#     1. noisy Multi30k, noise 0.4: baseline, gglm, oracle, finetune (the baseline
#        fine-tuned on the clean set), finetune-gglm (GGLM's model fine-tuned the same way)
#        and the two mask controls (oracle-mask, random-mask)
#     2. ParaCrawl with human labels: one GGLM run, mask-rate AUC vs bicleaner
#     3. GGLM variants on the same noisy Multi30k data (compared on validation BLEU)
#     4. noisy Multi30k at the other noise levels (default 0.2 and 0): baseline, gglm, oracle,
#        finetune (no oracle at noise 0: it would train on the baseline's data)
#     5. the alignment probe of the noise-0.4 baseline (kept if its JSON exists)
#   full (about 2 h per seed on 2 cores): noisy Multi30k, noise 0.4, for each of --seeds
#     (default "1 2 3"): baseline-long (which also scores baseline), filtered (the baseline on
#     the pairs a two-rule filter keeps: no target copying the source or in French), gglm,
#     finetune, finetune-gglm (and oracle for seed 1), validation BLEU every 260 updates, the
#     fine-tuned systems also at each of --finetune-recipes updates (the page picks the recipe
#     with the best validation BLEU per seed and clean set) and the --full-variants of GGLM
#     (keep-tokens: the update kept full; mask-8192: its control at equal candidate cost,
#     mask-only GGLM on the same 8,192-token batches; baseline-8192: the baseline on those
#     batches, the batch without a mask; each also fine-tuned with the default and each of
#     --finetune-recipes: finetune-gglm-keep-tokens, finetune-gglm-mask-8192, finetune-8192);
#     the alignment probe of seed 1's baseline; the results page adds means over seeds and the
#     BLEU-vs-time plot;
#     then, on seed 1's data, gglm, finetune and finetune-gglm with each of --clean-sets (another
#     domain: newstest2021; tiny: 100 and 50 pairs), beside the default clean set, with the
#     same --finetune-recipes; and, each in
#     its own folder, each of --setup-seeds (default "1 2 3") with one part of the setup changed
#     (--setups; d0.3: dropout 0.3, spm-clean: sentencepiece trained on the text before the
#     noise; not run by default: ffn512, the feed-forward width 512, and heldout, the three
#     changes of the held-out check at once): baseline, gglm and both fine-tuned systems (the
#     page sets each beside the default setup of the same seed, which is the same noise
#     injection), for d0.3 and heldout also the GGLM variant nodrop (alignment without
#     dropout) and its fine-tuned model, and the alignment probe of each setup's baseline
#   last: scripts/experiments/make_results.py -> DOCS/results.md and DOCS/*.png; each results
#     file is archived as DOCS/data/KEY.json, and a run whose results are not on this machine
#     is taken from that archive (--page-only: no training, only the page)
set -euo pipefail
cd "$(dirname "$0")/../.."

profiles="quick full"
runs=runs
variants="adam warmup clean-all ema running token cross-attention"
variants+=" keep-tokens soft batch-mean batch-quantile"
noise_levels="0.2 0"
seeds="1 2 3"
clean_sets="wmt21 val100 val50"
full_variants="keep-tokens mask-8192 baseline-8192"
setups="d0.3 spm-clean"
setup_seeds="1 2 3"
finetune_recipes="10 25"
page_only=0
docs=docs
while [ $# -gt 0 ]; do
  case "$1" in
    --profiles) profiles="$2"; shift 2 ;;
    --runs) runs="$2"; shift 2 ;;
    --variants) variants="$2"; shift 2 ;;
    --noise-levels) noise_levels="$2"; shift 2 ;;
    --seeds) seeds="$2"; shift 2 ;;
    --clean-sets) clean_sets="$2"; shift 2 ;;
    --full-variants) full_variants="$2"; shift 2 ;;
    --setups) setups="$2"; shift 2 ;;
    --setup-seeds) setup_seeds="$2"; shift 2 ;;
    --finetune-recipes) finetune_recipes="$2"; shift 2 ;;
    --page-only) page_only=1; shift ;;
    --docs) docs="$2"; shift 2 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
done

# Variant name -> extra GGLM flags.
declare -A flags=(
  [adam]="--gglm-preconditioner adam"
  [warmup]="--gglm-warmup-updates 100"
  [clean-all]="--clean-max-tokens 16384"
  [ema]="--gglm-clean-grad-ema 0.9"
  [running]="--gglm-score running"
  [token]="--gglm-granularity token"
  [cross-attention]="--gglm-parameters encoder_attn"
  [keep-tokens]="--gglm-keep-tokens 3100"
  [mask-8192]=""
  [soft]="--gglm-weighting soft"
  [batch-mean]="--gglm-threshold-mode batch-mean"
  [batch-quantile]="--gglm-threshold-mode batch-quantile --gglm-threshold-quantile 0.4"
  [nodrop]="--gglm-alignment-without-dropout"
)
# (Passed as --gglm-args="...": argparse takes a lone flag after a space for an option.)
# Variant name -> extra runner flags: keep-tokens picks its 3100 target tokens (the baseline's
# mean per update, measured at the full profile: 3131) from candidate batches twice the
# profile's --max-tokens (full when at least half the candidates pass the threshold);
# mask-8192 is its control at equal candidate cost: mask-only GGLM on the same batches.
declare -A runner_flags=(
  [keep-tokens]="--candidate-max-tokens 8192"
  [mask-8192]="--candidate-max-tokens 8192"
  [baseline-8192]="--candidate-max-tokens 8192"
)
# Full variant -> the system it trains where not GGLM, the runner's tag where it is not the
# variant's name, and the fine-tuned system that starts from it.
declare -A variant_systems=([baseline-8192]=baseline)
declare -A tags=([baseline-8192]=8192)
declare -A tuned_variants=(
  [keep-tokens]=finetune-gglm [mask-8192]=finetune-gglm [baseline-8192]=finetune
)
# Setup name -> runner flags (each setup is its own folder: other data or another model).
declare -A setup_flags=(
  [d0.3]="--dropout 0.3"
  [spm-clean]="--subword-data clean"
  [ffn512]="--ffn 512"
  [heldout]="--dropout 0.3 --subword-data clean --ffn 512"
)
# Setup name -> GGLM variants tried in that setup too (with their fine-tuned models): without
# dropout in the alignment pass, the lead for the gain dropout 0.3 costs.
declare -A setup_variants=([d0.3]="nodrop" [heldout]="nodrop")
for name in $setups; do
  if [ -z "${setup_flags[$name]+set}" ]; then
    echo "unknown setup: $name (choose from: ${!setup_flags[*]})" >&2; exit 2
  fi
done

results=()
# Every runner step below is skipped with --page-only (the results files are only listed).
runner() {
  [ "$page_only" = 1 ] || python "$@"
}
# Which parameters and which clean gradient detect the noise, at the baseline's last checkpoint.
probe() {
  [ -f "$1/probe-baseline.json" ] || \
    runner scripts/experiments/alignment_probe.py --work "$1" --system baseline --pairs 1000
  results+=("$1/probe-baseline.json")
}
# The folder of a seed's run: seed 1's is the base folder, another seed's gets -sSEED.
seed_folder() {
  if [ "$2" = 1 ]; then echo "$1"; else echo "$1-s$2"; fi
}
for profile in $profiles; do
  m30k="$runs/m30k-$profile-p0.4"
  results+=("$m30k/results.json")
  if [ "$profile" = full ]; then
    # Seeds: each its own noise injection, sentencepiece and training seed. baseline-long is
    # the baseline given GGLM's time per update; its checkpoint at the budget is the baseline.
    # --curve-every: validation BLEU at every 260 updates (the BLEU-vs-time plot).
    for seed in $seeds; do
      work=$(seed_folder "$m30k" "$seed")
      systems=baseline-long,filtered,gglm,finetune,finetune-gglm
      if [ "$seed" != 1 ]; then
        results+=("$work/results.json")
      else
        systems="$systems,oracle"
      fi
      runner scripts/experiments/noisy_multi30k.py --profile full --work "$work" \
        --noise 0.4 --seed "$seed" --systems "$systems" --curve-every 260
      # Each seed's fine-tuning recipes (the page compares GGLM with the one chosen on valid)
      # and its --full-variants of GGLM.
      for updates in $finetune_recipes; do
        runner scripts/experiments/noisy_multi30k.py --profile full --work "$work" --noise 0.4 \
          --seed "$seed" --systems finetune,finetune-gglm --finetune-updates "$updates"
      done
      for name in $full_variants; do
        tag="${tags[$name]:-$name}"
        # shellcheck disable=SC2086  # the runner flags are several words on purpose
        runner scripts/experiments/noisy_multi30k.py --profile full --work "$work" \
          --noise 0.4 --seed "$seed" --systems "${variant_systems[$name]:-gglm}" --tag "$tag" \
          --gglm-args="${flags[$name]:-}" ${runner_flags[$name]:-}
        # Each fine-tuned with the same recipes, from its own model (the tag names the start).
        tuned="${tuned_variants[$name]:-}"
        [ -n "$tuned" ] || continue
        for updates in "" $finetune_recipes; do
          runner scripts/experiments/noisy_multi30k.py --profile full --work "$work" \
            --noise 0.4 --seed "$seed" --systems "$tuned" --tag "$tag" \
            ${updates:+--finetune-updates "$updates"}
        done
      done
    done
    probe "$m30k"
    for clean in $clean_sets; do
      runner scripts/experiments/noisy_multi30k.py --profile full --work "$m30k" --noise 0.4 \
        --seed 1 --systems gglm,finetune,finetune-gglm --clean-set "$clean" --curve-every 260
    done
    for clean in $clean_sets; do
      for updates in $finetune_recipes; do
        runner scripts/experiments/noisy_multi30k.py --profile full --work "$m30k" --noise 0.4 \
          --seed 1 --systems finetune,finetune-gglm --clean-set "$clean" \
          --finetune-updates "$updates"
      done
    done
    for name in $setups; do
      for seed in $setup_seeds; do
        work=$(seed_folder "$m30k-$name" "$seed")
        # shellcheck disable=SC2086
        runner scripts/experiments/noisy_multi30k.py --profile full --work "$work" \
          --noise 0.4 --seed "$seed" --systems baseline,gglm,finetune,finetune-gglm \
          ${setup_flags[$name]}
        for variant in ${setup_variants[$name]:-}; do
          # shellcheck disable=SC2086
          runner scripts/experiments/noisy_multi30k.py --profile full --work "$work" \
            --noise 0.4 --seed "$seed" --systems gglm,finetune-gglm --tag "$variant" \
            --gglm-args="${flags[$variant]}" ${setup_flags[$name]}
        done
        results+=("$work/results.json")
        # The setup's baseline probed too: dropout on vs off in the alignment at a fixed model.
        probe "$work"
      done
    done
    continue
  fi
  runner scripts/experiments/noisy_multi30k.py --profile "$profile" --work "$m30k" \
    --noise 0.4 --seed 1 --systems baseline,gglm,oracle,finetune,finetune-gglm,oracle-mask,random-mask
  # quick: half the updates for ParaCrawl (the runs shared 2 cores with other jobs).
  paracrawl_updates=()
  [ "$profile" = quick ] && paracrawl_updates=(--updates 150)
  runner scripts/experiments/paracrawl_human.py --profile "$profile" \
    --work "$runs/paracrawl-$profile" "${paracrawl_updates[@]}"
  results+=("$runs/paracrawl-$profile/results.json")
  for name in $variants; do
    # shellcheck disable=SC2086  # the runner flags are several words on purpose
    runner scripts/experiments/noisy_multi30k.py --profile "$profile" --work "$m30k" \
      --noise 0.4 --seed 1 --systems gglm --tag "$name" --gglm-args="${flags[$name]}" \
      ${runner_flags[$name]:-}
  done
  probe "$m30k"
  for noise in $noise_levels; do
    systems=baseline,gglm,oracle,finetune
    [ "$noise" = 0 ] && systems=baseline,gglm,finetune
    runner scripts/experiments/noisy_multi30k.py --profile "$profile" \
      --work "$runs/m30k-$profile-p$noise" --noise "$noise" --seed 1 --systems "$systems"
    results+=("$runs/m30k-$profile-p$noise/results.json")
  done
done
# Archive each results file (small JSON) so the page can be made again where the runs are
# gone; a run missing here is taken from the archive.
page=()
mkdir -p "$docs/data"
for file in "${results[@]}"; do
  key=$(basename "$(dirname "$file")")
  [ "$(basename "$file")" = results.json ] || key="$key.$(basename "$file" .json)"
  if [ -f "$file" ]; then
    cp "$file" "$docs/data/$key.json"
    page+=("$file")
  elif [ -f "$docs/data/$key.json" ]; then
    page+=("$docs/data/$key.json")
  else
    page+=("$file")  # listed as not run
  fi
done
python scripts/experiments/make_results.py "${page[@]}" --out "$docs/results.md" \
  --command "scripts/experiments/run_all.sh --profiles \"$profiles\""
