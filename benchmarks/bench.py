"""Measured speed and memory ratios of UrbanCross pieces against straightforward baselines.

Run from the repository root:

    .venv/bin/python benchmarks/bench.py            # full run (about 10 minutes on 2 CPU cores, peak ~9 GB RAM)
    .venv/bin/python benchmarks/bench.py --quick    # tiny sizes, fewer repeats (well under a minute): checks it runs
    .venv/bin/python benchmarks/bench.py --only bench_eval

Every number comes from this one run; nothing asserts on time. Benchmarks are plain functions
`bench_<name>(quick: bool) -> list[dict]` registered with `@register`; `main()` runs each registered
benchmark in order and prints its rows as a table. New benchmarks (e.g. `bench_caches` for the segment
and caption caches) are added the same way. benchmarks/README.md explains each number.
"""
from __future__ import annotations

import argparse
import copy
import datetime
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

BENCHMARKS: list[Callable[[bool], list[dict]]] = []


def register(fn: Callable[[bool], list[dict]]) -> Callable[[bool], list[dict]]:
    """Add a benchmark to the list `main()` runs."""
    BENCHMARKS.append(fn)
    return fn


# ---------------------------------------------------------------------------- helpers

def _median_ms(times: list[float]) -> float:
    return 1000 * statistics.median(times)


def _spread_ms(times: list[float]) -> str:
    """Inter-quartile range in ms, to show how noisy a median is."""
    q = statistics.quantiles(times, n=4) if len(times) >= 2 else [times[0]] * 3
    return f"{1000 * q[0]:.1f}-{1000 * q[2]:.1f}"


def format_table(rows: list[dict]) -> str:
    """A markdown table of `rows` (columns in first-seen order; floats to 4 significant digits)."""
    cols = list(dict.fromkeys(k for r in rows for k in r))
    def cell(v):
        if isinstance(v, float):
            return f"{v:.4g}" if abs(v) < 1e5 else f"{v:.3e}"
        return "" if v is None else str(v)
    body = [[cell(r.get(c)) for c in cols] for r in rows]
    width = [max(len(c), *(len(b[i]) for b in body)) for i, c in enumerate(cols)]
    line = lambda xs: "| " + " | ".join(x.ljust(w) for x, w in zip(xs, width)) + " |"
    return "\n".join([line(cols), "|" + "|".join("-" * (w + 2) for w in width) + "|", *map(line, body)])


def machine_line() -> str:
    import torch
    cpu = next((l.split(":", 1)[1].strip() for l in Path("/proc/cpuinfo").read_text().splitlines()
                if l.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else platform.processor()
    mem = next((int(l.split()[1]) // 1024 ** 2 for l in Path("/proc/meminfo").read_text().splitlines()
                if l.startswith("MemTotal")), 0) if Path("/proc/meminfo").exists() else 0
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    except OSError:
        sha = "unknown"
    return (f"{datetime.datetime.now().isoformat(timespec='minutes')} | {cpu}, {len(os.sched_getaffinity(0))} cores, "
            f"{mem} GiB RAM | torch {torch.__version__}, default threads {torch.get_num_threads()} | "
            f"load avg {os.getloadavg()[0]:.2f} | git {sha}")


# ---------------------------------------------------------------------------- a) training step

def _synthetic_batch(n: int, size: int, seed: int = 0):
    """`n` random RGB tiles (PIL) and `n` distinct captions of realistic length."""
    import numpy as np
    from PIL import Image
    rng = np.random.default_rng(seed)
    ims = [Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)) for _ in range(n)]
    land = ["forest", "farmland", "residential houses", "a lake", "a river", "industrial halls", "a road", "meadows"]
    texts = [f"an aerial view of {land[i % 8]} next to {land[(3 * i + 1) % 8]}, with {i} small buildings "
             f"and a {['narrow', 'wide'][i % 2]} road crossing the tile" for i in range(n)]
    return ims, texts


