"""Distributed training: two gloo processes on CPU, each taking half of the global batch, give the loss and
(after DDP's all-reduce) the gradients of one process on the whole batch; a full `train()` run and a
crash-and-resume under two processes end with the weights of the single-process run."""
import math
import os
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from PIL import Image
from torch import nn
from torchvision import transforms as T

WORLD = 2
TOL = 1e-5


class TinyClip(nn.Module):
    """A two-tower model with no BatchNorm and no dropout, so N processes and one compute the same thing."""
    def __init__(self):
        super().__init__()
        self.visual, self.text = nn.Module(), nn.Module()
        self.visual.trunk = nn.Conv2d(3, 4, 3, stride=2)             # backbone (lr_backbone)
        self.visual.head = nn.Linear(16, 8)                           # projection (lr)
        self.text.embed = nn.EmbeddingBag(64, 12, mode="mean")
        self.text.proj = nn.Linear(12, 8)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))

    def encode_image(self, x):
        return self.visual.head(nn.functional.adaptive_avg_pool2d(torch.relu(self.visual.trunk(x)), 2).flatten(1))

    def encode_text(self, tokens):
        return self.text.proj(self.text.embed(tokens))


def tokenize(texts):
    return torch.tensor([[ord(c) % 64 for c in t[:16].ljust(16)] for t in texts])


def tiny_model():
    from urbancross.towers import RandomRot90, RetrievalModel
    torch.manual_seed(0)
    train_tf = T.Compose([RandomRot90(), T.RandomHorizontalFlip(), T.ToTensor()])
    return RetrievalModel(TinyClip(), tokenize, train_tf, T.ToTensor(), "tiny", "")


def tiny_config(**kw):
    from urbancross.core import get_config
    return get_config("smoke", device="cpu", epochs=3, batch_size=5, trainable="all", lr=1e-2, lr_backbone=3e-3,
                      threads=1, seed=3, **kw)


def fixed_batch():
    """A 7-row global batch (shards of 4 and 3) with two identical captions."""
    x = torch.randn(7, 3, 16, 16, generator=torch.Generator().manual_seed(5))
    return x, ["red roofs", "a lake", "red roofs", "forest", "a road by a field", "farmland", "docks"]


def batch_loss_and_grads(net, model, x, texts, all_texts, sizes, loss):
    from urbancross.train import alignment_loss, gather_embeddings
    model.zero_grad(set_to_none=True)
    img, txt = net(x, texts)
    img, txt = gather_embeddings(img, txt, sizes)
    value = alignment_loss(tiny_config(loss=loss), img, txt, model.logit_scale, all_texts)
    value.backward()
    return dict(loss=value.detach(), img=img.detach(), grads={n: p.grad.clone() for n, p in model.clip.named_parameters()
                                                            if p.grad is not None})


def write_tiles(root: Path) -> None:
    """Twelve 16-pixel noise tiles, written once before the processes start (they only read them)."""
    for i in range(12):
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(root / f"n{i}.png")


def manifest_df(root: Path):
    from urbancross.data import make_manifest
    rows = []
    for i in range(12):
        rows.append(dict(image_id=f"n{i}", image_path=str(root / f"n{i}.png"), domain="toy",
                         captions=[f"tile {i}", "noise" if i % 4 == 0 else f"pattern {i}"]))
    return make_manifest(rows)


class Crash(Exception):
    pass


def crash_at(n):
    def hook(s):
        if s["global_step"] == n:
            raise Crash(n)
    return hook


