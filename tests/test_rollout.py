"""Batched collector: equal to gymnasium's env, seeded, whole episodes, blow-ups handled."""

import numpy as np
import torch

from metaimprove.envs import default_task, make_env
from metaimprove.policy import ObsNormalizer, Policy, PolicySpec, init_params
from metaimprove.rollout import Collector, Simulator, evaluate
from metaimprove.tasks import get_family


def _policy(seed: int = 0) -> Policy:
    spec = PolicySpec(17, 6)
    return Policy(spec, init_params(spec, torch.Generator().manual_seed(seed)), ObsNormalizer.identity(17))


def test_simulator_equals_gymnasium_env_for_same_actions():
    task = get_family("halfcheetah_rand_params").task("train", 4)
    env = make_env(task)
    obs, _ = env.reset(seed=0)
    data = env.unwrapped.data
    sim = Simulator(task, n_envs=3, seed=0)
    sim.set_state(np.tile(data.qpos, (3, 1)), np.tile(data.qvel, (3, 1)))
    np.testing.assert_array_equal(sim.observation()[1], obs)
    rng = np.random.default_rng(0)
    for _ in range(200):
        action = rng.uniform(-1, 1, 6)
        obs, reward, *_ = env.step(action)
        sim_obs, sim_reward, blown = sim.step(np.tile(action, (3, 1)))
        np.testing.assert_array_equal(sim_obs[2], obs)
        assert sim_reward[2] == reward and not blown.any()


def test_collection_is_seeded_and_shaped():
    task = get_family("halfcheetah_vel").task("train", 0)
    a = Collector(task, n_envs=4, seed=7).collect(_policy(), 256)
    b = Collector(task, n_envs=4, seed=7).collect(_policy(), 256)
    c = Collector(task, n_envs=4, seed=8).collect(_policy(), 256)
    assert a.obs.shape == (256, 4, 17) and a.action.shape == (256, 4, 6)
    assert torch.equal(a.obs, b.obs) and torch.equal(a.reward, b.reward) and torch.equal(a.action, b.action)
    assert not torch.equal(a.obs, c.obs)
    # whole episodes: one per env, truncated at the time limit, bootstrapped from the last obs
    assert a.episode_returns.shape == (4,) and a.truncated[-1].all() and a.truncated[:-1].sum() == 0
    torch.testing.assert_close(a.episode_returns, a.reward.sum(0))
    assert a.trunc_index.tolist() == [[255, e] for e in range(4)]


def test_log_prob_matches_policy_density():
    task = default_task("halfcheetah_vel")
    policy = _policy(3)
    exp = Collector(task, n_envs=2, seed=0).collect(policy, 16)
    torch.testing.assert_close(exp.log_prob, policy.log_prob(exp.obs, exp.action))
    # sampled around the mean with std exp(0) = 1: log-density of a 6-D unit Gaussian on average
    assert abs(exp.log_prob.mean().item() - (-6 * 0.5 * (1 + np.log(2 * np.pi)))) < 1.0


def test_blown_up_env_is_flagged_and_reset():
    task = default_task("halfcheetah_vel")
    col = Collector(task, n_envs=2, seed=0)
    policy = _policy()
    original = col.sim.step

    def exploding_step(action, calls=[0]):  # noqa: B006 - a call counter
        calls[0] += 1
        if calls[0] == 5:
            col.sim._qvel[1, 3] = 1e7
        return original(action)

    col.sim.step = exploding_step
    exp = col.collect(policy, 32)
    assert exp.n_unstable == 1 and exp.terminated[4, 1] and not exp.terminated[:, 0].any()
    assert torch.isfinite(exp.obs).all()
    assert exp.obs[5, 1].abs().max() < 1.0  # a fresh episode started after the blow-up


def test_evaluate_is_deterministic():
    task = get_family("halfcheetah_vel").task("test", 1)
    assert evaluate(_policy(), task, n_episodes=2, seed=0) == evaluate(_policy(), task, n_episodes=2, seed=0)
