"""The criterion on real fairseq batches: masking, sample size, logging, schedule."""

import math

import pytest
import torch
from helpers import build, train_args

from gglm_fairseq.clean_gradient import CleanGradient


def setup(data_bin, tmp_path, *extra):
    task, model, criterion = build(train_args(data_bin, tmp_path / "ckpt", *extra))
    iterator = task.get_batch_iterator(
        task.dataset("train"), max_tokens=400, seed=1, num_workers=0
    ).next_epoch_itr(shuffle=False)
    sample = next(iterator)
    model.train()
    clean = task.clean_gradient(model, criterion, 0)
    return task, model, criterion, sample, clean


def masked_forward(criterion, model, sample, clean):
    return criterion.masked_forward(model, sample, clean)


def random_clean(model, seed=0):
    generator = torch.Generator().manual_seed(seed)
    direction = [torch.randn(p.shape, generator=generator) for p in model.parameters()]
    return CleanGradient(direction=direction, loss=1.0, update_num=0)


def test_mask_follows_alignment_sign_and_renormalises(data_bin, tmp_path):
    task, model, criterion, sample, _ = setup(data_bin, tmp_path, "--dropout", "0")
    clean = random_clean(model)  # a random direction masks about half the sentences
    loss, sample_size, log, decisions = masked_forward(criterion, model, sample, clean)
    ids, alignment, masked = decisions.ids, decisions.alignment, decisions.masked
    assert torch.equal(ids, sample["id"])
    assert torch.equal(masked, (alignment <= 0).double().to(masked.dtype))
    assert 0 < log["gglm_sentences_masked"] < sample["nsentences"]
    keep = (alignment > 0).float()
    tokens = sample["target"].ne(task.target_dictionary.pad()).sum(1).float()
    assert sample_size == int((keep * tokens).sum())
    assert log["gglm_tokens_masked"] == sample["ntokens"] - sample_size
    model.eval()
    with torch.no_grad():
        losses, _ = criterion.token_losses(model, sample)
    assert loss.item() == pytest.approx((losses.sum(1) * keep).sum().item(), rel=1e-5)
    assert log["loss"].item() == pytest.approx(losses.sum().item(), rel=1e-5)


def target_tokens(task, sample):
    return sample["target"].ne(task.target_dictionary.pad()).sum(1)


def unmasked_sentence_losses(criterion, model, sample):
    model.eval()
    with torch.no_grad():
        losses, _ = criterion.token_losses(model, sample)
    return losses.sum(1)


def test_keep_tokens_trains_on_the_best_sentences_within_the_budget(data_bin, tmp_path):
    task, model, criterion, sample, _ = setup(
        data_bin, tmp_path, "--dropout", "0", "--gglm-keep-tokens", "40"
    )
    clean = random_clean(model)
    loss, sample_size, log, decisions = masked_forward(criterion, model, sample, clean)
    alignment, masked = decisions.alignment, decisions.masked
    tokens, kept = target_tokens(task, sample), masked == 0
    positive = alignment > 0
    left_out = positive & ~kept
    assert left_out.any()  # the budget, not the threshold, masked these
    assert positive[kept].all() and alignment[kept].min() >= alignment[left_out].max()
    assert sample_size == tokens[kept].sum().item() <= 40
    assert sample_size + tokens[left_out][alignment[left_out].argmax()] > 40  # it did not fit
    assert masked[~kept].eq(1).all()  # unselected counts as masked in the record and logs
    assert log["gglm_sentences_masked"] == (~kept).sum().item()
    assert log["gglm_tokens_masked"] == sample["ntokens"] - sample_size
    losses = unmasked_sentence_losses(criterion, model, sample)
    assert loss.item() == pytest.approx(losses[kept].sum().item(), rel=1e-5)


def test_soft_weighting_weights_the_loss_and_the_sample_size(data_bin, tmp_path):
    task, model, criterion, sample, _ = setup(
        data_bin, tmp_path, "--dropout", "0", "--gglm-weighting", "soft"
    )
    clean = random_clean(model)
    loss, sample_size, log, decisions = masked_forward(criterion, model, sample, clean)
    alignment, masked = decisions.alignment, decisions.masked
    excess = alignment.clamp_min(0).double()
    weights = excess / excess.mean()
    tokens = target_tokens(task, sample)
    assert sample_size == pytest.approx((weights * tokens).sum().item(), rel=1e-5)
    losses = unmasked_sentence_losses(criterion, model, sample).double()
    assert loss.item() == pytest.approx((weights * losses).sum().item(), rel=1e-5)
    # The record and logs keep the 0/1 decision: weight 0 is masked, any other kept.
    assert torch.equal(masked, (alignment <= 0).to(masked.dtype))
    assert 0 < log["gglm_sentences_masked"] == (alignment <= 0).sum().item()
    assert log["gglm_tokens_masked"] == tokens[alignment <= 0].sum().item()


