"""Bad tables of images and captions: manifest CSVs (`read_manifest`, `validate_manifest`, `write_manifest`), the
UrbanCross release of a country (caption CSV + images.zip: `load_urbancross_country`, `unlisted_images`), caption
JSON (`load_karpathy_json`), and the images they name (`ManifestDataset`): missing columns, encodings, empty or cut
files, duplicate ids, empty or very long captions, missing or looping images, images the CSV does not list, file names
in another Unicode normalisation.

Each case gets an error naming the file and row (or line, or JSON entry), or a documented, logged fallback, as listed
in nbs/01_data.ipynb ("Bad input at a glance"). The names added for issue 15 (unlisted images, Unicode names) are
imported inside the tests, so that each test fails on its own without them.
"""
import json
import logging
import os
import unicodedata
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from urbancross.data import (MAX_CAPTION_CHARS, ImageLoadError, ManifestDataset, load_image, make_manifest,
                             read_manifest, validate_manifest, write_manifest)
from urbancross.datasets import karpathy_paths, load_karpathy_json, load_urbancross_country
from urbancross.fixtures import write_karpathy_fixture, write_release_fixture

NFC, NFD = unicodedata.normalize("NFC", "café_1"), unicodedata.normalize("NFD", "café_1")


def release_country(root, country, n):
    """The folder of `country` in a release fixture under `root` of `n` 16-pixel images per country, one caption each
    (and no unlisted images)."""
    out = write_release_fixture(root, images_per_domain=n, image_size=16, captions_per_image=1, segment_share=0,
                                unlisted_per_domain=0)
    return Path(out[country.lower()]["folder"])


def caption_json(root):
    """(caption JSON, images folder) of a 10-image RSICD fixture under `root`."""
    write_karpathy_fixture(root, images=10, image_size=16, overlap=0)
    return karpathy_paths(root, "rsicd")


@pytest.fixture
def manifest_file(noisy):
    """`manifest_file(tmp_path, captions)`: a manifest CSV of 8-pixel noise images, one per caption tuple."""
    def make(tmp_path, captions=(("a red roof",), ("two lakes", "water"))):
        imgs = []
        for i in range(len(captions)):
            p = tmp_path / f"im{i}.png"
            Image.fromarray(noisy(8, 8, i)).save(p)
            imgs.append(p)
        df = make_manifest([dict(image_id=f"id{i}", image_path=str(p), captions=list(c), domain="spain",
                                 split="train") for i, (p, c) in enumerate(zip(imgs, captions))])
        return write_manifest(df, tmp_path / "manifest.csv")
    return make


# ---------------------------------------------------------------- images a table names: missing, corrupt, symbolic-link loops

def test_missing_image_listed_in_release_csv(tmp_path):
    folder = release_country(tmp_path, "Spain", n=3)
    csv = folder / "instructblip_generation_spain_refine.csv"
    csv.write_text(csv.read_text().replace("spain_0001.jpg", "spain_missing.jpg"))
    with pytest.raises(FileNotFoundError, match="spain_missing.jpg"):
        load_urbancross_country(tmp_path, "spain")


def test_missing_image_in_manifest_dataset(tmp_path, manifest_file):
    m = manifest_file(tmp_path)
    df = read_manifest(m)
    (tmp_path / "im1.png").unlink()
    with pytest.raises(FileNotFoundError, match="im1.png"):
        ManifestDataset(df, transform=lambda im: im, cache=True)       # decodes every image up front
    lazy = ManifestDataset(df, transform=lambda im: im)                # default: decoded on access
    with pytest.raises(FileNotFoundError, match="im1.png"):
        [lazy[i] for i in range(len(lazy))]


def test_corrupt_image_fails_when_dataset_is_built_or_read(tmp_path, manifest_file):
    df = read_manifest(manifest_file(tmp_path))
    (tmp_path / "im0.png").write_bytes((tmp_path / "im0.png").read_bytes()[:30])
    with pytest.raises(ImageLoadError, match="im0.png"):
        ManifestDataset(df, transform=lambda im: im, cache=True)
    with pytest.raises(ImageLoadError, match="im0.png"):
        ManifestDataset(df, transform=lambda im: im)[0]


