"""The ARS teacher (Augmented Random Search V2-t), exploring in parameter space on the batched collector.

Why its batch records each env's perturbation: see the design notes (docs/design.md, "Teachers that explore in
parameter space, and the learned ES step").
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch

from metaimprove.errors import UserError
from metaimprove.sim.envs import AnyTask
from metaimprove.sim.policy import Policy
from metaimprove.sim.rollout import Collector, Experience
from metaimprove.teachers.base import Teacher, check_policy


@dataclass
class ARSConfig:
    """ARS V2-t hyperparameters (defaults: sb3-contrib's N and α, the paper's HalfCheetah ν, the top half as b)."""

    n_directions: int = 8
    """N: random directions per update; each is rolled out as θ + νδ and θ - νδ (2N envs)"""
    top_b: int = 4
    """b: the directions with the largest max(r⁺, r⁻) that enter the update (1 <= b <= N)"""
    lr: float = 0.02
    """step size α"""
    noise_std: float = 0.03
    """ν: standard deviation of the parameter perturbations"""
    n_steps: int = 256
    """steps per perturbed rollout (one whole episode at the default episode length)"""


class ARS(Teacher):
    """Augmented Random Search V2-t (Mania et al. 2018) on the batched :class:`~metaimprove.sim.rollout.Collector`.

    ARS improves the deterministic policy (the mean action; ``log_std`` is neither perturbed nor changed) by
    finite differences along random directions of every weight and bias of θ — the MLP of the
    :class:`PolicySpec`, or a linear policy if it has no hidden layers. One update, as sb3-contrib's ``ARS``:

    1. draw δ₁ … δ_N ~ N(0, I) over the weights and biases;
    2. roll out θ + νδ_k and θ - νδ_k for ``n_steps`` each: return r_k⁺, r_k⁻ (sum of the rollout's rewards);
    3. keep the b directions with the largest max(r_k⁺, r_k⁻) ("-t");
    4. θ ← θ + α / (b·σ_R + 1e-6) · Σ_top (r_k⁺ - r_k⁻) δ_k, with σ_R the (n-1) standard deviation of the 2b
       kept returns.

    All 2N perturbed policies run as one batch of 2N envs, env e with its own θ_e.

    Observation normalization (V2): the rollouts use θⁿ's statistics frozen; ``improve`` then folds every
    state they visited into a copy of the statistics, and θⁿ⁺¹ is paired with that copy. This is exactly the
    policy ARS V2 runs next (its parameter step is taken in the old coordinates and deployed with the new
    statistics, as in the original implementation's per-iteration filter sync).

    Args:
        config: hyperparameters (default :class:`ARSConfig`).
    """

    name = "ars"

    def __init__(self, config: ARSConfig | None = None) -> None:
        self.config = config or ARSConfig()
        cfg = self.config
        if cfg.n_directions < 1 or cfg.n_steps < 1:
            raise UserError(f"ARS needs n_directions >= 1 and n_steps >= 1, got {cfg.n_directions} and {cfg.n_steps}")
        if not 1 <= cfg.top_b <= cfg.n_directions:
            raise UserError(f"ARS top_b must lie in [1, n_directions={cfg.n_directions}], got {cfg.top_b}")
        if not (cfg.lr > 0 and cfg.noise_std > 0 and math.isfinite(cfg.lr) and math.isfinite(cfg.noise_std)):
            raise UserError(f"ARS lr and noise_std must be positive and finite, got {cfg.lr} and {cfg.noise_std}")
        self._collector: Collector | None = None
        self._policy: Policy | None = None

    @property
    def batch_shape(self) -> tuple[int, int]:
        """``(2 × n_directions, n_steps)``: one env per perturbed policy."""
        return 2 * self.config.n_directions, self.config.n_steps

    def resized(self, n_envs: int) -> ARS:
        """ARS with ``n_envs / 2`` directions keeping the same share of them as its top ``b`` (at least one);
        ``n_envs`` must be even."""
        if n_envs < 2 or n_envs % 2:
            raise UserError(f"an ARS batch holds antithetic pairs of envs: its size must be even and >= 2, "
                            f"got {n_envs}")
        n = n_envs // 2
        top_b = max(1, round(self.config.top_b * n / self.config.n_directions))  # <= n, as top_b <= n_directions
        return ARS(dataclasses.replace(self.config, n_directions=n, top_b=top_b))

    @property
    def policy(self) -> Policy:
        """The current policy θ with the normalizer it collects with."""
        if self._policy is None:
            raise RuntimeError("ARS.start() must be called first")
        return self._policy

    def start(self, task: AnyTask, policy: Policy, seed: int) -> None:
        """Begin a run on ``task`` from a copy of ``policy`` with a fresh collector of 2N envs.

        ``seed`` seeds the initial states and the directions δ: the same seed gives bitwise the same run.
        """
        self._collector = Collector(task, 2 * self.config.n_directions, seed)
        check_policy(policy, self._collector, self.name)
        self._policy = Policy(policy.spec, policy.theta.detach().to(torch.float32).clone(), policy.normalizer.copy())
        # Everything before log_std: every weight and bias.
        self._n_perturbed = policy.spec.layout()[-1][2]
        self._gen = torch.Generator().manual_seed(seed)

    def explore(self, policy: Policy) -> Experience:
        """Roll out the 2N perturbations of ``policy`` along a fresh draw of directions, one env each,
        normalizer frozen.

        Returns their experience ``[n_steps, 2N, ...]``: env k < N ran θ + νδ_k, env N + k ran θ - νδ_k,
        deterministically (actions are the perturbed means), and ``perturbation`` records each env's ±νδ_k.
        ``log_prob`` is recomputed as the log-density of those actions under the unperturbed θ's Gaussian, so
        that τ relates to θ like a PPO batch.
        """
        if self._collector is None:
            raise RuntimeError("ARS.start() must be called first")
        cfg = self.config
        deltas = torch.randn(cfg.n_directions, self._n_perturbed, generator=self._gen)
        step = torch.zeros(cfg.n_directions, policy.spec.n_params)
        step[:, :self._n_perturbed] = cfg.noise_std * deltas
        perturbation = torch.cat([step, -step])
        exp = self._collector.collect(Policy(policy.spec, policy.theta + perturbation, policy.normalizer),
                                      cfg.n_steps, deterministic=True)
        exp.log_prob = policy.log_prob(exp.obs, exp.action)
        exp.perturbation = perturbation
        return exp

    def improve(self, experience: Experience) -> Policy:
        """One ARS step from the returns of the current policy's perturbed rollouts (:meth:`explore`'s
        experience, which records the perturbations); returns θⁿ⁺¹ (updated normalizer)."""
        cfg, old = self.config, self.policy
        n = cfg.n_directions
        perturbation = experience.perturbation
        if perturbation is None or perturbation.shape != (2 * n, old.spec.n_params) \
                or not torch.equal(perturbation[n:], -perturbation[:n]):
            raise UserError(f"ARS improves from the {2 * n} antithetic perturbed rollouts of its own explore(); "
                            "this experience does not record them")
        returns = experience.reward.sum(0)
        plus, minus = returns[:n], returns[n:]
        top = torch.argsort(torch.maximum(plus, minus), descending=True, stable=True)[:cfg.top_b]
        plus, minus = plus[top], minus[top]
        return_std = float(torch.cat([plus, minus]).std())
        step_size = cfg.lr / (cfg.top_b * return_std + 1e-6)
        # (r⁺ − r⁻)·δ_k = (r⁺ − r⁻)·(νδ_k)/ν: the step is taken along the recorded perturbations.
        step = (step_size / cfg.noise_std) * ((plus - minus) @ perturbation[top, :self._n_perturbed])
        theta = old.theta.clone()
        theta[:self._n_perturbed] += step
        norm = old.normalizer.copy()
        norm.update(experience.obs.numpy())
        self._policy = Policy(old.spec, theta, norm)
        self.last_stats = {"return_std": return_std, "step_size": step_size, "step_norm": float(step.norm())}
        return self._policy


