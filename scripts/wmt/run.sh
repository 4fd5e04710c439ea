#!/usr/bin/env bash
# WMT reproduction of GGLM (Wang, Bapna, Johnson, Firat 2021): data, SentencePiece,
# binarisation, baseline and GGLM training, checkpoint averaging, decoding and sacreBLEU.
# Run with -h for the options; scripts/wmt/README.md documents the data exactly.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
PYTHON=${PYTHON:-python}

usage() {
  cat <<EOF
Usage: scripts/wmt/run.sh --pair en-de|en-fr|en-zh [options] [-- EXTRA fairseq-train args]

Stages (each skips what it already produced; delete a folder under WORK/PAIR to redo it):
  download  fetch the archives of the pair (the only stage that needs a network)
  prepare   extract (or copy --local files), normalise/clean, joint SentencePiece model,
            encode, binarise train/valid/test/clean with one joined dictionary
  train     train the baseline and/or GGLM system
  eval      average the last N checkpoints, fairseq-generate the test set, decode,
            score with sacreBLEU (tokenize zh for en-zh, 13a otherwise)
  all       all of the above (download is skipped with --local)

Options:
  --pair P            en-de | en-fr | en-zh (required)
  --stage S           download | prepare | train | eval | all        (default: all)
  --system S          baseline | gglm | both                         (default: both)
  --model M           base | big | tiny (tiny: 1+1 layers, 32 dims, for tests) (default: base)
  --work DIR          working folder                                 (default: REPO/work)
  --download-dir DIR  archives                                       (default: WORK/download)
  --local DIR         use local files, no download: either DIR/{train,valid,test,clean}.{src,tgt}
                      plain text (one segment a line), or a folder holding the archives
                      that the download stage would fetch
  --max-update N      training updates (default: base 100000, big 100000, tiny 20)
  --vocab-size N      joint SentencePiece vocabulary                 (default: 32000)
  --clean-size N      use the first N pairs of the clean newstest (default: all of it)
  --clean-max-tokens N  tokens per clean batch (GGLM; default: a quarter of --max-tokens)
  --num-average N     checkpoints to average (default: base 5, big 10, tiny 2)
  --max-tokens N      training tokens per batch and GPU (default: base/big 4096, tiny 1000)
  --update-freq N     gradient accumulation (default: base 8, big 16, tiny 1)
  --fp16              train and decode in fp16 (needs a GPU)
  --gglm-args "..."   extra arguments for the GGLM run only (e.g. "--gglm-engine jvp")
  --workers N         CPU workers for cleaning/SentencePiece/binarising (default: nproc)
  -h, --help          this text

Outputs under WORK/PAIR: raw/ clean/ spm/ encoded/ data-bin/ checkpoints/MODEL-SYSTEM/
eval/MODEL-SYSTEM/{bleu.txt,hyp.test.TGT} and results.txt (one line per system).
EOF
}

die() { echo "run.sh: error: $*" >&2; exit 1; }
say() { echo "[run.sh $(date +%H:%M:%S)] $*" >&2; }

PAIR="" STAGE=all SYSTEM=both MODEL=base WORK="$REPO/work" DOWNLOAD="" LOCAL=""
MAX_UPDATE="" VOCAB=32000 CLEAN_SIZE=0 CLEAN_MAX_TOKENS="" NUM_AVG="" MAX_TOKENS=""
UPDATE_FREQ="" FP16=0 GGLM_ARGS="" WORKERS=$(nproc 2>/dev/null || echo 1)
EXTRA=()
while [ $# -gt 0 ]; do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --pair) PAIR=${2:?--pair needs a value}; shift 2 ;;
    --stage) STAGE=${2:?--stage needs a value}; shift 2 ;;
    --system) SYSTEM=${2:?--system needs a value}; shift 2 ;;
    --model) MODEL=${2:?--model needs a value}; shift 2 ;;
    --work) WORK=${2:?--work needs a value}; shift 2 ;;
    --download-dir) DOWNLOAD=${2:?--download-dir needs a value}; shift 2 ;;
    --local) LOCAL=${2:?--local needs a value}; shift 2 ;;
    --max-update) MAX_UPDATE=${2:?--max-update needs a value}; shift 2 ;;
    --vocab-size) VOCAB=${2:?--vocab-size needs a value}; shift 2 ;;
    --clean-size) CLEAN_SIZE=${2:?--clean-size needs a value}; shift 2 ;;
    --clean-max-tokens) CLEAN_MAX_TOKENS=${2:?--clean-max-tokens needs a value}; shift 2 ;;
    --num-average) NUM_AVG=${2:?--num-average needs a value}; shift 2 ;;
    --max-tokens) MAX_TOKENS=${2:?--max-tokens needs a value}; shift 2 ;;
    --update-freq) UPDATE_FREQ=${2:?--update-freq needs a value}; shift 2 ;;
    --fp16) FP16=1; shift ;;
    --gglm-args) GGLM_ARGS=${2?--gglm-args needs a value}; shift 2 ;;
    --workers) WORKERS=${2:?--workers needs a value}; shift 2 ;;
    --) shift; EXTRA=("$@"); break ;;
    *) usage >&2; die "unknown option $1" ;;
  esac
