"""What the operator sees of (θ, τ): :func:`encode` in the coordinates of the normalizer its output goes with.

Why: see the design notes (docs/design.md, "What the operator reads" and "The normalizer is part of the policy").
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import numpy as np
import torch

from metaimprove.errors import UserError
from metaimprove.sim.envs import AnyTask
from metaimprove.sim.policy import ACTIVATIONS, NORM_EPS, OBS_CLIP, ObsNormalizer, Policy, PolicySpec
from metaimprove.sim.rollout import Experience
from metaimprove.sim.tasks import Task, task_coordinates

Features = dict[str, torch.Tensor]
"""One encoded (θ, τ); a batch stacks a leading dimension on each. Its keys:

* ``theta``: θ, read in N' coordinates (N': θ's normalizer updated with τ, :func:`next_normalizer`)
* ``grad``: the policy-gradient direction of τ (REINFORCE with a linear state-time baseline, as rllab's
  ``LinearFeatureBaseline``), scaled to unit RMS, and ``grad_log_norm`` its size
* ``grad_snr``: per parameter, the mean over episodes of the per-episode gradients over their standard
  error (:func:`per_episode_gradients`): how consistently τ pushes that parameter
* ``transitions``: a fixed-size subsample of (normalized obs, z-scored action, reward, advantage, phase); with
  ``agnostic`` of (RMS and largest |z| of the z-scored action, RMS of the mean action, reward, advantage, phase),
  :data:`AGNOSTIC_TRANSITION_DIM` wide whatever the robot
