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
