"""Gymnasium envs: registration, check_env, rewards, determinism, blow-ups."""

import gymnasium
import mujoco
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from metaimprove.sim.envs import ROBOTS, default_task, healthy, make_env, mujoco_log, register_families, task_reward
from metaimprove.sim.tasks import build_model, get_family, load_families, nominal_model


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
    v, p = np.array([[1.2]]), np.array([[3.0]])
    assert task_reward("velocity", {"target_velocity": 0.7}, v, p, a, 0.05)[0] == pytest.approx(-0.5 - 0.075)
    assert task_reward("direction", {"direction": -1.0}, v, p, a, 0.05)[0] == pytest.approx(-1.2 - 0.075)
    assert task_reward("forward", {}, v, p, a, 0.1)[0] == pytest.approx(1.2 - 0.15)
    v2, p2 = np.array([[3.0, 4.0]]), np.array([[1.0, 2.0]])
    heading = {"angle": np.pi / 2}  # straight along +y
    assert task_reward("heading", heading, v2, p2, a, 0.5)[0] == pytest.approx(4.0 - 0.75)
    goal = {"goal_angle": np.pi, "goal_radius": 2.0}  # g = (-2, 0): distance from (1, 2) is √13
    assert task_reward("goal", goal, v2, p2, a, 0.1)[0] == pytest.approx(-np.sqrt(13.0) - 0.15)


@pytest.mark.parametrize(
    ("robot", "qpos_changes", "expected"),
    [
        ("hopper", {}, True),
        ("hopper", {1: 0.69}, False),  # torso below z = 0.7
        ("hopper", {2: 0.21}, False),  # pitched beyond 0.2 rad
        ("hopper", {4: 100.5}, False),  # a joint angle beyond the healthy state range
        ("walker2d", {1: 2.01}, False),  # z must stay in (0.8, 2)
        ("walker2d", {2: -0.99}, True),
        ("ant", {2: 1.0}, True),  # Ant's z range [0.2, 1] includes its ends
        ("ant", {2: 0.19}, False),
        ("swimmer", {0: 1e3}, True),  # no health rule
    ],
)
def test_health_rules_match_gymnasium_v5(robot, qpos_changes, expected):
    model = nominal_model(robot)
    qpos, qvel = model.qpos0.copy(), np.zeros(model.nv)
    if robot in ("hopper", "walker2d"):
        qpos[1] = 1.25
    for i, value in qpos_changes.items():
        qpos[i] = value
    assert bool(healthy(ROBOTS[robot], qpos, qvel)) is expected


# Our family env at nominal physics against gymnasium's own v5 env with the same reward weights.
GYMNASIUM_TWINS = {
    "hopper_rand_params": ("Hopper-v5", {}),
    "walker2d_rand_params": ("Walker2d-v5", {}),
    "swimmer_vel": ("Swimmer-v5", {}),
    "ant_dir": ("Ant-v5", {"include_cfrc_ext_in_observation": False, "contact_cost_weight": 0.0}),
}


@pytest.mark.parametrize("family", sorted(GYMNASIUM_TWINS))
def test_nominal_env_steps_like_gymnasium_v5(family):
    twin_id, kwargs = GYMNASIUM_TWINS[family]
    params = {"angle": 0.0} if family == "ant_dir" else {"target_velocity": 0.0} if family == "swimmer_vel" else {}
    ours = make_env(default_task(family, **params))
    twin = gymnasium.make(twin_id, ctrl_cost_weight=get_family(family).ctrl_cost, **kwargs)
    obs, _ = ours.reset(seed=4)
    twin_obs, _ = twin.reset(seed=4)
    np.testing.assert_array_equal(obs, twin_obs)
    rng = np.random.default_rng(0)
    for t in range(60):
        action = rng.uniform(-1, 1, ours.action_space.shape)
        obs, reward, terminated, *_ = ours.step(action)
        twin_obs, twin_reward, twin_terminated, _, twin_info = twin.step(action)
        np.testing.assert_array_equal(obs, twin_obs)
        assert terminated == twin_terminated
        if family == "swimmer_vel":  # ours: -|v_x - 0|; gymnasium: +v_x
            twin_reward = -abs(twin_info["x_velocity"]) + twin_info["reward_ctrl"]
        if family != "ant_dir":  # Ant-v5 takes v from the torso's xpos, which lags one substep behind qpos
            assert reward == pytest.approx(twin_reward, abs=1e-9), t
        if terminated:
            break
    assert family in ("swimmer_vel", "ant_dir") or terminated, "random actions should topple Hopper and Walker"


@pytest.mark.parametrize("family", sorted(load_families()))
def test_env_rollout_is_deterministic(family):
    task = get_family(family).task("train", 2)
    out = []
    for _ in range(2):
        env = make_env(task)
        obs, _ = env.reset(seed=3)
        rets = [obs]
        for t in range(50):
            obs, r, terminated, *_ = env.step(np.sin(np.arange(env.action_space.shape[0]) + t))
            rets.append(obs * 0 + r)
            if terminated:
                obs, _ = env.reset()
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
