"""Real captioned images: your own folder (a COCO or LAION subset) and torchvision's small data sets.

Both yield ``(image, caption)`` like :class:`imagen_edu.data.shapes.ShapesDataset`: ``image`` a
float tensor in [-1, 1] of shape ``(3, R, R)``, or a tuple of them (one per resolution, smallest
first) when ``resolution`` is a tuple, so a cascade trains on real data with the same code.

* :class:`CaptionedImageFolder` reads ``root/captions.jsonl``, one JSON object per line:
  ``{"file": "relative/path.jpg", "caption": "a dog on a beach"}``. Each image is resized so its
  shorter side is ``R`` and centre-cropped to ``R x R``.
* :func:`torchvision_captioned` wraps CIFAR-10, MNIST or Fashion-MNIST with class-name captions
  (``"a photo of a cat"``, ``"a handwritten digit 3"``, ``"a photo of a sneaker"``). It downloads
  only when you pass ``download=True``, into the ``root`` you choose.

Nothing here touches the network unless asked (chapter 6 uses these loaders at GPU scale).
"""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image, UnidentifiedImageError
from torchvision.transforms import functional as TF

from .captions import read_jsonl
from .shapes import check_resolution

CAPTIONS_FILE = "captions.jsonl"


def _article(word: str) -> str:
    return "an" if word[0].lower() in "aeiou" else "a"


#: Caption of each class, in the data sets' label order.
CLASS_CAPTIONS: dict[str, list[str]] = {
    "cifar10": [f"a photo of {_article(c)} {c}" for c in
                ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")],
    "mnist": [f"a handwritten digit {d}" for d in range(10)],
    "fashionmnist": ["a photo of a t-shirt", "a photo of trousers", "a photo of a pullover", "a photo of a dress",
                     "a photo of a coat", "a photo of a sandal", "a photo of a shirt", "a photo of a sneaker",
                     "a photo of a bag", "a photo of an ankle boot"],
}


def to_stage_images(pil_image, resolutions: tuple[int, ...]) -> list[torch.Tensor]:
    """A PIL image -> one ``(3, R, R)`` tensor in [-1, 1] per resolution.

    Converted to RGB (grayscale is repeated over 3 channels), resized so the shorter side is ``R``
    (antialiased bicubic), then centre-cropped to ``R x R``.
    """
    img = pil_image.convert("RGB")
    out = []
    for r in resolutions:
        x = TF.center_crop(TF.resize(img, r, interpolation=TF.InterpolationMode.BICUBIC, antialias=True), [r, r])
        out.append((TF.to_tensor(x) * 2 - 1).clamp(-1, 1))
    return out


class _StagedDataset(torch.utils.data.Dataset):
    """Common output format: image or tuple of images (smallest first), then the caption."""

    def __init__(self, resolution):
        self.resolutions = check_resolution(resolution)
        self.cascade = isinstance(resolution, (tuple, list))

    def _output(self, pil_image, caption: str):
        imgs = to_stage_images(pil_image, self.resolutions)
        return (tuple(imgs) if self.cascade else imgs[0]), caption


class CaptionedImageFolder(_StagedDataset):
    """Images listed in ``root/captions.jsonl`` with their captions.

    Each line is a JSON object ``{"file": ..., "caption": ...}`` with ``file`` relative to
    ``root``; blank lines are skipped. The file list is checked when the data set is built, so a
    training run fails before its first step rather than at the bad image: a malformed line (or a
    binary ``captions.jsonl``) raises ``ValueError`` naming its line number; a listed image that
    does not exist raises ``FileNotFoundError`` naming it and its line; an empty file, or one
    whose header PIL cannot read (not an image), raises ``ValueError`` naming it and its line.
    Only each image's header is read here (about a millisecond per file); an image whose data
    turns out broken when ``ds[i]`` decodes it raises ``ValueError`` naming it and its line.

    ``ds[i]`` returns ``(image (3, R, R) in [-1, 1], caption)``, or a tuple of images when
    ``resolution`` is a tuple.
    """

    def __init__(self, root, resolution=64, captions_file: str = CAPTIONS_FILE):
        super().__init__(resolution)
        self.root = Path(root)
        path = self.root / captions_file
        if not path.is_file():
            raise FileNotFoundError(f"no {captions_file} in {self.root}: expected one line per image like "
                                    '{"file": "img001.jpg", "caption": "a dog on a beach"}')
        self.items: list[tuple[Path, str]] = []
        self.lines: list[int] = []  # the line of captions.jsonl that lists each item
        for n, rec in read_jsonl(path, ("file", "caption")):
            file = self.root / rec["file"]
            where = f"{path} line {n}: image file {rec['file']!r}"
            if file.is_dir():
                raise ValueError(f"{where} is a folder in {self.root}; expected an image file")
            if not file.is_file():
                raise FileNotFoundError(f"{where} not found in {self.root}")
            if file.stat().st_size == 0:
                raise ValueError(f"{where} is empty (0 bytes); expected an image (PNG, JPEG, ...)")
            try:
                with Image.open(file):  # reads the header only
                    pass
            except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
                raise ValueError(f"{where} is not an image PIL can read ({type(err).__name__}: {err})") from None
            self.items.append((file, rec["caption"]))
            self.lines.append(n)
        if not self.items:
            raise ValueError(f"{path} lists no images")
        self.captions_path = path

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i):
        file, caption = self.items[i]
        try:
            with Image.open(file) as im:
                return self._output(im, caption)
        except (UnidentifiedImageError, OSError, SyntaxError) as err:  # e.g. a truncated JPEG
            raise ValueError(f"{self.captions_path} line {self.lines[i]}: image file {file} cannot be decoded "
                             f"({type(err).__name__}: {err})") from None


