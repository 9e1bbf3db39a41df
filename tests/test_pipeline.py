"""The train, apply, plot and pipeline stages end to end through the CLI, and their bad-input errors."""

import csv
import pathlib

import pytest
import torch

from metaimprove.config import PipelineConfig
from metaimprove.errors import UserError
from metaimprove.evaluation.apply import apply
from metaimprove.evaluation.protocol import ApplyConfig
from metaimprove.operator.checkpoint import OperatorCheckpoint
from metaimprove.operator.features import FeatureConfig
from metaimprove.operator.networks import ImprovementOperator, OperatorConfig
from metaimprove.pipeline import pipeline_sizes
from metaimprove.sim.policy import ObsNormalizer, Policy, PolicySpec, save_policy
from metaimprove.sim.rollout import evaluate
from metaimprove.sim.tasks import PIPELINE_SIZES, Task, TaskConfig, TaskFamily, get_family
from tests.helpers import TINY_TEACHER, run_cli

PIPELINE = [f"teacher.{k}={v}" for k, v in TINY_TEACHER.items()] + [
    "n_tasks=3", "iterations=6", "max_epochs=2", "test_tasks=1", "test_seeds=2", "applications=2", "workers=1",
]


@pytest.fixture(scope="module")
def pipeline_run(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    """One tiny end-to-end pipeline run, started from a directory outside the repository."""
    cwd = tmp_path_factory.mktemp("cwd")
    out = tmp_path_factory.mktemp("pipeline") / "run"
    result = run_cli(["pipeline", *PIPELINE, f"out={out}"], cwd=cwd)
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"improvement curves in {out / 'plot' / 'curves.png'}" in result.stdout
    assert not list(cwd.iterdir())  # nothing written where the user stood
    return out


def _curves(path: pathlib.Path) -> list[dict[str, str]]:
    with path.open() as f:
        return list(csv.DictReader(f))


def test_pipeline_writes_every_stage_and_a_consistent_curve_file(pipeline_run: pathlib.Path) -> None:
    assert (pipeline_run / "dataset" / "manifest.json").exists()
    assert (pipeline_run / "operator" / "operator.safetensors").exists()
    assert (pipeline_run / "plot" / "curves.png").stat().st_size > 10_000
    rows = _curves(pipeline_run / "apply" / "curves.csv")
    batch = TINY_TEACHER["n_envs"] * TINY_TEACHER["n_steps"]
    for method in ("operator", "ppo", "no_update"):
        mine = [r for r in rows if r["method"] == method]
        assert len(mine) == 1 * 2 * 3  # tasks × seeds × (start + 2 applications)
        assert sorted({int(r["env_steps"]) for r in mine}) == [0, batch, 2 * batch]
    starts = {r["return"] for r in rows if r["env_steps"] == "0" and r["seed"] == "0" and r["method"] != "nearest"}
    assert len(starts) == 1  # every adapting method starts from the same θ⁰ under the same evaluation
    nearest = [r for r in rows if r["method"] == "nearest"]
    assert len(nearest) == 1 * 2 * 3 and len({r["return"] for r in nearest if r["seed"] == "0"}) == 1  # fixed policy
    _, ckpt = OperatorCheckpoint.load(pipeline_run / "operator" / "operator.safetensors")
    assert ckpt.teacher["config"]["n_envs"] == TINY_TEACHER["n_envs"]
    assert all(t.startswith("halfcheetah_vel/train/") for t in ckpt.tasks)


def test_pipeline_with_ars_compares_the_operator_with_its_teacher_and_ppo(tmp_path: pathlib.Path) -> None:
    # 4 directions × 256 steps: ARS's batch is PPO's 2048, so one application affords PPO one update.
    args = ["pipeline", "teacher=ars", "teacher.n_directions=4", "teacher.top_b=2", "n_tasks=2", "iterations=3",
            "max_epochs=2", "test_tasks=1", "test_seeds=1", "applications=1", "ask_k=1", "workers=1",
            f"out={tmp_path / 'run'}"]
    result = run_cli(args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "beside PPO, ARS, no update" in result.stdout
    rows = _curves(tmp_path / "run" / "apply" / "curves.csv")
    assert {r["method"] for r in rows} == {"operator", "ppo", "ars", "no_update", "nearest"}
    assert {int(r["env_steps"]) for r in rows if r["method"] in ("operator", "ppo", "ars")} == {0, 2048}
    _, ckpt = OperatorCheckpoint.load(tmp_path / "run" / "operator" / "operator.safetensors")
    assert ckpt.teacher["name"] == "ars" and ckpt.features.es_gradient


def test_apply_is_seeded(pipeline_run: pathlib.Path, tmp_path: pathlib.Path) -> None:
    config = dict(operator_path=str(pipeline_run / "operator" / "operator.safetensors"),
                  task=TaskConfig("halfcheetah_vel"), n_tasks=1, seeds=1, applications=2, workers=1,
                  methods=["operator", "ppo"])
    apply(ApplyConfig(out=str(tmp_path / "a"), **config))
    apply(ApplyConfig(out=str(tmp_path / "b"), **config))
    assert _curves(tmp_path / "a" / "curves.csv") == _curves(tmp_path / "b" / "curves.csv")


def test_apply_on_an_explicit_task(pipeline_run: pathlib.Path, tmp_path: pathlib.Path) -> None:
    task = Task("halfcheetah_vel", "custom", 7, (("target_velocity", 1.25),),
                get_family("halfcheetah_vel").task("test", 0).physics)
    (tmp_path / "task.json").write_text(task.to_json())
    result = run_cli(["apply", f"operator_path={pipeline_run / 'operator' / 'operator.safetensors'}",
                      f"task_file={tmp_path / 'task.json'}", "seeds=1", "applications=1", "methods=[operator]",
                      "workers=1", f"out={tmp_path / 'out'}"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert {r["task"] for r in _curves(tmp_path / "out" / "curves.csv")} == {"halfcheetah_vel/custom/7"}
    (tmp_path / "bad.json").write_text("{not json")
    result = run_cli(["apply", f"operator_path={pipeline_run / 'operator' / 'operator.safetensors'}",
                      f"task_file={tmp_path / 'bad.json'}", f"out={tmp_path / 'out2'}"], cwd=tmp_path)
    assert result.returncode == 2 and "is not JSON" in result.stderr and not (tmp_path / "out2").exists()


def test_apply_from_a_given_policy(pipeline_run: pathlib.Path, tmp_path: pathlib.Path) -> None:
    _, ckpt = OperatorCheckpoint.load(pipeline_run / "operator" / "operator.safetensors")
    given = ckpt.fresh_policy(seed=12345)
    save_policy(tmp_path / "init.safetensors", given)
    result = run_cli(["apply", f"operator_path={pipeline_run / 'operator' / 'operator.safetensors'}",
                      f"init={tmp_path / 'init.safetensors'}", "n_tasks=1", "seeds=1", "applications=1",
                      "methods=[no_update]", "workers=1", f"out={tmp_path / 'out'}"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    task = get_family("halfcheetah_vel").task("test", 0)
    start = next(r for r in _curves(tmp_path / "out" / "curves.csv") if r["env_steps"] == "0")
    assert float(start["return"]) == pytest.approx(evaluate(given, task, 8, seed=17), rel=1e-6)
    other = Policy(PolicySpec(17, 6, hidden=(16,)), torch.zeros(PolicySpec(17, 6, hidden=(16,)).n_params),
                   ObsNormalizer.identity(17))
    save_policy(tmp_path / "other.safetensors", other)
    result = run_cli(["apply", f"operator_path={pipeline_run / 'operator' / 'operator.safetensors'}",
                      f"init={tmp_path / 'other.safetensors'}", f"out={tmp_path / 'out2'}"], cwd=tmp_path)
    assert result.returncode == 2 and "initial policy" in result.stderr and not (tmp_path / "out2").exists()


def test_plot_stage_draws_any_curve_files(pipeline_run: pathlib.Path, tmp_path: pathlib.Path) -> None:
    result = run_cli(["plot", f"runs=[{pipeline_run / 'apply'}]", "per_task=true", "pdf=true",
                      f"out={tmp_path / 'fig'}"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "fig" / "curves.png").exists() and (tmp_path / "fig" / "curves.pdf").exists()


@pytest.fixture(scope="module")
def other_shape_operator(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    """A valid checkpoint for policies with 5 observations and 2 actions (no shipped family has those)."""
    spec = PolicySpec(5, 2)
    op = ImprovementOperator(spec, OperatorConfig())
    ckpt = OperatorCheckpoint.from_training(FeatureConfig(), op.config, spec, [1], torch.tensor([[0.0, 0.1]]),
                                            [], {"name": "ppo", "config": {}})
    path = tmp_path_factory.mktemp("ckpt") / "other.safetensors"
    ckpt.save(path, op, summary={})
    return path


@pytest.mark.parametrize(
    ("args", "problem"),
    [
        (["apply", "operator_path={ckpt}", "methods=[operator,magic]"], "unknown methods ['magic']"),
        (["apply", "operator_path={ckpt}", "split=train"], "were used to train this operator"),
        (["apply", "operator_path={missing}"], "is missing"),
        (["apply", "operator_path={other}"], "obs 5 / act 2 but halfcheetah_vel has obs 17 / act 6"),
        (["apply", "operator_path={ckpt}", "applications=0"], "must all be >= 1"),
        (["train", "dataset={empty}"], "is not a collected dataset"),
        (["train", "dataset={run}/dataset", "pairs.ks=[64]"], "too short for any k"),
        (["plot", "runs=[{missing}]"], "no such file"),
    ],
)
def test_bad_input_to_the_operator_stages_is_one_line(args: list[str], problem: str, pipeline_run: pathlib.Path,
                                                      other_shape_operator: pathlib.Path,
                                                      tmp_path: pathlib.Path) -> None:
    (tmp_path / "empty").mkdir()
    values = {"ckpt": pipeline_run / "operator" / "operator.safetensors", "missing": tmp_path / "nope.safetensors",
              "other": other_shape_operator, "empty": tmp_path / "empty", "run": pipeline_run}
    out = tmp_path / "out"
    result = run_cli([a.format(**values) for a in args] + [f"out={out}"], cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and problem in lines[0], result.stderr
    assert not out.exists()  # nothing half-written


def test_corrupt_checkpoint_is_refused(pipeline_run: pathlib.Path, tmp_path: pathlib.Path) -> None:
    src = pipeline_run / "operator" / "operator.safetensors"
    bad = tmp_path / "bad.safetensors"
    data = bytearray(src.read_bytes())
    data[len(data) // 2] ^= 0xFF
    bad.write_bytes(bytes(data))
    (tmp_path / "bad.json").write_bytes((pipeline_run / "operator" / "operator.json").read_bytes())
    result = run_cli(["apply", f"operator_path={bad}", f"out={tmp_path / 'out'}"], cwd=tmp_path)
    assert result.returncode == 2 and "corrupt" in result.stderr and "Traceback" not in result.stderr


def test_pipeline_sizes_come_from_the_family_unless_given() -> None:
    ant = pipeline_sizes(PipelineConfig(task=TaskConfig("ant_dir"), out="x"))
    assert ant == {**PIPELINE_SIZES, **get_family("ant_dir").pipeline}
    assert ant["applications"] < PIPELINE_SIZES["applications"]  # an Ant step costs 4-6 HalfCheetah steps
    assert pipeline_sizes(PipelineConfig(task=TaskConfig("ant_dir"), applications=3, out="x"))["applications"] == 3
    assert pipeline_sizes(PipelineConfig(task=TaskConfig("halfcheetah_vel"), out="x")) == PIPELINE_SIZES
    with pytest.raises(UserError, match="must be >= 1"):
        pipeline_sizes(PipelineConfig(task=TaskConfig("halfcheetah_vel"), n_tasks=0, out="x"))


def test_a_family_file_with_unknown_pipeline_sizes_is_refused() -> None:
    family = get_family("swimmer_vel")
    data = {"name": family.name, "robot": family.robot, "reward": family.reward, "env_id": family.env_id,
            "episode_length": 16, "splits": {"train": {"seed": 1}}, "pipeline": {"n_task": 4}}
    with pytest.raises(UserError, match=r"bad task family file x.yaml: pipeline takes positive integers for"):
        TaskFamily.from_dict(data, "x.yaml")
    assert TaskFamily.from_dict({**data, "pipeline": {"n_tasks": 4}}, "x.yaml").pipeline == {"n_tasks": 4}
