"""imagen_edu.live_training: chapter 5a's live base stage, trained in rounds by the book's one trainer
and judged after each. ci-sized: a few seconds of an 8 px base stage."""

import math
import time

import pytest
import torch

from imagen_edu import configs, evaluate, live_training, text_encoders
from imagen_edu.live_training import judge_stage, train_with_snapshots
from imagen_edu.stage_training import train_stage

CAPTIONS = evaluate.eval_captions("test", 4)


@pytest.fixture(scope="module")
def encoder():
    return text_encoders.get(configs.stage_config("base", "ci").text_encoder)


def ci_base(**changes):
    """The ci profile's base stage with some fields changed."""
    return configs.stage_config("base", "ci").replace(**changes)


@pytest.fixture(scope="module")
def capped(encoder):
    """A run that the time cap ends in every round (far more steps than 15 s reach), with each
    call of train_stage recorded. ``warmup`` covers the whole run, so the learning rate of a step
    does not depend on ``steps`` and an uninterrupted reference run can be compared exactly."""
    calls = []

    def recording(config, *args, **kw):
        calls.append((config, kw.get("resume")))
        return train_stage(config, *args, **kw)

    cfg = ci_base(steps=100_000, warmup=100_000)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(live_training, "train_stage", recording)
        t = time.perf_counter()
        run = train_with_snapshots(cfg, encoder, seconds=15.0, points=3, eval_captions=CAPTIONS, seed=5)
        wall = time.perf_counter() - t
    return cfg, run, calls, wall


def test_rounds_add_up_and_snapshots_at_round_ends(capped):
    """Each snapshot is taken right after its round: its step is the sum of the rounds so far, the
    rounds add up to the steps done and to one loss per step, and the snapshot times increase."""
    _, run, _, _ = capped
    assert len(run.snapshots) == 3 and len(run.round_steps) == 3
    assert all(n >= 1 for n in run.round_steps)
    assert sum(run.round_steps) == run.steps == len(run.losses)
    ends = [sum(run.round_steps[:i + 1]) for i in range(3)]
    assert [s.step for s in run.snapshots] == ends
    times = [s.seconds for s in run.snapshots]
    assert times == sorted(times) and times[-1] <= run.seconds
    assert not run.finished and run.captions == CAPTIONS
    for s in run.snapshots:
        assert s.images.shape == (len(CAPTIONS), 3, 8, 8)
        assert set(s.accuracy) == set(live_training.ACCURACY_KEYS)
        assert all(v is None or 0.0 <= v <= 1.0 for v in s.accuracy.values())


def test_time_cap_respected(capped):
    """The whole call (set-up, training rounds and snapshots) stays within ``seconds``."""
    _, run, _, wall = capped
    assert run.seconds <= 15.0 and wall <= 15.0 + 0.2
    assert 0 < run.train_seconds < run.seconds


def test_one_cosine_schedule_over_config_steps(capped):
    """Eq. (ch6-eq-lr): the learning rate follows ONE warm-up + cosine schedule over the run's
    ``config.steps``: every round resumes with the same ``steps`` and stops on its time budget
    (``max_seconds``), never with a per-round ``steps`` (which would restart the decay each round)."""
    cfg, _, calls, _ = capped
    setup, rounds = calls[0], calls[1:]
    assert setup[0].steps == 0 and setup[1] is False        # the zero-step set-up call
    assert len(rounds) == 3 and all(resume for _, resume in rounds)
    assert all(c.steps == cfg.steps for c, _ in rounds)
    budgets = [c.max_seconds for c, _ in rounds]
    assert all(b > 0 for b in budgets) and sum(budgets) < 15.0


def test_rounds_are_one_uninterrupted_run(capped, encoder):
    """The rounds resume one run exactly (weights, AdamW moments, EMA, step and random generators
    from the resume file) on the pool train_stage would render itself (training_scenes): the live
    run's losses and final EMA weights equal those of one uninterrupted train_stage run of the
    same number of steps."""
    cfg, run, _, _ = capped
    ref = train_stage(cfg.replace(steps=run.steps), encoder, progress=False)
    assert ref["losses"] == run.losses
    for (k, a), b in zip(ref["stage"].state_dict().items(), run.stage.state_dict().values()):
        assert torch.equal(a, b), k