def _ours_step(cfg, model, total_steps: int):
    """One step of `urbancross.train.train` (its own `train_step`, with the optimizer and schedule it builds)."""
    import torch
    from urbancross.towers import param_groups, set_trainable
    from urbancross.train import train_step, warmup_cosine
    set_trainable(model, cfg.trainable)
    opt = torch.optim.AdamW(param_groups(model, cfg.lr, cfg.lr_backbone, cfg.weight_decay), foreach=True)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: warmup_cosine(s, total_steps, cfg.warmup_frac))
    scaler = torch.amp.GradScaler("cpu", enabled=False)

    def step(x, texts):
        torch.set_num_threads(cfg.threads)
        logs = train_step(cfg, model, model, None, opt, sched, scaler, {"images": x, "texts": list(texts)}, None,
                          list(texts), None, [len(x)], None, 0, 0.0)
        return logs["loss"]
    return step


def _baseline_step(model, default_threads: int):
    """A textbook CLIP fine-tuning step: tokenise, encode, symmetric cross-entropy, AdamW, torch defaults."""
    import torch
    import torch.nn.functional as F
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4)

    def step(x, texts):
        torch.set_num_threads(default_threads)          # no thread tuning: torch's own default
        img = model.encode_image(x)                     # the same tower adapter, plain loop around it
        txt = model.encode_text(texts)
        logits = model.logit_scale.exp() * img @ txt.t()
        labels = torch.arange(len(x))
        loss = (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels)) / 2
        opt.zero_grad(set_to_none=False)                # zero-fill every gradient buffer
        loss.backward()
        opt.step()
        return loss.item()                              # host sync every step
    return step


def _head_step(cfg, model, img_feats, txt_feats):
    """Frozen trunks: only the heads (`image_head`, `text_head`) and the temperature train."""
    import torch
    import torch.nn.functional as F
    from urbancross.losses import alignment_loss
    img_head, txt_head = copy.deepcopy(model.image_head), copy.deepcopy(model.text_head)
    logit_scale = torch.nn.Parameter(model.logit_scale.detach().clone())
    img_head.train(); txt_head.train()
    opt = torch.optim.AdamW([*img_head.parameters(), *txt_head.parameters(), logit_scale], lr=cfg.lr)

    def step(texts):
        torch.set_num_threads(cfg.threads)
        img = F.normalize(img_head(img_feats), dim=-1)
        txt = F.normalize(txt_head(txt_feats), dim=-1)
        loss = alignment_loss(cfg, img, txt, logit_scale, texts)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            logit_scale.clamp_(0, math.log(100))
        return loss.item()
    return step


