"""R2 of order and side at every encoder layer's output (after the final RMSNorm applied to it)."""
import sys, torch; torch.set_num_threads(1)
import torch.nn.functional as F
from imagen_edu import t5 as T5, text_encoders as te
from imagen_edu.data.captions import all_captions
from imagen_edu.probe import between_share, side_labels
model, tok, _ = T5.load_t5(sys.argv[1])
enc = te.ToyT5Encoder(model, tok)
caps = [c for c in all_captions() if c.relation is not None]
texts = [c.text for c in caps]
E = model.encoder
outs = []
def hook(mod, inp, out): outs.append(out)
hs = [b.register_forward_hook(hook) for b in E.blocks]
h, m = enc.encode(texts)
for x in hs: x.remove()
for li, x in enumerate(outs):
    x = F.layer_norm(E.final_norm(x).float(), x.shape[-1:])
    X, order, side = [], [], []
    for b, c in enumerate(caps):
        n = len(texts[b].split()); sides = side_labels(c.relation)
        for i, o in ((1, 0), (2, 0), (n - 2, 1), (n - 1, 1)):
            X.append(x[b, i]); order.append(o); side.append(sides[o])
    X = torch.stack(X); order = torch.tensor(order); side = torch.tensor(side)
    r2 = lambda lab: round(between_share(X, lab), 4)  # probe.between_share: the between-class R^2
    print("layer", li + 1, "R2 order", r2(order), "side", r2(side))
