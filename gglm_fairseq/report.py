"""Report on what GGLM masked: ranked examples, a filtered corpus, plots and detection AUCs.

Reads the per-example record written by training (``gglm_record.npz``, memory-mapped) and the
raw training corpus (example id i is line i of the files given to fairseq-preprocess). Every
input is checked before anything is written, and each output file is replaced atomically, so a
failing run (one line on stderr, exit 1) leaves ``--out`` as it was. Writes into ``--out``:

- ``ranked.tsv``: every pair with its mask statistics, most often masked first;
- ``filtered.<src ext>``, ``filtered.<tgt ext>``: the pairs whose mask rate is below
  ``--max-mask-rate`` (pairs never seen in training are kept);
- ``mask_rate_over_training.png``: the share of sentences masked per update, smoothed;
- with ``--labels``: ``mask_rate_by_label.png`` and ``auc.tsv``, the ROC-AUC of the mask rate
  as a detector of noisy pairs, overall and per label.

Usage::

    gglm-report --record checkpoints/gglm_record.npz --src train.en --tgt train.de \\
        [--labels train.labels] --out report/
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import sys
from typing import Collection, Dict, Iterator, List, NamedTuple, Sequence, Tuple

import numpy as np

# Importing fairseq (via the package) sets the root logger to DEBUG, and matplotlib logs its
# set-up as it is imported: on stderr, above a one-line error. Keep it to warnings, first.
logging.getLogger("matplotlib").setLevel(logging.WARNING)

from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from sklearn.metrics import roc_auc_score  # noqa: E402

from gglm_fairseq.errors import GGLMUserError  # noqa: E402
from gglm_fairseq.noise import read_lines, write_lines  # noqa: E402
from gglm_fairseq.record import RECORD_FILE, ExampleRecord, fit_to, write_atomically  # noqa: E402

OVERALL = "all"
RANKED_COLUMNS = (
    "id",
    "mask_rate",
    "times_seen",
    "times_masked",
    "alignment_mean",
    "alignment_last",
)


class ReportError(GGLMUserError):
    """A problem with the inputs, reported as one line."""


class _Stats(NamedTuple):
    """The record's per-example columns, cut or padded (as never seen) to the corpus length."""

    seen: np.ndarray
    masked: np.ndarray
    mask_rate: np.ndarray
    alignment_mean: np.ndarray
    alignment_last: np.ndarray
    history: np.ndarray

    @classmethod
    def fit(cls, record: ExampleRecord, size: int) -> _Stats:
        seen = fit_to(record.seen, size, 0)
        return cls(
            seen=seen,
            masked=fit_to(record.masked, size, 0),
            mask_rate=fit_to(record.mask_rate(), size),
            alignment_mean=fit_to(record.alignment_mean(), size),
            alignment_last=np.where(seen > 0, fit_to(record.alignment_last, size, 0), math.nan),
            history=record.history,
        )


def _auc_rows(
    mask_rate: Sequence[float], labels: Sequence[str], clean_labels: Collection[str]
) -> List[Tuple[str, int, int, float]]:
    """(comparison, n noisy, n clean, AUC) for all noisy pairs and for each noisy label."""
    rate = np.asarray(mask_rate, dtype=np.float64)
    if len(rate) != len(labels):
        raise ValueError(f"{len(rate)} mask rates but {len(labels)} labels")
    seen = ~np.isnan(rate)
    if isinstance(clean_labels, str):  # "clean,V" as on the command line, not its letters
        clean_labels = [x.strip() for x in clean_labels.split(",")]
    label = np.asarray(labels, dtype=object)
    is_clean = np.isin(label, list(clean_labels))
    clean_rate = rate[seen & is_clean]
    noisy_labels = sorted(set(label[seen & ~is_clean].tolist()))
    if OVERALL in noisy_labels:
        raise ValueError(f"a noisy label is called {OVERALL!r}, the name of the overall AUC")
    groups = [(OVERALL, seen & ~is_clean)] + [(x, seen & (label == x)) for x in noisy_labels]
    rows = []
    for name, selected in groups:
        noisy_rate = rate[selected]
        if len(noisy_rate) == 0 or len(clean_rate) == 0:
            continue  # AUC undefined without both classes
        truth = np.r_[np.ones(len(noisy_rate)), np.zeros(len(clean_rate))]
        auc = float(roc_auc_score(truth, np.r_[noisy_rate, clean_rate]))
        rows.append((name, len(noisy_rate), len(clean_rate), auc))
    return rows


