"""Regenerate docs/results.md (and its PNG plots in docs/) from the runners' results JSONs.

::

    python scripts/experiments/make_results.py runs/*/results.json --out docs/results.md

Tables: BLEU/chrF per system and test set; GGLM variants by validation BLEU (test BLEU only as
a secondary column; the variant is chosen on validation); detection ROC-AUC per noise type and
per ParaCrawl label, next to bicleaner; with the commands, seeds, machine and run times.
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import statistics
import sys
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Tuple

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from names import (
    CLEAN_USERS,
    DEFAULT_CLEAN_SET,
    FINE_TUNED,
    SETUP_CHANGES,
    clean_suffix,
    system_name,
)

TESTS = ("test_2016_flickr", "test_2017_flickr")
NOISE_TYPES = ("misaligned", "untranslated", "wrong_language", "truncated", "shuffled")
PARACRAWL_LABELS = ("F", "E", "MT", "A", "T", "L")
RELEASES = ("v3", "v6", "v6.2", "v7")
# The controls of noisy_multi30k.py, and what each trains on in an update of the same size.
CONTROLS = {
    "baseline": "every pair of the noisy batch",
    "random-mask": "the noisy batch with a random share p of its sentences masked",
    "oracle-mask": "the noisy batch with exactly its injected-noise pairs masked (perfect mask)",
    "gglm": "the noisy batch with GGLM's mask",
    "oracle": "a full batch drawn from the uncorrupted pairs only",
}


def setup_text(setting: Dict) -> str:
    """The run's setup changes in words ("" for the default setup)."""
    parts = []
    if "dropout" in setting:
        parts.append(f"dropout {setting['dropout']}")
    if setting.get("subword_data") == "clean":
        parts.append("sentencepiece on the text before the noise")
    if "ffn" in setting:
        parts.append(f"FFN {setting['ffn']}")
    return ", ".join(parts)


def default_setup(results: Dict) -> bool:
    return not any(key in results["setting"] for key in SETUP_CHANGES)


def run_title(setting: Dict) -> str:
    """``noise 0.4, profile full, seed 1`` plus the setup changes."""
    changes = setup_text(setting)
    return (f"noise {setting['noise']}, profile {setting['profile']}, seed {setting['seed']}"
            + (f", {changes}" if changes else ""))  # fmt: skip


def fmt(value: Optional[float], digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.{digits}f}"


def table(header: List[str], rows: List[List[str]]) -> List[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def percent(value: Optional[float]) -> str:
    return "–" if value is None else f"{100 * value:.1f}%"


def minutes(seconds: Optional[float]) -> str:
    return "–" if seconds is None else f"{seconds / 60:.1f}"


def machine_text(machine: Dict) -> str:
    return (f"{machine.get('Model name', '?')}, {machine.get('CPU(s)', '?')} CPUs, torch threads "
            f"{machine.get('torch_threads', '?')}")  # fmt: skip


def trained_on_lines(systems: Dict) -> List[str]:
    """Which machine trained which system (the file's own machine is only its newest
    runner's): systems from before the runner recorded it are named as not recorded."""
    by_machine: Dict[str, List[str]] = {}
    for name, entry in systems.items():
        text = machine_text(entry["machine"]) if "machine" in entry else "not recorded"
        by_machine.setdefault(text, []).append(name)
    if list(by_machine) in ([], ["not recorded"]):
        return []
    return ["- trained on: " + "; ".join(f"{text}: {', '.join(names)}"
                                         for text, names in by_machine.items())]  # fmt: skip


def setting_lines(results: Dict) -> List[str]:
    machine = results.get("machine", {})
    profile = results.get("profile_config", {})
    lines = [
        f"- setting: `{json.dumps(results.get('setting'))}`",
        f"- model and budget: {profile.get('layers')}+{profile.get('layers')} layers, "
        f"{profile.get('dim')} dim, FFN {profile.get('ffn')}, {profile.get('heads')} heads, "
        f"shared embeddings, dropout {profile.get('dropout', 0.1)}; Adam (0.9, 0.98), "
        f"lr {profile.get('lr')}, "
        f"inverse_sqrt with {profile.get('warmup')} warm-up updates; label smoothing 0.1; "
        f"{profile.get('updates')} updates of <= {profile.get('max_tokens')} tokens; "
        f"beam {profile.get('beam')}; last checkpoint",
        f"- machine of the newest runner: {machine_text(machine)} (shared with other jobs "
        "while these ran)",
        *trained_on_lines(results.get("systems", {})),
        f"- data: `{json.dumps(results.get('data'))}`",
        "- commands:",
    ]
    # A command run again (to resume or add systems) is listed once.
    lines += [f"  - `{command}`" for command in dict.fromkeys(results.get("commands", []))]
    return lines


def bleu_plot(results: Dict, path: Path) -> None:
    systems = results["systems"]
    names = list(systems)
    figure = Figure(figsize=(max(6, 1.0 * len(names) + 2), 4))
    ax = figure.add_subplot()
    width = 0.8 / len(TESTS)
    for k, test in enumerate(TESTS):
        values = [systems[n].get(test, {}).get("bleu", float("nan")) for n in names]
        ax.bar([i + k * width for i in range(len(names))], values, width, label=test)
    ax.set_xticks([i + width * (len(TESTS) - 1) / 2 for i in range(len(names))])
    ax.set_xticklabels(names, rotation=30, ha="right")
    ax.set_ylabel("BLEU")
    ax.set_title(f"Noisy Multi30k, {results['setting']}")
    ax.legend()
    FigureCanvasAgg(figure)
    figure.tight_layout()
    figure.savefig(path, dpi=100)


def mask_rate_plot(mean_rates: Dict[str, float], title: str, path: Path) -> None:
    names = list(mean_rates)
    figure = Figure(figsize=(max(5, 0.9 * len(names) + 2), 3.5))
    ax = figure.add_subplot()
    ax.bar(range(len(names)), [mean_rates[n] for n in names], color="C0")
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names, rotation=20, ha="right")
    ax.set_ylabel("mean mask rate")
    ax.set_ylim(0, 1)
    ax.set_title(title)
    FigureCanvasAgg(figure)
    figure.tight_layout()
    figure.savefig(path, dpi=100)


