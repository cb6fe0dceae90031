"""Bad image files, read one at a time by `load_image`: missing, truncated or corrupt, not an image, empty or of zero
size, over Pillow's pixel limit (decompression bombs), symbolic-link loops, unusual modes (converted to 8-bit RGB and
logged), EXIF orientation (applied, logged and counted).

Each case gets an error naming the file, or a documented, logged fallback, as listed in nbs/01_data.ipynb ("Bad input
at a glance"). No partial file is ever read as good: truncations are tried at many cut points. The bad files are
built here, small: Pillow's pixel limit is lowered for a test (`pixel_limit`) instead of writing huge images.
The names added for issue 15 (pixel limit, EXIF, symbolic links) are imported inside the tests, so that each test
fails on its own without them.
"""
import io
import logging
import zipfile
import os
import struct
import warnings
import zlib

import numpy as np
import pytest
from PIL import Image, ImageFile

from urbancross.data import ImageLoadError, load_image


@pytest.fixture
def encoded(noisy):
    """`encoded(fmt, **kw)`: a 48-pixel noise image encoded as `fmt` (Pillow's format name)."""
    def encode(fmt, **kw):
        b = io.BytesIO()
        Image.fromarray(noisy()).save(b, format=fmt, **kw)
        return b.getvalue()
    return encode


# ---------------------------------------------------------------- missing, truncated, corrupt, not an image

def test_missing_image(tmp_path):
    with pytest.raises(FileNotFoundError, match="gone.png"):
        load_image(tmp_path / "gone.png")


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


@pytest.mark.parametrize("fmt,kw", [("PNG", {}), ("JPEG", {}), ("JPEG", {"progressive": True}),
                                    ("TIFF", {}), ("TIFF", {"compression": "tiff_lzw"})],
                         ids=["png", "jpeg", "jpeg-progressive", "tiff", "tiff-lzw"])
def test_every_truncation_is_refused(tmp_path, encoded, cut_points, fmt, kw):
    data = encoded(fmt, **kw)
    p = tmp_path / f"tile.{fmt.lower()}"
    p.write_bytes(data)
    assert load_image(p).size == (48, 48)            # the whole file is fine
    for cut in cut_points(len(data)):
        p.write_bytes(data[:cut])
        with pytest.raises(ImageLoadError, match=f"tile.{fmt.lower()}"):
            load_image(p)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "TIFF"])
def test_truncation_refused_even_if_pil_pads_truncated_images(tmp_path, encoded, fmt):
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


def test_png_with_bad_chunk_checksum(tmp_path, encoded):
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


# ---------------------------------------------------------------- zero size

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


# ---------------------------------------------------------------- pixel limit (decompression bombs)

@pytest.mark.parametrize("limit", [1000, 500], ids=["between-warning-and-error", "over-twice-the-limit"])
def test_load_image_refuses_images_over_the_pixel_limit(tmp_path, pixel_limit, png_bytes, noisy, limit):
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


# ---------------------------------------------------------------- symbolic links

def test_symlink_loop_is_named_as_a_loop(tmp_path):
    a, b = tmp_path / "a.png", tmp_path / "b.png"
    os.symlink(b, a); os.symlink(a, b)
    with pytest.raises(ImageLoadError, match=r"a.png is a symbolic link loop"):
        load_image(a)
    os.symlink(tmp_path / "gone.png", tmp_path / "dangling.png")
    with pytest.raises(FileNotFoundError, match=r"dangling.png is a symbolic link to .*gone.png.*which does not exist"):
        load_image(tmp_path / "dangling.png")


# ---------------------------------------------------------------- converted to RGB, logged

@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "I;16"])
def test_unusual_modes_become_rgb(tmp_path, mode):
    p = tmp_path / "m.png"
    Image.new(mode, (8, 8)).save(p)
    assert load_image(p).mode == "RGB"


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


def test_rgb_is_not_logged(tmp_path, uc_log, noisy):
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


# ---------------------------------------------------------------- EXIF orientation

def oriented(path, arr, orientation, fmt):
    im = Image.fromarray(arr)
    exif = im.getexif()
    exif[0x0112] = orientation
    im.save(path, fmt, exif=exif.tobytes())


