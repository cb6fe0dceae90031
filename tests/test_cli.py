"""The package front and the command line (18_api, 19_cli): `--help` of every command answers without torch,
train -> save -> Retriever.from_checkpoint -> query round-trips (through `import urbancross` and through
`python -m urbancross`), heads trained on other trunk weights are refused, corrupt and foreign checkpoints are
named in the error, and `reproduce` hands its options to `urbancross.workflow.reproduce` as one `RunRequest`.

Everything runs on a tiny native open_clip ViT built from config, on generated tiles in a temporary compendium root
(URBANCROSS_ROOT), so nothing is written to the repository's data/ or checkpoints/."""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
TINY = dict(device="cpu", model_name="UC-TinyViT", image_size=32, context_length=16, images_per_domain=8, tile_size=64,
            epochs=3, batch_size=4, num_seg_stored=3, num_seg=2, segment_size=32, views=1, eval_block_size=64,
            threads=1, progress="off")
QUERIES = ["a dense town centre with red roofs", "a lake surrounded by forest", "fields and a road"]


def tiny_weights(path: Path, seed: int) -> Path:
    """A seeded random 'UC-TinyViT' open_clip state dict at `path`: a trunk `build_model` loads again from a file."""
    from urbancross.core import atomic_torch_save, get_config
    from urbancross.towers import TOWERS
    cfg = get_config("smoke", **{**TINY, "pretrained": ""})
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        clip, _, _ = TOWERS["UC-TinyViT"](cfg)
    return atomic_torch_save(clip.state_dict(), path)


def settings(**fields) -> list[str]:
    """`--set key=value` arguments for the command line."""
    return [a for k, v in fields.items() for a in ("--set", f"{k}={v}")]


def run_cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "urbancross", *args], capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, **(env or {})}, timeout=600)


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory):
    """A temporary compendium root with frozen tiny-ViT trunk weights in a file."""
    root = tmp_path_factory.mktemp("compendium")
    (root / "settings.ini").write_text("[DEFAULT]\n")
    old = os.environ.get("URBANCROSS_ROOT")
    os.environ["URBANCROSS_ROOT"] = str(root)
    try:
        yield dict(root=root, weights=tiny_weights(root / "weights" / "tiny_vit.pt", seed=0))
    finally:
        if old is None:
            os.environ.pop("URBANCROSS_ROOT", None)
        else:
            os.environ["URBANCROSS_ROOT"] = old


@pytest.fixture(scope="module")
def heads_retriever(tiny_root):
    """A retriever trained with `uc.train_retriever` on frozen trunks from a weights file, and its checkpoint."""
    import urbancross as uc
    cfg = uc.get_config("smoke", **TINY, pretrained=str(tiny_root["weights"]), trainable="heads")
    r = uc.train_retriever(cfg)
    return r, r.save(tiny_root["root"] / "ckpt" / "heads.pt")


@pytest.mark.parametrize("command", ["", "train", "evaluate", "search", "reproduce"])
def test_help_answers_fast(command):
    t0 = time.perf_counter()
    out = run_cli(*command.split(), "--help")
    wall = time.perf_counter() - t0
    print(f"python -m urbancross {command + ' ' if command else ''}--help: {wall:.2f} s")
    assert out.returncode == 0, out.stderr
    assert "Usage" in out.stdout and "urbancross" in out.stdout


def test_the_front_and_the_cli_module_import_no_torch():
    probe = ("import sys, urbancross, urbancross.__main__; "
             "print(sorted(m for m in ('torch', 'open_clip', 'pandas', 'numpy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]"


def test_train_is_the_training_module_in_either_import_order():
    probe = ("import sys; import urbancross.train as t; from urbancross.train import train as loop; "
             "import urbancross as uc; from urbancross import train; "
             "assert t is uc.train is train is sys.modules['urbancross.train'] and not callable(uc.train); "
             "assert loop is t.train and loop.__module__ == 'urbancross.train'; print('ok')")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT)
    assert out.stdout.strip() == "ok", out.stderr[-2000:]


