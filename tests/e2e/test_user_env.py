"""A user's own gymnasium env (`apply env=<id or module:Class>`): the same collector, teachers and apply run on it."""

from __future__ import annotations

import os
import pathlib
import sys
import textwrap

import numpy as np
import pytest
import torch

from metaimprove.errors import UserError
from metaimprove.evaluation.apply import apply
from metaimprove.evaluation.protocol import ApplyConfig
from metaimprove.sim.envs import UserEnv, default_task
from metaimprove.sim.policy import ObsNormalizer, Policy, PolicySpec, init_params
from metaimprove.sim.rollout import Collector, evaluate
from metaimprove.teachers import ARS, PPO, ARSConfig, PPOConfig
from tests.helpers import TINY_TEACHER, apply_config, curve_rows, run_cli

CHEETAH = PolicySpec(17, 6)
# A user's module: an env whose action Box is not [-1, 1] and whose observation shows the action it received
# (and, at reset, a draw of its own generator, so that seeding shows).
USER_MODULE = '''
import gymnasium
import numpy as np
from gymnasium.spaces import Box


class EchoEnv(gymnasium.Env):
    """Observation: the action it last received and a step counter; reward: the action's sum."""

    def __init__(self):
        self.observation_space = Box(-np.inf, np.inf, shape=(3,), dtype=np.float64)
        self.action_space = Box(np.array([0.0, -2.0]), np.array([1.0, 2.0]), dtype=np.float64)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return np.array([*self.np_random.uniform(size=2), 0.0]), {}

    def step(self, action):
        self.t += 1
        return np.array([*action, self.t]), float(np.sum(action)), False, False, {}


class WideCheetah(gymnasium.Wrapper):
    """Gymnasium's HalfCheetah with its actions stretched to [-2, 2] (a user's wrapper of a MuJoCo env)."""

    def __init__(self):
        super().__init__(gymnasium.make("HalfCheetah-v5"))
        self.action_space = Box(-2.0, 2.0, shape=(6,), dtype=np.float32)

    def step(self, action):
        return self.env.step(np.asarray(action) / 2.0)
'''


