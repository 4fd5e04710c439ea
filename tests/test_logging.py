"""fairseq-train with the plugin, as a user runs it: ``--log-format json`` lines and
``--tensorboard-logdir`` event files carry GGLM's metrics, and a normal run prints no
warnings (no "Please install tensorboardX", none of fairseq's Hydra or torch deprecations)."""

import json

import pytest
from helpers import fairseq_train, train_args

pytestmark = pytest.mark.slow
GGLM_METRICS = ("gglm_masked_sent", "gglm_masked_tok", "gglm_clean_loss")


def test_json_log_and_tensorboard_carry_gglm_metrics(data_bin, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    argv = train_args(data_bin, tmp_path / "ckpt", "--max-update", "4", "--disable-validation")
    argv[argv.index("--log-format") + 1] = "json"
    result = fairseq_train([*argv, "--tensorboard-logdir", str(tmp_path / "tb")])
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    assert result.stderr == "", result.stderr[-3000:]  # no warnings on a normal run
    assert "tensorboardX" not in result.stdout  # fairseq's hint when it is missing

    logged = [json.loads(line.split("| train_inner | ", 1)[1])
              for line in result.stdout.splitlines() if "| train_inner | " in line]  # fmt: skip
    assert len(logged) == 4  # --log-interval 1
    for entry in logged:
        for name in GGLM_METRICS:
            assert 0.0 <= float(entry[name]) < 100.0

    events = EventAccumulator(str(tmp_path / "tb" / "train_inner"))
    events.Reload()
    for name in GGLM_METRICS:
        assert [e.step for e in events.Scalars(name)] == [1, 2, 3, 4]
