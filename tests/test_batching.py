"""Tests of imagen_edu.batching: micro-batches for gradient accumulation and the sharded, resumable
data-set reader (chapter 6)."""

import math
from collections import namedtuple

import pytest
import torch

from imagen_edu.batching import DatasetBatches, split_batch, to_device
from imagen_edu.train import TrainConfig, Trainer
from support.ddp_smoke import regression_problem


def test_split_batch_structures():
    x = torch.arange(12).reshape(6, 2)
    caps = [f"c{i}" for i in range(6)]
    parts = split_batch((x, caps), 3)
    assert [p[1] for p in parts] == [caps[0:2], caps[2:4], caps[4:6]]
    assert torch.equal(torch.cat([p[0] for p in parts]), x)
    d = split_batch({"x": x, "y": [x, x + 1], "w": None}, 2)
    assert torch.equal(d[1]["y"][1], (x + 1)[3:]) and d[0]["w"] is None
    with pytest.raises(ValueError, match="4 equal"):
        split_batch(x, 4)
    with pytest.raises(TypeError, match="grad_accum"):
        split_batch(object(), 2)



def test_dataset_batches_shard_and_cover_epochs():
    data = torch.arange(10).float()[:, None] * torch.ones(1, 2)
    one = DatasetBatches(data, 4, seed=1)
    two = DatasetBatches(data, 4, seed=1)
    for step in range(6):
        whole = one.indices(step, 0, 1)
        assert two.indices(step, 0, 2) + two.indices(step, 1, 2) == whole
    stream = [i for s in range(5) for i in one.indices(s)]  # 20 items = 2 epochs of 10
    assert sorted(stream[:10]) == list(range(10)) and sorted(stream[10:]) == list(range(10))
    assert stream[:10] != stream[10:]  # a new permutation each epoch
    batch = one(2, 1, 2, None)
    assert torch.equal(batch, data[one.indices(2, 1, 2)])
    with pytest.raises(ValueError, match="world size 3"):
        one.indices(0, 0, 3)
    workers = DatasetBatches(data, 4, seed=1, num_workers=1)  # a DataLoader with a worker: same batches
    rng = torch.get_rng_state()
    for step in (0, 1, 4, 2):  # jumping to another step (a resume) restarts the loader there
        assert torch.equal(workers(step, 1, 2, None), one(step, 1, 2, None))
    assert torch.equal(torch.get_rng_state(), rng)  # starting loaders leaves the global generator alone


def test_dataset_batches_train_like_a_procedural_source(tmp_path):
    model, loss_fn, _ = regression_problem()
    x, y = regression_problem(batch_size=40)[2](0, 0, 1, None)
    ds = list(zip(x, y))
    tr = Trainer(model, loss_fn, DatasetBatches(ds, 8, seed=0), TrainConfig(steps=4, batch_size=8, out_dir=tmp_path),
                 progress=False, device="cpu")
    losses = tr.train()
    assert len(losses) == 4 and all(math.isfinite(v) for v in losses)


def test_to_device_keeps_the_structure():
    Pair = namedtuple("Pair", "x caps")
    batch = {"a": Pair(torch.ones(2), ["c0", "c1"]), "b": [torch.zeros(1), (torch.ones(1), 3)], "n": None}
    out = to_device(batch, "cpu")
    assert isinstance(out["a"], Pair) and out["a"].caps == ["c0", "c1"] and out["n"] is None
    assert isinstance(out["b"][1], tuple) and out["b"][1][1] == 3 and torch.equal(out["b"][0], torch.zeros(1))
