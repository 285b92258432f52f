"""Tests of the shapes benchmark (imagen_edu.data.shapes): splits, geometry, rendering, dataset."""

import pytest
import torch
import torch.nn.functional as F

from imagen_edu.data import HELDOUT_PAIRS, parse_caption
from imagen_edu.data import shapes
from imagen_edu.data.shapes import (
    BORDER, RELATION_MARGIN, Scene, SceneObject, ShapesDataset, make_batch, relation_gap, render,
    render_batch, scene_at, split_captions,
)


def test_determinism_byte_identical():
    a = ShapesDataset("train", (16, 32), length=50, seed=3)
    b = ShapesDataset("train", (16, 32), length=50, seed=3)
    for i in (0, 7, 49):
        (xa, ca), (xb, cb) = a[i], b[i]
        assert ca == cb
        for u, v in zip(xa, xb):
            assert u.numpy().tobytes() == v.numpy().tobytes()
    # the batched path gives the very same bytes as item access
    imgs, caps = make_batch(5, "train", 16, seed=3, start=2)
    for k in range(5):
        x, c = a[2 + k]
        assert torch.equal(imgs[k], x[0]) and caps[k] == c
    # a different seed gives different scenes
    other = ShapesDataset("train", 16, length=50, seed=4)
    assert [a.scene(i) for i in range(20)] != [other.scene(i) for i in range(20)]


def test_item_shapes_range_and_cascade_order():
    x, c = ShapesDataset("test", 32, length=3)[1]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32
    assert x.min() >= -1 and x.max() <= 1 and x.min() == -1  # black background
    parse_caption(c)
    xs, c2 = ShapesDataset("test", (64, 16, 32), length=3)[1]
    assert [t.shape[-1] for t in xs] == [16, 32, 64] and c2 == c
    assert torch.equal(xs[1], x)


def test_heldout_guarantee_over_10000_training_samples():
    train = ShapesDataset("train", 32, length=10_000, seed=0)
    n_two = 0
    for i in range(10_000):
        sc = train.scene(i)
        assert not any((o.colour, o.shape) in HELDOUT_PAIRS for o in sc.objects), sc.caption
        n_two += len(sc.objects) == 2
    assert 4500 < n_two < 5500  # two_object_fraction = 0.5
    held = ShapesDataset("heldout", 32, length=500, seed=0)
    for i in range(500):
        assert parse_caption(held.scene(i).caption).heldout
    # the split's caption lists: train/test never contain a held-out object; heldout always does
    for n in (1, 2):
        assert all(not c.heldout for c in split_captions("train", n))
        assert all(c.heldout for c in split_captions("heldout", n))
    assert len(split_captions("train", 1)) + len(split_captions("heldout", 1)) == 18


def test_test_split_uses_disjoint_streams():
    train = [scene_at("train", 0, i) for i in range(200)]
    test = [scene_at("test", 0, i) for i in range(200)]
    assert not set(train) & set(test)
    assert all(not parse_caption(s.caption).heldout for s in test)


def test_relation_margin_and_no_overlap():
    for split in ("train", "heldout"):
        for i in range(2000):
            sc = scene_at(split, 1, i, two_object_fraction=1.0)
            a, b = sc.objects
            assert a.colour != b.colour
            assert relation_gap(a, b, sc.relation) >= RELATION_MARGIN - 1e-9
            # boxes are disjoint (so the objects cannot overlap) and inside the border
            assert max(relation_gap(a, b, r) for r in ("left of", "right of", "above", "below")) > 0
            for o in sc.objects:
                x0, y0, x1, y1 = o.box
                assert BORDER - 1e-9 <= min(x0, y0) and max(x1, y1) <= 1 - BORDER + 1e-9
                assert shapes.TWO_OBJECT_SIZE[0] <= o.size <= shapes.TWO_OBJECT_SIZE[1]
    # and every relation occurs
    rels = {scene_at("train", 0, i, 1.0).relation for i in range(200)}
    assert rels == {"left of", "right of", "above", "below"}


def test_render_geometry_matches_scene():
    """Area, centroid and colour of the rendered object agree with the analytic scene."""
    import math
    for shape, area in (("circle", math.pi / 4), ("square", 1.0), ("triangle", 0.5)):
        sc = Scene((SceneObject("yellow", shape, (0.45, 0.55), 0.5),))
        x, = render(sc, [64])
        cov = (x[0] + 1) / 2  # red channel = coverage for yellow (1, 1, 0)
        assert torch.allclose(x[0], x[1]) and (x[2] == -1).all()
        assert abs(cov.sum().item() / 64**2 - area * 0.25) < 2e-3
        ys, xs = torch.meshgrid((torch.arange(64) + 0.5) / 64, (torch.arange(64) + 0.5) / 64, indexing="ij")
        cx = (cov * xs).sum() / cov.sum()
        cy = (cov * ys).sum() / cov.sum()
        # centroid: the box centre, except the apex-up triangle whose centroid is 2/3 down the box
        expect_y = 0.55 + (0.5 * (2 / 3 - 0.5) if shape == "triangle" else 0.0)
        assert abs(cx - 0.45) < 2e-3 and abs(cy - expect_y) < 2e-3


