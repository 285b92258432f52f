"""imagen_edu: the tested package behind the book *Imagen from scratch*.

One module per idea: ``profiles`` and ``doctor`` (setup), ``attention`` (chapter 1),
``tokenizer``/``lm``/``text_encoders`` (chapter 2), ``diffusion`` (chapter 3), ``clip`` (chapter 4),
``unet``, ``guidance``, ``thresholding``, ``noise_augmentation``, ``stage``, ``stage_training``,
``cascade`` (chapter 5; ``imagen`` gathers their names), ``train``, ``bench``, ``embcache`` and
``cli`` (chapter 6), and the shared ``data``, ``evaluate`` (the judge), ``configs`` (the named
stage recipes), ``checkpoints``, ``viz`` and ``exercises``.
"""

from pathlib import Path

__version__ = "0.1.0"

#: The repository root (holds ``data/``), when the package is used from a checkout or an
#: editable install, as the book and Colab recipes do.
REPO_ROOT = Path(__file__).resolve().parent.parent
#: Shipped small assets: toy checkpoints and their manifest.
DATA_DIR = REPO_ROOT / "data"

from . import profiles  # noqa: E402,F401
from .doctor import doctor  # noqa: E402,F401