def multi30k_section(results: Dict, key: str, docs: Path) -> List[str]:
    systems = results.get("systems", {})
    setting = results["setting"]
    lines = [f"## Noisy Multi30k en-de, {run_title(setting)}", ""]
    lines += setting_lines(results) + [""]
    unfinished = [name for name in asked_systems(results) if name not in systems]
    if unfinished:
        lines += ["Asked for by the commands above but not finished (no scores): "
                  + ", ".join(unfinished), ""]  # fmt: skip
    if not systems:
        return lines + ["No system finished.", ""]
    rows = []
    for name, entry in systems.items():
        row = [name, f"`{entry.get('gglm_args', '')}`" if entry.get("gglm_args") else ""]
        row.append(fmt(entry.get("valid", {}).get("bleu")))
        for test in TESTS:
            row += [fmt(entry.get(test, {}).get("bleu")), fmt(entry.get(test, {}).get("chrf"))]
        first_test = entry.get(TESTS[0], {})
        row.append(" / ".join(percent(first_test.get(k)) for k in ("copied", "french")))
        row += [minutes(entry.get("train_seconds")), minutes(entry.get("generate_seconds"))]
        rows.append(row)
    header = ["system", "extra flags", "valid BLEU"]
    for test in TESTS:
        header += [f"{test} BLEU", f"{test} chrF"]
    header += [f"{TESTS[0]} outputs copied / French", "train min", "generate min"]
    lines += table(header, rows) + [""]
    first = next(iter(systems.values()))
    lines += [
        f"sacrebleu signatures: BLEU `{first['valid']['bleu_signature']}`, "
        f"chrF `{first['valid']['chrf_signature']}`. Validation = the `valid_set` above. "
        "Outputs copied: identical to the English source; French: more French than German "
        "function words (a heuristic; the wrong-language noise is French).",
        "",
    ]
    plot = docs / f"results_{key}_bleu.png"
    bleu_plot(results, plot)
    lines += [f"![BLEU per system]({plot.name})", ""]
    lines += targets(systems)
    lines += controls(systems)

    gglm = {n: e for n, e in systems.items() if n.startswith("gglm") and "detection" in e}
    if gglm:
        lines += ["### Noise detection (ROC-AUC, noisy vs clean pairs)", ""]
        rows = []
        for name, entry in gglm.items():
            for score_name in ("mask_rate", "neg_alignment_mean", "neg_alignment_last"):
                aucs = entry["detection"].get(score_name)
                if aucs is None:
                    continue  # results written before this score existed
                rows.append(
                    [name, score_name, fmt(aucs.get("all"), 3)]
                    + [fmt(aucs.get(t), 3) for t in NOISE_TYPES]
                )
        lines += table(["system", "score", "all", *NOISE_TYPES], rows) + [""]
        lines += [
            "`mask_rate` = masked / seen per pair (the detector the targets refer to); "
            "`neg_alignment_mean` = minus the pair's mean alignment over the times it was seen "
            "(a continuous score, shown for comparison); `neg_alignment_last` = minus the "
            "alignment of the pair's last visit alone, in the last epoch (one decision late in "
            "training instead of the average over training).",
            "",
        ]
        main = gglm.get("gglm", next(iter(gglm.values())))
        plot = docs / f"results_{key}_mask_rate.png"
        mask_rate_plot(main["detection"]["mean_mask_rate"], "GGLM mean mask rate by label", plot)
        lines += [f"![mean mask rate by noise label]({plot.name})", ""]
    return lines


def asked_systems(results: Dict) -> List[str]:
    """The systems the runner's commands asked for, in order (named as the runner names them,
    from ``--tag``, ``--clean-set`` and ``--finetune-updates``)."""
    names: List[str] = []
    for command in results.get("commands", []):
        words = shlex.split(command)
        updates = flag_value(words, "--finetune-updates")
        for kind in (flag_value(words, "--systems") or "").split(","):
            if kind:  # an empty --systems asked for nothing
                names.append(system_name(kind, flag_value(words, "--tag") or "",
                                         flag_value(words, "--clean-set") or DEFAULT_CLEAN_SET,
                                         None if updates is None else int(updates)))  # fmt: skip
    return list(dict.fromkeys(names))


def flag_value(words: List[str], flag: str) -> Optional[str]:
    """The word after ``flag`` in a command (None without the flag)."""
    return words[words.index(flag) + 1] if flag in words else None


def clean_set(entry: Dict) -> str:
    """The clean set a system used (entries written before --clean-set used the default)."""
    return entry.get("clean_set", DEFAULT_CLEAN_SET)


def targets(systems: Dict) -> List[str]:
    """The issue's targets, measured: GGLM vs baseline and oracle, detection AUC."""
    if not all(n in systems for n in ("baseline", "gglm")):
        return []
    lines = ["### Targets", ""]
    rows = []
    for test in TESTS:
        base = systems["baseline"][test]["bleu"]
        ours = systems["gglm"][test]["bleu"]
        oracle = systems.get("oracle", {}).get(test, {}).get("bleu")
        closed = None
        if oracle is not None and oracle != base:
            closed = (ours - base) / (oracle - base)
        rows.append(
            [test, fmt(base), fmt(ours), fmt(ours - base), fmt(oracle),
             "–" if closed is None else f"{100 * closed:.0f}%",
             "yes" if ours - base >= 1.0 and (closed or 0) >= 0.5 else "no"]
        )  # fmt: skip
    header = ["test", "baseline", "gglm", "gain", "oracle", "gap closed", "target met"]
    lines += table(header, rows) + [""]
    auc = systems["gglm"].get("detection", {}).get("mask_rate", {}).get("all")
    if auc is not None:
        verdict = "met" if auc >= 0.85 else "not met"
        lines += [f"Detection AUC (mask rate, all noise) {auc:.3f}: target >= 0.85 {verdict}.", ""]
    return lines + [
        "Target: GGLM BLEU >= baseline + 1.0 on both tests and >= half the baseline-oracle "
        "gap closed.",
        "",
    ]


