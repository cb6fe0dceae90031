"""The workflow (Snakemake over papermill jobs): the paper grid's plan, and resuming after `kill -9`.

The resume test runs a reduced cross-domain grid (two domains, two protocols, one seed, one job per
cell) on a tiny native CLIP in a temporary compendium root, twice: once straight through, once killed
with SIGKILL after the first cells are written and then run again. The second run must run only the
jobs whose outputs were missing, and every cell and the gathered table must equal the straight run's."""
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
TINY = dict(model_name="UC-TinyViT", pretrained="", image_size=32, context_length=16, images_per_domain=20,
            tile_size=64, epochs=1, batch_size=8, da_epochs=1, source_batch=8, target_batch=2, num_seg_stored=3,
            num_seg=2, segment_size=32, views=1, device="cpu", eval_block_size=64, threads=1,
            domains=("finland", "germany"))
PROTOCOLS = ["zero-shot transfer", "paper: w/o DA"]


def _settings():
    return [f"{k}={v!r}" if not isinstance(v, str) else f"{k}={v}" for k, v in TINY.items()]


def _cmd(root, extra=()):
    """The workflow's command line for a run in compendium `root` (its outputs and Snakemake's state go there)."""
    from urbancross.workflow import RunRequest, reproduce_command
    old = os.environ.get("URBANCROSS_ROOT")
    os.environ["URBANCROSS_ROOT"] = str(root)
    try:
        cmd = reproduce_command(RunRequest("smoke", cores=1, settings=_settings(),
                                           params=[f"protocols={PROTOCOLS!r}", "seeds=[0]"], only=["23b_cross_domain_summary"],
                                           grid_chunk="cell", extra=list(extra)))
    finally:
        os.environ.pop("URBANCROSS_ROOT") if old is None else os.environ.__setitem__("URBANCROSS_ROOT", old)
    assert cmd[cmd.index("--directory") + 1] == str(root) and Path(cmd[cmd.index("--snakefile") + 1]).is_relative_to(ROOT)
    return cmd


def _root(tmp_path, name):
    root = tmp_path / name
    (root / "data").mkdir(parents=True)
    (root / "settings.ini").write_text("[DEFAULT]\n")
    return root


def _env(root):
    return {**os.environ, "URBANCROSS_ROOT": str(root), "HF_HUB_OFFLINE": "1", "CI": "1"}


def test_paper_grid_dry_run_lists_the_expected_jobs():
    from urbancross.workflow import RunRequest, reproduce_command
    out = subprocess.run(reproduce_command(RunRequest("paper", dry_run=True)), capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    counts = dict(re.findall(r"^(\S+)\s+(\d+)$", out.stdout + out.stderr, re.M))
    from urbancross.core import get_config
    from urbancross.grid import grid_protocols, recipe_protocols
    per_pair_seed = sum(map(len, recipe_protocols(grid_protocols(get_config("paper"), [])).values()))
    cells = sum(int(n) for r, n in counts.items() if r.startswith("grid_") and "__" in r)
    assert cells == 6 * 3 * per_pair_seed, counts         # every (pair, protocol, recipe, seed) cell is its own job
    assert int(counts["grid_shared"]) == 9 + 9, counts     # a source checkpoint and a target run per (domain, seed)
    from urbancross.experiment import experiment_notebooks
    from urbancross.workflow import GRID_NB
    others = [p.stem for p in experiment_notebooks() if p.stem != GRID_NB]
    assert int(counts["notebook"]) == len(others), (counts, others)   # 20, 20b, 21, 22, 23b, 24, 25, 26, 27, 28
    assert int(counts["data"]) == 1, counts                # the data, segments and features first, once
    assert int(counts["total"]) == cells + 18 + len(others) + 2


@pytest.mark.slow
def test_a_killed_run_resumes_and_equals_a_straight_run(tmp_path):
    straight, killed = _root(tmp_path, "straight"), _root(tmp_path, "killed")
    r = subprocess.run(_cmd(straight), env=_env(straight), cwd=ROOT, capture_output=True, text=True, timeout=1200)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    cells_dir = lambda root: root / "outputs" / "smoke" / "cross_domain" / "cells"
    n_cells = len(list(cells_dir(straight).glob("*.json")))
    from urbancross.grid import recipe_protocols
    assert n_cells == 2 * sum(map(len, recipe_protocols(PROTOCOLS).values()))   # 2 pairs; each recipe's protocols

    log1 = tmp_path / "killed-first-run.log"
    with open(log1, "w") as out:
        p = subprocess.Popen(_cmd(killed), env=_env(killed), cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                             start_new_session=True)
        finished = lambda: set(re.findall(r"Finished job(?:id)?: \d+ \(Rule: grid_(\S+?)\)", log1.read_text()))
        is_cell = lambda rule: "__" in rule
        t0 = time.time()                                  # wait until one cell job has finished, then kill -9
        while not any(is_cell(r) for r in finished()) and p.poll() is None and time.time() - t0 < 900:
            time.sleep(0.2)
        os.killpg(p.pid, signal.SIGKILL); p.wait()
    done = {r for r in finished() if is_cell(r)}          # cell jobs Snakemake recorded as complete
    all_cells = {f.stem for f in cells_dir(straight).glob("*.json")}
    rule_of = {c: c.replace("-", "_") for c in all_cells}
    before = {c: (cells_dir(killed) / f"{c}.json").stat().st_mtime_ns for c in all_cells if rule_of[c] in done}
    assert 1 <= len(before) < n_cells, f"kill came too late or too early: {len(before)} of {n_cells} cells finished"

    r2 = subprocess.run(_cmd(killed), env=_env(killed), cwd=ROOT, capture_output=True, text=True, timeout=1200)
    log = r2.stdout + r2.stderr
    assert r2.returncode == 0, log[-3000:]
    for name, mtime in before.items():                    # finished cells were not run again
        assert (cells_dir(killed) / f"{name}.json").stat().st_mtime_ns == mtime, name
    ran = set(re.findall(r"^job (\S+): starting", log, re.M))              # each job prints its name
    assert {r for r in ran if "__" in r} == all_cells - set(before), (ran, sorted(before))

    for f in sorted(cells_dir(straight).glob("*.json")):  # the same numbers as the straight run
        a, b = json.loads(f.read_text()), json.loads((cells_dir(killed) / f.name).read_text())
        assert a["row"] == b["row"] and a["hits"] == b["hits"], f.name
    drop = ["git_sha"]
    ta = pd.read_csv(straight / "results" / "smoke" / "cross_domain.csv").drop(columns=drop)
    tb = pd.read_csv(killed / "results" / "smoke" / "cross_domain.csv").drop(columns=drop)
    pd.testing.assert_frame_equal(ta, tb)

    r3 = subprocess.run(_cmd(killed), env=_env(killed), cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r3.returncode == 0 and "Nothing to be done" in r3.stdout + r3.stderr, (r3.stdout + r3.stderr)[-2000:]
