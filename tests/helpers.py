"""What several test modules share: tiny settings, running the real CLI, and small builders.

Fixtures (datasets, operators) live in ``conftest.py`` files; this module holds plain values and functions, imported
as ``from tests.helpers import ...``.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import fcntl
import hashlib
import json
import os
import pathlib
import pickle
import subprocess
import sys
from collections.abc import Iterator

import pytest
import torch

from metaimprove.data.collect import CollectConfig
from metaimprove.evaluation.protocol import ApplyConfig
from metaimprove.operator.features import FeatureConfig, transition_dim
from metaimprove.operator.networks import OperatorConfig
from metaimprove.sim.policy import PolicySpec, init_params
from metaimprove.sim.tasks import TaskConfig
from metaimprove.storage import meta_path
from metaimprove.teachers import ARSConfig, PPOConfig
from metaimprove.training import train as train_module
from metaimprove.training.outcome import OutcomeConfig
from metaimprove.training.pairs import PairConfig
from metaimprove.training.train import TrainConfig

# ------------------------------------------------------------------------------------------ collections

# Two envs × 32 steps per update (below the 256-step episode, so episodes are cut by the batch end).
TINY_TEACHER = {"n_envs": 2, "n_steps": 32, "minibatch_size": 32, "n_epochs": 1}
TINY_PLAN = {"n_tasks": 3, "seeds": 2, "iterations": 2}
# The same collection as tiny_config(), as CLI overrides.
TINY_OVERRIDES = [f"teacher.{k}={v}" for k, v in TINY_TEACHER.items()] + [f"{k}={v}" for k, v in TINY_PLAN.items()]
# ARS with 2 directions (4 envs) × 32 steps: the smallest batch with antithetic pairs to read.
TINY_ARS = ARSConfig(n_directions=2, top_b=1, n_steps=32)
CLI_TIMEOUT = 240


def tiny_config(out: pathlib.Path, **changes: object) -> CollectConfig:
    """A 3 tasks × 2 seeds × 2 iterations collection of halfcheetah_vel with a tiny PPO into ``out``."""
    settings: dict[str, object] = {"task": TaskConfig("halfcheetah_vel"), "teacher": PPOConfig(**TINY_TEACHER),
                                   "workers": 2, "out": str(out), **TINY_PLAN}
    settings.update(changes)
    return CollectConfig(**settings)  # type: ignore[arg-type]


def dataset_files(root: pathlib.Path) -> dict[str, bytes]:
    """The files that make up a dataset (config, manifest, shards) by relative path, with their bytes."""
    paths = [root / "config.yaml", root / "manifest.json", *sorted((root / "shards").iterdir())]
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in paths}


# ------------------------------------------------------------------------------------------------- CLI


def run_cli(args: list[str], cwd: pathlib.Path, **kwargs: object) -> subprocess.CompletedProcess[str]:
    """``python -m metaimprove <args>`` in ``cwd``, as a user would run it."""
    env = {k: v for k, v in os.environ.items() if k not in ("METAIMPROVE_DEBUG", "HYDRA_FULL_ERROR")}
    return subprocess.run([sys.executable, "-m", "metaimprove", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=CLI_TIMEOUT, check=False, **kwargs)  # type: ignore[call-overload]


# ------------------------------------------------------------------------------------------- operators

# Training settings small enough for seconds: a narrow operator, few features, k = 1, two epochs.
TINY_TRAIN = {"operator": OperatorConfig(hidden=16, context_dim=8, param_hidden=8),
              "features": FeatureConfig(n_transitions=32, n_states=16), "pairs": PairConfig(ks=[1]), "max_epochs": 2}
# An operator that reads the task's parameters (features.task_input), trained with one relabel round so that
# relabel's rollouts read the task too.
ORACLE = FeatureConfig(n_transitions=32, n_states=16, task_input=True)
ORACLE_TRAIN = {**TINY_TRAIN, "features": ORACLE, "relabel_rounds": 1, "relabel_tasks": 1,
                "relabel_applications": 2, "relabel_starts": 2, "relabel_eval_episodes": 1}
# An operator checkpoint as written before task_input, es_gradient, envs and the recorded ask existed (the PPO
# operator once shipped as results/operators/halfcheetah_vel.ppo.*).
LEGACY_OPERATOR = pathlib.Path(__file__).resolve().parent / "fixtures" / "legacy_operator.safetensors"


AGNOSTIC = dataclasses.replace(TINY_TRAIN["features"], agnostic=True)  # type: ignore[type-var]
"""tiny features of a shape-agnostic operator"""


def agnostic_train_config(datasets: list[pathlib.Path], out: pathlib.Path, **changes: object) -> TrainConfig:
    """A tiny shape-agnostic operator's training on ``datasets`` (collections of any robots)."""
    settings = {**TINY_TRAIN, "features": AGNOSTIC, "max_epochs": 4, "patience": 100, "batch_size": 2, **changes}
    return TrainConfig(dataset=[str(d) for d in datasets], out=str(out), **settings)  # type: ignore[arg-type]