@pytest.mark.parametrize("orientation,transpose", [(3, Image.Transpose.ROTATE_180), (6, Image.Transpose.ROTATE_270),
                                                   (8, Image.Transpose.ROTATE_90), (2, Image.Transpose.FLIP_LEFT_RIGHT)])
def test_exif_orientation_is_applied_logged_and_counted(tmp_path, uc_log, noisy, messages, orientation, transpose):
    from urbancross.data import FALLBACKS
    arr = noisy(4, 6)
    p = tmp_path / "turned.png"
    oriented(p, arr, orientation, "PNG")
    before = FALLBACKS["exif_orientation"]
    got = np.asarray(load_image(p))
    assert np.array_equal(got, np.asarray(Image.fromarray(arr).transpose(transpose)))
    assert FALLBACKS["exif_orientation"] == before + 1
    assert any(str(p) in m and f"EXIF orientation {orientation}" in m for m in messages(uc_log)), messages(uc_log)


def test_exif_orientation_in_jpeg_and_upright_images_untouched(tmp_path, uc_log, noisy, messages):
    oriented(tmp_path / "turned.jpg", noisy(4, 6), 6, "JPEG")
    assert load_image(tmp_path / "turned.jpg").size == (4, 6)
    oriented(tmp_path / "upright.png", noisy(4, 6), 1, "PNG")
    assert np.array_equal(np.asarray(load_image(tmp_path / "upright.png")), noisy(4, 6))
    assert not any("upright.png" in m for m in messages(uc_log))


# ---------------------------------------------------------------- images.zip of a release country (issue 23)

def _release(root, n=3):
    """The Spain folder of a release fixture of `n` 16-pixel images per country, no unlisted images."""
    from urbancross.fixtures import write_release_fixture
    write_release_fixture(root, images_per_domain=n, image_size=16, captions_per_image=1, segment_share=0,
                          unlisted_per_domain=0)
    return root / "Spain"


def _rezip(folder, extra=(), top="images/"):
    """Rewrite `folder`/images.zip: its JPEGs under `top`, then the `extra` (name, bytes) members."""
    zp = folder / "images.zip"
    with zipfile.ZipFile(zp) as z:
        jpegs = [(n.rsplit("/", 1)[-1], z.read(n)) for n in z.namelist() if n.endswith(".jpg")]
    with zipfile.ZipFile(zp, "w") as z:
        for name, data in jpegs:
            z.writestr(top + name, data)
        for name, data in extra:
            z.writestr(zipfile.ZipInfo(name), data)
    return zp, jpegs


HOSTILE = ["../../evil.jpg", "/abs/evil2.jpg", "images/../../../evil3.jpg"]


def test_images_zip_with_macos_folder_readme_and_traversal_names_loads(tmp_path, uc_log, messages, encoded):
    from urbancross.core import get_config
    from urbancross.datasets import archive_report, load_urbancross_country
    folder = _release(tmp_path / "raw")
    junk = [("__MACOSX/", b""), ("__MACOSX/images/._spain_0000.jpg", b"\0\5\26\7junk"), ("README.txt", b"read me"),
            ("images/.DS_Store", b"\0\0\0\1Bud1"), ("images/Thumbs.db", b"\xd0\xcf"), ("notes/licence.md", b"cc-by")]
    _rezip(folder, junk + [(n, encoded("JPEG")) for n in HOSTILE])
    df = load_urbancross_country(tmp_path / "raw", "spain")
    assert list(df.image_id) == [f"spain/spain_{i:04d}" for i in range(3)]
    assert all(load_image(p).size == (16, 16) for p in df.image_path)
    assert not [p for p in tmp_path.rglob("evil*")], "a hostile member was written"
    warned = " ".join(messages(uc_log, logging.WARNING))
    assert all(n in warned for n in HOSTILE), warned
    report = archive_report(get_config("smoke", data_source="urbancross", data_root=str(tmp_path / "raw"),
                                       domains=("spain",)))
    r = next(r for r in report if r["archive"].endswith("images.zip"))
    assert r["images"] == 3 and sorted(r["refused"]) == sorted(HOSTILE), r
    assert r["skipped"] == {"macOS metadata": 1, "system file": 2, "not an image": 2}, r


