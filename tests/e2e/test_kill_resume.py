"""Collection through the CLI survives SIGKILL at random moments: resuming gives the uninterrupted dataset."""

import pathlib

from tests.helpers import TINY_OVERRIDES, dataset_files
from tests.slow.kill_resume import kill_and_resume


def test_sigkill_at_random_moments_then_resume_gives_the_uninterrupted_dataset(
        reference_dataset: pathlib.Path, tmp_path: pathlib.Path) -> None:
    """3 kills (CLI startup costs seconds each); tests/slow/test_kill_resume.py runs the same with 20."""
    kills = 3
    stats = kill_and_resume(tmp_path / "data", reference_dataset, [*TINY_OVERRIDES, "workers=2"], kills,
                            seed=kills, jitter=3.0, cwd=tmp_path)
    assert stats.kills == kills and stats.problems == []
    for round_dir in sorted((tmp_path / "data").iterdir()):
        assert dataset_files(round_dir) == dataset_files(reference_dataset)