def train_interrupted_then_resumed(config: TrainConfig, monkeypatch: pytest.MonkeyPatch,
                                   interrupt_at: int) -> pathlib.Path:
    """``config``'s training stopped by a KeyboardInterrupt in epoch ``interrupt_at`` (counted from 1), then the same
    command again: the resumed run's checkpoint."""
    real, epochs = train_module._evaluate, []

    def interrupted(*args: object, **kwargs: object) -> float:
        epochs.append(1)
        if len(epochs) == interrupt_at:
            raise KeyboardInterrupt
        return real(*args, **kwargs)  # type: ignore[arg-type]

    with monkeypatch.context() as patch:
        patch.setattr(train_module, "_evaluate", interrupted)
        with pytest.raises(KeyboardInterrupt):
            train_module.train(config)
    return train_module.train(config)


def random_features(spec: PolicySpec, n: int, seed: int = 0, m: int = 16, s: int = 32) -> dict[str, torch.Tensor]:
    """A batch of ``n`` operator inputs for policies of ``spec``: random, with ``m`` transitions and ``s`` states."""
    g = torch.Generator().manual_seed(seed)
    p = spec.n_params
    return {
        "theta": torch.stack([init_params(spec, g) for _ in range(n)]),
        "grad": torch.randn(n, p, generator=g),
        "grad_log_norm": torch.randn(n, 1, generator=g),
        "transitions": torch.randn(n, m, transition_dim(spec), generator=g),
        "returns": torch.randn(n, 2, generator=g),
        "grad_snr": torch.randn(n, p, generator=g),
        "states": torch.randn(n, s, spec.obs_dim, generator=g),
        "norm_mean": torch.zeros(n, spec.obs_dim),
        "norm_std": torch.ones(n, spec.obs_dim),
    }


def tiny_outcome(operator: pathlib.Path, out: pathlib.Path, **changes: object) -> OutcomeConfig:
    """An outcome run of 2 generations of 2 members (and the center and the teacher), 2 applications, on 1 of 2
    training tasks."""
    settings: dict[str, object] = dict(operator_path=str(operator), out=str(out), generations=2, popsize=2,
                                       applications=2, tasks_per_generation=1, eval_episodes=1,
                                       tasks=["halfcheetah_vel/train/0", "halfcheetah_vel/train/1"], stdev_init=0.05)
    settings.update(changes)
    return OutcomeConfig(**settings)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------- apply


def apply_config(operator_path: pathlib.Path, out: pathlib.Path, **changes: object) -> ApplyConfig:
    """One halfcheetah_vel task × 2 seeds × 2 applications, one evaluation episode, in-process."""
    settings: dict[str, object] = dict(operator_path=str(operator_path), out=str(out),
                                       task=TaskConfig("halfcheetah_vel"), n_tasks=1, seeds=2, applications=2,
                                       eval_episodes=1, workers=1)
    settings.update(changes)
    return ApplyConfig(**settings)  # type: ignore[arg-type]


@contextlib.contextmanager
def held_by_another_process(out: pathlib.Path) -> Iterator[pathlib.Path]:
    """The directory ``out`` (made if missing) locked as a running stage locks its run directory."""
    out.mkdir(parents=True, exist_ok=True)
    fd = os.open(out, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield out
    finally:
        os.close(fd)


def curve_rows(run_dir: pathlib.Path) -> list[dict[str, str]]:
    """The rows of an apply run's curves.csv."""
    with (run_dir / "curves.csv").open() as f:
        return list(csv.DictReader(f))


# ------------------------------------------------------------------------------------------ hostile files


class Payload:
    """Unpickling this runs code: it creates the file named by ``marker``."""

    def __init__(self, marker: pathlib.Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (pathlib.Path.touch, (self.marker,))


def pickles(tmp_path: pathlib.Path, marker: pathlib.Path) -> dict[str, bytes]:
    """The payload as a plain pickle and as a torch.save file (what torch.load without weights_only runs)."""
    torch.save({"operator.w": Payload(marker)}, tmp_path / "payload.pt")
    return {"pickle": pickle.dumps({"operator.w": Payload(marker)}),
            "torch.save": (tmp_path / "payload.pt").read_bytes()}


def forge(path: pathlib.Path, payload: bytes, meta: dict) -> str:
    """Plant ``payload`` at ``path`` with a JSON header that vouches for it, as an attacker holding both files
    would; returns the header's sha256 (what a forged manifest would record)."""
    path.write_bytes(payload)
    header = json.dumps({"format": "metaimprove-tensors", "format_version": 1,
                         "tensors_sha256": hashlib.sha256(payload).hexdigest(), "meta": meta}).encode()
    meta_path(path).write_bytes(header)
    return hashlib.sha256(header).hexdigest()
