"""The GPU check (`make gpu-check`): what the paper profile costs on one GPU, with nothing from the network.

Four figures, each from the project's own code with random-init weights (no download), written to one JSON:

1. **train**: the paper profile's model (open_clip ViT-L-14 config, 224 px, separate segment tower, 5 segment
   crops per image) trained with `urbancross.train.train_step` under bf16 autocast, gradient checkpointing on
   and off, batch 40 and 100: training samples/s (images a second; each image brings 5 crops and a caption)
   and peak GPU memory (`torch.cuda.max_memory_allocated`). A configuration that does not fit is recorded
   as out of memory.
2. **sam**: segment-anything vit_b (random init, `urbancross.segments.SamSegmenter`, 32 x 32 points) on 1024 px
   images: images/s of the automatic mask generator (random weights keep few masks; the cost is the encoder
   and the point batches, which do not depend on the weights).
3. **metrics**: the one-pass `urbancross.metrics.retrieval_ranks` at 50k images x 250k captions (768-d) on the
   GPU, against one bare blockwise matrix product of the same size.
4. **loader**: the training loader (`benchmarks/bench_loader.py`'s release-zip fixture, `train._loader`,
   8 workers) feeding `train_step` (checkpointing on, batch 40): the share of the wall time the step waits
   for the next batch (the GPU idle share).

Each part has a time budget and records its error instead of stopping the run, so the JSON always comes
out; the whole check is meant to take under 8 minutes on one H100. `--device cpu --tiny` runs every part at
tiny sizes on a CPU (the tests do this). Run from the repository root:

    make gpu-check                                         # = .venv/bin/python benchmarks/gpu_check.py
    .venv/bin/python benchmarks/gpu_check.py --out results/gpu_check.json --only train metrics
    .venv/bin/python benchmarks/gpu_check.py --device cpu --tiny --out /tmp/gpu_check.json
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import sys
import tempfile
import time
import traceback
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

SIZES = {   # full: the paper's sizes on one GPU; tiny: the same code path on a CPU in seconds
    "full": dict(model=dict(model_name="ViT-L-14", image_size=224, context_length=77, segment_size=224),
                 batches=[40, 100], warmup=2, steps=5, sam_type="vit_b", sam_size=1024, sam_points=32, sam_images=3,
                 images=50_000, captions_per_image=5, dim=768, block=4096, workers=8, loader_images=600, loader_tile=256,
                 loader_batch=40, loader_steps=12),
    "tiny": dict(model=dict(model_name="UC-TinyViT", image_size=32, context_length=16, segment_size=32),
                 batches=[4, 8], warmup=1, steps=2, sam_type="tiny", sam_size=64, sam_points=4, sam_images=2,
                 images=500, captions_per_image=5, dim=64, block=128, workers=2, loader_images=60, loader_tile=64,
                 loader_batch=4, loader_steps=4),
}
NUM_SEG = 5


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_gib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2 ** 30 if device.type == "cuda" else None


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def model_config(size: dict, device: str, grad_checkpointing: bool):
    """The paper profile, random init, on `device`."""
    from urbancross.core import get_config
    return get_config("paper", pretrained="", device=device, amp="bf16", grad_checkpointing=grad_checkpointing,
                      num_seg=NUM_SEG, **size["model"])


def make_stepper(cfg, model):
    """`train_step` of the training core with its optimizer and schedule; `step(batch)` returns the loss."""
    from urbancross.towers import param_groups, set_trainable
    from urbancross.train import train_step, warmup_cosine
    set_trainable(model, cfg.trainable, cfg.trainable_blocks)
    opt = torch.optim.AdamW(param_groups(model, cfg.lr, cfg.lr_backbone, cfg.weight_decay), foreach=True)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: warmup_cosine(s, 1000, cfg.warmup_frac))
    scaler = torch.amp.GradScaler(model.device.type, enabled=False)

    def step(batch: dict) -> float:
        logs = train_step(cfg, model, model, None, opt, sched, scaler, batch, None, batch["texts"], None,
                          [len(batch["images"])], None, 0, 0.0)
        return float(logs["loss"])
    return step


def random_batch(cfg, b: int) -> dict:
    """`b` random images, their `NUM_SEG` crops (all valid) and distinct captions, on the CPU as a loader gives them."""
    s, c = cfg.image_size, cfg.segment_size
    return {"images": torch.randn(b, 3, s, s), "segments": torch.randn(b, NUM_SEG, 3, c, c),
            "segment_valid": torch.ones(b, NUM_SEG, dtype=torch.bool),
            "texts": [f"a dense residential area with red roofs, tile {i}" for i in range(b)]}


def check_train(size: dict, device: torch.device) -> list[dict]:
    """Samples/s and peak memory of `train_step` for checkpointing off/on and each batch size."""
    from urbancross.towers import build_model
    rows = []
    for gc in (True, False):
        cfg = model_config(size, str(device), gc)
        model = build_model(cfg).to(device).train()
        params = sum(p.numel() for p in model.parameters())
        step = make_stepper(cfg, model)
        for b in size["batches"]:
            row = dict(grad_checkpointing=gc, batch=b, parameters=params)
            reset_peak(device)
            try:
                batch = random_batch(cfg, b)
                for _ in range(size["warmup"]):
                    step(batch)
                sync(device)
                t0 = time.perf_counter()
                for _ in range(size["steps"]):
                    loss = step(batch)
                sync(device)
                dt = (time.perf_counter() - t0) / size["steps"]
                row |= dict(seconds_per_step=dt, samples_per_s=b / dt, peak_gib=peak_gib(device), loss=loss)
            except torch.cuda.OutOfMemoryError as e:
                row |= dict(error="out of memory", peak_gib=peak_gib(device), detail=str(e).splitlines()[0])
            rows.append(row)
            print(f"train gc={gc} batch={b}: {row}", flush=True)
        del model, step
        reset_peak(device)
    return rows


def check_sam(size: dict, device: torch.device) -> dict:
    """Images/s of SAM's automatic mask generator, random weights, at `sam_size` px."""
    import numpy as np
    from urbancross.segments import SamParams, SamSegmenter, build_sam_model
    from urbancross.embedded import generate_tile
    seg = SamSegmenter(build_sam_model(size["sam_type"]), SamParams(model_type=size["sam_type"], device=str(device),
                                                                     points_per_side=size["sam_points"]))
    images = [np.asarray(generate_tile("finland", i, 0, size["sam_size"])[0].convert("RGB")) for i in range(size["sam_images"])]
    seg.segment(images[0])                                   # warm-up: kernels, allocator
    sync(device)
    t0 = time.perf_counter()
    masks = [len(seg.segment(im)) for im in images]
    sync(device)
    dt = time.perf_counter() - t0
    return dict(model=size["sam_type"], image_px=size["sam_size"], points_per_side=size["sam_points"],
                images=len(images), images_per_s=len(images) / dt, masks_kept=masks, peak_gib=peak_gib(device))


