"""Training a base stage live: a few rounds of the book's one trainer, judged after each (chapter 5a).

:func:`train_with_snapshots` trains a base stage from scratch with
:func:`imagen_edu.stage_training.train_stage` (the book's one training path) in ``points`` rounds.
Each round resumes the run from a temporary folder (``resume=True``: the weights, the optimizer's
moments, the EMA, the step and every random generator come back exactly), trains for its share
of the time, and then :func:`judge_stage` samples a fixed list of captions with the EMA weights
and judges them with :func:`imagen_edu.evaluate.attribute_accuracy`. The whole call, training
and snapshots together, stays within ``seconds``.

**Rounds by time, one schedule.** The trainer's ``steps`` is both where its loop stops and
where the cosine learning-rate schedule, Eq. (ch6-eq-lr), ends. Stopping each round at a step
count would mean a new ``steps`` per round, and the schedule would restart its decay every
round. So every round keeps ``config.steps`` and stops on its time budget instead
(``max_seconds``, the one field besides ``steps`` that a resumed run may change): the
learning rate follows one schedule over the whole run, and the snapshots fall at equal shares
of the training time, not at round step counts.

**Which schedule.** The book's page passes the profile's own base-stage config
(:func:`imagen_edu.configs.stage_config`), its 2400-step cosine under ``cpu`` included, and cuts
it at the time cap. With the same config and seed the live run *is* the opening minutes of the
shipped base stage's own run (same pool, same initialisation, same batches): what the reader
watches is how that run began, and the shipped checkpoint (data/checkpoints, 1664 steps in
18 minutes) is where it went on to. A schedule shortened to what four minutes reach would decay
the learning rate sooner, but would be a different run from the one it is compared with.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from . import text_encoders
from .arguments import check_int, check_real, check_seed
from .cascade import check_prompts, image_seed, stage_seed
from .data.captions import parse_caption
from .evaluate import attribute_accuracy
from .stage import ImagenStage, StageConfig
from .stage_training import train_stage, training_pool

__all__ = ["Snapshot", "LiveRun", "judge_stage", "train_with_snapshots", "training_scenes", "ACCURACY_KEYS"]

#: the share of ``seconds`` kept back for what the estimates miss (a machine that gets busier)
RESERVE = 0.03
#: the steps of margin kept per round (the trainer checks its budget before a step: a round may end one late)
MARGIN_STEPS = 3

#: the judge's accuracies a snapshot keeps (``relation`` is over the two-object captions only)
ACCURACY_KEYS = ("colour", "shape", "relation", "count", "all")


@dataclass
class Snapshot:
    """The state of a live run at one point: after ``step`` optimizer steps and ``seconds`` of wall time
    since the run began (training, snapshots and set-up), the judge's ``accuracy`` (``ACCURACY_KEYS``,
    each a share in [0, 1]; ``relation`` is ``None`` without two-object captions) of ``images``
    ``(N, 3, R, R)`` in [-1, 1], one per caption, sampled with the EMA weights."""

    step: int
    seconds: float
    accuracy: dict
    images: torch.Tensor


@dataclass
class LiveRun:
    """What :func:`train_with_snapshots` returns.

    ``stage``: the EMA :class:`~imagen_edu.stage.ImagenStage` at the end (eval mode);
    ``losses``: the training loss of every step (``len(losses) == steps``); ``steps``: optimizer
    steps done; ``round_steps``: the steps of each round (they add up to ``steps``);
    ``snapshots``: one :class:`Snapshot` per round; ``captions``: the judged captions;
    ``seconds``: the wall time of the whole call; ``train_seconds``: the part spent in training
    steps; ``finished``: whether all ``config.steps`` were done (else the time cap stopped it).
    """

    stage: ImagenStage
    losses: list
    steps: int
    round_steps: list
    snapshots: list = field(default_factory=list)
    captions: list = field(default_factory=list)
    seconds: float = 0.0
    train_seconds: float = 0.0
    finished: bool = False


@torch.no_grad()
def judge_stage(stage: ImagenStage, encoder, captions, *, seed: int = 0, guidance=None, sample_steps=None):
    """Sample one image per caption with a base ``stage`` and judge it: ``(images (N, 3, R, R), accuracy)``.

    The image of caption ``i`` is drawn from the generator the cascade uses for the base stage of
    image ``(line i, sample 0)`` (:func:`imagen_edu.cascade.image_seed`, ``stage_seed``), so the
    same caption list and seed give every snapshot of a run, and the shipped base stage, the same
    starting noise. ``accuracy`` holds :data:`ACCURACY_KEYS` from
    :func:`imagen_edu.evaluate.attribute_accuracy`. ``guidance`` and ``sample_steps`` default to
    the stage config's (``w = 3``, 25 DDIM steps under ``cpu``).
    """
    if not isinstance(stage, ImagenStage):
        raise TypeError(f"stage must be an ImagenStage, got {type(stage).__name__}")
    if stage.config.is_sr:
        raise ValueError(f"judge_stage samples a base stage; {stage.config.name!r} needs a low-resolution input")
    captions = _check_captions(captions)
    seed = check_seed(seed, "seed")
    emb, mask = encoder.encode(captions)
    gens = [torch.Generator().manual_seed(stage_seed(image_seed(seed, i, 0), 0)) for i in range(len(captions))]
    images = stage.sample(emb.float(), mask, guidance=guidance, steps=sample_steps, generator=gens).float().cpu()
    acc = attribute_accuracy(images, captions)
    return images, {k: acc[k] for k in ACCURACY_KEYS}


def _check_captions(captions) -> list[str]:
    """A non-empty list of captions in the shapes grammar (the judge reads no other), checked before any work."""
    captions = check_prompts(captions)
    for c in captions:
        parse_caption(c)
    return captions


def _check_config(config) -> StageConfig:
    if not isinstance(config, StageConfig):
        raise TypeError(f"config must be a StageConfig (e.g. imagen.stage_config('base')), got {type(config).__name__}")
    if config.is_sr:
        raise ValueError(f"train_with_snapshots trains a base stage from scratch, got stage {config.name!r}")
    return config


def train_with_snapshots(config: StageConfig, encoder=None, *, seconds: float, points: int, eval_captions,
                         seed: int = 0, guidance=None, sample_steps=None, device=None, progress: bool = False,
                         out_dir=None) -> LiveRun:
    """Train the base stage ``config`` from scratch for at most ``seconds``, judging it at ``points`` points.

    Args:
        config: a base-stage :class:`~imagen_edu.stage.StageConfig`; its ``steps`` set the cosine
            schedule (module docstring) and its ``max_seconds`` is replaced by the round budgets.
        encoder: the frozen text encoder (default ``text_encoders.get(config.text_encoder)``).
        seconds: the wall-time cap of the whole call (training, snapshots, set-up), > 0.
        points: the number of rounds, each followed by a snapshot (an int >= 1).
        eval_captions: the captions judged at every snapshot (shapes-benchmark grammar), e.g.
            :func:`imagen_edu.evaluate.eval_captions`.
        seed: the snapshots' sampling seed (the training seed is ``config.seed``).
        guidance, sample_steps: the snapshots' guidance weight and DDIM steps (default: the config's).
        device: where to train and sample (default the CPU).
        out_dir: keep the run's files there (a folder without a base-stage run); default a
            temporary folder, removed at the end.

    Time: before training, one guided network call on the caption batch is timed to estimate a
    snapshot's cost, the pool is rendered once (:func:`training_scenes`), and a zero-step call of
    :func:`train_stage` encodes the captions and writes the step-0 resume file, which times a
    round's set-up (each call encodes again and reads the resume file). Each round then gets an
    equal share of what is left after the remaining snapshots and set-ups. The trainer checks its
    budget before every step, so a round may end one step late: :data:`MARGIN_STEPS` steps of
    margin are kept for it, and :data:`RESERVE` of ``seconds`` for what the estimates miss. When
    the time left cannot pay for every remaining round (a busy CPU), fewer rounds are planned, so
    there may be fewer snapshots than ``points``; a run that finishes its ``config.steps`` early
    skips the remaining rounds (``LiveRun.finished``).

    Raises ``TypeError``/``ValueError`` naming the argument for bad input, and ``ValueError`` if
    ``seconds`` cannot pay even for the snapshots.
    """
    cfg = _check_config(config)
    seconds = check_real(seconds, "seconds", low=0.0, low_open=True)
    points = check_int(points, "points", low=1)
    captions = _check_captions(eval_captions)
    seed = check_seed(seed, "seed")
    if guidance is not None:
        check_real(guidance, "guidance", low=0.0)
    if sample_steps is not None:
        check_int(sample_steps, "sample_steps", low=1, high=cfg.timesteps)
    t0 = time.perf_counter()
    deadline = t0 + seconds
    encoder = text_encoders.get(cfg.text_encoder) if encoder is None else encoder
    if getattr(encoder, "dim", None) != cfg.text_dim:
        raise ValueError(f"the text encoder gives {getattr(encoder, 'dim', None)}-d embeddings but the stage "
                         f"expects text_dim={cfg.text_dim}")
    device = torch.device(device or "cpu")
    snap_cost = _snapshot_cost(cfg, encoder, captions, guidance, sample_steps, device)
    if time.perf_counter() + points * snap_cost >= deadline:
        raise ValueError(f"seconds={seconds:g} leaves no time to train: {points} snapshots of {len(captions)} "
                         f"captions take about {points * snap_cost:.1f} s")
    with tempfile.TemporaryDirectory(prefix="imagen_live_") as tmp:
        folder = Path(tmp) if out_dir is None else Path(out_dir)
        return _rounds(cfg, encoder, folder, captions, points, t0, deadline, snap_cost, seed, guidance,
                       sample_steps, device, progress)


def _snapshot_cost(cfg, encoder, captions, guidance, sample_steps, device) -> float:
    """Seconds one snapshot will take: a guided call (a doubled batch, the median of three timings)
    times the DDIM steps, plus the judge. Sampling costs the same whatever the weights, so an
    untrained stage times it."""
    torch.manual_seed(cfg.seed)
    probe = ImagenStage(cfg).to(device).eval()
    w, k, *_ = probe.check_sampling(guidance=guidance, steps=sample_steps)
    emb, mask = encoder.encode(captions)
    b, R = len(captions), cfg.resolution
    calls = 2 if w != 1.0 else 1
    x = torch.zeros(b * calls, 3, R, R, device=device)
    t = torch.full((b * calls,), cfg.timesteps // 2, device=device)
    e, m = emb.float().to(device).repeat(calls, 1, 1), mask.to(device).repeat(calls, 1)
    times = []
    with torch.no_grad():
        probe(x, t, text_emb=e, text_mask=m)  # the first call pays for allocations
        for _ in range(3):
            start = time.perf_counter()
            probe(x, t, text_emb=e, text_mask=m)
            times.append(time.perf_counter() - start)
    return k * sorted(times)[1] * 1.4 + 0.1  # the median call; sampler bookkeeping, thresholding, the judge


def _share(time_left: float, rounds: int, cost: float) -> float:
    """Each of ``rounds`` rounds' training budget: an equal share of ``time_left`` once every
    round's ``cost`` (its set-up, snapshot and margin) is paid."""
    return (time_left - rounds * cost) / rounds


