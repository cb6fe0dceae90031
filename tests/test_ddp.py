"""Distributed training under DistributedDataParallel: two gloo processes on CPU, each holding a shard of the
global batch, give the loss and (after `gather_rows` and DDP's all-reduce) the gradients of one process on the
whole batch, through `train()` and its `train_step`; a full `train()` run and a crash-and-resume under two
processes end with the single-process model; a fine-tuning run (source + target, curriculum + adversarial,
cached features with segments) gives the single-process losses step by step."""
import os
import socket
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from PIL import Image

WORLD = 2
TOL = 1e-5              # losses, gradients, embeddings
WEIGHT_TOL = 1e-3       # raw weights after AdamW steps: a near-zero gradient (attention key biases get exactly
                        # zero) moves its weight by +-lr whatever the sign of its round-off, so compare functions


def tiny_config(**kw):
    """A tiny native CLIP (2-layer ViT and text transformer) trained end to end; no dropout, no BatchNorm."""
    from urbancross.core import get_config
    base = dict(device="cpu", model_name="UC-TinyViT", pretrained="", image_size=32, context_length=16,
                trainable="all", lr=1e-2, lr_backbone=3e-3, epochs=2, batch_size=5, threads=1, seed=3,
                progress="off", views=2, num_seg=2)
    return get_config("smoke", **{**base, **kw})


def finetune_config(loss: str):
    """Heads on cached features with segments, fine-tuned towards a target domain (curriculum + adversarial)."""
    return tiny_config(trainable="heads", loss=loss, da_epochs=1, source_batch=6, target_batch=4, da_lr=1e-3,
                       curriculum=True, curriculum_start=0.5, adversarial=True)


def fresh_model(cfg):
    from urbancross.towers import build_model
    torch.manual_seed(0)
    return build_model(cfg)


def write_tiles(root: Path) -> None:
    """Twelve noise tiles per domain ('toy', and a darker 'dark'), written once before the processes start."""
    for d, shade in (("toy", 1.0), ("dark", 0.4)):
        for i in range(12):
            img = np.random.default_rng(i).integers(0, 255, (16, 16, 3)) * shade
            Image.fromarray(img.astype(np.uint8)).save(root / f"{d}{i}.png")


def manifest_df(root: Path, domain: str = "toy", n: int = 12):
    from urbancross.data import make_manifest
    return make_manifest([dict(image_id=f"{domain}{i}", image_path=str(root / f"{domain}{i}.png"), domain=domain,
                               captions=[f"{domain} tile {i}", "noise" if i % 4 == 0 else f"pattern {i}"])
                          for i in range(n)])


def segments_of(df) -> dict:
    """Three 8-pixel crops per image, two used (`num_seg=2`); every third image has no valid segment."""
    return {r.image_id: (np.stack([np.full((8, 8, 3), 30 * k + 5 * i, np.uint8) for k in range(3)]),
                         np.array([True, i % 2 == 0, False]) if i % 3 else np.zeros(3, bool))
            for i, r in enumerate(df.itertuples())}


def finetune_items(cfg, model, root: Path):
    """Source and target items of a feature bank (cached in `root/cache`, computed once by the fixture)."""
    import pandas as pd
    from urbancross.features import feature_bank
    from urbancross.train import make_items
    df = pd.concat([manifest_df(root, "toy", 8), manifest_df(root, "dark", 8)], ignore_index=True)
    bank = feature_bank(cfg, model, df, root / "cache", segments_of(df))
    return (make_items(cfg, model, bank.subset(bank.select(domain="toy"))),
            make_items(cfg, model, bank.subset(bank.select(domain="dark")), seed_offset=1))


def one_step(cfg, root: Path) -> dict:
    """A `train()` of one step on a 7-row global batch (shards of 4 and 3 rows under two processes): its loss,
    and the gradients it leaves on the parameters (`train_step` zeroes them before, not after, the backward)."""
    from urbancross.train import make_items, train
    model = fresh_model(cfg)
    hist = train(cfg.replace(epochs=1, batch_size=7), model, make_items(cfg, model, manifest_df(root, n=7)))
    return dict(history=hist.drop(columns="seconds").to_dict("list"),
                grads={n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None},
                weights={k: v.clone() for k, v in model.state_dict().items()})


def full_train(cfg, root: Path, checkpoint=None) -> dict:
    from urbancross.train import make_items, train
    model = fresh_model(cfg)
    df = manifest_df(root)
    hist = train(cfg, model, make_items(cfg, model, df), val=df, checkpoint=checkpoint)
    return dict(history=hist.drop(columns="seconds").to_dict("list"), weights=model.state_dict())


