"""Every experiment notebook runs end to end on a tiny native open_clip ViT built from config (no timm or
Hugging Face tower), in the frozen-trunk regime (cached features, heads train) and end to end (every
parameter trains on pixels), through papermill with only sizes overridden: the paper's code path on CPU.
Outputs go to a temporary compendium root (URBANCROSS_ROOT), never to the repository's results/.
The paper profile's own path (release-format data, SAM, InstructBLIP) is `make paper-dryrun`."""
import os
import shutil
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
TINY = dict(model_name="UC-TinyViT", pretrained="", image_size=32, context_length=16, images_per_domain=20,
            tile_size=64, epochs=1, batch_size=8, da_epochs=1, source_batch=8, target_batch=2, num_seg_stored=3,
            num_seg=2, segment_size=32, views=1, device="cpu", eval_block_size=64, threads=1)
EXTRA = {"20_within_domain": dict(budget_steps=2), "20b_integration": dict(seeds=[0]), "21_ablation_sam": dict(seeds=[0]),
         "22_ablation_lmm": dict(seeds=[0]), "23_cross_domain": dict(seeds=[0]),
         "23b_cross_domain_summary": dict(seeds=[0]), "24_retrieval_demo": dict(k=3),
         "28_adversary_study": dict(seeds=[0], moons_seeds=1, moons_steps=50)}
WRITES = {"20_within_domain": "within_domain", "20b_integration": "integration", "21_ablation_sam": "ablation_sam", "22_ablation_lmm": "ablation_lmm",
          "23b_cross_domain_summary": "cross_domain", "25_paper_vs_ours": "paper_vs_ours", "26_rs_benchmarks": "rs_benchmarks",
          "23c_fine_tuning_rate": "fine_tuning_rate", "27_claims": "claims"}


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("compendium")
    (root / "settings.ini").write_text("[DEFAULT]\n")
    (root / "data").mkdir()
    shutil.copy(ROOT / "data" / "paper_results.csv", root / "data" / "paper_results.csv")
    return root


@pytest.mark.parametrize("regime", ["heads", "all"])
def test_every_experiment_notebook_runs_on_a_tiny_native_clip(tiny_root, regime, monkeypatch):
    import papermill as pm
    from urbancross.experiment import experiment_notebooks
    monkeypatch.setenv("URBANCROSS_ROOT", str(tiny_root))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = tiny_root / "outputs" / regime
    out.mkdir(parents=True)
    nbs = experiment_notebooks(ROOT / "nbs")
    known = ["20_within_domain", "20b_integration", "21_ablation_sam", "22_ablation_lmm", "23_cross_domain",
             "23b_cross_domain_summary", "24_retrieval_demo", "25_paper_vs_ours", "26_rs_benchmarks", "27_claims"]
    assert [p.stem for p in nbs if p.stem in known] == known                 # in run order (studies may follow)
    for nb in nbs:
        params = dict(profile="smoke", overrides={**TINY, "trainable": regime}, **EXTRA.get(nb.stem, {}))
        pm.execute_notebook(str(nb), str(out / nb.name), parameters=params, cwd=str(nb.parent),
                            kernel_name="python3", progress_bar=False)
        if nb.stem in WRITES:
            table = pd.read_csv(tiny_root / "results" / "smoke" / f"{WRITES[nb.stem]}.csv")
            assert len(table), nb.stem
    cross = pd.read_csv(tiny_root / "results" / "smoke" / "cross_domain_runs.csv")
    from urbancross.protocols import PROTOCOLS
    assert set(cross.protocol) <= set(PROTOCOLS) and cross.groupby(["protocol", "recipe"]).size().eq(6).all()   # 6 pairs each
    assert {"paper: UrbanCross", "paper: w/o DA", "zero-shot transfer"} <= set(cross.protocol[cross.recipe == "authors"])
    assert cross.mR.between(0, 100).all()
    study = pd.read_csv(tiny_root / "results" / "smoke" / "within_domain_study.csv")
    assert (study.model == "end to end").sum() == 1                      # smoke: pixel rows on the first domain
    # the experiment tables run both recipes, the authors' (the paper's rows) and ours; the LMM 2 x 2 the authors' by default
    for name in ("within_domain", "integration", "ablation_sam", "ablation_lmm", "rs_benchmarks"):
        t = pd.read_csv(tiny_root / "results" / "smoke" / f"{name}.csv")
        assert ({"authors"} if name == "ablation_lmm" else {"authors", "ours"}) <= set(t.recipe), name
    integration = pd.read_csv(tiny_root / "results" / "smoke" / "integration.csv")
    assert set(integration.arm) == {"same country", "integration", "from finland", "from germany", "from spain"}
    # every compared number carries an interval and the sizes behind it
    for name in ("within_domain", "integration", "ablation_sam", "ablation_lmm", "cross_domain"):
        t = pd.read_csv(tiny_root / "results" / "smoke" / f"{name}.csv")
        assert {"delta", "ci_low", "ci_high", "n_test_images", "n_seeds"} <= set(t.columns), name
        has = t.delta.notna()
        assert has.any() and (t.ci_low[has] <= t.delta[has] + 1e-9).all() and (t.delta[has] <= t.ci_high[has] + 1e-9).all(), name
        assert (tiny_root / "results" / "smoke" / f"{name}_queries.csv.gz").exists(), name
    rate = pd.read_csv(tiny_root / "results" / "smoke" / "fine_tuning_rate.csv")   # each rate, both recipes, with intervals
    assert {"authors", "ours"} <= set(rate.recipe) and sorted(rate.da_lr.unique()) == [1e-5, 1e-4, 1e-3]
    assert ((rate.ci_low <= rate.delta + 1e-9) & (rate.delta <= rate.ci_high + 1e-9)).all()
    claims = pd.read_csv(tiny_root / "results" / "smoke" / "claims.csv")
    assert (claims.recipe == "authors").sum() >= 6 and set(claims.verdict) <= {"reproduced", "contradicted", "inconclusive"}
    assert (tiny_root / "results" / "smoke" / "claims.md").exists()
    assert not (tiny_root / "results" / "within_domain.csv").exists()        # tables are kept per profile
