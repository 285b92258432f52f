"""Tests of the real-data loaders (imagen_edu.data.real): all local, nothing downloads."""

import json
import struct

import pytest
import torch
from PIL import Image

from imagen_edu.data.real import (
    CLASS_CAPTIONS, CaptionedClassDataset, CaptionedImageFolder, to_stage_images, torchvision_captioned,
)


def _folder(tmp_path, lines):
    (tmp_path / "imgs").mkdir()
    # a 40 x 20 (W x H) image: left half red, right half blue; and a grayscale 16 x 30 one
    im = Image.new("RGB", (40, 20), (255, 0, 0))
    im.paste((0, 0, 255), (20, 0, 40, 20))
    im.save(tmp_path / "imgs" / "wide.png")
    Image.new("L", (16, 30), 128).save(tmp_path / "gray.png")
    (tmp_path / "captions.jsonl").write_text("\n".join(lines) + "\n")
    return tmp_path


GOOD = [json.dumps({"file": "imgs/wide.png", "caption": "a red and blue flag"}), "",
        json.dumps({"file": "gray.png", "caption": "a grey card"})]


def test_image_folder_resize_and_centre_crop(tmp_path):
    ds = CaptionedImageFolder(_folder(tmp_path, GOOD), resolution=8)
    assert len(ds) == 2
    x, c = ds[0]
    assert c == "a red and blue flag" and x.shape == (3, 8, 8) and x.dtype == torch.float32
    assert x.min() >= -1 and x.max() <= 1
    # shorter side 20 -> 8 (width 40 -> 16), centre crop keeps columns 4..11: left 4 red, right 4 blue
    assert torch.allclose(x[:, :, 0], torch.tensor([1.0, -1, -1])[:, None].expand(3, 8), atol=0.05)
    assert torch.allclose(x[:, :, -1], torch.tensor([-1.0, -1, 1])[:, None].expand(3, 8), atol=0.05)
    g, c2 = ds[1]
    assert c2 == "a grey card" and g.shape == (3, 8, 8)
    assert torch.allclose(g[0], g[1]) and torch.allclose(g[1], g[2])  # grayscale -> 3 equal channels
    assert abs(g.mean().item() - (128 / 255 * 2 - 1)) < 0.02


def test_image_folder_cascade(tmp_path):
    ds = CaptionedImageFolder(_folder(tmp_path, GOOD), resolution=(16, 8))
    (a, b), _ = ds[0]
    assert a.shape == (3, 8, 8) and b.shape == (3, 16, 16)


def test_image_folder_missing_file_names_it(tmp_path):
    lines = GOOD + [json.dumps({"file": "nope.jpg", "caption": "x"})]
    with pytest.raises(FileNotFoundError, match=r"line 4.*nope\.jpg"):
        CaptionedImageFolder(_folder(tmp_path, lines), 8)


@pytest.mark.parametrize("bad, n", [('{"file": "gray.png", "caption": ', 2), ('{"file": "gray.png"}', 2),
                                    ('["gray.png", "a"]', 2), ('{"file": 3, "caption": "a"}', 2)])
def test_image_folder_malformed_line_gives_line_number(tmp_path, bad, n):
    lines = [GOOD[0], bad]
    with pytest.raises(ValueError, match=f"line {n}"):
        CaptionedImageFolder(_folder(tmp_path, lines), 8)


def test_image_folder_without_captions_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="captions.jsonl"):
        CaptionedImageFolder(tmp_path, 8)


def test_class_captions():
    assert CLASS_CAPTIONS["cifar10"][3] == "a photo of a cat"
    assert CLASS_CAPTIONS["cifar10"][0] == "a photo of an airplane"
    assert CLASS_CAPTIONS["mnist"][3] == "a handwritten digit 3"
    assert "a photo of a sneaker" in CLASS_CAPTIONS["fashionmnist"]
    assert all(len(v) == 10 for v in CLASS_CAPTIONS.values())


def test_class_dataset_on_fakedata():
    from torchvision.datasets import FakeData
    base = FakeData(size=6, image_size=(1, 28, 28), num_classes=10, random_offset=0)
    ds = CaptionedClassDataset(base, CLASS_CAPTIONS["mnist"], resolution=(16, 32))
    (a, b), cap = ds[2]
    assert a.shape == (3, 16, 16) and b.shape == (3, 32, 32)
    assert cap == CLASS_CAPTIONS["mnist"][int(base[2][1])]
    assert torch.equal(a[0], a[1])


