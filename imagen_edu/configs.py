"""Named model configurations: the book's toy cascades (chapter 5) and the paper's three U-Nets (chapter 6).

**The toy recipes.** :func:`stage_configs` builds the :class:`~imagen_edu.stage.StageConfig` of
every stage of a compute profile's cascade from its :class:`~imagen_edu.profiles.ImagenSettings`:
the settings shared by every stage, then the stage's own fields (``settings.stages``), then what
follows from them: a super-resolution stage reads the previous stage's resolution
(``lowres_resolution``, ``unet.lowres_channels = 3``), every U-Net reads the text encoder's width
(``cond_dim == context_dim == text_dim``), its heads and groups follow its width
(:func:`imagen_edu.unet.heads_and_groups`) and the warm-up follows the steps (:func:`toy_warmup`).
:func:`stage_config` picks one stage of a profile.

**Named configs.** Every entry is a :class:`NamedConfig`: a name such as ``"toy-cpu/base"`` or
``"paper/base64"``, a :class:`~imagen_edu.stage.StageConfig` (the U-Net, text width and training
recipe) and the text encoder it reads. Parameters are counted on PyTorch's ``meta`` device
(:func:`count_parameters`): the modules are built with shapes but no storage, so counting the
2-billion-parameter base model allocates nothing and takes a fraction of a second.

``python -m imagen_edu configs`` (``--json``) prints them all.

**The paper's U-Nets** (Saharia et al. 2022, Appendix F; parameter counts from its Section 4.1):

========================  ==========  =============================================
name                      paper size  layout (ours)
========================  ==========  =============================================
``paper/base64``          2B          64 px, widths 480 x (1, 2, 3, 4), 3 ResBlocks per
                                      level, self- and cross-attention at 32, 16, 8 px
``paper/sr256``           600M        64 -> 256 px Efficient U-Net, widths 104 x (1, 2, 4, 8),
                                      (2, 4, 8, 8) ResBlocks, self- and cross-attention at 32 px
``paper/sr1024``          400M        256 -> 1024 px, widths 88 x (1, 2, 4, 8), (2, 4, 8, 8)
                                      ResBlocks, cross-attention only (at 128 px)
========================  ==========  =============================================

All three read T5-XXL (``google/t5-v1_1-xxl``, ``d_model`` 4096): ``cond_dim == context_dim == 4096``.

The channel multipliers, blocks per level and attention placement follow the paper (its
64 px model adapts Dhariwal and Nichol's U-Net with base width 512, multipliers (1, 2, 3, 4),
3 blocks and attention at 32, 16 and 8 px; its Efficient U-Net for 256 px uses base width 128,
multipliers (1, 2, 4, 8) and (2, 4, 8, 8) blocks with attention only at the lowest resolution;
the 1024 px model is the same with self-attention removed). The base *widths* are narrower than
the paper's because our :class:`~imagen_edu.unet.UNet` spends parameters differently:

* every cross-attention layer projects the 4096-d T5 tokens to keys and values itself
  (``2 * 4096 * C`` weights per layer), where an implementation may first project the text
  once to a narrower width;
* the up path has ``blocks + 1`` ResBlocks per level, each reading a concatenated skip
  connection (Dhariwal and Nichol's layout), where the Efficient U-Net has ``blocks``;
* our attention layers have no MLP, so removing self-attention (1024 px model) saves far less
  than the 200M the paper's two super-resolution models differ by.

With the paper's exact widths our U-Net has about 2.37B, 891M and 819M parameters
(:func:`paper_width_stage`); narrowing the base width brings each within a few percent of the
paper's count while keeping its shape. The recipes carry the paper's batch size (2048), peak
learning rate (1e-4) and 10k warm-up steps; Imagen trained for 2.5M steps.

Toy recipes derived in chapter 5; the paper's configs in chapter 6 (Section "Paper-size configs").
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace

import torch

from . import profiles, text_encoders
from .stage import STAGES, ImagenStage, StageConfig
from .unet import UNet, UNetConfig

__all__ = ["NamedConfig", "T5_XXL", "T5_XXL_DIM", "paper_configs", "toy_configs", "stage_configs", "stage_config",
           "unet_config", "toy_warmup", "all_configs", "names", "get", "count_parameters",
           "build_on_meta", "summary_table", "PAPER_WIDTHS", "paper_width_stage", "comparison_stage"]

#: the text encoder of Imagen's paper models (Hugging Face hub name) and its width
T5_XXL = "google/t5-v1_1-xxl"
T5_XXL_DIM = 4096

#: the paper's base widths; ours are narrower (see the module docstring and :func:`paper_width_stage`)
PAPER_WIDTHS = {"paper/base64": 512, "paper/sr256": 128, "paper/sr1024": 128}


@dataclass(frozen=True)
class NamedConfig:
    """A named stage configuration.

    Attributes:
        name: ``"toy-PROFILE/STAGE"`` or ``"paper/base64"``, ``"paper/sr256"``, ``"paper/sr1024"``.
        stage: the :class:`~imagen_edu.stage.StageConfig` (``stage.text_encoder`` is the name
            for :func:`imagen_edu.text_encoders.get`, e.g. ``"t5:google/t5-v1_1-xxl"``).
        text_encoder: the text encoder in words: ``"google/t5-v1_1-xxl"`` or the toy encoder's name.
        paper_params: the paper's parameter count (``None`` for toy configs).
        description: one line.
    """

    name: str
    stage: StageConfig
    text_encoder: str
    paper_params: int | None = None
    description: str = ""
    notes: str = field(default="", compare=False)

    @property
    def resolution(self) -> int:
        return self.stage.resolution

    @property
    def lowres_resolution(self) -> int | None:
        return self.stage.lowres_resolution

    @property
    def text_dim(self) -> int:
        return self.stage.text_dim

    def num_params(self) -> int:
        """Parameters of the stage's model (U-Net and null text embeddings), counted on ``meta``."""
        return count_parameters(self.stage)

    def build(self, device="meta") -> ImagenStage:
        """The :class:`~imagen_edu.stage.ImagenStage`; on ``meta`` by default (no storage)."""
        return build_on_meta(self.stage) if str(device) == "meta" else ImagenStage(self.stage).to(device)

    def summary(self) -> dict:
        """A JSON-ready dict: name, resolution, lowres_resolution, params, paper_params, text encoder..."""
        n = self.num_params()
        out = {"name": self.name, "resolution": self.resolution, "lowres_resolution": self.lowres_resolution,
               "params": n, "paper_params": self.paper_params,
               "params_vs_paper": None if self.paper_params is None else round(n / self.paper_params, 4),
               "text_encoder": self.text_encoder, "text_dim": self.text_dim,
               "channels": self.stage.unet.channels, "channel_mults": list(self.stage.unet.channel_mults),
               "num_res_blocks": list(self.stage.unet.res_blocks_per_level()),
               "attention_resolutions": list(self.stage.unet.attention_resolutions),
               "cross_attention_resolutions": list(self.stage.unet.cross_resolutions()),
               "description": self.description}
        return out


