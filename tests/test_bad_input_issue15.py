"""Bad input that used to get through (issue 15, "Bad input").

Each case gets an error naming the file (and zip member), or a logged, counted fallback, as documented in
nbs/01_data.ipynb ("Bad input at a glance") and nbs/03_segments.ipynb. The bad files are built here, small:
Pillow's pixel limit is lowered for a test instead of writing huge images, and restored afterwards.
The new names are imported inside the tests, so that each test fails on its own without the change.
"""
import io
import logging
import os
import struct
import unicodedata
import warnings
import zipfile

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from urbancross.data import ImageLoadError, load_image, load_karpathy_json, load_urbancross_country, make_urbancross_fixture

NFC, NFD = unicodedata.normalize("NFC", "café_1"), unicodedata.normalize("NFD", "café_1")


@pytest.fixture
def pixel_limit():
    """Set Pillow's `Image.MAX_IMAGE_PIXELS` for one test (restored afterwards)."""
    old = Image.MAX_IMAGE_PIXELS
    yield lambda n: setattr(Image, "MAX_IMAGE_PIXELS", n)
    Image.MAX_IMAGE_PIXELS = old


def messages(caplog, level=logging.DEBUG):
    return [r.getMessage() for r in caplog.records if r.levelno >= level]


def png_bytes(arr, **kw):
    b = io.BytesIO()
    Image.fromarray(arr).save(b, "PNG", **kw)
    return b.getvalue()


def noisy(h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


# ---------------------------------------------------------------- pixel limit (decompression bombs)

@pytest.mark.parametrize("limit", [1000, 500], ids=["between-warning-and-error", "over-twice-the-limit"])
def test_load_image_refuses_images_over_the_pixel_limit(tmp_path, pixel_limit, limit):
    p = tmp_path / "big.png"
    p.write_bytes(png_bytes(noisy(40, 40)))                   # 1600 pixels
    pixel_limit(limit)
    with warnings.catch_warnings():
        warnings.simplefilter("error")                         # no bare Pillow warning may escape either
        with pytest.raises(ImageLoadError) as e:
            load_image(p)
    msg = str(e.value)
    assert str(p) in msg and "1,600 pixels" in msg and f"{limit:,}" in msg, msg
    assert "PIL.Image.MAX_IMAGE_PIXELS" in msg, msg            # says how to raise the limit
    pixel_limit(1600)
    assert load_image(p).size == (40, 40)                      # at the limit: loads


def test_segment_zip_over_the_pixel_limit_names_zip_member_and_limit(tmp_path, pixel_limit):
    from urbancross.segments import UpstreamSegmentZip
    zp = tmp_path / "image_segments.zip"
    with zipfile.ZipFile(zp, "w") as z:
        z.writestr("image_segments/t_1/t_1_0.png", png_bytes(noisy(40, 40)))
    with UpstreamSegmentZip(zp) as uz:
        for limit in (1000, 500):
            pixel_limit(limit)
            with warnings.catch_warnings():
                warnings.simplefilter("error")
                with pytest.raises(ImageLoadError) as e:
                    uz.load("t_1", 2, 8)
            msg = str(e.value)
            assert f"{zp}:image_segments/t_1/t_1_0.png" in msg and "1,600 pixels" in msg, msg
            assert "PIL.Image.MAX_IMAGE_PIXELS" in msg, msg


def test_segment_manifest_with_a_bomb_in_the_release_zip_names_zip_and_member(tmp_path, pixel_limit):
    from urbancross.data import make_manifest
    from urbancross.segments import SegmentCache, SegmentConfig, make_segmenter, segment_manifest
    Image.fromarray(noisy(16, 16)).save(tmp_path / "t_1.png")
    zp = tmp_path / "image_segments.zip"
    with zipfile.ZipFile(zp, "w") as z:
        z.writestr("image_segments/t_1/t_1_0.png", png_bytes(noisy(40, 40)))       # 1600 pixels
    df = make_manifest([dict(image_id="finland/t_1", image_path=str(tmp_path / "t_1.png"), captions=["x"], domain="finland")])
    pixel_limit(1000)                                                             # the 16x16 image itself is fine
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ImageLoadError, match=rf"{zp}:image_segments/t_1/t_1_0.png is refused as a decompression bomb: "
                                                 r"it has 1,600 pixels, more than PIL.Image.MAX_IMAGE_PIXELS = 1,000"):
            segment_manifest(df, make_segmenter("superpixel"), SegmentCache(tmp_path / "cache"), num_seg=2,
                             cfg=SegmentConfig(num_stored=2, crop_size=8), release={"finland": zp})


