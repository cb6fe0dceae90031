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


def test_zip_members_with_absolute_or_parent_names_are_refused_and_named(tmp_path, uc_log, messages):
    """images.zip members named /x, C:/x, ../x or a/../../x are never written, and a warning names each (issue 23)."""
    import io
    import logging
    import zipfile
    from PIL import Image
    from urbancross.datasets import load_urbancross_country
    from urbancross.fixtures import write_release_fixture
    write_release_fixture(tmp_path / "raw", images_per_domain=2, image_size=16, captions_per_image=1, segment_share=0,
                          unlisted_per_domain=0)
    buf = io.BytesIO(); Image.new("RGB", (4, 4)).save(buf, "JPEG")
    hostile = ["../outside.jpg", "/tmp/absolute.jpg", "C:/windows.jpg", "images/../../../climb.jpg", "..\\back.jpg"]
    with zipfile.ZipFile(tmp_path / "raw" / "Spain" / "images.zip", "a") as z:
        for name in hostile:
            z.writestr(zipfile.ZipInfo(name), buf.getvalue())
    df = load_urbancross_country(tmp_path / "raw", "spain")
    assert len(df) == 2
    written = {p.name for p in tmp_path.rglob("*")}
    assert not written & {"outside.jpg", "absolute.jpg", "windows.jpg", "climb.jpg", "back.jpg"}, written
    warned = [m for m in messages(uc_log, logging.WARNING) if "refused" in m]
    assert len(warned) == 1 and all(repr(n) in warned[0] for n in hostile), warned