def detection_auc(
    mask_rate: Sequence[float], labels: Sequence[str], clean_labels: Collection[str]
) -> Dict[str, float]:
    """ROC-AUC of the mask rate for telling noisy pairs (label not in clean_labels) from clean.

    Key ``"all"``: every noisy label against the clean pairs; one key per noisy label: that
    label against the clean pairs. Pairs never seen (mask rate NaN) are left out, and so is a
    comparison that lacks noisy or clean pairs. 1.0: every noisy pair is masked more often
    than every clean one; 0.5: chance. ``clean_labels`` may also be a comma-separated string
    (``"clean,V"``).
    """
    return {name: auc for name, _, _, auc in _auc_rows(mask_rate, labels, clean_labels)}


def _fmt(value: float) -> str:
    return "" if math.isnan(value) else f"{value:.6g}"


def _tsv_field(text: str) -> str:
    return text.replace("\t", " ")  # a tab inside a sentence would shift the columns


def _ranking(stats: _Stats) -> np.ndarray:
    """Ids by mask rate (highest first), then mean alignment (lowest first); unseen last."""
    rate, mean = stats.mask_rate, stats.alignment_mean
    unseen = np.isnan(rate)
    # lexsort: last key is primary. NaNs are replaced so they do not disturb the order.
    return np.lexsort(
        (
            np.arange(len(rate)),
            np.where(unseen, 0.0, mean),
            np.where(unseen, 0.0, -rate),
            unseen,
        )
    )


def _ranked_lines(
    stats: _Stats,
    source: List[str],
    target: List[str],
    labels: List[str] | None,
) -> Iterator[str]:
    """ranked.tsv, line by line: the header, then one pair per line in ranking order."""
    header = list(RANKED_COLUMNS) + (["label"] if labels is not None else []) + ["source", "target"]
    yield "\t".join(header)
    for i in _ranking(stats).tolist():
        fields = [
            str(i),
            _fmt(stats.mask_rate[i]),
            str(int(stats.seen[i])),
            _fmt(stats.masked[i]),
            _fmt(stats.alignment_mean[i]),
            _fmt(stats.alignment_last[i]),
        ]
        if labels is not None:
            fields.append(_tsv_field(labels[i]))
        fields += [_tsv_field(source[i]), _tsv_field(target[i])]
        yield "\t".join(fields)


def _filtered_paths(out: str, src: str, tgt: str) -> Tuple[str, str]:
    src_ext, tgt_ext = os.path.splitext(src)[1], os.path.splitext(tgt)[1]
    if not src_ext or not tgt_ext or src_ext == tgt_ext:
        src_ext, tgt_ext = ".src", ".tgt"  # the language suffixes do not tell the sides apart
    return os.path.join(out, "filtered" + src_ext), os.path.join(out, "filtered" + tgt_ext)


def _save(figure: Figure, path: str) -> None:
    FigureCanvasAgg(figure)
    figure.tight_layout()
    write_atomically(path, lambda f: figure.savefig(f, format="png", dpi=100))