def test_symlink_loop_in_release_folder_is_named(tmp_path):
    release_country(tmp_path, "Finland", n=3)
    load_urbancross_country(tmp_path, "finland")                       # extracts images/
    tile = tmp_path / "Finland" / "images" / "finland_0001.jpg"
    tile.unlink(); os.symlink(tile, tile)                              # a link to itself
    with pytest.raises(ImageLoadError, match=r"line 3 .*'finland_0001.jpg'.*finland_0001.jpg is a symbolic link loop"):
        load_urbancross_country(tmp_path, "finland")


def test_symlink_loop_in_caption_json_is_named(tmp_path):
    j, imgs = caption_json(tmp_path)
    (imgs / "finland_0002.jpg").unlink(); os.symlink(imgs / "finland_0002.jpg", imgs / "finland_0002.jpg")
    with pytest.raises(ImageLoadError, match=r"images\[2\]: image .*finland_0002.jpg is a symbolic link loop"):
        load_karpathy_json(j, imgs, "rsicd")


# ---------------------------------------------------------------- columns, encoding, emptiness, truncation

def test_csv_missing_column(tmp_path):
    folder = release_country(tmp_path, "Germany", n=2)
    csv = folder / "instructblip_generation_germany_refine.csv"
    pd.read_csv(csv).drop(columns=["description"]).to_csv(csv, index=False)
    with pytest.raises(ValueError, match=r"instructblip_generation_germany_refine.csv: missing column\(s\) \['description'\]"):
        load_urbancross_country(tmp_path, "germany")


def test_karpathy_json_missing_sentences(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "d.json").write_text(json.dumps({"images": [{"filename": "a.jpg", "split": "train"}]}))
    with pytest.raises(ValueError, match=r"images\[0\] lacks 'filename' or 'sentences'"):
        load_karpathy_json(tmp_path / "d.json", tmp_path / "images", "rsicd")


def test_non_utf8_manifest(tmp_path):
    p = tmp_path / "manifest.csv"
    p.write_bytes("image_id,image_path,captions,domain,lat,lon,split,tags\nx,a.png,\"[\"\"caf\xe9\"\"]\",spain,,,train,\n".encode("latin-1"))
    with pytest.raises(ValueError, match="manifest.csv: not valid UTF-8"):
        read_manifest(p)


def test_non_utf8_manifest_names_byte_and_line(tmp_path, manifest_file):
    m = manifest_file(tmp_path)
    lines = m.read_bytes().split(b"\n")
    lines[2] = lines[2].replace(b"two lakes", b"two l\xe4kes")   # latin-1 byte on line 3
    m.write_bytes(b"\n".join(lines))
    offset = m.read_bytes().index(b"\xe4")
    with pytest.raises(ValueError, match=rf"manifest.csv: not valid UTF-8 at byte {offset} \(line 3, byte \d+"):
        read_manifest(m)


def test_non_utf8_release_csv_far_into_the_file(tmp_path):
    folder = release_country(tmp_path, "Germany", n=2)
    csv = folder / "instructblip_generation_germany_refine.csv"
    rows = "".join(f"germany_000{i % 2}.jpg,caption number {i} of a long file\n" for i in range(5000))
    csv.write_bytes(b"image_name,description\n" + rows.encode() + b"germany_0001.jpg,Stra\xdfe\n")
    with pytest.raises(ValueError, match=r"instructblip_generation_germany_refine.csv: not valid UTF-8 at byte \d+ \(line 5002,"):
        load_urbancross_country(tmp_path, "germany")


def test_utf8_bom_is_accepted(tmp_path, manifest_file):
    m = manifest_file(tmp_path)
    m.write_bytes(b"\xef\xbb\xbf" + m.read_bytes())
    assert list(read_manifest(m).image_id) == ["id0", "id1"]


def test_empty_csv(tmp_path):
    (tmp_path / "manifest.csv").write_bytes(b"")
    with pytest.raises(ValueError, match="manifest.csv: file is empty"):
        read_manifest(tmp_path / "manifest.csv")


