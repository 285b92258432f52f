"""Using a trained CLIP: zero-shot classification, retrieval, relation probes, CLIP score (chapter 4).

The model of :mod:`imagen_edu.clip` maps images and captions into one space where the cosine
similarity says how well a caption describes an image. Chapter 4 (``book/04_clip.ipynb``) reads
that similarity four ways:

* :func:`zero_shot_classify`, Eq. (ch4-eq-zeroshot): a caption per class, the nearest caption wins
  (:func:`zero_shot_accuracy` among the 18 colour-shape classes);
* :func:`retrieval_recall_at_k`: captions find their images among N;
* :func:`relation_probe`: hard negatives with the same words in another arrangement (another
  relation, the colours or the shapes swapped) ask whether the model reads *how* things are placed;
* as a *judge* of generated images, :func:`clip_score`, Eq. (ch4-eq-clipscore), and :func:`rerank`
  (chapter 5 keeps the best of N samples); :mod:`imagen_edu.evaluate` re-exports both.

:func:`evaluate` gathers the chapter's figures on fixed scenes (:func:`eval_data`, seed 0), and
:func:`main` is the command line ``python -m imagen_edu.clip {train,eval}`` (the recorded
command of the shipped checkpoint).
"""

from __future__ import annotations

import sys

import torch

from . import checkpoints
from .clip import IMAGE_TOWERS, SHIPPED_NAME, CLIPModel, load_model, load_shipped, save_model, train_clip
from .data.captions import RELATIONS, all_objects, make_caption, parse_caption
from .data.shapes import make_batch

__all__ = [
    "EVAL_SEED",
    "class_captions",
    "zero_shot_classify",
    "zero_shot_accuracy",
    "retrieval_recall_at_k",
    "relation_probe",
    "eval_data",
    "evaluate",
    "TOWER_METRICS",
    "tower_row",
    "compare_towers",
    "clip_score",
    "rerank",
    "main",
]


# ---------------------------------------------------------------------------------------------
# Using the model: zero-shot classification, retrieval, relation probes
# ---------------------------------------------------------------------------------------------
def class_captions() -> list[str]:
    """The 18 one-object captions ``a COLOUR SHAPE``, one per colour-shape class (hue order)."""
    return [make_caption([o]) for o in all_objects()]


@torch.no_grad()
def _embed_images(model: CLIPModel, images: torch.Tensor, chunk: int = 256) -> torch.Tensor:
    return torch.cat([model.encode_image(images[i:i + chunk]) for i in range(0, images.shape[0], chunk)])


@torch.no_grad()
def zero_shot_classify(model: CLIPModel, images: torch.Tensor, class_captions, return_probs: bool = False):
    """Zero-shot classification: each image gets the class whose caption embedding is nearest.

    Derived in chapter 4, Eq. (ch4-eq-zeroshot): ``argmax_c  u_image . v_caption(c)``.

    Args:
        images: ``(B, 3, R, R)`` in [-1, 1].
        class_captions: list of C caption strings, one per class (e.g. :func:`class_captions`).
        return_probs: also return ``softmax(s * similarities)`` ``(B, C)``.

    Returns:
        ``pred (B,)`` long class indices (and the probabilities when asked).
    """
    if isinstance(class_captions, str) or len(list(class_captions)) < 2:
        raise ValueError("class_captions must be a list of at least 2 caption strings")
    model.eval()
    u = _embed_images(model, images)
    v = model.encode_text(list(class_captions))
    logits = model.logit_scale() * (u @ v.T)      # (B, C)
    pred = logits.argmax(dim=1)
    return (pred, logits.softmax(dim=1)) if return_probs else pred


@torch.no_grad()
def zero_shot_accuracy(model: CLIPModel, images: torch.Tensor, captions) -> float:
    """Accuracy of :func:`zero_shot_classify` among the 18 classes on one-object images."""
    classes = class_captions()
    lookup = {c: i for i, c in enumerate(classes)}
    try:
        truth = torch.tensor([lookup[c] for c in captions])
    except KeyError as err:
        raise ValueError(f"zero_shot_accuracy needs one-object captions 'a COLOUR SHAPE', got {err}") from None
    pred = zero_shot_classify(model, images, classes).cpu()
    return float((pred == truth).float().mean())


