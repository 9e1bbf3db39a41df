"""The ``outcome`` stage: an imitation-trained operator's weights evolved by PGPE (EvoTorch's functional PGPE:
antithetic sampling, centered-rank fitness shaping, ClipUp) on the return it reaches after T applications on training
tasks, relative to its teacher run from the same start (apply's fresh θ⁰, or the operator's learned start), task and
seed for the same env steps.

Why: see the design notes (docs/design.md, "Outcome training").
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import MISSING

from metaimprove import seeds
from metaimprove.errors import UserError
from metaimprove.interop.sb3 import load_any_policy
from metaimprove.loggers import CsvTable, Metrics, check_logger, progress, run_log
from metaimprove.operator.checkpoint import OperatorCheckpoint, learned_start_file, resolve_operator
from metaimprove.operator.features import centered_ranks
from metaimprove.operator.networks import ImprovementOperator
from metaimprove.operator.runtime import BatchSchedule, operator_teacher, operator_update
from metaimprove.sim.envs import initial_states
from metaimprove.sim.policy import ObsNormalizer, Policy
from metaimprove.sim.rollout import Collector, Experience, Simulator, evaluate_many
from metaimprove.sim.tasks import Task, get_family
from metaimprove.storage import differences, exclusive, load_tensors, plain_json, save_tensors, sha256_file
from metaimprove.teachers import ARS

log = logging.getLogger(__name__)

OPERATOR = "operator.safetensors"
"""the evolved operator (the ES's center), in train's checkpoint format, inside the run directory"""
STATE = "es.safetensors"
"""the ES state, generation and history after the last finished generation (with ``es.json``)"""
STATE_FORMAT = "metaimprove-outcome-state"
STATE_VERSION = 1
ROW_FIELDS = ("generation", "env_steps", "center_fitness", "mean_fitness", "best_fitness", "failed", "teacher_gain",
              "stdev", "seconds", "steps_per_second")
"""the columns of ``metrics.csv``, one row per generation"""
# Settings that decide where a run goes, what it reports and when it stops, never what a generation computes: a
# resumed run may change them (a finished run goes on with more generations, to the bits of one run that long).
EXECUTION_SETTINGS = ("out", "logger", "generations")
STARTS = ("fresh", "learned")
"""where every run of a generation starts: apply's fresh θ⁰ for its seed, or the operator's learned start"""
# Recorded in a run's settings with start=learned alone (with the learned start's sha256): a fresh run's settings are
# those of runs made before start= existed, which therefore resume (a key a run lacks reads as None).
START_SETTINGS = ("start", "learned_start")


@dataclass
class OutcomeConfig:
    """Evolve an imitation-trained operator's weights (PGPE) on the returns it reaches, relative to its teacher."""

    operator_path: str = "halfcheetah_vel"
    """the operator to start from: a checkpoint written by `metaimprove train`, or a shipped operator's name"""
    out: str = MISSING
    """run directory: operator.safetensors (the evolved operator), metrics.csv and the resume state"""
    generations: int = 100
    """ES generations (rerun with more into the same out to go on)"""
    popsize: int = 16
    """operators per generation: popsize / 2 antithetic pairs (even, >= 2)"""
    applications: int = 4
    """T: operator applications per run, from the start; the teacher gets the same env steps"""
    start: str = "fresh"
    """θ⁰ of every run (members, center and teacher): fresh (apply's fresh θ⁰ for the run's seed) or learned (the
    operator's learned start, which apply's operator_learned_start deploys it from)"""
    learned_start: str | None = None
    """the learned start θ₀ for start=learned (default: <operator>.start.safetensors beside the checkpoint)"""
    tasks_per_generation: int = 2
    """training tasks (each with its own seed) every member of a generation is run on"""
    evolve: list[str] | None = None
    """the operator's weights to evolve, by parameter-name prefix, e.g. [update.rest,update.es] (default: all)"""
    tasks: list[str] | None = None
    """the training tasks to draw from, by name (default: all the operator's training tasks); never validation ones"""
    eval_episodes: int = 4
    """deterministic evaluation episodes per policy (apply's protocol and seeds)"""
    fitness_floor: float = 1.0
    """the least a task's fitness is divided by: (R_op − R_teacher) / max(|R_teacher − R_start|, fitness_floor)"""
    shaping: str = "ratio"
    """what PGPE ranks the members by: ratio (their fitness, the mean over the generation's tasks of the ratio
    above, in which a task whose teacher gained little weighs more) or task_ranks (the mean over the tasks of each
    member's centered rank among the members on that task: every task weighs the same)"""
    stdev_init: float = 0.005
    """the search distribution's initial standard deviation, per weight"""
    stdev_lr: float = 0.1
    """PGPE's learning rate of the standard deviation"""
    center_lr: float | None = None
    """ClipUp's step size of the center (default: the initial stdev vector's norm / 30, PGPE's rule of thumb); its
    speed is capped at twice this"""
    ask_k: int | None = None
    """the jump k the operator is asked for (default: the checkpoint's, as apply)"""
    seed: int = 0
    """seeds the tasks, runs and perturbations of every generation"""
    logger: str = "csv"
    """where the metrics go besides metrics.csv: csv (nowhere more), tensorboard or wandb"""


# ------------------------------------------------------------------------------------------ population runs


class SharedStarts(Simulator):
    """``copies`` × ``width`` simulations of one task stepped together, in which every copy's env ``e`` starts each
    batch from the same state: the state a ``width``-env simulator seeded ``seed`` would start its env ``e`` from.

    So each copy collects what its own collector would (while no episode ends inside a batch), and policies that run
    side by side differ only by their parameters (common random numbers)."""

    def __init__(self, task: Task, width: int, copies: int, seed: int) -> None:
        super().__init__(task, width * copies, seed)
        self.width, self.copies = width, copies
        self._starts = np.random.default_rng(seed)

    def reset(self, ids: np.ndarray | None = None) -> np.ndarray:
        """Reset ``ids`` (default all: a batch's start, one draw shared by every copy); returns every observation."""
        obs = super().reset(ids)
        if ids is not None:
            return obs
        qpos, qvel = initial_states(self.rules.robot, self.model, self._starts, self.width)
        self.set_state(np.tile(qpos, (self.copies, 1)), np.tile(qvel, (self.copies, 1)))
        return self.observation()


class PopulationExplorer:
    """Collects, in one batch, ARS's antithetic perturbations of several policies on one task: every policy runs the
    same directions (drawn as the ARS of ``width`` envs seeded ``seed`` draws them) from the same initial states
    (:class:`SharedStarts`), so each policy's batch is the one its own ``Explorer`` (``operator.runtime``) would
    collect with that seed, and they all come from one batched simulation."""

    def __init__(self, teacher: ARS, task: Task, copies: int, seed: int) -> None:
        width, self.n_steps = teacher.batch_shape
        self.width, self.copies = width, copies
        self.noise_std = teacher.config.noise_std
        self.collector = Collector(task, width * copies, seed)
        self.collector.sim = SharedStarts(task, width, copies, seed)
        self._gen = torch.Generator().manual_seed(seed)

    def __call__(self, policies: Sequence[Policy]) -> list[Experience]:
        """Each policy's batch (``len(policies)`` must be ``copies``)."""
        spec = policies[0].spec
        n_perturbed = spec.layout()[-1][2]  # every weight and bias; log_std is not perturbed (as ARS)
        step = torch.zeros(self.width // 2, spec.n_params)
        step[:, :n_perturbed] = self.noise_std * torch.randn(self.width // 2, n_perturbed, generator=self._gen)
        perturbation = torch.cat([step, -step])
        # Each policy's log-probabilities are its own (_envs), not those of the perturbed θs that collected.
        exp = self.collector.collect(side_by_side(policies, perturbation), self.n_steps, deterministic=True,
                                     log_probs=False)
        return [_envs(exp, c * self.width, self.width, policy, perturbation) for c, policy in enumerate(policies)]


def side_by_side(policies: Sequence[Policy], offsets: torch.Tensor) -> Policy:
    """One batch of θs ``[len(policies) × len(offsets), P]`` for a collector: env e of copy c runs θ_c + offsets[e]
    normalized by policy c's own statistics (a normalizer of per-env rows)."""
    n = len(offsets)
    norms = [p.normalizer for p in policies]
    return Policy(policies[0].spec, torch.cat([p.theta + offsets for p in policies]),
                  ObsNormalizer(np.repeat(np.stack([m.mean for m in norms]), n, axis=0),
                                np.repeat(np.stack([m.var for m in norms]), n, axis=0)))


def _envs(exp: Experience, first: int, n: int, policy: Policy, perturbation: torch.Tensor) -> Experience:
    """Envs ``first .. first + n - 1`` of ``exp`` as the batch ``policy`` explored with ``perturbation``
    (log-probabilities under ``policy``, as ARS records them)."""
    envs = slice(first, first + n)
    keep = (exp.trunc_index[:, 1] >= first) & (exp.trunc_index[:, 1] < first + n)
    trunc_index = exp.trunc_index[keep].clone()
    trunc_index[:, 1] -= first
    obs, action = exp.obs[:, envs].contiguous(), exp.action[:, envs].contiguous()
    return Experience(obs=obs, action=action, log_prob=policy.log_prob(obs, action),
                      reward=exp.reward[:, envs].contiguous(), terminated=exp.terminated[:, envs].contiguous(),
                      truncated=exp.truncated[:, envs].contiguous(), trunc_obs=exp.trunc_obs[keep],
                      trunc_index=trunc_index, episode_returns=torch.zeros(0), n_unstable=0,
                      perturbation=perturbation)


@dataclass(frozen=True)
class TaskOutcome:
    """Where one (task, seed) run took every operator and the teacher, from the same start."""

    task: str
    seed: int
    start_return: float
    """R_start: the start policy's return"""
    teacher_return: float
    """R_teacher: the return of the teacher's policy after the operators' env steps"""
    returns: tuple[float, ...]
    """R_op of each operator after T applications (-inf: it produced non-finite parameters)"""
    env_steps: int
    """env steps this run simulated: every batch and every evaluation episode"""


def task_outcome(ops: Sequence[ImprovementOperator], ckpt: OperatorCheckpoint, task: Task, seed: int, start: Policy,
                 applications: int, ask: torch.Tensor, episodes: int) -> TaskOutcome:
    """Run every operator of ``ops`` and the checkpoint's teacher (on the operator's batch schedule, apply's
    ``teacher_op_batch``) ``applications`` steps from ``start`` on ``task``, all in one batched collection per step,
    and evaluate where they end (apply's protocol, seeds and episodes).

    Each operator takes exactly the steps apply's ``operator`` method takes with run seed ``seed``, and the teacher
    those of ``teacher_op_batch``, while no episode ends inside a batch (HalfCheetah's batches of at most an
    episode)."""
    schedule = BatchSchedule.of(ckpt)
    policies = [start] * (len(ops) + 1)
    updates = [operator_update(op, ckpt, task, ask, torch.Generator().manual_seed(seed)) for op in ops]
    failed = [False] * len(ops)
    steps = simulated = 0
    width, explore, teacher = 0, None, None
    for _ in range(applications):
        if schedule.envs_at(steps) != width:
            # A teacher of the new width restarts from its current policy, as apply's teacher_op_batch does.
            width = schedule.envs_at(steps)
            full = operator_teacher(ckpt)
            teacher = full if width == schedule.n_envs else full.resized(width)
            assert isinstance(teacher, ARS)  # _source refuses other teachers
            teacher.start(task, policies[-1], schedule.seed(seed, width))
            explore = PopulationExplorer(teacher, task, len(policies), schedule.seed(seed, width))
        assert explore is not None and teacher is not None
        batches = explore(policies)
        for i, update in enumerate(updates):
            if not failed[i]:
                try:
                    policies[i] = update(policies[i], batches[i])
                except UserError:  # non-finite parameters: this operator is out of the race
                    failed[i] = True
        policies[-1] = teacher.improve(batches[-1])
        steps += width * schedule.n_steps
        simulated += len(policies) * width * schedule.n_steps
    *returns, teacher_return, start_return = evaluate_many([*policies, start], task, episodes, seeds.evaluation(seed))
    simulated += (len(policies) + 1) * episodes * get_family(task.family).episode_length
    return TaskOutcome(task.name, seed, start_return, teacher_return,
                       tuple(-math.inf if fail else r for r, fail in zip(returns, failed, strict=True)), simulated)


SHAPINGS = ("ratio", "task_ranks")
"""the values of ``shaping``"""


def task_ranks(outcomes: Sequence[TaskOutcome], members: int) -> torch.Tensor:
    """Each of the first ``members`` operators' mean over the runs of its centered rank ([-0.5, 0.5], ties sharing
    their mean rank) by R_op among those members on that run ``[members]`` (a failed operator, R_op = −inf, ranks
    last)."""
    return torch.stack([centered_ranks(torch.tensor(o.returns[:members], dtype=torch.float64))
                        for o in outcomes]).mean(0)


def fitness(outcomes: Sequence[TaskOutcome], floor: float) -> torch.Tensor:
    """Each operator's fitness ``[n_ops]``: over the runs, the mean of (R_op − R_teacher) / max(|R_teacher − R_start|,
    ``floor``). 0: as good as the teacher; −1: where the teacher started (when the teacher gained); +1: twice the
    teacher's gain."""
    per_task = [(torch.tensor(o.returns, dtype=torch.float64) - o.teacher_return)
                / max(abs(o.teacher_return - o.start_return), floor) for o in outcomes]
    return torch.stack(per_task).mean(0)


# ------------------------------------------------------------------------------------------ the ES


def functional_es() -> Any:
    """EvoTorch's functional algorithms (``pgpe``, ``pgpe_ask``, ``pgpe_tell``), imported on first use: evotorch
    imports ray, seconds no other stage should pay. Its logger is off while it loads, or its console setup would warn
    that the CLI's logging came first."""
    evotorch_log = logging.getLogger("evotorch")
    disabled, evotorch_log.disabled = evotorch_log.disabled, True
    try:
        import evotorch.algorithms.functional as functional
    finally:
        evotorch_log.disabled = disabled
    return functional


def _pgpe(cfg: OutcomeConfig, center: torch.Tensor) -> Any:
    """PGPE's initial state around ``center``."""
    lr = cfg.center_lr if cfg.center_lr is not None else cfg.stdev_init * math.sqrt(center.numel()) / 30
    return functional_es().pgpe(center_init=center, center_learning_rate=lr, stdev_learning_rate=cfg.stdev_lr,
                stdev_init=cfg.stdev_init, objective_sense="max", ranking_method="centered", optimizer="clipup",
                symmetric=True)


def _state_tensors(state: Any) -> dict[str, torch.Tensor]:
    """What of PGPE's state changes between generations (the rest follows from the settings)."""
    return {"center": state.optimizer_state.center, "velocity": state.optimizer_state.velocity,
            "stdev": state.stdev}


def _with_tensors(state: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """``state`` with :func:`_state_tensors` replaced by ``tensors``."""
    optimizer = state.optimizer_state._replace(center=tensors["center"], velocity=tensors["velocity"])
    return state._replace(optimizer_state=optimizer, stdev=tensors["stdev"])


def generation_plan(tasks: Sequence[Task], n: int, seed: int, generation: int) -> tuple[list[tuple[Task, int]], int]:
    """Generation ``generation``'s runs, ``n`` distinct tasks each with its run seed, and the seed of its
    perturbations: a function of (seed, generation) alone, so a resumed run draws what an uninterrupted one does."""
    rng = np.random.default_rng(seeds.outcome_generation(seed, generation))
    picks = rng.choice(len(tasks), size=min(n, len(tasks)), replace=False)
    run_seeds = rng.integers(0, 2**31 - 1, size=len(picks))
    return [(tasks[int(i)], int(s)) for i, s in zip(picks, run_seeds, strict=True)], int(rng.integers(2**62))


def _training_tasks(cfg: OutcomeConfig, ckpt: OperatorCheckpoint) -> list[Task]:
    """The tasks to draw from: ``cfg.tasks`` (each one of the operator's training tasks) or all of those."""
    if not ckpt.tasks:
        raise UserError(f"operator {cfg.operator_path} records no training tasks; outcome training draws from "
                        "those alone (never validation or test tasks)")
    names = ckpt.tasks if cfg.tasks is None else list(cfg.tasks)
    foreign = [name for name in names if name not in ckpt.tasks]
    if foreign or not names:
        raise UserError(f"tasks={names}: {foreign[0] if foreign else 'none given'} is not one of the operator's "
                        f"{len(ckpt.tasks)} training tasks (validation and test tasks are never trained on); "
                        "leave tasks= out to use them all")
    return named_tasks(names)


def named_tasks(names: Sequence[str]) -> list[Task]:
    """The tasks ``names`` names as a checkpoint records them (``family/split/index``, ``Task.name``)."""
    out = []
    for name in names:
        family, split, index = name.split("/")
        out.append(get_family(family).task(split, int(index)))
    return out


def evolved(op: ImprovementOperator, prefixes: list[str] | None) -> torch.Tensor:
    """Which entries of ``op``'s flat weights (``parameters_to_vector``'s order) the ES evolves: those of the
    parameters whose names start with one of ``prefixes`` (None: all); a one-line UserError for a prefix that names
    none."""
    named = list(op.named_parameters())
    unknown = [x for x in prefixes or [] if not any(name.startswith(x) for name, _ in named)]
    if unknown or prefixes == []:
        modules = sorted({name.rsplit(".", 1)[0] for name, _ in named})
        raise UserError(f"evolve={prefixes}: {unknown[0] if unknown else 'no prefix'} names none of the operator's "
                        f"weights ({', '.join(modules)}); leave evolve= out to evolve them all")
    return torch.cat([torch.full((p.numel(),), prefixes is None or any(name.startswith(x) for x in prefixes))
                      for name, p in named])


def _check(cfg: OutcomeConfig) -> None:
    if cfg.start not in STARTS:
        raise UserError(f"start={cfg.start}: must be one of {', '.join(STARTS)}")
    if cfg.shaping not in SHAPINGS:
        raise UserError(f"shaping={cfg.shaping}: must be one of {', '.join(SHAPINGS)}")
    if cfg.popsize < 2 or cfg.popsize % 2:
        raise UserError(f"popsize must be even and >= 2 (antithetic pairs), got {cfg.popsize}")
    sizes = {"generations": cfg.generations, "applications": cfg.applications,
             "tasks_per_generation": cfg.tasks_per_generation, "eval_episodes": cfg.eval_episodes}
    bad = [f"{k}={v}" for k, v in sizes.items() if v < 1]
    if bad:
        raise UserError(f"{', '.join(bad)}: must be >= 1")
    rates = {"stdev_init": cfg.stdev_init, "stdev_lr": cfg.stdev_lr, "fitness_floor": cfg.fitness_floor,
             "center_lr": 1.0 if cfg.center_lr is None else cfg.center_lr}
    bad = [f"{k}={v}" for k, v in rates.items() if not (math.isfinite(v) and v > 0)]
    if bad:
        raise UserError(f"{', '.join(bad)}: must be finite and > 0")
    check_logger(cfg.logger)


def _source(cfg: OutcomeConfig) -> tuple[Path, ImprovementOperator, OperatorCheckpoint, dict[str, Any]]:
    """The operator to start from: its file, weights, description and summary."""
    path = resolve_operator(cfg.operator_path)
    op, ckpt = OperatorCheckpoint.load(path)
    if ckpt.teacher.get("name") != "ars":
        raise UserError(f"operator {cfg.operator_path} learned from {ckpt.teacher.get('name')}; outcome training "
                        "runs operators that explore as ARS does (antithetic parameter perturbations)")
    return path, op, ckpt, load_tensors(path)[1].get("summary", {})


def _learned_start(cfg: OutcomeConfig, ckpt: OperatorCheckpoint, tasks: Sequence[Task]
                   ) -> tuple[Policy | None, str | None]:
    """With ``start=learned``, the learned start every run begins from and its file's sha256 (both None with
    ``start=fresh``); a one-line UserError where the file is missing or of another policy spec than the operator's
    on one of ``tasks`` (a shape-agnostic operator's tasks may span robots of other sizes)."""
    if cfg.start == "fresh":
        return None, None
    path = Path(cfg.learned_start) if cfg.learned_start is not None else learned_start_file(cfg.operator_path)
    if not path.is_file():
        raise UserError(f"start=learned needs the operator's learned start, and {path} is missing; make one with "
                        f"`metaimprove metalearn inner=operator operator_path={cfg.operator_path} out=<dir>` and give "
                        "learned_start=<dir>/policy.safetensors")
    policy = load_any_policy(path)
    for task in tasks:
        spec = ckpt.on(task).spec
        if policy.spec != spec:
            raise UserError(f"learned start {path} has policy spec {policy.spec} but the operator improves {spec} "
                            f"on {task.name}; give tasks= of that robot alone, or start=fresh")
    return policy, sha256_file(path)


class _State:
    """``es.safetensors`` + ``es.json`` of an outcome run: PGPE's state, the generation and the history, with the
    settings it runs with (tensors in safetensors, never pickled)."""

    def __init__(self, path: Path, settings: dict[str, Any]) -> None:
        self.path, self.settings = path, settings

    def save(self, state: Any, generation: int, rows: list[dict[str, Any]]) -> None:
        """Write the state after ``generation`` generations (atomically)."""
        history = torch.tensor([[float(row[k]) for k in ROW_FIELDS] for row in rows], dtype=torch.float64)
        save_tensors(self.path, {**_state_tensors(state), "history": history.reshape(-1, len(ROW_FIELDS))},
                     {"format": STATE_FORMAT, "format_version": STATE_VERSION, "settings": self.settings,
                      "generation": generation})

    def load(self, state: Any) -> tuple[Any, int, list[dict[str, Any]]] | None:
        """``state`` with the saved tensors, the generations done and the history (None without a saved state); a
        one-line UserError if it belongs to a run with other settings."""
        if not self.path.exists():
            return None
        tensors, meta = load_tensors(self.path)
        if meta.get("format") != STATE_FORMAT or meta.get("format_version") != STATE_VERSION:
            raise UserError(f"{self.path} is not an outcome state this metaimprove reads; remove it to start over")
        changes = [f"{key}: {old!r} there, {new!r} now" for key, old, new in differences(meta["settings"],
                                                                                        self.settings)]
        if changes:
            raise UserError(f"out={self.path.parent} holds an outcome run with other settings "
                            f"({'; '.join(changes[:4])}); rerun with its settings to resume it, or choose another out=")
        rows = [{k: int(v) if k in ("generation", "env_steps", "failed") else float(v)
                 for k, v in zip(ROW_FIELDS, row.tolist(), strict=True)} for row in tensors["history"]]
        return _with_tensors(state, tensors), int(meta["generation"]), rows


def _finite(values: torch.Tensor) -> torch.Tensor:
    return values[torch.isfinite(values)]


def outcome(cfg: OutcomeConfig) -> Path:
    """The ``outcome`` stage: PGPE over the weights of ``cfg.operator_path`` for ``cfg.generations`` generations;
    writes the center to ``operator.safetensors`` (train's format, so apply reads it) after every generation, with
    ``metrics.csv`` a row per generation, and returns its path.

    Each generation runs every member, the unperturbed center and the teacher on ``tasks_per_generation`` training
    tasks (:func:`task_outcome`), all from apply's fresh θ⁰ for the run's seed or (``start=learned``) from the
    operator's learned start, ranks the members by :func:`fitness` and updates PGPE. The state is saved after every
    generation to ``es.safetensors``, and the same command into the same ``out`` resumes it, to the same bits as a run
    never stopped. Until the run ends, the checkpoint's summary says ``"complete": false``."""
    _check(cfg)
    path, source, ckpt, source_summary = _source(cfg)
    tasks = _training_tasks(cfg, ckpt)
    ask = ckpt.ask(cfg.ask_k)
    BatchSchedule.of(ckpt)  # a warm-up that does not suit the teacher is refused before anything is written
    learned, learned_sha256 = _learned_start(cfg, ckpt, tasks)
    weights = torch.nn.utils.parameters_to_vector(source.parameters()).detach()
    mask = evolved(source, cfg.evolve)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)

    def operator_weights(part: torch.Tensor) -> torch.Tensor:
        """The source's weights with the evolved ones replaced by ``part``."""
        full = weights.clone()
        full[mask] = part
        return full

    recorded = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in EXECUTION_SETTINGS + START_SETTINGS}
    if cfg.shaping == "ratio":
        del recorded["shaping"]  # as states saved before the setting existed record it: they resume
    if learned is not None:
        recorded |= {"start": cfg.start, "learned_start": cfg.learned_start, "learned_start_sha256": learned_sha256}
    settings = plain_json({**recorded, "source_sha256": sha256_file(path)})
    saved = _State(out / STATE, settings)
    es = functional_es()
    with exclusive(out, "outcome"), run_log(out, "outcome"), \
            Metrics(out, cfg.logger, "outcome", plain_json(dataclasses.asdict(cfg))) as metrics:
        state = _pgpe(cfg, weights[mask])
        resumed = saved.load(state)
        state, first, rows = resumed if resumed is not None else (state, 0, [])
        if resumed is not None:
            log.info(f"resuming {out} after generation {first}")
        table = CsvTable(out / "metrics.csv", ROW_FIELDS)
        table.reset(rows)
        ops = [ckpt.new_operator().eval() for _ in range(cfg.popsize + 1)]
        bar = progress(total=cfg.generations, initial=first, desc="outcome", unit="gen")
        clock = time.perf_counter() - (rows[-1]["seconds"] if rows else 0.0)
        env_steps = rows[-1]["env_steps"] if rows else 0
        for generation in range(first, cfg.generations):
            began = time.perf_counter()
            runs, sample_seed = generation_plan(tasks, cfg.tasks_per_generation, cfg.seed, generation)
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(sample_seed)
                members = es.pgpe_ask(state, popsize=cfg.popsize)
            for op, member in zip(ops, [*members, state.optimizer_state.center], strict=True):
                torch.nn.utils.vector_to_parameters(operator_weights(member), op.parameters())
            outcomes = [task_outcome(ops, ckpt, task, seed, learned or ckpt.on(task).fresh_policy(seed),
                                     cfg.applications, ask, cfg.eval_episodes) for task, seed in runs]
            scores = fitness(outcomes, cfg.fitness_floor)
            member_scores = scores[:-1]
            ranked = member_scores if cfg.shaping == "ratio" else task_ranks(outcomes, cfg.popsize)
            state = es.pgpe_tell(state, members, ranked.float())
            simulated = sum(o.env_steps for o in outcomes)
            env_steps += simulated
            finite = _finite(member_scores)
            rows.append({"generation": generation, "env_steps": env_steps, "center_fitness": float(scores[-1]),
                         "mean_fitness": float(finite.mean()) if len(finite) else math.nan,
                         "best_fitness": float(finite.max()) if len(finite) else math.nan,
                         "failed": len(member_scores) - len(finite),
                         "teacher_gain": float(np.mean([o.teacher_return - o.start_return for o in outcomes])),
                         "stdev": float(state.stdev.mean()), "seconds": time.perf_counter() - clock,
                         "steps_per_second": simulated / (time.perf_counter() - began)})
            saved.save(state, generation + 1, rows)
            table.append(rows[-1:])
            metrics.log("outcome", rows[-1], generation)
            _save_operator(out / OPERATOR, ckpt, operator_weights(state.optimizer_state.center), settings,
                           source_summary, rows, complete=False)
            bar.update(1)
            bar.set_postfix_str(f"gen {generation + 1}/{cfg.generations} best {rows[-1]['best_fitness']:.3f} "
                                f"mean {rows[-1]['mean_fitness']:.3f} {rows[-1]['steps_per_second']:.0f} steps/s")
        bar.close()
        _save_operator(out / OPERATOR, ckpt, operator_weights(state.optimizer_state.center), settings,
                       source_summary, rows, complete=True)
        if rows:
            log.info(f"outcome: {len(rows)} generations, {rows[-1]['env_steps']} env steps; center fitness "
                     f"{rows[0]['center_fitness']:.3f} (first) -> {rows[-1]['center_fitness']:.3f} (last); "
                     f"operator in {out / OPERATOR}")
    return out / OPERATOR


def _save_operator(path: Path, ckpt: OperatorCheckpoint, weights: torch.Tensor, settings: dict[str, Any],
                   source_summary: dict[str, Any], rows: list[dict[str, Any]], complete: bool) -> None:
    """Write the operator of ``weights`` (the ES's center) as a checkpoint whose summary records the objective, the
    settings, the source and the history."""
    op = ckpt.new_operator()
    torch.nn.utils.vector_to_parameters(weights, op.parameters())

    def finite(value: float) -> float | None:
        return value if math.isfinite(value) else None

    summary = {"objective": "outcome", "source": settings["operator_path"], "source_summary": source_summary,
               "settings": settings,
               "generations": len(rows), "env_steps": rows[-1]["env_steps"] if rows else 0,
               "center_fitness": [finite(r["center_fitness"]) for r in rows],
               "mean_fitness": [finite(r["mean_fitness"]) for r in rows], "complete": complete}
    ckpt.save(path, op, summary=plain_json(summary))
