"""Operator checkpoints: exact round trips, the recorded ask, versions, older files; forged or hostile files refused."""

from __future__ import annotations

import json
import pathlib
import pickle

import pytest
import torch

from metaimprove import cli
from metaimprove.errors import UserError
from metaimprove.operator.checkpoint import OperatorCheckpoint, default_ask_k
from metaimprove.operator.features import FeatureConfig
from metaimprove.operator.networks import ImprovementOperator, OperatorConfig
from metaimprove.sim.policy import PolicySpec
from metaimprove.storage import load_tensors, meta_path, save_tensors
from metaimprove.training.train import TrainConfig, train
from tests.helpers import LEGACY_OPERATOR, TINY_TRAIN, forge, pickles, random_features

SPEC = PolicySpec(5, 2, hidden=(8, 8))


def test_checkpoint_round_trip_is_exact(tmp_path):
    op = ImprovementOperator(SPEC, OperatorConfig(hidden=16, context_dim=8, param_hidden=8))
    torch.nn.init.normal_(op.update.rest[-1].weight)
    asks = torch.tensor([[0.0, 0.1], [0.0, 0.2], [1.0, 0.3], [1.0, 0.5]])
    ckpt = OperatorCheckpoint.from_training(FeatureConfig(), op.config, SPEC, [1, 2], asks,
                                            ["a/train/0"], {"name": "ppo", "config": {}})
    path = tmp_path / "op.safetensors"
    ckpt.save(path, op, summary={"val_loss": 0.5})
    op2, ckpt2 = OperatorCheckpoint.load(path)
    feats, ask = random_features(SPEC, 2), torch.randn(2, 2)
    torch.testing.assert_close(op2(feats, ask), op(feats, ask), atol=0, rtol=0)
    assert ckpt2.spec == SPEC and ckpt2.ks == [1, 2] and ckpt2.tasks == ["a/train/0"]
    assert ckpt2.ask()[0] == 1.0  # no recorded ask: the trained k nearest 2, log2(2)
    with pytest.warns(UserWarning, match="outside the trained ks"):
        ckpt2.ask(ask_k=64)
    # The requested improvement is the 90 % quantile of what the asked k's training pairs reached.
    assert ckpt2.ask(ask_k=2)[1] == pytest.approx(float(torch.quantile(torch.tensor([0.3, 0.5]), 0.9)))


def test_a_checkpoint_that_calls_the_env_width_envs_loads_it_as_n_envs(tmp_path: pathlib.Path) -> None:
    op = ImprovementOperator(SPEC, OperatorConfig(hidden=16, context_dim=8, param_hidden=8))
    ckpt = OperatorCheckpoint.from_training(FeatureConfig(n_envs=4), op.config, SPEC, [1], torch.tensor([[0.0, 0.1]]),
                                            ["a/train/0"], {"name": "ars", "config": {}})
    path = tmp_path / "op.safetensors"
    ckpt.save(path, op, summary={})
    header = json.loads(meta_path(path).read_text())
    header["meta"]["features"]["envs"] = header["meta"]["features"].pop("n_envs")  # as written before the rename
    meta_path(path).write_text(json.dumps(header))
    assert OperatorCheckpoint.load(path)[1].features.n_envs == 4


def test_without_a_recorded_ask_the_trained_jump_nearest_two_is_asked_for():
    # Not the largest: far jumps drift (see DEFAULT_ASK_K); ties go to the smaller jump.
    assert [default_ask_k(ks) for ks in ([1, 2, 4, 8], [1, 4], [4, 8, 16], [8], [1])] == [2, 1, 4, 8, 1]


def test_a_recorded_ask_k_is_the_default_ask_and_a_forged_one_is_refused(tmp_path):
    op = ImprovementOperator(SPEC, OperatorConfig(hidden=16, context_dim=8, param_hidden=8))
    asks = torch.tensor([[0.0, 0.1], [1.0, 0.3], [2.0, 0.5]])
    ckpt = OperatorCheckpoint.from_training(FeatureConfig(), op.config, SPEC, [1, 2, 4], asks, ["a/train/0"],
                                            {"name": "ppo", "config": {}}, ask_k=4)
    path = tmp_path / "op.safetensors"
    ckpt.save(path, op, summary={})
    _, loaded = OperatorCheckpoint.load(path)
    assert loaded.ask()[0] == 2.0 and loaded.ask(ask_k=1)[0] == 0.0  # log2(4), not the default 2; told
    header = json.loads(meta_path(path).read_text())
    for forged in (3, "2"):
        meta_path(path).write_text(json.dumps({**header, "meta": {**header["meta"], "ask_k": forged}}))
        with pytest.raises(UserError, match="ask_k must be one of ks"):
            OperatorCheckpoint.load(path)
    with pytest.raises(UserError, match=r"ask_k=3 is not a trained jump; give one of pairs.ks \[1, 2, 4, 8\]"):
        train(TrainConfig(dataset=str(tmp_path), out=str(tmp_path / "op"), ask_k=3))


