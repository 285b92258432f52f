"""Tests of the analytic judge (imagen_edu.evaluate)."""

import random

import pytest
import torch
from torchvision.transforms.functional import gaussian_blur

from imagen_edu.data.shapes import Scene, SceneObject, make_batch, render
from imagen_edu.evaluate import (
    attribute_accuracy, colour_masks, connected_components, count_clean_objects, detect_objects,
    detect_objects_batch, relation_holds,
)

N = 240  # images per accuracy check


@pytest.fixture(scope="module")
def rendered():
    """Test-split images at 32 and 64 px with their captions (rendered once for the module)."""
    return {r: make_batch(N, "test", r, seed=5) for r in (32, 64)}


def _bfs_components(mask):
    """An independent 8-connected labelling by flood fill (list of sets of pixels)."""
    H, W = len(mask), len(mask[0])
    seen, comps = set(), []
    for y in range(H):
        for x in range(W):
            if mask[y][x] and (y, x) not in seen:
                stack, comp = [(y, x)], set()
                seen.add((y, x))
                while stack:
                    a, b = stack.pop()
                    comp.add((a, b))
                    for dy in (-1, 0, 1):
                        for dx in (-1, 0, 1):
                            u, v = a + dy, b + dx
                            if 0 <= u < H and 0 <= v < W and mask[u][v] and (u, v) not in seen:
                                seen.add((u, v))
                                stack.append((u, v))
                comps.append(frozenset(comp))
    return comps


def test_connected_components_match_flood_fill():
    g = torch.Generator().manual_seed(0)
    masks = torch.rand(12, 17, 23, generator=g) < 0.45
    lab = connected_components(masks)
    for i in range(12):
        ours = {}
        for (y, x) in masks[i].nonzero().tolist():
            ours.setdefault(int(lab[i, y, x]), set()).add((y, x))
        assert {frozenset(c) for c in ours.values()} == set(_bfs_components(masks[i].tolist()))
        assert (lab[i][~masks[i]] == 0).all()


def test_colour_masks_pick_the_six_hues():
    from imagen_edu.data.shapes import RGB
    cols = list(RGB)
    img = torch.full((1, 3, 1, 6), -1.0)
    for k, c in enumerate(cols):
        img[0, :, 0, k] = torch.tensor(RGB[c]) * 2 - 1
    m = colour_masks(img)[0, :, 0, :]
    assert torch.equal(m, torch.eye(6, dtype=torch.bool))
    # dark or grey pixels are background
    assert not colour_masks(torch.zeros(1, 3, 4, 4)).any()  # mid grey
    assert not colour_masks(torch.full((1, 3, 4, 4), -0.2) + torch.tensor([0.1, 0, 0])[:, None, None]).any()


@pytest.mark.parametrize("res", [32, 64])
def test_judge_accuracy_on_rendered_test_images(rendered, res):
    imgs, caps = rendered[res]
    r = attribute_accuracy(imgs, caps)
    assert r["all"] >= 0.99, {k: r[k] for k in ("all", "colour", "shape", "relation", "count")}
    assert r["n"] == N and 0 < r["n_two_object"] < N
    assert len(r["verdicts"]) == N
    one = [v for v in r["verdicts"] if v["relation"] is None]
    assert len(one) == N - r["n_two_object"]


def test_judge_on_heldout_images():
    imgs, caps = make_batch(160, "heldout", 32, seed=1)
    assert attribute_accuracy(imgs, caps)["all"] >= 0.99


def test_shuffled_captions_are_near_chance(rendered):
    imgs, caps = rendered[32]
    rng = random.Random(0)
    perm = list(range(N))
    rng.shuffle(perm)
    r = attribute_accuracy(imgs, [caps[i] for i in perm])
    # a random caption of the grammar names the right colours in a few % of cases
    assert r["all"] < 0.08 and r["colour"] < 0.3