def controls(systems: Dict) -> List[str]:
    """Why GGLM wins or loses: the masking controls side by side, compared on validation."""
    present = [name for name in CONTROLS if name in systems]
    if not {"random-mask", "oracle-mask"} & set(present):
        return []
    lines = [
        "### What masking costs and what choosing gains (controls)",
        "",
        "The same pipeline, budget and renormalisation as GGLM with another mask; compared on "
        "validation BLEU.",
        "",
    ]
    rows = [
        [name, CONTROLS[name], fmt(systems[name]["valid"]["bleu"]),
         *(fmt(systems[name][test]["bleu"]) for test in TESTS)]
        for name in present
    ]  # fmt: skip
    lines += table(["system", "trains on", "valid BLEU", *(f"{t} BLEU" for t in TESTS)], rows)
    valid = {name: systems[name]["valid"]["bleu"] for name in present}
    comparisons = [
        ("random-mask", "baseline", "masking a random share of each batch (fewer tokens per "
         "update)"),
        ("oracle-mask", "random-mask", "choosing exactly the noisy pairs instead of random ones"),
        ("oracle-mask", "baseline", "a perfect mask against no mask"),
        ("gglm", "oracle-mask", "GGLM's mask against the perfect one"),
        ("oracle", "oracle-mask", "full clean batches against masked noisy batches"),
    ]  # fmt: skip
    lines += [""] + [
        f"- {text}: {valid[a] - valid[b]:+.2f} valid BLEU ({a} - {b})"
        for a, b, text in comparisons
        if a in valid and b in valid
    ]
    return lines + [""]


def variants_section(runs: List[Dict]) -> List[str]:
    rows = []
    for results in runs:
        # Ranked within each run: a variant is compared only with systems on the same data.
        entries = [(name, entry) for name, entry in results.get("systems", {}).items()
                   if (name.startswith("gglm") and clean_set(entry) == DEFAULT_CLEAN_SET)
                   or name == "baseline"]  # fmt: skip
        entries.sort(key=lambda item: -item[1]["valid"]["bleu"])
        rows += [(results["setting"], name, entry) for name, entry in entries]
    if not rows:
        return []
    lines = [
        "## GGLM variants (chosen on validation BLEU)",
        "",
        "Sorted by validation BLEU within each run; test BLEU is shown as a secondary column "
        "only and was not used to choose.",
        "",
    ]
    body = [
        [f"{s['profile']} p={s['noise']} seed {s['seed']}"
         + (f", {setup_text(s)}" if setup_text(s) else ""), name,
         f"`{entry.get('gglm_args', '')}`" if entry.get("gglm_args") else "",
         fmt(entry["valid"]["bleu"]), fmt(entry[TESTS[0]]["bleu"]), fmt(entry[TESTS[1]]["bleu"]),
         fmt(entry.get("detection", {}).get("mask_rate", {}).get("all"), 3),
         minutes(entry.get("train_seconds"))]
        for s, name, entry in rows
    ]  # fmt: skip
    header = ["run", "system", "flags", "valid BLEU", *(f"{t} BLEU" for t in TESTS),
              "AUC (mask rate)", "train min"]  # fmt: skip
    return lines + table(header, body) + [""]


def noise_levels_section(runs: List[Dict]) -> List[str]:
    """The main systems side by side across noise levels (validation BLEU), per profile."""
    names = ("baseline", "gglm", "oracle", "finetune", "finetune-gglm")
    # Seed 1 and the default setup only: the other seeds and setups have their own sections.
    runs = sorted((r for r in runs if r["setting"]["seed"] == 1 and default_setup(r)),
                  key=lambda r: (r["setting"]["profile"], -r["setting"]["noise"]))  # fmt: skip
    body = []
    for results in runs:
        systems = results.get("systems", {})
        if not {"baseline", "gglm"} <= set(systems):
            continue
        gains = [systems["gglm"][t]["bleu"] - systems["baseline"][t]["bleu"] for t in TESTS]
        rates = systems["gglm"].get("detection", {}).get("mean_mask_rate", {})
        noisy = [rate for label, rate in rates.items() if label != "clean"]
        body.append(
            [results["setting"]["profile"], str(results["setting"]["noise"])]
            + [fmt(systems.get(n, {}).get("valid", {}).get("bleu")) for n in names]
            + [" / ".join(fmt(g) for g in gains), fmt(rates.get("clean"), 3),
               fmt(sum(noisy) / len(noisy) if noisy else None, 3)]
        )  # fmt: skip
    if len(body) < 2:
        return []
    header = ["profile", "noise p", *(f"{n} valid BLEU" for n in names),
              "gglm − baseline, test BLEU (2016 / 2017)", "GGLM mask rate, clean pairs",
              "GGLM mask rate, noisy pairs (mean over types)"]  # fmt: skip
    return [
        "## Across noise levels (noisy Multi30k, seed 1)",
        "",
        "Validation BLEU (oracle is not trained at noise 0: it would see the baseline's "
        "data; the fine-tuned systems are favoured on validation, whose pairs come from the "
        "same file as the clean set). The mask rate of clean pairs is how much clean data "
        "GGLM throws away.",
        "",
        *table(header, body),
        "",
    ]


def probe_section(results: Dict) -> List[str]:
    """alignment_probe.py: detection at a fixed model, by clean gradient and parameter group."""
    work = Path(results["work"]).name
    lines = [
        f"## Alignment probe: {results['system']} of `{work}` (a fixed model, nothing trained)",
        "",
        f"`{results['command']}`: the exact alignment of {results['pairs']} random training "
        f"pairs against the gradient of the whole clean set ({results['clean_pairs']} pairs) "
        f"or of one clean batch ({', '.join(map(str, results['clean_batch_tokens']))} target "
        "tokens), over all parameters or one group (the direction is zero elsewhere), with "
        "dropout off or on. AUC: ROC-AUC of minus the alignment, noisy vs clean; masked: the "
        "share with alignment <= 0, what GGLM would mask.",
        "",
    ]
    body = [
        [row["direction"], row["parameters"], "on" if row["dropout"] else "off",
         fmt(row["cosine_with_whole"], 3), fmt(row["clean_masked"], 3),
         fmt(row["noisy_masked"], 3), fmt(row["auc"].get("all"), 3)]
        + [fmt(row["auc"].get(t), 3) for t in NOISE_TYPES]
        for row in results["rows"]
    ]  # fmt: skip
    header = ["clean gradient", "parameters", "dropout", "cosine with whole set",
              "clean masked", "noisy masked", "AUC all", *NOISE_TYPES]  # fmt: skip
    return lines + table(header, body) + [""]