* ``returns``: mean and spread over environments of the mean reward per step
  (with ``reward_symlog``, this and the transitions' reward read :func:`symlog` of each reward)
* ``states`` (raw observations) with ``norm_mean``/``norm_std`` (N'), for the behavioural loss only
* ``task`` (only with ``task_input``): :func:`task_vector` of the task τ was collected on
* ``perturbation`` and ``env_returns`` (only with ``es_gradient``): for a batch that explores in parameter
  space (ARS), each env's θ_e − θ scaled to unit RMS ``[E, P]`` (zeros when every env ran θ), and per env
  ``[E, 4]``: its return z-scored over the batch, its centered rank, its antithetic partner's z-score (its own
  when the batch has no antithetic pairs), and the centered rank of the better of the two
"""

SNR_CLIP = 10.0


@dataclass
class FeatureConfig:
    """How much of τ the operator sees."""

    n_transitions: int = 256
    """transitions subsampled from τ for the set encoder"""
    n_states: int = 256
    """states of τ kept for the behavioural loss"""
    gamma: float = 0.99
    """discount of the reward-to-go behind the policy-gradient direction"""
    baseline_ridge: float = 1e-3
    """ridge penalty of the linear state-time value baseline"""
    task_input: bool = False
    """oracle ablation: also give the operator the task itself (its normalized parameters and physics scales)"""
    es_gradient: bool | None = None
    """read the per-env perturbations and returns of a parameter-space teacher's batch (ARS); None: exactly when
    the training data has them"""
    n_envs: int | None = None
    """environments per τ the operator reads: training encodes a random subset of each recorded batch (antithetic
    pairs kept together) against the teacher's whole-batch targets, and apply collects batches this wide; None:
    the teacher's whole batch"""
    warmup: list[list[int]] = field(default_factory=list)
    """apply: narrower batches first, ``[[envs, until_env_step], ...]``: batches of ``envs`` envs while the run has
    used fewer than ``until_env_step`` env steps, then the next phase, then ``envs``-wide ones (training ignores it)"""
    agnostic: bool = False
    """read only what any robot's τ has (returns, advantages, action statistics, per-parameter and per-block
    gradient statistics, ES perturbations), nothing of an observation's or action's index: one operator's weights
    then serve policies of every PolicySpec, and a union of datasets may mix robots (per_param only)"""
    reward_symlog: bool = False
    """read τ's rewards through symlog(r) = sign(r)·ln(1 + |r|) where the encoding reads them as they are (each
    sampled transition's reward, and the per-step reward's mean and spread, ``returns``): robots whose rewards differ
    in scale then differ less in what the operator reads (the ES statistics and advantages are scale-free already)"""


def check_features(config: FeatureConfig, arch: str) -> None:
    """Refuse (one-line :class:`UserError`) a feature setting the operator architecture ``arch`` cannot read: a
    shape-agnostic operator is per-parameter and reads no task vector (a family's own coordinates)."""
    if config.agnostic and arch != "per_param":
        raise UserError(f"features.agnostic=true needs operator.arch=per_param (a {arch} operator is tied to one "
                        "policy size)")
    if config.agnostic and config.task_input:
        raise UserError("features.agnostic=true and features.task_input=true: a task vector means something else "
                        "in every family; drop one of them")


def warmup_phases(warmup: list[list[int]], what: str = "features.warmup") -> tuple[tuple[int, int], ...]:
    """``warmup`` (:attr:`FeatureConfig.warmup`) as ``((envs, until_env_step), ...)``, checked: pairs of integers,
    envs >= 1 and the ends increasing from >= 1 (one-line :class:`UserError` naming ``what`` otherwise)."""
    phases = []
    for phase in warmup:
        if not (isinstance(phase, (list, tuple)) and len(phase) == 2
                and all(isinstance(v, int) and not isinstance(v, bool) for v in phase)):
            raise UserError(f"{what}={warmup}: give a list of [envs, until_env_step] pairs of integers, "
                            "e.g. [[16,8192]]")
        phases.append((phase[0], phase[1]))
    ends = [until for _, until in phases]
    if any(envs < 1 for envs, _ in phases) or any(b <= a for a, b in itertools.pairwise([0, *ends])):
        raise UserError(f"{what}={warmup}: each phase needs envs >= 1, and the phases' until_env_step must "
                        "increase from >= 1")
    return tuple(phases)


def task_vector(task: AnyTask) -> torch.Tensor:
    """The task as the oracle operator reads it ``[D]``: :func:`~metaimprove.sim.tasks.task_coordinates` (the
    normalization of the oracle task distance: a task parameter over the width of its training range, a physics
    scale ``base ** u`` as ``u`` over the width of ``u``'s training range) flattened in the family's order.

    A user's env (``apply env=``) has no task parameters, so an oracle operator cannot run on it.
    """
    if not isinstance(task, Task):
        raise UserError(f"an operator trained with features.task_input=true reads the task's parameters, and the "
                        f"user env {task.name} has none; apply it on tasks of its family (task=<family>)")
    return torch.cat([torch.as_tensor(v, dtype=torch.float32) for v in task_coordinates(task).values()])


AGNOSTIC_TRANSITION_DIM = 6
"""width of a shape-agnostic encoded transition (see :data:`Features`)"""


def transition_dim(spec: PolicySpec, agnostic: bool = False) -> int:
    """Width of one encoded transition: obs, z-scored action, reward, advantage, episode phase; with ``agnostic``
    :data:`AGNOSTIC_TRANSITION_DIM`."""
    return AGNOSTIC_TRANSITION_DIM if agnostic else spec.obs_dim + spec.act_dim + 3


def reward_to_go(exp: Experience, gamma: float) -> torch.Tensor:
    """Discounted reward-to-go ``[T, E]`` within each episode (no bootstrap past an episode's end)."""
    # numpy: per-step torch calls cost more than the arithmetic in this short backward loop.
    reward = exp.reward.double().numpy()
    keep = gamma * ~(exp.terminated | exp.truncated).numpy()
    togo = np.empty_like(reward)
    running = np.zeros(reward.shape[1])
    for t in range(reward.shape[0] - 1, -1, -1):
        running = reward[t] + keep[t] * running
        togo[t] = running
    return torch.from_numpy(togo)


def advantages(exp: Experience, states: torch.Tensor, gamma: float, ridge: float) -> torch.Tensor:
    """Standardized advantages ``[T, E]``: reward-to-go minus a ridge-regressed linear baseline on
    (s, s², t, t², t³, 1), the classic low-variance baseline for policy gradients without a critic."""
    togo = reward_to_go(exp, gamma)
    T, E = togo.shape
    s = states.double().reshape(T, E, -1)
    t = (torch.arange(T, dtype=torch.float64) / T).reshape(T, 1, 1).expand(T, E, 1)
    x = torch.cat([s, s.square(), t, t.square(), t.pow(3), torch.ones_like(t)], dim=-1).reshape(T * E, -1)
    y = togo.reshape(-1, 1)
    eye = torch.eye(x.shape[1], dtype=torch.float64)
    coef = torch.linalg.solve(x.T @ x + ridge * len(y) * eye, x.T @ y)
    adv = (y - x @ coef).reshape(T, E)
    return (adv / (adv.std() + 1e-8)).float()


ACTIVATION_BACKWARDS = {"tanh": torch.ops.aten.tanh_backward,
                        "relu": lambda grad_out, out: torch.ops.aten.threshold_backward(grad_out, out, 0)}
"""each of :data:`~metaimprove.sim.policy.ACTIVATIONS`' backward from its output, the op autograd runs for it"""


def per_episode_gradients(spec: PolicySpec, theta: torch.Tensor, states: torch.Tensor, actions: torch.Tensor,
                          adv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """∇θ of the REINFORCE surrogate mean_t(Â · log π_θ(a|s)) for each environment's stream ``[E, P]``, and the
    policy's action mean ``[T, E, act]`` on ``states`` (the forward it differentiates, for the caller to reuse).

    ``states [T, E, obs]`` (normalized), ``actions [T, E, act]``, ``adv [T, E]``. The forward is
    :func:`~metaimprove.sim.policy.forward`'s, keeping each layer's output; the backward is written out, each step
    the op that autograd runs for it under ``torch.func.vmap(torch.func.grad(surrogate))`` over environments, so the
    result is that one's to float rounding, bit for bit where both run the same kernels
    (tests/operator/test_features.py), at half the cost: autograd's per-node
    bookkeeping costs more than this arithmetic on a few thousand parameters.
    """
    T, E = adv.shape
    blocks = spec.unflatten(theta.detach())
    n_layers = len(spec.layer_sizes)
    outs = [states.transpose(0, 1)]  # each layer's input [E, T, in], then the action mean
    for layer in range(n_layers):
        h = outs[-1] @ blocks[f"W{layer}"].mT + blocks[f"b{layer}"].unsqueeze(-2)
        if layer < n_layers - 1:
            h = ACTIVATIONS[spec.activation](h)
        elif spec.squash:
            h = torch.tanh(h)
        outs.append(h)
    mean = outs[-1]
    inv_std = torch.exp(-blocks["log_std"])
    diff = actions.transpose(0, 1) - mean
    # ∂/∂ log π of Σ_e mean_t(Â · log π), then through log π = Σ_a (-z²/2 - log σ - log √(2π)), z = (a - μ)/σ
    grad = ((torch.ones(E, T) / T) * adv.T).unsqueeze(-1).expand(E, T, spec.act_dim)
    grad_z = (grad * -0.5) * (2.0 * (diff * inv_std))
    grads = {"log_std": (-grad).sum(1) + -(grad_z * diff).sum(1) * inv_std}
    grad = -(grad_z * inv_std)  # ∂/∂μ
    if spec.squash:
        grad = torch.ops.aten.tanh_backward(grad, mean)
    for layer in range(n_layers - 1, -1, -1):
        grads[f"b{layer}"] = grad.sum(1)
        grads[f"W{layer}"] = torch.bmm(outs[layer].transpose(1, 2), grad).mT
        if layer > 0:
            grad = ACTIVATION_BACKWARDS[spec.activation](grad @ blocks[f"W{layer}"], outs[layer])
    return torch.cat([grads[name].reshape(E, -1) for name, _, _ in spec.layout()], dim=-1), mean.transpose(0, 1)


def next_normalizer(policy: Policy, exp: Experience) -> ObsNormalizer:
    """The normalizer the improved policy goes with: the policy's, updated with τ's observations (as PPO does)."""
    norm = policy.normalizer.copy()
    norm.update(exp.obs.numpy())
    return norm


def symlog(x: torch.Tensor) -> torch.Tensor:
    """sign(x)·ln(1 + |x|): the identity near 0 and logarithmic beyond (DreamerV3's transform for targets whose
    scale differs across domains)."""
    return torch.sign(x) * torch.log1p(x.abs())


def encode(policy: Policy, exp: Experience, config: FeatureConfig, generator: torch.Generator,
           task: AnyTask | None = None, norm: ObsNormalizer | None = None) -> Features:
    """Encode θ (``policy``, which collected ``exp``) and τ (``exp``) for the operator, in N' coordinates (keys:
    :data:`Features`); with ``config.task_input`` also ``task``, the task τ was collected on. ``norm``: N'
    (:func:`next_normalizer` of ``policy`` and ``exp``) when the caller has it already."""
    spec = policy.spec
    norm = next_normalizer(policy, exp) if norm is None else norm
    T, E = exp.reward.shape
    states = norm.normalize(exp.obs)
    adv = advantages(exp, states, config.gamma, config.baseline_ridge)
    grads, mean = per_episode_gradients(spec, policy.theta, states, exp.action, adv)
    g = grads.mean(0)
    stderr = grads.std(0) / E**0.5 if E > 1 else torch.ones_like(g)
    g_norm = g.norm()
    pick = torch.randperm(T * E, generator=generator)
    # The subsampled transitions (row t·E + e of τ flattened is step t of env e), built from those rows alone.
    rows = pick[: config.n_transitions]
    step, env = rows // E, rows % E
    log_std = spec.unflatten(policy.theta)["log_std"]
    z = ((exp.action[step, env] - mean[step, env]) * torch.exp(-log_std)).clamp(-5, 5)
    phase = (torch.arange(T, dtype=torch.float32) / T)[step]
    # Statistics over action dims, and no observation, where the operator must read any robot's τ.
    what = (torch.stack([z.square().mean(-1).sqrt(), z.abs().amax(-1), mean[step, env].square().mean(-1).sqrt()],
                        dim=-1) if config.agnostic else torch.cat([states[step, env], z], dim=-1))
    reward = symlog(exp.reward) if config.reward_symlog else exp.reward
    transitions = torch.cat([what, reward[step, env, None], adv[step, env, None], phase[:, None]], dim=-1)
    # Per-environment mean reward: always defined (unlike completed-episode returns) and equal in training
    # data and at apply time.
    per_step = reward.mean(0)
    feats = {
        "theta": policy.theta.float(),
        "grad": g / (g_norm / spec.n_params**0.5 + 1e-12),
        "grad_log_norm": torch.log(g_norm + 1e-12).reshape(1),
        "grad_snr": (g / (stderr + 1e-12)).clamp(-SNR_CLIP, SNR_CLIP),
        "transitions": transitions,
        "returns": torch.stack([per_step.mean(), per_step.std() if E > 1 else torch.tensor(0.0)]),
        "states": exp.obs.reshape(T * E, -1)[pick[: config.n_states]],
        "norm_mean": torch.as_tensor(norm.mean, dtype=torch.float32),
        "norm_std": torch.as_tensor(np.sqrt(norm.var + NORM_EPS), dtype=torch.float32),
    }
    if config.es_gradient:
        feats["perturbation"], feats["env_returns"] = perturbation_features(exp, spec.n_params)
    if config.task_input:
        if task is None:
            raise UserError("features.task_input=true: the operator reads the task, so encode needs task=")
        feats["task"] = task_vector(task)
    return feats


ENV_STATS = 4


def centered_ranks(values: torch.Tensor) -> torch.Tensor:
    """Ranks of ``values [E]`` scaled to [-0.5, 0.5] (float64), ties sharing their average rank."""
    below = (values.unsqueeze(1) > values.unsqueeze(0)).sum(1).double()
    ties = (values.unsqueeze(1) == values.unsqueeze(0)).sum(1).double() - 1
    return (below + ties / 2) / max(len(values) - 1, 1) - 0.5


def is_antithetic(exp: Experience) -> bool:
    """Whether τ's envs are antithetic pairs of perturbations: env ``k`` ran θ + ε_k, env ``E/2 + k`` θ − ε_k."""
    pert, E = exp.perturbation, exp.reward.shape[1]
    return pert is not None and E % 2 == 0 and torch.equal(pert[E // 2:], -pert[:E // 2])


def perturbation_features(exp: Experience, n_params: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``es_gradient`` features of τ: each env's parameter perturbation over their RMS ``[E, P]`` (zeros if
    τ has none) and the per-env return statistics ``[E, ENV_STATS]`` (see :data:`Features`)."""
    returns = exp.reward.double().sum(0)
    E = len(returns)
    z = ((returns - returns.mean()) / (returns.std() + 1e-8)).float() if E > 1 else torch.zeros(E)
    pert = exp.perturbation
    partner = torch.arange(E).roll(E // 2) if is_antithetic(exp) else torch.arange(E)
    better = torch.maximum(returns, returns[partner])
    stats = torch.stack([z, centered_ranks(returns).float(), z[partner], centered_ranks(better).float()], dim=-1)
    if pert is None:
        return torch.zeros(E, n_params), stats
    return pert.float() / (pert.float().square().mean().sqrt() + 1e-12), stats


def env_subset(exp: Experience, n: int, generator: torch.Generator) -> Experience:
    """τ restricted to ``n`` of its environments drawn with ``generator``, in their original order; a batch of
    antithetic perturbations (ARS: env ``k`` ran θ + ε_k, env ``E/2 + k`` ran θ − ε_k) keeps whole pairs and its
    layout. Holds what the operator's encoding reads: ``episode_returns`` and ``n_unstable`` are not attributable
    to envs and are left empty."""
    E = exp.reward.shape[1]
    half = E // 2
    antithetic = is_antithetic(exp)
    if not 1 <= n <= E or (antithetic and n % 2):
        kind = "an even number of envs (antithetic pairs)" if antithetic else "envs"
        raise UserError(f"features.n_envs={n}: the recorded batches have {E} envs, so give {kind} between "
                        f"{2 if antithetic else 1} and {E}")
    if antithetic:
        pairs = torch.randperm(half, generator=generator)[: n // 2].sort().values
        index = torch.cat([pairs, pairs + half])
    else:
        index = torch.randperm(E, generator=generator)[:n].sort().values
    keep = torch.isin(exp.trunc_index[:, 1], index)
    renumber = torch.full((E,), -1, dtype=torch.long)
    renumber[index] = torch.arange(n)
    trunc_index = exp.trunc_index[keep].clone()
    trunc_index[:, 1] = renumber[trunc_index[:, 1]]
    return Experience(obs=exp.obs[:, index], action=exp.action[:, index], log_prob=exp.log_prob[:, index],
                      reward=exp.reward[:, index], terminated=exp.terminated[:, index],
                      truncated=exp.truncated[:, index], trunc_obs=exp.trunc_obs[keep], trunc_index=trunc_index,
                      episode_returns=torch.zeros(0), n_unstable=0,
                      perturbation=None if exp.perturbation is None else exp.perturbation[index])


MEMORY_INPUTS = 6
"""width of one application's summary (:func:`application_summary`), what an operator's memory reads"""


def application_summary(returns: torch.Tensor, grad_log_norm: torch.Tensor, step: torch.Tensor,
                        previous_step: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
    """What an operator's memory (``operator.memory``) reads of application ``n`` (batched over leading dims):
    τⁿ's ``returns`` (mean and spread of reward per step) and ``grad_log_norm`` (:data:`Features`), the log RMS of
    the step it took, Δθ = θⁿ⁺¹ − θⁿ (in N' coordinates), the cosine of Δθ with the previous application's step
    (0 at the first, whose previous step is zeros) and log(1 + n): ``[..., MEMORY_INPUTS]``.

    Training computes it from the teacher's steps and apply from the operator's own, with this one function, so
    that both mean the same; why these and not the fraction of the budget: see the design notes (docs/design.md,
    "Memory across applications")."""
    rms = step.square().mean(-1, keepdim=True).sqrt()
    cos = (step * previous_step).sum(-1, keepdim=True) / (
        step.norm(dim=-1, keepdim=True) * previous_step.norm(dim=-1, keepdim=True) + 1e-12)
    return torch.cat([returns, grad_log_norm, torch.log(rms.clamp_min(1e-8)), cos,
                      torch.log1p(n.float()).unsqueeze(-1)], dim=-1)


def normalize_states(raw: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """Raw observations ``[B, S, obs]`` normalized by per-row statistics ``[B, obs]`` (clipped as the policy does)."""
    return ((raw - mean.unsqueeze(-2)) / std.unsqueeze(-2)).clamp(-OBS_CLIP, OBS_CLIP)


def stack(items: list[Features]) -> Features:
    """A batch of encodings."""
    return {k: torch.stack([it[k] for it in items]) for k in items[0]}