def test_robust_to_blur_and_noise(rendered):
    imgs, caps = rendered[64]
    blurred = gaussian_blur(imgs, [7, 7], [1.0, 1.0])
    assert attribute_accuracy(blurred, caps)["all"] >= 0.90
    g = torch.Generator().manual_seed(0)
    noisy = (imgs + 0.1 * torch.randn(imgs.shape, generator=g)).clamp(-1, 1)
    assert attribute_accuracy(noisy, caps)["all"] >= 0.90


def test_wrong_attributes_are_caught():
    scene = Scene((SceneObject("red", "circle", (0.25, 0.5), 0.3), SceneObject("blue", "square", (0.75, 0.5), 0.3)),
                  "left of")
    img = render(scene, 64)[0]
    caps = {
        "a red circle left of a blue square": dict(colour=True, shape=True, relation=True, count=True, all=True),
        "a red circle right of a blue square": dict(colour=True, shape=True, relation=False, all=False),
        "a red triangle left of a blue square": dict(colour=True, shape=False, relation=True, all=False),
        "a green circle left of a blue square": dict(colour=False, shape=False, relation=False, all=False),
        "a blue square right of a red circle": dict(all=True),
        "a red circle": dict(colour=True, shape=True, relation=None, count=False, all=False),
        "a red circle above a blue square": dict(relation=False, all=False),
    }
    r = attribute_accuracy(torch.stack([img] * len(caps)), list(caps))
    for v, (cap, expect) in zip(r["verdicts"], caps.items()):
        for k, val in expect.items():
            assert v[k] == val, (cap, k, v)
    assert r["relation"] == pytest.approx(3 / 6)  # over the six two-object captions only


def test_detect_objects_single_image():
    scene = Scene((SceneObject("magenta", "triangle", (0.3, 0.7), 0.35),
                   SceneObject("cyan", "circle", (0.7, 0.25), 0.3)), "below")
    img = render(scene, 64)[0]
    objs = detect_objects(img)  # largest first: the circle (0.071) before the triangle (0.061)
    assert [(o.colour, o.shape) for o in objs] == [("cyan", "circle"), ("magenta", "triangle")]
    circ, tri = objs
    assert abs(circ.centre[0] - 0.7) < 0.02 and abs(circ.centre[1] - 0.25) < 0.02
    assert abs(tri.centre[1] - (0.7 + 0.35 / 6)) < 0.02  # triangle centroid 2/3 down its box
    assert abs(tri.area - 0.5 * 0.35 ** 2) < 0.01 and tri.clean and circ.clean
    assert relation_holds(tri, circ, "below") and not relation_holds(tri, circ, "above")
    assert detect_objects(torch.full((3, 32, 32), -1.0)) == []


def test_count_clean_objects():
    for res in (16, 32, 64):  # every rendered object is clean, even 4 px wide ones at 16 px
        imgs, caps = make_batch(60, "test", res, seed=0)
        assert count_clean_objects(imgs) == [len(c.split(" a ")) for c in caps], res
    # a smeared, non-shape blob is detected but not clean
    blob = torch.full((1, 3, 32, 32), -1.0)
    blob[0, 0, 4:8, 2:30] = 1.0  # a thin red bar: box far from square
    dets = detect_objects_batch(blob)[0]
    assert len(dets) == 1 and not dets[0].clean and count_clean_objects(blob) == [0]
    # specks below min_area are ignored
    speck = torch.full((3, 32, 32), -1.0)
    speck[1, 10, 10] = 1.0
    assert detect_objects(speck) == []


def test_bad_input():
    imgs, caps = make_batch(2, "test", 32)
    with pytest.raises(ValueError, match="grammar"):
        attribute_accuracy(imgs, ["a red circle", "a purple circle"])
    with pytest.raises(ValueError, match="captions"):
        attribute_accuracy(imgs, caps[:1])
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        attribute_accuracy(imgs[:, :1], caps)
    with pytest.raises(TypeError, match="float"):
        attribute_accuracy(imgs.to(torch.uint8), caps)
    with pytest.raises(TypeError, match="Tensor"):
        attribute_accuracy(imgs.numpy(), caps)
    with pytest.raises(ValueError, match="relation"):
        relation_holds(*detect_objects(imgs[0])[:1] * 2, "near")


