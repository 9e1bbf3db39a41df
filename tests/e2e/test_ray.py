"""Ray collection: the same dataset as the local pool, and a clear error without Ray or a cluster."""

import builtins
import json
import os
import pathlib
import sys
from collections.abc import Iterator

import pytest
import yaml

from metaimprove.data.collect import RayConfig, _execute_ray, _Job, _Progress, collect, load_manifest, plan
from metaimprove.errors import UserError
from metaimprove.sim.policy import Policy
from metaimprove.sim.tasks import Task
from metaimprove.storage import atomic_write_json, meta_path
from metaimprove.teachers import PPO, ImprovementRecord
from tests.helpers import dataset_files, tiny_config

ray = pytest.importorskip("ray")
cloudpickle = pytest.importorskip("ray.cloudpickle")


@pytest.fixture(scope="module")
def local_ray() -> object:
    """A 2-CPU Ray instance on this machine for the module's tests (the collector joins it)."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="WARNING")
    yield ray
    ray.shutdown()


def test_ray_collection_equals_the_local_pool(local_ray: object, reference_dataset: pathlib.Path,
                                              tmp_path: pathlib.Path) -> None:
    out = tmp_path / "data"
    collect(tiny_config(out, executor="ray"))
    assert dataset_files(out) == dataset_files(reference_dataset)
    # Resuming on Ray: runs missing from the manifest (one with a torn shard) are redone, the rest kept.
    manifest = json.loads((out / "manifest.json").read_text())
    atomic_write_json(out / "manifest.json", manifest | {"shards": manifest["shards"][:4]})
    torn = out / manifest["shards"][4]["shard"]
    torn.write_bytes(torn.read_bytes()[:100])
    kept = (out / manifest["shards"][0]["shard"]).stat().st_mtime_ns
    collect(tiny_config(out, executor="ray"))
    assert dataset_files(out) == dataset_files(reference_dataset)
    assert (out / manifest["shards"][0]["shard"]).stat().st_mtime_ns == kept


def test_executor_settings_do_not_enter_the_dataset_config(reference_dataset: pathlib.Path,
                                                           tmp_path: pathlib.Path) -> None:
    recorded = yaml.safe_load((reference_dataset / "config.yaml").read_text())
    assert "executor" not in recorded and "ray" not in recorded and "workers" not in recorded


def test_bad_executor_settings_are_refused(tmp_path: pathlib.Path) -> None:
    with pytest.raises(UserError, match="executor must be one of"):
        tiny_config(tmp_path, executor="dask")
    with pytest.raises(UserError, match="needs executor=ray"):
        tiny_config(tmp_path, ray=RayConfig(address="auto"))


def test_missing_ray_is_one_line_naming_the_extra(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_import = builtins.__import__

    def no_ray(name: str, *args: object, **kwargs: object) -> object:
        if name == "ray":
            raise ImportError("No module named 'ray'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_ray)
    with pytest.raises(UserError, match=r"pip install metaimprove\[ray\]"):
        collect(tiny_config(tmp_path / "data", executor="ray"))
    assert not (tmp_path / "data").exists()


class _DiesOnce(PPO):
    """PPO whose worker process dies in the middle of its first attempt at a run (like a lost node)."""

    marker = ""

    def run(self, task: Task, policy: Policy, iterations: int, seed: int) -> Iterator[ImprovementRecord]:
        for record in super().run(task, policy, iterations, seed):
            if not os.path.exists(self.marker):
                pathlib.Path(self.marker).touch()
                os._exit(1)
            yield record


def test_a_run_whose_worker_dies_is_retried_into_the_same_single_shard(
        local_ray: object, reference_dataset: pathlib.Path, tmp_path: pathlib.Path) -> None:
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    _DiesOnce.marker = str(tmp_path / "died")
    config = tiny_config(tmp_path / "data")
    run = plan(config)[3]
    (tmp_path / "data" / "shards").mkdir(parents=True)
    job = _Job(run, str(tmp_path / "data"), _DiesOnce, config.teacher, config.iterations, tuple(config.hidden))
    progress = _Progress(1, 0, 1)
    entries = [entry for entry, _ in _execute_ray([job], progress)]
    assert (tmp_path / "died").exists(), "the worker never died: nothing was retried"
    expected = load_manifest(reference_dataset)[3]
    assert entries == [expected]
    written = sorted(p.name for p in (tmp_path / "data" / "shards").iterdir())
    assert written == sorted([pathlib.Path(run.shard).name, meta_path(run.shard).name])
    for name in written:
        assert (tmp_path / "data" / "shards" / name).read_bytes() == (reference_dataset / "shards" / name).read_bytes()