def _write_idx(path, data: bytes, dims, magic):
    with open(path, "wb") as fh:
        fh.write(struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in dims) + data)


def test_torchvision_mnist_from_local_files(tmp_path):
    """A tiny MNIST written in its own file format: torchvision reads it, we caption it."""
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    n = 3
    pixels = bytes([(i * 7) % 256 for i in range(n * 28 * 28)])
    for prefix in ("train", "t10k"):
        _write_idx(raw / f"{prefix}-images-idx3-ubyte", pixels, (n, 28, 28), 2051)
        _write_idx(raw / f"{prefix}-labels-idx1-ubyte", bytes([3, 1, 4]), (n,), 2049)
    ds = torchvision_captioned("MNIST", tmp_path, train=True, download=False, resolution=16)
    assert len(ds) == 3
    x, cap = ds[0]
    assert cap == "a handwritten digit 3" and x.shape == (3, 16, 16)
    assert ds[2][1] == "a handwritten digit 4"


def test_torchvision_missing_without_download(tmp_path):
    with pytest.raises(FileNotFoundError, match="download=True"):
        torchvision_captioned("cifar10", tmp_path)
    with pytest.raises(FileNotFoundError, match="download=True"):
        torchvision_captioned("fashion-mnist", tmp_path)
    with pytest.raises(ValueError, match="unknown data set"):
        torchvision_captioned("imagenet", tmp_path)
    with pytest.raises(ValueError, match="resolution"):
        torchvision_captioned("mnist", tmp_path, resolution=0)


def test_to_stage_images_order():
    im = Image.new("RGB", (10, 10), (0, 255, 0))
    a, b = to_stage_images(im, (4, 8))
    assert a.shape == (3, 4, 4) and b.shape == (3, 8, 8)
    assert torch.allclose(a[1], torch.ones(4, 4))


# ---------------------------------------------------------------------------------------------
# Real data in 'python -m imagen_edu train' (chapter 6): tiny local stand-ins, nothing downloads
# ---------------------------------------------------------------------------------------------
def _shapes_folder(root, n=6):
    """A captions.jsonl folder of tiny solid-colour images with in-vocabulary captions."""
    root.mkdir(parents=True, exist_ok=True)
    colours = [("red", (255, 0, 0)), ("blue", (0, 0, 255)), ("green", (0, 255, 0))]
    lines = []
    for i in range(n):
        name, rgb = colours[i % 3]
        im = Image.new("RGB", (20, 20), (0, 0, 0))
        im.paste(rgb, (4, 4, 16, 16))
        im.save(root / f"{i}.png")
        lines.append(json.dumps({"file": f"{i}.png", "caption": f"a {name} square"}))
    (root / "captions.jsonl").write_text("\n".join(lines) + "\n")
    return root


def _fake_mnist(root, n=5):
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    pixels = bytes([(i * 13) % 256 for i in range(n * 28 * 28)])
    for prefix in ("train", "t10k"):
        _write_idx(raw / f"{prefix}-images-idx3-ubyte", pixels, (n, 28, 28), 2051)
        _write_idx(raw / f"{prefix}-labels-idx1-ubyte", bytes([i % 10 for i in range(n)]), (n,), 2049)
    return root


def test_data_pool_from_folder_base_and_sr(tmp_path):
    import torch.nn.functional as F

    from imagen_edu import cli
    from imagen_edu.imagen import stage_config

    root = _shapes_folder(tmp_path / "f")
    base = stage_config("base", "ci")
    lows, highs, caps = cli.data_pool(f"folder:{root}", base, progress=False)
    assert lows is None and highs.shape == (6, 3, base.resolution, base.resolution)
    assert caps == [f"a {c} square" for c in ("red", "blue", "green")] * 2
    assert highs.min() >= -1 and highs.max() <= 1
    torch.testing.assert_close(highs[0], CaptionedImageFolder(root, base.resolution)[0][0])
    sr = stage_config("sr1", "ci").replace(n_train_images=4)
    lows, highs, caps = cli.data_pool(f"folder:{root}", sr, progress=False)
    assert highs.shape == (4, 3, 16, 16) and lows.shape == (4, 3, 8, 8) and len(caps) == 4
    # area downsampling: each low pixel is the mean of the 2 x 2 high pixels it covers
    torch.testing.assert_close(lows[1, :, 3, 5], highs[1, :, 6:8, 10:12].mean(dim=(1, 2)))
    torch.testing.assert_close(lows, F.avg_pool2d(highs, 2))


