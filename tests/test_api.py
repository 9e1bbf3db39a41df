"""The Python API (``metaimprove.api``, re-exported by the package), shipped operators by name, the gymnasium
registration ``import metaimprove`` does, and ``metaimprove --version``."""

from __future__ import annotations

import csv
import logging
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile

import pytest
import torch

import metaimprove
import metaimprove as mi
from metaimprove import api, cli
from metaimprove.errors import UserError
from metaimprove.evaluation.apply import apply
from metaimprove.evaluation.protocol import ApplyConfig
from metaimprove.operator.checkpoint import OperatorCheckpoint, resolve_operator, shipped_dir, shipped_operators
from metaimprove.sim.tasks import TaskConfig, load_families

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOCS_PAGE = ROOT / "docs" / "python-api.md"
SHIPPED = ["ant_dir", "ant_goal", "halfcheetah_dir", "halfcheetah_rand_params", "halfcheetah_vel",
           "halfcheetah_vel.ppo", "hopper_rand_params", "swimmer_vel", "universal", "universal_raw",
           "walker2d_rand_params"]


def fresh_python(code: str, cwd: pathlib.Path | None = None, python: str = sys.executable,
                 env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``code`` run by a fresh interpreter (nothing imported yet); fails the test with its stderr if it fails."""
    result = subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=120, cwd=cwd,
                            env=None if env is None else {**os.environ, **env})
    assert result.returncode == 0, result.stderr[-2000:]
    return result


# ------------------------------------------------------------------------------------------- the package


def test_import_is_light_and_registers_every_family() -> None:
    out = fresh_python(
        "import sys, gymnasium, metaimprove\n"
        "heavy = [m for m in ('torch', 'metaimprove.api', 'metaimprove.sim.envs') if m in sys.modules]\n"
        "ids = sorted(i for i in gymnasium.registry if i.startswith('metaimprove/'))\n"
        "spec = gymnasium.spec('metaimprove/HalfCheetahVel-v0')\n"
        "print(heavy, ids, spec.entry_point, spec.max_episode_steps, spec.kwargs)\n"
        "env = gymnasium.make('metaimprove/HalfCheetahVel-v0', target_velocity=1.0)\n"
        "obs, _ = env.reset(seed=0)\n"
        "print(obs.shape, env.step(env.action_space.sample())[1] <= 0.0)\n").stdout.splitlines()
    ids = sorted(family.env_id for family in load_families().values())
    assert out[0] == (f"[] {ids} metaimprove.sim.envs:TaskEnv 256 {{'family': 'halfcheetah_vel'}}")
    assert out[1] == "(17,) True"


def test_gymnasium_imports_the_package_from_a_module_env_id() -> None:
    out = fresh_python("import gymnasium\n"
                       "env = gymnasium.make('metaimprove:metaimprove/HalfCheetahVel-v0')\n"
                       "print(type(env.unwrapped).__name__, env.reset(seed=0)[0].shape, env.spec.max_episode_steps)\n")
    assert out.stdout.split() == ["TaskEnv", "(17,)", "256"]


def test_a_broken_family_path_leaves_the_package_importable(tmp_path: pathlib.Path) -> None:
    """Registration skips it; the first use of the families refuses it."""
    out = fresh_python("import metaimprove\nfrom metaimprove.errors import UserError\n"
                       "try:\n    metaimprove.make_task('halfcheetah_vel')\nexcept UserError as e:\n    print(e)\n",
                       env={"METAIMPROVE_TASK_PATH": str(tmp_path / "nowhere")})
    nowhere = tmp_path / "nowhere"
    assert out.stdout == f"METAIMPROVE_TASK_PATH names {nowhere}, which is neither a directory nor a file\n"


def test_the_package_reexports_the_api_lazily() -> None:
    assert set(api.__all__) - {"TaskOrEnv", "resolve_task", "shipped_operators"} <= set(metaimprove.__all__)
    for name in metaimprove.__all__:
        if name != "__version__":
            assert getattr(metaimprove, name) is getattr(api, name)
            assert name in dir(metaimprove)
    from metaimprove.data.collect import collect
    from metaimprove.training.train import TrainConfig
    assert mi.collect is collect and mi.TrainConfig is TrainConfig and mi.apply is apply
    with pytest.raises(AttributeError, match="has no attribute 'nope'"):
        _ = metaimprove.nope  # type: ignore[attr-defined]


def test_one_version() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "version" in project["project"]["dynamic"] and "version" not in project["project"]
    assert project["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "metaimprove.__version__"}
    assert re.fullmatch(r"\d+\.\d+\.\d+", metaimprove.__version__)


@pytest.mark.parametrize("flag", ["--version", "-V"])
def test_cli_prints_the_version(flag: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main([flag]) == 0
    assert capsys.readouterr().out == f"metaimprove {metaimprove.__version__}\n"


# ------------------------------------------------------------------------------------------- tasks and evaluate


def test_make_task_is_the_task_every_stage_draws() -> None:
    task = mi.make_task("halfcheetah_vel", split="test", index=3)
    assert task == mi.get_family("halfcheetah_vel").task("test", 3)
    assert mi.make_task("halfcheetah_vel") == mi.get_family("halfcheetah_vel").task("train", 0)
    assert isinstance(mi.get_family("ant_dir"), mi.TaskFamily)
    with pytest.raises(UserError, match="unknown split 'val'"):
        mi.make_task("halfcheetah_vel", split="val")
    with pytest.raises(UserError, match="unknown task family 'cheetah'"):
        mi.make_task("cheetah")


def test_a_task_or_env_is_a_task_a_user_env_or_an_id() -> None:
    task = mi.make_task("hopper_rand_params")
    assert api.resolve_task(task) is task
    env = api.resolve_task("metaimprove/HalfCheetahVel-v0")
    assert env == mi.UserEnv("metaimprove/HalfCheetahVel-v0", 256)
    assert api.resolve_task(env) is env
    with pytest.raises(UserError, match="unknown env 'Nope-v0'"):
        api.resolve_task("Nope-v0")
    with pytest.raises(UserError, match="got int"):
        api.resolve_task(3)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------- operators by name


def test_shipped_operators_resolve_by_name_and_a_file_wins(tmp_path: pathlib.Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    assert list(shipped_operators()) == SHIPPED  # the DR policy shipped beside them is no operator
    assert resolve_operator("halfcheetah_vel") == shipped_dir() / "halfcheetah_vel.safetensors"
    assert resolve_operator("halfcheetah_vel.safetensors") == shipped_dir() / "halfcheetah_vel.safetensors"
    monkeypatch.chdir(tmp_path)
    for suffix in (".safetensors", ".json"):  # an ant operator under a halfcheetah name, in the working directory
        shutil.copy(shipped_dir() / f"ant_dir{suffix}", tmp_path / f"halfcheetah_vel{suffix}")
    assert resolve_operator("halfcheetah_vel.safetensors") == pathlib.Path("halfcheetah_vel.safetensors")
    assert mi.Operator.from_pretrained("halfcheetah_vel.safetensors").checkpoint.spec.obs_dim == 27
    (tmp_path / "ant_dir").mkdir()  # a directory is no checkpoint: the name still means the shipped one
    assert resolve_operator("ant_dir") == shipped_dir() / "ant_dir.safetensors"
    with pytest.raises(UserError) as error:
        mi.Operator.from_pretrained("cheetah")
    message = str(error.value)
    assert "\n" not in message and message.startswith("operator cheetah is missing: no such checkpoint file")
    assert message.endswith(f"({', '.join(SHIPPED)})")


def test_cli_apply_takes_an_operator_name(tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = cli.main(["apply", "operator_path=halfcheetah_vel", "methods=[no_update]", "n_tasks=1", "seeds=1",
                     "eval_episodes=1", "workers=1", f"out={tmp_path / 'out'}"])
    assert code == 0 and (tmp_path / "out" / "curves.csv").is_file()
    assert cli.main(["apply", "operator_path=cheetah", f"out={tmp_path / 'refused'}"]) == cli.EXIT_BAD_INPUT
    assert "error: operator cheetah is missing" in capsys.readouterr().err


def _source_tree(tmp_path: pathlib.Path) -> pathlib.Path:
    """What the package is built from, copied (building in the shared checkout would write build/ there)."""
    src = tmp_path / "src"
    for name in ("pyproject.toml", "README.md", "metaimprove", "tasks", "configs", "results/operators",
                 "results/family_cost.csv", "results/task_diversity.csv"):
        target = src / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, target, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(ROOT / name, target)
    return src


def _wheel(tmp_path: pathlib.Path) -> pathlib.Path:
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                    str(tmp_path / "wheel"), str(_source_tree(tmp_path))], check=True, capture_output=True,
                   timeout=300)
    (wheel,) = (tmp_path / "wheel").glob("metaimprove-*.whl")
    return wheel


def test_the_wheel_ships_the_operators(tmp_path: pathlib.Path) -> None:
    wheel = _wheel(tmp_path)
    assert wheel.name == f"metaimprove-{metaimprove.__version__}-py3-none-any.whl"
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = {n.removeprefix("metaimprove/operators/") for n in names if n.startswith("metaimprove/operators/")}
    expected = {p.name for p in (ROOT / "results" / "operators").iterdir()
                if p.name.endswith((".safetensors", ".json", ".collect.yaml", ".train.yaml"))}
    assert shipped == expected
    assert {f"{name}{suffix}" for name in SHIPPED for suffix in (".safetensors", ".json", ".collect.yaml")} <= shipped
    assert "metaimprove/task_files/halfcheetah_vel.yaml" in names and "metaimprove/api.py" in names
    # `metaimprove tasks` reads its measurements from the package, never from a working directory's results/.
    assert {"metaimprove/results/family_cost.csv", "metaimprove/results/task_diversity.csv"} <= names


def test_a_non_editable_install_loads_operators_by_name(tmp_path: pathlib.Path) -> None:
    wheel = _wheel(tmp_path)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    (site,) = (venv / "lib").glob("python3*/site-packages")
    # The dependencies come from this interpreter's site-packages (after the venv's own, where the wheel goes).
    deps = subprocess.run([sys.executable, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    (site / "deps.pth").write_text(deps + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "-q",
                    "--no-deps", str(wheel)], check=True, capture_output=True, timeout=300)
    out = fresh_python("import metaimprove as mi\n"
                       "op = mi.Operator.from_pretrained('halfcheetah_vel')\n"
                       "print(mi.__file__)\nprint(op.path)\nprint(op.checkpoint.spec.obs_dim)\n",
                       cwd=tmp_path, python=str(venv / "bin" / "python")).stdout.splitlines()
    assert out == [str(site / "metaimprove" / "__init__.py"),
                   str(site / "metaimprove" / "operators" / "halfcheetah_vel.safetensors"), "17"]
    result = subprocess.run([str(venv / "bin" / "metaimprove"), "apply", "operator_path=halfcheetah_vel",
                             "methods=[no_update]", "n_tasks=1", "seeds=1", "eval_episodes=1", "workers=1",
                             f"out={tmp_path / 'out'}"], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert (tmp_path / "out" / "curves.csv").is_file()


# ------------------------------------------------------------------------------------------- improve


def test_improve_is_apply_s_operator_run(tmp_path: pathlib.Path) -> None:
    """Improving with the API and evaluating each point gives apply's curve for the same task and seed."""
    budget, seed = 2048, 1
    curves = apply(ApplyConfig(operator_path="halfcheetah_vel", out=str(tmp_path), task=TaskConfig("halfcheetah_vel"),
                               n_tasks=1, seeds=seed + 1, budget=budget, methods=["operator"], eval_episodes=2,
                               workers=1))
    with open(curves, newline="") as f:
        expected = [(int(r["env_steps"]), float(r["return"])) for r in csv.DictReader(f) if r["seed"] == str(seed)]
    op = mi.Operator.from_pretrained("halfcheetah_vel")
    task = mi.make_task("halfcheetah_vel", split="test", index=0)
    policy = op.initial_policy(seed)
    got = [(0, mi.evaluate(policy, task, episodes=2, seed=seed))]
    got += [(steps, mi.evaluate(p, task, episodes=2, seed=seed))
            for steps, p in op.improve(policy, task, budget=budget, seed=seed)]
    assert [s for s, _ in got] == [s for s, _ in expected] == [0, 512, 1024, 1536, 2048]
    assert [r for _, r in got] == pytest.approx([r for _, r in expected], rel=1e-5, abs=1e-4)


def test_improve_runs_on_an_env_id_and_refuses_what_does_not_fit() -> None:
    op = mi.Operator.from_pretrained("halfcheetah_vel")
    policy = op.initial_policy()
    points = list(op.improve(policy, "metaimprove/HalfCheetahVel-v0", budget=op.batch))
    assert [s for s, _ in points] == [512, 1024, 1536, 2048]
    assert all(torch.isfinite(p.theta).all() and p.spec == policy.spec for _, p in points)
    assert not torch.equal(points[-1][1].theta, policy.theta)
    task = mi.make_task("halfcheetah_vel", split="test")
    # Refusals come when improve is called, before any step.
    with pytest.raises(UserError, match="smaller than one batch"):
        op.improve(policy, task, budget=op.batch - 1)
    ant = mi.Operator.from_pretrained("ant_dir")
    with pytest.raises(UserError, match="the policy has spec"):
        op.improve(ant.initial_policy(), task, budget=op.batch)
    with pytest.raises(UserError, match=r"ant_dir/train/0 has obs \(27,\) / act \(8,\) but this operator improves"):
        op.improve(policy, mi.make_task("ant_dir"), budget=op.batch)
    with pytest.raises(UserError, match="episodes must be >= 1"):
        mi.evaluate(policy, task, episodes=0)


def test_the_docs_example_runs(capsys: pytest.CaptureFixture[str]) -> None:
    """docs/python-api.md's first example, verbatim but for a budget of one batch; the README shows the same."""
    (example, *_) = re.findall(r"```python\n(.*?)```", DOCS_PAGE.read_text(), flags=re.DOTALL)
    assert f"```python\n{example}```" in (ROOT / "README.md").read_text()
    assert len(example.splitlines()) <= 10
    assert example.count("budget=20 * op.batch") == 1
    exec(compile(example.replace("budget=20 * op.batch", "budget=op.batch"), str(DOCS_PAGE), "exec"), {})
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("start -") and [line.split()[0] for line in lines[1:]] == ["512", "1024", "1536",
                                                                                         "2048"]


def test_from_pretrained_warns_in_one_line_about_an_unfinished_checkpoint(
        ars_operator: pathlib.Path, tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture) -> None:
    op, ckpt = OperatorCheckpoint.load(ars_operator)
    unfinished = tmp_path / "unfinished.safetensors"
    ckpt.save(unfinished, op, summary={"complete": False})
    for path, warned in ((ars_operator, 0), (unfinished, 1)):
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="metaimprove"):
            mi.Operator.from_pretrained(path)
        warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
        assert len(warnings) == warned and all("has not finished" in w and "\n" not in w for w in warnings)