@pytest.mark.parametrize("mode", ["batch-mean", "batch-quantile"])
def test_batch_threshold_modes_cut_relative_to_the_micro_batch(data_bin, tmp_path, mode):
    _, model, criterion, sample, _ = setup(
        data_bin, tmp_path, "--dropout", "0", "--gglm-threshold-mode", mode,
        "--gglm-threshold-quantile", "0.25",
    )  # fmt: skip
    _, _, log, decisions = masked_forward(criterion, model, sample, random_clean(model))
    alignment, masked = decisions.alignment, decisions.masked
    masked = masked == 1
    assert not torch.equal(masked, alignment <= 0)  # not the absolute threshold's mask
    if mode == "batch-mean":
        assert torch.equal(masked, alignment <= alignment.mean())
    else:
        assert masked.sum().item() == math.floor(0.25 * len(alignment))
        assert alignment[masked].max() <= alignment[~masked].min()
    assert log["gglm_sentences_masked"] == masked.sum().item()


def test_no_renormalize_keeps_all_tokens(data_bin, tmp_path):
    _, model, criterion, sample, _ = setup(data_bin, tmp_path, "--gglm-no-renormalize")
    _, sample_size, log, decisions = masked_forward(criterion, model, sample, random_clean(model))
    assert log["gglm_sentences_masked"] > 0
    assert sample_size == sample["ntokens"]


def test_all_masked_gives_zero_loss_and_no_nan(data_bin, tmp_path):
    _, model, criterion, sample, clean = setup(data_bin, tmp_path, "--gglm-threshold", "1e9")
    loss, sample_size, log, decisions = masked_forward(criterion, model, sample, clean)
    assert loss.item() == 0.0 and sample_size == 0
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    assert log["gglm_sentences_masked"] == sample["nsentences"]
    assert log["gglm_tokens_masked"] == sample["ntokens"]
    criterion.reduce_metrics([log])  # must not divide by zero


def test_ignored_prefix_tokens_are_not_counted_as_masked(data_bin, tmp_path):
    """--ignore-prefix-size: ntokens counts the prefix, the loss (and its mask) does not."""
    _, model, criterion, sample, clean = setup(
        data_bin, tmp_path, "--ignore-prefix-size", "1", "--gglm-threshold=-1e9"
    )
    _, sample_size, log, _ = masked_forward(criterion, model, sample, clean)
    assert log["gglm_tokens_masked"] == 0 and log["gglm_sentences_masked"] == 0
    assert log["gglm_tokens"] == sample_size == sample["ntokens"] - sample["nsentences"]


def test_token_granularity_masks_tokens(data_bin, tmp_path):
    _, model, criterion, sample, clean = setup(
        data_bin, tmp_path, "--gglm-granularity", "token", "--dropout", "0"
    )
    _, sample_size, log, decisions = masked_forward(criterion, model, sample, clean)
    masked = decisions.masked
    assert 0 < log["gglm_tokens_masked"] < sample["ntokens"]
    assert sample_size == sample["ntokens"] - log["gglm_tokens_masked"]
    assert ((masked > 0) & (masked < 1)).any()  # some sentences partly masked


def test_non_finite_clean_gradient_is_counted_and_trains_unmasked(data_bin, tmp_path):
    _, model, criterion, sample, _ = setup(data_bin, tmp_path)
    bad = CleanGradient(direction=None, loss=math.nan, update_num=0)
    loss, sample_size, log, decisions = masked_forward(criterion, model, sample, bad)
    assert log["gglm_clean_nonfinite"] == 1 and log["gglm_active"] == 0
    assert sample_size == sample["ntokens"]
    assert loss.item() == pytest.approx(log["loss"].item())


def test_every_micro_batch_emits_the_same_keys(data_bin, tmp_path):
    _, model, criterion, sample, clean = setup(data_bin, tmp_path)
    _, _, plain = criterion(model, sample)
    _, _, masked, decisions = masked_forward(criterion, model, sample, clean)
    assert set(plain) == set(masked)
    assert plain["gglm_active"] == 0 and masked["gglm_active"] == 1


