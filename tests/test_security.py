"""No credentials in the tree; every checkpoint load is weights-only."""
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCES = [p for p in [*ROOT.glob("urbancross/*.py"), *ROOT.glob("nbs/*.ipynb"), *ROOT.glob("tests/*.py"),
                       *ROOT.glob("benchmarks/*.py"), ROOT / "Makefile", ROOT / "settings.ini"] if p.exists()]


def test_no_experiment_tracker_keys():
    pattern = re.compile(r"(wandb\.login\(\s*key|WANDB_API_KEY\s*=|api_key\s*=\s*['\"][0-9a-f]{20,})", re.I)
    hits = [str(p) for p in SOURCES if pattern.search(p.read_text(errors="ignore"))]
    assert not hits, f"credential-like strings in {hits}"


def test_torch_load_is_weights_only():
    bad = []
    for p in ROOT.glob("urbancross/*.py"):
        for m in re.finditer(r"torch\.load\((.*)", p.read_text()):   # rest of the line
            if "weights_only=True" not in m.group(1):
                bad.append(f"{p.name}: {m.group(0)}")
    assert not bad, bad