def _patch_method(data: bytes, method: int) -> bytes:
    """A one-member zip with its compression method set to `method` in both headers."""
    data = bytearray(data)
    data[8:10] = struct.pack("<H", method)                                    # local file header
    cd = data.rfind(b"PK\x01\x02")
    data[cd + 10:cd + 12] = struct.pack("<H", method)                          # central directory
    return bytes(data)


def test_segment_zip_unreadable_member_names_zip_and_member(tmp_path):
    from urbancross.segments import UpstreamSegmentZip
    member = "image_segments/t_1/t_1_0.png"
    plain = io.BytesIO()
    with zipfile.ZipFile(plain, "w") as z:
        z.writestr(member, png_bytes(noisy(8, 8)))
    (tmp_path / "method.zip").write_bytes(_patch_method(plain.getvalue(), 97))   # a method zipfile lacks
    enc = bytearray(plain.getvalue())                                           # the "encrypted" flag bit set
    enc[6] |= 1; enc[enc.rfind(b"PK\x01\x02") + 8] |= 1                       # in the local and central header
    (tmp_path / "encrypted.zip").write_bytes(bytes(enc))
    for name in ("method.zip", "encrypted.zip"):
        with UpstreamSegmentZip(tmp_path / name) as uz:
            with pytest.raises(ImageLoadError, match=f"{name}:{member}"):
                uz.load("t_1", 2, 8)


# ---------------------------------------------------------------- EXIF orientation

def oriented(path, arr, orientation, fmt):
    im = Image.fromarray(arr)
    exif = im.getexif()
    exif[0x0112] = orientation
    im.save(path, fmt, exif=exif.tobytes())


@pytest.mark.parametrize("orientation,transpose", [(3, Image.Transpose.ROTATE_180), (6, Image.Transpose.ROTATE_270),
                                                   (8, Image.Transpose.ROTATE_90), (2, Image.Transpose.FLIP_LEFT_RIGHT)])
def test_exif_orientation_is_applied_logged_and_counted(tmp_path, uc_log, orientation, transpose):
    from urbancross.data import FALLBACKS
    arr = noisy(4, 6)
    p = tmp_path / "turned.png"
    oriented(p, arr, orientation, "PNG")
    before = FALLBACKS["exif_orientation"]
    got = np.asarray(load_image(p))
    assert np.array_equal(got, np.asarray(Image.fromarray(arr).transpose(transpose)))
    assert FALLBACKS["exif_orientation"] == before + 1
    assert any(str(p) in m and f"EXIF orientation {orientation}" in m for m in messages(uc_log)), messages(uc_log)


def test_exif_orientation_in_jpeg_and_upright_images_untouched(tmp_path, uc_log):
    oriented(tmp_path / "turned.jpg", noisy(4, 6), 6, "JPEG")
    assert load_image(tmp_path / "turned.jpg").size == (4, 6)
    oriented(tmp_path / "upright.png", noisy(4, 6), 1, "PNG")
    assert np.array_equal(np.asarray(load_image(tmp_path / "upright.png")), noisy(4, 6))
    assert not any("upright.png" in m for m in messages(uc_log))


# ---------------------------------------------------------------- symbolic links

