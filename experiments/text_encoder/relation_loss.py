import sys, torch; torch.set_num_threads(1)
from imagen_edu import imagen, evaluate
st = imagen.load_stage(sys.argv[1])
r = evaluate.relation_loss_test(st, n=256)
print(sys.argv[1], {k: [round(x, 4) for x in v] if isinstance(v, list) and v and isinstance(v[0], float) else v for k, v in r.items() if k != "t_ranges"})
