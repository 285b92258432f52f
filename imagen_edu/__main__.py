"""``python -m imagen_edu``: train, sample and evaluate the Imagen cascade (see :mod:`imagen_edu.cli`)."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
