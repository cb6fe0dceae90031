"""Every script in benchmarks/ runs end to end at its `--quick` size and prints its table; the GPU check runs
on a CPU at tiny sizes (`--device cpu --tiny`) and writes its JSON. Nothing here asserts on time."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"

# script -> a line its --quick run must print (the header of its table)
QUICK = {
    "bench.py": "| step ",
    "bench_eval.py": "| variant | median s |",
    "bench_memory.py": "| images | segments | peak RSS MB |",
    "bench_paper_memory.py": "checkpointing",
    "bench_load.py": "| setting | threads | quiet s/epoch |",
    "bench_loader.py": "| loader ",
}


def _run(args: list[str], timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"), "HF_HUB_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1"}
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def test_every_benchmark_script_is_covered():
    scripts = {p.name for p in BENCH.glob("*.py")} - {"gpu_check.py"}
    assert scripts == set(QUICK), f"benchmarks without a --quick test: {scripts - set(QUICK)}"


@pytest.mark.slow
@pytest.mark.parametrize("script", sorted(QUICK))
def test_quick_run_prints_its_table(script):
    out = _run([str(BENCH / script), "--quick"])
    assert out.returncode == 0, f"{script} --quick failed:\n{out.stderr[-3000:]}"
    assert QUICK[script] in out.stdout, f"{script} --quick printed no table:\n{out.stdout[-2000:]}"


@pytest.mark.slow
def test_gpu_check_runs_on_cpu_at_tiny_sizes(tmp_path):
    dest = tmp_path / "gpu_check.json"
    out = _run([str(BENCH / "gpu_check.py"), "--device", "cpu", "--tiny", "--out", str(dest)])
    assert out.returncode == 0, f"gpu_check --device cpu --tiny failed:\n{out.stdout[-2000:]}\n{out.stderr[-3000:]}"
    report = json.loads(dest.read_text())
    assert report["errors"] == {} and report["sizes"] == "tiny"
    assert {(r["grad_checkpointing"], r["batch"]) for r in report["train"]} == {(g, b) for g in (True, False) for b in (4, 8)}
    assert all(r["samples_per_s"] > 0 for r in report["train"])
    assert report["sam"]["images_per_s"] > 0 and report["metrics"]["one_pass_s"] > 0
    assert 0 <= report["loader"]["gpu_idle_share"] <= 1


def test_gpu_check_refuses_cuda_without_a_gpu(tmp_path):
    import torch
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    out = _run([str(BENCH / "gpu_check.py"), "--out", str(tmp_path / "x.json")], timeout=120)
    assert out.returncode != 0 and "--device cpu --tiny" in (out.stderr + out.stdout)
