"""Can one cross-attention layer read 'which object is on the left/right/top/bottom' from frozen states?"""
import sys, random, torch, torch.nn as nn, torch.nn.functional as F; torch.set_num_threads(1)
from imagen_edu import text_encoders as te
from imagen_edu.data.captions import all_captions, COLOURS, SHAPES, HELDOUT_PAIRS
name = sys.argv[1]; steps = int(sys.argv[2]) if len(sys.argv) > 2 else 1500
enc = te.get(name)
import os
STD = os.environ.get('STD') == '1'
MU = SD = None
caps = [c for c in all_captions() if c.relation is not None]
def text(c): 
    (c1, s1), (c2, s2) = c.objects; return f"a {c1} {s1} {c.relation} a {c2} {s2}"
SLOT = {"left of": (0, 1), "right of": (1, 0), "above": (2, 3), "below": (3, 2)}
random.seed(0); random.shuffle(caps)
held = [c for c in caps if any(o in HELDOUT_PAIRS or tuple(o) in HELDOUT_PAIRS for o in c.objects)]
rest = [c for c in caps if c not in held]
ntest = len(rest) // 5
test, train = rest[:ntest], rest[ntest:]
cl, sl = list(COLOURS), list(SHAPES)
def data(cs):
    h, m = enc.encode([text(c) for c in cs])
    h = F.layer_norm(h.float(), h.shape[-1:])
    if STD: h = (h - MU) / SD
    slots, tc, ts = [], [], []
    for c in cs:
        a, b = SLOT[c.relation]
        (c1, s1), (c2, s2) = c.objects
        slots.append([a, b]); tc.append([cl.index(c1), cl.index(c2)]); ts.append([sl.index(s1), sl.index(s2)])
    return h, m.bool(), torch.tensor(slots), torch.tensor(tc), torch.tensor(ts)
if STD:
    _h, _m = enc.encode([text(c) for c in caps]); _h = F.layer_norm(_h.float(), _h.shape[-1:])[_m.bool()]
    MU, SD = _h.mean(0), _h.std(0)
tr, te_, he = data(train), data(test), data(held)
D = tr[0].shape[-1]; W = 32
torch.manual_seed(0)
q = nn.Parameter(torch.randn(4, W) * 0.5); k = nn.Linear(D, W); v = nn.Linear(D, W); oc = nn.Linear(W, len(cl)); os_ = nn.Linear(W, len(sl))
params = [q, *k.parameters(), *v.parameters(), *oc.parameters(), *os_.parameters()]
opt = torch.optim.Adam(params, 3e-3)
def fwd(h, m, slots):
    qq = q[slots]  # (N, 2, W)
    att = torch.einsum("nsw,ntw->nst", qq, k(h)) / W ** 0.5
    att = att.masked_fill(~m[:, None, :], -1e9).softmax(-1)
    o = torch.einsum("nst,ntw->nsw", att, v(h))
    return oc(o), os_(o)
def acc(d):
    with torch.no_grad():
        lc, ls = fwd(d[0], d[1], d[2])
        ok = (lc.argmax(-1) == d[3]) & (ls.argmax(-1) == d[4])
        return round(ok.all(-1).float().mean().item(), 3)
g = torch.Generator().manual_seed(0)
for s in range(steps + 1):
    idx = torch.randint(0, len(train), (64,), generator=g)
    lc, ls = fwd(tr[0][idx], tr[1][idx], tr[2][idx])
    loss = F.cross_entropy(lc.flatten(0, 1), tr[3][idx].flatten()) + F.cross_entropy(ls.flatten(0, 1), tr[4][idx].flatten())
    opt.zero_grad(); loss.backward(); opt.step()
    if s in (100, 300, 1000, steps):
        print(name[:40], "step", s, "loss", round(loss.item(), 3), "train", acc(tr), "test", acc(te_), "heldout", acc(he), flush=True)
