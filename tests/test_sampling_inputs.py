"""Numbers are checked where they enter: the cascade's and a stage's sampling arguments, every StageConfig field.

A bad number is refused before any work with an error that names it: ``guidance`` finite >= 0
(``inf`` and ``nan`` too), ``steps`` an int in ``[1, timesteps]`` (more is refused, not capped),
``seed`` an int in ``[0, 2**63)`` (``1.7`` is a ``TypeError``, not seed 1), ``eta`` finite in
[0, 1], ``aug_level`` finite in [0, 1]. A :class:`StageConfig` checks each field's type,
finiteness and range in ``__post_init__``, so ``--set guidance=1e999`` or a nonsense value stored
in a checkpoint (:meth:`StageConfig.from_dict`) fails with a ``ValueError`` naming the field.
"""

import math

import pytest
import torch

from imagen_edu import imagen as im
from imagen_edu.cascade import ImagenCascade
from imagen_edu.stage import MAX_SEED, NumberTypeError, StageConfig, check_int, check_real


@pytest.fixture(scope="module")
def encoder():
    return im.get_text_encoder(im.stage_config("base", "ci").text_encoder)


@pytest.fixture(scope="module")
def cascade(encoder):
    torch.manual_seed(0)
    return ImagenCascade(encoder, [im.ImagenStage(im.stage_config(n, "ci", text_dim=encoder.dim)).eval()
                                   for n in ("base", "sr1")])


T = im.stage_config("base", "ci").timesteps

#: (argument, bad value, error, what the message must say)
BAD_SAMPLING = [
    ("guidance", math.inf, ValueError, "guidance"), ("guidance", math.nan, ValueError, "guidance"),
    ("guidance", -0.5, ValueError, "guidance"), ("guidance", 1e999, ValueError, "guidance"),
    ("guidance", "3", TypeError, "guidance"), ("guidance", True, TypeError, "guidance"),
    ("guidance", [1.0, math.nan], ValueError, "guidance"),
    ("steps", 0, ValueError, "steps"), ("steps", 100000, ValueError, f"\\[1, {T}\\]"),
    ("steps", T + 1, ValueError, str(T)), ("steps", 2.5, TypeError, "steps"), ("steps", 3.0, TypeError, "steps"),
    ("steps", True, TypeError, "steps"), ("steps", [2, 0], ValueError, "steps"),
    ("seed", 1.7, TypeError, "seed"), ("seed", 1.0, TypeError, "seed"), ("seed", True, TypeError, "seed"),
    ("seed", -1, ValueError, "seed"), ("seed", MAX_SEED, ValueError, "seed"), ("seed", "0", TypeError, "seed"),
    ("eta", math.inf, ValueError, "eta"), ("eta", math.nan, ValueError, "eta"), ("eta", -0.1, ValueError, "eta"),
    ("eta", 1.5, ValueError, "eta"), ("eta", "0", TypeError, "eta"),
    ("aug_level", math.nan, ValueError, "aug_level"), ("aug_level", math.inf, ValueError, "aug_level"),
    ("aug_level", -0.1, ValueError, "aug_level"), ("aug_level", 1.5, ValueError, "aug_level"),
    ("n", 0, ValueError, "n"), ("n", 1.5, TypeError, "n"), ("batch_size", 0, ValueError, "batch_size"),
    ("threshold", "bogus", ValueError, "threshold"), ("sampler", "euler", ValueError, "sampler"),
]


@pytest.mark.parametrize("arg, value, err, match", BAD_SAMPLING)
def test_cascade_refuses_bad_sampling_numbers_before_any_work(cascade, monkeypatch, arg, value, err, match):
    """Detail: every sampling number is checked where it enters the cascade (guidance finite >= 0,
    steps in [1, timesteps], seed an int in [0, 2**63), eta and aug_level finite in [0, 1]), before
    any stage samples, with an error naming the argument; sample_batches checks when called."""
    calls = []
    for st in cascade.stages:
        monkeypatch.setattr(st, "sample", lambda *a, **k: calls.append(1))
    with pytest.raises(err, match=match):
        cascade.sample("a red circle", progress=False, **{arg: value})
    with pytest.raises(err, match=match):
        cascade.sample_batches("a red circle", progress=False, **{arg: value})   # no iteration needed
    assert calls == []


@pytest.mark.parametrize("arg, value, err, match",
                         [c for c in BAD_SAMPLING if c[0] in ("guidance", "steps", "eta", "aug_level", "threshold",
                                                               "sampler") and not isinstance(c[1], list)])
def test_stage_refuses_bad_sampling_numbers(cascade, encoder, arg, value, err, match):
    """Detail: ``ImagenStage.sample`` checks the same numbers (steps above timesteps refused, not capped)."""
    emb, mask = encoder.encode(["a red circle"])
    with pytest.raises(err, match=match):
        cascade.stages[1].sample(emb.float(), mask, lowres=torch.zeros(1, 3, 8, 8), **{arg: value})


