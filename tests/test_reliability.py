"""Reliability: SIGKILL at random moments then resume, hostile files, same seed → same bits."""

import pathlib
import sys

import pytest
from conftest import TINY_OVERRIDES, dataset_files

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / "benchmarks"))
from kill_resume import check, kill_and_resume  # noqa: E402


@pytest.mark.parametrize("kills", [pytest.param(3, id="3-kills"),
                                   pytest.param(20, id="20-kills", marks=pytest.mark.slow)])
def test_sigkill_at_random_moments_then_resume_gives_the_uninterrupted_dataset(
        kills: int, reference_dataset: pathlib.Path, tmp_path: pathlib.Path) -> None:
    out = tmp_path / "data"
    stats = kill_and_resume(out, [*TINY_OVERRIDES, "workers=2"], kills, seed=kills, window=6.0, cwd=tmp_path)
    assert stats.kills == kills
    assert check(out, reference_dataset) == []
    assert dataset_files(out) == dataset_files(reference_dataset)
