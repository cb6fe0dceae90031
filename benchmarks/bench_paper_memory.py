"""GPU memory of a paper-profile training step, estimated on CPU: ViT-L-14 at 224 px, random init.

What a step keeps in memory is (a) parameters, gradients and AdamW's two moments (fp32) and (b) the
activations autograd saves for the backward pass. (b) is measured exactly, per sample, by summing the
bytes of every tensor autograd saves during one forward pass (`torch.autograd.graph.saved_tensors_hooks`),
for the image tower, the segment tower (a separate copy, as upstream) and the text tower, with and
without gradient checkpointing, in fp32 and under bf16 autocast (CPU autocast stands in for CUDA's:
the same ops are cast). The step of the paper profile holds `batch` images, `batch * num_seg` segment
crops and `batch` captions. Peak memory on a GPU also holds allocator slack and temporary buffers, so
this is a lower bound; the issue's GPU check measures the real peak. Run:

    .venv/bin/python benchmarks/bench_paper_memory.py [--model ViT-L-14] [--num-seg 5]
"""
import argparse
import contextlib
import time

import torch

from urbancross.core import get_config
from urbancross.towers import build_model

GiB = 1024 ** 3


def saved_bytes(fn) -> int:
    """Bytes of the distinct tensors autograd saves while `fn()` runs (each storage counted once)."""
    seen, total = set(), 0

    def pack(t):
        nonlocal total
        key = (t.untyped_storage().data_ptr(), t.untyped_storage().nbytes())
        if key not in seen:
            seen.add(key)
            total += key[1]
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    del out
    return total


def per_sample(fn_of_batch) -> tuple[int, int]:
    """(bytes per sample, bytes per step) of saved tensors, from batches of 1 and 2 (weights saved once per step)."""
    one, two = saved_bytes(lambda: fn_of_batch(1)), saved_bytes(lambda: fn_of_batch(2))
    return two - one, 2 * one - two


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="ViT-L-14")
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--num-seg", type=int, default=5)
    ap.add_argument("--batches", type=int, nargs="*", default=[40, 80, 100])
    ap.add_argument("--quick", action="store_true", help="a tiny ViT (UC-TinyViT, 32 px) instead of ViT-L-14: seconds")
    a = ap.parse_args()
    if a.quick:
        a.model, a.image_size = "UC-TinyViT", 32
    torch.set_num_threads(2)
    rows = []
    for gc in (False, True):
        cfg = get_config("paper", model_name=a.model, pretrained="", device="cpu", image_size=a.image_size,
                         grad_checkpointing=gc)
        model = build_model(cfg).train()
        n_params = sum(p.numel() for p in model.parameters())
        imgs = lambda b: torch.randn(b, 3, a.image_size, a.image_size)
        texts = lambda b: ["a dense residential area with many red roofs"] * b
        for amp in ("fp32", "bf16"):
            ctx = torch.autocast("cpu", dtype=torch.bfloat16) if amp == "bf16" else contextlib.nullcontext()
            t0 = time.time()
            with ctx:
                im, im0 = per_sample(lambda b: model.embed_image_features(model.image_features(imgs(b))))
                sg, sg0 = per_sample(lambda b: model.segment_features(imgs(b)))
                tx, tx0 = per_sample(lambda b: model.embed_text_features(model.text_features(texts(b))))
            rows.append(dict(gc=gc, amp=amp, params=n_params, per_image=im, per_segment=sg, per_text=tx,
                             per_step=im0 + sg0 + tx0, seconds=time.time() - t0))
        del model
    state = rows[0]["params"] * 4 * 4          # fp32 weights + grads + AdamW exp_avg + exp_avg_sq
    print(f"{a.model} at {a.image_size} px, segment tower separate, {rows[0]['params'] / 1e6:.0f}M parameters: "
          f"weights+grads+AdamW state {state / GiB:.1f} GiB (fp32)")
    print(f"{'checkpointing':>13} {'amp':>5} {'MiB/image':>10} {'MiB/segment':>12} {'MiB/text':>9} "
          + " ".join(f"{'GiB@' + str(b):>9}" for b in a.batches))
    for r in rows:
        per_step = [state + r["per_step"] + b * (r["per_image"] + a.num_seg * r["per_segment"] + r["per_text"])
                    for b in a.batches]
        print(f"{str(r['gc']):>13} {r['amp']:>5} {r['per_image'] / 2**20:10.1f} {r['per_segment'] / 2**20:12.1f} "
              f"{r['per_text'] / 2**20:9.2f} " + " ".join(f"{x / GiB:9.1f}" for x in per_step))
    print("GiB@B: weights/grads/optimizer + saved activations of B images, B*num_seg segments, B captions "
          "(a lower bound of the GPU peak; with checkpointing add one block's activations, recomputed in backward: "
          "about the no-checkpointing per-sample figure / the number of blocks, times B * (1 + num_seg))")


if __name__ == "__main__":
    main()
