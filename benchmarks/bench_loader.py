"""Training data loading at the paper profile's sizes, from release-layout zips, against a plain ImageFolder loader.

Two parts, both on fixture data in the UrbanCross release layout (`urbancross.fixtures.write_release_fixture`:
`<Country>/images.zip`, the caption CSV, `image_segments.zip` with upstream's white-outside mask frames):

1. **loader**: samples/s of the project's real training loader, per DataLoader worker. The manifest comes from
   `urbancross.datasets.load_profile_data` (the zips unpacked once, the CSV read), the segments from
   `profile_segments` (read from the release `image_segments.zip` into the segment cache, served by a
   `SegmentStore`), the items from `urbancross.train.make_items` with the paper profile's transforms
   (`towers.make_transforms(224)`: random 90-degree rotation, flip, RandomResizedCrop, normalise; each of the
   `num_seg` = 5 segment crops at the eval transform) and the batches from the training loop's own
   `train._loader` (batch 40, keys `(epoch, row)`). The baseline is `torchvision.datasets.ImageFolder` +
   `RandomResizedCrop(224)` over the same unpacked images, same batch size and workers. `per worker` is
   samples/s divided by the workers; `8 workers` is 8 x the per-worker rate of the run with the most workers,
   what 8 free cores would give if loading scales linearly (an extrapolation: this machine has 2 cores).
2. **stage**: the segment + feature stage (`profile_segments` from the release zip, then `feature_bank` with a
   tiny random-init model, `num_seg_stored` crops of `segment_size` px) at growing image counts, each in a fresh
   process: wall seconds per image and peak resident memory (VmHWM). Flat columns mean time linear in the data
   and memory that does not follow it.

Fixture tiles are rendered for a pool of `POOL` tiles per domain and reused with a per-image change of a few
pixels (so every image hashes differently and misses every cache): rendering 20k tiles would take longer
than the stage itself. Nothing asserts on time. Run from the repository root:

    .venv/bin/python benchmarks/bench_loader.py                       # loader (600 images, 256 px), stage 1k/5k/20k
    .venv/bin/python benchmarks/bench_loader.py --only loader --workers 1 2
    .venv/bin/python benchmarks/bench_loader.py --only stage --sizes 1000 5000
    .venv/bin/python benchmarks/bench_loader.py --quick               # tiny sizes: under a minute
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import format_table  # noqa: E402  (the benchmarks' one table formatter; bench.py imports only the stdlib)

POOL = 16                                     # rendered tiles per domain; the rest are pixel-perturbed copies
PAPER = dict(image_size=224, num_seg=5, num_seg_stored=10, segment_size=224, batch_size=40)
STAGE_MODEL = dict(model_name="UC-TinyViT", pretrained="", image_size=32, context_length=16, views=1,
                   num_seg_stored=3, num_seg=2, segment_size=32)


def write_fixture(root: Path, images: int, tile: int, seed: int = 0) -> Path:
    """Release-layout zips of about `images` images (a third per country) under `root`, tiles from a pool."""
    import numpy as np
    from PIL import Image
    import urbancross.fixtures as fixtures
    from urbancross.embedded import generate_tile
    pool: dict = {}

    def pooled_tile(domain: str, i: int, seed: int, image_size: int):
        if (domain, i % POOL) not in pool:
            pool[domain, i % POOL] = generate_tile(domain, i % POOL, seed, image_size)
        im, *rest = pool[domain, i % POOL]
        arr = np.array(im.convert("RGB"))
        arr[0, :8] = np.frombuffer(int(i).to_bytes(24, "little"), np.uint8).reshape(8, 3)   # unique pixels per image
        return (Image.fromarray(arr), *rest)

    fixtures.generate_tile = pooled_tile          # write_release_fixture looks the renderer up in its module
    fixtures.write_release_fixture(root, images_per_domain=max(1, images // 3), image_size=tile, seed=seed,
                                   segment_share=1.0, captions_per_image=5, unlisted_per_domain=0)
    return root


def paper_config(data_root: Path, **overrides):
    """The paper profile on CPU over the fixture (segments from the release zips; superpixels for any uncovered image)."""
    from urbancross.core import get_config
    return get_config("paper", data_root=str(data_root), device="cpu", segmenter="superpixel", **overrides)


# ---------------------------------------------------------------------------- part 1: the training loader

def _rate(loader, limit: int) -> tuple[float, int]:
    """Samples/s after the first batch (worker start-up excluded), and the samples counted."""
    it, n = iter(loader), 0
    next(it)
    t0 = time.perf_counter()
    for batch in it:
        n += len(batch["images"] if isinstance(batch, dict) else batch[0])
        if n >= limit:
            break
    return n / (time.perf_counter() - t0), n


def bench_loader(workers: list[int], images: int, tile: int, samples: int, tmp: Path) -> list[dict]:
    """Samples/s of the project's loader and of an ImageFolder baseline for each worker count."""
    import torch
    from torchvision import datasets, transforms as T
    from urbancross.datasets import load_profile_data, profile_segments
    from urbancross.towers import make_transforms
    from urbancross.train import _loader, make_items
    torch.set_num_threads(1)
    data_root = write_fixture(tmp / "raw", images, tile)
    cfg = paper_config(data_root, **{k: v for k, v in PAPER.items() if k != "batch_size"})
    df = load_profile_data(cfg)
    store, stats = profile_segments(cfg, df, cache_root=tmp / "cache")
    mean, std = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)   # open_clip's
    train_tf, eval_tf = make_transforms(cfg.image_size, mean, std)
    items = make_items(cfg, SimpleNamespace(train_transform=train_tf, eval_transform=eval_tf), df, store)
    baseline = datasets.ImageFolder(str(data_root), T.Compose([
        T.RandomResizedCrop(cfg.image_size, antialias=True), T.ToTensor(), T.Normalize(mean, std)]))
    bs, rows = PAPER["batch_size"], []
    order = torch.randperm(len(items), generator=torch.Generator().manual_seed(0)).tolist()
    keys = [[(0, i) for i in order[s:s + bs]] for s in range(0, len(order) - bs + 1, bs)]
    for w in workers:
        ours, n = _rate(_loader(items, keys, w, cfg.seed), samples)
        plain, m = _rate(torch.utils.data.DataLoader(baseline, batch_size=bs, shuffle=True, num_workers=w,
                                                     generator=torch.Generator().manual_seed(0)), samples)
        per = ours / max(1, w)
        rows.append({"loader": "ours: release zips, image + 5 segment crops", "workers": w, "samples": n,
                     "samples/s": ours, "per worker": per, "8 workers (extrapolated)": 8 * per,
                     "ours / ImageFolder": ours / plain})
        rows.append({"loader": "baseline: ImageFolder + RandomResizedCrop", "workers": w, "samples": m,
                     "samples/s": plain, "per worker": plain / max(1, w), "8 workers (extrapolated)": 8 * plain / max(1, w),
                     "ours / ImageFolder": 1.0})
    print(f"loader fixture: {len(df)} images of {tile} px in release zips, {stats.get('from_release', 0)} with "
          f"release segments; batch {bs}, {cfg.num_seg} segment crops of {cfg.segment_size} px per image", flush=True)
    return rows


