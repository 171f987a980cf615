"""Progress of train/compare and of evaluation (docs/design.md#29-command-line): a bar on a
terminal, periodic lines in a log, nothing when quiet."""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from test_recipes import TINY

from amc_kernels.recipes import progress
from amc_kernels.recipes.config import TrainConfig
from amc_kernels.recipes.progress import Progress
from amc_kernels.recipes.train import train


@pytest.fixture
def in_a_log(monkeypatch: pytest.MonkeyPatch) -> None:
    """stderr is not a terminal, and a line is due after every item."""
    monkeypatch.setattr(progress, "on_terminal", lambda: False)
    monkeypatch.setattr(progress, "LINE_EVERY_S", 0.0)


def test_a_log_gets_periodic_lines(in_a_log: None) -> None:
    lines: list[str] = []
    assert list(Progress(False, lines.append)(range(4), 4, "[ce] train epoch 1/2")) == [0, 1, 2, 3]
    assert len(lines) == 3  # none after the last item: the epoch line follows
    assert re.fullmatch(r"\[ce\] train epoch 1/2: 1/4 \(25%\), \S+ it/s, ~\d+ s left", lines[0])


def test_lines_wait_for_the_period(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(progress, "on_terminal", lambda: False)
    lines: list[str] = []
    list(Progress(False, lines.append)(range(50), 50, "fast"))  # well under 30 s
    assert lines == []


def test_quiet_shows_nothing(in_a_log: None, capsys: pytest.CaptureFixture[str]) -> None:
    lines: list[str] = []
    assert list(Progress(True, lines.append)(range(3), 3, "x")) == [0, 1, 2]
    assert lines == [] and capsys.readouterr().err == ""


def test_a_terminal_gets_a_bar(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("tqdm")
    monkeypatch.setattr(progress, "on_terminal", lambda: True)
    lines: list[str] = []
    assert list(Progress(False, lines.append)(range(3), 3, "[amc] train")) == [0, 1, 2]
    err = capsys.readouterr().err
    assert "[amc] train:" in err and "/3 [" in err and lines == []


def test_a_terminal_without_tqdm_gets_lines(
    in_a_log: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(progress, "on_terminal", lambda: True)
    monkeypatch.setitem(sys.modules, "tqdm.auto", None)  # import fails
    lines: list[str] = []
    list(Progress(False, lines.append)(range(3), 3, "x"))
    assert len(lines) == 2


@pytest.fixture
def _restore_threads() -> Iterator[None]:
    threads = torch.get_num_threads()  # TINY trains on one thread
    yield
    torch.set_num_threads(threads)


@pytest.mark.usefixtures("_restore_threads")
def test_training_and_evaluation_report_progress(in_a_log: None, tmp_path: Path) -> None:
    lines: list[str] = []
    config = TrainConfig(**{**TINY, "quiet": False}, loss="ce", out=str(tmp_path))
    train(config, log=lines.append, save=False)
    text = "\n".join(lines)
    assert re.search(r"^\[ce\] train epoch 1/1: 1/3 \(33%\)", text, re.M)  # 24 images, batch 8
    assert re.search(r"^predicting the test split: 1/2 \(50%\)", text, re.M)  # 12 images
    assert "[ce] train epoch 1/1: loss" in text  # the epoch line
