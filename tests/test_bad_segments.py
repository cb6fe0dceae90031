"""Bad segment input: the release's image_segments.zip (`UpstreamSegmentZip`, and through `segment_manifest`), with
members over Pillow's pixel limit (decompression bombs), members zipfile cannot read (encrypted, unknown compression
method), and image stems in another Unicode normalisation.

Each case gets an error naming the zip and its member, or a logged fallback, as documented in nbs/03_segments.ipynb.
The bad zips are built here, small: Pillow's pixel limit is lowered for a test (`pixel_limit`) instead of writing huge
images.
"""
import io
import logging
import struct
import unicodedata
import warnings
import zipfile

import pytest
from PIL import Image

from urbancross.data import ImageLoadError

NFC, NFD = unicodedata.normalize("NFC", "café_1"), unicodedata.normalize("NFD", "café_1")


# ---------------------------------------------------------------- pixel limit (decompression bombs)

def test_segment_zip_over_the_pixel_limit_names_zip_member_and_limit(tmp_path, pixel_limit, png_bytes, noisy):
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


def test_segment_manifest_with_a_bomb_in_the_release_zip_names_zip_and_member(tmp_path, pixel_limit, png_bytes,
                                                                              noisy):
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


# ---------------------------------------------------------------- members zipfile cannot read

def _patch_method(data: bytes, method: int) -> bytes:
    """A one-member zip with its compression method set to `method` in both headers."""
    data = bytearray(data)
    data[8:10] = struct.pack("<H", method)                                    # local file header
    cd = data.rfind(b"PK\x01\x02")
    data[cd + 10:cd + 12] = struct.pack("<H", method)                          # central directory
    return bytes(data)


def test_segment_zip_unreadable_member_names_zip_and_member(tmp_path, png_bytes, noisy):
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


# ---------------------------------------------------------------- Unicode normalisation of image stems

def test_segment_zip_stem_in_another_normalisation(tmp_path, uc_log, messages):
    from urbancross.segments import make_upstream_segments_fixture, UpstreamSegmentZip
    zp = make_upstream_segments_fixture(tmp_path / "image_segments.zip", {NFD: 2})
    with UpstreamSegmentZip(zp) as uz:
        assert uz.count(NFC) == 2
        crops, valid = uz.load(NFC, 4, 8)
        assert valid.tolist() == [True, True, False, False]
    assert any("Unicode normalisation" in m and str(zp) in m for m in messages(uc_log, logging.INFO)), messages(uc_log)


# ---------------------------------------------------------------- release segments missing or empty (issue 23)

def test_empty_segment_folder_is_named_and_counted(tmp_path, uc_log, messages, noisy):
    from urbancross.data import fallback_summary, make_manifest
    from urbancross.segments import SegmentCache, SegmentConfig, make_segmenter, segment_manifest
    rows = []
    for stem in ("t_full", "t_empty", "t_absent"):
        Image.fromarray(noisy(16, 16)).save(tmp_path / f"{stem}.png")
        rows.append(dict(image_id=f"finland/{stem}", image_path=str(tmp_path / f"{stem}.png"), captions=["x"],
                         domain="finland"))
    zp = tmp_path / "image_segments.zip"
    with zipfile.ZipFile(zp, "w") as z:
        buf = io.BytesIO(); Image.fromarray(noisy(8, 8)).save(buf, "PNG")
        z.writestr("image_segments/t_full/t_full_0.png", buf.getvalue())
        z.writestr("image_segments/t_empty/", b"")                               # a folder with no segment files
    before = fallback_summary()
    table, stats = segment_manifest(make_manifest(rows), make_segmenter("superpixel"), SegmentCache(tmp_path / "cache"),
                                    num_seg=2, cfg=SegmentConfig(num_stored=2, crop_size=8), release={"finland": zp})
    assert list(table.segment_source) == ["release", "superpixel", "superpixel"]
    after = fallback_summary()
    grew = {k: v["count"] - before.get(k, {}).get("count", 0) for k, v in after.items()}
    assert grew.get("release_segments_empty") == 1 and grew.get("release_segments_missing") == 1, grew
    assert "finland/t_empty" in after["release_segments_empty"]["first"]
    assert "finland/t_absent" in after["release_segments_missing"]["first"]
    warned = " ".join(messages(uc_log, logging.WARNING))
    assert "finland/t_empty" in warned and "empty" in warned, warned
