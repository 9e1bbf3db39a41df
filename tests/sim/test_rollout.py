"""Batched collector: equal to gymnasium's env, seeded, whole episodes, blow-ups handled."""

import numpy as np
import pytest
import torch

from metaimprove.sim.envs import default_task, make_env
from metaimprove.sim.policy import ObsNormalizer, Policy, PolicySpec, init_params
from metaimprove.sim.rollout import Collector, Simulator, evaluate, set_threads
from metaimprove.sim.tasks import get_family, load_families


def _policy(seed: int = 0) -> Policy:
    spec = PolicySpec(17, 6)
    return Policy(spec, init_params(spec, torch.Generator().manual_seed(seed)), ObsNormalizer.identity(17))


def _bold_policy(sim: Simulator, seed: int) -> Policy:
    """A random policy with saturating actions, so that Hopper, Walker and Ant fall within a few dozen steps."""
    spec = PolicySpec(sim.obs_dim, sim.act_dim, (16,))
    theta = init_params(spec, torch.Generator().manual_seed(seed))
    spec.unflatten(theta)["W1"].mul_(300.0)
    return Policy(spec, theta, ObsNormalizer.identity(sim.obs_dim))


@pytest.mark.parametrize("family", sorted(load_families()))
def test_collector_equals_gymnasium_env_through_ends_and_resets(family):
    """Collector (batched Simulator) vs the registered gymnasium env with its time limit: same initial states,
    observations, rewards, terminations (falls) and truncations, bit for bit, across several episodes."""
    task = get_family(family).task("train", 1)
    exp = Collector(task, n_envs=1, seed=5).collect(_bold_policy(Simulator(task, 1, 0), 3), 300, deterministic=True)
    actor = _bold_policy(Simulator(task, 1, 0), 3).actor()
    env = make_env(task)
    obs, _ = env.reset(seed=5)  # gymnasium seeds np_random exactly as the Simulator seeds its generator
    ends, returns, ret = [], [], 0.0
    for t in range(300):
        assert np.array_equal(exp.obs[t, 0].numpy(), obs.astype(np.float32)), f"obs differ at step {t}"
        action = np.clip(actor.mean(obs[None])[0], -1.0, 1.0)
        obs, reward, terminated, truncated, info = env.step(action)
        ret += reward
        assert exp.reward[t, 0].item() == np.float32(reward), f"reward differs at step {t}"
        assert bool(exp.terminated[t, 0]) == terminated and not info["unstable"]
        if terminated or truncated:
            ends.append((t, terminated))
            returns.append(ret)
            ret = 0.0
            obs, _ = env.reset()
    assert bool(exp.truncated[:-1, 0].any()) == any(not term for _, term in ends)
    torch.testing.assert_close(exp.episode_returns, torch.tensor(returns, dtype=torch.float32))
    if get_family(family).terminate_when_unhealthy:
        assert sum(term for _, term in ends) >= 2, "the test policy should make the robot fall repeatedly"


@pytest.mark.parametrize("family", ["halfcheetah_vel", "hopper_rand_params"])
def test_collection_is_the_same_on_any_number_of_threads(family):
    """Stepping the envs on 3 threads gives the experience 1 thread gives, bit for bit (falls and resets
    included for Hopper)."""
    task = get_family(family).task("train", 2)
    policy = _bold_policy(Simulator(task, 1, 0), 1)
    runs = []
    try:
        for n in (1, 3):
            set_threads(n)
            collector = Collector(task, n_envs=6, seed=3)
            assert collector.sim._batch.nthread == n
            runs.append(collector.collect(policy, 200))
    finally:
        set_threads(1)
    one, three = runs
    for name in ("obs", "action", "reward", "terminated", "truncated", "trunc_obs", "episode_returns"):
        assert torch.equal(getattr(one, name), getattr(three, name)), name


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
