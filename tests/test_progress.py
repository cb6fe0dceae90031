"""Progress bars (`urbancross.data.progress`): drawn on a terminal, quiet off one and on CI."""
import io


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