def test_snapshot_is_the_judged_sample_of_the_ema_stage(capped, encoder):
    """A snapshot's images and accuracies are judge_stage's on the EMA weights at that point (the
    last one: the returned stage), with the run's sampling seed: sampling is reproducible."""
    _, run, _, _ = capped
    images, acc = judge_stage(run.stage, encoder, CAPTIONS, seed=5)
    assert torch.equal(images, run.snapshots[-1].images)
    assert acc == run.snapshots[-1].accuracy
    judged = evaluate.attribute_accuracy(images, CAPTIONS)
    assert all(acc[k] == judged[k] for k in live_training.ACCURACY_KEYS)


def test_finished_run_loss_decreases(encoder):
    """A tiny run with time to spare does all its ``config.steps`` in the first round, stops there
    (one snapshot, at the last step), and its loss goes down."""
    run = train_with_snapshots(ci_base(steps=40), encoder, seconds=120.0, points=3, eval_captions=CAPTIONS)
    assert run.finished and run.steps == 40 and run.round_steps == [40] and len(run.losses) == 40
    assert [s.step for s in run.snapshots] == [40]
    first, last = sum(run.losses[:10]) / 10, sum(run.losses[-10:]) / 10
    assert math.isfinite(last) and last < first


def test_too_small_a_cap_is_refused_before_training(encoder, monkeypatch):
    """A cap that cannot pay for the snapshots raises ValueError before any training step."""
    monkeypatch.setattr(live_training, "train_stage", lambda *a, **k: pytest.fail("trained"))
    with pytest.raises(ValueError, match="leaves no time"):
        train_with_snapshots(ci_base(), encoder, seconds=0.01, points=3, eval_captions=CAPTIONS)


@pytest.mark.parametrize("kw, err, match", [
    (dict(seconds=0), ValueError, "seconds"),
    (dict(seconds=-1.0), ValueError, "seconds"),
    (dict(seconds=math.inf), ValueError, "seconds"),
    (dict(seconds="5"), TypeError, "seconds"),
    (dict(points=0), ValueError, "points"),
    (dict(points=1.5), TypeError, "points"),
    (dict(points=True), TypeError, "points"),
    (dict(eval_captions=[]), ValueError, "prompts"),
    (dict(eval_captions=["a red circle", 3]), TypeError, "str"),
    (dict(eval_captions=["a purple blob"]), ValueError, "grammar|caption"),
    (dict(seed=-1), ValueError, "seed"),
    (dict(guidance=-1.0), ValueError, "guidance"),
    (dict(sample_steps=0), ValueError, "sample_steps"),
])
def test_bad_arguments(encoder, monkeypatch, kw, err, match):
    """Every argument is checked before any work, with an error naming it."""
    monkeypatch.setattr(live_training, "train_stage", lambda *a, **k: pytest.fail("trained"))
    args = dict(seconds=10.0, points=2, eval_captions=CAPTIONS) | kw
    with pytest.raises(err, match=match):
        train_with_snapshots(ci_base(), encoder, **args)


def test_bad_config_and_encoder(encoder, monkeypatch):
    """Only a base-stage StageConfig is trained, with an encoder of its text width."""
    monkeypatch.setattr(live_training, "train_stage", lambda *a, **k: pytest.fail("trained"))
    kw = dict(seconds=10.0, points=2, eval_captions=CAPTIONS)
    with pytest.raises(TypeError, match="StageConfig"):
        train_with_snapshots({"name": "base"}, encoder, **kw)
    with pytest.raises(ValueError, match="base stage"):
        train_with_snapshots(configs.stage_config("sr1", "ci"), encoder, **kw)
    wide = text_encoders.get("lm+words")
    assert wide.dim != ci_base().text_dim
    with pytest.raises(ValueError, match="text_dim"):
        train_with_snapshots(ci_base(), wide, **kw)


def test_judge_stage_refuses_what_it_cannot_sample(encoder):
    """judge_stage samples a base stage only, on captions of the shapes grammar."""
    sr = live_training.ImagenStage(configs.stage_config("sr1", "ci"))
    with pytest.raises(ValueError, match="base stage"):
        judge_stage(sr, encoder, CAPTIONS)
    with pytest.raises(TypeError, match="ImagenStage"):
        judge_stage(object(), encoder, CAPTIONS)
    base = live_training.ImagenStage(ci_base())
    with pytest.raises(ValueError):
        judge_stage(base, encoder, ["a purple blob"])