def training_scenes(cfg: StageConfig):
    """The base stage's training pool, rendered once: ``(None, images (N, 3, R, R) in [-1, 1], captions)``.

    Exactly what :func:`train_stage` renders itself (:func:`imagen_edu.stage_training.training_pool`),
    given to every round as ``pool`` so that the rounds do not render it again.
    """
    return training_pool(cfg, progress=False)


def _rounds(cfg, encoder, folder, captions, points, t0, deadline, snap_cost, seed, guidance, sample_steps, device,
            progress) -> LiveRun:
    total, pool = deadline - t0, training_scenes(cfg)

    def call(config, resume):
        """One call of the book's trainer: its result and the seconds it spent outside training steps."""
        start = time.perf_counter()
        out = train_stage(config, encoder, out_dir=folder, resume=resume, progress=progress, device=device,
                          save_every=0, log_every=max(1, cfg.steps), pool=pool)
        return out, max(0.0, time.perf_counter() - start - out["seconds"])

    # a zero-step call: the text cache, the model and a resume file at step 0, timed
    result, setup = call(cfg.replace(steps=0, max_seconds=None), resume=False)
    deadline -= RESERVE * total
    snapshots, round_steps, losses = [], [], []
    step_time, train_seconds, steps = 0.0, 0.0, 0
    for k in range(points):
        cost, left = snap_cost + setup + MARGIN_STEPS * step_time, points - k
        while left > 1 and _share(deadline - time.perf_counter(), left, cost) <= 0:
            left -= 1  # the time left cannot pay for every remaining round: plan fewer
        budget = _share(deadline - time.perf_counter(), left, cost)
        if budget <= 0:
            if k == 0:
                raise ValueError(f"seconds={total:g} leaves no time to train: setting up takes about "
                                 f"{setup:.1f} s per round and {points} snapshots of {len(captions)} captions "
                                 f"about {points * snap_cost:.1f} s")
            break
        result, took = call(cfg.replace(max_seconds=budget), resume=True)
        setup = max(setup, took)
        done = result["steps"] - steps
        if done:
            step_time = max(step_time, result["seconds"] / done)
        steps, train_seconds = result["steps"], train_seconds + result["seconds"]
        losses += result["losses"]
        round_steps.append(done)
        images, acc = judge_stage(result["stage"], encoder, captions, seed=seed, guidance=guidance,
                                  sample_steps=sample_steps)
        snapshots.append(Snapshot(step=steps, seconds=time.perf_counter() - t0, accuracy=acc, images=images))
        if steps >= cfg.steps or left == 1:
            break
    return LiveRun(stage=result["stage"], losses=losses, steps=steps, round_steps=round_steps, snapshots=snapshots,
                   captions=captions, seconds=time.perf_counter() - t0, train_seconds=train_seconds,
                   finished=steps >= cfg.steps)
