"""Test setup: no network (any non-loopback connection fails the test), offline model hubs; helpers that several
test files share (bad files built small: noise images, PNG bytes, cut points, Pillow's pixel limit, log messages)."""
import io
import logging
import os
import socket

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Refuse every socket connection that is not to this machine."""
    real_connect = socket.socket.connect

    def guarded(self, address):
        host = address[0] if isinstance(address, tuple) else address
        if isinstance(host, str) and not (host.startswith("127.") or host in ("localhost", "::1") or host.startswith("/")):
            raise RuntimeError(f"test tried to reach the network: {address}")
        return real_connect(self, address)

    monkeypatch.setattr(socket.socket, "connect", guarded)


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: takes minutes (runs by default; deselect with -m 'not slow')")
    config.addinivalue_line("markers", "gpu: needs a CUDA device")


@pytest.fixture
def uc_log(caplog):
    """caplog wired to the `urbancross` logger (which does not propagate to the root logger)."""
    logger = logging.getLogger("urbancross")
    logger.addHandler(caplog.handler)
    caplog.set_level(logging.DEBUG, logger="urbancross")
    yield caplog
    logger.removeHandler(caplog.handler)


@pytest.fixture
def messages():
    """`messages(caplog, level)`: the messages of the records caught at `level` or above."""
    def caught(caplog, level=logging.DEBUG):
        return [r.getMessage() for r in caplog.records if r.levelno >= level]
    return caught


@pytest.fixture
def noisy():
    """`noisy(h, w, seed)`: a seeded uint8 RGB noise image `[h, w, 3]` (48 x 48 unless told)."""
    def image(h=48, w=48, seed=0):
        return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    return image


@pytest.fixture
def png_bytes():
    """`png_bytes(arr, **kw)`: an image array encoded as PNG."""
    def encode(arr, **kw):
        from PIL import Image
        b = io.BytesIO()
        Image.fromarray(arr).save(b, "PNG", **kw)
        return b.getvalue()
    return encode


@pytest.fixture
def cut_points():
    """`cut_points(n)`: where to cut an `n`-byte file: every cut in the last 64 bytes, plus 40 spread over the file
    (0 < cut < n)."""
    def cuts(n):
        return sorted(set(range(max(1, n - 64), n)) | {int(x) for x in np.linspace(1, n - 1, 40)})
    return cuts


@pytest.fixture
def pixel_limit():
    """Set Pillow's `Image.MAX_IMAGE_PIXELS` for one test (restored afterwards)."""
    from PIL import Image
    old = Image.MAX_IMAGE_PIXELS
    yield lambda n: setattr(Image, "MAX_IMAGE_PIXELS", n)
    Image.MAX_IMAGE_PIXELS = old