done

case "$PAIR" in
  en-de|en-fr|en-zh) ;;
  "") usage >&2; die "--pair is required" ;;
  *) die "--pair must be en-de, en-fr or en-zh (got $PAIR)" ;;
esac
case "$STAGE" in download|prepare|train|eval|all) ;; *) die "bad --stage $STAGE" ;; esac
case "$SYSTEM" in baseline|gglm) SYSTEMS=("$SYSTEM") ;; both) SYSTEMS=(baseline gglm) ;;
  *) die "bad --system $SYSTEM" ;; esac
for n in VOCAB CLEAN_SIZE WORKERS; do
  [[ ${!n} =~ ^[0-9]+$ ]] || die "${n,,} must be a number (got ${!n})"
done
for n in MAX_UPDATE CLEAN_MAX_TOKENS NUM_AVG MAX_TOKENS UPDATE_FREQ; do
  [ -z "${!n}" ] || [[ ${!n} =~ ^[1-9][0-9]*$ ]] || die "${n,,} must be a positive number"
done
[ -z "$LOCAL" ] || [ -d "$LOCAL" ] || die "--local $LOCAL is not a folder"

SRC=${PAIR%-*}
TGT=${PAIR#*-}
if [ "$TGT" = zh ]; then BLEU_TOK=zh; else BLEU_TOK=13a; fi
mkdir -p "$WORK"
WORK=$(cd "$WORK" && pwd)
DOWNLOAD=${DOWNLOAD:-$WORK/download}
P=$WORK/$PAIR
RAW=$P/raw CLEAN=$P/clean SPM=$P/spm ENC=$P/encoded BIN=$P/data-bin
USER_DIR=$REPO/gglm_fairseq
if [ ! -f "$USER_DIR/__init__.py" ]; then
  USER_DIR=$(gglm-user-dir 2>/dev/null) || die "gglm_fairseq not found: pip install -e ."
fi
DATA=("$PYTHON" "$HERE/wmt_data.py")

# ---- model settings ------------------------------------------------------------------
case "$MODEL" in
  base)
    ARCH=(--arch transformer --dropout 0.1)
    LR=7e-4
    WARMUP=4000
    : "${MAX_UPDATE:=100000}" "${NUM_AVG:=5}" "${MAX_TOKENS:=4096}" "${UPDATE_FREQ:=8}"
    GEN=(--beam 4 --lenpen 0.6) ;;
  big)
    # fairseq's Transformer big; dropout 0.3 (0.1 for En-Fr, as in the Transformer paper)
    if [ "$PAIR" = en-fr ]; then DROPOUT=0.1; else DROPOUT=0.3; fi
    ARCH=(--arch transformer_wmt_en_de_big --dropout "$DROPOUT" --attention-dropout 0.1)
    LR=5e-4
    WARMUP=4000
    : "${MAX_UPDATE:=100000}" "${NUM_AVG:=10}" "${MAX_TOKENS:=4096}" "${UPDATE_FREQ:=16}"
    GEN=(--beam 4 --lenpen 0.6) ;;
  tiny)
    ARCH=(--arch transformer --encoder-layers 1 --decoder-layers 1
          --encoder-embed-dim 32 --decoder-embed-dim 32
          --encoder-ffn-embed-dim 64 --decoder-ffn-embed-dim 64
          --encoder-attention-heads 2 --decoder-attention-heads 2 --dropout 0.1)
    LR=1e-3
    WARMUP=10
    : "${MAX_UPDATE:=20}" "${NUM_AVG:=2}" "${MAX_TOKENS:=1000}" "${UPDATE_FREQ:=1}"
    GEN=(--beam 2 --max-len-a 0 --max-len-b 20) ;;  # an untrained model: keep outputs short
  *) die "--model must be base, big or tiny (got $MODEL)" ;;
esac
if [ "$MODEL" = tiny ]; then
  SAVE_INTERVAL=$(( MAX_UPDATE / 2 > 0 ? MAX_UPDATE / 2 : 1 ))
else
  SAVE_INTERVAL=2000
fi

need() { command -v "$1" >/dev/null 2>&1 || die "$1 not found: activate the environment (. .venv/bin/activate)"; }

