"""Reliability: SIGKILL at random moments then resume, hostile files, same seed → same bits."""

import hashlib
import json
import pathlib
import pickle
import shutil
import sys

import pytest
import torch
from conftest import TINY_OVERRIDES, dataset_files, tiny_config

from metaimprove import cli
from metaimprove.data.collect import collect, load_shard, verify_dataset
from metaimprove.errors import UserError
from metaimprove.operator.checkpoint import OperatorCheckpoint
from metaimprove.operator.features import FeatureConfig
from metaimprove.operator.networks import OperatorConfig
from metaimprove.storage import atomic_write_json, load_tensors, meta_path, save_tensors
from metaimprove.training.pairs import PairConfig, build_pairs
from metaimprove.training.train import TrainConfig, train

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / "benchmarks"))
from kill_resume import kill_and_resume


def test_sigkill_at_random_moments_then_resume_gives_the_uninterrupted_dataset(
        reference_dataset: pathlib.Path, tmp_path: pathlib.Path) -> None:
    """3 kills (CLI startup costs seconds each); benchmarks/kill_resume.py runs the same with 20."""
    kills = 3
    stats = kill_and_resume(tmp_path / "data", reference_dataset, [*TINY_OVERRIDES, "workers=2"], kills,
                            seed=kills, jitter=3.0, cwd=tmp_path)
    assert stats.kills == kills and stats.problems == []
    for round_dir in sorted((tmp_path / "data").iterdir()):
        assert dataset_files(round_dir) == dataset_files(reference_dataset)


SHIPPED = pathlib.Path(__file__).resolve().parent.parent / "results" / "operators" / "halfcheetah_vel.safetensors"