def test_heads_checkpoint_round_trip(heads_retriever):
    import urbancross as uc
    r, path = heads_retriever
    ck = torch.load(path, weights_only=True)
    from urbancross.search import is_trunk_key
    stored, trained = set(ck["model"]["tensors"]), {n for n, p in r.model.named_parameters() if p.requires_grad}
    # the heads and the temperature: every non-trunk tensor, a superset of what trained (a fixed temperature does not)
    assert ck["model"]["heads_only"] and trained <= stored == {k for k in r.model.state_dict() if not is_trunk_key(k)}
    loaded = uc.Retriever.from_checkpoint(path)
    assert sorted(loaded.gallery.image_id) == sorted(r.gallery.image_id) and len(loaded) > 0
    for q in QUERIES:
        a, b = r.query_text(q, k=len(r)), loaded.query_text(q, k=len(loaded))
        assert a.image_id.tolist() == b.image_id.tolist()
        assert b.score.tolist() == pytest.approx(a.score.tolist(), abs=1e-5)
        assert b.score.is_monotonic_decreasing
    img = r.gallery.image_id.iloc[0]
    assert loaded.query_image(img, k=4).caption.tolist() == r.query_image(img, k=4).caption.tolist()
    assert loaded.evaluate() == pytest.approx(r.evaluate(), abs=1e-9)
    assert len(loaded.history) == TINY["epochs"]


def test_full_state_round_trip_when_trunks_train(tiny_root):
    """Every parameter trains, on pixels, from a random-init trunk: the checkpoint holds the whole state dict."""
    import urbancross as uc
    cfg = uc.get_config("smoke", **{**TINY, "epochs": 1}, pretrained="", trainable="all")
    torch.manual_seed(0)
    r = uc.train_retriever(cfg)
    path = r.save(tiny_root["root"] / "ckpt" / "all.pt")
    ck = torch.load(path, weights_only=True)
    assert not ck["model"]["heads_only"] and set(ck["model"]["tensors"]) == set(r.model.state_dict())
    loaded = uc.Retriever.from_checkpoint(path)
    for q in QUERIES:
        a, b = r.query_text(q, k=5), loaded.query_text(q, k=5)
        assert a.image_id.tolist() == b.image_id.tolist()
        assert b.score.tolist() == pytest.approx(a.score.tolist(), abs=1e-5)


@pytest.mark.slow
def test_cli_train_then_search_through_python_m(tiny_root, heads_retriever):
    import urbancross as uc
    out_path = tiny_root["root"] / "ckpt" / "cli.pt"
    env = {"URBANCROSS_ROOT": str(tiny_root["root"])}
    t0 = time.perf_counter()
    done = run_cli("train", *settings(**TINY, pretrained=tiny_root["weights"], trainable="heads"),
                   "--out", str(out_path), env=env)
    print(f"python -m urbancross train (tiny): {time.perf_counter() - t0:.1f} s")
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"saved {out_path}" in done.stdout and "mR" in done.stdout
    loaded = uc.Retriever.from_checkpoint(out_path)
    api = heads_retriever[0]                      # the same config trained in-process: the same model
    assert torch.allclose(loaded.image_emb, api.image_emb, atol=1e-4)
    found = run_cli("search", QUERIES[0], "--checkpoint", str(out_path), "-k", "5", "--json", env=env)
    assert found.returncode == 0, found.stderr[-3000:]
    rows = [json.loads(line) for line in found.stdout.splitlines()]
    expected = loaded.query_text(QUERIES[0], k=5)
    assert [r["rank"] for r in rows] == [1, 2, 3, 4, 5]
    assert [r["image_id"] for r in rows] == expected.image_id.tolist()
    assert [r["score"] for r in rows] == pytest.approx(expected.score.tolist(), abs=1e-5)
    assert all(a["score"] >= b["score"] for a, b in zip(rows, rows[1:]))
    from typer.testing import CliRunner
    from urbancross.__main__ import app
    table = CliRunner().invoke(app, ["search", QUERIES[0], "-c", str(out_path), "-k", "3"])
    lines = table.stdout.splitlines()
    assert table.exit_code == 0 and lines[0].startswith(f"top 3 of {len(loaded)} images")
    assert [line.split()[2] for line in lines[2:]] == expected.image_id.tolist()[:3]