class Crash(Exception):
    pass


def crash_at(n):
    def hook(s):
        if s["global_step"] == n:
            raise Crash(n)
    return hook


def crash_and_resume(cfg, root: Path, checkpoint: Path) -> dict:
    from urbancross.train import make_items, train
    df = manifest_df(root)
    model = fresh_model(cfg)
    try:
        train(cfg, model, make_items(cfg, model, df), checkpoint=checkpoint, on_step=crash_at(3))
    except Crash:
        pass
    model = fresh_model(cfg)
    hist = train(cfg, model, make_items(cfg, model, df), val=df, checkpoint=checkpoint, resume=True)
    return dict(history=hist.drop(columns="seconds").to_dict("list"), weights=model.state_dict())


def fine_tune(cfg, root: Path) -> dict:
    from urbancross.train import train
    model = fresh_model(cfg)
    src, tgt = finetune_items(cfg, model, root)
    steps = []
    hist = train(cfg, model, src, tgt, fine_tune=True, on_step=steps.append)
    return dict(history=hist.drop(columns="seconds").to_dict("list"), steps=steps)


CASES = {"step_triplet": lambda root, r, w: one_step(tiny_config(loss="triplet"), root),
         "train": lambda root, r, w: full_train(tiny_config(loss="triplet"), root, root / "ddp.pt"),
         "resume": lambda root, r, w: crash_and_resume(tiny_config(loss="triplet", checkpoint_every=2), root,
                                                       root / "ddp_crash.pt"),
         "finetune_triplet": lambda root, r, w: fine_tune(finetune_config("triplet"), root),
         "step_infonce": lambda root, r, w: one_step(tiny_config(loss="infonce"), root),
         "finetune_infonce": lambda root, r, w: fine_tune(finetune_config("infonce"), root)}