def paracrawl_section(results: Dict, key: str, docs: Path) -> List[str]:
    lines = [f"## ParaCrawl en-de with human labels (profile {results['setting']['profile']})", ""]
    lines += setting_lines(results) + [""]
    lines += [
        "Design: the 5,000 labelled ParaCrawl pairs are part of the training data (after "
        "Multi30k pairs) and GGLM's per-pair mask rate is scored against the labels; V = "
        "clean, every other label = noisy. Clean set: "
        f"{results.get('data', {}).get('clean_set')}, which shares no pair with the scored "
        "set (a news test set, closer to web text than captions; all labelled pairs stay "
        "scored). Bicleaner = the score shipped in the files (lower = noisier).",
        "",
    ]
    for name, entry in results.get("systems", {}).items():
        detection = entry["detection"]
        rows = []
        for detector in ("gglm_mask_rate", "gglm_neg_alignment_mean", "bicleaner_neg_score"):
            per = detection[detector]
            rows.append(
                [detector, fmt(per["pooled"].get("all"), 3)]
                + [fmt(per[r].get("all"), 3) for r in RELEASES]
                + [fmt(per["pooled"].get(label), 3) for label in PARACRAWL_LABELS]
            )
        header = ["detector", "V vs rest (pooled)", *(f"{r}" for r in RELEASES),
                  *(f"V vs {label}" for label in PARACRAWL_LABELS)]  # fmt: skip
        lines += [f"### {name} (train {minutes(entry.get('train_seconds'))} min)", ""]
        lines += table(header, rows) + [""]
        plot = docs / f"results_{key}_{name}_mask_rate.png"
        mask_rate_plot(detection["mean_mask_rate"], "GGLM mean mask rate by ParaCrawl label", plot)
        lines += [f"![mean mask rate by label]({plot.name})", ""]
        ours = detection["gglm_mask_rate"]["pooled"].get("all", float("nan"))
        theirs = detection["bicleaner_neg_score"]["pooled"].get("all", float("nan"))
        verdict = "above" if ours > theirs else "not above"
        lines += [
            f"GGLM mask-rate AUC {ours:.3f} vs bicleaner {theirs:.3f} (pooled): {verdict}.",
            "",
        ]
    return lines


# The systems compared over seeds, and the targets between them (on both tests).
# run_all.sh's full variants, by their runner tags: keep-tokens; its control at equal
# candidate cost, mask-only GGLM on the same larger batches; the baseline on those batches,
# what the larger batch gives without any mask.
KEEP_TOKENS_TAG, EQUAL_CANDIDATES_TAG, LARGE_BATCH_TAG = "keep-tokens", "mask-8192", "8192"
KEEP_TOKENS = system_name("gglm", KEEP_TOKENS_TAG)
EQUAL_CANDIDATES = system_name("gglm", EQUAL_CANDIDATES_TAG)
LARGE_BASELINE = system_name("baseline", LARGE_BATCH_TAG)


def chosen_row(kind: str, tag: str = "") -> str:
    """The row of a fine-tuned system whose recipe each seed chose on validation."""
    return f"{system_name(kind, tag)}, recipe chosen on valid"


CHOSEN = {kind: chosen_row(kind) for kind in FINE_TUNED}
# The fine-tuned systems whose recipes are chosen per seed, as (kind, tag): the defaults, and
# those starting from keep-tokens, its control and the baseline on the same larger batches.
RECIPE_CHOICES = (*((kind, "") for kind in FINE_TUNED), ("finetune", LARGE_BATCH_TAG),
                  ("finetune-gglm", KEEP_TOKENS_TAG),
                  ("finetune-gglm", EQUAL_CANDIDATES_TAG))  # fmt: skip
LARGE_BASELINE_TUNED, KEEP_TOKENS_TUNED, EQUAL_CANDIDATES_TUNED = (
    chosen_row(kind, tag) for kind, tag in RECIPE_CHOICES[len(FINE_TUNED):])
SEEDED = ("baseline", "baseline-long", "filtered", LARGE_BASELINE, "gglm", KEEP_TOKENS,
          EQUAL_CANDIDATES, "finetune", CHOSEN["finetune"], "finetune-gglm",
          CHOSEN["finetune-gglm"], LARGE_BASELINE_TUNED, KEEP_TOKENS_TUNED, EQUAL_CANDIDATES_TUNED,
          "oracle")  # fmt: skip
SETS = ("valid", *TESTS)


def recipes_tried(systems: Dict) -> List[int]:
    """The ``--finetune-updates`` values of a run's fine-tuned systems."""
    return sorted({e["finetune_updates"] for e in systems.values() if "finetune_updates" in e})


# A chosen recipe: its --finetune-updates (None for the default), its entry, how many were tried.
ChosenRecipe = Tuple[Optional[int], Dict, int]


def chosen_recipe(systems: Dict, kind: str, clean: str, tag: str = "") -> Optional[ChosenRecipe]:
    """The fine-tuned system of ``kind`` (and ``tag``) on ``clean`` with the best validation
    BLEU among the recipes tried (the default and each ``--finetune-updates``); None when none
    was run."""
    tried = [(updates, systems[n]) for updates in (None, *recipes_tried(systems))
             if (n := system_name(kind, tag, clean, updates)) in systems]  # fmt: skip
    if not tried:
        return None
    updates, best = max(tried, key=lambda item: item[1]["valid"]["bleu"])
    return updates, best, len(tried)


def with_chosen_recipes(results: Dict) -> Dict:
    """``results`` with a chosen row per ``RECIPE_CHOICES`` where more than one recipe was
    tried on the default clean set (the seeds table compares like with like)."""
    systems = dict(results.get("systems", {}))
    for kind, tag in RECIPE_CHOICES:
        chosen = chosen_recipe(systems, kind, DEFAULT_CLEAN_SET, tag)
        if chosen and chosen[2] > 1:
            updates = chosen[0] or results.get("profile_config", {}).get("finetune_updates")
            systems[chosen_row(kind, tag)] = chosen[1] | {"chosen_updates": updates}
    return results | {"systems": systems}


def mean_sd(values: List[float]) -> Tuple[Optional[float], Optional[float]]:
    if not values:
        return None, None
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, None
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def mean_sd_text(values: List[float]) -> str:
    mean, sd = mean_sd(values)
    if mean is None:
        return "–"
    return f"{mean:.2f}" + ("" if sd is None else f" ± {sd:.2f}") + f" (n={len(values)})"


def by_profile_and_noise(runs: Iterable[Dict]) -> Dict[Tuple[str, float], List[Dict]]:
    """The runs grouped by profile and noise level, in the order given."""
    groups: Dict[Tuple[str, float], List[Dict]] = {}
    for results in runs:
        setting = results["setting"]
        groups.setdefault((setting["profile"], setting["noise"]), []).append(results)
    return groups