def test_manifest_cut_mid_row_is_refused(tmp_path, manifest_file):
    m = manifest_file(tmp_path)
    text = m.read_text()
    for cut in (1, 3, 10, len(text.splitlines()[-1])):
        m.write_text(text[:-cut])
        with pytest.raises(ValueError, match="manifest.csv"):
            read_manifest(m)


def test_release_csv_without_final_newline_warns(tmp_path, uc_log):
    folder = release_country(tmp_path, "Spain", n=2)
    csv = folder / "instructblip_generation_spain_refine.csv"
    csv.write_text(csv.read_text().rstrip("\n"))
    assert len(load_urbancross_country(tmp_path, "spain")) == 2
    assert any("does not end with a newline" in r.getMessage() and csv.name in r.getMessage()
               for r in uc_log.records if r.levelno == logging.WARNING)


# ---------------------------------------------------------------- duplicate ids

def test_duplicate_ids_in_manifest_file_name_lines(tmp_path, manifest_file):
    m = manifest_file(tmp_path, captions=[("a",), ("b",), ("c",), ("d",)])
    m.write_text(m.read_text().replace("id3,", "id1,"))
    with pytest.raises(ValueError, match=r"manifest.csv: duplicate image_id 'id1' at lines \[3, 5\]"):
        read_manifest(m)


def test_duplicate_ids_in_memory_name_all_of_them():
    df = make_manifest([dict(image_id=i, image_path="x", captions=["c"], domain="spain") for i in "abacbd"])
    with pytest.raises(ValueError, match=r"m: duplicate image_id 'a' at rows \[0, 2\]; 'b' at rows \[1, 4\];"):
        validate_manifest(df, "m")


def test_write_manifest_refuses_duplicates(tmp_path):
    df = make_manifest([dict(image_id="a", image_path="x", captions=["c"], domain="spain")] * 2)
    with pytest.raises(ValueError, match="duplicate image_id 'a'"):
        write_manifest(df, tmp_path / "m.csv")
    assert not (tmp_path / "m.csv").exists()


def test_release_csv_two_files_one_image_id(tmp_path):
    folder = release_country(tmp_path, "Finland", n=3)
    csv = folder / "instructblip_generation_finland_refine.csv"
    csv.write_text(csv.read_text().replace("finland_0002.jpg", "finland_0000.png"))
    with pytest.raises(ValueError, match=r"refine.csv: lines 2 and 4: image_name 'finland_0000.jpg' and "
                                         r"'finland_0000.png' give the same image_id 'finland/finland_0000'"):
        load_urbancross_country(tmp_path, "finland")


def test_release_csv_repeated_row_dropped_with_warning(tmp_path, uc_log):
    folder = release_country(tmp_path, "Finland", n=3)
    csv = folder / "instructblip_generation_finland_refine.csv"
    text = csv.read_text()
    csv.write_text(text + text.splitlines()[2] + "\n")                 # line 3 again, as line 5
    caption = pd.read_csv(csv).description[1]
    df = load_urbancross_country(tmp_path, "finland")
    assert df.captions[1] == [caption]
    assert any("were dropped (lines [5])" in r.getMessage() for r in uc_log.records if r.levelno == logging.WARNING)


def test_caption_json_duplicate_filename(tmp_path):
    j, imgs = caption_json(tmp_path)
    d = json.loads(j.read_text())
    d["images"][2]["filename"] = "finland_0000.jpg"
    j.write_text(json.dumps(d))
    with pytest.raises(ValueError, match=r"images\[0\] and images\[2\] \('finland_0000.jpg'\) give the same image_id"):
        load_karpathy_json(j, imgs, "rsicd")


# ---------------------------------------------------------------- captions: empty, very long

def test_empty_caption_names_the_row(tmp_path):
    folder = release_country(tmp_path, "Finland", n=3)
    csv = folder / "instructblip_generation_finland_refine.csv"
    df = pd.read_csv(csv)
    df.loc[1, "description"] = "   "
    df.to_csv(csv, index=False)
    with pytest.raises(ValueError, match=r"line 3 \(image_name='finland_0001.jpg'\): empty caption"):
        load_urbancross_country(tmp_path, "finland")