def worker(rank: int, world: int, port: int, tmp: str):
    """One process of the group: the fixed-batch check, a full train(), and a crash-and-resume."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank), GLOO_SOCKET_IFNAME="lo")
    torch.set_num_threads(1)
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel
    from urbancross.core import atomic_torch_save
    from urbancross.train import init_distributed, shard_sizes, train
    tmp = Path(tmp)
    assert init_distributed() == (rank, world) and dist.get_backend() == "gloo"
    out = {}
    x, texts = fixed_batch()
    sizes = shard_sizes(len(x), world)
    lo, hi = sum(sizes[:rank]), sum(sizes[:rank + 1])
    for loss in ("infonce", "triplet"):
        model = tiny_model()
        model.logit_scale.requires_grad_(loss == "infonce")      # as train() does: DDP waits for every gradient
        net = DistributedDataParallel(model)
        out[loss] = batch_loss_and_grads(net, model, x[lo:hi], texts[lo:hi], texts, sizes, loss)
    df = manifest_df(tmp)
    model = tiny_model()
    out["history"] = train(tiny_config(), model, df, val_df=df, checkpoint=tmp / "ddp.pt").drop(columns="seconds")
    out["weights"] = model.clip.state_dict()
    try:
        train(tiny_config(), tiny_model(), df, checkpoint=tmp / "ddp_crash.pt", checkpoint_every=2, on_step=crash_at(5))
    except Crash:
        pass
    model = tiny_model()
    out["resumed_history"] = train(tiny_config(), model, df, checkpoint=tmp / "ddp_crash.pt", resume=True,
                                   checkpoint_every=2).drop(columns="seconds")
    out["resumed_weights"] = model.clip.state_dict()
    out["history"] = out["history"].to_dict("list")
    out["resumed_history"] = out["resumed_history"].to_dict("list")
    atomic_torch_save(out, tmp / f"rank{rank}.pt")
    dist.destroy_process_group()


def free_loopback_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ddp")
    write_tiles(tmp)
    mp.spawn(worker, args=(WORLD, free_loopback_port(), str(tmp)), nprocs=WORLD, join=True)
    from urbancross.core import safe_torch_load
    return tmp, [safe_torch_load(tmp / f"rank{r}.pt") for r in range(WORLD)]


def close(a, b, what):
    assert torch.allclose(a, b, rtol=0, atol=TOL), f"{what}: max |diff| {float((a - b).abs().max()):.3g}"


@pytest.mark.parametrize("loss", ["infonce", "triplet"])
def test_gathered_loss_and_ddp_gradients_equal_one_process(ranks, loss):
    _, outs = ranks
    x, texts = fixed_batch()
    model = tiny_model()
    one = batch_loss_and_grads(model, model, x, texts, texts, [len(x)], loss)
    assert one["grads"]["visual.trunk.weight"].abs().max() > 0
    assert ("logit_scale" in one["grads"]) == (loss == "infonce")          # the triplet loss has no temperature
    for r, out in enumerate(outs):
        close(out[loss]["img"], one["img"], f"rank {r} gathered image embeddings")
        close(out[loss]["loss"], one["loss"], f"rank {r} {loss} loss")
        assert out[loss]["grads"].keys() == one["grads"].keys()
        for name, g in one["grads"].items():
            close(out[loss]["grads"][name], g, f"rank {r} gradient of {name} after all-reduce")


def test_ddp_train_matches_one_process(ranks):
    tmp, outs = ranks
    from urbancross.core import safe_torch_load
    from urbancross.train import train
    df = manifest_df(tmp)
    model = tiny_model()
    hist = train(tiny_config(), model, df, val_df=df).drop(columns="seconds").to_dict("list")
    one = model.clip.state_dict()
    for r, out in enumerate(outs):
        assert out["history"]["epoch"] == hist["epoch"] == [1, 2, 3]
        np.testing.assert_allclose(out["history"]["loss"], hist["loss"], rtol=0, atol=TOL)
        np.testing.assert_allclose(out["history"]["val_mR"], hist["val_mR"], rtol=0, atol=TOL)
        for k, v in one.items():
            close(out["weights"][k], v, f"rank {r} trained {k}")
            assert not torch.equal(v, tiny_model().clip.state_dict()[k]), f"{k} did not train"
    assert all(torch.equal(outs[0]["weights"][k], outs[1]["weights"][k]) for k in one), "ranks drifted apart"
    ck = safe_torch_load(tmp / "ddp.pt")
    assert ck["world_size"] == WORLD and len(ck["rng"]) == WORLD and ck["global_step"] == 3 * 3
    assert sorted(p.name for p in tmp.glob("*.pt*")) == ["ddp.pt", "ddp_crash.pt", "rank0.pt", "rank1.pt"]


def test_ddp_crash_and_resume_matches_uninterrupted(ranks):
    _, outs = ranks
    for r, out in enumerate(outs):
        assert out["resumed_history"]["loss"] == out["history"]["loss"], f"rank {r}"
        assert all(torch.equal(out["resumed_weights"][k], out["weights"][k]) for k in out["weights"]), f"rank {r}"
