"""open_clip-style regression pins: for a fixed seed and a tiny input (a 2-layer native CLIP, `UC-TinyViT`, on
a handful of generated tiles with captions and segment crops), the loss terms and one optimizer step's result
are pinned, so that a refactor that changes the numbers is noticed. The pins hold for 1 and 2 torch threads.
Re-pin only for an intended change of the method: `PRINT_PINS=1 pytest tests/test_regression.py -k pins -s`
prints the values to paste."""
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

APPROX = dict(rel=1e-3, abs=1e-4)
TERMS = ("loss_it", "loss_st", "loss_is", "loss_hard_negative", "loss_adversarial")

# fine-tuning towards a target domain (curriculum + adversarial, cached features with segments); 1 step per epoch
FINE_TUNE_PINS = {
    "step1": {"loss_it": 1.1679331, "loss_st": 1.0982872, "loss_is": 1.0010819, "loss_hard_negative": 1.3721832,
              "loss_adversarial": 0.69026965, "loss": 4.2800703, "admitted": 0.5},
    "step2_loss": 5.0233288,
    "image_head_after_step1": {"norm": 5.6092014, "update_sum": 0.0040220749, "update_norm": 0.039187402},
}
# alignment on pixels, every weight trainable; 1 step per epoch
ALIGNMENT_PINS = {
    "step1_loss": 2.0477796, "step2_loss": 2.3075471,
    "image_head_after_step1": {"norm": 5.6083007, "update_sum": 0.014992999, "update_norm": 0.039176047,
                               "conv1": 3.9896493},
}

# alignment on pixels with segment crops (image-text, segment-text, image-segment terms), every weight trainable
PIXEL_SEGMENT_PINS = {
    "step1": {"loss_it": 2.0477796, "loss_st": 1.9118231, "loss_is": 1.9273051, "loss": 3.9673438},
    "step2_loss": 4.3393221,
    "heads_after_step1": {"norm": 5.6078568, "update_sum": -0.015996885, "update_norm": 0.039191838,
                          "segment_head": 5.6084733},
}


@pytest.fixture
def threads(request):
    """Run the test with `request.param` torch threads (default 1), restoring the count afterwards."""
    n, before = getattr(request, "param", 1), torch.get_num_threads()
    torch.set_num_threads(n)
    yield n
    torch.set_num_threads(before)


def config(threads: int, **kw):
    from urbancross.core import get_config
    base = dict(device="cpu", model_name="UC-TinyViT", pretrained="", image_size=32, context_length=16, seed=0,
                threads=threads, progress="off", views=2, num_seg=2)
    return get_config("smoke", **{**base, **kw})


def fine_tune_config(threads: int):
    return config(threads, trainable="heads", da_epochs=2, source_batch=6, target_batch=4, da_lr=1e-3,
                  curriculum=True, curriculum_start=0.5, adversarial=True)


def tiny_model(cfg):
    from urbancross.towers import build_model
    torch.manual_seed(0)
    return build_model(cfg)


def tiles(root: Path, domain: str, n: int, shade: float):
    """`n` 24-pixel tiles: a colour gradient with stripes (darker in the target domain), two captions each."""
    from urbancross.data import make_manifest
    rows = []
    for i in range(n):
        y, x = np.mgrid[0:24, 0:24]
        img = np.stack([(x * 10 + 40 * i) % 256, (y * 10 + 25 * i) % 256, np.full_like(x, 60 + 30 * i)], -1)
        img[::6] = img[::6] // 2
        Image.fromarray((img * shade).astype(np.uint8)).save(root / f"{domain}{i}.png")
        rows.append(dict(image_id=f"{domain}{i}", image_path=str(root / f"{domain}{i}.png"), domain=domain,
                         captions=[f"a {domain} tile number {i}", "stripes" if i % 3 == 0 else f"pattern {i}"]))
    return make_manifest(rows)


def segments_of(df) -> dict:
    """Three 8-pixel crops per image (two used): solid colours; the second slot is valid on every other image."""
    return {r.image_id: (np.stack([np.full((8, 8, 3), (20 * i + 60 * k) % 256, np.uint8) for k in range(3)]),
                         np.array([True, i % 2 == 0, False]))
            for i, r in enumerate(df.itertuples())}


def head_probe(model):
    """A callback's view of the image head's projection: its norm, and the sum and norm of its change so far
    (Adam's first step moves every weight by about +-lr, so the sum reads the signs, the norm alone does not)."""
    w0 = model.image_head[-1].weight.detach().clone()

    def probe() -> dict:
        w = model.image_head[-1].weight.detach()
        return dict(norm=float(w.norm()), update_sum=float((w - w0).sum()), update_norm=float((w - w0).norm()))
    return probe


