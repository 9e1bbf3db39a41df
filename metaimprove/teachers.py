"""Teachers: the trusted baseline improvers we learn from and compare against (PPO first, ARS second).

A teacher improves a policy from the experience it just collected, ``improve(τ) -> θ'``, and
:meth:`Teacher.run` turns that into a stream of :class:`ImprovementRecord` — one per update,
``(θⁿ, τⁿ, task) → θⁿ⁺¹`` — which :mod:`metaimprove.collect` writes to disk.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from metaimprove.envs import AnyTask
from metaimprove.errors import UserError
from metaimprove.policy import ObsNormalizer, Policy, PolicySpec, forward, log_prob
from metaimprove.rollout import Collector, Experience
from metaimprove.tasks import Task

# SB3 builds its Adam with eps=1e-5 (torch's default is 1e-8) and torch's default betas.
ADAM_BETAS = (0.9, 0.999)
ADAM_EPS = 1e-5
LOG_2PI = math.log(2 * math.pi)


@dataclass
class PPOConfig:
    """PPO hyperparameters (defaults follow SB3's MuJoCo settings with 8 envs × 256 steps)."""

    n_envs: int = 8
    """environments per batch; n_envs × n_steps env steps per update"""
    n_steps: int = 256
    """steps per environment per update (one whole episode at the default episode length)"""
    lr: float = 3e-4
    """Adam learning rate of policy and value function"""
    n_epochs: int = 10
    """passes over each batch"""
    minibatch_size: int = 64
    """transitions per gradient step"""
    gamma: float = 0.99
    """discount factor"""
    gae_lambda: float = 0.95
    """GAE λ"""
    clip_range: float = 0.2
    """PPO ratio clipping ε"""
    ent_coef: float = 0.0
    """entropy bonus weight"""
    vf_coef: float = 0.5
    """value-loss weight"""
    max_grad_norm: float = 0.5
    """global gradient-norm clip"""
    value_hidden: tuple[int, ...] = (64, 64)
    """hidden sizes of the (separate) value network"""
    normalize_advantage: bool = True
    """standardize advantages per minibatch"""


@dataclass
class ImprovementRecord:
    """One teacher update on one task: θⁿ collected τⁿ, and the teacher turned it into θⁿ⁺¹."""

    task: Task
    iteration: int
    """n, counted from 0"""
    policy: Policy
    """θⁿ with the normalizer it collected τⁿ with"""
    experience: Experience
    """τⁿ"""
    next_policy: Policy
    """θⁿ⁺¹ with its (updated) normalizer"""
    mean_return: float
    """mean return of τⁿ's completed episodes"""
    env_steps: int
    """environment steps used so far, τⁿ included"""


class Teacher:
    """Base of the teachers: ``start`` on a task from a policy, then ``improve`` from each batch."""

    name: str = "teacher"

    @property
    def batch_shape(self) -> tuple[int, int]:
        """``(envs, steps per env)`` of the batch collected per update."""
        raise NotImplementedError

    @property
    def steps_per_update(self) -> int:
        """Environment steps collected per update."""
        n_envs, n_steps = self.batch_shape
        return n_envs * n_steps

    def resized(self, n_envs: int) -> Teacher:
        """A fresh teacher of this kind and config whose batches hold ``n_envs`` environments (an operator that
        reads fewer of them than its teacher ran collects such batches)."""
        raise NotImplementedError

    def start(self, task: AnyTask, policy: Policy, seed: int) -> None:
        """Begin a run on ``task`` from ``policy`` (copied); resets all teacher state (value net, optimizer)."""
        raise NotImplementedError

    def collect(self) -> Experience:
        """Collect one batch with the current policy."""
        return self.explore(self.policy)

    def explore(self, policy: Policy) -> Experience:
        """Collect one batch of this teacher's kind from ``policy`` (not necessarily the teacher's own) on the
        task of :meth:`start`, drawing on the teacher's collector and noise: what an improvement operator trained
        on this teacher's pairs must see."""
        raise NotImplementedError

    def improve(self, experience: Experience) -> Policy:
        """Update the current policy from ``experience`` (collected by it); returns the new policy."""
        raise NotImplementedError

    @property
    def policy(self) -> Policy:
        """The current policy."""
        raise NotImplementedError

    def run(self, task: Task, policy: Policy, iterations: int, seed: int) -> Iterator[ImprovementRecord]:
        """``iterations`` updates from ``policy`` on ``task``, yielding one record per update."""
        self.start(task, policy, seed)
        steps = 0
        for n in range(iterations):
            before = _snapshot(self.policy)
            exp = self.collect()
            steps += exp.n_steps
            after = _snapshot(self.improve(exp))
            yield ImprovementRecord(task, n, before, exp, after, exp.mean_return, steps)


def _snapshot(policy: Policy) -> Policy:
    return Policy(policy.spec, policy.theta.detach().clone(), policy.normalizer.copy())


def gae_advantages(
    reward: np.ndarray,
    value: np.ndarray,
    terminated: np.ndarray,
    truncated: np.ndarray,
    trunc_index: np.ndarray,
    trunc_value: np.ndarray,
    gamma: float,
    lam: float,
) -> np.ndarray:
    """GAE(λ) advantages ``[T, E]`` of a batch in which every episode ends inside the batch.

    ``value[t, e]`` is V(obs[t, e]). An episode cut at ``(t, e)`` by the time limit or the batch end
    (``truncated``) is bootstrapped with ``trunc_value[k]`` = V(trunc_obs[k]) for ``trunc_index[k] = (t, e)``;
    one that ``terminated`` (a simulator blow-up) has no future value. Nothing flows across an episode end.
    """
    done = terminated | truncated
    if not done[-1].all():
        raise ValueError("every episode must end by the batch's last step (the Collector cuts them there)")
    next_value = np.zeros_like(value)
    next_value[:-1] = value[1:]
    next_value[done] = 0.0
    if len(trunc_index):
        next_value[trunc_index[:, 0], trunc_index[:, 1]] = trunc_value
    delta = reward + gamma * next_value - value
    carry = np.where(done, 0.0, gamma * lam).astype(delta.dtype)
    adv = np.empty_like(delta)
    last = np.zeros_like(delta[0])
    for t in range(len(delta) - 1, -1, -1):
        last = delta[t] + carry[t] * last
        adv[t] = last
    return adv


class PPO(Teacher):
    """Proximal Policy Optimization (clipped surrogate, GAE(λ)) on the batched :class:`~metaimprove.rollout.Collector`.

    The algorithm and defaults are Stable-Baselines3's PPO: a Gaussian actor (the :class:`Policy`) and a
    separate tanh value network, one Adam optimizer (ε = 1e-5) over both, per-minibatch advantage
    standardization, a global gradient-norm clip, an unclipped value loss, time-limit bootstrapping.

    Observation normalization: τⁿ is collected with the normalizer frozen at θⁿ's statistics; ``improve``
    then folds τⁿ's observations into a copy of the statistics and optimizes θ on observations normalized
    with the updated copy, so θⁿ⁺¹ is trained for the normalizer it is paired with. The importance ratio
    compares against τⁿ's recorded log-probabilities (θⁿ under its own statistics), so the normalizer's
    change counts as part of the policy change that the clip bounds.

    Speed: an update is ``n_epochs × n_envs·n_steps / minibatch_size`` (320 by default) gradient steps on
    networks of a few thousand parameters, where torch autograd's per-node overhead (~2 ms a step) would
    cost four times the data collection. So θ and the value network's φ live in one flat float32 buffer
    ``[θ ‖ φ]`` and each step runs a hand-written forward/backward in numpy (~0.2 ms), then one norm clip
    and one in-place Adam update of the whole buffer. ``tests/test_teachers.py`` checks these gradients against autograd
    through :func:`~metaimprove.policy.forward`. The value network is a one-output MLP in the policy's flat
    layout (:class:`PolicySpec` ``act_dim=1``); its unused ``log_std`` slot gets zero gradient and never moves.

    Args:
        config: hyperparameters (default :class:`PPOConfig`).
    """

    name = "ppo"

    def __init__(self, config: PPOConfig | None = None) -> None:
        self.config = config or PPOConfig()
        cfg = self.config
        if cfg.n_envs < 1 or cfg.n_steps < 1 or cfg.n_epochs < 1 or cfg.minibatch_size < 1:
            raise UserError(f"PPO needs n_envs, n_steps, n_epochs, minibatch_size >= 1, got {cfg}")
        self.last_stats: dict[str, float] = {}
        """diagnostics of the last update: approx_kl, clip_fraction, explained_variance, std"""
        self._collector: Collector | None = None
        self._policy: Policy | None = None

    @property
    def batch_shape(self) -> tuple[int, int]:
        """``(n_envs, n_steps)``."""
        return self.config.n_envs, self.config.n_steps

    def resized(self, n_envs: int) -> PPO:
        """PPO with ``n_envs`` environments per batch."""
        return PPO(dataclasses.replace(self.config, n_envs=n_envs))

    @property
    def policy(self) -> Policy:
        """The current policy θ with the normalizer it collects with."""
        if self._policy is None:
            raise RuntimeError("PPO.start() must be called first")
        return self._policy

    @property
    def value_spec(self) -> PolicySpec:
        """Shapes of the value network: a one-output MLP in the policy layout (its ``log_std`` slot unused)."""
        return self._value_spec

    @property
    def value_params(self) -> torch.Tensor:
        """The value network's current flat parameters φ (layout of :attr:`value_spec`), a copy."""
        return torch.from_numpy(self._flat[self._n_theta:].copy())

    def start(self, task: AnyTask, policy: Policy, seed: int) -> None:
        """Begin a run on ``task`` from a copy of ``policy``: fresh value network, optimizer and collector.

        ``seed`` seeds the collector (initial states, action noise), the value network's initialization and
        the minibatch shuffles: the same seed gives bitwise the same run.
        """
        cfg = self.config
        self._collector = Collector(task, cfg.n_envs, seed)
        _check_policy(policy, self._collector, self.name)
        spec = policy.spec
        theta = policy.theta.detach().to(torch.float32).clone()
        self._policy = Policy(spec, theta, policy.normalizer.copy())
        self._value_spec = PolicySpec(spec.obs_dim, 1, tuple(cfg.value_hidden), "tanh")
        self._gen = torch.Generator().manual_seed(seed)
        phi = _init_value_params(self._value_spec, self._gen)
        self._n_theta = spec.n_params
        self._flat = torch.cat([theta, phi]).numpy()
        self._grad = np.zeros_like(self._flat)
        self._actor = _FlatMLP(spec, self._flat[:self._n_theta], self._grad[:self._n_theta])
        self._critic = _FlatMLP(self._value_spec, self._flat[self._n_theta:], self._grad[self._n_theta:])
        log_std = spec.layout()[-1][2]
        self._log_std = self._flat[log_std:self._n_theta]
        self._log_std_grad = self._grad[log_std:self._n_theta]
        self._adam_m = np.zeros_like(self._flat)
        self._adam_v = np.zeros_like(self._flat)
        self._scratch = np.empty_like(self._flat)
        self._adam_t = 0

    def explore(self, policy: Policy) -> Experience:
        """One batch of ``n_envs × n_steps`` steps of ``policy``'s Gaussian (normalizer frozen)."""
        if self._collector is None:
            raise RuntimeError("PPO.start() must be called first")
        return self._collector.collect(policy, self.config.n_steps)

    def improve(self, experience: Experience) -> Policy:
        """``n_epochs`` passes of clipped-surrogate minibatch steps on ``experience``; returns θⁿ⁺¹."""
        cfg, old = self.config, self.policy
        T, E = experience.reward.shape
        n = T * E
        norm = old.normalizer.copy()
        norm.update(experience.obs.numpy())
        # Normalize once per batch; every minibatch below only slices these arrays.
        obs = norm.normalize(experience.obs.reshape(n, -1)).numpy()
        value = self._critic.forward(obs)[-1].reshape(T, E)
        trunc_value = self._critic.forward(norm.normalize(experience.trunc_obs).numpy())[-1].reshape(-1)
        adv = gae_advantages(
            experience.reward.numpy(), value, experience.terminated.numpy(), experience.truncated.numpy(),
            experience.trunc_index.numpy(), trunc_value, cfg.gamma, cfg.gae_lambda,
        ).reshape(n)
        returns = adv + value.reshape(n)
        action = experience.action.reshape(n, -1).numpy()
        old_log_prob = experience.log_prob.reshape(n).numpy()
        mb = cfg.minibatch_size
        for _ in range(cfg.n_epochs):
            perm = torch.randperm(n, generator=self._gen).numpy()
            # One gather per epoch, so that each minibatch is a contiguous slice.
            o, a, lp, ad, ret = obs[perm], action[perm], old_log_prob[perm], adv[perm], returns[perm]
            for i in range(0, n, mb):
                j = i + mb
                self._step(o[i:j], a[i:j], lp[i:j], ad[i:j], ret[i:j])
        self._policy = Policy(old.spec, torch.from_numpy(self._flat[:self._n_theta].copy()), norm)
        self._record_stats(obs, action, old_log_prob, value.reshape(n), returns)
        return self._policy

    def gradient(self, obs: np.ndarray, action: np.ndarray, old_log_prob: np.ndarray,
                 advantage: np.ndarray, returns: np.ndarray) -> np.ndarray:
        """∂/∂[θ ‖ φ] of PPO's minibatch loss at the current parameters, by hand (before norm clipping).

        The loss is SB3's ``policy_loss + ent_coef · entropy_loss + vf_coef · value_loss`` on normalized
        observations ``obs [B, obs]``; ``advantage`` is standardized here when ``normalize_advantage``.
        Returns the teacher's gradient buffer (overwritten by the next call).
        """
        cfg = self.config
        b = len(advantage)
        if cfg.normalize_advantage and b > 1:
            centered = advantage - np.add.reduce(advantage) / b
            advantage = centered * (1.0 / (math.sqrt(float(np.dot(centered, centered)) / (b - 1)) + 1e-8))
        acts = self._actor.forward(obs)
        inv_std = np.exp(-self._log_std)
        z = action - acts[-1]
        z *= inv_std
        z2 = z * z
        log_ratio = np.add.reduce(z2, axis=1)
        log_ratio *= -0.5
        log_ratio -= old_log_prob
        log_ratio -= float(self._log_std.sum()) + 0.5 * len(inv_std) * LOG_2PI
        ratio = np.exp(log_ratio)
        # min(Â·r, Â·clip(r)) passes r's gradient except where the clip is active (Â > 0 and r > 1 + ε, or
        # Â < 0 and r < 1 - ε); and ∂r = r·∂log π, so ∂L/∂log π = -Â·r/B where it passes, else 0.
        passes = np.where(advantage > 0, ratio <= 1.0 + cfg.clip_range, ratio >= 1.0 - cfg.clip_range)
        d_logp = advantage * ratio
        d_logp *= passes
        d_logp *= -1.0 / b
        # log π = Σ -z²/2 - log σ - log(2π)/2 with z = (a - μ)/σ:  ∂/∂μ = z/σ,  ∂/∂log σ = z² - 1.
        z2 -= 1.0
        np.matmul(d_logp, z2, out=self._log_std_grad)
        if cfg.ent_coef:
            self._log_std_grad -= cfg.ent_coef
        z *= inv_std
        z *= d_logp[:, None]
        self._actor.backward(acts, z)
        v_acts = self._critic.forward(obs)
        d_value = v_acts[-1]
        d_value -= returns[:, None]
        d_value *= 2.0 * cfg.vf_coef / b
        self._critic.backward(v_acts, d_value)
        return self._grad

    def _step(self, obs: np.ndarray, action: np.ndarray, old_log_prob: np.ndarray,
              advantage: np.ndarray, returns: np.ndarray) -> None:
        grad = self.gradient(obs, action, old_log_prob, advantage, returns)
        # torch's clip_grad_norm_ (coefficient max/(‖g‖ + 1e-6), at most 1) ...
        coef = self.config.max_grad_norm / (math.sqrt(float(np.dot(grad, grad))) + 1e-6)
        if coef < 1.0:
            grad *= coef
        # ... then torch.optim.Adam's update, rearranged so that both bias corrections fold into two scalars:
        # lr·m̂/(√v̂ + ε) = (lr·√c₂/c₁)·m/(√v + ε·√c₂) with c = 1 - β^t. In place: no temporaries.
        self._adam_t += 1
        b1, b2 = ADAM_BETAS
        m, v, tmp = self._adam_m, self._adam_v, self._scratch
        m *= b1
        np.multiply(grad, 1.0 - b1, out=tmp)
        m += tmp
        v *= b2
        np.multiply(grad, grad, out=tmp)
        tmp *= 1.0 - b2
        v += tmp
        sqrt_c2 = math.sqrt(1.0 - b2**self._adam_t)
        np.sqrt(v, out=tmp)
        tmp += ADAM_EPS * sqrt_c2
        np.divide(m, tmp, out=tmp)
        tmp *= -self.config.lr * sqrt_c2 / (1.0 - b1**self._adam_t)
        self._flat += tmp

    def _record_stats(self, obs: np.ndarray, action: np.ndarray, old_log_prob: np.ndarray,
                      value: np.ndarray, returns: np.ndarray) -> None:
        with torch.no_grad():
            mean, log_std = forward(self.policy.spec, self.policy.theta, torch.from_numpy(obs))
            log_ratio = (log_prob(mean, log_std, torch.from_numpy(action)) - torch.from_numpy(old_log_prob)).numpy()
        ratio = np.exp(log_ratio)
        var = float(returns.var())
        self.last_stats = {
            "approx_kl": float(np.mean((ratio - 1) - log_ratio)),
            "clip_fraction": float(np.mean(np.abs(ratio - 1) > self.config.clip_range)),
            "explained_variance": 1.0 - float((returns - value).var()) / var if var > 0 else float("nan"),
            "std": float(np.exp(self._log_std).mean()),
        }


class _FlatMLP:
    """Forward and hand-written backward of an MLP in the :class:`PolicySpec` layout, on numpy views.

    ``params`` and ``grads`` are views into the teacher's flat buffers; :meth:`backward` writes the
    weight and bias gradients into ``grads`` in place.
    """

    def __init__(self, spec: PolicySpec, params: np.ndarray, grads: np.ndarray) -> None:
        n_layers = len(spec.layer_sizes)
        self._tanh = spec.activation == "tanh"
        self._weights: list[tuple[np.ndarray, np.ndarray]] = []
        self._grads: list[tuple[np.ndarray, np.ndarray]] = []
        blocks = {name: (shape, off) for name, shape, off in spec.layout()}
        for layer in range(n_layers):
            (o, i), w_off = blocks[f"W{layer}"]
            _, b_off = blocks[f"b{layer}"]
            self._weights.append((params[w_off:w_off + o * i].reshape(o, i), params[b_off:b_off + o]))
            self._grads.append((grads[w_off:w_off + o * i].reshape(o, i), grads[b_off:b_off + o]))

    def forward(self, x: np.ndarray) -> list[np.ndarray]:
        """Every layer's output for inputs ``[B, in]``, input first, last layer (linear) last."""
        acts = [x]
        last = len(self._weights) - 1
        for layer, (w, b) in enumerate(self._weights):
            h = x @ w.T
            h += b
            if layer < last:
                if self._tanh:
                    np.tanh(h, out=h)
                else:
                    np.maximum(h, 0.0, out=h)
            acts.append(h)
            x = h
        return acts

    def backward(self, acts: list[np.ndarray], d_out: np.ndarray) -> None:
        """Write ∂L/∂(weights, biases) given :meth:`forward`'s ``acts`` and ∂L/∂output ``[B, out]``."""
        d = d_out
        for layer in range(len(self._weights) - 1, -1, -1):
            gw, gb = self._grads[layer]
            np.matmul(d.T, acts[layer], out=gw)
            np.add.reduce(d, axis=0, out=gb)
            if layer:
                d = d @ self._weights[layer][0]
                h = acts[layer]
                if self._tanh:
                    slope = h * h
                    np.subtract(1.0, slope, out=slope)
                    d *= slope
                else:
                    d *= h > 0


def _init_value_params(spec: PolicySpec, generator: torch.Generator) -> torch.Tensor:
    """SB3's value-network init: orthogonal weights, gain √2 in hidden layers and 1 at the output, zero biases."""
    phi = torch.zeros(spec.n_params)
    blocks = spec.unflatten(phi)
    n_layers = len(spec.layer_sizes)
    for layer in range(n_layers):
        w = torch.empty_like(blocks[f"W{layer}"])
        torch.nn.init.orthogonal_(w, gain=1.0 if layer == n_layers - 1 else math.sqrt(2.0), generator=generator)
        blocks[f"W{layer}"].copy_(w)
    return phi


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
    """Augmented Random Search V2-t (Mania et al. 2018) on the batched :class:`~metaimprove.rollout.Collector`.

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
        self.last_stats: dict[str, float] = {}
        """diagnostics of the last update: return_std (σ_R), step_size (α/(b·σ_R + 1e-6)), step_norm"""
        self._collector: Collector | None = None
        self._policy: Policy | None = None

    @property
    def batch_shape(self) -> tuple[int, int]:
        """``(2 × n_directions, n_steps)``: one env per perturbed policy."""
        return 2 * self.config.n_directions, self.config.n_steps

    def resized(self, n_envs: int) -> ARS:
        """ARS with ``n_envs / 2`` directions (and ``top_b`` capped at them); ``n_envs`` must be even."""
        if n_envs < 2 or n_envs % 2:
            raise UserError(f"an ARS batch holds antithetic pairs of envs: its size must be even and >= 2, "
                            f"got {n_envs}")
        n = n_envs // 2
        return ARS(dataclasses.replace(self.config, n_directions=n, top_b=min(self.config.top_b, n)))

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
        _check_policy(policy, self._collector, self.name)
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


def _check_policy(policy: Policy, collector: Collector, teacher: str) -> None:
    """Refuse a policy whose shapes do not fit the collector's task, or a batch of θs (one line each)."""
    spec, sim = policy.spec, collector.sim
    if (spec.obs_dim, spec.act_dim) != (sim.obs_dim, sim.act_dim):
        raise UserError(f"policy has obs/act dims {spec.obs_dim}/{spec.act_dim} but task {sim.task.name} "
                        f"needs {sim.obs_dim}/{sim.act_dim}")
    if policy.theta.shape != (spec.n_params,):
        raise UserError(f"{teacher.upper()} improves one policy: θ must have shape ({spec.n_params},), "
                        f"got {tuple(policy.theta.shape)}")


__all__ = ["ARS", "PPO", "ARSConfig", "ImprovementRecord", "ObsNormalizer", "PPOConfig", "Teacher", "gae_advantages"]


TEACHERS: dict[str, tuple[type, type[Teacher]]] = {"ppo": (PPOConfig, PPO), "ars": (ARSConfig, ARS)}
"""teacher option name -> (its config dataclass, the teacher class built from it)"""


def teacher_class(config: object) -> type[Teacher]:
    """The teacher class that ``config`` (an instance of a registered teacher config) configures."""
    for config_type, cls in TEACHERS.values():
        if type(config) is config_type:
            return cls
    raise UserError(f"no teacher takes a {type(config).__name__}; teachers: {sorted(TEACHERS)}")


def recorded_config(record: dict[str, Any], name: str | None = None) -> Any:
    """The config of teacher ``name`` as recorded in a dataset or checkpoint (``{"name", "config"}``).

    ``name`` defaults to the recorded teacher, which gets the settings it ran with; another teacher gets its
    defaults (its own batch size, learning rate, ...).
    """
    own = str(record.get("name", "ppo"))
    name = name or own
    if name not in TEACHERS:
        raise UserError(f"unknown teacher {name!r}; teachers: {sorted(TEACHERS)}")
    config_type = TEACHERS[name][0]
    default = config_type()
    known = {f.name for f in dataclasses.fields(config_type)}
    given = record.get("config", {}) if name == own else {}
    # JSON turned tuples into lists; the config's own defaults say which fields are tuples.
    return config_type(**{k: tuple(v) if isinstance(getattr(default, k), tuple) else v
                          for k, v in given.items() if k in known})


def make_teacher(record: dict[str, Any], name: str | None = None) -> Teacher:
    """A fresh teacher ``name`` (default: the recorded one) configured by :func:`recorded_config`."""
    name = name or str(record.get("name", "ppo"))
    return TEACHERS[name][1](recorded_config(record, name))
