"""The ``metalearn`` stage: a start θ₀ meta-trained by first-order Reptile over training tasks, with inner loops of
ARS updates or of an operator's applications, for the meta-learned peer of ``apply`` (``meta``: θ₀ as it is;
``meta_ars``: ARS fine-tuning it) and the start the operator adapts from (``init=``).

Why: see the design notes (docs/design.md, "The meta-learned start").
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from omegaconf import MISSING
from tqdm import tqdm

from metaimprove import seeds
from metaimprove.data.collect import load_manifest, load_shard, shard_task
from metaimprove.errors import UserError
from metaimprove.operator.checkpoint import OperatorCheckpoint, resolve_operator
from metaimprove.operator.networks import ImprovementOperator
from metaimprove.operator.runtime import BatchSchedule, Explorer, operator_update
from metaimprove.sim.policy import ObsNormalizer, Policy, PolicySpec, fold_normalizer, init_params, save_policy
from metaimprove.sim.rollout import Experience, Simulator
from metaimprove.sim.tasks import Task, TaskConfig, get_family
from metaimprove.storage import atomic_write_csv, load_tensors, save_tensors, sha256_file
from metaimprove.teachers import ARS, ARSConfig, recorded_config
from metaimprove.training.outcome import named_tasks

META_POLICY = "policy.safetensors"
"""the file the ``metalearn`` stage writes θ₀ to, inside its run directory"""
CHECKPOINT = "checkpoint.safetensors"
"""θ₀ and the progress after the last finished outer step, inside the run directory"""
CHECKPOINT_FORMAT = "metaimprove.metalearn"
LOG_FIELDS = ["outer_step", "env_steps", "step_size", "tasks", "first_batch_return", "last_batch_return", "step_norm"]
INNER = ("ars", "operator")
"""what an inner loop improves θ with: ARS updates, or applications of an operator"""


@dataclass
class MetaLearnConfig:
    """Meta-train a start θ₀ by Reptile with ARS or operator inner loops over training tasks (`apply meta_policy=`)."""

    task: TaskConfig = MISSING
    """the task family (config group: task=<family>)"""
    inner: str = "ars"
    """the inner loops: ars (ARS updates) or operator (applications of operator_path, as apply's operator runs)"""
    operator_path: str | None = None
    """inner=operator: the operator, a checkpoint (`metaimprove train` or `outcome`) or a shipped operator's name"""
    dataset: str | None = None
    """the operator's dataset (`metaimprove collect` out=): meta-train on its tasks, policy spec and (inner=ars) ARS"""
    env_steps: int | None = None
    """meta-training env steps in all, every inner loop's counted (default: the dataset's total env steps)"""
    inner_steps: int = 8
    """k: ARS updates or operator applications per inner loop, from θ₀ on one task"""
    meta_batch: int = 4
    """inner loops (tasks) per outer step, whose adapted policies are averaged"""
    outer_lr: float = 1.0
    """ε at the first outer step (Reptile's meta step size)"""
    outer_lr_final: float = 0.0
    """ε approached at the last outer step: ε_t = outer_lr·(1 − t/T) + outer_lr_final·t/T, as Reptile anneals it"""
    ars: ARSConfig = field(default_factory=ARSConfig)
    """inner=ars: the inner loops' ARS (ars.<field>=...) without dataset=; with it, the dataset's (apply fine-tunes)"""
    n_tasks: int = 32
    """inner=ars without dataset=: train tasks start .. start + n_tasks - 1"""
    start: int = 0
    """inner=ars without dataset=: index of the first train task"""
    hidden: list[int] | None = None
    """hidden layer sizes of the policy MLP (default: the dataset's or the operator's policy spec, else [32, 32])"""
    seed: int = 0
    """seeds θ₀'s initialization, the task order and every inner loop's collector and directions"""
    out: str = MISSING
    """run directory: policy.safetensors, log.csv and the resume checkpoint (default runs/metalearn/<date>_<time>)"""


@dataclass(frozen=True, eq=False)
class InnerOperator:
    """The operator of ``inner=operator``: its weights and description, and the sha256 of the file they came from."""

    op: ImprovementOperator
    ckpt: OperatorCheckpoint
    sha256: str

    def env_steps(self, k: int) -> int:
        """Env steps of ``k`` applications: its first ``k`` batches on the checkpoint's schedule (warm-up included)."""
        schedule, steps = BatchSchedule.of(self.ckpt), 0
        for _ in range(k):
            steps += schedule.batch_at(steps)
        return steps


@dataclass(frozen=True)
class MetaPlan:
    """What a meta-training run does, resolved from its config (and dataset or operator) and validated."""

    tasks: tuple[Task, ...]
    spec: PolicySpec
    ars: ARSConfig | None
    """the inner loops' ARS (None with inner=operator)"""
    budget: int
    """the env steps it may spend"""
    inner_steps: int
    meta_batch: int
    operator: InnerOperator | None = None
    """the operator the inner loops apply (None with inner=ars)"""

    @property
    def inner_env_steps(self) -> int:
        """Env steps of one inner loop."""
        if self.operator is not None:
            return self.operator.env_steps(self.inner_steps)
        assert self.ars is not None
        return self.inner_steps * ARS(self.ars).steps_per_update

    def improver(self) -> Improver:
        """A fresh improver for the inner loops: the ARS, or the operator as apply runs it."""
        if self.operator is not None:
            return OperatorImprover(self.operator.op, self.operator.ckpt)
        assert self.ars is not None
        return ARS(self.ars)

    @property
    def n_inner(self) -> int:
        """Inner loops in all: as many whole ones as the budget pays for."""
        return self.budget // self.inner_env_steps

    @property
    def n_outer(self) -> int:
        """Outer steps T (the last one may hold fewer than ``meta_batch`` inner loops)."""
        return math.ceil(self.n_inner / self.meta_batch)


def plan(cfg: MetaLearnConfig) -> MetaPlan:
    """Resolve and check ``cfg``: its tasks, policy spec, inner loops and budget (one-line errors)."""
    family = get_family(cfg.task.family)
    if cfg.inner not in INNER:
        raise UserError(f"inner={cfg.inner}: choose one of {', '.join(INNER)}")
    if cfg.inner == "operator":
        return _operator_plan(cfg)
    if cfg.operator_path is not None:
        raise UserError("operator_path= is the operator of inner=operator; give inner=operator or leave it out")
    _check_sizes(cfg)
    if cfg.dataset is not None:
        if cfg.ars != ARSConfig():
            raise UserError("ars.* and dataset= both set the inner loops' ARS; with dataset= the dataset's ARS "
                            "(what apply fine-tunes with) is used, so leave ars.* out")
        tasks, spec, ars, dataset_steps = _family_dataset(cfg)
    else:
        if cfg.n_tasks < 1 or cfg.start < 0:
            raise UserError(f"n_tasks must be >= 1 and start >= 0, got {cfg.n_tasks} and {cfg.start}")
        tasks = tuple(family.tasks("train", cfg.n_tasks, start=cfg.start))
        sim = Simulator(tasks[0], n_envs=1, seed=cfg.seed)
        spec = PolicySpec(sim.obs_dim, sim.act_dim, hidden=tuple(cfg.hidden or (32, 32)))
        ars, dataset_steps = cfg.ars, None
    ARS(ars)  # a bad ARS setting is a one-line error here
    result = MetaPlan(tasks, spec, ars, _budget(cfg, dataset_steps), cfg.inner_steps, cfg.meta_batch)
    _check_budget(result, f"{cfg.inner_steps} ARS updates of {ARS(ars).steps_per_update} steps")
    return result


def _operator_plan(cfg: MetaLearnConfig) -> MetaPlan:
    """:func:`plan` of ``inner=operator``: the tasks of ``dataset=`` (else the operator's training tasks), whose
    policy spec must be the operator's."""
    if cfg.operator_path is None:
        raise UserError("inner=operator needs operator_path=<checkpoint or shipped operator name>")
    if cfg.ars != ARSConfig():
        raise UserError("ars.* sets ARS inner loops; inner=operator collects on the operator's batch schedule, so "
                        "leave ars.* out")
    _check_sizes(cfg)
    path = resolve_operator(cfg.operator_path)
    op, ckpt = OperatorCheckpoint.load(path)
    BatchSchedule.of(ckpt)  # a warm-up that does not suit the teacher is a one-line error here
    if cfg.dataset is not None:
        tasks, spec, _, dataset_steps = _family_dataset(cfg)
        if spec != ckpt.spec:
            raise UserError(f"operator {cfg.operator_path} improves policies {ckpt.spec.to_dict()}, but dataset "
                            f"{cfg.dataset} holds policies {spec.to_dict()}; give the operator's own dataset")
    else:
        if not ckpt.tasks:
            raise UserError(f"operator {cfg.operator_path} records no training tasks; give dataset=<dir> for them")
        tasks, spec, dataset_steps = tuple(named_tasks(ckpt.tasks)), ckpt.spec, None
        if tasks[0].family != cfg.task.family:
            raise UserError(f"operator {cfg.operator_path} was trained on {tasks[0].family} tasks, not "
                            f"{cfg.task.family}")
        if cfg.hidden is not None and tuple(cfg.hidden) != spec.hidden:
            raise UserError(f"hidden={list(cfg.hidden)} but operator {cfg.operator_path} improves policies with "
                            f"hidden {list(spec.hidden)}; leave hidden= out")
    ckpt.check_task(tasks[0])
    result = MetaPlan(tasks, spec, None, _budget(cfg, dataset_steps), cfg.inner_steps, cfg.meta_batch,
                      InnerOperator(op, ckpt, sha256_file(path)))
    _check_budget(result, f"{cfg.inner_steps} operator applications on its batch schedule")
    return result


def _check_sizes(cfg: MetaLearnConfig) -> None:
    """Refuse inner loop, meta-batch, step-size and hidden settings out of range."""
    if cfg.inner_steps < 1 or cfg.meta_batch < 1:
        raise UserError(f"inner_steps and meta_batch must be >= 1, got {cfg.inner_steps} and {cfg.meta_batch}")
    if not all(math.isfinite(x) and x >= 0 for x in (cfg.outer_lr, cfg.outer_lr_final)):
        raise UserError(f"outer_lr and outer_lr_final must be finite and >= 0, got {cfg.outer_lr} and "
                        f"{cfg.outer_lr_final}")
    if cfg.hidden is not None and min(cfg.hidden, default=1) < 1:
        raise UserError(f"hidden sizes must be >= 1, got {cfg.hidden}")


def _family_dataset(cfg: MetaLearnConfig) -> tuple[tuple[Task, ...], PolicySpec, ARSConfig, int]:
    """:func:`_dataset` of ``cfg.dataset``, refused unless it holds runs of ``cfg``'s family and hidden sizes."""
    assert cfg.dataset is not None
    tasks, spec, ars, steps = _dataset(cfg.dataset)
    if tasks[0].family != cfg.task.family:
        raise UserError(f"dataset {cfg.dataset} holds {tasks[0].family} runs, not {cfg.task.family}")
    if cfg.hidden is not None and tuple(cfg.hidden) != spec.hidden:
        raise UserError(f"hidden={list(cfg.hidden)} but dataset {cfg.dataset} holds policies with hidden "
                        f"{list(spec.hidden)}; leave hidden= out")
    return tasks, spec, ars, steps


def _budget(cfg: MetaLearnConfig, dataset_steps: int | None) -> int:
    """The env steps to spend: ``env_steps=``, else the dataset's total."""
    budget = cfg.env_steps if cfg.env_steps is not None else dataset_steps
    if budget is None:
        raise UserError("give env_steps=<n> or dataset=<dir> (whose total env steps are then the budget)")
    return int(budget)


def _check_budget(p: MetaPlan, inner: str) -> None:
    """Refuse a budget of less than one inner loop (``inner``: what one is, in words)."""
    if p.n_inner < 1:
        raise UserError(f"env_steps={p.budget} is less than one inner loop ({inner} = {p.inner_env_steps}); raise "
                        "env_steps or lower inner_steps")


def _dataset(root: str) -> tuple[tuple[Task, ...], PolicySpec, ARSConfig, int]:
    """A dataset's distinct tasks (manifest order), policy spec, ARS (its teacher's, if ARS) and total env steps."""
    entries = load_manifest(root)
    if not entries:
        raise UserError(f"dataset {root} holds no runs yet; finish `metaimprove collect out={root}` first")
    tasks: dict[str, Task] = {}
    steps, spec, teacher = 0, None, None
    for entry in entries:
        tensors, meta = load_shard(root, entry)
        steps += int(tensors["env_steps"][-1])
        spec, teacher = PolicySpec.from_dict(meta["policy_spec"]), meta["teacher"]
        task = shard_task(entry)
        tasks.setdefault(task.name, task)
    assert spec is not None and teacher is not None
    return tuple(tasks.values()), spec, recorded_config(teacher, "ars"), steps


# ------------------------------------------------------------------------------------------ Reptile


class Improver(Protocol):
    """What an inner loop improves θ with (ARS, or :class:`OperatorImprover`): started on a task from a policy, it
    collects a batch with its current policy and updates that policy from it."""

    def start(self, task: Task, policy: Policy, seed: int) -> None:
        """Begin a run on ``task`` from ``policy``, seeded ``seed``."""

    def collect(self) -> Experience:
        """One batch collected by the current policy."""

    def improve(self, experience: Experience) -> Policy:
        """The current policy updated from ``experience`` (which it collected)."""

    @property
    def policy(self) -> Policy:
        """The current policy."""


class OperatorImprover:
    """The operator as an inner loop's improver, exactly as apply's ``operator`` method runs it from the start it is
    given with run seed ``seed``: batches explored as its teacher explores (:class:`Explorer`, on the checkpoint's
    :class:`BatchSchedule`, warm-up included), each followed by θ ← f(θ, τ, ask) for the checkpoint's default ask."""

    def __init__(self, op: ImprovementOperator, ckpt: OperatorCheckpoint) -> None:
        self.op, self.ckpt = op, ckpt
        self.schedule = BatchSchedule.of(ckpt)
        self.ask = ckpt.ask()
        self._explore: Explorer | None = None
        self._update: Callable[[Policy, Experience], Policy] | None = None
        self._policy: Policy | None = None
        self._steps = 0

    def start(self, task: Task, policy: Policy, seed: int) -> None:
        """Begin a run on ``task`` from ``policy``: apply's collectors and subsampling seeds of run ``seed``."""
        self._explore = Explorer(self.ckpt, task, policy, seed, self.schedule)
        self._update = operator_update(self.op, self.ckpt, task, self.ask, torch.Generator().manual_seed(seed))
        self._policy, self._steps = policy, 0

    def collect(self) -> Experience:
        """The next batch on the schedule, explored from the current policy."""
        assert self._explore is not None, "start() first"
        exp = self._explore(self.policy, self._steps)
        self._steps += self.schedule.batch_at(self._steps)
        return exp

    def improve(self, experience: Experience) -> Policy:
        """One application: θ ← f(θ, τ, ask)."""
        assert self._update is not None, "start() first"
        self._policy = self._update(self.policy, experience)
        return self._policy

    @property
    def policy(self) -> Policy:
        """The current policy."""
        assert self._policy is not None, "start() first"
        return self._policy


@dataclass
class InnerRun:
    """One inner loop: where the improver took θ₀ on one task, the env steps it spent and its first and last batch."""

    policy: Policy
    """θ_k with its own (updated) normalizer"""
    env_steps: int
    first_return: float
    last_return: float
    """mean reward per step × episode length of its first and last batch"""


def inner_loop(teacher: Improver, task: Task, start: Policy, k: int, seed: int, seen: ObsNormalizer) -> InnerRun:
    """``k`` updates of ``teacher`` (ARS's, or the operator's applications) from ``start`` on ``task`` (seeded
    ``seed``); every observation collected is also folded into ``seen``, the statistics the outer step's normalizer
    pools."""
    teacher.start(task, start, seed)
    steps, returns = 0, []
    length = get_family(task.family).episode_length
    for _ in range(k):
        exp = teacher.collect()
        steps += exp.n_steps
        returns.append(float(exp.reward.mean()) * length)
        seen.update(exp.obs.numpy())
        teacher.improve(exp)
    return InnerRun(teacher.policy, steps, returns[0], returns[-1])


def reptile_step(start: Policy, adapted: Sequence[Policy], step_size: float, canonical: ObsNormalizer) -> Policy:
    """θ₀ + ε (mean_i θ_k^i − θ₀), every policy first folded into ``canonical`` (which the result carries).

    Folding is linear in θ, so this is Reptile's step on the functions of raw observations the policies compute."""
    spec = start.spec
    base = fold_normalizer(spec, start.theta.double(), start.normalizer, canonical)
    target = torch.stack([fold_normalizer(spec, p.theta.double(), p.normalizer, canonical) for p in adapted]).mean(0)
    return Policy(spec, (base + step_size * (target - base)).float(), canonical.copy())


def step_size(cfg: MetaLearnConfig, t: int, n_outer: int) -> float:
    """ε of outer step ``t`` of ``n_outer``: linear from ``outer_lr`` toward ``outer_lr_final``."""
    done = t / n_outer
    return cfg.outer_lr * (1 - done) + cfg.outer_lr_final * done


def task_order(n_tasks: int, n_inner: int, seed: int) -> list[int]:
    """The task of every inner loop: seeded permutations of the tasks, one after another (each task visited as
    often as any other, up to one)."""
    rng = np.random.default_rng([seed, 7])
    order: list[int] = []
    while len(order) < n_inner:
        order += [int(i) for i in rng.permutation(n_tasks)]
    return order[:n_inner]


# ------------------------------------------------------------------------------------------ the stage


def _settings(cfg: MetaLearnConfig, p: MetaPlan) -> dict[str, Any]:
    """Everything that determines θ₀, as plain JSON (a checkpoint resumes only under the same)."""
    # An ARS run's settings are what they were before inner=operator existed, so its checkpoints still resume.
    if p.operator is not None:
        inner: dict[str, Any] = {"inner": cfg.inner, "operator_path": cfg.operator_path,
                                 "operator_sha256": p.operator.sha256}
    else:
        assert p.ars is not None
        inner = {"ars": dataclasses.asdict(p.ars)}
    settings = {"tasks": [t.name for t in p.tasks], "policy_spec": p.spec.to_dict(), **inner, "budget": p.budget,
                "inner_steps": p.inner_steps, "meta_batch": p.meta_batch,
                "outer_lr": cfg.outer_lr, "outer_lr_final": cfg.outer_lr_final, "seed": cfg.seed}
    return json.loads(json.dumps(settings))


def _save_checkpoint(path: Path, policy: Policy, meta: dict[str, Any]) -> None:
    norm = policy.normalizer
    # The count in float64 (policy files keep float32): a resumed run must continue from the very same bits.
    save_tensors(path, {"theta": policy.theta, "norm_mean": torch.as_tensor(norm.mean),
                        "norm_var": torch.as_tensor(norm.var),
                        "norm_count": torch.tensor([norm.count], dtype=torch.float64)},
                 {"format": CHECKPOINT_FORMAT, **meta})


def _resume(path: Path, spec: PolicySpec, settings: dict[str, Any]) -> tuple[Policy, dict[str, Any]] | None:
    """θ₀ and the progress of the checkpoint at ``path``, if there is one; refuses one of other settings."""
    if not path.exists():
        return None
    tensors, meta = load_tensors(path)
    if meta.get("format") != CHECKPOINT_FORMAT:
        raise UserError(f"{path} is not a metalearn checkpoint; choose another out=")
    if meta.get("settings") != settings:
        old = meta.get("settings") or {}
        changed = sorted(k for k in settings.keys() | old.keys() if settings.get(k) != old.get(k))
        raise UserError(f"{path.parent} holds a meta-training with other settings ({', '.join(changed)}); "
                        "choose another out= or delete it")
    norm = ObsNormalizer(tensors["norm_mean"].numpy().copy(), tensors["norm_var"].numpy().copy(),
                         float(tensors["norm_count"][0]))
    return Policy(spec, tensors["theta"].clone(), norm), meta


def meta_train(cfg: MetaLearnConfig, out: Path | None = None, progress: bool = True,
               resolved: MetaPlan | None = None) -> tuple[Policy, list[dict[str, Any]]]:
    """Reptile from a fresh θ₀ (seeded ``cfg.seed``, identity normalizer); returns θ₀ and one log row per outer
    step. With ``out``, checkpoints there after each outer step and resumes from a checkpoint found there.
    ``resolved``: ``plan(cfg)``, if the caller has it already."""
    p = resolved or plan(cfg)
    settings = _settings(cfg, p)
    ckpt_path = None if out is None else out / CHECKPOINT
    resumed = None if ckpt_path is None else _resume(ckpt_path, p.spec, settings)
    if resumed is None:
        policy = Policy(p.spec, init_params(p.spec, torch.Generator().manual_seed(cfg.seed)),
                        ObsNormalizer.identity(p.spec.obs_dim))
        first, env_steps, log = 0, 0, []
    else:
        policy, meta = resumed
        first, env_steps, log = int(meta["outer_step"]), int(meta["env_steps"]), list(meta["log"])
    order = task_order(len(p.tasks), p.n_inner, cfg.seed)
    teacher = p.improver()
    with tqdm(total=p.n_inner * p.inner_env_steps, initial=env_steps, desc="metalearn", unit="step",
              dynamic_ncols=True, disable=not progress) as bar:
        for t in range(first, p.n_outer):
            bar.set_postfix_str(f"outer step {t + 1}/{p.n_outer}")
            seen = policy.normalizer.copy()
            seen.frozen = False
            runs = []
            for i in range(t * p.meta_batch, min((t + 1) * p.meta_batch, p.n_inner)):
                run = inner_loop(teacher, p.tasks[order[i]], policy, p.inner_steps, seeds.meta_inner(cfg.seed, i), seen)
                runs.append(run)
                env_steps += run.env_steps
                bar.update(run.env_steps)
            eps = step_size(cfg, t, p.n_outer)
            new = reptile_step(policy, [r.policy for r in runs], eps, seen)
            moved = float((new.theta.double() - fold_normalizer(p.spec, policy.theta.double(), policy.normalizer,
                                                                 seen)).norm())
            policy = new
            log.append({"outer_step": t, "env_steps": env_steps, "step_size": eps,
                        "tasks": " ".join(p.tasks[order[i]].name for i in range(t * p.meta_batch,
                                                                               t * p.meta_batch + len(runs))),
                        "first_batch_return": sum(r.first_return for r in runs) / len(runs),
                        "last_batch_return": sum(r.last_return for r in runs) / len(runs), "step_norm": moved})
            if ckpt_path is not None:
                _save_checkpoint(ckpt_path, policy, {"settings": settings, "outer_step": t + 1,
                                                     "env_steps": env_steps, "log": log})
    return policy, log


def metalearn(cfg: MetaLearnConfig) -> Path:
    """The ``metalearn`` stage: :func:`meta_train` into ``cfg.out``; writes θ₀ (``policy.safetensors``) and a
    per-outer-step ``log.csv``."""
    out = Path(cfg.out)
    resolved = plan(cfg)  # refuse bad settings before creating anything
    out.mkdir(parents=True, exist_ok=True)
    policy, log = meta_train(cfg, out, resolved=resolved)
    save_policy(out / META_POLICY, policy)
    atomic_write_csv(out / "log.csv", LOG_FIELDS, log)
    gain = [r["last_batch_return"] - r["first_batch_return"] for r in log]
    inner = "ARS" if resolved.operator is None else "operator"
    print(f"metalearn: {len(log)} Reptile steps, {log[-1]['env_steps']} env steps of {inner} inner loops; mean "
          f"inner-loop gain {gain[0]:.1f} (first step) -> {gain[-1]:.1f} (last); θ₀ in {out / META_POLICY}")
    return out / META_POLICY