def test_images_are_found_wherever_they_sit_in_the_zip(tmp_path):
    from urbancross.datasets import load_urbancross_country
    for top in ("", "Spain/release/pictures/"):
        folder = _release(tmp_path / top.replace("/", "_"))
        _rezip(folder, [("README", b"read me")], top=top)
        df = load_urbancross_country(tmp_path / top.replace("/", "_"), "spain")
        assert all(load_image(p).size == (16, 16) for p in df.image_path), top


def test_images_zip_over_the_total_cap_is_refused_before_writing(tmp_path, monkeypatch):
    from urbancross.datasets import load_urbancross_country
    folder = _release(tmp_path)
    before = sorted(p.name for p in folder.iterdir())
    monkeypatch.setenv("URBANCROSS_UNPACK_MAX_TOTAL", "1000")
    with pytest.raises(ValueError, match=r"images.zip: .*more than .*1,000 bytes.*URBANCROSS_UNPACK_MAX_TOTAL"):
        load_urbancross_country(tmp_path, "spain")
    assert sorted(p.name for p in folder.iterdir()) == before          # nothing written, not even a partial folder


def test_images_zip_member_declaring_4_gb_is_refused_before_writing(tmp_path):
    from urbancross.datasets import load_urbancross_country
    folder = _release(tmp_path)
    zp, _ = _rezip(folder)
    data = bytearray(zp.read_bytes())
    at = data.rfind(b"PK\x01\x02")                                        # central directory entry of the last member
    data[at + 24:at + 28] = struct.pack("<I", 0xF0000000)                 # its uncompressed size: 4,026,531,840 bytes
    zp.write_bytes(bytes(data))
    before = sorted(p.name for p in folder.iterdir())
    with pytest.raises(ValueError, match=r"images/spain_0002.jpg.*4,026,531,840 bytes.*URBANCROSS_UNPACK_MAX_MEMBER"):
        load_urbancross_country(tmp_path, "spain")
    assert sorted(p.name for p in folder.iterdir()) == before


def test_interrupted_unpack_is_not_trusted_by_a_rerun(tmp_path, monkeypatch):
    import shutil
    from urbancross.datasets import load_urbancross_country
    folder = _release(tmp_path)
    real, calls = shutil.copyfileobj, []

    def dies_on_the_second(*a, **kw):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt("killed mid-unpack")
        return real(*a, **kw)
    monkeypatch.setattr(shutil, "copyfileobj", dies_on_the_second)
    with pytest.raises(KeyboardInterrupt):
        load_urbancross_country(tmp_path, "spain")
    monkeypatch.setattr(shutil, "copyfileobj", real)
    df = load_urbancross_country(tmp_path, "spain")
    assert all(load_image(p).size == (16, 16) for p in df.image_path)


def test_a_nested_unpack_left_by_older_code_is_redone(tmp_path):
    from urbancross.datasets import load_urbancross_country
    folder = _release(tmp_path)
    nested = folder / "images" / "images"                                 # what the old unpack made of a 2-entry zip
    with zipfile.ZipFile(folder / "images.zip") as z:
        z.extractall(folder / "images")
    (folder / "images" / ".complete").write_text(str(folder / "images.zip"))
    assert nested.is_dir()
    df = load_urbancross_country(tmp_path, "spain")
    assert all(load_image(p).size == (16, 16) for p in df.image_path)


def test_preflight_names_an_images_zip_over_the_cap_and_says_what_it_will_use(tmp_path, monkeypatch):
    from urbancross.core import get_config
    from urbancross.datasets import archive_lines, dataset_problems
    _release(tmp_path)
    cfg = get_config("paper", data_root=str(tmp_path), domains=("spain",), device="cpu")
    assert dataset_problems(cfg) == []
    lines = archive_lines(cfg)
    assert lines[0].startswith("spain images: ") and "3 images" in lines[0] and "to unpack" in lines[0], lines
    monkeypatch.setenv("URBANCROSS_UNPACK_MAX_TOTAL", "100")
    problems = dataset_problems(cfg)
    assert len(problems) == 1 and "images.zip" in problems[0] and "URBANCROSS_UNPACK_MAX_TOTAL" in problems[0], problems
    assert not (tmp_path / "Spain" / "images").exists()