# ---------------------------------------------------------------------------- part 2: the segment + feature stage

def status_mb(field: str) -> float:
    """A memory figure of this process from /proc/self/status, in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def stage_case(images: int, tile: int) -> dict:
    """Fixture, then segments + feature bank in this process; seconds and memory (run in a child)."""
    import torch
    from urbancross.datasets import load_profile_data, profile_segments
    from urbancross.features import feature_bank
    from urbancross.towers import build_model
    torch.set_num_threads(1)
    tmp = Path(tempfile.mkdtemp(prefix=f"uc_bench_stage_{images}_"))
    try:
        t0 = time.perf_counter()
        data_root = write_fixture(tmp / "raw", images, tile)
        cfg = paper_config(data_root, **STAGE_MODEL)
        df = load_profile_data(cfg)
        fixture_s = time.perf_counter() - t0
        model = build_model(cfg).eval()
        before_mb = status_mb("VmRSS")
        t0 = time.perf_counter()
        store, stats = profile_segments(cfg, df, cache_root=tmp / "cache")
        seg_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        bank = feature_bank(cfg, model, df, tmp / "cache" / "features", store)
        feat_s = time.perf_counter() - t0
        assert len(bank) == len(df), (len(bank), len(df))
        return dict(images=len(df), fixture_s=fixture_s, segments_s=seg_s, features_s=feat_s,
                    from_release=stats.get("from_release", 0), before_mb=before_mb, peak_mb=status_mb("VmHWM"))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def bench_stage(sizes: list[int], tile: int) -> list[dict]:
    """One fresh process per size: seconds per image and peak memory of the segment + feature stage."""
    rows = []
    for n in sizes:
        out = subprocess.run([sys.executable, __file__, "--stage-case", json.dumps([n, tile])],
                             capture_output=True, text=True, cwd=ROOT)
        line = next((l for l in out.stdout.splitlines() if l.startswith("RESULT ")), None)
        if out.returncode or line is None:
            sys.exit(f"stage case {n} images failed (exit {out.returncode}):\n{out.stderr[-3000:]}")
        r = json.loads(line[len("RESULT "):])
        total = r["segments_s"] + r["features_s"]
        rows.append({"images": r["images"], "from release zip": r["from_release"], "segments s": r["segments_s"],
                     "features s": r["features_s"], "ms per image": 1000 * total / r["images"],
                     "peak RSS MB": r["peak_mb"], "rise over start MB": r["peak_mb"] - r["before_mb"],
                     "fixture s": r["fixture_s"]})
        print(f"stage {n}: {total:.0f} s, peak {r['peak_mb']:.0f} MB", file=sys.stderr, flush=True)
    return rows


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", choices=["loader", "stage"], default=None)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="DataLoader workers of the loader part")
    ap.add_argument("--images", type=int, default=600, help="fixture images of the loader part")
    ap.add_argument("--tile", type=int, default=256, help="fixture tile side in px (loader part)")
    ap.add_argument("--samples", type=int, default=400, help="samples timed per loader run")
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 5000, 20000], help="image counts of the stage part")
    ap.add_argument("--stage-tile", type=int, default=64, help="fixture tile side in px (stage part)")
    ap.add_argument("--quick", action="store_true", help="tiny sizes: checks it runs")
    ap.add_argument("--stage-case", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.stage_case:
        print("RESULT " + json.dumps(stage_case(*json.loads(a.stage_case))), flush=True)
        return
    if a.quick:
        a.workers, a.images, a.tile, a.samples, a.sizes = [1], 90, 96, 80, [30]
    print(f"# bench_loader ({'quick' if a.quick else 'full'}): {os.cpu_count()} cores, load avg {os.getloadavg()[0]:.2f}\n")
    if a.only in (None, "loader"):
        with tempfile.TemporaryDirectory(prefix="uc_bench_loader_") as tmp:
            t0 = time.perf_counter()
            rows = bench_loader(a.workers, a.images, a.tile, a.samples, Path(tmp))
            print(f"\n## loader: samples/s of the training loader vs ImageFolder  ({time.perf_counter() - t0:.0f} s)\n")
            print(format_table(rows), "\n", flush=True)
    if a.only in (None, "stage"):
        t0 = time.perf_counter()
        rows = bench_stage(a.sizes, a.stage_tile)
        print(f"## stage: segment + feature stage by image count  ({time.perf_counter() - t0:.0f} s)\n")
        print(format_table(rows), "\n", flush=True)
    print(f"load avg at the end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
