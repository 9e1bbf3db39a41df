"""The training tests' shared fixture: datasets to join with the reference dataset."""

import pathlib
import shutil

import pytest

from metaimprove.data.collect import collect
from tests.helpers import tiny_config


@pytest.fixture(scope="session")
def other_datasets(reference_dataset: pathlib.Path, tmp_path_factory: pytest.TempPathFactory
                   ) -> dict[str, pathlib.Path]:
    """A second dataset of the same setup (a copy: a union may repeat tasks), one with another policy size,
    one with another batch size."""
    root = tmp_path_factory.mktemp("other")
    shutil.copytree(reference_dataset, root / "copy")
    plan = {"n_tasks": 1, "seeds": 1, "iterations": 2, "workers": 1}
    configs = [tiny_config(root / "hidden", hidden=[16], **plan), tiny_config(root / "batch", **plan)]
    configs[1].teacher.n_steps = 16
    for config in configs:
        collect(config)
    return {"copy": root / "copy", "hidden": root / "hidden", "batch": root / "batch"}