@register
def bench_train_step(quick: bool) -> list[dict]:
    """ms per training step: ours vs a textbook loop (interleaved), and frozen-tower heads vs full fine-tuning."""
    import logging
    import torch
    from urbancross.core import get_config, seed_everything
    from urbancross.features import image_trunk_features, text_tower_features
    from urbancross.towers import build_model
    logging.getLogger("urbancross").setLevel(logging.WARNING)
    default_threads = torch.get_num_threads()
    cfg = get_config("smoke", device="cpu", batch_size=8 if quick else 32, image_size=64 if quick else 96, trainable="all")   # a full step, as the baseline
    warmup, n = (1, 2) if quick else (3, 15)
    seed_everything(cfg.seed)
    model = build_model(cfg)
    ims, texts = _synthetic_batch(cfg.batch_size, 128)
    x = torch.stack([model.eval_transform(im) for im in ims])

    models = {"ours": copy.deepcopy(model).train(), "baseline": copy.deepcopy(model).train()}
    steps = {"ours": _ours_step(cfg, models["ours"], total_steps=warmup + n),
             "baseline": _baseline_step(models["baseline"], default_threads)}
    times: dict[str, list[float]] = {k: [] for k in steps}
    for r in range(warmup + n):                       # interleaved, so drift and neighbours hit both alike
        for k, step in steps.items():
            t0 = time.perf_counter(); loss = step(x, texts); dt = time.perf_counter() - t0
            assert math.isfinite(loss), f"{k}: loss is {loss}"
            if r >= warmup:
                times[k].append(dt)

    torch.set_num_threads(cfg.threads)
    feat_times = []
    for _ in range(1 if quick else 3):                # the one-off cost the head step amortises
        t0 = time.perf_counter()
        img_feats = image_trunk_features(model, ims, views=1)[:, 0]
        txt_feats = text_tower_features(model, texts)
        feat_times.append(time.perf_counter() - t0)
    head = _head_step(cfg, model, img_feats, txt_feats)
    head_warm, head_n = (2, 20) if quick else (20, 300)
    head_times = []
    for r in range(head_warm + head_n):
        t0 = time.perf_counter(); head(texts); dt = time.perf_counter() - t0
        if r >= head_warm:
            head_times.append(dt)

    ours, base, hd = (_median_ms(times["ours"]), _median_ms(times["baseline"]), _median_ms(head_times))
    feat = _median_ms(feat_times)
    common = dict(batch=cfg.batch_size, image_size=cfg.image_size)
    return [
        dict(step="baseline: textbook CLIP loop", **common, n=len(times["baseline"]), ms_per_step=base,
             iqr_ms=_spread_ms(times["baseline"]), ratio="1 (reference)"),
        dict(step="ours: urbancross.train step", **common, n=len(times["ours"]), ms_per_step=ours,
             iqr_ms=_spread_ms(times["ours"]), ratio=f"baseline/ours = {base / ours:.3f}"),
        dict(step="frozen towers: heads-only step", **common, n=len(head_times), ms_per_step=hd,
             iqr_ms=_spread_ms(head_times), ratio=f"ours(full)/heads = {ours / hd:.1f}"),
        dict(step="frozen towers: feature extraction (once per batch)", **common, n=len(feat_times),
             ms_per_step=feat, iqr_ms=_spread_ms(feat_times), ratio=f"= {feat / ours:.2f} full steps"),
    ]


# ---------------------------------------------------------------------------- b) evaluation

EVAL_DIM = 256


def _embeddings(n_img: int, caps: int, seed: int = 0):
    """Random unit image embeddings and captions near their image (so recalls are not trivial)."""
    import torch
    import torch.nn.functional as F
    g = torch.Generator().manual_seed(seed)
    img = F.normalize(torch.randn(n_img, EVAL_DIM, generator=g), dim=1)
    owner = torch.arange(n_img).repeat_interleave(caps)
    txt = torch.randn(n_img * caps, EVAL_DIM, generator=g).mul_(0.35).add_(img[owner])
    return img, F.normalize(txt, dim=1), owner


def naive_retrieval_metrics(image_emb, text_emb, text_to_image, ks=(1, 5, 10)) -> dict:
    """Same protocol as `retrieval_metrics`, but the whole [images x captions] score matrix at once."""
    import torch
    import torch.nn.functional as F
    img, txt = F.normalize(image_emb.float(), dim=1), F.normalize(text_emb.float(), dim=1)
    scores = img @ txt.T
    own = scores[text_to_image, torch.arange(len(txt))]
    t2i = (scores > own[None, :]).sum(0)
    best = torch.full((len(img),), -torch.inf).scatter_reduce(0, text_to_image, own, "amax")
    i2t = (scores > best[:, None]).sum(1)
    out = {f"i2t_R@{k}": 100.0 * (i2t < k).float().mean().item() for k in ks}
    out |= {f"t2i_R@{k}": 100.0 * (t2i < k).float().mean().item() for k in ks}
    return out | {"mR": sum(out.values()) / len(out)}


