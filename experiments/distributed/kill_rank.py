"""``python -m imagen_edu`` with one rank dying: rank ``R`` SIGKILLs itself after optimizer step ``K``.

What a node failure looks like to the job, made reproducible (chapter 6, "Training on several
GPUs"): torchrun sees the dead worker, stops the others, and the run continues with
``--resume`` from the last resume file. Used by ``tests/test_train_torchrun.py`` and
``check_torchrun.py``::

    torchrun --nproc_per_node=2 experiments/distributed/kill_rank.py --kill-rank 1 --kill-after 3 -- \\
        train --stage base --profile ci --steps 6 --save-every 2 --out runs/killed
"""

from __future__ import annotations

import argparse
import os
import signal
import sys

from imagen_edu import cli
from imagen_edu.train import Trainer

#: this file, for ``torchrun ... SCRIPT ...``
SCRIPT = os.path.abspath(__file__)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--kill-rank", type=int, required=True, help="the rank that dies")
    p.add_argument("--kill-after", type=int, required=True, help="it dies right after this optimizer step")
    opts, rest = p.parse_known_args(argv)
    rest = rest[1:] if rest[:1] == ["--"] else rest
    step = Trainer._train_step

    def dying_step(self):
        result = step(self)
        if self.rank == opts.kill_rank and self.step == opts.kill_after:
            os.kill(os.getpid(), signal.SIGKILL)  # no handler, no checkpoint: as if the node lost power
        return result

    Trainer._train_step = dying_step
    return cli.main(rest)


if __name__ == "__main__":
    sys.exit(main())