def test_16px_render_is_downscaled_64px_render():
    scenes = [scene_at("train", 0, i) for i in range(40)]
    x16, x64 = render_batch(scenes, (16, 64))
    down = F.avg_pool2d(x64, 4)
    assert (down - x16).abs().max() < 1e-4
    x32 = render_batch(scenes, 32)
    assert (F.avg_pool2d(x32, 2) - x16).abs().max() < 1e-4
    # anti-aliased: edge pixels take intermediate values
    assert ((x64 > -0.9) & (x64 < 0.9)).any()


def test_render_list_order_follows_request():
    sc = scene_at("test", 0, 3)
    a, b = render(sc, [64, 16])
    assert a.shape == (3, 64, 64) and b.shape == (3, 16, 16)
    assert torch.equal(render(sc, 16)[0], b)


def test_dataloader_collates():
    ds = ShapesDataset("train", (16, 32), length=8)
    imgs, caps = next(iter(torch.utils.data.DataLoader(ds, batch_size=4)))
    assert imgs[0].shape == (4, 3, 16, 16) and imgs[1].shape == (4, 3, 32, 32) and len(caps) == 4


@pytest.mark.parametrize("bad, err", [(0, ValueError), (-32, ValueError), (32.0, TypeError), ("32", TypeError),
                                      (True, TypeError), ((16, 0), ValueError), ((), ValueError),
                                      ((16, 16), ValueError)])
def test_bad_resolution(bad, err):
    with pytest.raises(err, match="resolution"):
        ShapesDataset("train", bad)


def test_bad_split_and_arguments():
    with pytest.raises(ValueError, match="split"):
        ShapesDataset("validation")
    with pytest.raises(ValueError, match="length"):
        ShapesDataset("train", length=0)
    with pytest.raises(ValueError, match="two_object_fraction"):
        ShapesDataset("train", two_object_fraction=1.5)
    with pytest.raises(IndexError):
        ShapesDataset("train", length=3)[3]
    with pytest.raises(ValueError, match="grammar"):
        shapes.scene_for_caption("a purple circle")


def test_scene_for_caption_and_render_captions():
    caps = ["a red circle left of a blue square", "a green triangle", "a cyan square below a red triangle"]
    for i, c in enumerate(caps):
        assert shapes.scene_for_caption(c, seed=i).caption == c
    imgs = shapes.render_captions(caps, 32)
    assert imgs.shape == (3, 3, 32, 32)


def test_benchmark_reports_speed():
    out = shapes.benchmark(sizes=(16,), batch_size=16, n_batches=1)
    assert out["images_per_s"]["16"] > 0


def test_half_widths_eq_halfwidth():
    """Eq. (data-eq-halfwidth), and the area it implies: integral of 2 w(y) dy."""
    import math
    ys = (torch.arange(4000, dtype=torch.float32) + 0.5) / 4000
    h = 0.2
    expect = {"circle": math.pi * h * h, "square": 4 * h * h, "triangle": 2 * h * h}
    for name, area in expect.items():
        sid = torch.tensor([float(shapes.SHAPES.index(name))])
        w = shapes.half_widths(sid, torch.tensor([0.5]), torch.tensor([2 * h]), ys)[0]
        assert abs((2 * w).mean().item() - area) < 1e-3
        dy = ys - 0.5
        inside = dy.abs() <= h
        closed = {"circle": (h * h - dy * dy).clamp(min=0).sqrt(), "square": torch.full_like(dy, h),
                  "triangle": (dy + h) / 2}[name]
        assert torch.allclose(w, torch.where(inside, closed, torch.zeros_like(dy)), atol=1e-6)


def test_judge_features_approach_eq_features():
    """Eq. (data-eq-features): fill pi/4, 1, 1/2 and mass_y 1/2, 1/2, 2/3 for large renders."""
    import math

    from imagen_edu.evaluate import detect_objects
    expect = {"circle": (math.pi / 4, 0.5), "square": (1.0, 0.5), "triangle": (0.5, 2 / 3)}
    for name, (fill, mass) in expect.items():
        img = render(Scene((SceneObject("green", name, (0.5, 0.5), 0.8),)), 128)[0]
        obj, = detect_objects(img)
        assert obj.shape == name and obj.colour == "green"
        assert abs(obj.fill - fill) < 0.03 and abs(obj.mass_y - mass) < 0.01


def test_rendering_restores_thread_count():
    before = torch.get_num_threads()
    with shapes.single_thread():
        assert torch.get_num_threads() == 1
    make_batch(4, "train", 16)
    assert torch.get_num_threads() == before
