"""The improvement operator ``f(θ, τ, ask) → θ'``.

Both architectures share a set encoder that turns τ (a subsample of transitions, episode-return
statistics, the size of the policy gradient) and the ask into a context vector, and predict an update
Δθ with θ' = θ + Δθ:

* ``flat`` — one MLP over the whole flattened θ, the policy-gradient direction, its per-parameter
  signal-to-noise ratio and the context.
  The obvious design; it sees every parameter at once and is tied to one policy size.
* ``per_param`` — one small network shared by every parameter (learned-optimizer style), reading that
  parameter's value, its policy-gradient component (globally and per-block normalized) and that
  component's signal-to-noise ratio across episodes, its role
  (which block; which observation it reads in the first layer; which action it drives in the last)
  and the context. It has few weights, works for any hidden size, and cannot memorize whole θs.

The ask is ``[log2 k, requested return improvement per step]``: "do the work of k teacher updates and
gain this much". Both are zero-initialized at the output so an untrained operator returns θ unchanged.
"""

from __future__ import annotations

import itertools
import math
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from metaimprove.errors import UserError
from metaimprove.features import SNR_CLIP, FeatureConfig, Features, transition_dim
from metaimprove.policy import PolicySpec
from metaimprove.storage import load_tensors, save_tensors

ARCHS = ("flat", "per_param")
ASK_DIM = 2


@dataclass
class OperatorConfig:
    """Architecture of the improvement operator."""

    arch: str = "per_param"
    """'per_param' (shared per-parameter network) or 'flat' (MLP over the whole θ)"""
    hidden: int = 128
    """width of the set encoder and of the flat MLP"""
    context_dim: int = 32
    """size of the context vector encoded from τ and the ask"""
    param_hidden: int = 32
    """width of the per-parameter network"""
    role_dim: int = 8
    """size of each role embedding (block, input unit, output unit)"""
    step_scale: float = 0.05
    """multiplies the network's output to give Δθ (keeps early training near θ' = θ)"""


def _mlp(sizes: list[int], final_zero: bool = False) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(itertools.pairwise(sizes)):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(nn.GELU())
    if final_zero:
        last = layers[-1]
        assert isinstance(last, nn.Linear)
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
    return nn.Sequential(*layers)


class ContextEncoder(nn.Module):
    """τ and the ask → a context vector: a DeepSets encoder (mean and max pool) over transitions."""

    def __init__(self, spec: PolicySpec, config: OperatorConfig) -> None:
        super().__init__()
        h = config.hidden
        self.point = _mlp([transition_dim(spec), h, h])
        self.head = _mlp([2 * h + 2 + 1 + ASK_DIM, h, config.context_dim])

    def forward(self, feats: Features, ask: torch.Tensor) -> torch.Tensor:
        h = self.point(feats["transitions"])
        pooled = torch.cat([h.mean(-2), h.amax(-2)], dim=-1)
        return self.head(torch.cat([pooled, feats["returns"], feats["grad_log_norm"], ask], dim=-1))


class FlatOperator(nn.Module):
    """Δθ = MLP([θ, ĝ, snr, context])."""

    def __init__(self, spec: PolicySpec, config: OperatorConfig) -> None:
        super().__init__()
        p = spec.n_params
        self.net = _mlp([3 * p + config.context_dim, config.hidden, config.hidden, p], final_zero=True)

    def forward(self, feats: Features, context: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([feats["theta"], feats["grad"], feats["grad_snr"] / SNR_CLIP, context], dim=-1))