# fairseq uses the GPUs it sees (all of them: set CUDA_VISIBLE_DEVICES to choose) and falls
# back to the CPU by itself; only --fp16 needs a check.
DEVICE=()
if [ "$FP16" = 1 ]; then
  "$PYTHON" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' \
    || die "--fp16 needs a GPU"
  DEVICE=(--fp16)
fi

# ---- stages --------------------------------------------------------------------------
stage_download() {
  if [ -n "$LOCAL" ]; then
    say "download: skipped (--local $LOCAL)"
    return
  fi
  say "download: archives for $PAIR into $DOWNLOAD"
  "${DATA[@]}" download --pair "$PAIR" --dir "$DOWNLOAD"
}

prepare_raw() {
  if [ -f "$RAW/.done" ]; then say "prepare/raw: have $RAW"; return; fi
  rm -rf "$RAW"
  if [ -n "$LOCAL" ] && [ -f "$LOCAL/train.$SRC" ]; then
    say "prepare/raw: plain-text files from $LOCAL"
    "${DATA[@]}" copy-local --pair "$PAIR" --local "$LOCAL" --out "$RAW" --clean-size "$CLEAN_SIZE"
  else
    local archives=${LOCAL:-$DOWNLOAD}
    say "prepare/raw: extracting from the archives in $archives"
    "${DATA[@]}" extract --pair "$PAIR" --download-dir "$archives" --out "$RAW" \
      --clean-size "$CLEAN_SIZE"
  fi
  touch "$RAW/.done"
}

prepare_clean() {
  if [ -f "$CLEAN/.done" ]; then say "prepare/clean: have $CLEAN"; return; fi
  rm -rf "$CLEAN"
  say "prepare/clean: normalising; filtering and deduplicating the training data"
  "${DATA[@]}" clean --pair "$PAIR" --raw "$RAW" --out "$CLEAN" --workers "$WORKERS"
  touch "$CLEAN/.done"
}

prepare_spm() {
  if [ -f "$SPM/spm.model" ]; then say "prepare/spm: have $SPM/spm.model"; return; fi
  say "prepare/spm: joint SentencePiece model, $VOCAB pieces"
  mkdir -p "$SPM"
  "${DATA[@]}" spm-train --pair "$PAIR" --data "$CLEAN" --model-prefix "$SPM/spm.part" \
    --vocab-size "$VOCAB" --workers "$WORKERS"
  mv "$SPM/spm.part.vocab" "$SPM/spm.vocab"
  mv "$SPM/spm.part.model" "$SPM/spm.model"
}

prepare_encode() {
  if [ -f "$ENC/.done" ]; then say "prepare/encode: have $ENC"; return; fi
  rm -rf "$ENC"
  say "prepare/encode: SentencePiece-encoding train/valid/test/clean"
  "${DATA[@]}" spm-encode --pair "$PAIR" --model "$SPM/spm.model" --data "$CLEAN" \
    --out "$ENC" --workers "$WORKERS"
  touch "$ENC/.done"
}

prepare_binarise() {
  if [ -f "$BIN/.done" ]; then say "prepare/binarise: have $BIN"; return; fi
  need fairseq-preprocess
  rm -rf "$BIN"
  say "prepare/binarise: fairseq-preprocess --joined-dictionary (clean split = valid1)"
  fairseq-preprocess --source-lang "$SRC" --target-lang "$TGT" \
    --trainpref "$ENC/train" --validpref "$ENC/valid,$ENC/clean" --testpref "$ENC/test" \
    --destdir "$BIN" --joined-dictionary --workers "$WORKERS"
  local f
  for f in "$BIN"/valid1.*; do
    mv "$f" "$BIN/clean.${f#"$BIN"/valid1.}"
  done
  [ -f "$BIN/clean.$SRC-$TGT.$SRC.bin" ] || die "no $BIN/clean.$SRC-$TGT.$SRC.bin after renaming"
  touch "$BIN/.done"
}

stage_prepare() {
  prepare_raw
  prepare_clean
  prepare_spm
  prepare_encode
  prepare_binarise
  say "prepare: done ($BIN)"
}