def build_on_meta(stage: StageConfig) -> ImagenStage:
    """Build an :class:`~imagen_edu.stage.ImagenStage` on the ``meta`` device: shapes, no storage."""
    if not isinstance(stage, StageConfig):
        raise TypeError(f"stage must be a StageConfig, got {type(stage).__name__}")
    with torch.device("meta"):
        return ImagenStage(stage)


def count_parameters(obj) -> int:
    """Number of parameters of a module, a :class:`StageConfig`, a ``UNetConfig`` or a :class:`NamedConfig`.

    Configs are built on the ``meta`` device, so nothing is allocated whatever the size.
    """
    if isinstance(obj, NamedConfig):
        obj = obj.stage
    if isinstance(obj, StageConfig):
        obj = build_on_meta(obj)
    elif isinstance(obj, UNetConfig):
        with torch.device("meta"):
            obj = UNet(obj)
    if not isinstance(obj, torch.nn.Module):
        raise TypeError(f"count_parameters takes a module or a config, got {type(obj).__name__}")
    return sum(p.numel() for p in obj.parameters())


# ---------------------------------------------------------------------------------------------
# The toy recipes: StageConfigs from a profile's ImagenSettings (chapter 5)
# ---------------------------------------------------------------------------------------------
def unet_config(resolution, channels, mults, blocks, attn, cross, text_dim, lowres=False, heads=None,
                groups=None) -> UNetConfig:
    """A stage's :class:`~imagen_edu.unet.UNetConfig`: ``image_size = resolution``, the text width
    ``text_dim`` for both the pooled vector and the cross-attention context, and 3 extra input
    channels for the low-resolution image of a super-resolution stage. Heads and groups default to
    :func:`imagen_edu.unet.heads_and_groups` of the width."""
    return UNetConfig(image_size=resolution, channels=channels, channel_mults=tuple(mults),
                      num_res_blocks=blocks, attention_resolutions=tuple(attn), num_heads=heads, groups=groups,
                      cond_dim=text_dim, context_dim=text_dim, cross_attention_resolutions=tuple(cross),
                      lowres_channels=3 if lowres else None)