@pytest.fixture(scope="module")
def user_module(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    """A directory holding ``user_envs.py`` (the user's module), put on sys.path."""
    folder = tmp_path_factory.mktemp("user_module")
    (folder / "user_envs.py").write_text(textwrap.dedent(USER_MODULE))
    sys.path.insert(0, str(folder))
    yield folder
    sys.path.remove(str(folder))


def _policy(spec: PolicySpec, seed: int = 0) -> Policy:
    return Policy(spec, init_params(spec, torch.Generator().manual_seed(seed)), ObsNormalizer.identity(spec.obs_dim))


def _config(operator_path: pathlib.Path, out: pathlib.Path, **changes: object) -> ApplyConfig:
    return apply_config(operator_path, out, **{"env": "HalfCheetah-v5", "episode_length": 64, **changes})


# ------------------------------------------------------------------------------------------ the collector


def test_gym_collector_equals_the_batched_collector_on_our_own_env_id() -> None:
    """Our registered env id run as a user's env: the gymnasium-backed simulator gives the batched one's
    experience bit for bit (one env, seeded alike), through time limits and resets."""
    policy = _policy(CHEETAH, 3)
    ours = Collector(default_task("halfcheetah_vel"), n_envs=1, seed=5).collect(policy, 300)
    user = UserEnv.resolve("metaimprove/HalfCheetahVel-v0")
    assert user.episode_length == 256  # the id's max_episode_steps
    theirs = Collector(user, n_envs=1, seed=5).collect(policy, 300)
    for name in ("obs", "action", "reward", "terminated", "truncated", "trunc_obs", "trunc_index", "episode_returns"):
        assert torch.equal(getattr(ours, name), getattr(theirs, name)), name
    assert ours.truncated[255, 0] and len(ours.episode_returns) == 1


def test_module_class_rescales_actions_and_is_seeded(user_module: pathlib.Path) -> None:
    env = UserEnv.resolve("user_envs:EchoEnv", episode_length=10)
    policy = _policy(PolicySpec(3, 2), 1)
    a = Collector(env, n_envs=3, seed=7).collect(policy, 25)
    b = Collector(env, n_envs=3, seed=7).collect(policy, 25)
    c = Collector(env, n_envs=3, seed=8).collect(policy, 25)
    assert torch.equal(a.obs, b.obs) and torch.equal(a.reward, b.reward)
    assert not torch.equal(a.obs[0], c.obs[0])  # the envs' own reset draws follow the seed
    # The env received the policy's [-1, 1]-clipped action mapped linearly onto its Box [0, 1] x [-2, 2].
    clipped = a.action.clamp(-1.0, 1.0).double()
    received = torch.stack([(clipped[..., 0] + 1) / 2, clipped[..., 1] * 2], -1)
    step = a.obs[..., 2]
    later = step[1:] > 0  # obs[t + 1] shows action[t] unless env was reset in between
    torch.testing.assert_close(a.obs[1:][later][:, :2].double(), received[:-1][later], atol=1e-6, rtol=0)
    # episode_length=10: time limits at steps 9 and 19, the batch end at 24; the counter restarts after each
    assert a.truncated[:, 0].nonzero().flatten().tolist() == [9, 19, 24]
    assert step[10].tolist() == [0.0] * 3 and not a.terminated.any() and len(a.episode_returns) == 6


def test_teachers_and_evaluate_run_on_a_users_env(user_module: pathlib.Path) -> None:
    env = UserEnv.resolve("user_envs:WideCheetah", episode_length=32)
    policy = _policy(CHEETAH)
    for teacher in (PPO(PPOConfig(**TINY_TEACHER)), ARS(ARSConfig(n_directions=2, top_b=1, n_steps=32))):
        teacher.start(env, policy, seed=0)
        exp = teacher.collect()
        improved = teacher.improve(exp)
        assert exp.obs.shape[1:] == (teacher.batch_shape[0], 17) and torch.isfinite(improved.theta).all()
        assert not torch.equal(improved.theta, policy.theta)
    first, again = evaluate(policy, env, n_episodes=2, seed=4), evaluate(policy, env, n_episodes=2, seed=4)
    assert first == again and np.isfinite(first)


# ------------------------------------------------------------------------------------------------- apply


def test_apply_on_a_gymnasium_id_end_to_end_and_seeded(operator_path: pathlib.Path, tmp_path: pathlib.Path) -> None:
    methods = ["operator", "operator_guarded", "ppo", "no_update"]
    apply(_config(operator_path, tmp_path / "a", methods=methods))
    apply(_config(operator_path, tmp_path / "b", methods=methods))
    rows = curve_rows(tmp_path / "a")
    assert rows == curve_rows(tmp_path / "b")
    assert {r["task"] for r in rows} == {"HalfCheetah-v5"} and {r["method"] for r in rows} == set(methods)
    batch = TINY_TEACHER["n_envs"] * TINY_TEACHER["n_steps"]
    for method in methods:
        for seed in ("0", "1"):
            steps = [int(r["env_steps"]) for r in rows if r["method"] == method and r["seed"] == seed]
            assert steps == [0, batch, 2 * batch]
    returns = {r["method"]: float(r["return"]) for r in rows if r["seed"] == "0" and r["env_steps"] == str(2 * batch)}
    assert returns["operator"] != returns["no_update"] and returns["ppo"] != returns["no_update"]


def test_apply_on_a_module_class_through_the_cli(user_module: pathlib.Path, operator_path: pathlib.Path,
                                                 tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(user_module), os.environ.get("PYTHONPATH", "")]))
    out = tmp_path / "out"
    result = run_cli(["apply", f"operator_path={operator_path}", "env=user_envs:WideCheetah", "episode_length=32",
                      "methods=[operator]", "seeds=1", "applications=1", "eval_episodes=1", "workers=1",
                      f"out={out}"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert {r["task"] for r in curve_rows(out)} == {"user_envs:WideCheetah"} and len(curve_rows(out)) == 2


# ------------------------------------------------------------------------------------------------ errors


def test_shape_mismatch_is_one_line_naming_both_shapes(operator_path: pathlib.Path, tmp_path: pathlib.Path) -> None:
    out = tmp_path / "out"
    with pytest.raises(UserError) as info:
        apply(_config(operator_path, out, env="Hopper-v5", episode_length=None))
    assert str(info.value) == (f"env Hopper-v5 has obs (11,) / act (3,) but operator {operator_path} improves "
                               "obs 17 / act 6")
    assert not out.exists()


@pytest.mark.parametrize(("env", "words"), [
    ("NoSuchEnv-v0", ["unknown env 'NoSuchEnv-v0'", "module:Class"]),
    ("no_such_module:Env", ["cannot import module 'no_such_module'", "PYTHONPATH"]),
    ("user_envs:NoSuchClass", ["unknown env 'user_envs:NoSuchClass'"]),
    ("user_envs:EchoEnv", ["declares no episode length", "episode_length="]),
])
def test_unknown_or_unusable_env_is_one_line(user_module: pathlib.Path, env: str, words: list[str]) -> None:
    with pytest.raises(UserError) as info:
        UserEnv.resolve(env)
    message = str(info.value)
    assert "\n" not in message and all(w in message for w in words), message


@pytest.mark.parametrize(("changes", "words"), [
    ({"methods": ["operator", "nearest"]}, ["nearest need(s) a task family's training runs", "no_update"]),
    ({"start": "train_init", "dataset": "x"}, ["start=train_init need(s)"]),
    ({"env": "user_envs:EchoEnv", "episode_length": 8}, ["env user_envs:EchoEnv has obs (3,) / act (2,)"]),
    ({"env": None}, ["episode_length= sets the episodes of env="]),
])
def test_apply_refuses_what_a_users_env_cannot_run(user_module: pathlib.Path, operator_path: pathlib.Path,
                                                   tmp_path: pathlib.Path, changes: dict[str, object],
                                                   words: list[str]) -> None:
    with pytest.raises(UserError) as info:
        apply(_config(operator_path, tmp_path / "out", **changes))
    assert all(w in str(info.value) for w in words), str(info.value)
