"""The Imagen cascade: a frozen text encoder, a base stage and one or two super-resolution stages.

Saharia et al. 2022, Section 2.4 (``saharia2022imagen``): the base stage generates a small
image from the text (16 px here); each super-resolution stage generates the next resolution
from the text and the previous stage's image, which it sees upsampled as extra input channels,
noised to a fixed augmentation level (:mod:`imagen_edu.noise_augmentation`). Every stage samples
with classifier-free guidance (:mod:`imagen_edu.guidance`) and thresholding of the predicted
``x0`` (:mod:`imagen_edu.thresholding`).

The cascade's images are judged by :func:`imagen_edu.evaluate.evaluate_cascade`.

Derived in chapter 5 (``book/05_imagen_cascade.ipynb``, Section "The cascade").
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Sequence

import torch
from tqdm.auto import tqdm

from . import checkpoints, text_encoders
from .stage import STAGES, ImagenStage, MissingCheckpointError, load_stage
from .stage_training import stage_file, train_command

__all__ = ["ImagenCascade", "check_prompts", "check_positive_int"]


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
    """``v`` if it is an int >= 1 (not a bool), else ``ValueError`` naming ``name``."""
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise ValueError(f"{name} must be an int >= 1, got {v!r}")
    return v


class ImagenCascade:
    """The text-to-image cascade: a frozen text encoder, a base stage and 1 or 2 SR stages.

    ``sample(prompts, n=4, guidance=3.0, steps=25, seed=0)`` returns ``(len(prompts) * n, 3, R, R)``
    images in [-1, 1] at the final resolution, prompt-major (the ``n`` samples of prompt 0 first).

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

    @torch.no_grad()
    def sample(self, prompts, n: int = 1, guidance=None, steps=None, seed: int = 0, sampler: str = "ddim",
               threshold: str | None = None, aug_level=None, batch_size: int = 256, progress: bool = True,
               return_stages: bool = False, eta: float | None = None):
        """Generate ``n`` images per prompt at the final resolution: ``(P * n, 3, R, R)`` in [-1, 1].

        Args:
            prompts: a str or a list of P str (batched together).
            n: samples per prompt (>= 1).
            guidance: ``w >= 0`` for the base stage (SR stages keep their config's ``guidance``),
                or a sequence with one ``w`` per stage; ``None``: each stage's default.
            steps: DDIM steps (>= 1) for every stage, a sequence per stage, or ``None`` (defaults).
            seed: seeds all noise: the same call gives the same images.
            sampler: ``"ddim"`` (eta 0) or ``"ddpm"``.
            threshold: ``"dynamic"``, ``"static"`` or ``"none"`` for every stage, or ``None`` (each
                stage's ``config.threshold``).
            aug_level: SR augmentation level at sampling (default: each stage's ``aug_sample_level``).
            eta: DDIM noise scale for every stage (default: each stage's ``eta``).
            batch_size: images generated at once.
            return_stages: also return the list of every stage's output.
        """
        prompts = check_prompts(prompts)
        check_positive_int(n, "n")
        check_positive_int(batch_size, "batch_size")
        k = len(self.stages)
        ws = self._per_stage(guidance, "guidance", default=[s.config.guidance for s in self.stages], base_only=True)
        for w in ws:
            if isinstance(w, bool) or not isinstance(w, (int, float)) or w < 0:
                raise ValueError(f"guidance must be a number >= 0, got {w!r}")
        ks = self._per_stage(steps, "steps", default=[s.config.sample_steps for s in self.stages])
        for s in ks:
            check_positive_int(s, "steps")
        texts = [p for p in prompts for _ in range(n)]
        emb, mask = self.encode(prompts)
        ids = torch.arange(len(prompts)).repeat_interleave(n)
        g = torch.Generator().manual_seed(int(seed))
        outs = [[] for _ in range(k)]
        chunks = range(0, len(texts), batch_size)
        bar = None
        if progress:
            bar = tqdm(total=len(texts) * k, desc="sampling cascade", leave=False)
        for c0 in chunks:
            sel = ids[c0:c0 + batch_size]
            e, m = emb[sel], mask[sel]
            x = None
            for i, st in enumerate(self.stages):
                x = st.sample(e, m, guidance=float(ws[i]), steps=int(ks[i]), lowres=x, aug_level=aug_level,
                              sampler=sampler, threshold=threshold, eta=eta, generator=g)
                outs[i].append(x)  # kept on the device: one copy to the host at the end
                if bar is not None:
                    bar.update(len(sel))
        if bar is not None:
            bar.close()
        stages = [torch.cat(o).cpu() for o in outs]
        return (stages[-1], stages) if return_stages else stages[-1]

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