def _proc_status_mb(key: str) -> float:
    """`VmRSS` / `VmHWM` (peak RSS) of this process in MB, from /proc/self/status."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _reset_peak_rss() -> bool:
    """Reset this process's VmHWM to its current RSS (Linux `clear_refs` 5); False if not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _eval_case(n_img: int, caps: int, variant: str, repeats: int, threads: int) -> dict:
    """Run in a fresh process: time the metrics call; peak RSS of the process and its rise during the call.

    `ru_maxrss` is not used: Linux carries the parent's high-water mark across fork+exec, so a child of
    a process holding a model reports the parent's size. /proc/self/status `VmHWM` belongs to this
    process image only, and is reset just before the call so the rise is the call's own.
    """
    import torch
    from urbancross.metrics import retrieval_metrics
    torch.set_num_threads(threads)
    img, txt, owner = _embeddings(n_img, caps)
    peak_before = _proc_status_mb("VmHWM")
    reset = _reset_peak_rss()
    rss_before = _proc_status_mb("VmRSS")
    fn = (lambda: retrieval_metrics(img, txt, owner, block_size=1024)) if variant == "blocked" else \
         (lambda: naive_retrieval_metrics(img, txt, owner))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter(); metrics = fn(); times.append(time.perf_counter() - t0)
    call_peak = _proc_status_mb("VmHWM")
    return dict(seconds=statistics.median(times), peak_rss_mb=max(call_peak, peak_before),
                rise_mb=call_peak - rss_before if reset else None, metrics=metrics)


def _mem_available_bytes() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable"):
            return int(line.split()[1]) * 1024
    return 16 * 1024 ** 3


def naive_predicted_bytes(n_img: int, n_txt: int) -> int:
    """Peak rise of `naive_retrieval_metrics`: 13 bytes per (image, caption) pair plus the inputs.

    4 for the float32 score matrix, 1 for the boolean comparison, 8 for the int64 copy that
    `bool_tensor.sum(dim)` makes; checked against the measured rise of the cases that run.
    """
    return 13 * n_img * n_txt + 4 * 4 * EVAL_DIM * (n_img + n_txt)


@register
def bench_eval(quick: bool) -> list[dict]:
    """Time and peak memory of blocked `retrieval_metrics` vs the full-matrix version, one process per case."""
    cases = [(1_000, 1)] if quick else [(10_000, 1), (25_000, 1), (50_000, 1), (100_000, 1), (10_000, 5)]
    limit = min(16 * 1000 ** 3, int(0.7 * _mem_available_bytes()))
    rows = []
    for n_img, caps in cases:
        res = {}
        for variant in ("blocked", "naive"):
            n_txt = n_img * caps
            row = dict(images=n_img, captions=n_txt, variant=variant)
            if variant == "naive" and naive_predicted_bytes(n_img, n_txt) > limit:
                row |= dict(seconds=None, peak_rss_mb=None, call_rise_mb=None,
                            note=f"skipped: predicted {naive_predicted_bytes(n_img, n_txt) / 1e9:.1f} GB "
                                 f"> limit {limit / 1e9:.1f} GB")
                rows.append(row); continue
            repeats = 3 if n_img * n_txt <= 10_000 ** 2 // 2 else 1
            cmd = [sys.executable, __file__, "--eval-case", json.dumps([n_img, caps, variant, repeats, 2])]
            out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
            if out.returncode != 0:
                row |= dict(note=f"failed (rc {out.returncode}): {out.stderr.strip().splitlines()[-1:]}")
                rows.append(row); continue
            r = json.loads(out.stdout.strip().splitlines()[-1])
            res[variant] = r
            row |= dict(seconds=r["seconds"], peak_rss_mb=r["peak_rss_mb"], call_rise_mb=r["rise_mb"],
                        mR=r["metrics"]["mR"])
            if variant == "naive":
                row["note"] = f"predicted rise {naive_predicted_bytes(n_img, n_txt) / 1e6:.0f} MB"
            rows.append(row)
        if len(res) == 2:
            b, nv = res["blocked"], res["naive"]
            diff = max(abs(b["metrics"][k] - nv["metrics"][k]) for k in b["metrics"])
            rise = nv["rise_mb"] / b["rise_mb"] if nv["rise_mb"] and b["rise_mb"] else None
            rows.append(dict(images=n_img, captions=n_img * caps, variant="ratio naive/blocked",
                             seconds=nv["seconds"] / b["seconds"], peak_rss_mb=nv["peak_rss_mb"] / b["peak_rss_mb"],
                             call_rise_mb=rise, note=f"max abs metric difference {diff:.2g} points"))
    return rows