def parameter_roles(spec: PolicySpec) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For every entry of θ: its block index, the observation it reads (or obs_dim if none), and the action it
    drives (or act_dim if none). Hidden units are interchangeable (permutation symmetry), inputs and
    outputs are not."""
    block = torch.empty(spec.n_params, dtype=torch.long)
    inp = torch.full((spec.n_params,), spec.obs_dim, dtype=torch.long)
    out = torch.full((spec.n_params,), spec.act_dim, dtype=torch.long)
    last = len(spec.layer_sizes) - 1
    for b, (name, shape, off) in enumerate(spec.layout()):
        n = int(torch.tensor(shape).prod())
        block[off : off + n] = b
        if name == "W0":
            inp[off : off + n] = torch.arange(shape[1]).repeat(shape[0])
        if name in (f"W{last}", f"b{last}", "log_std"):
            rows = torch.arange(shape[0])
            out[off : off + n] = rows.repeat_interleave(shape[1]) if len(shape) == 2 else rows
    return block, inp, out


class PerParamOperator(nn.Module):
    """Δθ_i = g([θ_i, ĝ_i, ĝ_i / rms(ĝ_block), snr_i, role_i], context), one small net shared by all parameters."""

    N_FEATURES = 4

    def __init__(self, spec: PolicySpec, config: OperatorConfig) -> None:
        super().__init__()
        h, r = config.param_hidden, config.role_dim
        block, inp, out = parameter_roles(spec)
        self.register_buffer("block", block, persistent=False)
        self.register_buffer("inp", inp, persistent=False)
        self.register_buffer("out", out, persistent=False)
        self.n_blocks = len(spec.layout())
        self.block_emb = nn.Embedding(self.n_blocks, r)
        self.inp_emb = nn.Embedding(spec.obs_dim + 1, r)
        self.out_emb = nn.Embedding(spec.act_dim + 1, r)
        # The first layer is split by input so that the context and role terms are computed once, not per entry.
        self.w_feat = nn.Linear(self.N_FEATURES, h)
        self.w_role = nn.Linear(3 * r, h, bias=False)
        self.w_ctx = nn.Linear(config.context_dim, h, bias=False)
        self.rest = _mlp([h, h, 1], final_zero=True)

    def forward(self, feats: Features, context: torch.Tensor) -> torch.Tensor:
        g = feats["grad"]
        block_ms = torch.zeros(*g.shape[:-1], self.n_blocks, dtype=g.dtype, device=g.device)
        block_ms = block_ms.index_add(-1, self.block, g.square()) / torch.bincount(self.block, minlength=self.n_blocks)
        g_block = g / (block_ms.index_select(-1, self.block).sqrt() + 1e-8)
        x = torch.stack([feats["theta"], g, g_block, feats["grad_snr"] / SNR_CLIP], dim=-1)
        roles = self.w_role(torch.cat([self.block_emb(self.block), self.inp_emb(self.inp), self.out_emb(self.out)], -1))
        h = self.w_feat(x) + roles + self.w_ctx(context).unsqueeze(-2)
        return self.rest(torch.nn.functional.gelu(h)).squeeze(-1)


class ImprovementOperator(nn.Module):
    """``f(θ, τ, ask) → θ'`` for policies of one :class:`PolicySpec`.

    Args:
        spec: the policy architecture it improves.
        config: the operator architecture.
    """

    def __init__(self, spec: PolicySpec, config: OperatorConfig) -> None:
        super().__init__()
        if config.arch not in ARCHS:
            raise UserError(f"unknown operator architecture '{config.arch}'; choose one of {list(ARCHS)}")
        self.spec = spec
        self.config = config
        self.context = ContextEncoder(spec, config)
        self.update = (FlatOperator if config.arch == "flat" else PerParamOperator)(spec, config)

    def forward(self, feats: Features, ask: torch.Tensor) -> torch.Tensor:
        """θ' ``[B, P]`` (for the next normalizer N') from encoded (θ, τ) ``feats`` (batched) and ``ask [B, 2]``."""
        context = self.context(feats, ask)
        return feats["theta"] + self.config.step_scale * self.update(feats, context)


CHECKPOINT_FORMAT = "metaimprove.operator"
CHECKPOINT_VERSION = 1


@dataclass
class OperatorCheckpoint:
    """Everything needed to apply a trained operator, besides its weights.

    Saved as safetensors (weights) plus JSON metadata; loading never unpickles.
    """

    spec: PolicySpec
    operator: OperatorConfig
    features: FeatureConfig
    ks: list[int]
    ask_quantiles: dict[int, list[float]]
    """per k: the 10/50/90 % quantiles of the improvement per step reached in training (the trained ask range)"""
    tasks: list[str]
    """training tasks (never evaluate on these)"""
    teacher: dict[str, Any]
    """name and config of the teacher the pairs came from (its batch size is the operator's)"""

    @staticmethod
    def from_training(features: FeatureConfig, operator: OperatorConfig, spec: PolicySpec, ks: list[int],
                      asks: torch.Tensor, tasks: list[str], teacher: dict[str, Any]) -> OperatorCheckpoint:
        """The checkpoint description of an operator trained on pairs with hindsight ``asks [n, 2]``."""
        quantiles = {}
        for k in ks:
            sel = asks[asks[:, 0] == math.log2(k), 1]
            if len(sel):
                quantiles[k] = [float(q) for q in torch.quantile(sel, torch.tensor([0.1, 0.5, 0.9]))]
        return OperatorCheckpoint(spec, operator, features, list(ks), quantiles, tasks, teacher)

    def default_ask(self, k: int | None = None, improvement: float | None = None) -> torch.Tensor:
        """The ask ``[2]``: jump ``k`` (default the largest trained) and the requested improvement per step
        (default the 90 % quantile reached in training for that k). Warns outside the trained range."""
        k = max(self.ks) if k is None else k
        if k < 1:
            raise UserError(f"ask k must be >= 1, got {k}")
        nearest = min(self.quantiles_ks(), key=lambda kk: abs(math.log2(kk) - math.log2(k)))
        lo, _, hi = self.ask_quantiles[nearest]
        if improvement is None:
            improvement = hi
        if k not in self.ks or not (lo <= improvement <= hi):
            warnings.warn(f"ask (k={k}, improvement={improvement:.4g}) is outside the trained range "
                          f"(k in {self.ks}, improvement in [{lo:.4g}, {hi:.4g}] for k={nearest}); "
                          "the operator extrapolates", stacklevel=2)
        return torch.tensor([math.log2(k), improvement], dtype=torch.float32)

    def quantiles_ks(self) -> list[int]:
        """The ks with recorded ask quantiles."""
        return sorted(self.ask_quantiles)

    def meta(self, summary: dict[str, Any]) -> dict[str, Any]:
        """JSON metadata."""
        from metaimprove import __version__

        return {
            "format": CHECKPOINT_FORMAT,
            "format_version": CHECKPOINT_VERSION,
            "package_version": __version__,
            "policy_spec": self.spec.to_dict(),
            "operator": asdict(self.operator),
            "features": asdict(self.features),
            "ks": self.ks,
            "ask_quantiles": {str(k): v for k, v in self.ask_quantiles.items()},
            "tasks": self.tasks,
            "teacher": self.teacher,
            "summary": summary,
        }

    def save(self, path: str | Path, op: ImprovementOperator, summary: dict[str, Any]) -> None:
        """Write weights (safetensors) and metadata (JSON), atomically."""
        tensors = {f"operator.{k}": v.detach().contiguous() for k, v in op.state_dict().items()}
        save_tensors(path, tensors, self.meta(summary))

    @staticmethod
    def load(path: str | Path) -> tuple[ImprovementOperator, OperatorCheckpoint]:
        """Read and validate a checkpoint; returns the operator (eval mode) and its description."""
        tensors, meta = load_tensors(path)
        try:
            if meta.get("format") != CHECKPOINT_FORMAT:
                raise ValueError(f"not an operator checkpoint (format {meta.get('format')!r})")
            if meta.get("format_version") != CHECKPOINT_VERSION:
                raise ValueError(f"checkpoint format version {meta.get('format_version')!r} is not supported by "
                                 f"this metaimprove (reads version {CHECKPOINT_VERSION}); retrain or upgrade")
            spec = PolicySpec.from_dict(meta["policy_spec"])
            operator = OperatorConfig(**meta["operator"])
            features = FeatureConfig(**meta["features"])
            ks = [int(k) for k in meta["ks"]]
            quantiles = {int(k): [float(x) for x in v] for k, v in meta["ask_quantiles"].items()}
            if not ks or not quantiles or any(len(v) != 3 for v in quantiles.values()):
                raise ValueError("ks / ask_quantiles are empty or malformed")
            ckpt = OperatorCheckpoint(spec, operator, features, ks, quantiles,
                                      [str(t) for t in meta["tasks"]], dict(meta["teacher"]))
            op = ImprovementOperator(spec, operator)
            state = {k.removeprefix("operator."): v for k, v in tensors.items() if k.startswith("operator.")}
            op.load_state_dict(state, strict=True)
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            raise UserError(f"operator checkpoint {path} is invalid: {str(exc).splitlines()[0]}") from exc
        op.eval()
        return op, ckpt