def seed_groups(runs: List[Dict]) -> Dict[Tuple[str, float], List[Dict]]:
    """Noisy-Multi30k runs of one profile and noise level in the default setup, one per seed."""
    groups = by_profile_and_noise(filter(default_setup, runs))
    return {k: sorted(v, key=lambda r: r["setting"]["seed"]) for k, v in groups.items()
            if len({r["setting"]["seed"] for r in v}) > 1}  # fmt: skip


def scores(group: List[Dict], system: str, subset: str) -> List[float]:
    return [r["systems"][system][subset]["bleu"] for r in group
            if subset in r.get("systems", {}).get(system, {})]  # fmt: skip


def difference(group: List[Dict], ours: str, theirs: str, subset: str) -> List[float]:
    """Per seed: BLEU of ``ours`` minus ``theirs`` (paired: same data, same seed)."""
    return [r["systems"][ours][subset]["bleu"] - r["systems"][theirs][subset]["bleu"]
            for r in group if ours in r.get("systems", {}) and theirs in r["systems"]]  # fmt: skip


def curve_plot(group: List[Dict], path: Path) -> bool:
    """Validation BLEU against training seconds, every system with a curve, every seed."""
    figure = Figure(figsize=(7, 4.5))
    ax = figure.add_subplot()
    colours: Dict[str, str] = {}
    drawn = False
    for results in group:
        for name, entry in results.get("systems", {}).items():
            points = entry.get("curve")
            if not points:
                continue
            colour = colours.setdefault(name, f"C{len(colours)}")
            label = None if name in ax.get_legend_handles_labels()[1] else name
            ax.plot([p["seconds"] / 60 for p in points], [p["valid_bleu"] for p in points],
                    marker="o", color=colour, label=label)  # fmt: skip
            drawn = True
    if not drawn:
        return False
    ax.set_xlabel("training minutes (fairseq's wall clock, as logged)")
    ax.set_ylabel("validation BLEU")
    ax.set_title("BLEU against training time (one line per seed)")
    ax.legend()
    FigureCanvasAgg(figure)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    return True


def seeds_section(runs: List[Dict], docs: Path) -> List[str]:
    """Mean ± sd over seeds of the compared systems, the paired differences the targets name,
    and the BLEU-vs-time plot."""
    lines: List[str] = []
    for (profile, noise), group in seed_groups(runs).items():
        group = [with_chosen_recipes(r) for r in group]
        seeds = [r["setting"]["seed"] for r in group]
        lines += [f"## Over seeds: noisy Multi30k, noise {noise}, profile {profile}", "",
                  f"Seeds {seeds} (each seed is its own noise injection, sentencepiece model "
                  "and training seed). Mean ± sample standard deviation over the seeds that "
                  "finished the system; n says how many.", ""]  # fmt: skip
        systems = [s for s in SEEDED if any(s in r.get("systems", {}) for r in group)]
        rows = []
        for system in systems:
            row = [system] + [mean_sd_text(scores(group, system, subset)) for subset in SETS]
            minutes_ = [r["systems"][system]["train_seconds"] / 60 for r in group
                        if system in r.get("systems", {})]  # fmt: skip
            row.append(mean_sd_text(minutes_))
            aucs = [r["systems"][system]["detection"]["mask_rate"]["all"] for r in group
                    if "detection" in r.get("systems", {}).get(system, {})]  # fmt: skip
            row.append(mean_sd_text(aucs) if aucs else "–")
            rows.append(row)
        lines += table(["system", *[f"{s} BLEU" for s in SETS], "train min", "detection AUC"],
                       rows) + [""]  # fmt: skip
        pairs = [("gglm", "baseline"), ("gglm", "baseline-long"), ("filtered", "baseline"),
                 ("gglm", "filtered"), ("filtered", "finetune"), ("filtered", CHOSEN["finetune"]),
                 ("finetune-gglm", "finetune"),
                 ("gglm", "finetune"), ("gglm", CHOSEN["finetune"]), (KEEP_TOKENS, "baseline"),
                 (KEEP_TOKENS, "gglm"), (KEEP_TOKENS, EQUAL_CANDIDATES),
                 (KEEP_TOKENS, LARGE_BASELINE), (EQUAL_CANDIDATES, LARGE_BASELINE),
                 (KEEP_TOKENS, CHOSEN["finetune"]), (KEEP_TOKENS_TUNED, CHOSEN["finetune"]),
                 (KEEP_TOKENS_TUNED, LARGE_BASELINE_TUNED),
                 (EQUAL_CANDIDATES_TUNED, CHOSEN["finetune"]),
                 (LARGE_BASELINE_TUNED, CHOSEN["finetune"])]  # fmt: skip
        rows = []
        for ours, theirs in pairs:
            for subset in SETS:
                diffs = difference(group, ours, theirs, subset)
                mean, sd = mean_sd(diffs)
                if mean is None:
                    continue
                real = "–" if sd is None else ("yes" if abs(mean) > sd else "no")
                rows.append([f"{ours} − {theirs}", subset, mean_sd_text(diffs),
                             ", ".join(f"{d:+.2f}" for d in diffs), real])  # fmt: skip
        if rows:
            lines += ["Paired differences (same seed, same data):", ""]
            lines += table(["difference", "set", "mean ± sd", "per seed",
                            "|mean| > sd"], rows) + [""]  # fmt: skip
            lines += ["A difference is called real here only when its mean exceeds the seed "
                      f"spread (|mean| > sd); with {len(group)} seeds that is a weak test.",
                      ""]  # fmt: skip
        chosen = [f"{system_name(kind, tag)} seed {r['setting']['seed']}: "
                  f"{r['systems'][n]['chosen_updates']}"
                  for kind, tag in RECIPE_CHOICES for r in group
                  if (n := chosen_row(kind, tag)) in r["systems"]]  # fmt: skip
        if chosen:
            lines += ["Recipes chosen on validation (fine-tuning updates): "
                      + ", ".join(chosen) + ". The target compares GGLM with this row: "
                      "GGLM >= fine-tuning + 0.5 BLEU on both tests, mean over seeds.", ""]
        plot = docs / f"results_m30k-{profile}-p{noise}_seeds_curve.png"
        if curve_plot(group, plot):
            lines += [f"![validation BLEU against training time]({plot.name})", "",
                      "Each point is an interval checkpoint (`--curve-every`); the x axis is "
                      "the training time fairseq logged, on the shared 2-core machine (runs "
                      "of the two lanes overlapped, so the times are comparable only roughly).",
                      ""]  # fmt: skip
    return lines