def test_validation_is_never_masked(data_bin, tmp_path):
    _, model, criterion, sample, clean = setup(data_bin, tmp_path, "--gglm-threshold", "1e9")
    masked_forward(criterion, model, sample, clean)
    model.eval()
    _, sample_size, log = criterion(model, sample)  # what fairseq's valid_step calls
    assert sample_size == sample["ntokens"] and log["gglm_active"] == 0


@pytest.mark.parametrize(
    "warmup, interval, expected",
    [(0, 1, [1, 1, 1, 1, 1, 1]), (2, 1, [0, 0, 1, 1, 1, 1]), (1, 2, [0, 1, 0, 1, 0, 1])],
)
def test_schedule(data_bin, tmp_path, warmup, interval, expected):
    _, _, criterion = build(
        train_args(data_bin, tmp_path / "c", "--gglm-warmup-updates", str(warmup),
                   "--gglm-interval", str(interval))
    )  # fmt: skip
    assert [int(criterion.masks_update(u)) for u in range(6)] == expected


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--gglm-interval", "0"], "--gglm-interval must be >= 1"),
        (["--gglm-warmup-updates", "-1"], "--gglm-warmup-updates must be >= 0"),
        (["--gglm-engine", "jvp", "--gglm-similarity", "cosine", "--gglm-threshold", "0.1"],
         "needs gradient norms"),
        (["--gglm-keep-tokens", "100", "--gglm-granularity", "token"],
         "--gglm-keep-tokens needs --gglm-granularity sentence"),
        (["--gglm-weighting", "soft", "--gglm-granularity", "token"],
         "--gglm-weighting soft needs --gglm-granularity sentence"),
        (["--gglm-threshold-mode", "batch-mean", "--gglm-granularity", "token"],
         "--gglm-threshold-mode batch-mean needs --gglm-granularity sentence"),
        (["--gglm-keep-tokens", "-1"], "--gglm-keep-tokens must be >= 0"),
        (["--gglm-keep-tokens", "100", "--gglm-weighting", "soft"], "use --gglm-weighting mask"),
        (["--gglm-threshold-quantile", "1"], r"--gglm-threshold-quantile must be in \[0, 1\)"),
        (["--gglm-threshold-mode", "batch-quantile", "--gglm-threshold", "0.1"],
         "leave --gglm-threshold at 0"),
        (["--gglm-threshold-mode", "batch-quantile", "--gglm-weighting", "soft"],
         "soft needs a threshold"),
    ],
)  # fmt: skip
def test_bad_options(data_bin, tmp_path, flags, message):
    with pytest.raises(ValueError, match=message):
        build(train_args(data_bin, tmp_path / "c", *flags))


def test_unknown_engine_is_rejected_by_the_command_line(data_bin, tmp_path, capsys):
    with pytest.raises(SystemExit):
        build(train_args(data_bin, tmp_path / "c", "--gglm-engine", "fast"))
    assert "invalid choice: 'fast'" in capsys.readouterr().err


def test_cosine_with_threshold_uses_vmap_norms(data_bin, tmp_path):
    _, model, criterion, sample, clean = setup(
        data_bin, tmp_path, "--gglm-similarity", "cosine", "--gglm-threshold", "0.01",
        "--dropout", "0",
    )  # fmt: skip
    _, _, log, decisions = masked_forward(criterion, model, sample, clean)
    assert log["gglm_active"] == 1 and criterion.needs_norms


def test_auto_engine_falls_back_to_vmap_once(data_bin, tmp_path, monkeypatch, caplog):
    from gglm_fairseq import alignment

    def no_forward_ad(*args, **kwargs):
        raise NotImplementedError("Trying to use forward AD with some_op that does not support it")

    monkeypatch.setitem(alignment.ENGINES, "jvp", no_forward_ad)
    # auto means jvp at token level (ghost at sentence level).
    _, model, criterion, sample, clean = setup(
        data_bin, tmp_path, "--dropout", "0", "--gglm-granularity", "token"
    )
    _, _, log, decisions = masked_forward(criterion, model, sample, clean)
    _, _, again, decisions = masked_forward(criterion, model, sample, clean)
    assert log["gglm_active"] == again["gglm_active"] == 1
    assert criterion.engine_for(model) == "vmap"
    assert caplog.text.count("forward-mode AD failed") == 1


def test_explicit_jvp_engine_does_not_fall_back(data_bin, tmp_path, monkeypatch):
    from gglm_fairseq import alignment

    def no_forward_ad(*args, **kwargs):
        raise NotImplementedError("Trying to use forward AD with some_op")

    monkeypatch.setitem(alignment.ENGINES, "jvp", no_forward_ad)
    _, model, criterion, sample, clean = setup(data_bin, tmp_path, "--gglm-engine", "jvp")
    with pytest.raises(NotImplementedError):
        masked_forward(criterion, model, sample, clean)