class CaptionedClassDataset(_StagedDataset):
    """Wrap a classification data set ``(PIL image, label)`` with one caption per class.

    ``ds[i]`` returns ``(image (3, R, R) in [-1, 1], captions[label])``.
    """

    def __init__(self, base, captions: list[str], resolution=32):
        super().__init__(resolution)
        self.base, self.captions = base, list(captions)

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i):
        img, label = self.base[i]
        label = int(label)
        if not 0 <= label < len(self.captions):
            raise ValueError(f"label {label} has no caption (expected 0..{len(self.captions) - 1})")
        return self._output(img, self.captions[label])


def torchvision_captioned(name: str, root, train: bool = True, download: bool = False, resolution=32):
    """CIFAR-10, MNIST or Fashion-MNIST from torchvision, captioned by class name.

    Args:
        name: ``"cifar10"``, ``"mnist"`` or ``"fashionmnist"`` (case and ``-``/``_`` ignored).
        root: folder that holds (or will hold, with ``download=True``) the data set.
        train: the training split (else the test split).
        download: fetch the files if missing (needs the network). Without it a missing data set
            raises ``FileNotFoundError`` saying so; nothing is ever downloaded otherwise.
        resolution: an int or a tuple of ints, as for :class:`~imagen_edu.data.shapes.ShapesDataset`.

    Returns a :class:`CaptionedClassDataset` yielding ``(image in [-1, 1], caption)``; grayscale
    images are repeated over 3 channels.
    """
    import torchvision

    key = str(name).lower().replace("-", "").replace("_", "")
    classes = {"cifar10": torchvision.datasets.CIFAR10, "mnist": torchvision.datasets.MNIST,
               "fashionmnist": torchvision.datasets.FashionMNIST}
    if key not in classes:
        raise ValueError(f"unknown data set {name!r}: expected one of {list(classes)}")
    check_resolution(resolution)
    try:
        base = classes[key](root=str(root), train=bool(train), download=bool(download))
    except RuntimeError as err:
        if download:
            raise
        raise FileNotFoundError(f"{name} not found under {root}: pass download=True to fetch it "
                                f"(torchvision said: {err})") from None
    return CaptionedClassDataset(base, CLASS_CAPTIONS[key], resolution)


__all__ = ["CLASS_CAPTIONS", "CaptionedClassDataset", "CaptionedImageFolder", "to_stage_images",
           "torchvision_captioned"]
