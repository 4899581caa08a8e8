"""Progress where stderr is a pipe or a log: plain lines with done / total and an ETA."""

import io

from vtpexport import progress
from vtpexport.progress import LineProgress, progress_bar, track


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_piped_progress_is_a_line_at_start_every_few_seconds_and_at_the_end(monkeypatch):
    clock = Clock()
    monkeypatch.setattr(progress.time, "monotonic", clock)
    stream = io.StringIO()
    bar = progress_bar("calibrating", 4, "sample", stream=stream)
    assert isinstance(bar, LineProgress)
    with bar:
        clock.now += 2
        bar.update()  # within the interval: no line
        clock.now += 4
        bar.set_postfix(alpha="0.50")
        bar.update()  # 6 s after the first line
        clock.now += 1
        bar.update(2)
    lines = stream.getvalue().splitlines()
    assert lines == [
        "calibrating: 0/4 sample, 0 s",
        "calibrating: 2/4 sample, 6 s, ETA 6 s, alpha=0.50",
        "calibrating: 4/4 sample, done in 7.0 s, alpha=0.50",
    ]


def test_disabled_progress_writes_nothing(capsys):
    assert list(track(range(3), "embedding", 3, enabled=False)) == [0, 1, 2]
    captured = capsys.readouterr()
    assert captured.out == captured.err == ""


def test_a_terminal_gets_a_tqdm_bar():
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    bar = progress_bar("exporting", 3, stream=Terminal())
    assert not isinstance(bar, LineProgress)
    bar.close()