train_system() {
  local system=$1
  local save=$P/checkpoints/$MODEL-$system
  if [ -f "$save/train.done" ]; then say "train/$system: have $save (delete train.done to continue)"; return; fi
  [ -f "$BIN/.done" ] || die "no binarised data in $BIN: run --stage prepare first"
  need fairseq-train
  local task
  if [ "$system" = gglm ]; then
    # shellcheck disable=SC2206  # --gglm-args is split into words on purpose
    task=(--task translation_with_clean_set --clean-subset clean
          --criterion gradient_masked_cross_entropy ${GGLM_ARGS})
    [ -z "$CLEAN_MAX_TOKENS" ] || task+=(--clean-max-tokens "$CLEAN_MAX_TOKENS")
  else
    task=(--task translation --criterion label_smoothed_cross_entropy)
  fi
  mkdir -p "$save"
  say "train/$system: $MODEL model, $MAX_UPDATE updates -> $save"
  # --user-dir for the baseline too: importing the plugin lets torch>=2.6 load fairseq
  # checkpoints (resume); the baseline task and criterion are fairseq's own.
  fairseq-train "$BIN" --user-dir "$USER_DIR" "${task[@]}" \
    --source-lang "$SRC" --target-lang "$TGT" "${ARCH[@]}" --share-all-embeddings \
    --label-smoothing 0.1 --optimizer adam --adam-betas '(0.9, 0.98)' --clip-norm 0.0 \
    --lr "$LR" --lr-scheduler inverse_sqrt --warmup-updates "$WARMUP" --warmup-init-lr 1e-07 \
    --weight-decay 0.0 --max-tokens "$MAX_TOKENS" --update-freq "$UPDATE_FREQ" \
    --max-update "$MAX_UPDATE" --save-dir "$save" --save-interval-updates "$SAVE_INTERVAL" \
    --validate-interval-updates "$SAVE_INTERVAL" --keep-interval-updates "$(( NUM_AVG * 2 ))" \
    --no-epoch-checkpoints --skip-invalid-size-inputs-valid-test --seed 1 \
    --log-format simple --log-interval 100 "${DEVICE[@]}" "${EXTRA[@]}" \
    2>&1 | tee -a "$save/train.log"  # appended: a resumed run keeps the earlier log
  touch "$save/train.done"
}

stage_train() {
  local s
  for s in "${SYSTEMS[@]}"; do train_system "$s"; done
}

eval_system() {
  local system=$1
  local save=$P/checkpoints/$MODEL-$system
  local out=$P/eval/$MODEL-$system
  if [ -f "$out/bleu.txt" ]; then
    say "eval/$system: have $out/bleu.txt"
  else
    [ -f "$save/train.done" ] || die "no finished training in $save: run --stage train first"
    need fairseq-generate
    need sacrebleu
    mkdir -p "$out"
    say "eval/$system: averaging the last $NUM_AVG checkpoints of $save"
    "$PYTHON" "$HERE/average_checkpoints.py" --dir "$save" --num "$NUM_AVG" \
      --output "$out/checkpoint_avg.pt"
    local task=translation
    [ "$system" = baseline ] || task=translation_with_clean_set
    say "eval/$system: fairseq-generate on the test set"
    # --required-batch-size-multiple 1: with fairseq 0.12's default of 8, batch_by_size drops
    # the last batch when its size is not a multiple of 8 (fairseq issue #5036), i.e. up to
    # 7 test sentences would go untranslated.
    fairseq-generate "$BIN" --user-dir "$USER_DIR" --task "$task" \
      --source-lang "$SRC" --target-lang "$TGT" --path "$out/checkpoint_avg.pt" \
      --gen-subset test --max-tokens 8000 --required-batch-size-multiple 1 \
      "${GEN[@]}" "${DEVICE[@]}" > "$out/generate.test.txt"
    "${DATA[@]}" hyps --gen "$out/generate.test.txt" --model "$SPM/spm.model" \
      --out "$out/hyp.test.$TGT" --expect "$(wc -l < "$RAW/test.$TGT")"
    say "eval/$system: sacreBLEU against $RAW/test.$TGT (tokenize $BLEU_TOK)"
    sacrebleu "$RAW/test.$TGT" -i "$out/hyp.test.$TGT" -m bleu chrf --tokenize "$BLEU_TOK" \
      -f text > "$out/bleu.txt.part"
    mv "$out/bleu.txt.part" "$out/bleu.txt"
  fi
  local line
  line="$PAIR $MODEL $system $(head -n 1 "$out/bleu.txt" | sed 's/^ *//')"
  echo "$line"
  { grep -v "^$PAIR $MODEL $system " "$P/results.txt" 2>/dev/null || true; echo "$line"; } \
    > "$P/results.txt.part"
  mv "$P/results.txt.part" "$P/results.txt"
}

stage_eval() {
  local s
  for s in "${SYSTEMS[@]}"; do eval_system "$s"; done
}

say "pair $PAIR, stage $STAGE, system(s) ${SYSTEMS[*]}, model $MODEL, work $P"
case "$STAGE" in
  download) stage_download ;;
  prepare) stage_prepare ;;
  train) stage_train ;;
  eval) stage_eval ;;
  all) stage_download; stage_prepare; stage_train; stage_eval ;;
esac
say "done"
