"""Compute profiles: one choice of sizes, steps and batch sizes, honoured by every chapter.

Three profiles exist:

* ``ci``  -- seconds per chapter. What continuous integration runs; numbers are tiny and
  results are only meant to show that every code path works.
* ``cpu`` -- a laptop or the 2-core machines the book is developed on: minutes per chapter,
  results good enough to see the idea work.
* ``gpu`` -- a Colab T4 and up: the sizes that give the best toy results.

The environment variable ``IMAGEN_EDU_PROFILE`` picks one. Without it the default is ``gpu``
when CUDA is available and ``cpu`` otherwise. Notebooks never hard-code sizes: they read them
from :func:`current`, e.g. ``P = profiles.current(); P.lm.max_steps``.

Each chapter has its own small frozen settings dataclass below (``AttentionSettings``,
``LMSettings``...), and a :class:`Profile` bundles one of each (chapter 2b's pretraining recipe is
``t5_pretraining.PretrainConfig``; a profile holds only its overrides, ``P.t5``).

The smoke override: with ``IMAGEN_EDU_SMOKE=1`` (any value but empty, ``0``, ``false``, ``no``)
:func:`current` returns :func:`smoke` of the chosen profile: its model sizes, with every
run-length field (steps, batch sizes, image and sample counts, time budgets, sampling steps;
:data:`RUN_LENGTH_FIELDS`; the diffusion chains' ``timesteps`` too) taken from the ``ci``
profile. So ``IMAGEN_EDU_PROFILE=gpu IMAGEN_EDU_SMOKE=1`` executes every chapter with the ``gpu``
profile's models on a CPU in minutes: a size that no longer builds or fits shows up without a GPU.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass, field, replace

import torch

ENV_VAR = "IMAGEN_EDU_PROFILE"
SMOKE_VAR = "IMAGEN_EDU_SMOKE"


# ---------------------------------------------------------------------------------------------
# Chapter 1: attention and the Transformer
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class AttentionSettings:
    """Sizes for the demo Transformer of chapter 1."""

    d_model: int = 32
    n_heads: int = 4
    n_layers: int = 2
    # steps of the tiny "what colour is the SHAPE?" task the chapter trains to show learned
    # attention maps (about 300 steps solve it at these sizes)
    demo_steps: int = 400
    batch_size: int = 64
    lr: float = 3e-3


# ---------------------------------------------------------------------------------------------
# The data layer (shapes benchmark, judge)
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DataSettings:
    """How many images the shapes-benchmark page renders and judges, and how it times rendering."""

    n_judge_images: int = 200
    n_grid_images: int = 8
    # batch size and number of batches for the render-speed measurement
    bench_batch: int = 256
    bench_batches: int = 2


# ---------------------------------------------------------------------------------------------
# Chapter 2: the autoregressive language model
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LMSettings:
    """GPT-style caption model of chapter 2."""

    d_model: int = 64
    n_heads: int = 4
    n_layers: int = 2
    max_steps: int = 600
    batch_size: int = 64
    lr: float = 3e-3
    n_samples_eval: int = 200


# ---------------------------------------------------------------------------------------------
# Chapter 3: DDPM
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DiffusionSettings:
    """2-D toy and 32 px unconditional image diffusion of chapter 3 (defaults = the cpu profile)."""

    timesteps: int = 1000
    schedule: str = "cosine"
    # v-prediction: after 5 CPU minutes it gives far cleaner shapes than eps (measured, chapter 3)
    objective: str = "v"
    # 2-D toy (two moons, tiny MLP)
    toy_steps: int = 2000
    toy_batch: int = 256
    toy_hidden: int = 128
    # unconditional U-Net on the shapes benchmark
    image_size: int = 32
    unet_channels: int = 16
    unet_mults: tuple = (1, 2, 4)
    image_steps: int = 1500
    image_batch: int = 32
    image_max_seconds: float | None = 240.0  # training stops here even if image_steps are not done
    n_train_images: int = 4000
    lr: float = 2e-3
    ema_decay: float = 0.995
    sample_steps: int = 50
    n_samples: int = 64


# ---------------------------------------------------------------------------------------------
# Chapter 4: CLIP
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CLIPSettings:
    """Dual encoders trained contrastively on the shapes benchmark in chapter 4."""

    image_size: int = 32
    embed_dim: int = 64
    width: int = 64  # CNN channels of the last stage = d_model of the text Transformer
    text_layers: int = 2
    text_heads: int = 4
    steps: int = 1000
    batch_size: int = 128
    lr: float = 2e-3
    # training pool: scenes of the train split rendered once, mirrored at random during training
    n_train_images: int = 4096
    two_object_fraction: float = 0.5
    max_seconds: float | None = 170.0  # training stops here even if the steps are not done
    n_eval: int = 100  # two-object scenes for retrieval R@1 and the relation probe
    n_zero_shot: int = 180  # one-object images for zero-shot accuracy


# ---------------------------------------------------------------------------------------------
# Chapter 5: Imagen
# ---------------------------------------------------------------------------------------------
#: The cpu profile's cascade (chapter 5): for each stage, :class:`~imagen_edu.stage.StageConfig`
#: fields, with the U-Net's (:class:`~imagen_edu.unet.UNetConfig`) under ``"unet"``. What every
#: stage shares (text encoder, timesteps, lr...) is in :class:`ImagenSettings`; what follows from
#: these (the low resolution of an SR stage, the text width, heads, groups, warm-up) is derived by
#: :func:`imagen_edu.configs.stage_configs`.
CPU_STAGES: dict[str, dict] = {
    "base": dict(resolution=16, two_object_fraction=0.75, steps=2400, batch_size=32, max_seconds=960.0,
                 guidance=3.0, sample_steps=25, threshold="static", eta=1.0,
                 unet=dict(channels=32, channel_mults=(1, 2, 2), num_res_blocks=(1, 2, 2),
                           attention_resolutions=(8, 4), cross_attention_resolutions=(16, 8, 4))),
    # super-resolution 16 -> 32 px, no self-attention, no guidance (w = 1); noise-conditioning
    # augmentation: levels uniform in [0, aug_max_level] in training, aug_sample_level at sampling
    "sr1": dict(resolution=32, two_object_fraction=0.75, steps=2500, batch_size=32, max_seconds=960.0,
                guidance=1.0, sample_steps=15, threshold="static", eta=1.0, aug_max_level=0.5, aug_sample_level=0.1,
                unet=dict(channels=16, channel_mults=(1, 2, 4), num_res_blocks=1, attention_resolutions=(),
                          cross_attention_resolutions=(16, 8))),
}


def stages_with(**changes: dict) -> dict[str, dict]:
    """:data:`CPU_STAGES` with some fields changed, e.g. ``stages_with(base=dict(steps=4, unet=dict(channels=8)))``.

    ``unet`` changes are merged field by field; a stage that :data:`CPU_STAGES` lacks (``sr2``) is
    given whole.
    """
    out = {name: {**d, "unet": dict(d["unet"])} for name, d in CPU_STAGES.items()}
    for name, change in changes.items():
        stage = out.setdefault(name, {"unet": {}})
        stage.update({k: v for k, v in change.items() if k != "unet"})
        stage["unet"].update(change.get("unet", {}))
    return out


@dataclass(frozen=True)
class ImagenSettings:
    """The toy Imagen cascade of chapter 5 (defaults = the cpu profile): a 16 px base stage and a
    16 -> 32 px super-resolution stage, both reading the chapter-2 language model's token states.

    The two stages train independently (the super-resolution stage learns from exact low/high
    resolution renders), so on 2 cores they train side by side, one thread each, within
    their ``max_seconds``. ``stages`` holds each stage's own fields (see :data:`CPU_STAGES`);
    :func:`imagen_edu.configs.stage_configs` builds the :class:`~imagen_edu.stage.StageConfig` s.
    """

    # chapter 2b's toy T5 encoder, pretrained on text alone and frozen (the shipped
    # data/checkpoints/t5.safetensors); a name for imagen_edu.text_encoders
    text_encoder: str = "toyt5"
    # shared by every stage
    timesteps: int = 1000
    objective: str = "v"
    lr: float = 2e-3
    ema_decay: float = 0.995
    cond_drop_prob: float = 0.1
    n_train_images: int = 20000
    # the stages in cascade order ("base", "sr1" and optionally "sr2"); read-only
    stages: dict = field(default_factory=stages_with)
    # evaluation and figures: captions per set in chapter 5's in-page evaluations (the shipped
    # cascade's own figures come from `python -m imagen_edu eval --n 200` and more)
    n_eval: int = 128
    guidance_sweep: tuple = (1.0, 2.0, 3.0, 5.0, 8.0)
    n_grid: int = 8
    # chapter 5a trains the base stage live (imagen_edu.live_training): its wall-time cap in
    # seconds (training and snapshots together; under 5 minutes on 2 cores), the snapshots taken,
    # the captions judged at each, and the cosine schedule's length (None: the stage's own steps,
    # so that the live run is the opening of the shipped stage's run)
    live_seconds: float = 240.0
    live_points: int = 4
    live_captions: int = 16
    live_steps: int | None = None
    # chapter 5c reruns one row of its comparison tables live (configs.comparison_stage, the 16-
    # channel U-Net reading the shipped encoder): its steps (under cpu the tables' own budget, about
    # four minutes on one thread) and the captions judged per set
    compare_steps: int = 1000
    compare_n: int = 100


@dataclass(frozen=True)
class Profile:
    """A complete compute profile. Frozen: pick another profile instead of editing one."""

    name: str
    description: str
    # what every chapter reports it should take under this profile
    minutes_per_chapter: str
    prefer_cuda: bool
    attention: AttentionSettings = field(default_factory=AttentionSettings)
    data: DataSettings = field(default_factory=DataSettings)
    lm: LMSettings = field(default_factory=LMSettings)
    # overrides of imagen_edu.t5_pretraining.PretrainConfig (chapter 2b); the cpu profile runs its defaults
    t5: dict = field(default_factory=dict)
    diffusion: DiffusionSettings = field(default_factory=DiffusionSettings)
    clip: CLIPSettings = field(default_factory=CLIPSettings)
    imagen: ImagenSettings = field(default_factory=ImagenSettings)

    @property
    def device(self) -> str:
        """``"cuda"`` for the gpu profile when CUDA is present, else ``"cpu"``."""
        if self.prefer_cuda and torch.cuda.is_available():
            return "cuda"
        return "cpu"


PROFILES: dict[str, Profile] = {
    "ci": Profile(
        name="ci",
        description="seconds per chapter; what CI runs (results only show the code paths work)",
        minutes_per_chapter="< 1",
        prefer_cuda=False,
        attention=AttentionSettings(d_model=32, n_heads=2, n_layers=2, demo_steps=300, batch_size=32),
        data=DataSettings(n_judge_images=24, n_grid_images=4, bench_batch=32, bench_batches=1),
        lm=LMSettings(d_model=32, n_heads=2, n_layers=1, max_steps=40, batch_size=32, n_samples_eval=20),
        t5=dict(model=dict(d_model=32, n_heads=2, d_kv=16, d_ff=64, n_layers=1, n_decoder_layers=1,
                           num_buckets=16, max_distance=32), steps=60, batch_size=32, warmup_steps=10),
        diffusion=DiffusionSettings(
            timesteps=100, toy_steps=60, toy_batch=128, toy_hidden=64, image_size=16, unet_channels=8,
            unet_mults=(1, 2), image_steps=4, image_batch=8, image_max_seconds=None, n_train_images=64,
            sample_steps=5, n_samples=8,
        ),
        clip=CLIPSettings(image_size=16, width=16, embed_dim=16, text_layers=1, text_heads=2, steps=30,
                          batch_size=32, n_train_images=128, max_seconds=None, n_eval=20, n_zero_shot=36),
        imagen=ImagenSettings(
            timesteps=100, n_train_images=64, n_eval=8, guidance_sweep=(1.0, 3.0), n_grid=4,
            live_seconds=20.0, live_points=3, live_captions=4, live_steps=100000, compare_steps=3, compare_n=2,
            stages=stages_with(
                base=dict(resolution=8, steps=4, batch_size=8, max_seconds=None, sample_steps=4,
                          unet=dict(channels=8, channel_mults=(1, 2), num_res_blocks=(1, 1),
                                    attention_resolutions=(4,), cross_attention_resolutions=(4,))),
                sr1=dict(resolution=16, steps=4, batch_size=8, max_seconds=None, sample_steps=4,
                         unet=dict(channels=8, channel_mults=(1, 2), cross_attention_resolutions=(8,)))),
        ),
    ),
    "cpu": Profile(
        name="cpu",
        description="a laptop CPU (2+ cores): minutes per chapter",
        minutes_per_chapter="1-8",
        prefer_cuda=False,
    ),
    "gpu": Profile(
        name="gpu",
        description="a CUDA GPU (Colab T4 and up): larger models, more steps",
        minutes_per_chapter="1-5",
        prefer_cuda=True,
        attention=AttentionSettings(d_model=64, n_heads=4, n_layers=2, demo_steps=600, batch_size=128),
        data=DataSettings(n_judge_images=1000, n_grid_images=8, bench_batch=512, bench_batches=4),
        lm=LMSettings(d_model=128, n_heads=4, n_layers=4, max_steps=2000, batch_size=128, n_samples_eval=500),
        t5=dict(model=dict(d_model=128, n_heads=4, d_kv=32, d_ff=256, n_layers=3, n_decoder_layers=2,
                           num_buckets=16, max_distance=32), steps=4000, batch_size=128, lr=2e-3, warmup_steps=200),
        diffusion=DiffusionSettings(
            toy_steps=4000, toy_batch=1024, toy_hidden=256, image_size=32, unet_channels=64,
            unet_mults=(1, 2, 2), image_steps=6000, image_batch=128, image_max_seconds=900.0,
            n_train_images=20000, lr=1e-3, ema_decay=0.999, sample_steps=100, n_samples=64,
        ),
        clip=CLIPSettings(width=128, embed_dim=128, text_layers=3, steps=3000, batch_size=256,
                          n_train_images=20000, lr=1e-3, max_seconds=600.0),
        imagen=ImagenSettings(
            lr=1e-3, ema_decay=0.999, n_train_images=50000, n_eval=500,
            live_seconds=240.0, live_points=4, live_captions=64,
            stages=stages_with(
                base=dict(steps=8000, batch_size=128, max_seconds=1200.0,
                          unet=dict(channels=64, num_res_blocks=(2, 2, 2))),
                sr1=dict(steps=4000, batch_size=128, max_seconds=600.0, unet=dict(channels=32, channel_mults=(1, 2, 2))),
                # the Colab recipe's third stage: 32 -> 64 px (chapter 6)
                sr2=dict(resolution=64, two_object_fraction=0.75, steps=4000, batch_size=64, max_seconds=900.0,
                         guidance=1.0, sample_steps=15, threshold="static", eta=1.0, aug_max_level=0.5,
                         aug_sample_level=0.1,
                         unet=dict(channels=32, channel_mults=(1, 2, 2, 4), num_res_blocks=1,
                                   attention_resolutions=(), cross_attention_resolutions=(16, 8)))),
        ),
    ),
}


def names() -> list[str]:
    """The valid profile names, in order of size."""
    return list(PROFILES)


def get(name: str) -> Profile:
    """The profile called ``name``; raises ``ValueError`` listing the valid names otherwise."""
    if not isinstance(name, str):
        raise TypeError(f"profile name must be a str, one of {names()}, got {type(name).__name__}")
    key = name.strip().lower()
    if key not in PROFILES:
        raise ValueError(f"unknown compute profile {name!r}: expected one of {names()} "
                         f"(set {ENV_VAR} to one of them)")
    return PROFILES[key]


def default_name() -> str:
    """``gpu`` when CUDA is available, else ``cpu`` (used when ``IMAGEN_EDU_PROFILE`` is unset)."""
    return "gpu" if torch.cuda.is_available() else "cpu"


def current() -> Profile:
    """The active profile: ``IMAGEN_EDU_PROFILE`` if set (and not empty), else the default.

    Read from the environment on every call, so ``os.environ["IMAGEN_EDU_PROFILE"] = "ci"``
    in a notebook takes effect for the cells after it.
    """
    name = os.environ.get(ENV_VAR, "").strip()
    prof = get(name) if name else get(default_name())
    return smoke(prof) if smoke_enabled() else prof


# ---------------------------------------------------------------------------------------------
# The smoke override: a profile's model sizes with the ci profile's run lengths
# ---------------------------------------------------------------------------------------------
#: For each section of a :class:`Profile`, the fields that say how long a chapter runs (steps,
#: batch sizes, how many images are rendered, judged or sampled, time budgets, and the diffusion
#: chain's length ``timesteps``: chapter 3 runs full T-step DDPM chains), as opposed to what it
#: builds (widths, depths, heads, resolutions: no weight's shape depends on ``timesteps``).
RUN_LENGTH_FIELDS: dict[str, tuple[str, ...]] = {
    "attention": ("demo_steps", "batch_size"),
    "data": ("n_judge_images", "n_grid_images", "bench_batch", "bench_batches"),
    "lm": ("max_steps", "batch_size", "n_samples_eval"),
    "t5": ("steps", "batch_size", "warmup_steps", "max_seconds"),
    "diffusion": ("timesteps", "toy_steps", "toy_batch", "image_steps", "image_batch", "image_max_seconds",
                  "n_train_images", "sample_steps", "n_samples"),
    "clip": ("steps", "batch_size", "n_train_images", "max_seconds", "n_eval", "n_zero_shot"),
    "imagen": ("timesteps", "n_train_images", "n_eval", "guidance_sweep", "n_grid", "live_seconds",
               "live_points", "live_captions", "live_steps", "compare_steps", "compare_n"),
}
#: The run-length fields of each cascade stage (``ImagenSettings.stages[name]``).
STAGE_RUN_LENGTH_FIELDS: tuple[str, ...] = ("steps", "batch_size", "max_seconds", "sample_steps")


def smoke_enabled() -> bool:
    """Whether ``IMAGEN_EDU_SMOKE`` asks for the smoke override (set, and not ``0``/``false``/``no``)."""
    return os.environ.get(SMOKE_VAR, "").strip().lower() not in ("", "0", "false", "no")


def smoke(profile: Profile) -> Profile:
    """``profile`` with every field of :data:`RUN_LENGTH_FIELDS` (and every stage's
    :data:`STAGE_RUN_LENGTH_FIELDS`) taken from the ``ci`` profile; model sizes stay ``profile``'s.

    A stage the ci cascade lacks (the gpu profile's ``sr2``) takes the run lengths of ci's last
    stage. The name stays (so chapters still report ``gpu``); the description says "smoke".
    """
    ci = PROFILES["ci"]
    changes = {}
    for section, names_ in RUN_LENGTH_FIELDS.items():
        mine, theirs = getattr(profile, section), getattr(ci, section)
        if isinstance(mine, dict):  # P.t5: overrides of PretrainConfig; ci's where ci sets one
            changes[section] = {**mine, **{k: theirs[k] for k in names_ if k in theirs}}
        else:
            changes[section] = replace(mine, **{k: getattr(theirs, k) for k in names_})
    ci_stages = ci.imagen.stages
    last = list(ci_stages.values())[-1]
    stages = {name: {**own, **{k: ci_stages.get(name, last)[k] for k in STAGE_RUN_LENGTH_FIELDS}}
              for name, own in profile.imagen.stages.items()}
    changes["imagen"] = replace(changes["imagen"], stages=stages)
    return replace(profile, description=f"{profile.description} [smoke: the ci profile's run lengths]", **changes)


@contextmanager
def torch_threads(n: int | None, device="cpu"):
    """Let torch use ``n`` CPU threads inside the block, restoring the previous count on exit.

    A no-op for ``n=None`` or a non-CPU ``device``. The book's toy models, the renderer and the
    judge work on small tensors: on one thread they are fastest, since splitting a 64-wide
    product across cores costs more than it saves, and on a busy machine the threads wait on
    each other (measured on a shared 2-core machine: two threads were several times slower).
    """
    old = torch.get_num_threads()
    active = n is not None and torch.device(device).type == "cpu" and int(n) != old
    if active:
        torch.set_num_threads(int(n))
    try:
        yield
    finally:
        if active:
            torch.set_num_threads(old)