def test_alignment_without_dropout_judges_the_eval_model(data_bin, tmp_path):
    from gglm_fairseq.alignment import loop_aligned_loss

    _, model, criterion, sample, clean = setup(
        data_bin, tmp_path, "--dropout", "0.3", "--gglm-alignment-without-dropout"
    )
    decisions = masked_forward(criterion, model, sample, clean)[3]
    _, alignment, _ = decisions.ids, decisions.alignment, decisions.masked
    assert model.training  # put back in training mode
    model.eval()
    expected = loop_aligned_loss(model, criterion.token_losses, sample, clean.direction)
    scale = expected.alignment.abs().max()
    assert (alignment - expected.alignment).abs().max() / scale < 1e-4


def first_rows(sample, rows):
    """The first ``rows`` sentences of a fairseq batch."""
    net_input = {key: value[:rows] for key, value in sample["net_input"].items()}
    target = sample["target"][:rows]
    return dict(sample, id=sample["id"][:rows], net_input=net_input, target=target,
                nsentences=rows, ntokens=int(target.ne(1).sum()))  # fmt: skip


def test_auto_is_ghost_at_sentence_level(data_bin, tmp_path):
    _, model, criterion, _, _ = setup(data_bin, tmp_path)
    assert criterion.engine_for(model) == "ghost"


def test_ghost_pads_a_batch_as_long_as_it_is_wide(data_bin, tmp_path):
    """With as many sentences as target positions no op has a single batch axis; the
    criterion pads the target by one position, exactly."""
    _, model, criterion, sample, clean = setup(data_bin, tmp_path, "--dropout", "0")
    sample = first_rows(sample, sample["target"].size(1))
    results = {}
    for engine in ("ghost", "loop"):
        criterion._engine = engine
        loss, sample_size, log, decisions = masked_forward(criterion, model, sample, clean)
        alignment, masked = decisions.alignment, decisions.masked
        results[engine] = (alignment, masked, float(loss.detach()), sample_size)
    (ghost, ghost_masked, ghost_loss, ghost_size), (loop, loop_masked, loop_loss, loop_size) = (
        results["ghost"], results["loop"])  # fmt: skip
    assert (ghost - loop).abs().max() / loop.abs().max() < 1e-4
    assert torch.equal(ghost_masked, loop_masked) and ghost_size == loop_size
    assert math.isclose(ghost_loss, loop_loss, rel_tol=1e-5)


def add_bias_kv(model):
    attention = model.encoder.layers[0].self_attn
    attention.bias_k = torch.nn.Parameter(torch.zeros(1, 1, attention.embed_dim))
    attention.bias_v = torch.nn.Parameter(torch.zeros(1, 1, attention.embed_dim))


def test_auto_falls_back_to_jvp_where_ghost_has_no_rule(data_bin, tmp_path, caplog):
    _, model, criterion, sample, _ = setup(data_bin, tmp_path, "--dropout", "0")
    add_bias_kv(model)
    clean = random_clean(model)
    _, _, log, decisions = masked_forward(criterion, model, sample, clean)
    masked_forward(criterion, model, sample, clean)
    assert criterion.engine_for(model) == "jvp" and log["gglm_active"] == 1
    assert caplog.text.count("no rule for encoder.layers.0.self_attn.bias_k") == 1


def test_explicit_ghost_without_a_rule_stops_at_the_first_forward(data_bin, tmp_path):
    _, model, criterion, sample, _ = setup(data_bin, tmp_path, "--gglm-engine", "ghost",
                                           "--gglm-warmup-updates", "100")  # fmt: skip
    add_bias_kv(model)
    with pytest.raises(ValueError, match=r"ghost engine has no rule for .*bias_k"):
        criterion(model, sample)  # an unmasked warm-up update: still at start-up


def test_loss_scale_of_fairseq_optimisers():
    from types import SimpleNamespace

    from gglm_fairseq.tasks.translation_with_clean_set import loss_scale

    assert loss_scale(SimpleNamespace(scaler=SimpleNamespace(loss_scale=128.0))) == 128.0
    amp = SimpleNamespace(_grad_scaler=SimpleNamespace(get_scale=lambda: 65536.0))
    assert loss_scale(amp) == 65536.0
    assert loss_scale(SimpleNamespace(scaler=None)) == loss_scale(object()) == 1.0
