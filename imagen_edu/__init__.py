"""imagen_edu: the tested package behind the book *Imagen from scratch*.

One module per idea, in the order of the book (the README's layout table says which chapter
derives each): ``profiles`` and ``doctor`` (setup); ``data`` (captions, shapes, real data, text
corpora) and ``evaluate`` (the judge); ``attention`` (chapter 1); ``tokenizer`` and ``lm``
(chapter 2); ``t5``, ``t5_pretraining``, ``text_encoders`` and ``probe`` (chapter 2b);
``diffusion``, ``thresholding``, ``toy2d``, ``ddpm_train`` and ``ddpm_images`` (chapter 3); ``clip`` and
``clip_eval`` (chapter 4); ``unet``, ``guidance``, ``noise_augmentation``, ``stage``, ``stage_training`` and
``cascade`` (chapter 5; ``imagen`` gathers their names); ``optim``, ``batching``, ``rng_state``, ``train``,
``checkpoints``, ``configs``, ``bench``, ``embcache`` and ``cli`` (chapter 6); ``viz``,
``widgets``, ``pixels`` and ``exercises`` (every chapter).
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