def test_symlink_loop_is_named_as_a_loop(tmp_path):
    a, b = tmp_path / "a.png", tmp_path / "b.png"
    os.symlink(b, a); os.symlink(a, b)
    with pytest.raises(ImageLoadError, match=r"a.png is a symbolic link loop"):
        load_image(a)
    os.symlink(tmp_path / "gone.png", tmp_path / "dangling.png")
    with pytest.raises(FileNotFoundError, match=r"dangling.png is a symbolic link to .*gone.png.*which does not exist"):
        load_image(tmp_path / "dangling.png")


def test_symlink_loop_in_release_folder_is_named(tmp_path):
    make_urbancross_fixture(tmp_path, "Finland", n=3)
    load_urbancross_country(tmp_path, "finland")                       # extracts images/
    tile = tmp_path / "Finland" / "images" / "tile1.png"
    tile.unlink(); os.symlink(tile, tile)                              # a link to itself
    with pytest.raises(ImageLoadError, match=r"line 3 .*'tile1.png'.*tile1.png is a symbolic link loop"):
        load_urbancross_country(tmp_path, "finland")


def test_symlink_loop_in_caption_json_is_named(tmp_path):
    from urbancross.data import make_karpathy_fixture
    j, imgs = make_karpathy_fixture(tmp_path, n=3)
    (imgs / "airport_2.jpg").unlink(); os.symlink(imgs / "airport_2.jpg", imgs / "airport_2.jpg")
    with pytest.raises(ImageLoadError, match=r"images\[2\]: image .*airport_2.jpg is a symbolic link loop"):
        load_karpathy_json(j, imgs, "rsicd")


# ---------------------------------------------------------------- images the CSV does not list

def release_with_unlisted(root, n=4, listed=2):
    folder = make_urbancross_fixture(root, "Spain", n=n)
    csv = folder / "instructblip_generation_spain_refine.csv"
    df = pd.read_csv(csv)
    df[df.image_name.isin([f"tile{i}.png" for i in range(listed)])].to_csv(csv, index=False)
    with zipfile.ZipFile(folder / "images.zip", "a") as z:
        z.writestr("images/notes.txt", "not an image")                # not an image: never offered
        z.writestr("images/.DS_Store", b"\0")
    return folder


def test_unlisted_images_are_logged_with_a_count(tmp_path, uc_log):
    release_with_unlisted(tmp_path)
    df = load_urbancross_country(tmp_path, "spain")
    assert list(df.image_id) == ["spain/tile0", "spain/tile1"]
    warn = [m for m in messages(uc_log, logging.WARNING) if "not listed" in m]
    assert len(warn) == 1 and "2 image file(s)" in warn[0] and "tile2.png" in warn[0] and "unlisted_images" in warn[0], warn


def test_unlisted_images_are_offered_as_unlabeled_target_images(tmp_path):
    from urbancross.data import MANIFEST_COLUMNS, unlisted_images, validate_manifest
    release_with_unlisted(tmp_path)
    un = unlisted_images(tmp_path, "spain")
    assert list(un.columns) == MANIFEST_COLUMNS
    assert list(un.image_id) == ["spain/tile2", "spain/tile3"]
    assert all(c == [] for c in un.captions) and set(un.domain) == {"spain"}
    assert load_image(un.image_path[1]).size == (16, 16)
    validate_manifest(un, "unlisted", captions_required=False)
    with pytest.raises(ValueError, match="no captions"):
        validate_manifest(un, "unlisted")                              # not a captioned manifest
    make_urbancross_fixture(tmp_path / "full", "Spain", n=3)
    assert len(unlisted_images(tmp_path / "full", "spain")) == 0


def test_unlisted_image_with_the_id_of_a_listed_one_is_an_error(tmp_path):
    from urbancross.data import unlisted_images
    folder = release_with_unlisted(tmp_path)
    load_urbancross_country(tmp_path, "spain")
    Image.new("RGB", (4, 4)).save(folder / "images" / "tile0.jpg")
    with pytest.raises(ValueError, match=r"tile0.jpg.*image_id 'spain/tile0'.*tile0.png"):
        unlisted_images(tmp_path, "spain")