def with_gain(entry: Optional[Dict], baseline: Dict) -> str:
    """BLEU valid / test / test and the gain over ``baseline`` on the tests."""
    if entry is None:
        return bleu_triple(entry)
    delta = " / ".join(f"{entry[t]['bleu'] - baseline[t]['bleu']:+.2f}" for t in TESTS)
    return bleu_triple(entry) + f" (Δ {delta})"


def clean_sets_section(runs: List[Dict]) -> List[str]:
    """GGLM and fine-tuning with other clean sets (another domain, tiny sets) beside the
    default one, on the same noisy data; the baseline is shared."""
    lines: List[str] = []
    for results in runs:
        systems = results.get("systems", {})
        others = results.get("data", {}).get("clean_sets", {})
        if not others or "baseline" not in systems:
            continue
        setting = results["setting"]
        described = {DEFAULT_CLEAN_SET: {"pairs": None, "text": results["data"].get("clean_set")},
                     **others}  # fmt: skip
        baseline = systems["baseline"]
        lines += [f"## Other clean sets: noisy Multi30k, noise {setting['noise']}, profile "
                  f"{setting['profile']}, seed {setting['seed']}", "",
                  "Fine-tuning trains on the clean set; GGLM uses it only as a direction. "
                  "Same noisy data, model and budgets as the default clean set; the baseline "
                  "(trained without a clean set) is shared: BLEU "
                  + " / ".join(fmt(baseline[s]["bleu"]) for s in SETS) + f" (valid / {TESTS[0]}"
                  f" / {TESTS[1]}, as below); Δ = minus the baseline on the two tests.", ""]
        # Fine-tuning recipes (--finetune-updates) beside the default: the best on validation.
        recipes = recipes_tried(systems)
        default_updates = results.get("profile_config", {}).get("finetune_updates")
        rows = []
        for name, about in described.items():
            suffix = clean_suffix(name)
            row = [f"{name}: {about['text']}"]
            for system in CLEAN_USERS:
                entry = systems.get(system + suffix)
                row.append(with_gain(entry if entry and clean_set(entry) == name else None,
                                     baseline))  # fmt: skip
            for system in FINE_TUNED if recipes else ():
                chosen = chosen_recipe(systems, system, name)
                if chosen is None:
                    row.append("not run")
                    continue
                updates, best, tried = chosen
                row.append(f"{updates or default_updates} updates: {with_gain(best, baseline)} "
                           f"(of {tried})")
            detection = systems.get("gglm" + suffix, {}).get("detection", {})
            row.append(fmt(detection.get("mask_rate", {}).get("all"), 3))
            row.append(percent(detection.get("mean_mask_rate", {}).get("clean")))
            row.append(minutes(systems.get("gglm" + suffix, {}).get("train_seconds")))
            rows.append(row)
        header = ["clean set", *CLEAN_USERS, "GGLM AUC (mask rate)", "GGLM: clean pairs masked",
                  "GGLM train min"]  # fmt: skip
        if recipes:  # after the CLEAN_USERS columns, as in the rows
            where = 1 + len(CLEAN_USERS)
            header[where:where] = list(CHOSEN.values())
        lines += table(header, rows) + [""]
        if recipes:
            lines += [f"Recipes: {default_updates} updates (the default) and "
                      + ", ".join(str(r) for r in recipes if r != default_updates)
                      + " updates at the same learning rate, the one with the best validation "
                      "BLEU shown with how many were tried (validation is in-domain and larger "
                      "than the tiny sets: choosing on it favours fine-tuning).", ""]
    return lines


def bleu_triple(entry: Optional[Dict]) -> str:
    """valid / test 2016 / test 2017 BLEU of a system ("not run" without it)."""
    if entry is None:
        return "not run"
    return " / ".join(fmt(entry[subset]["bleu"]) for subset in SETS)


def gglm_variant_views(results: Dict) -> List[Tuple[str, Dict]]:
    """A changed setup's run labelled by its setup, then once per tagged GGLM of the default
    clean set (``gglm-T``, its flags added to the label) with that GGLM and its fine-tuned model
    in the places of ``gglm`` and ``finetune-gglm``: a variant tried in that setup is compared
    with the same baseline and fine-tuned baseline."""
    label = setup_text(results["setting"])
    views = [(label, results)]
    systems = results.get("systems", {})
    for name, entry in sorted(systems.items()):
        if not name.startswith("gglm-") or clean_set(entry) != DEFAULT_CLEAN_SET:
            continue
        tag = name[len("gglm-"):]
        swapped = {n: e for n, e in systems.items() if n not in ("gglm", "finetune-gglm")}
        swapped["gglm"] = entry
        tuned = systems.get(system_name("finetune-gglm", tag))
        if tuned is not None:
            swapped["finetune-gglm"] = tuned
        flags = entry.get("gglm_args") or tag
        views.append((f"{label} + `{flags}`", results | {"systems": swapped}))
    return views


def setups_section(runs: List[Dict]) -> List[str]:
    """The same comparison with one part of the setup changed (dropout, what the subword model
    saw), beside the default setup of the same profile, noise and seed."""
    default = {tuple(r["setting"][k] for k in ("profile", "noise", "seed")): r
               for r in runs if default_setup(r)}  # fmt: skip
    changed = [r for r in runs if not default_setup(r)]
    if not changed:
        return []
    lines = ["## Other setups: which part of the setup decides GGLM's gain", "",
             "One part of the setup changed at a time, the rest as in the run of the same "
             "profile, noise and seed above (the same seed: the same noise injection). "
             "BLEU valid / test_2016_flickr / test_2017_flickr; target: GGLM >= baseline + 1 "
             "on both tests.", ""]  # fmt: skip
    rows = []
    shown = set()  # the default run's row comes once, before its first changed setup
    for results in changed:
        setting = results["setting"]
        key = (setting["profile"], setting["noise"], setting["seed"])
        base = None if key in shown else default.get(key)
        shown.add(key)
        for label, run in [("default", base), *gglm_variant_views(results)]:
            if run is None:
                continue
            systems = run.get("systems", {})
            row = [f"{setting['profile']} p={setting['noise']} seed {setting['seed']}", label]
            row += [bleu_triple(systems.get(n)) for n in ("baseline", *CLEAN_USERS)]
            if {"baseline", "gglm"} <= set(systems):
                gains = [difference([run], "gglm", "baseline", t)[0] for t in TESTS]
                row += [" / ".join(f"{g:+.2f}" for g in gains),
                        "yes" if min(gains) >= 1.0 else "no"]  # fmt: skip
            else:
                row += ["–", "–"]
            detection = systems.get("gglm", {}).get("detection", {})
            row += [fmt(detection.get("mask_rate", {}).get("all"), 3),
                    percent(detection.get("mean_mask_rate", {}).get("clean")),
                    " / ".join(percent(systems.get(n, {}).get(TESTS[0], {}).get("french"))
                               for n in ("baseline", "gglm"))]  # fmt: skip
            rows.append(row)
    header = ["run", "setup", "baseline", *CLEAN_USERS, "gglm − baseline (tests)",
              "target met", "GGLM AUC (mask rate)", "GGLM: clean pairs masked",
              f"French outputs on {TESTS[0]}: baseline / gglm"]  # fmt: skip
    return lines + table(header, rows) + [""] + setups_over_seeds(runs)