def _plot_history(path: str, history: np.ndarray) -> None:
    figure = Figure(figsize=(7, 4))
    ax = figure.add_subplot()
    if len(history):
        update, sentences, masked = history.T
        ax.plot(update, masked / np.maximum(sentences, 1), color="0.75", lw=0.8, label="per update")
        # Ratio of windowed sums, so updates with more sentences weigh more.
        window = max(1, len(history) // 20)
        kernel = np.ones(window)
        smooth = np.convolve(masked, kernel, "valid") / np.maximum(
            np.convolve(sentences, kernel, "valid"), 1
        )
        ax.plot(update[window - 1 :], smooth, color="C0", lw=2, label=f"mean of {window} updates")
        ax.legend()
    else:
        ax.text(0.5, 0.5, "no history in the record", ha="center", va="center")
    ax.set_xlabel("update")
    ax.set_ylabel("share of sentences masked")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title("GGLM mask rate over training")
    _save(figure, path)


def _plot_by_label(
    path: str, mask_rate: np.ndarray, labels: List[str], clean_labels: Collection[str]
) -> None:
    label = np.asarray(labels, dtype=object)
    seen = ~np.isnan(mask_rate)
    present = set(label[seen].tolist())
    # Clean labels first, so the eye compares every noisy box with them.
    names = sorted(present, key=lambda x: (x not in clean_labels, x))
    data = [mask_rate[seen & (label == x)] for x in names]
    figure = Figure(figsize=(max(5, 1.1 * len(names) + 2), 4))
    ax = figure.add_subplot()
    if names:
        ax.boxplot(data, showmeans=True)
        ax.set_xticks(range(1, len(names) + 1))
        ax.set_xticklabels([f"{x}\n(n={len(d)})" for x, d in zip(names, data)])
    else:
        ax.text(0.5, 0.5, "no example seen in training", ha="center", va="center")
    ax.set_ylabel("mask rate")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title("GGLM mask rate by label")
    _save(figure, path)


def _load_inputs(args: argparse.Namespace) -> Tuple[_Stats, List[str], List[str]]:
    record_path = args.record
    if os.path.isdir(record_path):
        record_path = os.path.join(record_path, RECORD_FILE)
    if not os.path.isfile(record_path):
        raise ReportError(f"record not found: {record_path}")
    record = ExampleRecord.load(record_path, mmap=True)
    source, target = read_lines(args.src), read_lines(args.tgt)
    if len(source) != len(target):
        raise ReportError(f"{args.src} has {len(source)} lines but {args.tgt} has {len(target)}")
    seen_ids = np.flatnonzero(record.seen > 0)
    if len(seen_ids) and seen_ids[-1] >= len(source):
        raise ReportError(
            f"the record has example id {seen_ids[-1]} but the corpus has only {len(source)} "
            "lines: is it the corpus that was binarised for this training?"
        )
    return _Stats.fit(record, len(source)), source, target


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gglm-report",
        description="Rank training pairs by how often GGLM masked them, write a filtered "
        "corpus and plots, and score the mask rate against noise labels.",
    )
    parser.add_argument(
        "--record", required=True, help=f"the {RECORD_FILE} written by training, or its folder"
    )
    parser.add_argument("--src", required=True, help="raw training source, one sentence a line")
    parser.add_argument("--tgt", required=True, help="raw training target, line-aligned")
    parser.add_argument(
        "--labels", help="one label per corpus line (noise types, ParaCrawl V/F/E/MT/A/T/L, ...)"
    )
    parser.add_argument(
        "--clean-labels",
        default="clean,V",
        help="comma-separated label values that count as clean (default: clean,V)",
    )
    parser.add_argument(
        "--max-mask-rate",
        type=float,
        default=0.5,
        help="keep pairs whose mask rate is below this (default 0.5)",
    )
    parser.add_argument("--out", required=True, help="output folder (created if missing)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point (``gglm-report``); returns the exit status."""
    args = _parser().parse_args(argv)
    try:
        return _report(args)
    except (OSError, GGLMUserError) as error:
        print(f"gglm-report: error: {error}", file=sys.stderr)
        return 1


def _report(args: argparse.Namespace) -> int:
    stats, source, target = _load_inputs(args)
    labels = None
    if args.labels:
        labels = [line.strip() for line in read_lines(args.labels)]
        if len(labels) != len(source):
            raise ReportError(
                f"{args.labels} has {len(labels)} lines but the corpus has {len(source)}"
            )
    clean_labels = {x.strip() for x in args.clean_labels.split(",") if x.strip()}
    mask_rate = stats.mask_rate
    rows = []
    if labels is not None:
        try:
            rows = _auc_rows(mask_rate, labels, clean_labels)
        except ValueError as error:
            raise ReportError(str(error)) from error
    os.makedirs(args.out, exist_ok=True)

    write_lines(os.path.join(args.out, "ranked.tsv"), _ranked_lines(stats, source, target, labels))

    keep = np.isnan(mask_rate) | (mask_rate < args.max_mask_rate)
    kept = np.flatnonzero(keep).tolist()
    src_path, tgt_path = _filtered_paths(args.out, args.src, args.tgt)
    write_lines(src_path, [source[i] for i in kept])
    write_lines(tgt_path, [target[i] for i in kept])
    print(
        f"filtered: kept {len(kept)} of {len(source)} pairs, dropped {len(source) - len(kept)} "
        f"with mask rate >= {args.max_mask_rate:g} ({int(np.isnan(mask_rate).sum())} never seen, "
        f"kept) -> {src_path}, {tgt_path}"
    )

    _plot_history(os.path.join(args.out, "mask_rate_over_training.png"), stats.history)

    if labels is not None:
        _plot_by_label(
            os.path.join(args.out, "mask_rate_by_label.png"), mask_rate, labels, clean_labels
        )
        auc_lines = ["comparison\tn_noisy\tn_clean\tauc"]
        auc_lines += [f"{_tsv_field(name)}\t{n}\t{c}\t{auc:.6f}" for name, n, c, auc in rows]
        write_lines(os.path.join(args.out, "auc.tsv"), auc_lines)
        if not rows:
            print(
                f"ROC-AUC: not defined (needs seen pairs labelled {sorted(clean_labels)} "
                "and seen pairs with other labels)"
            )
        for name, n_noisy, n_clean, auc in rows:
            what = "noisy" if name == OVERALL else name
            print(f"ROC-AUC of mask rate, {what} ({n_noisy}) vs clean ({n_clean}): {auc:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
