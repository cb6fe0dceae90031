"""Training speed beside one competing CPU-bound process, with and without a passive OpenMP wait policy.

torch's CPU kernels run on OpenMP (GNU libgomp in the pip wheels). By default a libgomp thread that
reaches the end of a parallel region spins for a while before it sleeps; when another process holds
one of the cores, the spinning thread burns the time the descheduled thread needs, and a small-op
training loop slows down by far more than the share of the machine it lost (an epoch of a smoke
ablation went from 0.3 s to 13.5 s on 2 cores). `OMP_WAIT_POLICY=PASSIVE` makes the waiting threads
sleep at once; `urbancross` sets it on import unless the user set it (`nbs/18_api.ipynb`).

For each setting, a fresh child process (libgomp reads its environment once, when torch loads it)
trains a small model on cached-feature-sized inputs (the heads-only adaptation step of a smoke run:
two linear heads over 1,280-d image and 384-d text features, batch 32, a symmetric contrastive loss,
AdamW) for `--epochs` epochs of `--steps` steps and reports the median epoch time, first with the
machine as it is ("quiet") and then with one `python -c 'while True: pass'` process that this script
starts and stops ("loaded"). Rows: the wait policy and the thread count. Nothing asserts on time; on a
shared machine the numbers are as noisy as its load. Run from the repository root:

    .venv/bin/python benchmarks/bench_load.py            # ~2 minutes
    .venv/bin/python benchmarks/bench_load.py --quick    # a few seconds
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

WAIT_VARIABLES = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME")
SETTINGS = {                                   # name -> the OpenMP environment of the child
    "default (spin, libgomp)": {},
    "OMP_WAIT_POLICY=PASSIVE": {"OMP_WAIT_POLICY": "PASSIVE"},
    "GOMP_SPINCOUNT=10000": {"GOMP_SPINCOUNT": "10000"},
}


def train_epochs(threads: int, epochs: int, steps: int) -> list[float]:
    """Seconds per epoch of the heads-only contrastive step on random cached features (runs in the child)."""
    import torch
    import torch.nn.functional as F
    torch.manual_seed(0)
    torch.set_num_threads(threads)
    image_head, text_head = torch.nn.Linear(1280, 256), torch.nn.Linear(384, 256)
    params = [*image_head.parameters(), *text_head.parameters()]
    opt = torch.optim.AdamW(params, lr=1e-3)
    feats = [(torch.randn(32, 1280), torch.randn(32, 384)) for _ in range(steps)]
    times = []
    for _ in range(epochs + 1):                              # the first epoch is warm-up
        start = time.perf_counter()
        for image, text in feats:
            i, t = F.normalize(image_head(image), dim=1), F.normalize(text_head(text), dim=1)
            logits = i @ t.T / 0.07
            labels = torch.arange(len(i))
            loss = (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            loss.item()
        times.append(time.perf_counter() - start)
    return times[1:]


def run_child(env_extra: dict, threads: int, epochs: int, steps: int) -> float:
    """Median epoch seconds of `train_epochs` in a fresh process with the given OpenMP environment."""
    env = {k: v for k, v in os.environ.items() if k not in WAIT_VARIABLES}
    env.update(env_extra, OMP_NUM_THREADS=str(threads))
    out = subprocess.run([sys.executable, __file__, "--child", json.dumps([threads, epochs, steps])],
                         env=env, capture_output=True, text=True, check=True)
    return statistics.median(json.loads(out.stdout.strip().splitlines()[-1]))


def with_competitor(fn):
    """Call `fn()` while one CPU-bound busy-loop process runs beside it."""
    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.5)
        return fn()
    finally:
        hog.kill()
        hog.wait()


def measure(threads_list: list[int], epochs: int, steps: int) -> list[dict]:
    """Quiet then loaded median epoch seconds for every setting and thread count."""
    rows = []
    for name, env_extra in SETTINGS.items():
        for threads in threads_list:
            quiet = run_child(env_extra, threads, epochs, steps)
            loaded = with_competitor(lambda: run_child(env_extra, threads, epochs, steps))
            rows.append(dict(setting=name, threads=threads, quiet_s=quiet, loaded_s=loaded, ratio=loaded / quiet))
    base = {r["threads"]: r["quiet_s"] for r in rows if not SETTINGS[r["setting"]]}
    for r in rows:
        r["quiet_vs_default"] = r["quiet_s"] / base[r["threads"]]
    return rows


def format_table(rows: list[dict]) -> str:
    """A markdown table of the measured rows."""
    head = "| setting | threads | quiet s/epoch | loaded s/epoch | loaded / quiet | quiet / default quiet |"
    lines = [head, "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['setting']} | {r['threads']} | {r['quiet_s']:.3f} | {r['loaded_s']:.3f} | "
                     f"{r['ratio']:.2f} | {r['quiet_vs_default']:.2f} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny sizes: a few seconds")
    ap.add_argument("--threads", type=int, nargs="+", default=None, help="torch threads per child (default: 1 and all cores)")
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--steps", type=int, default=100, help="steps per epoch")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        print(json.dumps(train_epochs(*json.loads(a.child))))
        return
    epochs, steps = (1, 10) if a.quick else (a.epochs, a.steps)
    threads = a.threads or ([os.cpu_count() or 1] if a.quick else sorted({1, os.cpu_count() or 1}))
    load = os.getloadavg()[0]
    print(f"# bench_load: heads-only step, batch 32, {steps} steps/epoch, median of {epochs} epochs; "
          f"{os.cpu_count()} cores, load avg {load:.2f} at start")
    rows = measure(threads, epochs, steps)
    print(format_table(rows))
    print(f"load avg {os.getloadavg()[0]:.2f} at end")


if __name__ == "__main__":
    main()
