"""Collection: a valid dataset, results independent of workers, resume after a kill or torn files, refusals,
hostile shards."""

import csv
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
import yaml

from metaimprove.data.collect import collect, load_manifest, load_shard, plan, shard_task, verify_dataset
from metaimprove.errors import UserError
from metaimprove.operator.features import FeatureConfig
from metaimprove.sim.policy import PolicySpec, init_params
from metaimprove.sim.tasks import get_family
from metaimprove.storage import atomic_write_json, meta_path
from metaimprove.teachers import PPOConfig
from metaimprove.training.pairs import PairConfig, build_pairs
from tests.helpers import (
    TINY_OVERRIDES,
    TINY_PLAN,
    TINY_TEACHER,
    dataset_files,
    forge,
    held_by_another_process,
    pickles,
    tiny_config,
)

N = TINY_PLAN["iterations"]
T, E = TINY_TEACHER["n_steps"], TINY_TEACHER["n_envs"]


def _copy(reference: pathlib.Path, tmp_path: pathlib.Path) -> pathlib.Path:
    out = tmp_path / "data"
    shutil.copytree(reference, out)
    return out


def _stamps(root: pathlib.Path) -> dict[str, tuple[int, int]]:
    """Each file's inode and modification time, but the log that every collect run into ``root`` appends to."""
    return {p.relative_to(root).as_posix(): (p.stat().st_ino, p.stat().st_mtime_ns)
            for p in root.rglob("*") if p.is_file() and p.name != "collect.log"}


def test_dataset_lists_every_planned_run_in_order(reference_dataset: pathlib.Path) -> None:
    entries = verify_dataset(reference_dataset)
    runs = plan(tiny_config(reference_dataset))
    assert [e["shard"] for e in entries] == [r.shard for r in runs]
    assert [(e["task"]["index"], e["seed"]) for e in entries] == [(i, s) for i in range(3) for s in range(2)]
    family = get_family("halfcheetah_vel")
    for entry in entries:
        assert shard_task(entry) == family.task("train", entry["task"]["index"])
        assert entry["task_name"] == shard_task(entry).name
        assert entry["teacher"] == "ppo" and entry["iterations"] == [0, N]
    saved = yaml.safe_load((reference_dataset / "config.yaml").read_text())
    assert saved["n_tasks"] == 3 and saved["teacher_name"] == "ppo" and saved["teacher"]["n_steps"] == T
    assert "workers" not in saved and "out" not in saved


def test_shards_hold_the_whole_chain(reference_dataset: pathlib.Path) -> None:
    shards = [load_shard(reference_dataset, e) for e in load_manifest(reference_dataset)]
    tensors, meta = shards[0]
    spec = PolicySpec.from_dict(meta["policy_spec"])
    assert spec.hidden == (32, 32) and (spec.obs_dim, spec.act_dim) == (17, 6)
    shapes = {"theta": (N + 1, spec.n_params), "norm_mean": (N + 1, 17), "norm_var": (N + 1, 17),
              "norm_count": (N + 1,), "mean_return": (N,), "env_steps": (N,), "n_unstable": (N,),
              "obs": (N, T, E, 17), "action": (N, T, E, 6), "log_prob": (N, T, E), "reward": (N, T, E),
              "terminated": (N, T, E), "truncated": (N, T, E)}
    assert {k: tuple(v.shape) for k, v in tensors.items()} == shapes
    assert tensors["norm_mean"].dtype == torch.float64 and tensors["terminated"].dtype == torch.uint8
    assert tensors["env_steps"].tolist() == [T * E * (n + 1) for n in range(N)]
    # n_steps is below the episode length, so every batch's last step ends its episodes.
    assert (tensors["truncated"][:, -1] | tensors["terminated"][:, -1]).bool().all()
    assert not torch.equal(tensors["theta"][0], tensors["theta"][1]), "the teacher never changed θ"
    assert meta["task"]["index"] == 0 and meta["seed"] == 0 and meta["iterations"] == [0, N]
    assert meta["teacher"]["name"] == "ppo" and meta["teacher"]["config"]["n_envs"] == E
    assert meta["format_version"] == 1 and meta["package_version"]
    for (t, m) in shards:
        # θ⁰ is the seed's fresh initialization with an identity normalizer, whatever the task.
        assert torch.equal(t["theta"][0], init_params(spec, torch.Generator().manual_seed(m["seed"])))
        assert torch.equal(t["norm_mean"][0], torch.zeros(17, dtype=torch.float64))
    assert not torch.equal(shards[0][0]["obs"], shards[2][0]["obs"]), "different tasks, same experience"