def test_empty_caption_in_manifest():
    df = make_manifest([dict(image_id="x", image_path="x.png", captions=[""], domain="spain", split="test")])
    with pytest.raises(ValueError, match=r"m.csv: row 0 \(image_id='x'\): empty caption"):
        validate_manifest(df, "m.csv")


def test_empty_caption_in_manifest_file_names_line(tmp_path, manifest_file):
    m = manifest_file(tmp_path)
    m.write_text(m.read_text().replace('""water""', '""   ""'))
    with pytest.raises(ValueError, match=r"manifest.csv: line 3 \(image_id='id1'\): empty caption"):
        read_manifest(m)


def test_empty_caption_list_in_manifest_file(tmp_path, manifest_file):
    m = manifest_file(tmp_path)
    m.write_text(m.read_text().replace('"[""a red roof""]"', "[]"))
    with pytest.raises(ValueError, match=r"manifest.csv: line 2 \(image_id='id0'\): no captions"):
        read_manifest(m)


LONG = ("a dense residential area with many buildings " * 250)[:10_000]


def assert_clipped(caption, uc_log, where):
    assert len(caption) <= MAX_CAPTION_CHARS and LONG.startswith(caption) and len(caption) > MAX_CAPTION_CHARS // 2
    warnings = [r.getMessage() for r in uc_log.records if r.levelno == logging.WARNING]
    assert any(f"1 caption(s) longer than {MAX_CAPTION_CHARS} characters truncated (first at {where}, 10000 characters)"
               in m for m in warnings), warnings


def test_long_caption_in_manifest_is_truncated_and_logged(tmp_path, uc_log, manifest_file):
    m = manifest_file(tmp_path, captions=[("short",), ("fine", LONG)])
    df = read_manifest(m)
    assert df.captions[1][0] == "fine"
    assert_clipped(df.captions[1][1], uc_log, "line 3")


def test_long_caption_in_release_csv(tmp_path, uc_log):
    folder = release_country(tmp_path, "Spain", n=3)
    csv = folder / "instructblip_generation_spain_refine.csv"
    df = pd.read_csv(csv)
    df.loc[2, "description"] = LONG
    df.to_csv(csv, index=False)
    assert_clipped(load_urbancross_country(tmp_path, "spain").captions[2][0], uc_log, "line 4")


def test_long_caption_in_caption_json(tmp_path, uc_log):
    j, imgs = caption_json(tmp_path)
    d = json.loads(j.read_text())
    d["images"][1]["sentences"][3]["raw"] = LONG
    j.write_text(json.dumps(d))
    assert_clipped(load_karpathy_json(j, imgs, "rsicd").captions[1][3], uc_log, "images[1]")


# ---------------------------------------------------------------- images the CSV does not list

def release_with_unlisted(root, n=4, listed=2):
    folder = release_country(root, "Spain", n=n)
    csv = folder / "instructblip_generation_spain_refine.csv"
    df = pd.read_csv(csv)
    df[df.image_name.isin([f"spain_{i:04d}.jpg" for i in range(listed)])].to_csv(csv, index=False)
    with zipfile.ZipFile(folder / "images.zip", "a") as z:
        z.writestr("images/notes.txt", "not an image")                # not an image: never offered
        z.writestr("images/.DS_Store", b"\0")
    return folder


def test_unlisted_images_are_logged_with_a_count(tmp_path, uc_log, messages):
    release_with_unlisted(tmp_path)
    df = load_urbancross_country(tmp_path, "spain")
    assert list(df.image_id) == ["spain/spain_0000", "spain/spain_0001"]
    warn = [m for m in messages(uc_log, logging.WARNING) if "not listed" in m]
    assert len(warn) == 1 and "2 image file(s)" in warn[0] and "spain_0002.jpg" in warn[0] and "unlisted_images" in warn[0], warn


def test_unlisted_images_are_offered_as_unlabeled_target_images(tmp_path):
    from urbancross.data import MANIFEST_COLUMNS, validate_manifest
    from urbancross.datasets import unlisted_images
    release_with_unlisted(tmp_path)
    un = unlisted_images(tmp_path, "spain")
    assert list(un.columns) == MANIFEST_COLUMNS
    assert list(un.image_id) == ["spain/spain_0002", "spain/spain_0003"]
    assert all(c == [] for c in un.captions) and set(un.domain) == {"spain"}
    assert load_image(un.image_path[1]).size == (16, 16)
    validate_manifest(un, "unlisted", captions_required=False)
    with pytest.raises(ValueError, match="no captions"):
        validate_manifest(un, "unlisted")                              # not a captioned manifest
    release_country(tmp_path / "full", "Spain", n=3)
    assert len(unlisted_images(tmp_path / "full", "spain")) == 0


