"""Gaussian MLP policies: a :class:`PolicySpec`, a flat parameter vector θ and its :class:`ObsNormalizer`, evaluated
one θ or a batch of θs at once; normalizer folding; policy files.

Why: see the design notes (docs/design.md, "Functional parameters" and "The normalizer is part of the policy").
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from metaimprove.errors import UserError
from metaimprove.storage import load_tensors, save_tensors

OBS_CLIP = 10.0
NORM_EPS = 1e-8
ACTIVATIONS = {"tanh": torch.tanh, "relu": torch.relu}


@dataclass(frozen=True)
class PolicySpec:
    """Shapes of a Gaussian MLP policy, and the layout of its flat θ.

    For each linear layer ``l`` in order (input → hidden → … → output), ``W_l [out_l, in_l]`` row-major, then
    ``b_l [out_l]``; then the state-independent ``log_std [act_dim]`` (:meth:`layout`).
    """

    obs_dim: int
    act_dim: int
    hidden: tuple[int, ...] = (32, 32)
    activation: str = "tanh"
    squash: bool = False
    """the mean action is tanh of the output layer: SAC's deterministic action (``interop.sb3.sac_policy``). The
    Gaussian is then around the squashed mean, not SAC's state-dependent tanh-Gaussian; such policies are read
    and evaluated, and the teachers and operators here improve unsquashed ones"""

    def __post_init__(self) -> None:
        if self.activation not in ACTIVATIONS:
            raise UserError(f"unknown activation '{self.activation}'; choose one of {sorted(ACTIVATIONS)}")
        if self.obs_dim < 1 or self.act_dim < 1 or any(h < 1 for h in self.hidden):
            raise UserError(
                f"policy sizes must be >= 1, got obs={self.obs_dim} act={self.act_dim} hidden={self.hidden}")

    @property
    def layer_sizes(self) -> list[tuple[int, int]]:
        """``(in, out)`` of each linear layer."""
        dims = [self.obs_dim, *self.hidden, self.act_dim]
        return list(itertools.pairwise(dims))

    @property
    def n_params(self) -> int:
        """Length of θ."""
        return sum(i * o + o for i, o in self.layer_sizes) + self.act_dim

    def layout(self) -> list[tuple[str, tuple[int, ...], int]]:
        """``(name, shape, offset)`` of every block of θ, in order (``W0, b0, W1, b1, …, log_std``)."""
        blocks, offset = [], 0
        for layer, (i, o) in enumerate(self.layer_sizes):
            blocks.append((f"W{layer}", (o, i), offset))
            offset += i * o
            blocks.append((f"b{layer}", (o,), offset))
            offset += o
        blocks.append(("log_std", (self.act_dim,), offset))
        return blocks

    def unflatten(self, theta: torch.Tensor) -> dict[str, torch.Tensor]:
        """Views of θ ``[..., P]`` as named blocks ``[..., *shape]``."""
        if theta.shape[-1] != self.n_params:
            raise UserError(f"θ has {theta.shape[-1]} parameters but the policy spec {self} needs {self.n_params}")
        batch = theta.shape[:-1]
        return {
            name: theta[..., off : off + math.prod(shape)].reshape(*batch, *shape)
            for name, shape, off in self.layout()
        }

    def to_dict(self) -> dict[str, object]:
        """JSON-ready form; ``squash`` only when set, so that every unsquashed policy's files keep their bytes."""
        data: dict[str, object] = {"obs_dim": self.obs_dim, "act_dim": self.act_dim, "hidden": list(self.hidden),
                                   "activation": self.activation}
        if self.squash:
            data["squash"] = True
        return data

    @staticmethod
    def from_dict(data: dict[str, object]) -> PolicySpec:
        """Inverse of :meth:`to_dict` (no ``squash``: unsquashed, as every file written before it existed)."""
        squash = data.get("squash", False) if isinstance(data, dict) else False
        if not isinstance(squash, bool):
            raise UserError(f"invalid policy spec {data!r}: squash must be true or false")
        try:
            return PolicySpec(int(data["obs_dim"]), int(data["act_dim"]),  # type: ignore[arg-type]
                              tuple(int(h) for h in data["hidden"]), str(data["activation"]),  # type: ignore[union-attr]
                              squash)
        except (KeyError, TypeError, ValueError) as exc:
            raise UserError(f"invalid policy spec {data!r}: {exc}") from exc


