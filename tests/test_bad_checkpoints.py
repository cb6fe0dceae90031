"""Bad checkpoints read by `safe_torch_load` (urbancross.core): truncated at many cut points, empty, missing, or
holding code rather than weights. Each gets an error naming the file; a partial file is never read as good.
"""
import pytest
import torch

from urbancross.core import atomic_torch_save, safe_torch_load


@pytest.fixture
def checkpoint(tmp_path):
    p = tmp_path / "model.pt"
    atomic_torch_save({"model": {"w": torch.arange(10_000, dtype=torch.float32)}, "epoch": 3}, p)
    return p


def test_good_checkpoint_loads(checkpoint):
    assert safe_torch_load(checkpoint)["epoch"] == 3


def test_truncated_checkpoint(checkpoint, cut_points):
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
