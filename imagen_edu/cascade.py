"""The Imagen cascade: a frozen text encoder, a base stage and one or two super-resolution stages.

Saharia et al. 2022, Section 2.4 (``saharia2022imagen``): the base stage generates a small
image from the text (16 px here); each super-resolution stage generates the next resolution
from the text and the previous stage's image, which it sees upsampled as extra input channels,
noised to a fixed augmentation level (:mod:`imagen_edu.noise_augmentation`). Every stage samples
with classifier-free guidance (:mod:`imagen_edu.guidance`) and thresholding of the predicted
``x0`` (:mod:`imagen_edu.thresholding`).

**A seed fixes each image.** Image ``(line, k)`` (sample ``k`` of the prompt at index ``line``)
is drawn from its own generators, one per stage, seeded by :func:`image_seed` and
:func:`stage_seed` from ``(seed, line, k)`` alone: the same seed gives the same image whatever
the batch size, the number of samples per prompt or which other images are generated with it
(:meth:`ImagenCascade.sample_batches`).

The cascade's images are judged by :func:`imagen_edu.evaluate.evaluate_cascade`.

Derived in chapter 5 (``book/05_imagen_cascade.ipynb``, Section "The cascade").
"""

from __future__ import annotations

import hashlib
import warnings
from pathlib import Path
from typing import Callable, Iterator, Sequence

import torch
from tqdm.auto import tqdm

from . import checkpoints, text_encoders
from .arguments import check_count, check_seed
from .stage import STAGES, ImagenStage, MissingCheckpointError, check_int, load_stage
from .stage_training import stage_file, train_command

__all__ = ["ImagenCascade", "check_prompts", "check_positive_int", "image_seed", "stage_seed"]


def check_prompts(prompts) -> list[str]:
    """A str or a non-empty list of non-empty str -> the list, each with its whitespace collapsed."""
    if isinstance(prompts, str):
        prompts = [prompts]
    if not isinstance(prompts, (list, tuple)) or not prompts:
        raise ValueError("prompts must be a non-empty str or list of str")
    out = []
    for p in prompts:
        if not isinstance(p, str):
            raise TypeError(f"every prompt must be a str, got {type(p).__name__}")
        if not p.strip():
            raise ValueError("empty prompt: describe the image, e.g. 'a red circle left of a blue square'")
        out.append(" ".join(p.split()))
    return out


def check_positive_int(v, name: str) -> int:
    """``v`` if it is an int >= 1 (not a bool, not a float), else an error naming ``name``
    (:func:`imagen_edu.arguments.check_count`)."""
    return check_count(v, name, minimum=1)


def _hash_to_seed(text: str) -> int:
    """The first 8 bytes of ``sha256(text)`` as a big-endian int, top bit cleared: in ``[0, 2**63)``."""
    return int.from_bytes(hashlib.sha256(text.encode("ascii")).digest()[:8], "big") >> 1


def image_seed(seed: int, line: int, k: int) -> int:
    """The seed of one image: sample ``k`` of the prompt at index ``line``, for the run seed ``seed``.

    ``sha256("imagen_edu image {seed} {line} {k}")``, its first 8 bytes read big-endian and shifted
    right by one bit: an int in ``[0, 2**63)``, stable across machines, Python versions and runs
    (no ``hash()``), and different for every ``(seed, line, k)`` up to hash collisions. ``seed``
    is in ``[0, 2**63)``, ``line`` and ``k`` are ints >= 0.
    """
    seed = check_seed(seed, "seed")
    line, k = check_int(line, "line", low=0), check_int(k, "k", low=0)
    return _hash_to_seed(f"imagen_edu image {seed} {line} {k}")


def stage_seed(image: int, stage: int) -> int:
    """The seed of the generator that stage ``stage`` (0 = base) uses for one image of seed ``image``.

    ``image`` is the image's :func:`image_seed`, hashed again with the stage's index:
    ``sha256("imagen_edu stage {image} {stage}")`` reduced as in :func:`image_seed`. Each stage
    gets its own stream, so changing one stage's settings (its steps, its sampler) leaves the
    noise of the other stages as it was.
    """
    image = check_seed(image, "image seed")
    stage = check_int(stage, "stage", low=0)
    return _hash_to_seed(f"imagen_edu stage {image} {stage}")