class _Payload:
    """Unpickling this runs code: it creates the file named by ``marker``."""

    def __init__(self, marker: pathlib.Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (pathlib.Path.touch, (self.marker,))


def _pickles(tmp_path: pathlib.Path, marker: pathlib.Path) -> dict[str, bytes]:
    """The payload as a plain pickle and as a torch.save file (what torch.load without weights_only runs)."""
    torch.save({"operator.w": _Payload(marker)}, tmp_path / "payload.pt")
    return {"pickle": pickle.dumps({"operator.w": _Payload(marker)}),
            "torch.save": (tmp_path / "payload.pt").read_bytes()}


def _forge(path: pathlib.Path, payload: bytes, meta: dict) -> str:
    """Plant ``payload`` at ``path`` with a JSON header that vouches for it, as an attacker holding both files
    would; returns the header's sha256 (what a forged manifest would record)."""
    path.write_bytes(payload)
    header = json.dumps({"format": "metaimprove-tensors", "format_version": 1,
                         "tensors_sha256": hashlib.sha256(payload).hexdigest(), "meta": meta}).encode()
    meta_path(path).write_bytes(header)
    return hashlib.sha256(header).hexdigest()


@pytest.mark.parametrize("kind", ["pickle", "torch.save"])
@pytest.mark.parametrize("header", ["forged", "absent"])
def test_pickle_disguised_as_an_operator_checkpoint_is_refused_and_never_runs(
        tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
        kind: str, header: str) -> None:
    marker = tmp_path / "code-ran"
    evil = tmp_path / "operator.safetensors"
    _forge(evil, _pickles(tmp_path, marker)[kind], load_tensors(SHIPPED)[1])
    if header == "absent":
        meta_path(evil).unlink()
    problem = "not a valid safetensors file" if header == "forged" else "without its metadata"
    with pytest.raises(UserError, match=problem):
        OperatorCheckpoint.load(evil)
    monkeypatch.chdir(tmp_path)
    code = cli.main(["apply", f"operator_path={evil}", "n_tasks=1", "seeds=1", "applications=1",
                     f"out={tmp_path / 'run'}"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and evil.name in err and "Traceback" not in err, err
    assert not marker.exists() and not (tmp_path / "run").exists()
    # The payload is live: anything that unpickles it runs it (so the assertions above can fail).
    pickle.loads(_pickles(tmp_path, marker)["pickle"])
    assert marker.exists()


def test_pickle_disguised_as_a_shard_is_refused_and_never_runs(reference_dataset: pathlib.Path,
                                                               tmp_path: pathlib.Path) -> None:
    out = tmp_path / "data"
    shutil.copytree(reference_dataset, out)
    marker = tmp_path / "code-ran"
    manifest = json.loads((out / "manifest.json").read_text())
    entry = manifest["shards"][1]
    _, meta = load_shard(out, entry)
    # The attacker rewrites shard, header and manifest so that every checksum agrees.
    entry["sha256"] = _forge(out / entry["shard"], _pickles(tmp_path, marker)["torch.save"], meta)
    atomic_write_json(out / "manifest.json", manifest)
    for read in (lambda: load_shard(out, entry), lambda: verify_dataset(out), lambda: collect(tiny_config(out)),
                 lambda: build_pairs(out, PairConfig(), FeatureConfig())):
        with pytest.raises(UserError, match=r"not a valid safetensors file|corrupt or missing shard"):
            read()
    assert not marker.exists()


def _meta_changes() -> list[tuple[str, object, str]]:
    return [
        ("format_version", 2, "format version 2 is not supported"),
        ("format_version", "1", "format version '1' is not supported"),
        ("format", "metaimprove.policy", "not an operator checkpoint"),
        ("policy_spec.obs_dim", "17", "policy_spec must hold integer"),
        ("policy_spec.hidden", [32, 0], "policy sizes must be >= 1"),
        ("policy_spec.hidden", [100_000, 100_000], "more than this metaimprove loads"),
        ("policy_spec.activation", "sigmoid", "unknown activation"),
        ("policy_spec.act_dim", 5, "do not fit the architecture"),
        ("operator.arch", "transformer", "operator.arch must be one of"),
        ("operator.hidden", 1 << 30, r"operator.hidden must be in \[1, 65536\]"),
        ("operator.hidden", 64, "do not fit the architecture"),
        ("operator.step_scale", "0.05", "operator.step_scale must be float"),
        ("operator.step_scale", -1.0, "step_scale must be > 0"),
        ("operator.exec", "os.system", r"unknown settings \['exec'\]"),
        ("features.gamma", 1.5, r"gamma in \(0, 1\]"),
        ("features.n_states", True, "features.n_states must be int"),
        ("ks", [], "ks must be a non-empty list"),
        ("ks", [1, -4], "ks must be a non-empty list"),
        ("ask_quantiles.1", [0.1, 0.0, 0.2], "3 finite increasing numbers"),
        ("ask_quantiles.3", [0.0, 0.1, 0.2], "not one of ks"),
        ("tasks", "halfcheetah_vel/train/0", "tasks must be a list"),
        ("teacher", ["ppo"], "teacher must be a mapping"),
        ("policy_spec", None, "policy_spec must hold"),
    ]


@pytest.mark.parametrize(("key", "value", "problem"), _meta_changes(),
                         ids=[f"{k}={v!r}"[:40] for k, v, _ in _meta_changes()])
def test_checkpoint_metadata_is_validated_before_use(tmp_path: pathlib.Path, key: str, value: object,
                                                     problem: str) -> None:
    tensors, meta = load_tensors(SHIPPED)
    node = meta
    *parents, last = key.split(".")
    for name in parents:
        node = node[name]
    node[last] = value
    path = tmp_path / "operator.safetensors"
    save_tensors(path, tensors, meta)
    with pytest.raises(UserError, match=f"operator checkpoint .*operator.safetensors is invalid: .*{problem}"):
        OperatorCheckpoint.load(path)


def test_checkpoint_with_non_finite_or_missing_weights_is_refused(tmp_path: pathlib.Path) -> None:
    tensors, meta = load_tensors(SHIPPED)
    path = tmp_path / "operator.safetensors"
    name = sorted(tensors)[0]
    save_tensors(path, {**tensors, name: torch.full_like(tensors[name], float("nan"))}, meta)
    with pytest.raises(UserError, match="NaN or infinite"):
        OperatorCheckpoint.load(path)
    save_tensors(path, {k: v for k, v in tensors.items() if k != name}, meta)
    with pytest.raises(UserError, match=f"do not fit the architecture .*{name}"):
        OperatorCheckpoint.load(path)


def test_same_seed_trains_a_bitwise_identical_operator(reference_dataset: pathlib.Path,
                                                       tmp_path: pathlib.Path) -> None:
    def trained(out: pathlib.Path, seed: int) -> dict[str, torch.Tensor]:
        config = TrainConfig(dataset=str(reference_dataset), out=str(out), max_epochs=2, batch_size=16, seed=seed,
                             operator=OperatorConfig(hidden=16, context_dim=8, param_hidden=8),
                             features=FeatureConfig(n_transitions=32, n_states=32), pairs=PairConfig(ks=[1, 2]))
        return load_tensors(train(config))[0]

    first, again, other = trained(tmp_path / "a", 0), trained(tmp_path / "b", 0), trained(tmp_path / "c", 1)
    assert first.keys() == again.keys()
    assert all(torch.equal(first[k], again[k]) for k in first)
    files = [tmp_path / run / "operator.safetensors" for run in ("a", "b")]
    assert files[0].read_bytes() == files[1].read_bytes()
    assert not all(torch.equal(first[k], other[k]) for k in first), "the seed changes nothing"
    # The same operator on the same input gives the same θ' (its outputs, not only its weights).
    op_a, _ = OperatorCheckpoint.load(tmp_path / "a" / "operator.safetensors")
    op_b, _ = OperatorCheckpoint.load(tmp_path / "b" / "operator.safetensors")
    pairs = build_pairs(reference_dataset, PairConfig(ks=[1]), FeatureConfig(n_transitions=32, n_states=32))
    feats = {k: v[:4] for k, v in pairs.items.items()}
    ask = torch.zeros(4, 2)
    with torch.no_grad():
        assert torch.equal(op_a(feats, ask), op_b(feats, ask))
