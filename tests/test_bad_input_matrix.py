"""Bad-input matrix: every case gets an error naming the file/row, or a documented, logged fallback.

The cases and their documented behaviour are listed in nbs/01_data.ipynb ("Bad input at a glance").
No partial file is ever read as good: truncations are tried at many cut points.
"""
import io
import json
import logging
import struct
import zlib

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image, ImageFile

from urbancross.core import atomic_torch_save, safe_torch_load
from urbancross.data import (MAX_CAPTION_CHARS, ImageLoadError, ManifestDataset, load_image, load_karpathy_json,
                             load_urbancross_country, make_karpathy_fixture, make_manifest, make_urbancross_fixture,
                             read_manifest, validate_manifest, write_manifest)


def noisy(h=48, w=48, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def encoded(fmt, **kw):
    b = io.BytesIO()
    Image.fromarray(noisy()).save(b, format=fmt, **kw)
    return b.getvalue()


def cut_points(n):
    """Every cut in the last 64 bytes, plus 40 spread over the file (0 < cut < n)."""
    return sorted(set(range(max(1, n - 64), n)) | {int(x) for x in np.linspace(1, n - 1, 40)})


def manifest_file(tmp_path, captions=(("a red roof",), ("two lakes", "water"))):
    imgs = []
    for i in range(len(captions)):
        p = tmp_path / f"im{i}.png"
        Image.fromarray(noisy(8, 8, i)).save(p)
        imgs.append(p)
    df = make_manifest([dict(image_id=f"id{i}", image_path=str(p), captions=list(c), domain="spain",
                             split="train") for i, (p, c) in enumerate(zip(imgs, captions))])
    return write_manifest(df, tmp_path / "manifest.csv")


# ---------------------------------------------------------------- images: missing, truncated, corrupt

def test_missing_image_in_manifest_dataset(tmp_path):
    m = manifest_file(tmp_path)
    df = read_manifest(m)
    (tmp_path / "im1.png").unlink()
    with pytest.raises(FileNotFoundError, match="im1.png"):
        ManifestDataset(df, transform=lambda im: im, cache=True)       # decodes every image up front
    lazy = ManifestDataset(df, transform=lambda im: im)                # default: decoded on access
    with pytest.raises(FileNotFoundError, match="im1.png"):
        [lazy[i] for i in range(len(lazy))]


@pytest.mark.parametrize("fmt,kw", [("PNG", {}), ("JPEG", {}), ("JPEG", {"progressive": True}),
                                    ("TIFF", {}), ("TIFF", {"compression": "tiff_lzw"})],
                         ids=["png", "jpeg", "jpeg-progressive", "tiff", "tiff-lzw"])
def test_every_truncation_is_refused(tmp_path, fmt, kw):
    data = encoded(fmt, **kw)
    p = tmp_path / f"tile.{fmt.lower()}"
    p.write_bytes(data)
    assert load_image(p).size == (48, 48)            # the whole file is fine
    for cut in cut_points(len(data)):
        p.write_bytes(data[:cut])
        with pytest.raises(ImageLoadError, match=f"tile.{fmt.lower()}"):
            load_image(p)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "TIFF"])