@torch.no_grad()
def retrieval_recall_at_k(model: CLIPModel, images: torch.Tensor, captions, k: int = 1) -> float:
    """Text-to-image recall@k: the fraction of captions whose image is among their top ``k`` images.

    Derived in chapter 4 ("Retrieval"). Each of the N captions ranks the N images by cosine
    similarity; a hit is an image among the top ``k`` whose own caption is the query caption
    (so an identical caption of another image counts as correct too).

    Args:
        images: ``(N, 3, R, R)``; captions: list of N strings, caption ``i`` describes image ``i``.
        k: how many top images count (1 <= k <= N).
    """
    captions = list(captions)
    if isinstance(images, torch.Tensor) and images.shape[0] != len(captions):
        raise ValueError(f"got {images.shape[0]} images but {len(captions)} captions")
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= len(captions):
        raise ValueError(f"k must be an int in [1, N={len(captions)}], got {k!r}")
    model.eval()
    u = _embed_images(model, images)
    v = model.encode_text(captions)
    sim = v @ u.T                                           # (N captions, N images)
    top = sim.topk(k, dim=1).indices.cpu()                  # (N, k)
    hits = [any(captions[j] == captions[i] for j in top[i].tolist()) for i in range(len(captions))]
    return sum(hits) / len(hits)


@torch.no_grad()
def relation_probe(model: CLIPModel, images: torch.Tensor, captions) -> dict:
    """How well the model reads *relations* and *attribute binding* in two-object scenes.

    For each two-object image the model picks (image -> text) among hard negative captions with
    the same words in another arrangement:

    * ``relation``: the 4 captions that differ only in the relation (chance 1/4);
    * ``swap_colours``: the true caption vs the one with the two colours swapped (chance 1/2);
    * ``swap_shapes``: the true caption vs the one with the two shapes swapped, when the shapes
      differ (chance 1/2).

    Returns ``{"relation": acc, "swap_colours": acc, "swap_shapes": acc, "n": N, "n_swap_shapes": M}``.
    """
    captions = list(captions)
    if images.shape[0] != len(captions):
        raise ValueError(f"got {images.shape[0]} images but {len(captions)} captions")
    model.eval()
    u = _embed_images(model, images)
    rel_hits, col_hits, shp_hits = [], [], []
    for i, cap in enumerate(captions):
        p = parse_caption(cap)
        if p.relation is None:
            raise ValueError(f"relation_probe needs two-object captions, got {cap!r}")
        (c1, s1), (c2, s2) = p.objects
        cands = [make_caption(p.objects, r) for r in RELATIONS]
        sims = u[i] @ model.encode_text(cands).T
        rel_hits.append(cands[int(sims.argmax())] == p.text)
        swap_c = make_caption([(c2, s1), (c1, s2)], p.relation)
        sims = u[i] @ model.encode_text([p.text, swap_c]).T
        col_hits.append(bool(sims[0] > sims[1]))
        if s1 != s2:
            swap_s = make_caption([(c1, s2), (c2, s1)], p.relation)
            sims = u[i] @ model.encode_text([p.text, swap_s]).T
            shp_hits.append(bool(sims[0] > sims[1]))
    mean = lambda xs: sum(xs) / len(xs) if xs else float("nan")  # noqa: E731
    return {"relation": mean(rel_hits), "swap_colours": mean(col_hits), "swap_shapes": mean(shp_hits),
            "n": len(captions), "n_swap_shapes": len(shp_hits)}


#: seed of the fixed evaluation scenes (:func:`eval_data`)
EVAL_SEED = 0


def eval_data(split: str, n: int, two_objects: bool, resolution: int = 32):
    """The fixed evaluation images of a split: ``n`` one-object (or two-object) scenes, seed 0."""
    return make_batch(n, split, resolution, seed=EVAL_SEED, two_object_fraction=1.0 if two_objects else 0.0)