def test_unlisted_image_with_the_id_of_a_listed_one_is_an_error(tmp_path):
    from urbancross.datasets import unlisted_images
    folder = release_with_unlisted(tmp_path)
    load_urbancross_country(tmp_path, "spain")
    Image.new("RGB", (4, 4)).save(folder / "images" / "spain_0000.png")
    with pytest.raises(ValueError, match=r"spain_0000.png.*'spain/spain_0000'.*spain_0000.jpg"):
        unlisted_images(tmp_path, "spain")


# ---------------------------------------------------------------- Unicode normalisation of file names

@pytest.fixture
def release_with_name(png_bytes, noisy):
    """`release_with_name(root, csv_name, file_name)`: a German release whose CSV lists `csv_name`.png, a 5-pixel
    image stored in images.zip as `file_name`.png."""
    def make(root, csv_name, file_name):
        folder = release_country(root, "Germany", n=2)
        with zipfile.ZipFile(folder / "images.zip", "a") as z:
            z.writestr(f"images/{file_name}.png", png_bytes(noisy(5, 5)))
        csv = folder / "instructblip_generation_germany_refine.csv"
        csv.write_text(csv.read_text() + f"{csv_name}.png,a cafe beside a square\n", encoding="utf-8")
        return folder
    return make


@pytest.mark.parametrize("csv_name,file_name", [(NFC, NFD), (NFD, NFC)], ids=["nfc-csv-nfd-file", "nfd-csv-nfc-file"])
def test_release_name_in_another_normalisation_is_matched_and_logged(tmp_path, uc_log, release_with_name, noisy,
                                                                      messages, csv_name, file_name):
    from urbancross.data import FALLBACKS
    from urbancross.datasets import unlisted_images
    folder = release_with_name(tmp_path, csv_name, file_name)
    before = FALLBACKS["unicode_name"]
    df = load_urbancross_country(tmp_path, "germany")
    row = df[df.captions.map(lambda c: c == ["a cafe beside a square"])].iloc[0]
    assert row.image_path == str(folder / "images" / f"{file_name}.png")
    assert np.array_equal(np.asarray(load_image(row.image_path)), noisy(5, 5))
    assert FALLBACKS["unicode_name"] == before + 1
    assert any("Unicode normalisation" in m and ascii(csv_name + ".png") in m and ascii(file_name + ".png") in m
               for m in messages(uc_log, logging.INFO)), messages(uc_log)
    assert len(unlisted_images(tmp_path, "germany")) == 0              # matched, so not unlisted


def test_release_name_exact_match_wins_over_its_lookalike(tmp_path, uc_log, release_with_name, noisy, messages):
    folder = release_with_name(tmp_path, NFC, NFD)
    load_urbancross_country(tmp_path, "germany")                              # extracts images/
    Image.fromarray(noisy(3, 3, 1)).save(folder / "images" / f"{NFC}.png")      # both forms on disk
    uc_log.clear()
    df = load_urbancross_country(tmp_path, "germany")
    assert str(folder / "images" / f"{NFC}.png") in set(df.image_path)
    assert str(folder / "images" / f"{NFD}.png") not in set(df.image_path)
    assert not any("Unicode normalisation" in m for m in messages(uc_log))
    assert any("1 image file(s) are not listed" in m and ascii(f"{NFD}.png")[1:-1] in ascii(m) for m in messages(uc_log))


def test_caption_json_name_in_another_normalisation(tmp_path, uc_log, messages):
    import json
    j, imgs = caption_json(tmp_path)
    (imgs / "finland_0001.jpg").rename(imgs / f"{NFD}.jpg")
    d = json.loads(j.read_text())
    d["images"][1]["filename"] = f"{NFC}.jpg"
    j.write_text(json.dumps(d))
    df = load_karpathy_json(j, imgs, "rsicd")
    assert df.image_path[1] == str(imgs / f"{NFD}.jpg")
    assert any("Unicode normalisation" in m for m in messages(uc_log, logging.INFO))


