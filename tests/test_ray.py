"""Ray collection: the same dataset as the local pool, and a clear error without Ray or a cluster."""

import builtins
import json
import pathlib

import pytest
from conftest import dataset_files, tiny_config

from metaimprove.collect import collect
from metaimprove.errors import UserError
from metaimprove.storage import atomic_write_json

ray = pytest.importorskip("ray")


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
    assert "executor" not in (reference_dataset / "config.yaml").read_text()
    assert "ray_address" not in (reference_dataset / "config.yaml").read_text()


def test_bad_executor_settings_are_refused(tmp_path: pathlib.Path) -> None:
    with pytest.raises(UserError, match="executor must be one of"):
        tiny_config(tmp_path, executor="dask")
    with pytest.raises(UserError, match="needs executor=ray"):
        tiny_config(tmp_path, ray_address="auto")


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
