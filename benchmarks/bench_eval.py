"""One-pass retrieval ranks vs the previous two-pass version, against one bare matrix product.

`urbancross.metrics.retrieval_ranks` counts both directions (i2t, t2i) from one pass over the score
matrix, each score computed once. The version it replaced scored every block twice, once with images
and once with captions as queries. This script times, in the same run and on the same data:

1. `matmul`: one bare product of the same size done blockwise, `img_block @ txt.T` for every block of
   `--block` images, result discarded: the floor any exact blockwise ranking has to pay;
2. `matmul, reused buffer`: the same, written with `torch.mm(..., out=buffer)` into one preallocated
   block (what the one pass does; a fresh 200 MB block per call costs page faults);
3. `one pass (new)`: `retrieval_ranks(img, txt, text_to_image, block_size=--block)`, public call
   (input checks, normalisation, sort included);
4. `two pass (old)`: a verbatim copy of the previous `retrieval_ranks` (checks, normalisation,
   `_i2t_ranks`, `_t2i_ranks`).

Rounds are interleaved (one call of each per round) and each row reports the median over `--repeats`
rounds. The ranks of (3) and (4) are compared for equality. Nothing asserts on time. Run from the
repository root:

    .venv/bin/python benchmarks/bench_eval.py                     # 10k images x 50k captions, d 512
    .venv/bin/python benchmarks/bench_eval.py --images 2000       # smaller
    .venv/bin/python benchmarks/bench_eval.py --quick             # 500 images: seconds
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from urbancross.metrics import check_embeddings, check_text_to_image, retrieval_ranks, score_blocks  # noqa: E402


# ---- the previous implementation, copied verbatim from nbs/05_metrics.ipynb before the one-pass change ----
def _i2t_ranks(image_emb, text_emb, text_to_image, block_size):
    """Per image: captions scoring strictly above its best own caption, blockwise over images."""
    ranks = []
    for start, scores in score_blocks(image_emb, text_emb, block_size):
        own = ((text_to_image >= start) & (text_to_image < start + len(scores))).nonzero().flatten()
        rows = text_to_image[own] - start
        best = scores.new_full((len(scores),), -torch.inf).scatter_reduce(0, rows, scores[rows, own], "amax")
        ranks.append((scores > best[:, None]).sum(1))
    return torch.cat(ranks)


def _t2i_ranks(image_emb, text_emb, text_to_image, block_size):
    """Per caption: images scoring strictly above its own image, blockwise over captions."""
    ranks = []
    for start, scores in score_blocks(text_emb, image_emb, block_size):
        own = scores.gather(1, text_to_image[start:start + len(scores), None])
        ranks.append((scores > own).sum(1))
    return torch.cat(ranks)


def two_pass_ranks(image_emb, text_emb, text_to_image, block_size=1024):
    """The previous `retrieval_ranks`: every score block computed twice, once per direction."""
    check_embeddings(image_emb, text_emb)
    check_text_to_image(text_to_image, len(image_emb), len(text_emb))
    img = F.normalize(image_emb.detach().float(), dim=1)
    txt = F.normalize(text_emb.detach().float(), dim=1).to(img.device)
    t2i = text_to_image.long().to(img.device)
    with torch.no_grad():
        return _i2t_ranks(img, txt, t2i, block_size), _t2i_ranks(img, txt, t2i, block_size)
# ---- end of the copy ----


def bare_matmul(img: torch.Tensor, txt: torch.Tensor, block_size: int) -> None:
    """`img_block @ txt.T` for every block of images, results discarded."""
    for start in range(0, len(img), block_size):
        img[start:start + block_size] @ txt.T


def bare_matmul_buffer(img: torch.Tensor, txt: torch.Tensor, block_size: int) -> None:
    """The same products written into one reused block buffer."""
    buffer = img.new_empty(min(block_size, len(img)) * len(txt))
    for start in range(0, len(img), block_size):
        block = img[start:start + block_size]
        torch.mm(block, txt.T, out=buffer[:len(block) * len(txt)].view(len(block), len(txt)))


def make_data(n_img: int, per_image: int, dim: int, noise: float, seed: int):
    """Unit image embeddings, captions = own image + noise (renormalised), in shuffled caption order."""
    gen = torch.Generator().manual_seed(seed)
    img = F.normalize(torch.randn(n_img, dim, generator=gen), dim=1)
    t2i = torch.arange(n_img).repeat_interleave(per_image)
    t2i = t2i[torch.randperm(len(t2i), generator=gen)]
    txt = F.normalize(img[t2i] + noise / dim ** 0.5 * torch.randn(len(t2i), dim, generator=gen), dim=1)
    return img, txt, t2i


def cpu_name() -> str:
    """CPU model name from /proc/cpuinfo, or the platform's guess."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def timed(fn) -> tuple[float, object]:
    """Wall seconds of one call, and its result."""
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=10_000)
    parser.add_argument("--captions-per-image", type=int, default=5)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--block", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's default)")
    parser.add_argument("--noise", type=float, default=7.0, help="caption noise norm relative to the unit image embedding")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="tiny size (500 images x 2,500 captions, 2 repeats): seconds")
    args = parser.parse_args(argv)
    if args.quick:
        args.images, args.block, args.repeats = 500, 256, 2
    if args.threads:
        torch.set_num_threads(args.threads)

    img, txt, t2i = make_data(args.images, args.captions_per_image, args.dim, args.noise, args.seed)
    n_txt = len(txt)
    print(f"# bench_eval: {args.images} images x {n_txt} captions, d {args.dim}, block {args.block}, "
          f"{args.repeats} repeats")
    print(f"{datetime.datetime.now():%Y-%m-%dT%H:%M} | {cpu_name()}, {os.cpu_count()} cores | torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads | load avg {os.getloadavg()[0]:.2f}")

    variants = {
        "matmul (img_block @ txt.T)": lambda: bare_matmul(img, txt, args.block),
        "matmul, reused buffer": lambda: bare_matmul_buffer(img, txt, args.block),
        "one pass (new retrieval_ranks)": lambda: retrieval_ranks(img, txt, t2i, args.block),
        "two pass (old retrieval_ranks)": lambda: two_pass_ranks(img, txt, t2i, args.block),
    }
    small = make_data(64, 2, args.dim, args.noise, args.seed + 1)  # warm-up: thread pools, MKL kernels
    retrieval_ranks(*small, block_size=16), two_pass_ranks(*small, block_size=16)
    bare_matmul(small[0], small[1], 16), bare_matmul_buffer(small[0], small[1], 16)

    seconds = {name: [] for name in variants}
    results = {}
    for _ in range(args.repeats):
        for name, fn in variants.items():
            dt, out = timed(fn)
            seconds[name].append(dt)
            if out is not None:
                results[name] = out
    new, old = results["one pass (new retrieval_ranks)"], results["two pass (old retrieval_ranks)"]
    same_i2t, same_t2i = torch.equal(new[0], old[0]), torch.equal(new[1], old[1])

    base = statistics.median(seconds["matmul (img_block @ txt.T)"])
    base_buffer = statistics.median(seconds["matmul, reused buffer"])
    print(f"\n| variant | median s | min-max s | / matmul | / matmul reused buffer |")
    print("|---|---|---|---|---|")
    for name, ts in seconds.items():
        med = statistics.median(ts)
        print(f"| {name} | {med:.2f} | {min(ts):.2f}-{max(ts):.2f} | {med / base:.2f} | {med / base_buffer:.2f} |")
    print(f"\nranks identical (new vs old): i2t {same_i2t}, t2i {same_t2i}"
          + ("" if same_i2t and same_t2i else
             f" ({(new[0] != old[0]).sum().item()} images, {(new[1] != old[1]).sum().item()} captions differ)"))
    print(f"i2t R@1 {100 * (new[0] < 1).float().mean():.2f}, t2i R@1 {100 * (new[1] < 1).float().mean():.2f} "
          f"| load avg at the end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
