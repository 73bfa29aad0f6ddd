"""Progress where the work is long (issue 37, item 8): sample's bar counts images and moves within a batch (before,
`--per-class 1` sat at 0/10 for its one batch), and judge and gradcam show a bar of the images they work through."""

from __future__ import annotations

import pytest

from conftest import run


class Recorder:
    """A progress display (synthkit.core.progress.progress's interface) that records each task's total and every count
    it reaches instead of drawing."""

    def __init__(self, *fields: str):
        self.tasks: list[dict] = []

    def __enter__(self) -> Recorder:
        return self

    def __exit__(self, *exc) -> None:
        return None

    def add_task(self, description: str, total: float | None = None, completed: float = 0, **fields) -> int:
        self.tasks.append({"description": description, "total": total, "counts": [completed]})
        return len(self.tasks) - 1

    def advance(self, task: int, advance: float = 1) -> None:
        counts = self.tasks[task]["counts"]
        counts.append(counts[-1] + advance)

    def update(self, task: int, completed: float | None = None, advance: float | None = None, **fields) -> None:
        counts = self.tasks[task]["counts"]
        counts.append(completed if completed is not None else counts[-1] + (advance or 0))


@pytest.fixture
def bars(monkeypatch) -> list[Recorder]:
    """Every progress display sample, judge and gradcam open, recorded."""
    from synthkit.analyse import gradcam, judge
    from synthkit.generate import sampling

    made: list[Recorder] = []

    def recorder(*fields: str) -> Recorder:
        made.append(Recorder(*fields))
        return made[-1]

    for module in (sampling, judge, gradcam):
        monkeypatch.setattr(module, "progress", recorder)
    return made


def only_task(bars: list[Recorder], description: str) -> dict:
    (task,) = [t for bar in bars for t in bar.tasks if t["description"] == description]
    return task


def moves_within(task: dict, batch: int) -> bool:
    """Whether the count passed through a value short of the batch's end before it got there (it moved while the
    batch was worked on), and ended on the total."""
    return any(0 < c < batch for c in task["counts"]) and task["counts"][-1] == pytest.approx(task["total"])


def test_sample_counts_images_and_moves_within_a_batch(bars, tiny_sd, tmp_path):
    result = run("sample", "--prompt", "a {class}", "--model", tiny_sd, "--per-class", 1, "--steps", 4, "--device",
                 "cpu", "--out", tmp_path / "s.h5")  # fmt: skip
    assert result.exit_code == 0, result.output
    task = only_task(bars, "sample")
    assert task["total"] == 10 and moves_within(task, 10), task  # one batch of 10 images, a share per step
    assert task["counts"] == sorted(task["counts"]) and len({c for c in task["counts"] if 0 < c < 10}) >= 3, task


def test_judge_shows_the_images_it_judges(bars, tiny_sd, small_real):
    result = run("judge", "--data", small_real, "--model", tiny_sd, "--per-class", 2, "--device", "cpu")
    assert result.exit_code == 0, result.output
    task = only_task(bars, "judge")
    assert task["total"] == 20 and moves_within(task, 20), task  # one batch of 20, a fifth per timestep


def test_gradcam_shows_the_images_of_every_model(bars, tiny_classifier, test_store, tmp_path):
    args = ["--data", test_store, "--n", 4, "--device", "cpu", "--out", tmp_path / "g"]
    result = run("gradcam", "--model", tiny_classifier, "--model", tiny_classifier, *args)
    assert result.exit_code == 0, result.output
    task = only_task(bars, "gradcam")
    assert task["total"] == 8 and moves_within(task, 4), task  # 4 images of each of 2 models, a third per stage