def test_truncation_refused_even_if_pil_pads_truncated_images(tmp_path, fmt):
    p = tmp_path / f"t.{fmt.lower()}"
    data = encoded(fmt)
    p.write_bytes(data[: len(data) * 2 // 3])
    ImageFile.LOAD_TRUNCATED_IMAGES = True            # what some libraries switch on globally
    try:
        with pytest.raises(ImageLoadError, match="corrupt or truncated"):
            load_image(p)
        assert ImageFile.LOAD_TRUNCATED_IMAGES is True  # load_image restores the global setting
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = False


def test_png_with_bad_chunk_checksum(tmp_path):
    data = bytearray(encoded("PNG"))
    idat = data.find(b"IDAT")
    data[idat + 20] ^= 0xFF                            # payload changed, CRC not updated
    p = tmp_path / "crc.png"
    p.write_bytes(bytes(data))
    with pytest.raises(ImageLoadError, match="crc.png is corrupt or truncated"):
        load_image(p)


def test_garbage_with_image_extension(tmp_path):
    p = tmp_path / "fake.jpg"
    p.write_bytes(b"\xff\xd8\xff" + b"not really a jpeg" * 10)
    with pytest.raises(ImageLoadError, match="fake.jpg"):
        load_image(p)


def test_corrupt_image_fails_when_dataset_is_built_or_read(tmp_path):
    df = read_manifest(manifest_file(tmp_path))
    (tmp_path / "im0.png").write_bytes((tmp_path / "im0.png").read_bytes()[:30])
    with pytest.raises(ImageLoadError, match="im0.png"):
        ManifestDataset(df, transform=lambda im: im, cache=True)
    with pytest.raises(ImageLoadError, match="im0.png"):
        ManifestDataset(df, transform=lambda im: im)[0]


# ---------------------------------------------------------------- images: zero size

def test_zero_byte_image(tmp_path):
    p = tmp_path / "empty.png"
    p.write_bytes(b"")
    with pytest.raises(ImageLoadError, match=r"empty.png is an empty file \(0 bytes\)"):
        load_image(p)


def png_with_size(w, h):
    def chunk(t, d):
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))


@pytest.mark.parametrize("w,h", [(0, 0), (5, 0), (0, 5)])
def test_zero_size_image(tmp_path, w, h):
    p = tmp_path / "flat.png"
    p.write_bytes(png_with_size(w, h))
    with pytest.raises(ImageLoadError, match=rf"flat.png has zero size \({w}x{h}"):
        load_image(p)


# ---------------------------------------------------------------- images: converted to RGB, logged

@pytest.mark.parametrize("name,make,expected", [
    ("gray.png", lambda: Image.new("L", (4, 3), 9), [9, 9, 9]),
    ("gray.jpg", lambda: Image.new("L", (4, 3), 200), None),
    ("rgba.png", lambda: Image.new("RGBA", (4, 3), (10, 20, 30, 0)), [10, 20, 30]),
    ("la.png", lambda: Image.new("LA", (4, 3), (50, 128)), [50, 50, 50]),
    ("pal.png", lambda: Image.new("RGB", (4, 3), (0, 0, 255)).convert("P"), [0, 0, 255]),
    ("bits.png", lambda: Image.new("1", (4, 3), 1), [255, 255, 255]),
    ("cmyk.jpg", lambda: Image.new("CMYK", (4, 3), (0, 0, 0, 0)), None),
    ("deep16.png", lambda: Image.fromarray((np.arange(12, dtype=np.uint16) * 5000).reshape(3, 4)), None),
    ("deep16.tif", lambda: Image.fromarray((np.arange(12, dtype=np.uint16) * 5000).reshape(3, 4)), None),
    ("float.tif", lambda: Image.fromarray(np.linspace(-1, 1, 12, dtype=np.float32).reshape(3, 4)), None),
], ids=lambda v: v if isinstance(v, str) else "")
def test_unusual_modes_load_as_rgb_and_are_logged(tmp_path, uc_log, name, make, expected):
    src = make()
    p = tmp_path / name
    src.save(p)
    im = load_image(p)
    arr = np.asarray(im)
    assert im.mode == "RGB" and arr.dtype == np.uint8 and arr.shape == (3, 4, 3)
    if expected is not None:
        assert arr[0, 0].tolist() == expected
    if src.mode in ("I;16", "I", "F"):               # documented: per-image min-max stretch to 0..255
        assert arr.min() == 0 and arr.max() == 255
        assert (np.diff(arr[..., 0].ravel().astype(int)) >= 0).all()   # order of values kept
    msgs = [r.getMessage() for r in uc_log.records if r.name == "urbancross.data"]
    assert any(f"{p} is mode " in m and "converted to 8-bit RGB" in m for m in msgs), msgs