def test_data_pool_torchvision_and_errors(tmp_path):
    from imagen_edu import cli
    from imagen_edu.imagen import stage_config

    cfg = stage_config("base", "ci")
    lows, highs, caps = cli.data_pool(f"mnist:{_fake_mnist(tmp_path / 'm')}", cfg, progress=False)
    assert highs.shape == (5, 3, 8, 8) and caps[:3] == [f"a handwritten digit {d}" for d in range(3)]
    assert cli.data_pool("shapes", cfg) is None
    for bad in ("imagenet:/x", "folder:", "cifar10", "shapes:/x"):
        with pytest.raises(ValueError, match="--data"):
            cli.data_pool(bad, cfg)
    with pytest.raises(FileNotFoundError, match="download=True"):
        cli.data_pool(f"cifar10:{tmp_path / 'none'}", cfg)
    with pytest.raises(FileNotFoundError, match="captions.jsonl"):
        cli.data_pool(f"folder:{tmp_path}", cfg)


@pytest.mark.parametrize("stage", ["base", "sr1"])
def test_train_on_an_image_folder(tmp_path, capsys, stage):
    from imagen_edu import checkpoints, cli
    from imagen_edu.imagen import load_stage, stage_file

    root = _shapes_folder(tmp_path / "f")
    out = tmp_path / "run"
    rc = cli.main(["train", "--stage", stage, "--profile", "ci", "--out", str(out), "--steps", "2",
                   "--data", f"folder:{root}"])
    assert rc == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert res["steps"] == 2 and res["data"] == f"folder:{root}"
    assert load_stage(stage_file(out, stage)).config.name == stage
    assert f"--data folder:{root}" in checkpoints.read_manifest(out / "manifest.json")[f"imagen_{stage}"]["command"]


def test_train_on_fake_mnist_warns_about_words_outside_the_vocabulary(tmp_path, capsys):
    from imagen_edu import cli

    root = _fake_mnist(tmp_path / "m")
    with pytest.warns(UserWarning) as record:  # ours, and the tokenizer's own
        rc = cli.main(["train", "--stage", "base", "--profile", "ci", "--out", str(tmp_path / "run"),
                       "--steps", "1", "--data", f"mnist:{root}"])
    assert rc == 0
    ours = [str(w.message) for w in record if "outside the text encoder's vocabulary" in str(w.message)]
    assert len(ours) == 1 and "handwritten" in ours[0] and "t5:" in ours[0]


def test_train_with_a_text_cache(tmp_path, capsys):
    from imagen_edu import cli, profiles
    from imagen_edu.embcache import build_cache
    from imagen_edu.text_encoders import get as get_text_encoder

    root = _shapes_folder(tmp_path / "f")

    caps = [f"a {c} square" for c in ("red", "blue", "green")]
    name = profiles.get("ci").imagen.text_encoder                   # the stage's own encoder
    build_cache(get_text_encoder(name), caps, tmp_path / "cache")
    rc = cli.main(["train", "--stage", "base", "--profile", "ci", "--out", str(tmp_path / "run"), "--steps", "1",
                   "--data", f"folder:{root}", "--text-cache", str(tmp_path / "cache")])
    assert rc == 0
    # a cache of another width: refused before training
    other = "lm+words" if get_text_encoder("lm+words").dim != get_text_encoder(name).dim else "lm"
    build_cache(get_text_encoder(other), caps, tmp_path / "wide")
    rc = cli.main(["train", "--stage", "base", "--profile", "ci", "--out", str(tmp_path / "run2"),
                   "--data", f"folder:{root}", "--text-cache", str(tmp_path / "wide")])
    assert rc == 2 and "text_dim" in capsys.readouterr().err
    # a cache missing a training caption: the caption is named
    build_cache(get_text_encoder(name), caps[:2], tmp_path / "part")
    rc = cli.main(["train", "--stage", "base", "--profile", "ci", "--out", str(tmp_path / "run3"),
                   "--data", f"folder:{root}", "--text-cache", str(tmp_path / "part")])
    assert rc == 2 and "a green square" in capsys.readouterr().err
    # a cache of the same width from another encoder: refused, naming both
    same = next(n for n in ("lm", "lm+words") if get_text_encoder(n).dim == get_text_encoder(name).dim)
    build_cache(get_text_encoder(same), caps, tmp_path / "plain")
    rc = cli.main(["train", "--stage", "base", "--profile", "ci", "--out", str(tmp_path / "run4"),
                   "--data", f"folder:{root}", "--text-cache", str(tmp_path / "plain")])
    err = capsys.readouterr().err
    assert rc == 2 and f"'{same}'" in err and f"'{name}'" in err


