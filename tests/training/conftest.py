"""The training tests' shared fixtures: datasets to join with the reference dataset, an operator whose steps move θ."""

import dataclasses
import pathlib
import shutil

import pytest
import torch

from metaimprove.data.collect import collect
from metaimprove.operator.checkpoint import OperatorCheckpoint
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


@pytest.fixture(scope="session")
def moving_operator(ars_operator: pathlib.Path, tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    """The tiny ARS operator with random output layers, so that its steps move θ (the untrained one's do not), and a
    warm-up of two 2-env batches before its 4-env ones."""
    op, ckpt = OperatorCheckpoint.load(ars_operator)
    ckpt.features = dataclasses.replace(ckpt.features, warmup=[[2, 128]])
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for param in op.update.rest.parameters():
            param.copy_(0.3 * torch.randn(param.shape, generator=generator))
    path = tmp_path_factory.mktemp("moving") / "operator.safetensors"
    ckpt.save(path, op, summary={})
    return path