def test_heads_on_other_trunk_weights_are_refused(tiny_root):
    """The weights file the heads were trained on is replaced by other weights: loading refuses, naming the file."""
    import urbancross as uc
    from typer.testing import CliRunner
    from urbancross.__main__ import app
    weights = tiny_weights(tiny_root["root"] / "weights" / "replaced.pt", seed=0)
    cfg = uc.get_config("smoke", **{**TINY, "epochs": 1}, pretrained=str(weights), trainable="heads")
    path = uc.train_retriever(cfg).save(tiny_root["root"] / "ckpt" / "replaced.pt")
    uc.Retriever.from_checkpoint(path)                                 # loads while the weights are the same
    tiny_weights(weights, seed=1)
    with pytest.raises(ValueError, match="trunk weights differ") as e:
        uc.Retriever.from_checkpoint(path)
    assert str(path) in str(e.value)
    res = CliRunner().invoke(app, ["search", "a lake", "-c", str(path)])
    assert res.exit_code == 2 and str(path) in res.output and "Traceback" not in res.output


def test_corrupt_and_foreign_checkpoints_are_named(tiny_root, heads_retriever):
    import urbancross as uc
    from typer.testing import CliRunner
    from urbancross.__main__ import app
    folder = tiny_root["root"] / "bad"
    folder.mkdir(exist_ok=True)
    good = heads_retriever[1]
    (folder / "garbage.pt").write_bytes(b"\x00 not a torch file")
    (folder / "truncated.pt").write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    torch.save(heads_retriever[0].model.state_dict(), folder / "state_dict.pt")
    torch.save({"model": {}, "optimizer": {}, "epoch": 3}, folder / "training_state.pt")
    for name, says in [("garbage.pt", "corrupt"), ("truncated.pt", "corrupt"), ("missing.pt", "not found"),
                       ("state_dict.pt", "not an UrbanCross retriever checkpoint"),
                       ("training_state.pt", "training-state checkpoint")]:
        path = folder / name
        with pytest.raises((ValueError, FileNotFoundError)) as e:
            uc.Retriever.from_checkpoint(path)
        assert str(path) in str(e.value) and says in str(e.value), str(e.value)
        res = CliRunner().invoke(app, ["evaluate", str(path), "--stored"])
        assert res.exit_code == 2 and str(path) in res.output and "Traceback" not in res.output, res.output


def test_reproduce_hands_its_options_to_the_workflow(monkeypatch):
    import urbancross.workflow
    from typer.testing import CliRunner
    from urbancross.__main__ import app
    from urbancross.workflow import RunRequest
    calls = []
    monkeypatch.setattr(urbancross.workflow, "reproduce", lambda req: calls.append(req) or 0)
    res = CliRunner().invoke(app, ["reproduce", "--profile", "paper", "--cores", "4", "--dry-run", "--set",
                                   "data_root=/data/uc", "--param", "seeds=[0]", "--only", "23_cross_domain"])
    assert res.exit_code == 0, res.output
    assert calls == [RunRequest("paper", cores=4, dry_run=True, settings=("data_root=/data/uc",),
                                params=("seeds=[0]",), only=("23_cross_domain",))]
    monkeypatch.setattr(urbancross.workflow, "reproduce", lambda req: 1)
    assert CliRunner().invoke(app, ["reproduce"]).exit_code == 1