def setups_over_seeds(runs: List[Dict]) -> List[str]:
    """Per setup (the default one included), GGLM's gain over the baseline and fine-tuned
    GGLM's over the fine-tuned baseline on the tests: mean ± sd over the seeds that ran both.
    The target is met when the mean gain is at least 1 BLEU on both tests."""
    groups: Dict[Tuple[str, float, str], List[Dict]] = {}
    for results in runs:
        setting = results["setting"]
        # The default setup's own variants have their sections; a changed setup's are here.
        views = gglm_variant_views(results) if setup_text(setting) else [("default", results)]
        for label, view in views:
            groups.setdefault((setting["profile"], setting["noise"], label), []).append(view)
    rows = []
    for (profile, noise, label), group in sorted(groups.items()):
        paired = [r for r in group if {"gglm", "baseline"} <= set(r.get("systems", {}))]
        if not paired:
            continue
        gains = [difference(paired, "gglm", "baseline", test) for test in TESTS]
        met = "yes" if min(mean_sd(g)[0] for g in gains) >= 1.0 else "no"
        seeds = sorted(r["setting"]["seed"] for r in paired)
        rows.append([f"{profile} p={noise}", label, ", ".join(map(str, seeds)),
                     *[mean_sd_text(g) for g in gains], met,
                     *[mean_sd_text(difference(group, "finetune-gglm", "finetune", test))
                       for test in TESTS]])  # fmt: skip
    if len({row[1] for row in rows}) < 2:
        return []  # no changed setup has both systems yet
    header = ["run", "setup", "seeds", *[f"gglm − baseline {t}" for t in TESTS],
              "target met (mean >= +1 on both)",
              *[f"finetune-gglm − finetune {t}" for t in TESTS]]  # fmt: skip
    return ["Over seeds, per setup (paired differences, same seed and data; mean ± sd):",
            ""] + table(header, rows) + [""]  # fmt: skip


def correlation_text(xs: List[float], ys: List[float]) -> str:
    """Pearson's r of two series, "–" where one is constant (r is undefined)."""
    if len(set(xs)) < 2 or len(set(ys)) < 2:
        return "–"
    return f"{statistics.correlation(xs, ys):+.2f}"


def gain_follows_baseline(runs: List[Dict]) -> List[str]:
    """Per profile and noise, over every run with both systems (each seed, each setup): how
    much the baseline's and GGLM's scores vary, whether GGLM's follows the baseline's, and
    whether GGLM's gain shrinks as the baseline's validation BLEU rises."""
    groups = by_profile_and_noise(
        r for r in runs if {"baseline", "gglm"} <= set(r.get("systems", {})))
    rows = []
    for (profile, noise), group in sorted(groups.items()):
        if len(group) < 3:
            continue  # a correlation of two points says nothing
        base_valid = scores(group, "baseline", "valid")
        row = [f"{profile} p={noise}", str(len(group))]
        for subset in SETS:
            base, ours = scores(group, "baseline", subset), scores(group, "gglm", subset)
            gain = difference(group, "gglm", "baseline", subset)
            row += [f"{mean_sd(base)[1]:.2f} / {mean_sd(ours)[1]:.2f}",
                    correlation_text(base, ours), correlation_text(base_valid, gain)]
        rows.append(row)
    if not rows:
        return []
    header = ["run", "runs"]
    for subset in SETS:
        header += [f"{subset}: sd baseline / gglm", f"{subset}: r(baseline, gglm)",
                   f"{subset}: r(baseline valid, gglm − baseline)"]  # fmt: skip
    return ["Does GGLM's gain follow how far the noise pulled the baseline down? Over every run "
            "with both systems (each seed and setup above): the spread of each system's BLEU "
            "(sample sd), the correlation of GGLM's BLEU with the baseline's, and of GGLM's gain "
            "with the baseline's validation BLEU (the gain holds the baseline's own run noise "
            "with a minus sign, which alone makes that correlation negative).",
            ""] + table(header, rows) + [""]  # fmt: skip


def failed_outputs(entry: Dict, subset: str) -> Optional[float]:
    """Percent of a system's outputs on ``subset`` that copy the source plus those in French
    (the two things the untranslated and wrong-language noise teach); None where not recorded."""
    shares = entry.get(subset, {})
    if "copied" not in shares or "french" not in shares:
        return None
    return 100 * (shares["copied"] + shares["french"])


