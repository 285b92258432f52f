"""The data readers under bad input: a clear error naming the file (and the line), before any work.

``data.real.CaptionedImageFolder`` (``--data folder:PATH``), ``embcache.read_captions`` (``embed
--captions``, ``sample --prompts-file``), ``checkpoints.load`` and the renderer's bounds
(``ShapesDataset``, ``render_batch``).
"""

import io
import json
import os

import pytest
import torch
from PIL import Image

from imagen_edu import checkpoints
from imagen_edu.data import shapes
from imagen_edu.data.real import CaptionedImageFolder
from imagen_edu.embcache import read_captions


# ---------------------------------------------------------------------------------------------
# a captioned image folder
# ---------------------------------------------------------------------------------------------
def _png_bytes(size=(12, 10)):
    buf = io.BytesIO()
    Image.new("RGB", size, (200, 30, 30)).save(buf, format="PNG")
    return buf.getvalue()


def _folder(tmp_path, entries: dict, extra_lines=()):
    """A folder with the given ``{name: bytes or None (a sub-folder)}`` and a captions.jsonl listing them."""
    lines = []
    for name, data in entries.items():
        if data is None:
            (tmp_path / name).mkdir()
        elif data is not ...:  # ... : listed but not created
            (tmp_path / name).write_bytes(data)
        lines.append(json.dumps({"file": name, "caption": f"a picture called {name}"}))
    (tmp_path / "captions.jsonl").write_text("\n".join([*lines, *extra_lines]) + "\n")
    return tmp_path


@pytest.mark.parametrize("bad, message", [
    (b"", r"line 2: image file 'bad\.png' is empty \(0 bytes\)"),
    (b"this is a text file, not a picture\n", r"line 2: image file 'bad\.png' is not an image PIL can read"),
    (os.urandom(2048), r"line 2: image file 'bad\.png' is not an image PIL can read"),
    (None, r"line 2: image file 'bad\.png' is a folder"),
])
def test_image_folder_refuses_a_file_that_is_not_an_image(tmp_path, bad, message):
    """A zero-byte, text, random or folder "image" is refused when the data set is built (before any
    training step), with a ValueError naming captions.jsonl, the line and the file."""
    root = _folder(tmp_path, {"good.png": _png_bytes(), "bad.png": bad})
    with pytest.raises(ValueError, match=message) as err:
        CaptionedImageFolder(root, resolution=8)
    assert str(root / "captions.jsonl") in str(err.value)


def test_image_folder_missing_image_names_file_and_line(tmp_path):
    """An image listed in captions.jsonl that does not exist: FileNotFoundError naming it and its line."""
    root = _folder(tmp_path, {"good.png": _png_bytes(), "gone.png": ...})
    with pytest.raises(FileNotFoundError, match=r"captions\.jsonl line 2: image file 'gone\.png' not found"):
        CaptionedImageFolder(root, resolution=8)


@pytest.mark.parametrize("line, message", [
    (b"{not json", r"line 2: not valid JSON"),
    (b'{"file": "good.png"}', r"line 2: expected an object with string field\(s\) 'file' and 'caption'"),
    (b'{"file": "good.png", "caption": "\xff\xfe"}', "line 2: not UTF-8 text"),
])
def test_image_folder_bad_captions_line_names_it(tmp_path, line, message):
    """A malformed or non-UTF-8 line of captions.jsonl: ValueError naming the file and the line."""
    root = _folder(tmp_path, {"good.png": _png_bytes()})
    (root / "captions.jsonl").write_bytes(
        (json.dumps({"file": "good.png", "caption": "a"}) + "\n").encode() + line + b"\n")
    with pytest.raises(ValueError, match=message) as err:
        CaptionedImageFolder(root, resolution=8)
    assert "captions.jsonl" in str(err.value)