def check_metrics(size: dict, device: torch.device) -> dict:
    """One-pass ranks vs one bare blockwise matmul, same embeddings, on `device`."""
    import torch.nn.functional as F
    from urbancross.metrics import retrieval_ranks
    g = torch.Generator(device="cpu").manual_seed(0)
    n, k, d, block = size["images"], size["captions_per_image"], size["dim"], size["block"]
    img = F.normalize(torch.randn(n, d, generator=g), dim=1).to(device)
    t2i = torch.arange(n).repeat_interleave(k).to(device)
    txt = F.normalize(img[t2i] + 7 / d ** 0.5 * torch.randn(n * k, d, generator=g).to(device), dim=1)
    del g
    reset_peak(device)

    def bare():
        for s in range(0, n, block):
            img[s:s + block] @ txt.T
    timings = {}
    for name, fn in (("matmul", bare), ("one_pass", lambda: retrieval_ranks(img, txt, t2i, block_size=block))):
        fn(); sync(device)                                      # warm-up
        t0 = time.perf_counter(); out = fn(); sync(device)
        timings[name] = time.perf_counter() - t0
    i2t, _ = out
    return dict(images=n, captions=n * k, dim=d, block=block, matmul_s=timings["matmul"], one_pass_s=timings["one_pass"],
                one_pass_over_matmul=timings["one_pass"] / timings["matmul"], i2t_r1=float((i2t < 1).float().mean()),
                peak_gib=peak_gib(device))