def test_selftest_reports_all_conditions():
    from imagen_edu.evaluate import selftest
    out = selftest(n=6)
    for key in ("test_32px", "test_64px", "test_64px_shuffled_captions", "test_64px_blur_sigma1",
                "test_64px_noise_0.1", "heldout_32px"):
        assert 0 <= out[key]["all"] <= 1


def test_exercise_checks_accept_solutions_and_reject_mistakes():
    from imagen_edu.exercises import ch_data

    def half_width(shape, dy, h):
        inside = dy.abs() <= h
        w = {"circle": (h * h - dy * dy).clamp(min=0).sqrt(), "square": torch.full_like(dy, h),
             "triangle": (dy + h) / 2}[shape]
        return torch.where(inside, w, torch.zeros_like(w))

    def features(mask):
        ys, xs = mask.nonzero(as_tuple=True)
        w = (xs.max() - xs.min() + 1).item()
        h = (ys.max() - ys.min() + 1).item()
        return len(xs) / (w * h), (ys.float().mean().item() + 0.5 - ys.min().item()) / h

    def relation(a, b, rel):
        return {"left of": b[0] - a[2], "right of": a[0] - b[2], "above": b[1] - a[3], "below": a[1] - b[3]}[rel] >= 0

    assert ch_data.check_half_width(half_width, verbose=False)
    assert ch_data.check_shape_features(features, verbose=False)
    assert ch_data.check_relation(relation, verbose=False)
    assert not ch_data.check_half_width(lambda s, dy, h: torch.full_like(dy, h), verbose=False)
    assert not ch_data.check_shape_features(lambda m: (1.0, 0.5), verbose=False)
    assert not ch_data.check_relation(lambda a, b, r: a[0] < b[0], verbose=False)


def test_evaluate_stage_judges_the_stage_s_own_images():
    """``evaluate_stage``: each caption's image comes from the stage, in caption order, at its own
    resolution. A stand-in stage that draws each caption's exact render scores 1 on colour, count
    and relation; one that draws the converse scene (the objects swapped) keeps the colours and the
    count and fails every relation; a super-resolution stage is refused."""
    from types import SimpleNamespace

    from imagen_edu import evaluate
    from imagen_edu.data.captions import converse_caption
    from imagen_edu.data.shapes import render_captions

    class Enc:  # an "embedding" is the caption's index in the order the stage is asked
        def __init__(self):
            self.seen = []

        def encode(self, texts):
            k = len(self.seen)
            self.seen += list(texts)
            return torch.arange(k, k + len(texts)).float()[:, None, None], torch.ones(len(texts), 1, dtype=torch.bool)

    class Stage:
        def __init__(self, enc, flip, sr=False):
            self.enc, self.flip = enc, flip
            self.config = SimpleNamespace(is_sr=sr, resolution=32)
            self.device = torch.device("cpu")

        def sample(self, emb, mask, guidance=None, steps=None, generator=None):
            caps = [self.enc.seen[int(i)] for i in emb[:, 0, 0]]
            # the converse caption ("A right of B" for "A left of B") describes the mirrored scene
            return render_captions([converse_caption(c) if self.flip and len(c.split()) > 3 else c for c in caps], 32)

    enc = Enc()
    r = evaluate.evaluate_stage(Stage(enc, flip=False), enc, n=8, batch_size=3)
    assert r["resolution"] == 32 and r["test"]["n"] == 8 and len(enc.seen) == 16
    assert r["test"]["colour"] == r["test"]["count"] == r["test"]["relation"] == 1.0
    assert r["heldout"]["relation"] == 1.0
    enc = Enc()
    flipped = evaluate.evaluate_stage(Stage(enc, flip=True), enc, n=8)
    assert flipped["test"]["colour"] == flipped["test"]["count"] == 1.0
    assert flipped["test"]["relation"] == 0.0
    with pytest.raises(ValueError, match="base stage"):
        evaluate.evaluate_stage(Stage(enc, flip=False, sr=True), enc, n=2)
