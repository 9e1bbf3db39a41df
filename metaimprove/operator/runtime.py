"""The operator at run time: the batches it collects (as its teacher explores, on a schedule of widths) and
its update θ' = f(θ, τ, ask)."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from metaimprove import seeds
from metaimprove.errors import UserError
from metaimprove.operator.checkpoint import OperatorCheckpoint
from metaimprove.operator.features import (
    Features,
    application_summary,
    encode,
    next_normalizer,
    stack,
    warmup_phases,
)
from metaimprove.operator.networks import ApplicationMemory, ImprovementOperator
from metaimprove.sim.envs import AnyTask
from metaimprove.sim.policy import Policy
from metaimprove.sim.rollout import Experience
from metaimprove.teachers import Teacher, make_teacher


def operator_teacher(ckpt: OperatorCheckpoint) -> Teacher:
    """The teacher whose batches the operator collects: its own teacher, resized to ``features.n_envs`` envs when the
    operator was trained to read fewer than the teacher ran."""
    teacher = make_teacher(ckpt.teacher)
    return teacher if ckpt.features.n_envs is None else teacher.resized(ckpt.features.n_envs)


def describe_warmup(warmup: Sequence[Sequence[int]]) -> str:
    """A warm-up in words: ``8-env batches until 4096 env steps, then 16-env batches until 8192 env steps``."""
    return ", then ".join(f"{n_envs}-env batches until {until} env steps" for n_envs, until in warmup)


@dataclass(frozen=True)
class BatchSchedule:
    """How wide a run's batches are: ``warmup``'s phases ``((n_envs, until_env_step), ...)`` while the run has used
    fewer env steps than the phase's end, then ``n_envs``; ``n_steps`` steps per env."""

    n_envs: int
    n_steps: int
    warmup: tuple[tuple[int, int], ...] = ()

    @classmethod
    def of(cls, ckpt: OperatorCheckpoint, warmup: list[list[int]] | None = None) -> BatchSchedule:
        """The operator's schedule: ``warmup`` (default the checkpoint's ``features.warmup``) before batches of
        :func:`operator_teacher`'s full width. Every warm-up width must be narrower than that (so a teacher resized
        from the full-width one is the same as one resized from the checkpoint's teacher) and suit the teacher (ARS
        batches hold antithetic pairs)."""
        full = operator_teacher(ckpt)
        n_envs, n_steps = full.batch_shape
        what = "features.warmup" if warmup is None else "warmup"
        phases = warmup_phases(ckpt.features.warmup if warmup is None else warmup, what)
        for width, _ in phases:
            if width >= n_envs:
                raise UserError(f"{what}: a warm-up batch of {width} envs is not narrower than the operator's "
                                f"{n_envs}-env batches; give fewer envs")
            try:
                full.resized(width)
            except UserError as exc:
                raise UserError(f"{what}: {exc}") from exc
        return cls(n_envs, n_steps, phases)

    @property
    def batch(self) -> int:
        """The env steps of a full-width batch."""
        return self.n_envs * self.n_steps

    def envs_at(self, steps: int) -> int:
        """The envs of the batch collected after ``steps`` env steps."""
        return next((n_envs for n_envs, until in self.warmup if steps < until), self.n_envs)

    def batch_at(self, steps: int) -> int:
        """The env steps of the batch collected after ``steps`` env steps."""
        return self.envs_at(steps) * self.n_steps

    def batches(self, budget: int) -> int:
        """How many batches a run collects within ``budget`` env steps."""
        steps = n = 0
        while steps + self.batch_at(steps) <= budget:
            steps, n = steps + self.batch_at(steps), n + 1
        return n

    def seed(self, seed: int, n_envs: int) -> int:
        """The seed of run ``seed``'s collector of ``n_envs``-wide batches: ``seed`` itself at the full width (a run
        without a warm-up collects as before it had one), :func:`metaimprove.seeds.warmup_collector` otherwise."""
        return seed if n_envs == self.n_envs else seeds.warmup_collector(seed, n_envs)