def test_edge_values_are_accepted(cascade):
    """The edges of each range are valid: guidance 0, steps = timesteps, eta 1, aug_level 0 and 1,
    seed 2**63 - 1."""
    st = cascade.stages[1]
    assert st.check_sampling(guidance=0, steps=T, eta=1, aug_level=1) == (0.0, T, 1.0, 1.0, st.config.threshold)
    out = cascade.sample("a red circle", steps=1, seed=MAX_SEED - 1, guidance=0.0, aug_level=0.0, eta=1.0,
                         progress=False)
    assert out.shape == (1, 3, 16, 16) and torch.isfinite(out).all()


def test_check_helpers_name_the_argument():
    """Detail: the checkers say what was given and what was expected; a wrong type is both a
    TypeError and a ValueError (NumberTypeError)."""
    with pytest.raises(ValueError, match=r"steps must be an int in \[1, 100\], got 100000"):
        check_int(100000, "steps", low=1, high=100)
    with pytest.raises(NumberTypeError, match=r"seed must be an int >= 0, got 1.7 \(float\)") as e:
        check_int(1.7, "seed", low=0)
    assert isinstance(e.value, TypeError) and isinstance(e.value, ValueError)
    with pytest.raises(ValueError, match="guidance must be a finite number >= 0, got inf"):
        check_real(math.inf, "guidance", low=0)
    with pytest.raises(ValueError, match=r"lr must be a finite number > 0"):
        check_real(0.0, "lr", low=0, low_open=True)
    assert check_real(10 ** 3, "x") == 1000.0 and isinstance(check_real(3, "x"), float)
    with pytest.raises(ValueError, match="finite"):
        check_real(10 ** 400, "x")   # an int too large for a float


# ------------------------------------------------------------------ StageConfig
INT_FIELDS = ["resolution", "text_dim", "timesteps", "sample_steps", "steps", "batch_size", "warmup",
              "n_train_images", "seed"]
#: field -> values out of range (besides the non-numbers every field refuses)
REAL_FIELDS = {"cond_drop_prob": [-0.1, 1.0, 2.0], "aug_max_level": [-0.1, 1.5], "aug_sample_level": [-0.1, 1.5],
               "guidance": [-1.0], "eta": [-0.1, 1.5], "lr": [0.0, -1e-3], "ema_decay": [-0.1, 1.5],
               "grad_clip": [0.0, -1.0], "max_seconds": [0.0, -5.0], "two_object_fraction": [-0.1, 1.1]}

BAD_FIELDS = ([(f, v) for f in INT_FIELDS for v in (1.7, 2.0, True, "3", math.nan, None, -1)]
              + [("seed", MAX_SEED), ("sample_steps", 10 ** 6), ("timesteps", 0)]
              + [(f, v) for f, vals in REAL_FIELDS.items()
                 for v in vals + [math.nan, math.inf, -math.inf, 1e999, "0.5", True]]
              + [(f, None) for f in REAL_FIELDS if f not in ("grad_clip", "max_seconds")]
              + [("schedule", "quadratic"), ("objective", "score"), ("threshold", "soft"),
                 ("loss_weighting", "snr"), ("text_encoder", ""), ("text_encoder", 3), ("name", "sr3")])


@pytest.mark.parametrize("field, value", BAD_FIELDS)
def test_stage_config_refuses_a_bad_field(field, value):
    """Detail: every StageConfig field is checked for type, finiteness and range (``--set
    guidance=1e999``, ``lr=nan``, a float seed 1.7) with a ValueError naming the field, when built
    (``replace``) and when read back from a checkpoint's metadata (``from_dict``)."""
    cfg = im.stage_config("base", "ci")
    name = "stage name" if field == "name" else field
    with pytest.raises(ValueError, match=name):
        cfg.replace(**{field: value})
    d = cfg.to_dict()
    d[field] = value
    with pytest.raises(ValueError, match=name):
        StageConfig.from_dict(d)


def test_stage_config_checks_lowres_and_keeps_good_values():
    """Detail: the SR stage's lowres_resolution is an int in [1, resolution); valid values (None
    where allowed, ints for reals) are kept, reals stored as floats."""
    sr = im.stage_config("sr1", "ci")
    for bad in (1.5, 0, sr.resolution, "8"):
        with pytest.raises(ValueError, match="lowres_resolution"):
            sr.replace(lowres_resolution=bad)
    ok = sr.replace(grad_clip=None, max_seconds=None, guidance=2, seed=MAX_SEED - 1, sample_steps=sr.timesteps)
    assert ok.grad_clip is None and ok.guidance == 2.0 and isinstance(ok.guidance, float)
    assert StageConfig.from_dict(ok.to_dict()) == ok
    with pytest.raises(ValueError, match="unet"):
        StageConfig.from_dict({k: v for k, v in ok.to_dict().items() if k != "unet"})
    with pytest.raises(ValueError, match="unet"):
        StageConfig.from_dict({**ok.to_dict(), "unet": {**ok.to_dict()["unet"], "bogus_field": 1}})


def test_shipped_stage_configs_pass_the_checks():
    """The shipped checkpoints' stored configs are valid (they keep loading)."""
    from imagen_edu import checkpoints

    d = checkpoints.checkpoint_dir()
    for name in ("base", "sr1"):
        st = im.load_stage(d / f"imagen_{name}.safetensors")
        assert StageConfig.from_dict(st.config.to_dict()) == st.config
