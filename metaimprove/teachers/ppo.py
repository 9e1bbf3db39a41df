"""The PPO teacher (Stable-Baselines3's algorithm and defaults) on the batched collector, with a hand-written
numpy backward.

Why numpy: see the design notes (docs/design.md, "Functional parameters").
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np
import torch

from metaimprove.errors import UserError
from metaimprove.sim.envs import AnyTask
from metaimprove.sim.policy import Policy, PolicySpec, forward, log_prob
from metaimprove.sim.rollout import Collector, Experience
from metaimprove.teachers.base import Teacher, check_policy

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
    log_std_init: float | None = None
    """log σ of the action noise a run starts with (SB3's log_std_init; None: the start policy's own)"""


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
    """Proximal Policy Optimization (clipped surrogate, GAE(λ)) on the batched
    :class:`~metaimprove.sim.rollout.Collector`.

    The algorithm and defaults are Stable-Baselines3's PPO: a Gaussian actor (the :class:`Policy`) and a
    separate tanh value network, one Adam optimizer (ε = 1e-5) over both, per-minibatch advantage
    standardization, a global gradient-norm clip, an unclipped value loss, time-limit bootstrapping.

    Observation normalization: τⁿ is collected with the normalizer frozen at θⁿ's statistics; ``improve``
    then folds τⁿ's observations into a copy of the statistics and optimizes θ on observations normalized
    with the updated copy, so θⁿ⁺¹ is trained for the normalizer it is paired with. The importance ratio
    compares against τⁿ's recorded log-probabilities (θⁿ under its own statistics), so the normalizer's
    change counts as part of the policy change that the clip bounds.

    Gradient steps: θ and the value network's φ live in one flat float32 buffer ``[θ ‖ φ]``; each minibatch step
    runs a hand-written forward/backward in numpy (checked against autograd by ``tests/teachers/test_ppo.py``),
    then one norm clip and one in-place Adam update of the whole buffer. The value network is a one-output MLP in the
    policy's flat layout (:class:`PolicySpec` ``act_dim=1``); its unused ``log_std`` slot gets zero gradient and
    never moves.

    Args:
        config: hyperparameters (default :class:`PPOConfig`).
    """

    name = "ppo"

    def __init__(self, config: PPOConfig | None = None) -> None:
        self.config = config or PPOConfig()
        cfg = self.config
        if cfg.n_envs < 1 or cfg.n_steps < 1 or cfg.n_epochs < 1 or cfg.minibatch_size < 1:
            raise UserError(f"PPO needs n_envs, n_steps, n_epochs, minibatch_size >= 1, got {cfg}")
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
        check_policy(policy, self._collector, self.name)
        spec = policy.spec
        theta = policy.theta.detach().to(torch.float32).clone()
        log_std = spec.layout()[-1][2]
        if cfg.log_std_init is not None:
            theta[log_std:] = cfg.log_std_init
        self._policy = Policy(spec, theta, policy.normalizer.copy())
        self._value_spec = PolicySpec(spec.obs_dim, 1, tuple(cfg.value_hidden), "tanh")
        self._gen = torch.Generator().manual_seed(seed)
        phi = _init_value_params(self._value_spec, self._gen)
        self._n_theta = spec.n_params
        self._flat = torch.cat([theta, phi]).numpy()
        self._grad = np.zeros_like(self._flat)
        self._actor = _FlatMLP(spec, self._flat[:self._n_theta], self._grad[:self._n_theta])
        self._critic = _FlatMLP(self._value_spec, self._flat[self._n_theta:], self._grad[self._n_theta:])
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