def test_worker_count_does_not_change_results(reference_dataset: pathlib.Path, tmp_path: pathlib.Path) -> None:
    collect(tiny_config(tmp_path / "one", workers=1))
    assert dataset_files(tmp_path / "one") == dataset_files(reference_dataset)


def test_resume_after_kill_gives_the_uninterrupted_dataset(reference_dataset: pathlib.Path,
                                                           tmp_path: pathlib.Path) -> None:
    out = tmp_path / "data"
    # The CLI in its own session, so that the kill takes its workers too, like a crash of the machine.
    proc = subprocess.Popen([sys.executable, "-m", "metaimprove", "collect", *TINY_OVERRIDES, "workers=1",
                             f"out={out}"], cwd=tmp_path, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 240
        while not ((out / "manifest.json").exists() and load_manifest(out)):
            assert proc.poll() is None and time.monotonic() < deadline, "the collection never finished a shard"
            time.sleep(0.02)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    finished = [e["shard"] for e in load_manifest(out)]
    assert 1 <= len(finished) < 6
    before = _stamps(out)
    collect(tiny_config(out))
    assert dataset_files(out) == dataset_files(reference_dataset)
    after = _stamps(out)
    for shard in finished:
        for name in (shard, meta_path(shard).as_posix()):
            assert after[name] == before[name], f"{name} was collected again"


def test_leftovers_of_interrupted_runs_are_removed_and_redone(reference_dataset: pathlib.Path,
                                                              tmp_path: pathlib.Path) -> None:
    out = _copy(reference_dataset, tmp_path)
    manifest = json.loads((out / "manifest.json").read_text())
    kept, dropped = manifest["shards"][:4], manifest["shards"][4:]
    atomic_write_json(out / "manifest.json", manifest | {"shards": kept})
    torn = out / dropped[0]["shard"]
    torn.write_bytes(torn.read_bytes()[:100])
    meta_path(out / dropped[1]["shard"]).unlink()
    stray = [out / "shards" / ".halfcheetah_vel-train-0002-s0.safetensors.1234.tmp", out / ".manifest.json.99.tmp"]
    for path in stray:
        path.write_bytes(b"half")
    before = _stamps(out)
    collect(tiny_config(out))
    assert dataset_files(out) == dataset_files(reference_dataset)
    assert not any(path.exists() for path in stray)
    after = _stamps(out)
    assert all(after[e["shard"]] == before[e["shard"]] for e in kept)
    # The redone runs' diagnostics replace the ones they had: the same rows as an uninterrupted collection's.
    assert sorted(_teacher_log(out)) == sorted(_teacher_log(reference_dataset))


def _teacher_log(root: pathlib.Path) -> list[tuple[str, ...]]:
    with (root / "teacher.csv").open() as f:
        return [tuple(row.values()) for row in csv.DictReader(f)]


def test_teacher_csv_holds_every_update_with_the_teachers_diagnostics(reference_dataset: pathlib.Path) -> None:
    with (reference_dataset / "teacher.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["shard", "task", "seed", "iteration", "env_steps", "mean_return", "approx_kl",
                             "clip_fraction", "explained_variance", "std"]
    entries = load_manifest(reference_dataset)
    assert sorted((r["shard"], r["iteration"]) for r in rows) == sorted(
        (e["shard"], str(n)) for e in entries for n in range(TINY_PLAN["iterations"]))
    shard = load_shard(reference_dataset, entries[0])[0]
    mine = [r for r in rows if r["shard"] == entries[0]["shard"]]
    # NaN where no episode ended in the batch, in both
    torch.testing.assert_close(torch.tensor([float(r["mean_return"]) for r in mine], dtype=torch.float64),
                               shard["mean_return"], rtol=0, atol=0, equal_nan=True)
    assert [int(r["env_steps"]) for r in mine] == shard["env_steps"].tolist()
    assert all(0 <= float(r["clip_fraction"]) <= 1 and float(r["approx_kl"]) >= -1e-6 for r in rows)


def test_rerun_with_a_different_config_is_refused_and_touches_nothing(reference_dataset: pathlib.Path,
                                                                      tmp_path: pathlib.Path) -> None:
    out = _copy(reference_dataset, tmp_path)
    before, log = _stamps(out), (out / "collect.log").read_bytes()
    with pytest.raises(UserError, match=r"different config \(iterations: 2 there, 3 now\)"):
        collect(tiny_config(out, iterations=3))
    with pytest.raises(UserError, match=r"teacher\.lr: 0\.0003 there, 0\.001 now"):
        collect(tiny_config(out, teacher=PPOConfig(**TINY_TEACHER, lr=1e-3)))
    assert _stamps(out) == before and (out / "collect.log").read_bytes() == log


def test_a_collection_predating_a_setting_resumes_when_the_setting_is_at_its_default(
        reference_dataset: pathlib.Path, tmp_path: pathlib.Path) -> None:
    out = _copy(reference_dataset, tmp_path)
    config = yaml.safe_load((out / "config.yaml").read_text())
    del config["teacher"]["log_std_init"]  # as written before PPO had the setting
    (out / "config.yaml").write_text(yaml.safe_dump(config))
    before = _stamps(out)
    collect(tiny_config(out))  # resumes: every shard is kept
    assert _stamps(out) == before
    with pytest.raises(UserError, match=r"teacher\.log_std_init: None there, -1\.0 now"):
        collect(tiny_config(out, teacher=PPOConfig(**TINY_TEACHER, log_std_init=-1.0)))


@pytest.mark.parametrize("damage", ["flip", "delete"])
def test_corrupt_shard_in_manifest_is_refused_by_name(reference_dataset: pathlib.Path, tmp_path: pathlib.Path,
                                                      damage: str) -> None:
    out = _copy(reference_dataset, tmp_path)
    shard = out / load_manifest(out)[3]["shard"]
    if damage == "flip":
        data = bytearray(shard.read_bytes())
        data[-1] ^= 1
        shard.write_bytes(bytes(data))
    else:
        shard.unlink()
    before = _stamps(out)
    for action in (lambda: collect(tiny_config(out)), lambda: verify_dataset(out)):
        with pytest.raises(UserError, match=f"corrupt or missing shard.*{shard.name}"):
            action()
    assert _stamps(out) == before


def test_directory_that_is_not_a_dataset_is_refused(tmp_path: pathlib.Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="not empty"):
        collect(tiny_config(tmp_path))
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


def test_second_writer_is_refused(reference_dataset: pathlib.Path, tmp_path: pathlib.Path) -> None:
    with held_by_another_process(_copy(reference_dataset, tmp_path)) as out, \
            pytest.raises(UserError, match=r"being written by another process \(collect refuses"):
        collect(tiny_config(out))


@pytest.mark.parametrize("manifest", [
    "{not json",
    json.dumps({"format": "metaimprove-dataset", "format_version": 99, "shards": []}),
    json.dumps({"format": "metaimprove-dataset", "format_version": 1, "shards": [{"shard": "shards/x"}]}),
    json.dumps({"format": "metaimprove-dataset", "format_version": 1, "shards": [
        {"shard": "shards/../../secret.safetensors", "task_name": "", "task": {}, "teacher": "", "seed": 0,
         "iterations": [0, 1], "sha256": ""}]}),
])
def test_damaged_manifest_is_refused(tmp_path: pathlib.Path, manifest: str) -> None:
    (tmp_path / "manifest.json").write_text(manifest)
    with pytest.raises(UserError):
        load_manifest(tmp_path)


def test_pickle_disguised_as_a_shard_is_refused_and_never_runs(reference_dataset: pathlib.Path,
                                                               tmp_path: pathlib.Path) -> None:
    out = tmp_path / "data"
    shutil.copytree(reference_dataset, out)
    marker = tmp_path / "code-ran"
    manifest = json.loads((out / "manifest.json").read_text())
    entry = manifest["shards"][1]
    _, meta = load_shard(out, entry)
    # The attacker rewrites shard, header and manifest so that every checksum agrees.
    entry["sha256"] = forge(out / entry["shard"], pickles(tmp_path, marker)["torch.save"], meta)
    atomic_write_json(out / "manifest.json", manifest)
    for read in (lambda: load_shard(out, entry), lambda: verify_dataset(out), lambda: collect(tiny_config(out)),
                 lambda: build_pairs(out, PairConfig(), FeatureConfig())):
        with pytest.raises(UserError, match=r"not a valid safetensors file|corrupt or missing shard"):
            read()
    assert not marker.exists()
