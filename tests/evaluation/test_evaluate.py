"""The ``evaluate`` stage: apply's evaluation of a policy per task (or on a gymnasium env) into returns.csv, a headless
MP4 per task with ``video=true``, and one-line refusals of bad input that write nothing."""

import csv
import importlib.util
import pathlib

import pytest
import torch

import metaimprove as mi
from metaimprove import cli
from metaimprove.errors import UserError
from metaimprove.evaluation.evaluate import EvaluateConfig, _rendering_env, run_evaluate
from metaimprove.sim.policy import ObsNormalizer, Policy, PolicySpec, init_params, load_policy, save_policy
from metaimprove.sim.tasks import TaskConfig


def _policy(path: pathlib.Path, obs_dim: int = 17, act_dim: int = 6) -> pathlib.Path:
    """A fresh policy file (HalfCheetah's dimensions by default)."""
    spec = PolicySpec(obs_dim, act_dim, hidden=(16, 16))
    save_policy(path, Policy(spec, init_params(spec, torch.Generator().manual_seed(0)),
                             ObsNormalizer.identity(obs_dim)))
    return path


def _rows(out: pathlib.Path) -> list[dict[str, str]]:
    with open(out / "returns.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_returns_per_task_are_the_apis_evaluation(tmp_path: pathlib.Path) -> None:
    policy_file = _policy(tmp_path / "policy.safetensors")
    out = tmp_path / "run"
    rows = run_evaluate(EvaluateConfig(policy=str(policy_file), task=TaskConfig("halfcheetah_vel"), split="test",
                                       n_tasks=2, task_start=1, episodes=2, seed=3, out=str(out)))
    policy = load_policy(policy_file)
    expected = [mi.evaluate(policy, mi.make_task("halfcheetah_vel", "test", i), episodes=2, seed=3) for i in (1, 2)]
    assert [row["mean_return"] for row in rows] == expected
    written = _rows(out)
    assert [r["task"] for r in written] == ["halfcheetah_vel/test/1", "halfcheetah_vel/test/2"]
    assert [float(r["mean_return"]) for r in written] == pytest.approx(expected)
    assert {r["video"] for r in written} == {""} and sorted(p.name for p in out.iterdir()) == ["returns.csv"]


def test_a_gymnasium_env_by_id(tmp_path: pathlib.Path) -> None:
    policy_file = _policy(tmp_path / "hopper.safetensors", obs_dim=11, act_dim=3)
    out = tmp_path / "run"
    rows = run_evaluate(EvaluateConfig(policy=str(policy_file), env="Hopper-v5", episode_length=20, episodes=2,
                                       out=str(out)))
    expected = mi.evaluate(load_policy(policy_file), mi.UserEnv.resolve("Hopper-v5", 20), episodes=2)
    assert [(r["task"], r["mean_return"]) for r in rows] == [("Hopper-v5", expected)]
    assert _rows(out)[0]["task"] == "Hopper-v5"


def _skip_unless_headless_rendering() -> None:
    """Skip, saying why, where this machine cannot write a video (no moviepy, or no EGL/OSMesa)."""
    if importlib.util.find_spec("moviepy") is None:
        pytest.skip("moviepy is not installed (pip install 'metaimprove[video]'); RecordVideo writes MP4s with it")
    try:
        _rendering_env(mi.make_task("halfcheetah_vel", "test", 0)).close()
    except UserError as exc:
        pytest.skip(f"no headless MuJoCo rendering here: {exc}")


def test_video_writes_an_mp4_per_task_headless(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MUJOCO_GL", "egl")
    _skip_unless_headless_rendering()
    out = tmp_path / "run"
    code = cli.main(["evaluate", f"policy={_policy(tmp_path / 'policy.safetensors')}", "n_tasks=1", "episodes=1",
                     "video=true", f"out={out}"])
    assert code == 0
    (row,) = _rows(out)
    video = out / row["video"]
    assert row["video"] == "videos/halfcheetah_vel_test_0.mp4" and video.is_file()
    assert video.read_bytes()[4:8] == b"ftyp", "not an MP4 container"
    assert video.stat().st_size > 10_000
    # The temporary recording folder is gone: only the finished file is left.
    assert [p.name for p in (out / "videos").iterdir()] == [video.name]
    assert float(row["video_return"]) == pytest.approx(float(row["mean_return"]), rel=0.05)


def test_video_where_nothing_renders_is_one_line_and_writes_nothing(tmp_path: pathlib.Path,
                                                                    monkeypatch: pytest.MonkeyPatch,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    if importlib.util.find_spec("moviepy") is None:
        pytest.skip("moviepy is not installed: the stage refuses before it tries to render")
    monkeypatch.setenv("MUJOCO_GL", "no_such_backend")
    policy = _policy(tmp_path / "policy.safetensors")
    code = cli.main(["evaluate", f"policy={policy}", "n_tasks=1", "episodes=1", "video=true",
                     f"out={tmp_path / 'run'}"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert "cannot render halfcheetah_vel/test/0 headless with MUJOCO_GL=no_such_backend" in err
    assert "apt-get install libegl1" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["policy.json", "policy.safetensors"]


BAD_INPUT = [
    (["policy={missing}"], "missing"),
    (["policy={hopper}"], "takes obs 11 / act 3 but halfcheetah_vel/test/0 has obs 17 / act 6"),
    (["policy={cheetah}", "episodes=0"], "episodes must be >= 1"),
    (["policy={cheetah}", "n_tasks=0"], "n_tasks must be >= 1"),
    (["policy={cheetah}", "split=nope"], "unknown split 'nope'"),
    (["policy={cheetah}", "episode_length=5"], "episode_length= sets the episodes of env="),
    (["policy={cheetah}", "env=NoSuchEnv-v0"], "unknown env 'NoSuchEnv-v0'"),
    (["policy={cheetah}", "task=halfcheetah_vl"], "did you mean 'halfcheetah_vel'"),
]


@pytest.mark.parametrize(("args", "problem"), BAD_INPUT, ids=[" ".join(a) for a, _ in BAD_INPUT])
def test_bad_input_is_one_line_and_writes_nothing(args: list[str], problem: str, tmp_path: pathlib.Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    files = {"missing": tmp_path / "missing.safetensors", "hopper": _policy(tmp_path / "h.safetensors", 11, 3),
             "cheetah": _policy(tmp_path / "c.safetensors")}
    before = sorted(tmp_path.iterdir())
    code = cli.main(["evaluate", *(a.format(**files) for a in args), f"out={tmp_path / 'run'}"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and problem in err and err.startswith("metaimprove evaluate: error: ")
    assert sorted(tmp_path.iterdir()) == before