class ImagenCascade:
    """The text-to-image cascade: a frozen text encoder, a base stage and 1 or 2 SR stages.

    ``sample(prompts, n=4, guidance=3.0, steps=25, seed=0)`` returns ``(len(prompts) * n, 3, R, R)``
    images in [-1, 1] at the final resolution, prompt-major (the ``n`` samples of prompt 0 first);
    ``sample_batches(...)`` yields them batch by batch with their ``(line, k)`` keys, and can skip
    some. Either way image ``(line, k)`` is fixed by ``(seed, line, k)`` (:func:`image_seed`).

    Derived in chapter 5 (Section "The cascade").
    """

    def __init__(self, encoder, stages: Sequence[ImagenStage]):
        stages = list(stages)
        if not stages or stages[0].config.is_sr:
            raise ValueError("a cascade starts with a base stage (no lowres input)")
        if not 2 <= len(stages) <= 3:
            raise ValueError(f"a cascade has a base stage and 1 or 2 super-resolution stages, got {len(stages)} stages")
        for a, b in zip(stages, stages[1:]):
            if not b.config.is_sr or b.config.lowres_resolution != a.config.resolution:
                raise ValueError(f"stage {b.config.name!r} must take {a.config.resolution} px input from "
                                 f"{a.config.name!r}, got lowres_resolution={b.config.lowres_resolution}")
        for s in stages:
            if s.config.text_dim != encoder.dim:
                raise ValueError(f"stage {s.config.name!r} expects {s.config.text_dim}-d text, the encoder "
                                 f"gives {encoder.dim}-d")
        self.encoder, self.stages = encoder, stages

    @property
    def resolution(self) -> int:
        return self.stages[-1].config.resolution

    @property
    def resolutions(self) -> list[int]:
        return [s.config.resolution for s in self.stages]

    @classmethod
    def from_dir(cls, checkpoint_dir=None, device="cpu", encoder=None, profile: str = "cpu") -> "ImagenCascade":
        """Load ``imagen_base``, ``imagen_sr1`` (and ``imagen_sr2`` if present) from a folder.

        Every file is checked against the sha256 in ``checkpoint_dir/manifest.json``. Default
        folder: the shipped ``data/checkpoints``. A missing stage raises
        :class:`MissingCheckpointError` naming the file and the command that makes it.
        """
        d = Path(checkpoint_dir) if checkpoint_dir is not None else checkpoints.checkpoint_dir()
        manifest = d / "manifest.json"
        data = checkpoints.read_manifest(manifest)
        stages = []
        for name in STAGES:
            key = f"imagen_{name}"
            f = stage_file(d, name)
            if key not in data or not f.is_file():
                if name == "sr2":
                    break
                what = (f"{f} is missing" if not f.is_file() else
                        f"{manifest} has no entry {key!r} for {f}")
                raise MissingCheckpointError(
                    f"no Imagen cascade in {d}: {what}. Train it with: {train_command(name, profile, d)}"
                    + (" (after the base stage)" if name != "base" else "")
                    + ", or pass --checkpoint-dir / checkpoint_dir to a folder that holds one")
            stages.append(load_stage(f, device, verify_name=key, manifest=manifest))
        if encoder is None:
            encoder = text_encoders.get(stages[0].config.text_encoder, device=str(device))
        return cls(encoder, stages)

    def encode(self, prompts: Sequence[str]):
        """Prompts -> ``(emb (B, T, D), mask (B, T))``; unknown words give a warning naming them."""
        tok = getattr(self.encoder, "tokenizer", None)
        stoi = getattr(tok, "stoi", None)
        if stoi is not None:
            unknown = sorted({w for p in prompts for w in p.lower().split() if w not in stoi})
            if unknown:
                warnings.warn(f"unknown word(s) {unknown} are outside the text encoder's vocabulary: they "
                              "are read as <unk>, generation goes on", UserWarning, stacklevel=3)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            emb, mask = self.encoder.encode([p.lower() for p in prompts])
        return emb.float(), mask

    def sample_batches(self, prompts, n: int = 1, guidance=None, steps=None, seed: int = 0, sampler: str = "ddim",
                       threshold: str | None = None, aug_level=None, batch_size: int = 256, progress: bool = True,
                       eta: float | None = None, skip: Callable[[int, int], bool] | None = None,
                       ) -> Iterator[tuple[list[tuple[int, int]], torch.Tensor]]:
        """Generate ``n`` images per prompt batch by batch: yields ``(keys, images)`` per batch.

        ``keys`` is the batch's list of ``(line, k)`` (sample ``k`` of ``prompts[line]``),
        prompt-major; ``images`` is ``(len(keys), 3, R, R)`` float on the CPU in [-1, 1] at the
        final resolution. Image ``(line, k)`` depends only on ``(seed, line, k)``, the models and
        the settings, never on ``batch_size``, ``n`` or ``skip``: each image is drawn with its own
        generator per stage (:func:`image_seed`, :func:`stage_seed`). ``batch_size`` is only a
        speed (and memory) setting; batched kernels may still differ in the last bits between
        batch sizes.

        Every argument is checked when this is called, before any work (the generator it returns
        then only samples). The other arguments are those of :meth:`sample`, plus

        Args:
            skip: ``skip(line, k) -> bool``: an image for which it is true is left out entirely
                (e.g. one already written by an earlier run); the others are unchanged.
        """
        plan = self._plan(prompts, n, guidance, steps, seed, sampler, threshold, aug_level, batch_size, eta, skip)
        return ((keys, outs[-1]) for keys, outs in self._run(plan, progress, every_stage=False))

    @torch.no_grad()
    def sample(self, prompts, n: int = 1, guidance=None, steps=None, seed: int = 0, sampler: str = "ddim",
               threshold: str | None = None, aug_level=None, batch_size: int = 256, progress: bool = True,
               return_stages: bool = False, eta: float | None = None):
        """Generate ``n`` images per prompt at the final resolution: ``(P * n, 3, R, R)`` in [-1, 1].

        All of :meth:`sample_batches`, gathered: image ``(line, k)`` is row ``line * n + k``, the
        same for any ``batch_size`` and the same as sample ``k`` of any call with more samples.

        Args:
            prompts: a str or a list of P str.
            n: samples per prompt (>= 1).
            guidance: ``w >= 0`` (finite) for the base stage (SR stages keep their config's
                ``guidance``), or a sequence with one ``w`` per stage; ``None``: each stage's default.
            steps: sampling steps for every stage (an int in ``[1, timesteps]``: more is refused),
                a sequence per stage, or ``None`` (defaults).
            seed: an int in ``[0, 2**63)``; with the prompts, their order and the sample index it
                fixes each image (:func:`image_seed`).
            sampler: ``"ddim"`` (eta 0) or ``"ddpm"``.
            threshold: ``"dynamic"``, ``"static"`` or ``"none"`` for every stage, or ``None`` (each
                stage's ``config.threshold``).
            aug_level: SR augmentation level at sampling, finite in [0, 1] (default: each stage's
                ``aug_sample_level``).
            eta: DDIM noise scale in [0, 1] for every stage (default: each stage's ``eta``).
            batch_size: images generated at once (a speed setting: the images do not change).
            return_stages: also return the list of every stage's output.
        """
        plan = self._plan(prompts, n, guidance, steps, seed, sampler, threshold, aug_level, batch_size, eta, None)
        done = list(self._run(plan, progress, every_stage=return_stages))
        stages = [torch.cat([outs[i] for _, outs in done]) for i in range(len(done[0][1]))]
        return (stages[-1], stages) if return_stages else stages[-1]

    def _plan(self, prompts, n, guidance, steps, seed, sampler, threshold, aug_level, batch_size, eta, skip) -> dict:
        """Check every argument of :meth:`sample_batches` (before any work) and encode the prompts."""
        prompts = check_prompts(prompts)
        n = check_positive_int(n, "n")
        batch_size = check_positive_int(batch_size, "batch_size")
        seed = check_seed(seed, "seed")
        if skip is not None and not callable(skip):
            raise TypeError(f"skip must be None or a function skip(line, k) -> bool, got {type(skip).__name__}")
        ws = self._per_stage(guidance, "guidance", default=[s.config.guidance for s in self.stages], base_only=True)
        ks = self._per_stage(steps, "steps", default=[s.config.sample_steps for s in self.stages])
        settings = []
        for st, w, k in zip(self.stages, ws, ks):
            w, k, e, a, th = st.check_sampling(guidance=w, steps=k, eta=eta, aug_level=aug_level,
                                               threshold=threshold, sampler=sampler)
            settings.append(dict(guidance=w, steps=k, eta=e, aug_level=a, threshold=th, sampler=sampler))
        keys = [(line, k) for line in range(len(prompts)) for k in range(n) if skip is None or not skip(line, k)]
        emb, mask = self.encode(prompts)
        return dict(keys=keys, emb=emb, mask=mask, seed=seed, batch_size=batch_size, settings=settings)

    @torch.no_grad()
    def _run(self, plan: dict, progress: bool,
             every_stage: bool) -> Iterator[tuple[list[tuple[int, int]], list[torch.Tensor]]]:
        """Sample a :meth:`_plan` batch by batch: yields ``(keys, outputs)``, float on the CPU.

        ``outputs`` holds every stage's output (``every_stage``) or only the last stage's.
        """
        keys, bs = plan["keys"], plan["batch_size"]
        bar = tqdm(total=len(keys) * len(self.stages), desc="sampling cascade", leave=False) if progress else None
        try:
            for c0 in range(0, len(keys), bs):
                batch = keys[c0:c0 + bs]
                rows = torch.tensor([line for line, _ in batch])
                e, m = plan["emb"][rows], plan["mask"][rows]
                seeds = [image_seed(plan["seed"], line, k) for line, k in batch]
                x, outs = None, []
                for i, (st, kw) in enumerate(zip(self.stages, plan["settings"])):
                    gens = [torch.Generator().manual_seed(stage_seed(z, i)) for z in seeds]
                    x = st.sample(e, m, lowres=x, generator=gens, **kw)
                    if every_stage or i == len(self.stages) - 1:
                        outs.append(x.float().cpu())
                    if bar is not None:
                        bar.update(len(batch))
                yield batch, outs
        finally:
            if bar is not None:
                bar.close()

    def _per_stage(self, value, what, default, base_only=False):
        k = len(self.stages)
        if value is None:
            return list(default)
        if isinstance(value, (list, tuple)):
            if len(value) != k:
                raise ValueError(f"{what} must be one value or {k} values (one per stage), got {len(value)}")
            return list(value)
        if base_only:
            return [value] + list(default[1:])
        return [value] * k
