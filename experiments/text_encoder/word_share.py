"""Which word of an object carries what: the share of the spread (R2) that the side, the order of
mention, the colour and the shape explain, at the colour word and at the shape word separately.

usage: python experiments/text_encoder/word_share.py ENCODER

ENCODER is an ``imagen_edu.text_encoders.get`` name, e.g. ``toyt5`` (the shipped encoder) or
``toyt5:OUT.safetensors``. The states are the encoder's final states at each two-object caption
of the grammar, LayerNormed as the U-Net reads them. Prints one JSON line per axis and word, then
one per word for the colour and shape shares.

Why it matters (chapter 2b): the U-Net must place each object's colour *and* its shape. If only the
shape word says which side its object is on, the colour word gives no hint where its colour goes.
"""
import json
import sys

import torch

torch.set_num_threads(1)
import torch.nn.functional as F  # noqa: E402

from imagen_edu import text_encoders  # noqa: E402
from imagen_edu.data.captions import COLOURS, SHAPES, all_captions  # noqa: E402
from imagen_edu.probe import AXES, between_share, side_labels  # noqa: E402

if len(sys.argv) != 2:
    sys.exit("usage: python experiments/text_encoder/word_share.py ENCODER")
enc = text_encoders.get(sys.argv[1])
caps = [c for c in all_captions() if c.relation is not None]
texts = [c.text for c in caps]
with torch.no_grad():
    h, _ = enc.encode(texts)
h = F.layer_norm(h.float(), h.shape[-1:])


def r2(X: torch.Tensor, labels: torch.Tensor) -> float:
    return round(between_share(X, labels), 4)


WORDS = {"colour": (1, -2), "shape": (2, -1)}  # word index of object 1, offset from the end of object 2
for axis in ("horizontal", "vertical"):
    for word, (i1, i2) in WORDS.items():
        X, side, order = [], [], []
        for b, c in enumerate(caps):
            if AXES[c.relation][0] != axis:
                continue
            n = len(texts[b].split())
            for o, (i, s) in enumerate(zip((i1, n + i2), side_labels(c.relation))):
                X.append(h[b, i])
                order.append(o)
                side.append(s)
        X = torch.stack(X)
        print(json.dumps({"axis": axis, "word": word, "side": r2(X, torch.tensor(side)),
                          "order": r2(X, torch.tensor(order))}))
for word, (i1, i2) in WORDS.items():
    X, colour, shape = [], [], []
    for b in range(len(caps)):
        w = texts[b].split()
        n = len(w)
        for i, (ci, si) in zip((i1, n + i2), ((1, 2), (n - 2, n - 1))):
            X.append(h[b, i])
            colour.append(list(COLOURS).index(w[ci]))
            shape.append(SHAPES.index(w[si]))
    X = torch.stack(X)
    print(json.dumps({"word": word, "colour": r2(X, torch.tensor(colour)), "shape": r2(X, torch.tensor(shape))}))
