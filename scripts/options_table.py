"""Print the Markdown table of the plugin's options, from the dataclass configs themselves.

The README embeds this table between markers; tests/test_docs.py checks it is current.
Usage: python scripts/options_table.py
"""

import dataclasses
from typing import List, Type

from fairseq.criterions.label_smoothed_cross_entropy import (
    LabelSmoothedCrossEntropyCriterionConfig,
)
from fairseq.tasks.translation import TranslationConfig

from gglm_fairseq.criterions import GradientMaskedCrossEntropyConfig
from gglm_fairseq.tasks import TranslationWithCleanSetConfig


def rows(config: Type, inherited_from: Type, component: str) -> List[str]:
    inherited = {f.name for f in dataclasses.fields(inherited_from)}
    lines = []
    for f in dataclasses.fields(config):
        help_text = f.metadata.get("help")
        if f.name in inherited or help_text is None:
            continue  # fairseq's own options, or values filled from fairseq's config
        default = f.default
        choices = getattr(f.type, "__members__", None)
        default = "none" if default is None else str(getattr(default, "value", default))
        default = default or "''"  # an empty string, not a blank cell
        flag = "--" + f.name.replace("_", "-")
        if choices:
            help_text += " (" + " / ".join(choices) + ")"
        lines.append(f"| `{flag}` | {component} | `{default}` | {help_text} |")
    return lines


def table() -> str:
    lines = ["| option | of | default | meaning |", "|---|---|---|---|"]
    lines += rows(TranslationWithCleanSetConfig, TranslationConfig, "task")
    lines += rows(
        GradientMaskedCrossEntropyConfig, LabelSmoothedCrossEntropyCriterionConfig, "criterion"
    )
    return "\n".join(lines)


if __name__ == "__main__":
    print(table())
