"""Resumable training: a real training process killed with SIGKILL (mid-epoch, while it writes a checkpoint)
and restarted with resume=True ends bit-identical to an uninterrupted run; a corrupt checkpoint is an error
naming the file. The run validates every epoch and keeps its best epoch across the kill."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

EPOCHS, ROWS, BATCH = 3, 12, 3           # 4 steps per epoch, 12 in all
STEPS_PER_EPOCH = ROWS // BATCH

WORKER = r'''
import json, sys
from pathlib import Path
import torch
from urbancross.core import atomic_torch_save, atomic_write, get_config
from urbancross.data import read_manifest
from urbancross.towers import build_model
from urbancross.train import evaluate, make_items, train

manifest, ck, out, mode = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3]), sys.argv[4]
out.mkdir(parents=True, exist_ok=True)
df = read_manifest(manifest)
cfg = get_config("smoke", device="cpu", model_name="UC-TinyViT", pretrained="", image_size=32, context_length=16,
                 epochs=%(epochs)d, batch_size=%(batch)d, trainable="all", lr=3e-3, lr_backbone=1e-3, seed=1,
                 threads=1, checkpoint_every=1, progress="off")
torch.manual_seed(0)
model = build_model(cfg)

def progress(s):
    with atomic_write(out / "progress.json") as f:
        json.dump(s, f)

hist = train(cfg, model, make_items(cfg, model, df), val=df, checkpoint=ck, resume=(mode == "resume"),
             on_step=progress)
hist.drop(columns="seconds").to_json(out / "history.json")
atomic_torch_save(model.state_dict(), out / "weights.pt")      # trunks, heads and the segment tower
with atomic_write(out / "metrics.json") as f:
    json.dump(evaluate(cfg, model, df), f)
''' % dict(epochs=EPOCHS, batch=BATCH)


def partial_saves(ck: Path) -> list[Path]:
    return sorted(ck.parent.glob(f".{ck.name}.*.tmp"))


def make_data(root: Path) -> Path:
    """Twelve noise tiles (so augmentation matters) with two captions each, one caption shared by two tiles."""
    from urbancross.data import make_manifest, write_manifest
    rows = []
    for i in range(ROWS):
        img = np.random.default_rng(i).integers(0, 255, (40, 40, 3), dtype=np.uint8)
        Image.fromarray(img).save(root / f"tile{i}.png")
        caps = [f"tile number {i}", "a noisy tile" if i in (3, 7) else f"noise pattern {i}"]
        rows.append(dict(image_id=f"tile{i}", image_path=str(root / f"tile{i}.png"), domain="toy", captions=caps))
    return write_manifest(make_manifest(rows), root / "manifest.csv")


def launch(tmp: Path, manifest: Path, ck: Path, out: Path, mode: str) -> subprocess.Popen:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, str(tmp / "worker.py"), str(manifest), str(ck), str(out), mode],
                            cwd=tmp, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(p: subprocess.Popen, what: str, timeout: float = 240) -> str:
    out, err = p.communicate(timeout=timeout)
    assert p.returncode == 0, f"{what} failed (rc {p.returncode}):\n{err[-3000:]}"
    return err


def test_sigkill_mid_epoch_then_resume_is_bit_identical(tmp_path):
    from urbancross.core import safe_torch_load
    (tmp_path / "worker.py").write_text(WORKER)
    manifest = make_data(tmp_path)
    ck_ref, ck = tmp_path / "ref" / "ck.pt", tmp_path / "run" / "ck.pt"
    ref = launch(tmp_path, manifest, ck_ref, tmp_path / "out_ref", "fresh")
    victim = launch(tmp_path, manifest, ck, tmp_path / "out_run", "fresh")
    progress = tmp_path / "out_run" / "progress.json"

    # kill once the run is in its second epoch *and* is in the middle of writing a checkpoint
    deadline, seen = time.time() + 180, 0
    while time.time() < deadline and victim.poll() is None:
        if progress.exists() and partial_saves(ck):
            seen = json.loads(progress.read_text())["global_step"]
            if seen > STEPS_PER_EPOCH:
                os.kill(victim.pid, signal.SIGKILL)
                break
        time.sleep(0.002)
    victim.communicate(timeout=60)
    assert victim.returncode == -signal.SIGKILL, f"the run ended (rc {victim.returncode}) before it could be killed"
    assert seen < EPOCHS * STEPS_PER_EPOCH

    # the kill left a partial temporary file, never a partial checkpoint: the final path loads, mid-epoch
    assert partial_saves(ck), "the kill did not land during a save"
    saved = safe_torch_load(ck)
    assert saved["global_step"] in (seen, seen + 1)
    assert 0 < saved["step"] < STEPS_PER_EPOCH and saved["epoch"] == (saved["global_step"] // STEPS_PER_EPOCH)

    err = finish(launch(tmp_path, manifest, ck, tmp_path / "out_run", "resume"), "resumed run")
    assert (f"resuming from {ck}: epoch {saved['epoch'] + 1}/{EPOCHS}, step {saved['step']} "
            f"(global step {saved['global_step']})") in err
    assert not partial_saves(ck), "partial saves of the killed run were left behind"
    finish(ref, "uninterrupted run")

    a, b = (json.loads((tmp_path / d / "history.json").read_text()) for d in ("out_ref", "out_run"))
    assert a == b and len(a["loss"]) == EPOCHS
    assert json.loads((tmp_path / "out_ref" / "metrics.json").read_text()) == \
        json.loads((tmp_path / "out_run" / "metrics.json").read_text())
    wa, wb = (safe_torch_load(tmp_path / d / "weights.pt") for d in ("out_ref", "out_run"))
    assert wa.keys() == wb.keys()
    assert {k.split(".")[0] for k in wa} >= {"clip", "image_head", "text_head", "segment_head", "segment_visual"}
    assert all(torch.equal(wa[k], wb[k]) for k in wa), [k for k in wa if not torch.equal(wa[k], wb[k])][:5]
    ra, rb = safe_torch_load(ck_ref), safe_torch_load(ck)      # final checkpoints: optimizer state too
    assert ra["global_step"] == rb["global_step"] == EPOCHS * STEPS_PER_EPOCH

    # validated every epoch (keep_best): the resumed run kept the best epoch seen before the kill, and both runs
    # end on the same best-on-validation weights, which the final checkpoints hold beside the best copy
    assert sum(a["is_best"].values()) >= 1 and ra["best_epoch"] == rb["best_epoch"] >= 1
    assert ra["best"].keys() == rb["best"].keys() and all(torch.equal(ra["best"][k], rb["best"][k]) for k in ra["best"])
    metrics = json.loads((tmp_path / "out_run" / "metrics.json").read_text())
    rsum = sum(metrics[f"{d}_R@{k}"] for d in ("i2t", "t2i") for k in (1, 5, 10))
    assert rsum == pytest.approx(max(a["val_rsum"].values())) == pytest.approx(ra["best_rsum"])
    assert all(torch.equal(rb["model"][k], v) for k, v in rb["best"].items())
    sa, sb = ra["optimizer"]["state"], rb["optimizer"]["state"]
    assert sa.keys() == sb.keys() and all(torch.equal(sa[i][k], sb[i][k]) for i in sa for k in sa[i])


def test_corrupt_checkpoint_is_an_error_naming_the_file(tmp_path):
    from urbancross.core import get_config
    from urbancross.data import make_manifest
    from urbancross.distributed import load_checkpoint, save_checkpoint
    from urbancross.towers import build_model
    from urbancross.train import make_items, train
    cfg = get_config("smoke", device="cpu", model_name="UC-TinyViT", pretrained="", image_size=32, context_length=16,
                     epochs=1, batch_size=3, trainable="heads", threads=1, progress="off")
    model = build_model(cfg)
    rows = []
    for i in range(4):
        Image.fromarray(np.full((32, 32, 3), 40 * i, np.uint8)).save(tmp_path / f"t{i}.png")
        rows.append(dict(image_id=f"t{i}", image_path=str(tmp_path / f"t{i}.png"), domain="toy", captions=[f"tile {i}"]))
    items = make_items(cfg, model, make_manifest(rows))
    ck = save_checkpoint(tmp_path / "run.pt", model, torch.optim.AdamW(model.parameters()), cfg, 0)
    ck.write_bytes(ck.read_bytes()[: ck.stat().st_size // 2])          # what a non-atomic writer could leave
    with pytest.raises(ValueError, match=r"run\.pt is corrupt"):
        load_checkpoint(ck, model)
    with pytest.raises(ValueError, match=r"run\.pt is corrupt"):
        train(cfg, model, items, checkpoint=ck, resume=True)
    ck.write_bytes(b"not a torch file at all")
    with pytest.raises(ValueError, match=r"run\.pt is corrupt"):
        train(cfg, model, items, checkpoint=ck, resume=True)
    with pytest.raises(ValueError, match="needs checkpoint"):
        train(cfg, model, items, resume=True)