def check_loader(size: dict, device: torch.device, workdir: Path) -> dict:
    """The share of a training run's wall time spent waiting for the loader (the GPU idle share)."""
    from bench_loader import PAPER, paper_config, write_fixture
    from urbancross.datasets import load_profile_data, profile_segments
    from urbancross.towers import build_model
    from urbancross.train import _loader, make_items
    data_root = write_fixture(workdir / "raw", size["loader_images"], size["loader_tile"])
    cfg = paper_config(data_root, **{k: v for k, v in PAPER.items() if k != "batch_size"})
    df = load_profile_data(cfg)
    store, _ = profile_segments(cfg, df, cache_root=workdir / "cache")
    mcfg = model_config(size, str(device), True)
    model = build_model(mcfg).to(device).train()
    step = make_stepper(mcfg, model)
    items = make_items(mcfg, model, df, store)
    b, n = size["loader_batch"], size["loader_steps"]
    order = torch.randperm(len(items), generator=torch.Generator().manual_seed(0)).tolist()
    keys = [[(0, i) for i in order[(s * b) % (len(order) - b):][:b]] for s in range(n + 1)]
    it = iter(_loader(items, keys, size["workers"], 0))
    step(next(it)); sync(device)                           # worker start-up and the first step are not counted
    wait = busy = 0.0
    for _ in range(n):
        t0 = time.perf_counter(); batch = next(it); t1 = time.perf_counter()
        step(batch); sync(device); t2 = time.perf_counter()
        wait, busy = wait + t1 - t0, busy + t2 - t1
    return dict(workers=size["workers"], batch=b, steps=n, fixture_images=len(df), image_px=mcfg.image_size,
                wait_s=wait, step_s=busy, gpu_idle_share=wait / (wait + busy), samples_per_s=n * b / (wait + busy))


def environment(device: torch.device) -> dict:
    out = dict(torch=torch.__version__, python=platform.python_version(), device=str(device), cpu_cores=os.cpu_count(),
               date=time.strftime("%Y-%m-%dT%H:%M:%S"))
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        out |= dict(gpu=p.name, gpu_memory_gib=p.total_memory / 2 ** 30, cuda=torch.version.cuda)
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    ap.add_argument("--tiny", action="store_true", help="tiny sizes (with --device cpu: the CI run)")
    ap.add_argument("--only", nargs="+", choices=["train", "sam", "metrics", "loader"], default=None)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "gpu_check.json"), help="the JSON of figures")
    a = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")            # nothing from the network
    device = torch.device(a.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("gpu_check: no CUDA device here; run `--device cpu --tiny` to check the code path on a CPU")
    size = SIZES["tiny" if a.tiny else "full"]
    report = dict(environment=environment(device), sizes="tiny" if a.tiny else "full", seconds={}, errors={})
    with tempfile.TemporaryDirectory(prefix="uc_gpu_check_") as tmp:
        parts = {"train": lambda: check_train(size, device), "sam": lambda: check_sam(size, device),
                 "metrics": lambda: check_metrics(size, device), "loader": lambda: check_loader(size, device, Path(tmp))}
        for name, fn in parts.items():
            if a.only and name not in a.only:
                continue
            t0 = time.perf_counter()
            try:
                report[name] = fn()
            except Exception as e:                          # one failed part must not lose the others' figures
                report["errors"][name] = f"{type(e).__name__}: {e}\n{traceback.format_exc(limit=3)}"
                print(f"{name} failed: {e}", file=sys.stderr, flush=True)
            report["seconds"][name] = time.perf_counter() - t0
            reset_peak(device)
    from urbancross.core import atomic_write
    with atomic_write(Path(a.out), "w") as f:
        json.dump(report, f, indent=1)
    print(json.dumps({k: v for k, v in report.items() if k != "environment"}, indent=1, default=str))
    print(f"gpu_check: figures in {a.out}; {len(report['errors'])} part(s) failed")
    return report


if __name__ == "__main__":
    sys.exit(1 if main()["errors"] else 0)