# ---------------------------------------------------------------------------- caches

def _cache_row(cache: str, backend: str, images: int, first: tuple, rerun: tuple, hits: str, misses: str) -> dict:
    """One row: seconds and hit/miss counts of a cold run (`first`) and a warm rerun, each (seconds, stats)."""
    (t1, s1), (t2, s2) = first, rerun
    return dict(cache=cache, backend=backend, images=images, first_s=t1, rerun_s=t2,
                first_misses=s1[misses], rerun_hits=s2[hits], rerun_misses=s2[misses],
                rerun_hit_rate=s2[hits] / max(1, s2[hits] + s2[misses]), speedup=t1 / t2 if t2 else None)


def _timed(fn: Callable[[], dict]) -> tuple[float, dict]:
    t0 = time.perf_counter()
    stats = fn()
    return time.perf_counter() - t0, stats


@register
def bench_caches(quick: bool) -> list[dict]:
    """Segment and caption caches: cold first run vs warm rerun on the same images (fresh cache folder)."""
    import tempfile
    with tempfile.TemporaryDirectory(prefix="bench_caches_") as tmp:    # removed after, pass or fail
        return _bench_caches(quick, Path(tmp))


def _bench_caches(quick: bool, tmp: Path) -> list[dict]:
    from urbancross.data import read_manifest
    from urbancross.embedded import ensure_embedded
    from urbancross.refine import CaptionCache, make_captioner, refine_manifest, tiny_instructblip
    from urbancross.segments import (SamParams, SamSegmenter, SegmentCache, SegmentConfig, build_tiny_sam,
                                     make_segmenter, segment_manifest)
    n = 4 if quick else 200                                        # images per domain
    df = read_manifest(ensure_embedded(images_per_domain=n, image_size=128, seed=0))
    small = df.groupby("domain").head(1 if quick else 8).reset_index(drop=True)
    rows = []
    seg_cfg = SegmentConfig(num_stored=10, crop_size=64)
    segmenters = [("superpixel", df, make_segmenter("superpixel")),
                  ("SAM (tiny, random weights)", small,
                   SamSegmenter(build_tiny_sam(), SamParams(model_type="tiny", device="cpu", points_per_side=8)))]
    for name, frame, seg in segmenters:
        cache = SegmentCache(tmp / "segments")
        runs = [_timed(lambda: segment_manifest(frame, seg, cache, 10, seg_cfg)[1]) for _ in range(2)]
        rows.append(_cache_row("segments (.npz per image)", name, len(frame), *runs, "hits", "misses"))
    model_dir = tiny_instructblip(tmp / "tiny_instructblip")
    captioners = [("embedded captions", df, make_captioner("embedded")),
                  ("InstructBLIP (tiny, random weights)", small, make_captioner("instructblip", model_dir, device="cpu"))]
    for name, frame, cap in captioners:
        path = tmp / f"captions_{len(rows)}.jsonl"
        runs = [_timed(lambda: refine_manifest(frame, cap, CaptionCache(path))[1]) for _ in range(2)]
        rows.append(_cache_row("captions (JSONL, describe+refine)", name, len(frame), *runs, "cache_hits", "cache_misses"))
    return rows


# ---------------------------------------------------------------------------- main

def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="tiny sizes and fewer repeats: checks that every benchmark runs")
    p.add_argument("--only", nargs="*", default=None, help="names of benchmarks to run (default: all)")
    p.add_argument("--eval-case", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.eval_case:                                   # child process of bench_eval
        print(json.dumps(_eval_case(*json.loads(a.eval_case))))
        return
    print(f"# UrbanCross benchmarks ({'quick' if a.quick else 'full'})\n{machine_line()}\n")
    for bench in BENCHMARKS:
        if a.only and bench.__name__ not in a.only:
            continue
        t0 = time.perf_counter()
        rows = bench(a.quick)
        print(f"## {bench.__name__}: {bench.__doc__.strip()}  ({time.perf_counter() - t0:.0f} s)\n")
        print(format_table(rows), "\n", flush=True)


if __name__ == "__main__":
    main()