def toy_warmup(steps: int) -> int:
    """The toy recipes' linear warm-up: 10 % of the steps, at least 1 and at most 50."""
    return min(50, max(1, steps // 10))


def stage_configs(settings, text_dim: int | None = None) -> dict[str, StageConfig]:
    """The cascade's :class:`~imagen_edu.stage.StageConfig` s, ``{"base": ..., "sr1": ...}`` (and
    ``"sr2"`` when ``settings.stages`` has it), from an :class:`imagen_edu.profiles.ImagenSettings`.

    Each stage: the fields every stage shares (``settings.text_encoder``, ``timesteps``, ...),
    then its own (``settings.stages[name]``), then what follows (module docstring). ``text_dim``
    defaults to the width of ``settings.text_encoder`` (which is loaded to find it).
    """
    s = settings
    if list(s.stages) not in (list(STAGES[:2]), list(STAGES)):
        raise ValueError(f"settings.stages must be {list(STAGES[:2])} or {list(STAGES)}, got {list(s.stages)}")
    D = text_encoders.get(s.text_encoder).dim if text_dim is None else text_dim
    common = dict(text_dim=D, text_encoder=s.text_encoder, timesteps=s.timesteps, objective=s.objective, lr=s.lr,
                  ema_decay=s.ema_decay, cond_drop_prob=s.cond_drop_prob, n_train_images=s.n_train_images)
    out, previous = {}, None
    for name, own in s.stages.items():
        own = dict(own)
        u = dict(own.pop("unet"))
        unet = unet_config(own["resolution"], u.pop("channels"), u.pop("channel_mults"), u.pop("num_res_blocks"),
                           u.pop("attention_resolutions"), u.pop("cross_attention_resolutions"), D,
                           lowres=previous is not None)
        if u:  # any other U-Net field a stage sets
            unet = replace(unet, **u)
        lowres = None if previous is None else previous.resolution
        out[name] = previous = StageConfig(name=name, lowres_resolution=lowres, unet=unet,
                                           **{"warmup": toy_warmup(own["steps"]), **common, **own})
    return out


def stage_config(stage: str, profile=None, text_dim: int | None = None) -> StageConfig:
    """The :class:`~imagen_edu.stage.StageConfig` of ``stage`` for a profile (a name or a
    :class:`~imagen_edu.profiles.Profile`; default: the current one): :func:`stage_configs` of its
    ``imagen`` settings."""
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}: expected one of {STAGES}")
    prof = profiles.current() if profile is None else (profile if isinstance(profile, profiles.Profile)
                                                       else profiles.get(profile))
    recipe = stage_configs(prof.imagen, text_dim)
    if stage not in recipe:
        raise ValueError(f"the {prof.name!r} recipe has no stage {stage!r}; it has {sorted(recipe)}")
    return recipe[stage]


def comparison_stage(text_encoder: str, text_dim: int, *, channels: int = 32, cross: bool = True,
                     pooling: str = "mean", steps: int = 1000) -> StageConfig:
    """The base stage of one row of chapter 5c's comparison tables (the paper's text-encoder findings).

    The ``cpu`` profile's base stage reading ``text_encoder`` (width ``text_dim``), with
    ``channels`` U-Net channels, cross-attention to the tokens or none (``cross=False``: the pooled
    vector is then all the U-Net reads of the text), the ``pooling`` of
    :class:`~imagen_edu.stage.StageConfig`, and ``steps`` steps: the cosine schedule's whole
    length and no time cap, so every row trains the same steps on any machine. Seed 0.
    """
    cfg = stage_config("base", "cpu", text_dim=text_dim)
    unet = {"channels": channels, **({} if cross else {"cross_attention_resolutions": ()})}
    return cfg.replace(unet=unet, pooling=pooling, steps=steps, max_seconds=None, text_encoder=text_encoder)


# ---------------------------------------------------------------------------------------------
# The paper's U-Nets (Saharia et al. 2022, Appendix F)
# ---------------------------------------------------------------------------------------------
def _paper_unet(resolution, channels, mults, blocks, attn, cross, groups, lowres):
    """:func:`unet_config` with the paper's 8 heads and T5-XXL's width."""
    return unet_config(resolution, channels, mults, blocks, attn, cross, T5_XXL_DIM, lowres, heads=8, groups=groups)


# the recipe shared by the three models: batch 2048, peak lr 1e-4 after 10k warm-up steps
# (Saharia et al. 2022, Appendix F), 2.5M steps; EMA 0.9999 is a common choice (not from the paper)
_PAPER_RECIPE = dict(text_dim=T5_XXL_DIM, text_encoder=f"t5:{T5_XXL}", batch_size=2048, lr=1e-4, warmup=10_000,
                     steps=2_500_000, ema_decay=0.9999, cond_drop_prob=0.1, timesteps=1000, schedule="cosine")


def paper_configs() -> dict[str, NamedConfig]:
    """The paper's base 64 px, 64 -> 256 and 256 -> 1024 U-Nets (see the module docstring for choices)."""
    base = StageConfig(name="base", resolution=64,
                       unet=_paper_unet(64, 480, (1, 2, 3, 4), 3, (32, 16, 8), (32, 16, 8), 32, False),
                       guidance=3.0, **_PAPER_RECIPE)
    sr256 = StageConfig(name="sr1", resolution=256, lowres_resolution=64,
                        unet=_paper_unet(256, 104, (1, 2, 4, 8), (2, 4, 8, 8), (32,), (32,), 8, True),
                        guidance=1.0, **_PAPER_RECIPE)
    sr1024 = StageConfig(name="sr2", resolution=1024, lowres_resolution=256,
                         unet=_paper_unet(1024, 88, (1, 2, 4, 8), (2, 4, 8, 8), (), (128,), 8, True),
                         guidance=1.0, **_PAPER_RECIPE)
    note = ("narrower base width than the paper's {} (see imagen_edu.configs): with the paper's width our UNet "
            "has about {} parameters, because its cross-attention layers each project the 4096-d text and its "
            "up path has one more ResBlock per level")
    return {
        "paper/base64": NamedConfig(
            "paper/base64", base, T5_XXL, 2_000_000_000,
            "Imagen base model, 64 px (paper: ~2B; base width 512 -> ours 480, mults 1,2,3,4, 3 blocks)",
            note.format(512, "2.37B")),
        "paper/sr256": NamedConfig(
            "paper/sr256", sr256, T5_XXL, 600_000_000,
            "Imagen 64->256 Efficient U-Net (paper: ~600M; base width 128 -> ours 104, blocks 2,4,8,8)",
            note.format(128, "891M")),
        "paper/sr1024": NamedConfig(
            "paper/sr1024", sr1024, T5_XXL, 400_000_000,
            "Imagen 256->1024 Efficient U-Net, no self-attention in the levels (paper: ~400M; width 128 -> ours 88)",
            note.format(128, "819M")
            + "; our UNet keeps one self-attention layer in its middle block (at 128 px), which the paper's drops"),
    }


def paper_width_stage(name: str) -> StageConfig:
    """The paper config ``name`` with the paper's own base width (512 or 128) instead of ours.

    For comparison only: our U-Net spends more parameters per width (module docstring), so these
    are 18 % to 105 % larger than the paper's counts.
    """
    cfgs = paper_configs()
    if name not in cfgs:
        raise ValueError(f"unknown paper config {name!r}: expected one of {list(cfgs)}")
    # the paper's widths are multiples of 32: GroupNorm with the usual 32 groups
    return cfgs[name].stage.replace(unet={"channels": PAPER_WIDTHS[name], "groups": 32})


# ---------------------------------------------------------------------------------------------
# The book's toy cascades (one per compute profile)
# ---------------------------------------------------------------------------------------------
_TOY_CACHE: dict[str, dict[str, NamedConfig]] = {}


def toy_configs(profile: str) -> dict[str, NamedConfig]:
    """``{"toy-P/base": ..., "toy-P/sr1": ...}`` (and ``"toy-P/sr2"`` where the profile has a third
    stage): :func:`stage_configs` of profile ``P``.

    Their text width comes from the shipped chapter-2 language model (loaded once to read it).
    """
    prof = profiles.get(profile)
    if prof.name not in _TOY_CACHE:
        s = prof.imagen
        out = {}
        for stage, cfg in stage_configs(s).items():
            name = f"toy-{prof.name}/{stage}"
            what = (f"{cfg.resolution} px base stage" if not cfg.is_sr else
                    f"{cfg.lowres_resolution}->{cfg.resolution} px super-resolution stage")
            out[name] = NamedConfig(name, cfg, s.text_encoder, None, f"the book's {prof.name}-profile {what}")
        _TOY_CACHE[prof.name] = out
    return dict(_TOY_CACHE[prof.name])


def all_configs() -> dict[str, NamedConfig]:
    """Every named config: the toy ones of each profile (ci, cpu, gpu), then the paper's."""
    out: dict[str, NamedConfig] = {}
    for p in profiles.names():
        out.update(toy_configs(p))
    out.update(paper_configs())
    return out


def names() -> list[str]:
    """The names :func:`get` accepts."""
    return [f"toy-{p}/{s}" for p in profiles.names() for s in profiles.get(p).imagen.stages] + list(paper_configs())


def get(name: str) -> NamedConfig:
    """The :class:`NamedConfig` called ``name``; ``ValueError`` listing the names otherwise."""
    if not isinstance(name, str):
        raise TypeError(f"config name must be a str, got {type(name).__name__}")
    if name in paper_configs():
        return paper_configs()[name]
    if name.startswith("toy-") and "/" in name:
        prof = name[4:].split("/", 1)[0]
        if prof in profiles.names():
            cfgs = toy_configs(prof)
            if name in cfgs:
                return cfgs[name]
    raise ValueError(f"unknown config {name!r}: expected one of {names()}")


def _human(n: int) -> str:
    for unit, div in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= div:
            return f"{n / div:.2f}{unit}"
    return str(n)


def summary_table(configs=None, as_json: bool = False) -> str:
    """The listing printed by ``python -m imagen_edu configs``: one line (or JSON object) per config."""
    configs = all_configs() if configs is None else configs
    rows = [c.summary() for c in configs.values()]
    if as_json:
        return json.dumps(rows, indent=1)
    lines = [f"{'name':<14} {'resolution':<12} {'params':>16} {'paper':>7}  text encoder"]
    for r in rows:
        res = f"{r['lowres_resolution']}->{r['resolution']}" if r["lowres_resolution"] else f"{r['resolution']}"
        paper = _human(r["paper_params"]) if r["paper_params"] else "-"
        lines.append(f"{r['name']:<14} {res:<12} {r['params']:>16,} {paper:>7}  {r['text_encoder']}")
    return "\n".join(lines)
