"""Runs do not depend on what ran before them in the process: two cross-domain grid cells (an adversarial one
and an unsupervised one) give identical rows and histories in either order, with the process's random
generators and thread count disturbed in between; an end-to-end (pixels, every weight trains) run likewise.
This is what lets a resumed or cluster-scheduled `make reproduce` equal an uninterrupted one."""
import random

import numpy as np
import pytest
import torch

TINY = dict(model_name="UC-TinyViT", pretrained="", image_size=32, context_length=16, images_per_domain=24,
            tile_size=64, epochs=1, batch_size=8, da_epochs=2, source_batch=8, target_batch=4, num_seg_stored=3,
            num_seg=2, segment_size=32, views=2, device="cpu", eval_block_size=64, threads=1, progress="off",
            domains=("finland", "germany"), segment_workers=1)


def disturb_process() -> None:
    """What an earlier job could leave behind: used-up random generators and another thread count."""
    torch.manual_seed(987654321); torch.rand(1000)
    random.seed(4321); np.random.seed(1234); np.random.rand(100)
    torch.set_num_threads(2 if torch.get_num_threads() == 1 else 1)


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    """A tiny compendium (embedded tiles, random-init native CLIP) prepared once for the grid."""
    import os
    root = tmp_path_factory.mktemp("order")
    (root / "settings.ini").write_text("[DEFAULT]\n")
    old, threads = os.environ.get("URBANCROSS_ROOT"), torch.get_num_threads()
    os.environ["URBANCROSS_ROOT"] = str(root)
    try:
        from urbancross.core import get_config
        from urbancross.datasets import load_profile_data, prepare
        from urbancross.protocols import run_state
        cfg = get_config("smoke", **TINY)
        data, segments, model = prepare(cfg, load_profile_data(cfg))
        yield root, cfg, data, segments, model, run_state(cfg, model)
    finally:
        torch.set_num_threads(threads)
        if old is None:
            os.environ.pop("URBANCROSS_ROOT", None)
        else:
            os.environ["URBANCROSS_ROOT"] = old


def run_cells(grid, cells, folder: str, disturb: bool) -> dict:
    from urbancross.grid import GridContext, run_cell
    root, cfg, data, segments, model, pretrained = grid
    ctx = GridContext(cfg, model, data, segments, pretrained, root / folder)
    out = {}
    for cell in cells:
        if disturb:
            disturb_process()
        got = run_cell(ctx, cell)
        out[cell.name] = (got["row"], {k: v for k, v in got["hist"].items() if k != "seconds"})   # wall time aside
    return out


def test_grid_cells_give_the_same_rows_in_either_order(grid):
    from urbancross.grid import Cell
    a = Cell("finland", "germany", "paper: UrbanCross", 0)
    b = Cell("germany", "finland", "unsupervised: UrbanCross", 1)
    forward = run_cells(grid, [a, b], "forward", disturb=False)
    backward = run_cells(grid, [b, a], "backward", disturb=True)
    for name in forward:
        assert forward[name][0] == backward[name][0], (name, forward[name][0], backward[name][0])
        assert forward[name][1] == backward[name][1], name
    assert forward[a.name][0]["disc_acc"] is not None          # the adversarial branch really ran
    assert forward[a.name][0]["steps"] > 0 and forward[b.name][0]["steps"] > 0


def test_end_to_end_training_does_not_depend_on_the_process(grid):
    from urbancross.datasets import load_profile_data
    from urbancross.protocols import load_run_state, run_state
    from urbancross.train import make_items, train
    _, cfg, _, _, model, _ = grid
    c = cfg.replace(trainable="all", cache_features=False, use_sam=False, seed=3)
    rows = load_profile_data(c).select("finland", "train")
    start = run_state(c, model)                                # every tensor: end to end changes the trunks too
    runs = []
    for disturb in (False, True):
        load_run_state(model, start)
        if disturb:
            disturb_process()
        hist = train(c, model, make_items(c, model, rows))
        runs.append((hist.loss.tolist(), {k: v.clone() for k, v in model.state_dict().items()}))
    load_run_state(model, start)
    (loss_a, sd_a), (loss_b, sd_b) = runs
    assert loss_a == loss_b
    different = [k for k in sd_a if not torch.equal(sd_a[k], sd_b[k])]
    assert not different, different[:5]
