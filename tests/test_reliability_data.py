"""FileDataModule on imperfect csv files: nothing dropped or guessed in silence (issue 18).

A first row is a header only when none of its cells is a number, and the log says so; any other cell
that is not a number is an error naming its line and column. Labels inferred without ``num_classes``
must cover ``0..C-1``; otherwise the error lists the labels found and those expected.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from manual_bp.lightning import FileDataModule
from manual_bp.lightning import data as data_module


def _rows(n: int = 30, labels: list[int] | None = None) -> list[str]:
    """``n`` csv rows of 3 features and a label (``labels`` cycled, default 0, 1, 2)."""
    x = np.random.default_rng(0).random((n, 3))
    cycle = labels or [0, 1, 2]
    return [",".join([*(f"{v:.6f}" for v in xs), str(cycle[i % len(cycle)])]) for i, xs in enumerate(x)]


def _write(tmp_path: Path, lines: list[str]) -> str:
    path = tmp_path / "data.csv"
    path.write_text("\n".join(lines) + "\n")
    return str(path)


@pytest.fixture
def logged(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """What FileDataModule logs (``rank_zero_info``) during the test."""
    messages: list[str] = []
    # raising=False: the test runs (and fails on its assertions) on code that logs nothing
    monkeypatch.setattr(data_module, "rank_zero_info", messages.append, raising=False)
    return messages


def test_csv_header_only_when_no_cell_is_a_number_and_logged(tmp_path: Path, logged: list[str]) -> None:
    path = _write(tmp_path, ["a,b,c,label", *_rows(30)])
    data = FileDataModule(path)
    data.setup("fit")
    assert sum(data.split_sizes().values()) == 30
    assert logged == [f"data file {path}: line 1 taken as a header (no cell is a number): a, b, c, label"]
    logged.clear()
    data = FileDataModule(_write(tmp_path, _rows(30)))  # no header: nothing dropped, nothing logged
    data.setup("fit")
    assert sum(data.split_sizes().values()) == 30 and logged == []


def test_csv_first_row_with_one_bad_cell_is_an_error_not_a_header(tmp_path: Path, logged: list[str]) -> None:
    # before: the row counted as a header and was dropped without a word (29 samples loaded)
    path = _write(tmp_path, ["0.5,abc,0.25,1", *_rows(29)])
    with pytest.raises(
        ValueError,
        match=r"data\.csv: every field must be a number; line 1, column 2 is 'abc' \(a header is taken "
        r"only when none of its cells is a number\)",
    ):
        FileDataModule(path).setup("fit")
    assert logged == []


def test_csv_bad_cell_after_the_header_names_line_and_column(tmp_path: Path) -> None:
    rows = _rows(30)
    rows[6] = "0.5,0.25,x,0"
    path = _write(tmp_path, ["a,b,c,label", *rows[:3], "", *rows[3:]])  # a blank line is skipped
    with pytest.raises(ValueError, match=r"every field must be a number; line 9, column 3 is 'x'$"):
        FileDataModule(path).setup("fit")


@pytest.mark.parametrize(
    ("labels", "message"),
    [
        (
            [0, 1, 2] * 9 + [0, 1, 7],
            r"classes inferred from the largest label \(7\) as 0\.\.7, but labels 3\.\.6 never occur; "
            r"found labels 0 \(10 samples\), 1 \(10\), 2 \(9\), 7 \(1\)",
        ),
        (
            [0, 1, 2, 0, 1, 2, 9],
            r"as 0\.\.9, but labels 3\.\.8 never occur; "
            r"found labels 0 \(9 samples\), 1 \(9\), 2 \(8\), 9 \(4\)",
        ),
        (
            [1, 2, 3],
            r"as 0\.\.3, but label 0 never occurs; found labels 1 \(10 samples\), 2 \(10\), 3 \(10\)",
        ),
    ],
    ids=["one-stray-label", "stray-label", "one-based"],
)
def test_labels_without_num_classes_must_cover_0_to_c_minus_1(
    tmp_path: Path, labels: list[int], message: str
) -> None:
    # before: one stray 7 gave "cannot split 30 samples into train/val/test ...", four 9s trained 10
    # classes and labels 1..3 trained 4 classes, both without a word
    path = _write(tmp_path, _rows(30, labels))
    with pytest.raises(ValueError, match=message + r"\. Expected labels 0\.\.C-1; give num_classes"):
        FileDataModule(path).setup("fit")


def test_absent_classes_are_allowed_with_num_classes(tmp_path: Path) -> None:
    data = FileDataModule(_write(tmp_path, _rows(30, [1, 2, 3])), num_classes=5)
    data.setup("fit")
    assert data.num_classes == 5
