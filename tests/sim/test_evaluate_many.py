"""Batched evaluation: every policy's return from :func:`evaluate_many` equals, bit for bit, what the evaluation
protocol gave when each policy ran alone in a collector of its own (the committed benchmark curves were made so)."""

import numpy as np
import pytest
import torch

from metaimprove.sim import rollout
from metaimprove.sim.envs import AnyTask, UserEnv
from metaimprove.sim.policy import Policy
from metaimprove.sim.rollout import Collector, GymSimulator, Simulator, evaluate, evaluate_many, set_threads
from metaimprove.sim.tasks import get_family
from tests.sim.test_rollout import _bold_policy


def _alone(policy: Policy, task: AnyTask, n_episodes: int, seed: int) -> float:
    """The evaluation protocol as it ran before evaluate_many: one policy, one collector of ``n_episodes`` envs."""
    collector = Collector(task, n_envs=n_episodes, seed=seed)
    exp = collector.collect(policy, collector.sim.episode_length, deterministic=True)
    done = (exp.terminated | exp.truncated).int()
    first_episode = (torch.cumsum(done, 0) - done) == 0
    total = (exp.reward * first_episode).sum(0)
    return float(total.mean())


def _policies(task: AnyTask, n: int) -> list[Policy]:
    """``n`` different policies: saturating ones (robots fall, some early, some late) and calmer ones."""
    sim = Simulator(task, 1, 0)
    policies = []
    for seed in range(n):
        policy = _bold_policy(sim, seed)
        policy.spec.unflatten(policy.theta)["W1"].mul_(10.0 ** -(seed % 6))
        policies.append(policy)
    return policies


@pytest.mark.parametrize("family", ["halfcheetah_vel", "hopper_rand_params", "walker2d_rand_params", "ant_dir"])
def test_evaluate_many_equals_each_policy_alone(family, monkeypatch):
    """Equal returns (==) for every policy, through falls and early ends, whether the policies share one simulator
    or go in chunks of several, and on any number of threads."""
    task = get_family(family).task("train", 3)
    policies = _policies(task, 6)
    expected = [_alone(p, task, 4, seed=7) for p in policies]
    assert len(set(expected)) == len(expected)
    assert evaluate_many(policies, task, 4, seed=7) == expected
    assert [evaluate(p, task, 4, seed=7) for p in policies] == expected
    monkeypatch.setattr(rollout, "EVAL_ENVS", 8)  # chunks of two policies
    set_threads(3)
    try:
        assert evaluate_many(policies, task, 4, seed=7) == expected
    finally:
        set_threads(1)


def test_evaluate_many_on_a_blow_up(monkeypatch):
    """A policy whose simulation blows up scores what it scored alone (the blown episode counts up to its end)."""
    task = get_family("halfcheetah_vel").task("train", 1)
    policies = _policies(task, 3)
    original = Simulator.step

    def exploding_step(self: Simulator, action: np.ndarray) -> tuple[np.ndarray, ...]:
        # At its 10th step, env 2 of a simulator of one policy (and of every block of evaluate_many's) blows up.
        self.calls = getattr(self, "calls", 0) + 1
        if self.calls == 10:
            self._qvel[2::4, 3] = 1e7
        return original(self, action)

    monkeypatch.setattr(Simulator, "step", exploding_step)
    expected = [_alone(p, task, 4, seed=2) for p in policies]
    assert evaluate_many(policies, task, 4, seed=2) == expected


def test_evaluate_many_on_a_user_env():
    """A user's env: each policy evaluated as it was alone."""
    env = UserEnv.resolve("Hopper-v5", 50)
    sim = GymSimulator(env, 1, 0)
    policies = [_bold_policy(sim, seed) for seed in range(2)]  # type: ignore[arg-type]
    assert evaluate_many(policies, env, 3, seed=1) == [_alone(p, env, 3, seed=1) for p in policies]