# ---------------------------------------------------------------- captions as text, physical lines (issue 23)

def _release_csv_text(tmp_path, body):
    """A Spanish release of 3 images whose caption CSV is `body` (after the header)."""
    folder = release_country(tmp_path, "Spain", n=3)
    csv = folder / "instructblip_generation_spain_refine.csv"
    csv.write_text("image_name,description\n" + body, encoding="utf-8")
    return csv


def test_caption_of_zero_width_spaces_is_named_with_its_physical_line(tmp_path):
    _release_csv_text(tmp_path, 'spain_0000.jpg,"a roof\nover two lines"\nspain_0001.jpg,\u200b\u200b\u2060\n')
    with pytest.raises(ValueError, match=r"refine.csv: line 4 .*spain_0001.jpg.*empty caption"):
        load_urbancross_country(tmp_path, "spain")


def test_csv_errors_name_physical_lines_after_a_caption_with_a_newline(tmp_path):
    _release_csv_text(tmp_path, 'spain_0000.jpg,a roof\nspain_0001.jpg,"two\nlines"\n,a field\n')
    with pytest.raises(ValueError, match=r"refine.csv: line 5: empty image_name"):
        load_urbancross_country(tmp_path, "spain")


def test_repeated_header_row_is_named(tmp_path):
    _release_csv_text(tmp_path, "spain_0000.jpg,a roof\nimage_name,description\nspain_0001.jpg,a field\n")
    with pytest.raises(ValueError, match=r"refine.csv: line 3: .*repeated header"):
        load_urbancross_country(tmp_path, "spain", check_images=False)


def test_manifest_file_errors_name_physical_lines(tmp_path, manifest_file):
    m = manifest_file(tmp_path, captions=(("a red roof",), ("two lakes",), ("a field",)))
    df = pd.read_csv(m, dtype=str, keep_default_na=False)
    df.loc[0, "tags"] = "roofs\nand yards"                               # row 1 spans lines 2-3
    df.loc[1, "split"] = "holdout"                                      # row 2 starts on line 4
    df.to_csv(m, index=False, lineterminator="\n")
    with pytest.raises(ValueError, match=r"manifest.csv: line 4 \(image_id='id1'\): split 'holdout'"):
        read_manifest(m)


def test_restval_split_is_folded_into_train_with_a_log_line(tmp_path, uc_log, messages):
    j, imgs = caption_json(tmp_path)
    d = json.loads(j.read_text())
    d["images"][0]["split"] = d["images"][1]["split"] = "restval"
    j.write_text(json.dumps(d))
    df = load_karpathy_json(j, imgs, "rsicd")
    assert list(df.split[:2]) == ["train", "train"]
    said = [m for m in messages(uc_log, logging.INFO) if "of split 'restval'" in m]
    assert len(said) == 1 and "2 image(s)" in said[0] and "train" in said[0], messages(uc_log)


def test_unicode_name_fallback_is_recorded_per_item(tmp_path, uc_log, release_with_name):
    from urbancross.data import FALLBACKS, fallback_summary
    release_with_name(tmp_path, NFC, NFD)
    before = FALLBACKS["unicode_name"]
    load_urbancross_country(tmp_path, "germany")
    summary = fallback_summary()["unicode_name"]
    assert FALLBACKS["unicode_name"] == before + 1 and summary["count"] == FALLBACKS["unicode_name"]
    assert any(NFC in item or ascii(NFC) in item for item in summary["first"]), summary


def test_note_fallback_keeps_the_counter_and_the_first_names():
    from urbancross.data import FALLBACKS, fallback_summary, note_fallback
    before = FALLBACKS["test_kind"]
    for i in range(12):
        note_fallback("test_kind", f"item{i}")
    s = fallback_summary()["test_kind"]
    assert FALLBACKS["test_kind"] == before + 12 == s["count"]
    assert s["first"][:5] == [f"item{i}" for i in range(5)] or before > 0
    assert len(s["first"]) <= 10
