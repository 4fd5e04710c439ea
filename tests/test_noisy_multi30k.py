"""The Multi30k runner's output checks: copies of the source and French outputs."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts" / "experiments"))
from noisy_multi30k import output_shares  # noqa: E402


def test_output_shares_count_copies_and_french():
    sources = ["A man runs .", "Two dogs play .", "A girl sings .", "A boy reads ."]
    hypotheses = [
        "A man runs .",  # a copy of the source
        "Deux chiens jouent dans la neige .",  # French
        "Ein Mädchen singt auf der Bühne .",  # German
        "Un garçon lit un livre .",  # French, but no listed function word: missed
    ]
    assert output_shares(hypotheses, sources) == {"copied": 0.25, "french": 0.25}
    mixed = ["le chien und die Katze mit dem Ball"]  # German function words outnumber
    assert output_shares(mixed, ["x"]) == {"copied": 0.0, "french": 0.0}