def worker(rank: int, world: int, port: int, root: str):
    """One process of the group: every case in turn, each result (or its error) saved for the tests."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank), GLOO_SOCKET_IFNAME="lo")
    torch.set_num_threads(1)
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel
    import urbancross.train as train_module
    from urbancross.core import atomic_torch_save
    from urbancross.distributed import init_distributed
    real_init = dist.init_process_group                    # a hung collective fails the test instead of stalling it
    dist.init_process_group = lambda backend, **kw: real_init(backend, timeout=timedelta(seconds=90), **kw)
    assert init_distributed() == (rank, world) and dist.get_backend() == "gloo"
    wrapped = []

    class CountingDDP(DistributedDataParallel):
        def __init__(self, *args, **kw):
            wrapped.append(sorted(kw.items()))
            super().__init__(*args, **kw)

    train_module.DistributedDataParallel = CountingDDP     # so the test sees that train() wrapped the model
    root, out = Path(root), {}
    for name, case in CASES.items():
        wrapped.clear()
        try:
            out[name] = case(root, rank, world)
        except Exception as e:                            # noqa: BLE001 - recorded, asserted in the tests
            out[name] = dict(error=f"{type(e).__name__}: {e}")
        out[name]["ddp_wraps"] = len(wrapped)
        dist.barrier()
    atomic_torch_save(out, root / f"rank{rank}.pt")
    dist.destroy_process_group()


def free_loopback_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp")
    write_tiles(root)
    cfg = finetune_config("triplet")
    finetune_items(cfg, fresh_model(cfg), root)            # the feature-bank cache, before the processes read it
    mp.spawn(worker, args=(WORLD, free_loopback_port(), str(root)), nprocs=WORLD, join=True)
    from urbancross.core import safe_torch_load
    return root, [safe_torch_load(root / f"rank{r}.pt") for r in range(WORLD)]


def result(outs, name):
    for r, out in enumerate(outs):
        err = out[name].get("error", "")
        assert not err, f"rank {r}, {name}: {err}"
    return [out[name] for out in outs]


def close(a, b, what, tol=TOL):
    assert torch.allclose(a, b, rtol=0, atol=tol), f"{what}: max |diff| {float((a - b).abs().max()):.3g}"


def embeddings(cfg, weights, root: Path) -> tuple[torch.Tensor, torch.Tensor]:
    from urbancross.train import gallery_embeddings
    model = fresh_model(cfg)
    model.load_state_dict(weights)
    return gallery_embeddings(cfg, model, manifest_df(root))[:2]


def check_step(ranks, loss):
    root, outs = ranks
    per_rank = result(outs, f"step_{loss}")
    one = one_step(tiny_config(loss=loss), root)
    assert one["history"]["steps"] == [1]
    assert one["grads"]["clip.visual.conv1.weight"].abs().max() > 0, "the trunk gets no gradient"
    assert ("clip.logit_scale" in one["grads"]) == (loss == "infonce")     # the triplet loss has no temperature
    assert not any(k.startswith(("segment_visual.", "segment_head.")) for k in one["grads"])   # no segments given
    for r, out in enumerate(per_rank):
        assert out["ddp_wraps"] == 1, "train() did not wrap the model in DistributedDataParallel"
        np.testing.assert_allclose(out["history"]["loss"], one["history"]["loss"], rtol=0, atol=TOL,
                                   err_msg=f"rank {r} loss")
        assert out["grads"].keys() == one["grads"].keys()
        for name, g in one["grads"].items():
            close(out["grads"][name], g, f"rank {r} gradient of {name} after all-reduce")
    a, b = (o["weights"] for o in per_rank)
    assert all(torch.equal(a[k], b[k]) for k in a), "the ranks' optimizer steps differ"


def test_ddp_train_step_loss_and_gradients_equal_one_process(ranks):
    check_step(ranks, "triplet")


def test_ddp_train_step_infonce_equals_one_process(ranks):
    check_step(ranks, "infonce")


def test_ddp_train_matches_one_process(ranks):
    root, outs = ranks
    from urbancross.core import safe_torch_load
    per_rank = result(outs, "train")
    cfg = tiny_config(loss="triplet")
    one = full_train(cfg, root)
    init = fresh_model(cfg).state_dict()
    for r, out in enumerate(per_rank):
        assert out["ddp_wraps"] == 1, "train() did not wrap the model in DistributedDataParallel"
        assert out["history"]["epoch"] == one["history"]["epoch"] == [1, 2]
        assert out["history"]["steps"] == one["history"]["steps"] == [3, 3]      # 12 rows: batches of 5, 5, 2
        for col in ("loss", "loss_it", "val_mR"):
            np.testing.assert_allclose(out["history"][col], one["history"][col], rtol=0, atol=TOL, err_msg=col)
        assert out["weights"].keys() == one["weights"].keys()
        for k, v in one["weights"].items():
            close(out["weights"][k], v, f"rank {r} trained {k}", WEIGHT_TOL)
        mine, ref = embeddings(cfg, out["weights"], root), embeddings(cfg, one["weights"], root)
        for what, x, y in zip(("image", "caption"), mine, ref):
            close(x, y, f"rank {r} {what} embeddings of the trained model")
    trained = [k for k in init if not torch.equal(one["weights"][k], init[k])]
    assert any(k.startswith("clip.visual.") for k in trained) and any(k.startswith("image_head.") for k in trained)
    a, b = (o["weights"] for o in per_rank)
    assert all(torch.equal(a[k], b[k]) for k in a), "ranks drifted apart"
    ck = safe_torch_load(root / "ddp.pt")
    assert ck["world_size"] == WORLD and len(ck["rng"]) == WORLD and ck["global_step"] == 2 * 3


def test_ddp_crash_and_resume_matches_uninterrupted(ranks):
    _, outs = ranks
    for r, (res, ref) in enumerate(zip(result(outs, "resume"), result(outs, "train"))):
        assert res["ddp_wraps"] == 2, "the crashed and the resumed run each wrap the model"
        assert res["history"] == ref["history"], f"rank {r}"
        assert all(torch.equal(res["weights"][k], ref["weights"][k]) for k in ref["weights"]), f"rank {r}"


def check_finetune(ranks, loss):
    root, outs = ranks
    per_rank = result(outs, f"finetune_{loss}")
    one = fine_tune(finetune_config(loss), root)
    assert [s["global_step"] for s in one["steps"]] == [1, 2]                  # 8 target rows, batches of 4
    hist = one["history"]
    assert {"loss_it", "loss_st", "loss_is", "loss_hard_negative", "loss_adversarial"} <= set(hist)
    assert hist["admitted"] == [0.5] and hist["source_ratio"] == [0.5]         # the curriculum's first share
    for r, out in enumerate(per_rank):
        assert out["ddp_wraps"] == 1
        np.testing.assert_allclose([s["loss"] for s in out["steps"]], [s["loss"] for s in one["steps"]],
                                   rtol=0, atol=TOL, err_msg=f"rank {r}: loss of steps 1 and 2")
        assert out["history"].keys() == hist.keys()
        for col, v in hist.items():
            np.testing.assert_allclose(out["history"][col], v, rtol=0, atol=TOL, err_msg=f"rank {r} {col}")


def test_ddp_fine_tune_matches_one_process(ranks):
    check_finetune(ranks, "triplet")


def test_ddp_fine_tune_infonce_matches_one_process(ranks):
    check_finetune(ranks, "infonce")
