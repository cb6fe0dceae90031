"""Peak host memory of the segment + feature stage as the dataset grows.

Run from the repository root:

    .venv/bin/python benchmarks/bench_memory.py                       # 100, 1000, 10000 images
    .venv/bin/python benchmarks/bench_memory.py --sizes 100 1000 3000 # smaller sweep
    .venv/bin/python benchmarks/bench_memory.py --sizes 100 1000 --variants store dict
    .venv/bin/python benchmarks/bench_memory.py --sizes 100 1000 --variants store dict --num-seg-stored 10 --segment-size 224
    .venv/bin/python benchmarks/bench_memory.py --quick               # 20 and 40 images: under a minute

For each size, a fresh subprocess (so peaks never mix) writes that many 128 px PNG tiles (random
coloured blobs, made with numpy) and their manifest (`urbancross.data.make_manifest`) into a temporary
folder, builds a tiny native open_clip model from config, and then runs the stage under test:

1. `segment_manifest` with the superpixel segmenter into a fresh `SegmentCache`;
2. `SegmentStore` over the returned table (variant `store`), or the old in-memory dict
   `{image_id: read_segments(path)}` that `datasets.profile_segments` built before it returned a
   `SegmentStore` (variant `dict`);
3. `features.feature_bank` with those segments into a fresh feature cache.

It reports the process's peak RSS (`resource.getrusage(RUSAGE_SELF).ru_maxrss`; the parent process
imports nothing heavy, so the high-water mark a child inherits across fork+exec is ~20 MB and below
every child's own), the stage's own rise (`/proc/self/status` VmHWM, reset with `clear_refs` just
before the stage, minus VmRSS at that moment), the tracemalloc peak of Python/numpy allocations in
the stage (torch's allocator is not traced), and the seconds per step. For comparison it prints the
bytes the old dict of all crops holds, `n * num_seg_stored * S * S * 3`, at this run's settings and at
the paper's (10 crops of 224 px). Nothing asserts on time or memory; benchmarks/README.md explains it.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

CONFIG = dict(model_name="UC-TinyViT", pretrained="", image_size=32, context_length=16, views=1,
              num_seg_stored=3, num_seg=2, segment_size=32, device="cpu")
PAPER_CROPS, PAPER_SIZE = 10, 224            # the paper's stored segments per image and crop size
WORDS = ["red roofs", "a lake", "farmland", "a forest edge", "a car park", "a river bend", "meadows", "a railway"]


# ---------------------------------------------------------------------------- measuring

def status_mb(key: str) -> float:
    """`VmRSS` / `VmHWM` of this process in MB (/proc/self/status), else ru_maxrss."""
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def reset_peak() -> bool:
    """Reset VmHWM to the current RSS (Linux `clear_refs` 5) and tracemalloc's peak; False if VmHWM cannot be reset."""
    if tracemalloc.is_tracing():
        tracemalloc.reset_peak()
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def measured(step, fn):
    """Run `fn()`; (its result, dict of seconds, RSS rise and tracemalloc peak of `step`)."""
    ok = reset_peak()
    rss0, t0 = status_mb("VmRSS"), time.perf_counter()
    out = fn()
    sec = time.perf_counter() - t0
    rise = status_mb("VmHWM") - rss0 if ok else None
    traced = tracemalloc.get_traced_memory()[1] / 2 ** 20 if tracemalloc.is_tracing() else None
    return out, {f"{step}_s": sec, f"{step}_rise_mb": rise, f"{step}_traced_mb": traced}


# ---------------------------------------------------------------------------- data