def evaluate(model: CLIPModel, n_zero_shot: int = 180, n_retrieval: int = 100) -> dict:
    """The chapter's figures on fixed test and held-out data (seed 0).

    * ``zero_shot_{test,heldout}``: accuracy among the 18 classes on ``n_zero_shot`` one-object images;
    * ``r1_{test,heldout}``, ``r5_test``: text-to-image recall@k among ``n_retrieval`` two-object scenes;
    * ``relation_{test,heldout}``, ``swap_colours_test``, ``swap_shapes_test``: :func:`relation_probe`.
    """
    r = model.config.image_size
    out: dict = {"n_zero_shot": n_zero_shot, "n_retrieval": n_retrieval}
    for split in ("test", "heldout"):
        x, c = eval_data(split, n_zero_shot, False, r)
        out[f"zero_shot_{split}"] = zero_shot_accuracy(model, x, c)
        x, c = eval_data(split, n_retrieval, True, r)
        out[f"r1_{split}"] = retrieval_recall_at_k(model, x, c, k=1)
        if split == "test":
            out["r5_test"] = retrieval_recall_at_k(model, x, c, k=5)
        probe = relation_probe(model, x, c)
        out[f"relation_{split}"] = probe["relation"]
        out[f"swap_colours_{split}"] = probe["swap_colours"]
        out[f"swap_shapes_{split}"] = probe["swap_shapes"]
    out["logit_scale"] = float(model.logit_scale().detach())
    return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in out.items()}


# ---------------------------------------------------------------------------------------------
# The two image towers at the same budget (chapter 4, "Two image towers")
# ---------------------------------------------------------------------------------------------
#: the figures of :func:`evaluate` the chapter compares the towers on
TOWER_METRICS = ("zero_shot_test", "zero_shot_heldout", "r1_test", "r5_test", "r1_heldout",
                 "relation_test", "swap_colours_test", "swap_shapes_test")


def tower_row(settings, image_tower: str, seed: int = 0, progress: bool = False) -> dict:
    """Train one image tower with :func:`imagen_edu.clip.train_clip` and measure it with :func:`evaluate`.

    Both towers get the same ``settings`` (the same text tower, data, steps, batch and learning
    rate): the budget is the number of steps, so ``settings.max_seconds`` should be ``None`` for a
    fair row. Returns the :data:`TOWER_METRICS` and ``steps``, ``train_seconds``, ``final_loss``,
    ``n_params`` (whole model) and ``image_params`` (the image tower alone).
    """
    res = train_clip(settings, seed=seed, progress=progress, image_tower=image_tower)
    model = res.model.to("cpu").eval()   # measured on the CPU, as the shipped checkpoint is
    metrics = evaluate(model, n_zero_shot=settings.n_zero_shot, n_retrieval=settings.n_eval)
    row = {k: metrics[k] for k in TOWER_METRICS}
    row.update(steps=len(res.losses), train_seconds=round(res.seconds, 1), final_loss=round(res.losses[-1], 4),
               n_params=model.num_params(), image_params=sum(p.numel() for p in model.image_encoder.parameters()))
    return row


def compare_towers(settings, towers=IMAGE_TOWERS, seed: int = 0, progress: bool = False) -> dict:
    """``{tower: tower_row(settings, tower, seed)}`` for each image tower (``"cnn"``, ``"vit"``)."""
    return {t: tower_row(settings, t, seed, progress) for t in towers}