def test_rgb_is_not_logged(tmp_path, uc_log):
    p = tmp_path / "rgb.png"
    Image.fromarray(noisy(4, 4)).save(p)
    assert np.array_equal(np.asarray(load_image(p)), noisy(4, 4))
    assert not [r for r in uc_log.records if "converted" in r.getMessage()]


def test_float_image_with_nan_is_refused(tmp_path):
    p = tmp_path / "nan.tif"
    a = np.ones((3, 4), np.float32); a[1, 2] = np.nan
    Image.fromarray(a).save(p)
    with pytest.raises(ImageLoadError, match="nan.tif.*NaN"):
        load_image(p)


def test_constant_16bit_image_becomes_black(tmp_path):
    p = tmp_path / "flat16.png"
    Image.fromarray(np.full((3, 3), 4000, np.uint16)).save(p)
    assert np.asarray(load_image(p)).max() == 0


# ---------------------------------------------------------------- CSV encoding, emptiness, truncation

def test_non_utf8_manifest_names_byte_and_line(tmp_path):
    m = manifest_file(tmp_path)
    lines = m.read_bytes().split(b"\n")
    lines[2] = lines[2].replace(b"two lakes", b"two l\xe4kes")   # latin-1 byte on line 3
    m.write_bytes(b"\n".join(lines))
    offset = m.read_bytes().index(b"\xe4")
    with pytest.raises(ValueError, match=rf"manifest.csv: not valid UTF-8 at byte {offset} \(line 3, byte \d+"):
        read_manifest(m)


def test_non_utf8_release_csv_far_into_the_file(tmp_path):
    folder = make_urbancross_fixture(tmp_path, "Germany", n=2)
    csv = folder / "instructblip_generation_germany_refine.csv"
    rows = "".join(f"tile{i % 2}.png,caption number {i} of a long file\n" for i in range(5000))
    csv.write_bytes(b"image_name,description\n" + rows.encode() + b"tile1.png,Stra\xdfe\n")
    with pytest.raises(ValueError, match=r"instructblip_generation_germany_refine.csv: not valid UTF-8 at byte \d+ \(line 5002,"):
        load_urbancross_country(tmp_path, "germany")


def test_utf8_bom_is_accepted(tmp_path):
    m = manifest_file(tmp_path)
    m.write_bytes(b"\xef\xbb\xbf" + m.read_bytes())
    assert list(read_manifest(m).image_id) == ["id0", "id1"]


def test_empty_csv(tmp_path):
    (tmp_path / "manifest.csv").write_bytes(b"")
    with pytest.raises(ValueError, match="manifest.csv: file is empty"):
        read_manifest(tmp_path / "manifest.csv")


def test_manifest_cut_mid_row_is_refused(tmp_path):
    m = manifest_file(tmp_path)
    text = m.read_text()
    for cut in (1, 3, 10, len(text.splitlines()[-1])):
        m.write_text(text[:-cut])
        with pytest.raises(ValueError, match="manifest.csv"):
            read_manifest(m)


def test_release_csv_without_final_newline_warns(tmp_path, uc_log):
    folder = make_urbancross_fixture(tmp_path, "Spain", n=2)
    csv = folder / "instructblip_generation_spain_refine.csv"
    csv.write_text(csv.read_text().rstrip("\n"))
    assert len(load_urbancross_country(tmp_path, "spain")) == 2
    assert any("does not end with a newline" in r.getMessage() and csv.name in r.getMessage()
               for r in uc_log.records if r.levelno == logging.WARNING)


# ---------------------------------------------------------------- duplicate ids

def test_duplicate_ids_in_manifest_file_name_lines(tmp_path):
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
    folder = make_urbancross_fixture(tmp_path, "Finland", n=3)
    csv = folder / "instructblip_generation_finland_refine.csv"
    csv.write_text(csv.read_text().replace("tile2.png", "tile0.jpg"))
    with pytest.raises(ValueError, match=r"refine.csv: lines 2 and 4: image_name 'tile0.png' and 'tile0.jpg' "
                                         r"give the same image_id 'finland/tile0'"):
        load_urbancross_country(tmp_path, "finland")