class Explorer:
    """How the operator collects its batches from a policy on ``task``: as its teacher does (``Teacher.explore``:
    PPO's Gaussian action noise, ARS's antithetic parameter perturbations), so that it sees the kind of experience
    it was trained on, as wide as ``schedule`` (default: :meth:`BatchSchedule.of` the checkpoint) says after the
    run's env steps so far, one collector per width seeded by :meth:`BatchSchedule.seed`."""

    def __init__(self, ckpt: OperatorCheckpoint, task: AnyTask, start: Policy, seed: int,
                 schedule: BatchSchedule | None = None) -> None:
        self.schedule = BatchSchedule.of(ckpt) if schedule is None else schedule
        self._teachers: dict[int, Teacher] = {}
        for n_envs in {self.schedule.n_envs, *(n_envs for n_envs, _ in self.schedule.warmup)}:
            teacher = operator_teacher(ckpt)
            teacher = teacher if n_envs == self.schedule.n_envs else teacher.resized(n_envs)
            teacher.start(task, start, self.schedule.seed(seed, n_envs))
            self._teachers[n_envs] = teacher

    def __call__(self, policy: Policy, steps: int) -> Experience:
        """A batch collected by ``policy`` in a run that has used ``steps`` env steps."""
        return self._teachers[self.schedule.envs_at(steps)].explore(policy)


class MemoryCarry:
    """An operator's memory along one run (:class:`~metaimprove.operator.networks.ApplicationMemory`): ``state`` is
    what the next application reads, and :meth:`advance` records what that application did."""

    def __init__(self, memory: ApplicationMemory) -> None:
        self.memory = memory
        self.state = memory.initial(1)
        """``[1, width]``: hₙ, for application n"""
        self.previous: torch.Tensor | None = None
        """application n−1's step Δθ (None before the first)"""
        self.n = 0
        """applications so far"""

    def advance(self, feats: Features, theta: torch.Tensor) -> None:
        """hₙ₊₁ after application n turned encoded (θⁿ, τⁿ) ``feats`` (one, unbatched) into ``theta`` (θⁿ⁺¹)."""
        step = theta - feats["theta"]
        summary = application_summary(feats["returns"], feats["grad_log_norm"], step,
                                      torch.zeros_like(step) if self.previous is None else self.previous,
                                      torch.tensor(self.n))
        self.state = self.memory(summary.unsqueeze(0), self.state)
        self.previous, self.n = step, self.n + 1


def operator_update(op: ImprovementOperator, ckpt: OperatorCheckpoint, task: AnyTask, ask: torch.Tensor,
                    generator: torch.Generator,
                    timings: list[float] | None = None) -> Callable[[Policy, Experience], Policy]:
    """The operator as an update ``(θ, τ) -> θ'`` on ``task``: τ's observations are folded into θ's normalizer (as
    the teacher does) and θ' = f(θ, τ, ask) for that normalizer (an oracle operator also reads ``task``), for θ's
    policy spec (the operator's own, or any for a shape-agnostic operator). An operator with memory carries its
    state from one call to the next: one update serves one run."""
    carry = None if op.memory is None else MemoryCarry(op.memory)

    def update(policy: Policy, exp: Experience) -> Policy:
        begin = time.perf_counter()
        norm = next_normalizer(policy, exp)
        feats = encode(policy, exp, ckpt.features, generator, task, norm)
        with torch.no_grad():
            theta = op(stack([feats]), ask.unsqueeze(0), policy.spec, None if carry is None else carry.state)[0]
            if carry is not None:
                carry.advance(feats, theta)
        if timings is not None:
            timings.append(time.perf_counter() - begin)
        if not torch.isfinite(theta).all():
            raise UserError(f"the operator produced non-finite parameters on {task.name}; "
                            "the checkpoint is unusable for this task")
        return Policy(policy.spec, theta, norm)

    return update
