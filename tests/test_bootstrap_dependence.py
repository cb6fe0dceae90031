"""The paired bootstrap counts what groups share once: two pairs tested on the same target images, and a seed whose
effect every group shares. Each case has an answer known without the bootstrap (nbs/05b_stats.ipynb derives them)."""
import numpy as np
import pandas as pd

from urbancross.stats import KS, paired_bootstrap


def hits(n, rank, t2i, seed=0, prefix="t_", **keys):
    return pd.DataFrame({"image_id": [f"{prefix}{i:04d}" for i in range(n)], "i2t_rank": rank, "n_captions": 5,
                         "t2i_1": t2i, "t2i_5": t2i, "t2i_10": t2i, "seed": seed, **keys})


def score(h):
    """Per-image contribution to mR when every image has 5 captions (mR is its mean)."""
    return 100 / 6 * sum((h.i2t_rank < k).astype(float) + h[f"t2i_{k}"] / 5 for k in KS).to_numpy()


def test_two_pairs_on_one_target_are_one_test_set_not_two():
    rng, n = np.random.default_rng(3), 400
    a, b = (hits(n, rng.integers(0, 15, n), rng.integers(0, 6, n)) for _ in range(2))
    closed = 2 * 1.96 * (score(a) - score(b)).std() / np.sqrt(n)           # the one pair's interval width

    def pairs(h, rename):
        return pd.concat([h.assign(source=s, target="t", image_id=(s + "/" + h.image_id) if rename else h.image_id)
                          for s in ("x", "y")])
    width = {}
    for rename in (False, True):
        r = paired_bootstrap(pairs(a, rename), pairs(b, rename), ["source", "target"], n_boot=3000)
        width[rename] = r["ci_high"] - r["ci_low"]
    assert abs(width[False] / closed - 1) < 0.08, (width, closed)
    assert abs(width[True] / closed - 1 / np.sqrt(2)) < 0.06, (width, closed)      # renamed images: independent pairs


def test_a_seed_effect_shared_by_the_groups_is_drawn_once_per_replicate():
    a = pd.concat([hits(40, 0, 0, seed=s, group=g).assign(t2i_10=m) for g in ("g1", "g2") for s, m in enumerate([0, 0, 3])])
    b = pd.concat([hits(40, 0, 0, seed=s, group=g) for g in ("g1", "g2") for s in range(3)])
    r = paired_bootstrap(a, b, ["group"], n_boot=3000)
    # exact: the mean of 3 seeds drawn from differences (0, 0, +10): 2.5 % and 97.5 % points 0 and 10
    # (per-group draws would put the upper end at 6.67)
    assert np.isclose(r["delta"], 10 / 3) and np.isclose(r["ci_low"], 0) and np.isclose(r["ci_high"], 10)