def gain_follows_failed_outputs(runs: List[Dict]) -> List[str]:
    """Per profile, noise and evaluation set, over every run with both systems: how much of
    GGLM's gain over the baseline is fewer copied or French outputs (a least-squares line of
    the gain on the change in their share) and, where measured, the gain on the sentences
    where both systems translate."""
    groups = by_profile_and_noise(
        r for r in runs if {"baseline", "gglm"} <= set(r.get("systems", {})))
    rows = []
    for (profile, noise), group in sorted(groups.items()):
        for subset in SETS:
            points = []  # (change in failed outputs, change in copied, in French, gain)
            translated = []  # measured where the runner had both systems' outputs
            for results in group:
                base, ours = results["systems"]["baseline"], results["systems"]["gglm"]
                record = ours.get(subset, {}).get("both_translated", {})
                if "bleu" in record:
                    translated.append(record)
                before, after = failed_outputs(base, subset), failed_outputs(ours, subset)
                if before is None or after is None:
                    continue
                points.append((after - before,
                               100 * (ours[subset]["copied"] - base[subset]["copied"]),
                               100 * (ours[subset]["french"] - base[subset]["french"]),
                               ours[subset]["bleu"] - base[subset]["bleu"]))  # fmt: skip
            if len(points) < 3 or len({p[0] for p in points}) < 2:
                continue  # no line through fewer than three runs, none through one x
            failed, copied, french, gain = (list(column) for column in zip(*points))
            slope, intercept = statistics.linear_regression(failed, gain)
            left = [g - (intercept + slope * f) for f, g in zip(failed, gain)]
            residual_sd = math.sqrt(sum(v * v for v in left) / (len(left) - 2))
            sentences = statistics.mean(t["sentences"] for t in translated) if translated else None
            rows.append([f"{profile} p={noise}", subset, str(len(points)), mean_sd_text(gain),
                         fmt(statistics.mean(copied), 1), fmt(statistics.mean(french), 1),
                         correlation_text(failed, gain), f"{slope:+.2f}", f"{intercept:+.2f}",
                         fmt(residual_sd),
                         mean_sd_text([t["bleu"] - t["baseline_bleu"] for t in translated]),
                         fmt(sentences, 0)])  # fmt: skip
    if not rows:
        return []
    header = ["run", "set", "runs", "gglm − baseline", "Δ copied (points)", "Δ French (points)",
              "r(gain, Δ copied + French)", "BLEU per point", "gain at equal share",
              "sd of gain left", "gain where both translate", "sentences there"]  # fmt: skip
    return ["Where does GGLM's gain come from? Over the same runs: the change (GGLM minus "
            "baseline) in the percent of outputs that copy the English source and of those in "
            "French, the correlation of the BLEU gain with the two together, and a least-squares "
            "line of the gain on them: its slope, its intercept (the line's gain at an unchanged "
            "share: a fit, not a measurement) and the sample sd of the gain the line leaves "
            "unexplained. Measured beside it where the runs kept both systems' outputs: BLEU of "
            "GGLM minus the baseline on the sentences where neither copied the source nor wrote "
            "French, and how many sentences that is (mean over those runs).",
            ""] + table(header, rows) + [""]  # fmt: skip


def keep_tokens_section(runs: List[Dict]) -> List[str]:
    """--gglm-keep-tokens beside mask-only GGLM and the baseline: how many target tokens an
    update trained on, and what that bought."""
    lines: List[str] = []
    for results in runs:
        systems = results.get("systems", {})
        keeping = [n for n, e in systems.items() if "--gglm-keep-tokens" in e.get("gglm_args", "")]
        if not keeping:
            continue
        lines += [f"## Keeping the update full: noisy Multi30k, {run_title(results['setting'])}",
                  "", "`--gglm-keep-tokens N` scores candidate batches larger than the update "
                  "and trains on at most N target tokens of the best-aligned examples above the "
                  "threshold; mask-only GGLM trains on what its mask leaves of a batch of the "
                  "baseline's size; baseline-8192 is the baseline on the larger batches (the "
                  "batch without a mask). Trained tokens: mean target tokens per update, from "
                  "the training log (wpb times the share not masked).", ""]  # fmt: skip
        rows = []
        for name in ["baseline", LARGE_BASELINE, *(n for n in systems if n.startswith("gglm")
                                   and clean_set(systems[n]) == DEFAULT_CLEAN_SET)]:  # fmt: skip
            entry = systems.get(name)
            if entry is None:
                continue
            command = entry.get("train_command", [])
            candidate = command[command.index("--max-tokens") + 1] if command else "–"
            detection = entry.get("detection", {})
            rows.append([name, f"`{entry.get('gglm_args', '')}`" if entry.get("gglm_args") else "",
                         candidate, fmt(entry.get("trained_tokens_per_update"), 0),
                         bleu_triple(entry), fmt(detection.get("mask_rate", {}).get("all"), 3),
                         percent(detection.get("mean_mask_rate", {}).get("clean")),
                         minutes(entry.get("train_seconds"))])  # fmt: skip
        header = ["system", "flags", "batch --max-tokens", "trained tokens per update",
                  "BLEU valid / 2016 / 2017", "AUC (mask rate)", "clean pairs masked",
                  "train min"]  # fmt: skip
        lines += table(header, rows) + [""]
    return lines


def main(argv: List[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "results", nargs="+", help="results.json files of the runners, probe-*.json of the probe"
    )
    parser.add_argument("--out", default="docs/results.md")
    parser.add_argument("--command", default="", help="the command that made the runs")
    args = parser.parse_args(argv)
    out = Path(args.out)
    docs = out.parent
    docs.mkdir(parents=True, exist_ok=True)
    runs = []
    missing = [path for path in args.results if not Path(path).exists()]
    for path in args.results:
        if path in missing:
            continue  # a run that did not finish: listed in the document instead
        results = json.loads(Path(path).read_text(encoding="utf-8"))
        # runs/KEY/results.json, or an archived copy named KEY.json
        file = Path(path)
        results["_key"] = file.parent.name if file.name == "results.json" else file.stem
        runs.append(results)
    lines = [
        "# Results",
        "",
        "Generated by `scripts/experiments/make_results.py` from the runners' results JSON "
        "files; every number is measured in the runs listed. Do not edit by hand.",
        "",
    ]
    if args.command:
        lines += [f"Reproduce: `{args.command}`", ""]
    if missing:
        lines += ["Not run (no results file): " + ", ".join(f"`{p}`" for p in missing), ""]
    multi30k = [r for r in runs if r.get("experiment") == "noisy_multi30k"]
    for results in multi30k:
        lines += multi30k_section(results, results["_key"], docs)
    lines += seeds_section(multi30k, docs)
    lines += clean_sets_section(multi30k)
    lines += keep_tokens_section(multi30k)
    lines += setups_section(multi30k) + gain_follows_baseline(multi30k)
    lines += gain_follows_failed_outputs(multi30k)
    lines += noise_levels_section(multi30k)
    lines += variants_section(multi30k)
    for results in runs:
        if results.get("experiment") == "alignment_probe":
            lines += probe_section(results)
    for results in runs:
        if results.get("experiment") == "paracrawl_human":
            lines += paracrawl_section(results, results["_key"], docs)
    out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