def init_params(spec: PolicySpec, generator: torch.Generator, log_std: float = 0.0) -> torch.Tensor:
    """A fresh θ: orthogonal weights (gain √2 hidden, 0.01 output, as SB3/CleanRL), zero biases."""
    theta = torch.zeros(spec.n_params)
    blocks = spec.unflatten(theta)
    n_layers = len(spec.layer_sizes)
    for layer in range(n_layers):
        gain = 0.01 if layer == n_layers - 1 else math.sqrt(2.0)
        w = torch.empty_like(blocks[f"W{layer}"])
        _orthogonal_(w, gain, generator)
        blocks[f"W{layer}"].copy_(w)
    blocks["log_std"].fill_(log_std)
    return theta


def _orthogonal_(w: torch.Tensor, gain: float, generator: torch.Generator) -> None:
    rows, cols = w.shape
    a = torch.randn(max(rows, cols), min(rows, cols), generator=generator)
    q, r = torch.linalg.qr(a)
    q = q * torch.sign(torch.diagonal(r))
    w.copy_(gain * (q if rows >= cols else q.T)[:rows, :cols])


def forward(spec: PolicySpec, theta: torch.Tensor, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Action mean ``[..., N, act]`` and log-std ``[..., 1, act]`` of θ ``[..., P]``.

    ``obs [..., N, obs]`` must already be normalized (see :meth:`ObsNormalizer.normalize`).
    """
    blocks = spec.unflatten(theta)
    act = ACTIVATIONS[spec.activation]
    h = obs
    n_layers = len(spec.layer_sizes)
    for layer in range(n_layers):
        h = h @ blocks[f"W{layer}"].mT + blocks[f"b{layer}"].unsqueeze(-2)
        if layer < n_layers - 1:
            h = act(h)
    if spec.squash:
        h = torch.tanh(h)
    return h, blocks["log_std"].unsqueeze(-2)


def log_prob(mean: torch.Tensor, log_std: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
    """Diagonal-Gaussian log-density of ``action`` summed over the action dimension."""
    z = (action - mean) * torch.exp(-log_std)
    return (-0.5 * z.square() - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)


@dataclass
class ObsNormalizer:
    """Running mean and variance of observations (parallel-Welford, as SB3's ``RunningMeanStd``)."""

    mean: np.ndarray
    var: np.ndarray
    count: float = 1e-4
    frozen: bool = field(default=False, compare=False)

    @staticmethod
    def identity(obs_dim: int) -> ObsNormalizer:
        """Mean 0, variance 1: normalization that does nothing (but clipping)."""
        return ObsNormalizer(np.zeros(obs_dim), np.ones(obs_dim))

    def update(self, obs: np.ndarray) -> None:
        """Fold a batch ``[..., obs_dim]`` into the statistics (no-op when frozen)."""
        if self.frozen:
            return
        x = obs.reshape(-1, obs.shape[-1]).astype(np.float64)
        b_mean, b_var, b_count = x.mean(0), x.var(0), x.shape[0]
        delta = b_mean - self.mean
        total = self.count + b_count
        self.mean = self.mean + delta * b_count / total
        m2 = self.var * self.count + b_var * b_count + delta**2 * self.count * b_count / total
        self.var = m2 / total
        self.count = total

    def normalize(self, obs: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Normalized, clipped float32 observations."""
        obs_t = torch.as_tensor(obs, dtype=torch.float32)
        mean = torch.as_tensor(self.mean, dtype=torch.float32)
        std = torch.as_tensor(np.sqrt(self.var + NORM_EPS), dtype=torch.float32)
        return ((obs_t - mean) / std).clamp(-OBS_CLIP, OBS_CLIP)

    def copy(self) -> ObsNormalizer:
        """An independent copy."""
        return ObsNormalizer(self.mean.copy(), self.var.copy(), self.count, self.frozen)


@dataclass
class Policy:
    """A complete policy: spec, flat θ and its observation normalizer."""

    spec: PolicySpec
    theta: torch.Tensor
    normalizer: ObsNormalizer

    def actor(self) -> NumpyActor:
        """This policy's mean action as plain numpy, for the per-step loop of the collector."""
        return NumpyActor(self)

    def log_prob(self, obs: np.ndarray | torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        """Log-density ``[...]`` of ``action [..., act]`` in raw observations ``[..., obs]``."""
        with torch.no_grad():
            mean, log_std = forward(self.spec, self.theta, self.normalizer.normalize(obs).unsqueeze(-2))
            return log_prob(mean.squeeze(-2), log_std.squeeze(-2), action)


class NumpyActor:
    """A policy's weights copied to float64 numpy arrays.

    Per env step the collector evaluates the policy on a handful of observations, where torch's per-call
    overhead would cost as much as the physics.
    """

    def __init__(self, policy: Policy) -> None:
        blocks = {k: v.detach().double().numpy() for k, v in policy.spec.unflatten(policy.theta).items()}
        n_layers = len(policy.spec.layer_sizes)
        # A batch of θs [E, P] (ARS's perturbed policies as one batch of envs) runs observation row e through θ_e.
        self._batched = policy.theta.dim() == 2
        if self._batched:
            self._weights = [(blocks[f"W{i}"].transpose(0, 2, 1).copy(), blocks[f"b{i}"][:, None, :])
                             for i in range(n_layers)]
        else:
            self._weights = [(blocks[f"W{i}"].T.copy(), blocks[f"b{i}"]) for i in range(n_layers)]
        self._act = np.tanh if policy.spec.activation == "tanh" else (lambda x: np.maximum(x, 0.0))
        self._squash = policy.spec.squash
        self.std = np.exp(blocks["log_std"])
        self._mean = policy.normalizer.mean
        self._inv_std = 1.0 / np.sqrt(policy.normalizer.var + NORM_EPS)

    def mean(self, obs: np.ndarray) -> np.ndarray:
        """Action means ``[N, act]`` for raw observations ``[N, obs]`` (N = E for a batch of θs)."""
        h = (obs - self._mean) * self._inv_std
        # The ufuncs in place: np.clip's Python wrapper costs as much as the matmuls at this size.
        np.minimum(np.maximum(h, -OBS_CLIP, out=h), OBS_CLIP, out=h)
        if self._batched:
            h = h[:, None, :]
        for i, (w, b) in enumerate(self._weights):
            h = h @ w + b
            if i < len(self._weights) - 1:
                h = self._act(h)
        if self._squash:
            h = np.tanh(h)
        return h[:, 0, :] if self._batched else h


def fold_normalizer(spec: PolicySpec, theta: torch.Tensor, norm: ObsNormalizer,
                    canonical: ObsNormalizer) -> torch.Tensor:
    """Rewrite θ so that under the ``canonical`` normalizer it computes what it did under ``norm``.

    With s = std, m = mean: W0' = W0·diag(s_c/s) and b0' = b0 + W0·(m_c − m)/s. Exact apart from the
    observation clipping. This puts snapshots from different runs into one coordinate system.
    """
    dtype = theta.dtype
    s = torch.as_tensor(np.sqrt(norm.var + NORM_EPS), dtype=dtype)
    s_c = torch.as_tensor(np.sqrt(canonical.var + NORM_EPS), dtype=dtype)
    m = torch.as_tensor(norm.mean, dtype=dtype)
    m_c = torch.as_tensor(canonical.mean, dtype=dtype)
    out = theta.clone()
    blocks = spec.unflatten(out)
    w0 = spec.unflatten(theta)["W0"]
    blocks["W0"].copy_(w0 * (s_c / s))
    blocks["b0"].copy_(blocks["b0"] + w0 @ ((m_c - m) / s))
    return out


POLICY_FORMAT = "metaimprove.policy"


def save_policy(path: str | Path, policy: Policy) -> None:
    """Write a policy (θ and its normalizer as safetensors, its spec as JSON), atomically."""
    norm = policy.normalizer
    save_tensors(path, {"theta": policy.theta.detach().float(), "norm_mean": torch.as_tensor(norm.mean),
                        "norm_var": torch.as_tensor(norm.var), "norm_count": torch.tensor([norm.count])},
                 {"format": POLICY_FORMAT, "policy_spec": policy.spec.to_dict()})


def load_policy(path: str | Path) -> Policy:
    """Read a policy written by :func:`save_policy`, validating shapes and values (one-line errors).

    :func:`metaimprove.interop.sb3.load_any_policy` also reads stable-baselines3 zips."""
    tensors, meta = load_tensors(path)
    if meta.get("format") != POLICY_FORMAT:
        raise UserError(f"{path} is not a policy file (format {meta.get('format')!r})")
    spec = PolicySpec.from_dict(meta.get("policy_spec", {}))
    try:
        theta, mean, var = tensors["theta"], tensors["norm_mean"], tensors["norm_var"]
        count = float(tensors["norm_count"][0])
    except (KeyError, IndexError) as exc:
        raise UserError(f"policy file {path} lacks {exc}") from exc
    if theta.shape != (spec.n_params,) or mean.shape != (spec.obs_dim,) or var.shape != (spec.obs_dim,):
        raise UserError(f"policy file {path}: θ {tuple(theta.shape)} / normalizer {tuple(mean.shape)} do not match "
                        f"its spec ({spec.n_params} parameters, {spec.obs_dim} observations)")
    if not (torch.isfinite(theta).all() and torch.isfinite(mean).all() and (var > 0).all()):
        raise UserError(f"policy file {path} holds non-finite parameters or non-positive variances")
    return Policy(spec, theta.float(), ObsNormalizer(mean.double().numpy(), var.double().numpy(), count))