# ---------------------------------------------------------------- Unicode normalisation of file names

def release_with_name(root, csv_name, file_name):
    folder = make_urbancross_fixture(root, "Germany", n=2)
    with zipfile.ZipFile(folder / "images.zip", "a") as z:
        z.writestr(f"images/{file_name}.png", png_bytes(noisy(5, 5)))
    csv = folder / "instructblip_generation_germany_refine.csv"
    csv.write_text(csv.read_text() + f"{csv_name}.png,a cafe beside a square\n", encoding="utf-8")
    return folder


@pytest.mark.parametrize("csv_name,file_name", [(NFC, NFD), (NFD, NFC)], ids=["nfc-csv-nfd-file", "nfd-csv-nfc-file"])
def test_release_name_in_another_normalisation_is_matched_and_logged(tmp_path, uc_log, csv_name, file_name):
    from urbancross.data import FALLBACKS, unlisted_images
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


def test_release_name_exact_match_wins_over_its_lookalike(tmp_path, uc_log):
    folder = release_with_name(tmp_path, NFC, NFD)
    load_urbancross_country(tmp_path, "germany")                              # extracts images/
    Image.fromarray(noisy(3, 3, 1)).save(folder / "images" / f"{NFC}.png")      # both forms on disk
    uc_log.clear()
    df = load_urbancross_country(tmp_path, "germany")
    assert str(folder / "images" / f"{NFC}.png") in set(df.image_path)
    assert str(folder / "images" / f"{NFD}.png") not in set(df.image_path)
    assert not any("Unicode normalisation" in m for m in messages(uc_log))
    assert any("1 image file(s) are not listed" in m and ascii(f"{NFD}.png")[1:-1] in ascii(m) for m in messages(uc_log))


def test_caption_json_name_in_another_normalisation(tmp_path, uc_log):
    from urbancross.data import make_karpathy_fixture
    import json
    j, imgs = make_karpathy_fixture(tmp_path, n=3)
    (imgs / "airport_1.jpg").rename(imgs / f"{NFD}.jpg")
    d = json.loads(j.read_text())
    d["images"][1]["filename"] = f"{NFC}.jpg"
    j.write_text(json.dumps(d))
    df = load_karpathy_json(j, imgs, "rsicd")
    assert df.image_path[1] == str(imgs / f"{NFD}.jpg")
    assert any("Unicode normalisation" in m for m in messages(uc_log, logging.INFO))


def test_segment_zip_stem_in_another_normalisation(tmp_path, uc_log):
    from urbancross.segments import make_upstream_segments_fixture, UpstreamSegmentZip
    zp = make_upstream_segments_fixture(tmp_path / "image_segments.zip", {NFD: 2})
    with UpstreamSegmentZip(zp) as uz:
        assert uz.count(NFC) == 2
        crops, valid = uz.load(NFC, 4, 8)
        assert valid.tolist() == [True, True, False, False]
    assert any("Unicode normalisation" in m and str(zp) in m for m in messages(uc_log, logging.INFO)), messages(uc_log)


# ---------------------------------------------------------------- progress bars

class _Tty(io.StringIO):
    def isatty(self):
        return True


def test_progress_is_quiet_on_ci_and_off_a_terminal(monkeypatch):
    from urbancross.data import progress
    monkeypatch.delenv("CI", raising=False)
    out = _Tty()
    assert list(progress(range(3), desc="things", file=out, mininterval=0)) == [0, 1, 2]
    assert "things" in out.getvalue() and "3/3" in out.getvalue()
    quiet = io.StringIO()                                              # not a terminal
    assert list(progress(range(3), desc="things", file=quiet)) == [0, 1, 2]
    assert quiet.getvalue() == ""
    monkeypatch.setenv("CI", "1")
    out = _Tty()
    assert list(progress(range(3), desc="things", file=out)) == [0, 1, 2]
    assert out.getvalue() == ""