def test_release_csv_repeated_row_dropped_with_warning(tmp_path, uc_log):
    folder = make_urbancross_fixture(tmp_path, "Finland", n=3)
    csv = folder / "instructblip_generation_finland_refine.csv"
    csv.write_text(csv.read_text() + "tile1.png,an area with 1 lakes and some houses\n")
    df = load_urbancross_country(tmp_path, "finland")
    assert df.captions[1] == ["an area with 1 lakes and some houses"]
    assert any("were dropped (lines [6])" in r.getMessage() for r in uc_log.records if r.levelno == logging.WARNING)


def test_caption_json_duplicate_filename(tmp_path):
    j, imgs = make_karpathy_fixture(tmp_path, n=3)
    d = json.loads(j.read_text())
    d["images"][2]["filename"] = "airport_0.jpg"
    j.write_text(json.dumps(d))
    with pytest.raises(ValueError, match=r"images\[0\] and images\[2\] \('airport_0.jpg'\) give the same image_id"):
        load_karpathy_json(j, imgs, "rsicd")


# ---------------------------------------------------------------- captions: empty, very long

def test_empty_caption_in_manifest_file_names_line(tmp_path):
    m = manifest_file(tmp_path)
    m.write_text(m.read_text().replace('""water""', '""   ""'))
    with pytest.raises(ValueError, match=r"manifest.csv: line 3 \(image_id='id1'\): empty caption"):
        read_manifest(m)


def test_empty_caption_list_in_manifest_file(tmp_path):
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


def test_long_caption_in_manifest_is_truncated_and_logged(tmp_path, uc_log):
    m = manifest_file(tmp_path, captions=[("short",), ("fine", LONG)])
    df = read_manifest(m)
    assert df.captions[1][0] == "fine"
    assert_clipped(df.captions[1][1], uc_log, "line 3")


def test_long_caption_in_release_csv(tmp_path, uc_log):
    folder = make_urbancross_fixture(tmp_path, "Spain", n=3)
    csv = folder / "instructblip_generation_spain_refine.csv"
    df = pd.read_csv(csv)
    df.loc[2, "description"] = LONG
    df.to_csv(csv, index=False)
    assert_clipped(load_urbancross_country(tmp_path, "spain").captions[2][0], uc_log, "line 4")


def test_long_caption_in_caption_json(tmp_path, uc_log):
    j, imgs = make_karpathy_fixture(tmp_path, n=3)
    d = json.loads(j.read_text())
    d["images"][1]["sentences"][3]["raw"] = LONG
    j.write_text(json.dumps(d))
    assert_clipped(load_karpathy_json(j, imgs, "rsicd").captions[1][3], uc_log, "images[1]")


# ---------------------------------------------------------------- checkpoints (urbancross.core)

@pytest.fixture
def checkpoint(tmp_path):
    p = tmp_path / "model.pt"
    atomic_torch_save({"model": {"w": torch.arange(10_000, dtype=torch.float32)}, "epoch": 3}, p)
    return p


def test_good_checkpoint_loads(checkpoint):
    assert safe_torch_load(checkpoint)["epoch"] == 3


def test_truncated_checkpoint(checkpoint):
    data = checkpoint.read_bytes()
    for cut in cut_points(len(data)):
        checkpoint.write_bytes(data[:cut])
        with pytest.raises(ValueError, match=r"checkpoint .*model.pt is corrupt"):
            safe_torch_load(checkpoint)


def test_empty_and_missing_checkpoint(tmp_path):
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(ValueError, match="empty.pt is corrupt"):
        safe_torch_load(tmp_path / "empty.pt")
    with pytest.raises(FileNotFoundError, match="gone.pt"):
        safe_torch_load(tmp_path / "gone.pt")


class NotWeights:
    pass


def test_checkpoint_with_code_is_refused(tmp_path):
    torch.save({"obj": NotWeights()}, tmp_path / "pickle.pt")
    with pytest.raises(ValueError, match="pickle.pt is corrupt or not a weights-only torch file"):
        safe_torch_load(tmp_path / "pickle.pt")
