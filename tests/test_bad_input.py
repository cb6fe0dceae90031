"""Bad input is answered with an error naming the file/row (issue: spine)."""
import json

import pandas as pd
import pytest
from PIL import Image

from urbancross.data import (ImageLoadError, load_image, load_karpathy_json, load_urbancross_country,
                             make_urbancross_fixture, read_manifest, validate_manifest, make_manifest)


def test_missing_image(tmp_path):
    with pytest.raises(FileNotFoundError, match="gone.png"):
        load_image(tmp_path / "gone.png")


def test_missing_image_listed_in_release_csv(tmp_path):
    folder = make_urbancross_fixture(tmp_path, "Spain", n=3)
    csv = folder / "instructblip_generation_spain_refine.csv"
    csv.write_text(csv.read_text().replace("tile1.png", "tile_missing.png"))
    with pytest.raises(FileNotFoundError, match="tile_missing.png"):
        load_urbancross_country(tmp_path, "spain")


@pytest.mark.parametrize("fmt", ["png", "jpeg", "tiff"])
def test_corrupt_image(tmp_path, fmt):
    p = tmp_path / f"tile.{fmt}"
    Image.new("RGB", (64, 64), (10, 200, 30)).save(p, format=fmt.upper())
    p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 3])
    with pytest.raises(ImageLoadError, match=f"tile.{fmt}"):
        load_image(p)


def test_not_an_image(tmp_path):
    p = tmp_path / "notes.png"
    p.write_text("this is text")
    with pytest.raises(ImageLoadError, match="notes.png"):
        load_image(p)


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "I;16"])
def test_unusual_modes_become_rgb(tmp_path, mode):
    p = tmp_path / "m.png"
    Image.new(mode, (8, 8)).save(p)
    assert load_image(p).mode == "RGB"


def test_csv_missing_column(tmp_path):
    folder = make_urbancross_fixture(tmp_path, "Germany", n=2)
    csv = folder / "instructblip_generation_germany_refine.csv"
    pd.read_csv(csv).drop(columns=["description"]).to_csv(csv, index=False)
    with pytest.raises(ValueError, match=r"instructblip_generation_germany_refine.csv: missing column\(s\) \['description'\]"):
        load_urbancross_country(tmp_path, "germany")


def test_empty_caption_names_the_row(tmp_path):
    folder = make_urbancross_fixture(tmp_path, "Finland", n=3)
    csv = folder / "instructblip_generation_finland_refine.csv"
    df = pd.read_csv(csv)
    df.loc[1, "description"] = "   "
    df.to_csv(csv, index=False)
    with pytest.raises(ValueError, match=r"line 3 \(image_name='tile1.png'\): empty caption"):
        load_urbancross_country(tmp_path, "finland")


def test_empty_caption_in_manifest():
    df = make_manifest([dict(image_id="x", image_path="x.png", captions=[""], domain="spain", split="test")])
    with pytest.raises(ValueError, match=r"m.csv: row 0 \(image_id='x'\): empty caption"):
        validate_manifest(df, "m.csv")


def test_non_utf8_manifest(tmp_path):
    p = tmp_path / "manifest.csv"
    p.write_bytes("image_id,image_path,captions,domain,lat,lon,split,tags\nx,a.png,\"[\"\"caf\xe9\"\"]\",spain,,,train,\n".encode("latin-1"))
    with pytest.raises(ValueError, match="manifest.csv: not valid UTF-8"):
        read_manifest(p)


def test_karpathy_json_missing_sentences(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "d.json").write_text(json.dumps({"images": [{"filename": "a.jpg", "split": "train"}]}))
    with pytest.raises(ValueError, match=r"images\[0\] lacks 'filename' or 'sentences'"):
        load_karpathy_json(tmp_path / "d.json", tmp_path / "images", "rsicd")