def fine_tune_run(root: Path, threads: int) -> dict:
    """Two fine-tuning steps (one per epoch: 4 target rows, batches of 6 + 4): per-step logs and head norm."""
    from urbancross.features import feature_bank
    from urbancross.train import make_items, train
    cfg = fine_tune_config(threads)
    model = tiny_model(cfg)
    df = pd.concat([tiles(root, "toy", 6, 1.0), tiles(root, "dark", 4, 0.5)], ignore_index=True)
    bank = feature_bank(cfg, model, df, root / "cache", segments_of(df))
    src = make_items(cfg, model, bank.select(domain="toy"))
    tgt = make_items(cfg, model, bank.select(domain="dark"), seed_offset=1)
    probe, norms = head_probe(model), []
    hist = train(cfg, model, src, tgt, fine_tune=True, on_step=lambda s: norms.append(probe()))
    return dict(history=hist, norms=norms)


def alignment_run(root: Path, threads: int) -> dict:
    """Two alignment steps on pixels (6 tiles, batch 6, one step per epoch), every weight trainable."""
    from urbancross.train import make_items, train
    cfg = config(threads, trainable="all", use_sam=False, epochs=2, batch_size=6, lr=1e-3, lr_backbone=1e-3)
    model = tiny_model(cfg)
    probe, norms = head_probe(model), []
    conv1 = model.clip.visual.conv1.weight
    hist = train(cfg, model, make_items(cfg, model, tiles(root, "toy", 6, 1.0)),
                 on_step=lambda s: norms.append(dict(probe(), conv1=float(conv1.detach().norm()))))
    return dict(history=hist, norms=norms)


def pixel_segments_run(root: Path, threads: int) -> dict:
    """Two alignment steps on pixels with segment crops (separate segment tower), every weight trainable."""
    from urbancross.train import make_items, train
    cfg = config(threads, trainable="all", epochs=2, batch_size=6, lr=1e-3, lr_backbone=1e-3)
    model = tiny_model(cfg)
    df = tiles(root, "toy", 6, 1.0)
    items = make_items(cfg, model, df, segments_of(df))
    first = items[(0, 0)]
    assert first["segments"].shape == (2, 3, 32, 32) and first["segment_valid"].tolist() == [True, True]
    probe, norms = head_probe(model), []
    seg_head = model.segment_head[-1].weight
    hist = train(cfg, model, items,
                 on_step=lambda s: norms.append(dict(probe(), segment_head=float(seg_head.detach().norm()))))
    return dict(history=hist, norms=norms)


def fine_tune_values(run: dict) -> dict:
    h = run["history"]
    assert list(h.steps) == [1, 1] and len(run["norms"]) == 2
    return {"step1": {k: float(h[k].iloc[0]) for k in (*TERMS, "loss", "admitted")},
            "step2_loss": float(h.loss.iloc[1]), "image_head_after_step1": run["norms"][0]}


def alignment_values(run: dict) -> dict:
    h = run["history"]
    assert list(h.steps) == [1, 1] and len(run["norms"]) == 2
    return {"step1_loss": float(h.loss.iloc[0]), "step2_loss": float(h.loss.iloc[1]),
            "image_head_after_step1": run["norms"][0]}


def pixel_segments_values(run: dict) -> dict:
    h = run["history"]
    assert list(h.steps) == [1, 1] and len(run["norms"]) == 2
    return {"step1": {k: float(h[k].iloc[0]) for k in ("loss_it", "loss_st", "loss_is", "loss")},
            "step2_loss": float(h.loss.iloc[1]), "heads_after_step1": run["norms"][0]}


def check(got: dict, pins: dict, what: str) -> None:
    if os.environ.get("PRINT_PINS"):
        print(f"{what} = {got!r}")
    for k, v in pins.items():
        if isinstance(v, dict):
            check(got[k], v, f"{what}[{k!r}]")
        else:
            assert got[k] == pytest.approx(v, **APPROX), f"{what}[{k!r}]: {got[k]!r}, pinned {v!r}"


@pytest.mark.parametrize("threads", [1, 2], indirect=True)
def test_fine_tune_loss_terms_and_step_pins(tmp_path, threads):
    check(fine_tune_values(fine_tune_run(tmp_path, threads)), FINE_TUNE_PINS, "FINE_TUNE_PINS")


@pytest.mark.parametrize("threads", [1, 2], indirect=True)
def test_alignment_step_pins(tmp_path, threads):
    check(alignment_values(alignment_run(tmp_path, threads)), ALIGNMENT_PINS, "ALIGNMENT_PINS")



@pytest.mark.parametrize("threads", [1, 2], indirect=True)
def test_pixel_segments_step_pins(tmp_path, threads):
    check(pixel_segments_values(pixel_segments_run(tmp_path, threads)), PIXEL_SEGMENT_PINS, "PIXEL_SEGMENT_PINS")