def test_image_folder_broken_image_data_is_named_when_decoded(tmp_path):
    """A PNG whose header is fine but whose data is cut passes the build-time check (only headers are
    read) and is named, with its line, when ``ds[i]`` decodes it: a ValueError, not PIL's OSError."""
    data = _png_bytes((64, 64))
    root = _folder(tmp_path, {"good.png": _png_bytes(), "cut.png": data[: len(data) // 2]})
    ds = CaptionedImageFolder(root, resolution=8)
    assert ds[0][0].shape == (3, 8, 8)
    with pytest.raises(ValueError, match=r"line 2: image file .*cut\.png cannot be decoded"):
        ds[1]


# ---------------------------------------------------------------------------------------------
# caption files (embed --captions, sample --prompts-file)
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name, content, message", [
    ("caps.txt", b"a red circle\n\x00\x01\x02binary\n", r"caps\.txt line 2: not UTF-8 text"),
    ("caps.txt", b"\xff\xfe\xfd\x80 not utf-8", r"caps\.txt line 1: not UTF-8 text"),
    ("caps.jsonl", b"\x89PNG\r\n\x1a\n\x00\x00", r"caps\.jsonl line 1: not UTF-8 text"),
    ("caps.txt", b"", r"caps\.txt holds no caption"),
    ("caps.txt", b"\n  \n\n", r"caps\.txt holds no caption"),
    ("caps.jsonl", b"", r"caps\.jsonl holds no caption"),
])
def test_read_captions_refuses_binary_and_empty_files(tmp_path, name, content, message):
    """A binary, empty or blank captions file: a ValueError naming it (and the line), never a
    UnicodeDecodeError."""
    f = tmp_path / name
    f.write_bytes(content)
    with pytest.raises(ValueError, match=message):
        read_captions(f)


@pytest.mark.parametrize("name", ["caps.txt", "caps.jsonl"])
def test_read_captions_folder_and_missing_file(tmp_path, name):
    """A folder, or a missing file, given as the captions file: a ValueError naming it."""
    d = tmp_path / name
    d.mkdir()
    with pytest.raises(ValueError, match=rf"{name} is a folder"):
        read_captions(d)
    with pytest.raises(ValueError, match="does not exist"):
        read_captions(tmp_path / "missing" / name)


def test_read_captions_reads_utf8_with_bom_and_crlf(tmp_path):
    """Good files still read: UTF-8 with a byte-order mark and Windows line ends, one caption a line."""
    f = tmp_path / "caps.txt"
    f.write_bytes("\ufeffa red circle\r\n\r\na café sign\r\n".encode("utf-8"))
    assert read_captions(f) == ["a red circle", "a café sign"]


# ---------------------------------------------------------------------------------------------
# checkpoints that are not checkpoints
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("content, message", [
    (b"", "not a safetensors checkpoint (it is empty)"),
    (b"\x80\x04\x95" + os.urandom(100), "not a safetensors checkpoint (it looks like a pickle"),
    (b"PK\x03\x04" + os.urandom(100), "not a safetensors checkpoint (it looks like a pickle"),
    (b"\x11" * 4096, "not a safetensors checkpoint (it does not start"),
])
def test_load_names_a_file_that_is_not_safetensors(tmp_path, content, message):
    """``checkpoints.load`` on an empty, pickle, torch.save (zip) or random file: a ValueError (a
    CheckpointError) naming the file and saying it is not a safetensors checkpoint."""
    f = tmp_path / "x.safetensors"
    f.write_bytes(content)
    with pytest.raises(checkpoints.CheckpointError) as err:
        checkpoints.load(f)
    assert str(f) in str(err.value) and message in str(err.value)


def test_load_a_folder_or_a_truncated_file(tmp_path):
    """A folder is "not a safetensors checkpoint file"; a real checkpoint cut anywhere (in its header
    or its tensors) is "truncated or corrupt"; a missing file is FileNotFoundError."""
    with pytest.raises(checkpoints.CheckpointError, match="is a folder, not a safetensors checkpoint"):
        checkpoints.load(tmp_path)
    f = checkpoints.save(tmp_path / "m.safetensors", {"w": torch.arange(64.0)}, {"k": "v" * 50})
    data = f.read_bytes()
    for cut in (20, len(data) // 2, len(data) - 4):
        f.write_bytes(data[:cut])
        with pytest.raises(checkpoints.CheckpointError, match="truncated or corrupt"):
            checkpoints.load(f)
    with pytest.raises(FileNotFoundError):
        checkpoints.load(tmp_path / "missing.safetensors")


def test_shipped_checkpoints_still_load():
    """The header check accepts every shipped checkpoint (same tensors as safetensors reads them)."""
    for f in sorted(checkpoints.checkpoint_dir().glob("*.safetensors")):
        state, _ = checkpoints.load(f)
        assert state, f


# ---------------------------------------------------------------------------------------------
# the renderer's bounds
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("resolution", [100_000, 1025, 3, (16, 100_000), 0])
def test_shapes_dataset_refuses_resolutions_out_of_bounds(resolution):
    """``ShapesDataset(resolution=100000)`` (160 GB of pixels per batch) is refused when built, before
    any allocation: resolutions lie in [MIN_RESOLUTION, MAX_RESOLUTION] = [4, 1024] px."""
    with pytest.raises(ValueError, match="resolution must be"):
        shapes.ShapesDataset(resolution=resolution)
    assert (shapes.MIN_RESOLUTION, shapes.MAX_RESOLUTION) == (4, 1024)


@pytest.mark.parametrize("length", [0, -1, 2 ** 31, 10 ** 12])
def test_shapes_dataset_refuses_lengths_out_of_bounds(length):
    """The length is an int in [1, 2**31 - 1]."""
    with pytest.raises(ValueError, match=r"length must be an int in \[1, 2147483647\]"):
        shapes.ShapesDataset(length=length)


def test_render_batch_refuses_a_result_too_large_before_allocating():
    """A request whose images alone exceed MAX_RENDER_BYTES is refused at once, saying how much it needs."""
    scenes = [shapes.scene_at("train", 0, 0)] * 20_000
    with pytest.raises(ValueError, match=r"would need 234\.4 GiB"):
        shapes.render_batch(scenes, 1024)


def test_render_chunks_never_change_a_pixel():
    """Rendering chunk by chunk (as large resolutions do, to bound memory) gives the same pixels as
    one chunk: every scene is rendered on its own (Eq. data-eq-coverage per scene)."""
    scenes = [shapes.scene_at("test", 3, i) for i in range(6)]
    whole = shapes.render_batch(scenes, (16, 64), chunk=128)
    ones = shapes.render_batch(scenes, (16, 64), chunk=1)
    assert all(torch.equal(a, b) for a, b in zip(whole, ones))


def test_the_largest_resolution_renders():
    """1024 px, the bound, renders (in chunks small enough for memory) and is a proper image."""
    img, cap = shapes.ShapesDataset("test", resolution=1024, length=2)[1]
    assert img.shape == (3, 1024, 1024) and img.min() >= -1 and img.max() <= 1 and (img > 0).any()