def test_train_data_errors(tmp_path, capsys):
    from imagen_edu import cli

    base = ["train", "--stage", "base", "--profile", "ci", "--out", str(tmp_path / "run")]
    assert cli.main(base + ["--data", "imagenet:/x"]) == 2
    assert "--data must be" in capsys.readouterr().err
    assert cli.main(base + ["--data", f"cifar10:{tmp_path / 'none'}"]) == 2
    assert "download=True" in capsys.readouterr().err


def test_train_with_a_t5_encoder_sets_the_text_width(tmp_path, capsys):
    pytest.importorskip("transformers")
    from imagen_edu import cli, text_encoders
    from imagen_edu.imagen import load_stage, stage_file

    t5 = text_encoders.build_tiny_t5(tmp_path / "t5", words=["a", "handwritten", "digit"] + [str(d) for d in range(10)])
    root = _fake_mnist(tmp_path / "m")
    out = tmp_path / "run"
    rc = cli.main(["train", "--stage", "sr1", "--profile", "ci", "--out", str(out), "--steps", "1",
                   "--data", f"mnist:{root}", "--text-encoder", f"t5:{t5}"])
    assert rc == 0
    cfg = load_stage(stage_file(out, "sr1")).config
    assert cfg.text_dim == 32 == cfg.unet.context_dim == cfg.unet.cond_dim
    assert cfg.text_encoder == f"t5:{t5}"


def test_train_from_a_t5_cache_never_loads_the_encoder(tmp_path, capsys, monkeypatch):
    pytest.importorskip("transformers")
    from imagen_edu import cli, text_encoders
    from imagen_edu.data.real import CLASS_CAPTIONS
    from imagen_edu.embcache import build_cache
    from imagen_edu.imagen import load_stage, stage_file

    t5 = text_encoders.build_tiny_t5(tmp_path / "t5c", words=["a", "handwritten", "digit"] + [str(d) for d in range(10)])
    name = f"t5:{t5}"
    build_cache(text_encoders.get(name), CLASS_CAPTIONS["mnist"], tmp_path / "cache")
    root = _fake_mnist(tmp_path / "m")
    out = tmp_path / "run"

    def no_t5(self, *args, **kwargs):
        raise AssertionError("training ran the T5 encoder although a cache of it was given")

    monkeypatch.setattr(text_encoders.T5TextEncoder, "_load", no_t5)      # not loaded ...
    monkeypatch.setattr(text_encoders.T5TextEncoder, "encode", no_t5)     # ... nor run
    rc = cli.main(["train", "--stage", "base", "--profile", "ci", "--out", str(out), "--steps", "1",
                   "--data", f"mnist:{root}", "--text-encoder", name, "--text-cache", str(tmp_path / "cache")])
    assert rc == 0
    assert load_stage(stage_file(out, "base")).config.text_dim == 32
    # a cache of another encoder than --text-encoder names
    rc = cli.main(["train", "--stage", "base", "--profile", "ci", "--out", str(tmp_path / "r2"),
                   "--data", f"mnist:{root}", "--text-encoder", "lm", "--text-cache", str(tmp_path / "cache")])
    assert rc == 2 and "was built with encoder" in capsys.readouterr().err
