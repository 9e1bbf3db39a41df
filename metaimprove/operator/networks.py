"""The improvement operator ``f(θ, τ, ask) → θ'``: a set encoder of τ and the ask, and a ``per_param`` or ``flat``
network predicting Δθ, optionally with a learned evolution-strategies step.

Why two architectures, and the ES step: see the design notes (docs/design.md, "The operator's architecture:
per-parameter or flat" and "Teachers that explore in parameter space, and the learned ES step").
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from metaimprove.errors import UserError
from metaimprove.operator.features import (
    ENV_STATS,
    MEMORY_INPUTS,
    SNR_CLIP,
    Features,
    transition_dim,
)
from metaimprove.sim.policy import PolicySpec

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
    memory: int = 0
    """width of a recurrent state carried from one application to the next, a GRU over each application's summary
    that joins the context (0: none, every application on its own)"""


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


class ApplicationMemory(nn.Module):
    """The operator's memory across applications: h₀ = 0 and hₙ₊₁ = GRU(sₙ, hₙ), sₙ application n's
    :func:`~metaimprove.operator.features.application_summary`; application n reads hₙ."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.width = width
        self.cell = nn.GRUCell(MEMORY_INPUTS, width)

    def initial(self, batch: int) -> torch.Tensor:
        """h₀ ``[batch, width]``."""
        return torch.zeros(batch, self.width, device=self.cell.weight_ih.device)

    def forward(self, summary: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
        """hₙ₊₁ ``[B, width]`` from sₙ ``[B, MEMORY_INPUTS]`` and hₙ."""
        return self.cell(summary, state)

    def unroll(self, summaries: torch.Tensor) -> torch.Tensor:
        """h₀ … h_{L−1} ``[B, L, width]`` of runs whose applications had ``summaries [B, L, MEMORY_INPUTS]`` (the
        last summary is not read: no application of the window comes after it)."""
        states = [self.initial(len(summaries))]
        for n in range(summaries.shape[1] - 1):
            states.append(self(summaries[:, n], states[-1]))
        return torch.stack(states, dim=1)


class ContextEncoder(nn.Module):
    """τ, the ask (the task's vector, ``task_dim`` wide, and the memory state, ``memory`` wide, if any) → a context
    vector: a DeepSets encoder (mean and max pool) over transitions (``agnostic``: their robot-independent
    statistics, see :data:`~metaimprove.operator.features.Features`)."""

    def __init__(self, spec: PolicySpec, config: OperatorConfig, task_dim: int = 0, agnostic: bool = False) -> None:
        super().__init__()
        h = config.hidden
        self.task_dim = task_dim
        self.point = _mlp([transition_dim(spec, agnostic), h, h])
        self.head = _mlp([2 * h + 2 + 1 + ASK_DIM + task_dim + config.memory, h, config.context_dim])

    def forward(self, feats: Features, ask: torch.Tensor, memory: torch.Tensor | None = None) -> torch.Tensor:
        h = self.point(feats["transitions"])
        parts = [h.mean(-2), h.amax(-2), feats["returns"], feats["grad_log_norm"], ask]
        if self.task_dim:
            parts.append(feats["task"])
        if memory is not None:
            parts.append(memory)
        return self.head(torch.cat(parts, dim=-1))


class ESRecombination(nn.Module):
    """Δθ_ES = Σ_e w_e ε_e / E over a batch's per-env perturbations ε_e (unit RMS), with w_e = MLP(env e's return
    statistics, context): a learned evolution-strategies step (zero at initialization)."""

    def __init__(self, config: OperatorConfig) -> None:
        super().__init__()
        self.weight = _mlp([ENV_STATS + config.context_dim, config.param_hidden, config.param_hidden, 1],
                           final_zero=True)

    def forward(self, feats: Features, context: torch.Tensor) -> torch.Tensor:
        stats = feats["env_returns"]
        ctx = context.unsqueeze(-2).expand(*stats.shape[:-1], context.shape[-1])
        w = self.weight(torch.cat([stats, ctx], dim=-1))  # [B, E, 1]
        return (w * feats["perturbation"]).mean(-2)


class FlatOperator(nn.Module):
    """Δθ = MLP([θ, ĝ, snr, context]) (+ Δθ_ES with ``es``)."""

    def __init__(self, spec: PolicySpec, config: OperatorConfig, es: bool = False) -> None:
        super().__init__()
        p = spec.n_params
        self.net = _mlp([3 * p + config.context_dim, config.hidden, config.hidden, p], final_zero=True)
        self.es = ESRecombination(config) if es else None

    def forward(self, feats: Features, context: torch.Tensor) -> torch.Tensor:
        delta = self.net(torch.cat([feats["theta"], feats["grad"], feats["grad_snr"] / SNR_CLIP, context], dim=-1))
        return delta if self.es is None else delta + self.es(feats, context)


def parameter_roles(spec: PolicySpec) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For every entry of θ: its block index, the observation it reads (or obs_dim if none), and the action it
    drives (or act_dim if none). Hidden units are interchangeable (permutation symmetry), inputs and
    outputs are not."""
    block = torch.empty(spec.n_params, dtype=torch.long)
    inp = torch.full((spec.n_params,), spec.obs_dim, dtype=torch.long)
    out = torch.full((spec.n_params,), spec.act_dim, dtype=torch.long)
    last = len(spec.layer_sizes) - 1
    for b, (name, shape, off) in enumerate(spec.layout()):
        n = math.prod(shape)
        block[off : off + n] = b
        if name == "W0":
            inp[off : off + n] = torch.arange(shape[1]).repeat(shape[0])
        if name in (f"W{last}", f"b{last}", "log_std"):
            rows = torch.arange(shape[0])
            out[off : off + n] = rows.repeat_interleave(shape[1]) if len(shape) == 2 else rows
    return block, inp, out


BLOCK_KINDS = 7
"""the kinds of θ's blocks a shape-agnostic operator tells apart: weights and biases of the input, hidden and
output layers, and log_std"""


def block_kinds(spec: PolicySpec) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For every entry of θ: its block index, its block's kind (:data:`BLOCK_KINDS`: W then b of the input layer, of
    a hidden layer, of the output layer, then log_std; a policy without hidden layers has only an output layer) and
    the log fan-in of its layer (0 for log_std): the roles any policy's parameters have, whatever its sizes."""
    block = torch.empty(spec.n_params, dtype=torch.long)
    kind = torch.empty(spec.n_params, dtype=torch.long)
    fan_in = torch.zeros(spec.n_params)
    last = len(spec.layer_sizes) - 1
    for b, (name, shape, off) in enumerate(spec.layout()):
        n = math.prod(shape)
        block[off : off + n] = b
        if name == "log_std":
            kind[off : off + n] = BLOCK_KINDS - 1
            continue
        layer = int(name[1:])
        position = 2 if layer == last else 0 if layer == 0 else 1
        kind[off : off + n] = position + (3 if name.startswith("b") else 0)
        fan_in[off : off + n] = math.log(spec.layer_sizes[layer][0])
    return block, kind, fan_in


def _block_scaled(x: torch.Tensor, block: torch.Tensor, n_blocks: int) -> torch.Tensor:
    """``x [..., P]`` over the RMS of its block's entries (``block``: each entry's block index)."""
    block_ms = torch.zeros(*x.shape[:-1], n_blocks, dtype=x.dtype, device=x.device)
    block_ms = block_ms.index_add(-1, block, x.square()) / torch.bincount(block, minlength=n_blocks)
    return x / (block_ms.index_select(-1, block).sqrt() + 1e-8)


class PerParamOperator(nn.Module):
    """Δθ_i = g([θ_i, ĝ_i, ĝ_i / rms(ĝ_block), snr_i, role_i], context), one small net shared by all parameters.

    With ``es``, g also reads Δθ_ES,i / rms(Δθ_ES) and Δθ_i = g_0 + 2σ(g_1)·Δθ_ES,i (a learned per-parameter gain
    on the learned ES step, 1 at initialization).

    With ``agnostic``, role_i is the kind of θ_i's block (:func:`block_kinds`) rather than its block's index and the
    observation and action it touches, and g also reads θ_i / rms(θ_block) and its layer's log fan-in: no weight is
    tied to a policy size or to the meaning of an observation or action, and it reads policies of any spec.
    """

    N_FEATURES = 4
    ROLES: ClassVar[dict[bool, tuple[str, ...]]] = {False: ("block", "inp", "out"), True: ("block", "kind", "fan_in")}
    """the names of the role buffers, per-family (False) and shape-agnostic (True)"""

    def __init__(self, spec: PolicySpec, config: OperatorConfig, es: bool = False, agnostic: bool = False) -> None:
        super().__init__()
        h, r = config.param_hidden, config.role_dim
        self.spec, self.agnostic = spec, agnostic
        self._other_roles: dict[PolicySpec, tuple[torch.Tensor, ...]] = {}
        """roles of the specs other than ``spec`` that an agnostic operator has read (on the CPU)"""
        roles = block_kinds(spec) if agnostic else parameter_roles(spec)
        for name, role in zip(self.ROLES[agnostic], roles, strict=True):
            self.register_buffer(name, role, persistent=False)
        self.block_emb = nn.Embedding(BLOCK_KINDS if agnostic else len(spec.layout()), r)
        if not agnostic:
            self.inp_emb = nn.Embedding(spec.obs_dim + 1, r)
            self.out_emb = nn.Embedding(spec.act_dim + 1, r)
        # The first layer is split by input so that the context and role terms are computed once, not per entry.
        self.es = ESRecombination(config) if es else None
        self.w_feat = nn.Linear(self.N_FEATURES + (2 if agnostic else 0) + (1 if es else 0), h)
        self.w_role = nn.Linear((1 if agnostic else 3) * r, h, bias=False)
        self.w_ctx = nn.Linear(config.context_dim, h, bias=False)
        self.rest = _mlp([h, h, 2 if es else 1], final_zero=True)

    def roles(self, spec: PolicySpec) -> tuple[torch.Tensor, ...]:
        """The roles of ``spec``'s parameters (:data:`ROLES`) on this operator's device."""
        if spec == self.spec:
            return tuple(getattr(self, name) for name in self.ROLES[self.agnostic])
        assert self.agnostic, "ImprovementOperator refuses other specs for a per-family operator"
        if spec not in self._other_roles:
            self._other_roles[spec] = block_kinds(spec)
        return tuple(role.to(self.w_role.weight.device) for role in self._other_roles[spec])

    def forward(self, feats: Features, context: torch.Tensor, spec: PolicySpec) -> torch.Tensor:
        additive, es = self.terms(feats, context, spec)
        return additive if es is None else additive + es

    def terms(self, feats: Features, context: torch.Tensor,
              spec: PolicySpec) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The step Δθ's two terms ``[..., P]``, which :meth:`forward` adds: g_0, and with ``es`` the gated ES step
        2σ(g_1)·Δθ_ES (None without), for studies of what each contributes."""
        block, *roles = self.roles(spec)
        n_blocks = len(spec.layout())
        g = feats["grad"]
        columns = [feats["theta"], g, _block_scaled(g, block, n_blocks), feats["grad_snr"] / SNR_CLIP]
        if self.agnostic:
            kind, fan_in = roles
            columns += [_block_scaled(feats["theta"], block, n_blocks), fan_in.expand_as(g)]
            role = self.w_role(self.block_emb(kind))
        else:
            inp, out = roles
            role = self.w_role(torch.cat([self.block_emb(block), self.inp_emb(inp), self.out_emb(out)], -1))
        if self.es is not None:
            es_step = self.es(feats, context)
            # ε inside the root: the step is exactly 0 at initialization, where √ has no derivative
            columns.append(es_step / (es_step.square().mean(-1, keepdim=True) + 1e-16).sqrt())
        x = torch.stack(columns, dim=-1)
        h = self.w_feat(x) + role + self.w_ctx(context).unsqueeze(-2)
        out = self.rest(torch.nn.functional.gelu(h))
        if self.es is None:
            return out.squeeze(-1), None
        return out[..., 0], 2 * torch.sigmoid(out[..., 1]) * es_step


class ImprovementOperator(nn.Module):
    """``f(θ, τ, ask) → θ'`` for policies of one :class:`PolicySpec` (or, shape-agnostic, of any): θ' = θ + Δθ.

    The ask is ``[log2 k, requested return improvement per step]``: "do the work of k teacher updates and gain this
    much". The output layers are zero-initialized, so an untrained operator returns θ unchanged.

    * ``flat`` (:class:`FlatOperator`): one MLP over the whole θ, its policy-gradient direction, that direction's
      per-parameter signal-to-noise ratio and the context; tied to one policy size.
    * ``per_param`` (:class:`PerParamOperator`): one small network shared by every parameter, reading that
      parameter's value, gradient component, signal-to-noise ratio and role (:func:`parameter_roles`) with the
      context; works for any hidden size, and with ``agnostic`` for any policy spec.

    With ``operator.memory`` it carries a state from one application to the next (:class:`ApplicationMemory`), which
    joins the context; the caller keeps the state (:func:`~metaimprove.operator.runtime.operator_update`).

    Args:
        spec: the policy architecture it improves (with ``agnostic``: the one it was built for; it reads any).
        config: the operator architecture.
        task_dim: width of the task vector it reads (``features.task_input``); 0: it reads no task.
        es: whether it also forms an ES step from τ's parameter perturbations (``features.es_gradient``).
        agnostic: whether it reads only what any robot's τ has (``features.agnostic``; per_param only, see
            :func:`~metaimprove.operator.features.check_features`).
    """

    def __init__(self, spec: PolicySpec, config: OperatorConfig, task_dim: int = 0, es: bool = False,
                 agnostic: bool = False) -> None:
        super().__init__()
        if config.arch not in ARCHS:
            raise UserError(f"unknown operator architecture '{config.arch}'; choose one of {list(ARCHS)}")
        self.spec = spec
        self.config = config
        self.agnostic = agnostic
        self.context = ContextEncoder(spec, config, task_dim, agnostic)
        self.memory = ApplicationMemory(config.memory) if config.memory else None
        self.update = FlatOperator(spec, config, es) if config.arch == "flat" else \
            PerParamOperator(spec, config, es, agnostic)

    def forward(self, feats: Features, ask: torch.Tensor, spec: PolicySpec | None = None,
                memory: torch.Tensor | None = None) -> torch.Tensor:
        """θ' ``[B, P]`` (for the next normalizer N') from encoded (θ, τ) ``feats`` (batched) and ``ask [B, 2]``, for
        policies of ``spec`` (default the operator's own; another only for a shape-agnostic operator); an operator
        with memory also reads its state ``memory [B, operator.memory]`` (default h₀, a run's first application)."""
        spec = self.spec if spec is None else spec
        if spec != self.spec and not self.agnostic:
            raise UserError(f"this operator improves policies of spec {self.spec}, not {spec}; only a shape-agnostic "
                            "operator (features.agnostic=true) reads other specs")
        if self.memory is not None and memory is None:
            memory = self.memory.initial(len(ask))
        context = self.context(feats, ask, memory if self.memory is not None else None)
        if isinstance(self.update, FlatOperator):
            return feats["theta"] + self.config.step_scale * self.update(feats, context)
        return feats["theta"] + self.config.step_scale * self.update(feats, context, spec)