def test_missing_or_corrupt_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(UserError):
        OperatorCheckpoint.load(tmp_path / "nope.safetensors")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x80\x04not a checkpoint")
    with pytest.raises(UserError):
        OperatorCheckpoint.load(bad)


def test_checkpoint_from_an_incompatible_version_is_refused(tmp_path):
    op = ImprovementOperator(SPEC, OperatorConfig(hidden=16, context_dim=8, param_hidden=8))
    ckpt = OperatorCheckpoint.from_training(FeatureConfig(), op.config, SPEC, [1], torch.tensor([[0.0, 0.1]]), [],
                                            {"name": "ppo", "config": {}})
    path = tmp_path / "op.safetensors"
    ckpt.save(path, op, summary={})
    header = json.loads((tmp_path / "op.json").read_text())
    header["meta"]["format_version"] = 99
    (tmp_path / "op.json").write_text(json.dumps(header))
    with pytest.raises(UserError, match="format version 99 is not supported"):
        OperatorCheckpoint.load(path)


def test_checkpoints_from_before_es_features_load_as_operators_without_them() -> None:
    op, ckpt = OperatorCheckpoint.load(LEGACY_OPERATOR)
    assert not ckpt.features.es_gradient and op.update.es is None
    assert ckpt.ask_k is None and ckpt.resolve_ask_k() == 2  # no recorded ask: the trained jump nearest 2


def test_forged_es_settings_in_a_checkpoint_are_refused(ars_dataset: pathlib.Path, tmp_path: pathlib.Path) -> None:
    path = train(TrainConfig(dataset=str(ars_dataset), out=str(tmp_path / "op"), **TINY_TRAIN))  # type: ignore[arg-type]
    header = json.loads(meta_path(path).read_text())
    for value, problem in (("yes", "features.es_gradient must be bool"), (False, "weights do not fit")):
        meta = {**header["meta"], "features": {**header["meta"]["features"], "es_gradient": value}}
        meta_path(path).write_text(json.dumps({**header, "meta": meta}))
        with pytest.raises(UserError, match=problem):
            OperatorCheckpoint.load(path)


def test_older_checkpoints_read_no_task_and_forged_task_fields_are_refused(oracle_run: pathlib.Path,
                                                                           tmp_path: pathlib.Path) -> None:
    _, shipped = OperatorCheckpoint.load(LEGACY_OPERATOR)  # written before the option existed
    assert not shipped.features.task_input and (shipped.task_family, shipped.task_dim) == (None, 0)
    for name in ("operator.safetensors", "operator.json"):
        (tmp_path / name).write_bytes((oracle_run / name).read_bytes())
    header = json.loads((tmp_path / "operator.json").read_text())
    for change, problem in (({"task_dim": 0}, "needs a task_family name and a task_dim"),
                            ({"task_family": None}, "needs a task_family name and a task_dim"),
                            ({"features": {**header["meta"]["features"], "task_input": False}}, "without features"),
                            ({"task_dim": 35}, "weights do not fit")):
        (tmp_path / "operator.json").write_text(json.dumps({**header, "meta": {**header["meta"], **change}}))
        with pytest.raises(UserError, match=problem):
            OperatorCheckpoint.load(tmp_path / "operator.safetensors")


@pytest.mark.parametrize("kind", ["pickle", "torch.save"])
@pytest.mark.parametrize("header", ["forged", "absent"])
def test_pickle_disguised_as_an_operator_checkpoint_is_refused_and_never_runs(
        tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
        kind: str, header: str, ars_operator: pathlib.Path) -> None:
    marker = tmp_path / "code-ran"
    evil = tmp_path / "operator.safetensors"
    forge(evil, pickles(tmp_path, marker)[kind], load_tensors(ars_operator)[1])
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
    pickle.loads(pickles(tmp_path, marker)["pickle"])
    assert marker.exists()


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
                                                     problem: str, ars_operator: pathlib.Path) -> None:
    tensors, meta = load_tensors(ars_operator)
    node = meta
    *parents, last = key.split(".")
    for name in parents:
        node = node[name]
    node[last] = value
    path = tmp_path / "operator.safetensors"
    save_tensors(path, tensors, meta)
    with pytest.raises(UserError, match=f"operator checkpoint .*operator.safetensors is invalid: .*{problem}"):
        OperatorCheckpoint.load(path)


def test_checkpoint_with_non_finite_or_missing_weights_is_refused(tmp_path: pathlib.Path,
                                                                  ars_operator: pathlib.Path) -> None:
    tensors, meta = load_tensors(ars_operator)
    path = tmp_path / "operator.safetensors"
    name = sorted(tensors)[0]
    save_tensors(path, {**tensors, name: torch.full_like(tensors[name], float("nan"))}, meta)
    with pytest.raises(UserError, match="NaN or infinite"):
        OperatorCheckpoint.load(path)
    save_tensors(path, {k: v for k, v in tensors.items() if k != name}, meta)
    with pytest.raises(UserError, match=f"do not fit the architecture .*{name}"):
        OperatorCheckpoint.load(path)
