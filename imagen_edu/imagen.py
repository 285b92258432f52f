"""Imagen: a text-conditioned cascade of diffusion models (chapter 5), in one namespace.

Saharia et al. 2022, *Photorealistic Text-to-Image Diffusion Models with Deep Language
Understanding* (``saharia2022imagen``), at toy scale on the shapes benchmark. Each idea has its
own module; this one gathers their public names, so that a page can write ``imagen.X``:

====================================  ==================================================================
module                                idea
====================================  ==================================================================
:mod:`imagen_edu.text_encoders`       frozen text encoders by name (``toyt5``, ``lm+words``, ``t5:...``)
:mod:`imagen_edu.guidance`            masked-mean pooling, classifier-free guidance (Section 2.2)
:mod:`imagen_edu.thresholding`        static and dynamic thresholding of ``x0`` (Section 2.3)
:mod:`imagen_edu.noise_augmentation`  noise-conditioning augmentation of the low-res input (Section 2.4)
:mod:`imagen_edu.stage`               a stage: its config, the text-conditioned model, save/load
:mod:`imagen_edu.configs`             the recipes: a profile's stage configs (and the paper's)
:mod:`imagen_edu.stage_training`      training one stage with :class:`imagen_edu.train.Trainer`
:mod:`imagen_edu.cascade`             the cascade: base stage, then one or two SR stages
:mod:`imagen_edu.evaluate`            the judge, and its verdicts on the cascade
====================================  ==================================================================

In short: a frozen text encoder turns a prompt into token embeddings ``(B, T, D)`` with a mask
``(B, T)``; every stage is a :class:`~imagen_edu.unet.UNet` that reads the tokens by
cross-attention and their masked mean added to its timestep embedding; in training the text
of a row is replaced, with probability ``cond_drop_prob`` (0.1), by a learned null embedding,
and at sampling ``out = out_uncond + w (out_cond - out_uncond)``; the predicted ``x0`` is
thresholded at every step; the super-resolution stages see the previous stage's image,
upsampled and noised to a level ``a`` that is given to the network (random in training, fixed
at sampling).

Derived in chapter 5 (``book/05_*.ipynb``). Command line: ``python -m imagen_edu --help``.
"""

from __future__ import annotations

from .cascade import ImagenCascade
from .configs import stage_config, stage_configs
from .data.captions import converse_caption
from .evaluate import eval_captions, evaluate_cascade, relation_loss_test
from .guidance import GuidedDenoiser, guide, masked_mean
from .noise_augmentation import aug_alpha_bar, augment_lowres
from .stage import STAGES, ImagenStage, MissingCheckpointError, StageConfig, load_stage, save_stage
from .embcache import TextCache
from .stage_training import stage_file, train_command, train_stage
from .text_encoders import CanonicalCaptions, LMWordsAndStates, get_text_encoder
from .thresholding import dynamic_threshold, static_threshold

__all__ = [
    "STAGES",
    "dynamic_threshold",
    "static_threshold",
    "masked_mean",
    "guide",
    "augment_lowres",
    "aug_alpha_bar",
    "StageConfig",
    "ImagenStage",
    "GuidedDenoiser",
    "ImagenCascade",
    "TextCache",
    "LMWordsAndStates",
    "CanonicalCaptions",
    "get_text_encoder",
    "stage_config",
    "stage_configs",
    "train_stage",
    "save_stage",
    "load_stage",
    "stage_file",
    "train_command",
    "eval_captions",
    "evaluate_cascade",
    "converse_caption",
    "relation_loss_test",
    "MissingCheckpointError",
]
