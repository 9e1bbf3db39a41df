"""Gymnasium envs: registration, check_env, rewards, determinism, blow-ups."""

import gymnasium
import mujoco
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from metaimprove.envs import default_task, make_env, mujoco_log, register_families, task_reward
from metaimprove.tasks import build_model, get_family, load_families


@pytest.mark.parametrize("family", sorted(load_families()))
def test_registered_env_passes_check_env(family):
    register_families()
    env = gymnasium.make(get_family(family).env_id, task=get_family(family).task("train", 0))
    check_env(env.unwrapped, skip_render_check=True)
    assert env.spec.max_episode_steps == get_family(family).episode_length


def test_env_accepts_task_kwargs():
    register_families()
    env = gymnasium.make("metaimprove/HalfCheetahVel-v0", target_velocity=1.25)
    assert env.unwrapped.task.param("target_velocity") == 1.25
    with pytest.raises(Exception, match="unknown task parameters"):
        gymnasium.make("metaimprove/HalfCheetahVel-v0", speed=1.0)


def test_rewards_match_hand_computation():
    a = np.array([[0.5, -0.5, 0.0, 0.0, 1.0, 0.0]])  # |a|^2 = 1.5
    v = np.array([1.2])
    assert task_reward("velocity", {"target_velocity": 0.7}, v, a)[0] == pytest.approx(-0.5 - 0.075)
    assert task_reward("direction", {"direction": -1.0}, v, a)[0] == pytest.approx(-1.2 - 0.075)
    assert task_reward("forward", {}, v, a)[0] == pytest.approx(1.2 - 0.15)


def test_env_reward_uses_forward_velocity():
    env = make_env(default_task("halfcheetah_vel", target_velocity=0.5))
    env.reset(seed=0)
    action = np.full(6, 0.2)
    _, reward, *_, info = env.step(action)
    assert reward == pytest.approx(-abs(info["x_velocity"] - 0.5) - 0.05 * 6 * 0.04)


def test_env_rollout_is_deterministic():
    task = get_family("halfcheetah_dir").task("train", 2)
    out = []
    for _ in range(2):
        env = make_env(task)
        obs, _ = env.reset(seed=3)
        rets = [obs]
        for t in range(50):
            obs, r, *_ = env.step(np.sin(np.arange(6) + t))
            rets.append(obs * 0 + r)
        out.append(np.concatenate(rets))
    np.testing.assert_array_equal(out[0], out[1])


def test_blow_up_ends_episode_with_flag():
    env = make_env(default_task("halfcheetah_vel"))
    env.reset(seed=0)
    env.unwrapped.data.qvel[3] = 1e6  # an exploded state
    obs, reward, terminated, _, info = env.step(np.zeros(6))
    assert terminated and info["unstable"]
    assert np.isfinite(obs).all() and reward == 0.0


def test_mujoco_warnings_go_to_the_run_directory(tmp_path):
    model = build_model(default_task("halfcheetah_vel"))
    data = mujoco.MjData(model)
    data.qvel[:] = np.nan  # MuJoCo warns (BADQACC) and resets the state
    with mujoco_log(tmp_path):
        mujoco.mj_step(model, data)
    assert "simulation is unstable" in (tmp_path / "MUJOCO_LOG.TXT").read_text()
