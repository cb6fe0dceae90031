"""Test setup: no network (any non-loopback connection fails the test), offline model hubs."""
import logging
import os
import socket

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