def write_tiles(folder: Path, n: int, size: int = 128, seed: int = 0):
    """`n` PNG tiles of random coloured blobs on a field, and their manifest (1-5 captions each)."""
    import numpy as np
    from PIL import Image
    from urbancross.data import make_manifest
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    rows = []
    for i in range(n):
        tile = np.empty((size, size, 3), np.float32)
        tile[:] = rng.integers(40, 200, 3)
        for _ in range(rng.integers(3, 8)):                    # rectangles ("roofs", "fields") and discs ("trees")
            y, x, h, w = rng.integers(0, size, 2).tolist() + rng.integers(8, size // 3, 2).tolist()
            colour = rng.integers(0, 256, 3)
            if rng.random() < 0.5:
                tile[y:y + h, x:x + w] = colour
            else:
                tile[(yy - y) ** 2 + (xx - x) ** 2 < (h // 2) ** 2] = colour
        tile += rng.normal(0, 6, tile.shape)
        path = folder / f"tile_{i:06d}.png"
        Image.fromarray(tile.clip(0, 255).astype(np.uint8)).save(path, compress_level=1)
        caps = [f"{WORDS[(i + j) % len(WORDS)]} next to {WORDS[(3 * i + j + 1) % len(WORDS)]}, tile {i}"
                for j in range(int(rng.integers(1, 6)))]
        rows.append(dict(image_id=f"tile_{i:06d}", image_path=str(path), captions=caps,
                         domain=("finland", "germany", "spain")[i % 3], split=("train", "val", "test")[i % 3],
                         lat=float(rng.uniform(36, 70)), lon=float(rng.uniform(-9, 30)), tags=""))
    return make_manifest(rows)


# ---------------------------------------------------------------------------- one case, in a child process

def run_case(n: int, variant: str, threads: int, trace: bool, config: dict = CONFIG) -> dict:
    """Segments + feature bank for `n` fresh tiles in this process; the measurements as a dict."""
    import torch
    from urbancross.core import get_config
    from urbancross.features import feature_bank
    from urbancross.segments import (SegmentCache, SegmentStore, SuperpixelSegmenter, read_segments,
                                     segment_config, segment_manifest)
    from urbancross.towers import build_model
    torch.set_num_threads(threads)
    tmp = Path(tempfile.mkdtemp(prefix=f"uc_bench_memory_{n}_"))
    t0 = time.perf_counter()
    df = write_tiles(tmp / "images", n)
    make_s = time.perf_counter() - t0
    cfg = get_config("smoke", **config)
    model = build_model(cfg).eval()
    baseline_mb = status_mb("VmRSS")
    if trace:
        tracemalloc.start()
    (table, stats), seg = measured("segments", lambda: segment_manifest(
        df, SuperpixelSegmenter(), SegmentCache(tmp / "segments"), cfg.num_seg_stored, segment_config(cfg)))

    def features():
        if variant == "store":
            segments = SegmentStore(table, cfg.num_seg_stored)
        else:                                                   # the old way: every crop in one dict
            segments = {i: read_segments(p, cfg.num_seg_stored) for i, p in zip(table.image_id, table.segment_path)}
        return feature_bank(cfg, model, df, tmp / "features", segments)
    bank, feat = measured("features", features)
    tracemalloc.stop()
    # the bank keeps the `num_seg` segments a step uses, of the `num_seg_stored` cached per image
    assert len(bank) == n and tuple(bank.segments.shape[:2]) == (n, cfg.num_seg) and stats["misses"] == n
    crop_bytes = cfg.num_seg_stored * cfg.segment_size ** 2 * 3
    return dict(images=n, variant=variant, peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                peak_hwm_mb=status_mb("VmHWM"), baseline_mb=baseline_mb, make_tiles_s=make_s, **seg, **feat,
                old_dict_mb=n * crop_bytes / 2 ** 20, old_dict_paper_mb=n * PAPER_CROPS * PAPER_SIZE ** 2 * 3 / 2 ** 20,
                bank_mb=sum(t.numel() * t.element_size() for t in (bank.images, bank.text_features, bank.segments)) / 2 ** 20,
                tmp=str(tmp))


# ---------------------------------------------------------------------------- the sweep

from bench import format_table  # noqa: E402  (the benchmarks' one table formatter; bench.py imports only the stdlib)


def machine_line() -> str:
    """bench.py's machine line without torch (this parent process must stay small)."""
    cpu = next((l.split(":", 1)[1].strip() for l in Path("/proc/cpuinfo").read_text().splitlines()
                if l.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else platform.processor()
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    except OSError:
        sha = "unknown"
    return (f"{datetime.datetime.now().isoformat(timespec='minutes')} | {cpu}, {len(os.sched_getaffinity(0))} cores | "
            f"load avg {os.getloadavg()[0]:.2f} | git {sha}")


def _max(*xs):
    xs = [x for x in xs if x is not None]
    return max(xs) if xs else None


def summary_rows(results: list[dict]) -> list[dict]:
    """The printed table: peaks, growth beyond the smallest run of the same variant, and the old dict's size."""
    rows = []
    for r in results:
        first = min((q for q in results if q["variant"] == r["variant"]), key=lambda q: q["images"])
        extra_k = (r["images"] - first["images"]) / 1000
        growth = r["peak_rss_mb"] / first["peak_rss_mb"]
        rows.append({
            "images": r["images"], "segments": r["variant"], "peak RSS MB": r["peak_rss_mb"],
            "stage rise MB": _max(r["segments_rise_mb"], r["features_rise_mb"]),
            "traced peak MB": _max(r["segments_traced_mb"], r["features_traced_mb"]),
            "MB per 1k beyond smallest": (r["peak_rss_mb"] - first["peak_rss_mb"]) / extra_k if extra_k else None,
            "seconds (seg + feat)": f"{r['segments_s'] + r['features_s']:.0f} ({r['segments_s']:.0f} + {r['features_s']:.0f})",
            "peak x / data x": f"{growth:.3g} / {r['images'] / first['images']:.3g} = {growth / (r['images'] / first['images']):.3g}",
            "old dict MB (this config)": r["old_dict_mb"], "old dict MB (paper 10x224px)": r["old_dict_paper_mb"],
        })
    return rows


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[100, 1000, 10000])
    ap.add_argument("--quick", action="store_true", help="tiny sizes (20 and 40 images), no tracemalloc: under a minute")
    ap.add_argument("--variants", nargs="+", default=["store"], choices=["store", "dict"],
                    help="store: SegmentStore (reads on access); dict: the old dict of every crop")
    ap.add_argument("--threads", type=int, default=1, help="torch threads in each child (the machine is shared)")
    ap.add_argument("--no-tracemalloc", action="store_true", help="skip tracemalloc (it slows Python allocations)")
    ap.add_argument("--num-seg-stored", type=int, default=CONFIG["num_seg_stored"], help="segments stored per image")
    ap.add_argument("--segment-size", type=int, default=CONFIG["segment_size"], help="S of the S×S crops (paper: 224)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary folders")
    ap.add_argument("--case", help=argparse.SUPPRESS)           # internal: 'n,variant' run in this process
    args = ap.parse_args(argv)
    if args.quick:
        args.sizes, args.no_tracemalloc = [20, 40], True
    config = {**CONFIG, "num_seg_stored": args.num_seg_stored, "segment_size": args.segment_size}
    if args.case:
        n, variant = args.case.split(",")
        print("RESULT " + json.dumps(run_case(int(n), variant, args.threads, not args.no_tracemalloc, config)), flush=True)
        return
    print(f"# bench_memory: segment + feature stage, peak host memory by dataset size\n{machine_line()}\n"
          f"config: smoke, {config}; superpixel segmenter; one fresh process per case\n", flush=True)
    results = []
    for variant in args.variants:
        for n in args.sizes:
            cmd = [sys.executable, __file__, "--case", f"{n},{variant}", "--threads", str(args.threads),
                   "--num-seg-stored", str(args.num_seg_stored), "--segment-size", str(args.segment_size)]
            cmd += ["--no-tracemalloc"] if args.no_tracemalloc else []
            t0 = time.perf_counter()
            proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
            line = next((l for l in proc.stdout.splitlines() if l.startswith("RESULT ")), None)
            if proc.returncode or line is None:
                sys.exit(f"case {n} images ({variant}) failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
            r = json.loads(line[len("RESULT "):])
            if not args.keep:
                shutil.rmtree(r["tmp"], ignore_errors=True)
            results.append(r)
            print(f"{n} images ({variant}): peak RSS {r['peak_rss_mb']:.0f} MB, {time.perf_counter() - t0:.0f} s "
                  f"wall (tiles {r['make_tiles_s']:.0f} s, segments {r['segments_s']:.0f} s, features {r['features_s']:.0f} s)",
                  file=sys.stderr, flush=True)
    print(format_table(summary_rows(results)))
    print("\nraw:", json.dumps([{k: v for k, v in r.items() if k != "tmp"} for r in results]))


if __name__ == "__main__":
    main()