# ---------------------------------------------------------------------------------------------
# CLIP as a judge: CLIP score and reranking
# ---------------------------------------------------------------------------------------------
@torch.no_grad()
def clip_score(images: torch.Tensor, captions, model: CLIPModel | None = None) -> torch.Tensor:
    """CLIP score of each (image, caption) pair: ``100 * max(cos(u_i, v_i), 0)``, shape ``(B,)``.

    Derived in chapter 4, Eq. (ch4-eq-clipscore). This is the "CLIP score" reported by text-to-image
    papers (Imagen's FID vs CLIP-score curves; torchmetrics' ``CLIPScore``): the cosine similarity
    of the paired embeddings, clipped at 0 and multiplied by 100. (Hessel et al.'s CLIPScore uses
    ``2.5 * max(cos, 0)`` instead; the ranking is identical.) Higher means the model finds the
    caption a better description of the image. The value is only comparable between images
    judged by the *same* CLIP model.

    Args:
        images: ``(B, 3, H, W)`` in [-1, 1] (resized to the model's resolution if needed).
        captions: list of B strings (or a single string, used for every image).
        model: a :class:`CLIPModel`; ``None`` loads the shipped checkpoint (:func:`load_shipped`).
    """
    model = load_shipped() if model is None else model
    if not isinstance(model, CLIPModel):
        raise TypeError(f"model must be a CLIPModel or None, got {type(model).__name__}")
    if not isinstance(images, torch.Tensor) or images.dim() != 4:
        raise ValueError(f"images must be a (B, 3, H, W) tensor in [-1, 1], got {tuple(getattr(images, 'shape', ()))}")
    if isinstance(captions, str):
        captions = [captions] * images.shape[0]
    captions = list(captions)
    if len(captions) != images.shape[0]:
        raise ValueError(f"got {images.shape[0]} images but {len(captions)} captions: one caption per image")
    model.eval()
    u = _embed_images(model, images)
    v = model.encode_text(captions)
    cos = (u * v).sum(dim=-1)                               # (B,) paired cosine similarities
    return (100.0 * cos.clamp(min=0)).cpu()


@torch.no_grad()
def rerank(images: torch.Tensor, caption: str, model: CLIPModel | None = None) -> torch.Tensor:
    """Indices of ``images (N, 3, H, W)`` sorted by :func:`clip_score` against ``caption``, best first.

    ``images[rerank(images, caption)]`` puts the sample CLIP finds most faithful first (chapter 5
    draws N samples per prompt and keeps the best, as DALL-E did with CLIP). Ties (e.g. several
    scores clipped at 0) keep their original order.
    """
    if not isinstance(caption, str):
        raise TypeError(f"caption must be one string, got {type(caption).__name__}")
    scores = clip_score(images, caption, model)
    return torch.sort(scores, descending=True, stable=True).indices


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------
def main(argv=None) -> int:
    """``python -m imagen_edu.clip {train,eval}``: train and record, or re-measure, the chapter-4 model.

    Returns the exit status: 2 with one line on stderr for a bad argument (an unwritable ``--out``,
    a ``--ckpt`` that is not a CLIP checkpoint...), checked before any work; see
    :func:`imagen_edu.checkpoints.model_cli`.
    """
    def train_and_measure(prof, seed, out):
        res = train_clip(prof.clip, seed=seed, progress=sys.stderr.isatty())
        model = res.model.to("cpu").eval()
        metrics = evaluate(model, n_zero_shot=prof.clip.n_zero_shot, n_retrieval=prof.clip.n_eval)
        metrics.update(train_seconds=round(res.seconds, 1), final_loss=round(res.losses[-1], 4),
                       steps=len(res.losses), n_params=model.num_params(), train_threads=1)
        save_model(out, model, {"profile": prof.name, "seed": seed, "settings": res.settings})
        return metrics

    def evaluate_checkpoint(model, args, recorded):
        return evaluate(model, n_zero_shot=recorded.get("n_zero_shot", 180),
                        n_retrieval=recorded.get("n_retrieval", 100))

    return checkpoints.model_cli(
        argv, prog="python -m imagen_edu.clip", name=SHIPPED_NAME, filename="clip.safetensors",
        description="Train or evaluate the chapter-4 CLIP model on the shapes benchmark.",
        train_and_measure=train_and_measure,
        load_checkpoint=lambda ckpt, name: load_model(ckpt)[0] if ckpt else load_shipped(name),
        evaluate_checkpoint=evaluate_checkpoint)


if __name__ == "__main__":
    raise SystemExit(main())
