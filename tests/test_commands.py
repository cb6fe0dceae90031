"""One command line, `python -m urbancross` (19_cli), for every entry point: the experiment commands
(`reproduce`, `run-all`, `preflight`, `dryrun`, `job`) answer `--help` at once and without torch;
`reproduce --dry-run` lists the smoke profile's jobs and runs none; `job` runs one notebook the way the
Snakefile calls it; `preflight` and `run-all` stop before anything runs when data is missing; and
`urbancross.workflow` / `urbancross.dryrun` no longer have command lines of their own.

Not repeated here: tests/test_cli.py (train, evaluate, search and their help) and tests/test_workflow.py
(the paper grid's plan, resuming a killed run)."""
import ast
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENT_COMMANDS = {"reproduce": ["--dry-run", "--cores", "--executor", "--grid-chunk", "--set", "--param", "--only"],
                       "run-all": ["--profile", "--set", "--param", "--only"],
                       "preflight": ["--profile", "--set", "--only"],
                       "prepare": ["--profile", "--set", "--marker"],
                       "dryrun": ["--workdir", "--only"],
                       "job": ["NOTEBOOK", "--marker", "--executed", "--overrides", "--params"]}
ALL_COMMANDS = ["train", "evaluate", "search", *EXPERIMENT_COMMANDS]


def python(*args: str, env: dict | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, **(env or {})}, timeout=timeout)


def compendium(tmp_path: Path) -> Path:
    """An empty compendium root (URBANCROSS_ROOT): outputs and Snakemake's state go there, not into the repository."""
    root = tmp_path / "compendium"
    (root / "data").mkdir(parents=True)
    (root / "settings.ini").write_text("[DEFAULT]\n")
    return root


@pytest.mark.parametrize("command", EXPERIMENT_COMMANDS)
def test_help_of_each_experiment_command(command):
    t0 = time.perf_counter()
    out = python("-m", "urbancross", command, "--help")
    print(f"python -m urbancross {command} --help: {time.perf_counter() - t0:.2f} s")
    assert out.returncode == 0, out.stderr
    assert f"urbancross {command}" in out.stdout
    for word in EXPERIMENT_COMMANDS[command]:
        assert word.lower() in out.stdout.lower(), (command, word)


def test_top_level_help_lists_every_command_and_no_help_loads_torch():
    out = python("-m", "urbancross", "--help")
    assert out.returncode == 0 and all(c in out.stdout for c in ALL_COMMANDS), out.stdout
    probe = ("import sys\nfrom typer.testing import CliRunner\nfrom urbancross.__main__ import app\n"
             "codes = [CliRunner().invoke(app, [*c.split(), '--help']).exit_code for c in ['', *sys.argv[1:]]]\n"
             "print(codes, sorted(m for m in ('torch', 'open_clip', 'pandas', 'numpy', 'snakemake', 'papermill', "
             "'nbformat') if m in sys.modules))")
    out = python("-c", probe, *ALL_COMMANDS)
    assert out.stdout.strip() == f"{[0] * (len(ALL_COMMANDS) + 1)} []", out.stdout + out.stderr[-2000:]


def test_reproduce_dry_run_lists_the_smoke_jobs_and_runs_none(tmp_path):
    from urbancross.experiment import experiment_notebooks
    from urbancross.workflow import GRID_NB, grid_plan
    root = compendium(tmp_path)
    out = python("-m", "urbancross", "reproduce", "--profile", "smoke", "--dry-run",
                 env={"URBANCROSS_ROOT": str(root), "HF_HUB_OFFLINE": "1"})
    log = out.stdout + out.stderr
    assert out.returncode == 0, log[-3000:]
    assert f"--directory {root}" in log and "--dry-run" in log and "snakemake exited 0" in log
    counts = {rule: int(n) for rule, n in re.findall(r"^(\S+)\s+(\d+)$", log, re.M)}
    seeds = {f"grid_{j['name']}" for j in grid_plan("smoke")["jobs"]}          # one job per seed for the smoke grid
    assert seeds and all(counts[s] == 1 for s in seeds), counts
    notebooks = [p for p in experiment_notebooks() if p.stem != GRID_NB]
    assert counts["data"] == 1, counts                                           # the data first, once
    assert counts["notebook"] == len(notebooks) and counts["total"] == len(seeds) + len(notebooks) + 2, counts
    assert not (root / "outputs" / "smoke" / "done").exists()                   # a dry run runs nothing


def test_job_runs_one_notebook_as_the_snakefile_calls_it(tmp_path):
    snakefile = (ROOT / "workflow" / "Snakefile").read_text()
    assert '-m urbancross job"' in snakefile and "urbancross.workflow job" not in snakefile
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("profile = 'smoke'\noverrides = {}\nk = 1"),
                                         nbformat.v4.new_code_cell("print(profile, overrides, k * 2)")])
    nb.cells[0].metadata["tags"] = ["parameters"]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "python3", "language": "python"}
    nbformat.write(nb, tmp_path / "tiny.ipynb")
    marker, executed = tmp_path / "done" / "tiny.json", tmp_path / "executed" / "tiny.ipynb"
    out = python("-m", "urbancross", "job", str(tmp_path / "tiny.ipynb"), "--profile", "paper", "--marker", str(marker),
                 "--executed", str(executed), "--overrides", json.dumps({"epochs": 1}), "--params", json.dumps({"k": 21}))
    assert out.returncode == 0, (out.stdout + out.stderr)[-3000:]
    assert "job tiny: starting" in out.stdout and "job tiny: done" in out.stdout
    done = json.loads(marker.read_text())
    assert (done["notebook"], done["profile"], done["params"], done["overrides"]) == ("tiny.ipynb", "paper", {"k": 21}, {"epochs": 1})
    assert nbformat.read(executed, as_version=4).cells[-1].outputs[0]["text"] == "paper {'epochs': 1} 42\n"


def test_preflight_and_run_all_stop_before_running_when_data_is_missing():
    from typer.testing import CliRunner
    from urbancross.__main__ import app
    ok = CliRunner().invoke(app, ["preflight", "--profile", "smoke"])
    assert ok.exit_code == 0 and "everything needed is there" in ok.output, ok.output
    for command in ("preflight", "run-all"):
        res = CliRunner().invoke(app, [command, "--profile", "paper", "--set", "data_root=/nonexistent/uc"])
        assert res.exit_code == 2 and "/nonexistent/uc" in res.output and "nothing was run" in res.output, res.output
    res = CliRunner().invoke(app, ["run-all", "--only", "99_no_such_notebook"])
    assert res.exit_code == 2 and "no such experiment notebook" in res.output and "Traceback" not in res.output


@pytest.mark.parametrize("module", ["workflow", "dryrun"])
def test_workflow_and_dryrun_have_no_command_line_of_their_own(module):
    tree = ast.parse((ROOT / "urbancross" / f"{module}.py").read_text())
    assert "main" not in {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
    assert not [ast.unparse(n.test) for n in tree.body if isinstance(n, ast.If) and "__main__" in ast.unparse(n.test)]
    assert "argparse" not in {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    out = python("-m", f"urbancross.{module}", "reproduce", "--help")               # the module is imported, nothing runs
    assert out.returncode == 0 and out.stdout == "" and "usage" not in out.stderr.lower(), out.stdout + out.stderr[-2000:]
