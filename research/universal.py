"""Does one shape-agnostic operator trained on five robots serve each of them as well as its own operator, and does it
improve a fresh policy on a gymnasium env that no task family uses?

The universal operator is ``metaimprove train``'s defaults with ``features.agnostic=true`` and
``features.reward_symlog=true`` (:data:`FIT`) on the shipped ARS collections of the five robots of
``research/leave_one_robot_out.py`` (:data:`~leave_one_robot_out.FAMILIES`: one family per robot, each collected as
its shipped operator was, 8 directions × 256 steps; that script's docstring says why HalfCheetah enters as
``halfcheetah_rand_params``). Two questions, each in evaluation v2's terms (per-task normalized scores, 0 the task's
start return and 1 its reference return; 95% CIs resampling tasks, then seeds):

1. **Each training family**: on the family's validation tasks (``train`` tasks after its shipped collection, in no
   collection) × seeds, from fresh starts, for the family's budget B (``common.family_budget``), the universal operator
   and the family's shipped operator (``operator_path=<family>``) run from the same θ⁰ (checked: the same teacher and
   policy sizes, so the same fresh starts) and are scored on the references of ``benchmarks/references.py`` (the best
   of ARS and tuned PPO after 8 B from those starts, shared with ``research/leave_one_robot_out.py``'s). ``verdict``
   is the issue's rule: ``within`` when the universal operator's mean score lies in the per-family operator's CI,
   ``better`` above it, ``worse`` below it; ``paired_verdict`` reads the paired difference's CI instead (``better`` /
   ``worse`` when it excludes 0, else ``tie``).
2. **An unseen env** (default ``Reacher-v5``, obs 10 / act 2; ``--env`` changes it, e.g.
   ``InvertedDoublePendulum-v5``, which chose :data:`FIT`'s reward encoding and so is no longer unseen):
   ``metaimprove apply operator_path=universal env=<id> methods=[operator,ars,sac]`` over :data:`ENV_SEEDS` seeds from
   fresh starts (the operator and ARS from the same θ⁰; SAC's actor fits no θ⁰ of ours and starts from its own
   seeded init, ``evaluation/sac.py``). B is :data:`ENV_APPLICATIONS` batches of the operator's teacher (20 × 4096 =
   81920 env steps): ``apply``'s default, chosen for cost: SAC takes a gradient step per env step, about 12 ms of one
   core here, so a run at B costs about 17 minutes of a core, and its 5 runs most of the stage's hour.
   The env is one task: its CIs resample seeds. Its normalization is the one every family task gets (score 0: the
   mean return of the fresh starts of seeds 0-2; score 1: the best of ARS, the operator's own teacher, and PPO tuned on
   validation after 8 B from those starts), fixed by a rule set before this comparison, so that a score here reads as
   one on the families' tasks and ``--env`` needs no per-env constant (SAC is no reference method: 8 B of it would
   cost hours). The env's raw returns and gymnasium's ``reward_threshold`` for it (−3.75 for the reacher, 9100 for
   the pendulum) stand beside the scores, so a reader can judge the scale.

Stages, each resumable (a rerun reuses what finished: collect, train and apply resume into their directories,
reference runs are appended as they end, the csvs and figures are rewritten from them):

1. with ``--ship`` (or ``--quick``): collect each robot's dataset into ``<work>/collect/<family>``
   (``leave_one_robot_out.collect_robot``; the default work directory is that script's, so the two share their
   collections);
2. with ``--ship`` (or ``--quick``): train the universal operator on all five into ``<work>/universal/operator``; with
   ``--ship``, copy it to ``results/operators/universal.{safetensors,json}`` and the five collections' configs (each
   as ``results/operators/<family>.collect.yaml`` holds one) to ``results/operators/universal.collect.yaml`` under
   ``collections``, so that ``operator_path=universal`` resolves it by name. Without ``--ship`` the stages below
   measure the shipped ``results/operators/universal`` as it is, so that every figure describes the file a user
   gets: a refit matches it bit for bit only on a CPU that runs torch's kernels with the same instruction set as
   the machine that fitted it (``benchmarks/reproduce.py`` says why);
3. per family of ``--families`` (default all five; ``--families`` alone: none, the env's stages only): apply the
   universal and the per-family operator on its validation tasks into
   ``<work>/universal/families/<family>/{universal,per_family}``;
4. the reference runs of those tasks, appended to ``results/references_runs.csv`` (their rows join
   ``results/references.csv``);
5. ``results/universal_families.csv``: per family and budget (1, 2, 4 and 8 of the universal operator's batches and
   B), both operators' mean normalized scores and the paired difference, each with its CI, and the verdicts (a rerun
   for some families keeps the other families' rows); ``results/universal/<family>.{csv,png}``: the curves and their
   normalized plot;
6. unless ``--env`` is given alone: apply the operator, ARS and SAC on the unseen env into
   ``<work>/universal/env/<env>/apply``;
7. its reference runs, as in 4;
8. ``results/universal_unseen_env.csv``: per budget, the three methods' mean normalized scores and gains (a run's
   score less its own start's; the operator and ARS share θ⁰, SAC starts from its own init), the operator's paired
   differences in score with ARS and SAC, each with its CI, ``universal_gain_above_0`` (the gain's CI excludes 0) and
   the mean raw returns; ``results/universal/<env>.{csv,png}``.

A family none of whose reference methods beats its fresh starts on some task has no score scale: it gets one row, at
B, whose verdicts read ``no score scale`` (:data:`UNSCORED`), and the script says so at its end. ``ant_dir`` may be
one: on its test tasks (``results/families.csv``) ARS, PPO and its own operator all end B below the start's return
(an ant standing still earns the healthy reward); its references run 8 B.

``--variant NAME`` measures a candidate refit instead of the shipped operator: stages 1-2 fit the universal operator
with :data:`VARIANTS`' changes for ``NAME`` to :data:`FIT` into ``<work>/universal_<NAME>/operator``, and the stages
below write ``results/universal_<NAME>_families.csv``, ``results/universal_<NAME>_unseen_env.csv`` and
``results/universal_<NAME>/`` (the per-family operator's applies are shared with the shipped operator's
measurement). It ships nothing: a candidate that passes its rule (``docs/design.md``) replaces the shipped operator
by becoming :data:`FIT`, then ``--ship``, as ``symlog`` did. ``--no-sac`` leaves SAC out of the env's stage, which
then takes minutes: SAC's runs do not depend on the operator, and a candidate's rule reads only its own gain.

``--quick`` runs every stage at tiny sizes (``leave_one_robot_out``'s quick collections and fit; one family,
``hopper_rand_params``, unless ``--families`` says otherwise, 1 task × 1 seed at B = one batch of its shipped
operator; 2 seeds on the env at B = 2 of the tiny operator's batches; references over 1 seed; one worker) under
``--work`` (default ``runs/universal_quick``); it writes its reference runs there, its csvs and figures under
``<work>/results`` and, with ``--ship``, the shipped files under ``<work>/operators``, never to ``results/``.

    python research/universal.py [--ship | --variant raw] [--families ...] [--tasks 8] [--seeds 3] \
        [--env Reacher-v5] [--env-seeds 5] [--env-budget STEPS] [--no-sac] [--workers 2] \
        [--work runs/loro]
    python research/universal.py --quick [--ship | --variant raw] [--families hopper_rand_params] [--work DIR]

Cost on 2 cores (the full default), from CPU times measured on the development machine (``leave_one_robot_out.py``'s
docstring gives one hopper B of ARS as 6.7 s of one core and of tuned PPO as 11.6 s; the other families scale by
their step costs, ``results/family_cost.csv``, and budgets; on the pendulum, 32768 env steps of ARS took 2.2 s of one
core, of tuned PPO 3.9 s and SAC 12 ms a step): with ``--ship``, the collections (5.8 M env steps) about 5 minutes
and the fit 10-30 minutes (about 4000 pairs of five robots, ``metaimprove train``'s early stopping); the two
operators on the five families' 8 × 3 validation runs with an evaluation after every batch, about 25 minutes; the
families' references (8 B of ARS and of tuned PPO per task and seed, 5 hours of one core), about 2.5 hours; the env's
apply, about 50 minutes (SAC's 5 runs), and its references, about 3 minutes. About 4 hours in all; about 3 when
``research/leave_one_robot_out.py`` has run first in ``runs/loro`` (the collections and hopper's and walker2d's
references are then done). ``--quick`` took 40 s, and a rerun 15 s, on 2 cores that a benchmark kept busy.
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import sys
import time
from pathlib import Path

import gymnasium
import numpy as np
import yaml

from metaimprove.evaluation.apply import CURVE_FIELDS, apply
from metaimprove.evaluation.plot import plot_curves, read_curves
from metaimprove.evaluation.protocol import ApplyConfig
from metaimprove.evaluation.stats import (
    Curves,
    Interval,
    NoScoreScale,
    deployed_until,
    pair,
    paired_difference,
    score_ci,
    scores_at,
)
from metaimprove.operator.checkpoint import OperatorCheckpoint, resolve_operator
from metaimprove.operator.runtime import BatchSchedule
from metaimprove.sim.envs import AnyTask, UserEnv
from metaimprove.sim.tasks import get_family
from metaimprove.storage import atomic_write_bytes, atomic_write_csv, meta_path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))  # benchmarks/common.py, references.py
import leave_one_robot_out as loro
from common import (
    OPERATORS,
    REFERENCE_RUNS,
    RESULTS,
    ROOT,
    apply_on_validation,
    family_budget,
    interval,
    normalized,
    paired_rows,
    reference_table,
    scored_budgets,
    validation_start,
)
from references import LONG_RUN, TABLE, run_references, write_table

NAME = "universal"
"""the shipped operator's name: ``results/operators/universal.*``, ``operator_path=universal``"""
ENV = "Reacher-v5"
"""the unseen env: a MuJoCo gymnasium env with 1-D Box spaces that no task family uses, and that chose nothing"""
ENV_SEEDS = 5
ENV_APPLICATIONS = 20
"""the unseen env's B in batches of the operator's teacher (``apply``'s default ``applications``)"""
ENV_METHODS = ("operator", "ars", "sac")
LABELS = {"operator": "universal", "ars": "ars", "sac": "sac"}
"""the env csv's name of each method"""
UNSCORED = "no score scale"
"""the verdicts of a family without a score scale (some task's references end below its fresh starts)"""
FIT: dict[str, object] = {"reward_symlog": True}
"""the shipped fit's feature settings beside ``features.agnostic``: rewards read on a log scale, which replaced
rewards read as they are (``universal_raw``) by the rule ``docs/design.md`` set before measuring it"""
VARIANTS: dict[str, dict[str, object]] = {"symlog": {}, "raw": {"reward_symlog": False}}
"""candidate refits (``--variant``): the feature settings each changes in :data:`FIT`; ``symlog`` is the shipped fit
as it was measured as a candidate, ``raw`` the fit that ``universal_raw`` ships"""


def outputs(name: str, results: Path) -> tuple[Path, Path, Path]:
    """Where the measurement of the operator called ``name`` goes under ``results``: the families' csv, the env's csv
    and the folder of curves and plots of both questions (``<family>.{csv,png}`` and ``<env>.{csv,png}``)."""
    return results / f"{name}_families.csv", results / f"{name}_unseen_env.csv", results / name


@dataclasses.dataclass(frozen=True)
class Sizes:
    """What ``--quick`` shrinks, beside ``leave_one_robot_out``'s sizes of the collections, the fit and the families'
    validation runs (their ``budget`` unused: see ``family_batches``)."""

    robots: loro.Sizes
    family_batches: int | None
    """a family's B in batches of its shipped operator; None: the family's budget (``common.family_budget``)"""
    env: str
    """the unseen env's default"""
    env_seeds: int
    env_batches: int
    """the unseen env's B in batches of the universal operator"""


FULL = Sizes(robots=loro.FULL, family_batches=None, env=ENV, env_seeds=ENV_SEEDS, env_batches=ENV_APPLICATIONS)
QUICK = Sizes(robots=loro.QUICK, family_batches=1, env="InvertedDoublePendulum-v5", env_seeds=2, env_batches=2)
"""tiny sizes; the env's B holds SAC's first gradient steps and a tuned PPO batch for its references, and the env is
the pendulum, whose tiny references beat its fresh starts"""
QUICK_FAMILIES = ("hopper_rand_params",)
"""--quick's families: one, whose tiny references beat its starts (``ant_dir``'s fresh starts, standing still for
the healthy reward, return more than 8 tiny B of ARS reach)"""


def ship(operator: Path, datasets: list[Path], where: Path) -> Path:
    """Stage 2's ``--ship``: ``operator`` as ``<where>/universal.{safetensors,json}`` and the configs of ``datasets``
    (its collections, in training order) as ``<where>/universal.collect.yaml``; the shipped checkpoint."""
    where.mkdir(parents=True, exist_ok=True)
    target = where / f"{NAME}.safetensors"
    shutil.copy(operator, target)
    shutil.copy(meta_path(operator), meta_path(target))
    collections = [yaml.safe_load((d / "config.yaml").read_text()) for d in datasets]
    atomic_write_bytes(where / f"{NAME}.collect.yaml", yaml.safe_dump({"collections": collections}).encode())
    print(f"shipped {operator} -> {target} (+ {NAME}.json, {NAME}.collect.yaml)", flush=True)
    return target


def family_budget_of(family: str, universal: Path, sizes: Sizes) -> int:
    """B of ``family``'s comparison; exits unless it is a whole number of batches of both operators."""
    _, own = OperatorCheckpoint.load(OPERATORS / f"{family}.safetensors")
    own_batch = BatchSchedule.of(own).batch
    budget = family_budget(family) if sizes.family_batches is None else sizes.family_batches * own_batch
    _, ckpt = OperatorCheckpoint.load(universal)
    if budget % BatchSchedule.of(ckpt).batch:
        raise SystemExit(f"{family}'s B = {budget} is no whole number of the universal operator's batches")
    return budget


def relabeled(curves: Curves, method: str) -> Curves:
    """``curves`` (of one method) under the name ``method``."""
    return dataclasses.replace(curves, method=np.full(len(curves), method))


def joined(parts: list[Curves]) -> Curves:
    """The rows of ``parts``, in order."""
    return Curves(*(np.concatenate([getattr(p, f.name) for p in parts]) for f in dataclasses.fields(Curves)))


def source() -> str:
    """The command that made a row, for its ``source`` column."""
    return f"research/universal.py {' '.join(sys.argv[1:])}".strip()


def cut(est: Interval, against: Interval) -> str:
    """The issue's rule: ``within`` when ``est``'s value lies in ``against``'s CI, ``better`` above, ``worse`` below."""
    return "better" if est.value > against.hi else "worse" if est.value < against.lo else "within"


def sign(diff: Interval) -> str:
    """``better`` / ``worse`` when a paired difference's CI excludes 0, else ``tie``."""
    return "better" if diff.lo > 0 else "worse" if diff.hi < 0 else "tie"


def write_curves(curves: Curves, scored: Curves, name: str, where: Path, budget: int) -> None:
    """``curves`` (raw returns) as ``<where>/<name>.csv`` and ``scored`` (normalized) as ``<where>/<name>.png``."""
    where.mkdir(parents=True, exist_ok=True)
    safe = name.replace("/", "_")
    rows = [{"method": m, "task": t, "seed": int(s), "env_steps": int(x), "return": float(r), "fallbacks": 0,
             "guard_steps": 0} for m, t, s, x, r in zip(curves.method, curves.task, curves.seed, curves.env_steps,
                                                        curves.returns, strict=True)]
    atomic_write_csv(where / f"{safe}.csv", CURVE_FIELDS, rows)
    plot_curves(scored, where / f"{safe}.png", budget=float(budget), value="normalized score")


def family_rows(family: str, runs: dict[str, Path], universal: Path, budget: int, sizes: Sizes, runs_file: Path,
                figures: Path) -> list[dict[str, object]]:
    """Stage 5's rows of ``family``: per budget, the universal operator's and the per-family operator's scores, their
    paired difference and the verdicts."""
    _, ckpt = OperatorCheckpoint.load(universal)
    batch = float(BatchSchedule.of(ckpt).batch)
    budgets = scored_budgets(batch, budget)
    curves = joined([relabeled(read_curves([path]), label) for label, path in runs.items()])
    scored = normalized(curves, runs_file, sizes.robots.reference_seeds)
    write_curves(curves, scored, family, figures, budget)
    scores = {m: scores_at(deployed_until(scored.where(method=m), budget), budgets) for m in runs}
    n_seeds = len(scored.where(method="universal").runs()[scored.tasks()[0]])
    rows = []
    for row in paired_rows(scores["universal"], "universal", {"per_family": scores["per_family"]}, batch, budget):
        at = float(row["env_steps"])  # type: ignore[arg-type]
        mine, own = score_ci(scores["universal"][at]), score_ci(scores["per_family"][at])
        diff = paired_difference(pair(scores["universal"][at], scores["per_family"][at]))
        rows.append({"family": family, **row, "verdict": cut(mine, own), "paired_verdict": sign(diff),
                     "tasks_x_seeds": f"{len(scored.tasks())} × {n_seeds}", "trained_on": " ".join(ckpt.families),
                     "source": source()})
    return rows


def env_rows(task: UserEnv, curves_file: Path, universal: Path, budget: int, sizes: Sizes, runs_file: Path,
             figures: Path, methods: tuple[str, ...]) -> list[dict[str, object]]:
    """Stage 8's rows: per budget, each of ``methods``' mean normalized score, its gain (a run's score less its own
    start's: the operator and ARS share θ⁰, SAC starts from its own init) and mean raw return, and the operator's
    paired differences in score with the peers."""
    _, ckpt = OperatorCheckpoint.load(universal)
    batch = float(BatchSchedule.of(ckpt).batch)
    budgets = scored_budgets(batch, budget)
    curves = read_curves([curves_file])
    scored = normalized(curves, runs_file, sizes.robots.reference_seeds)
    write_curves(curves, scored, task.name, figures, budget)
    scores = {m: scores_at(deployed_until(scored.where(method=m), budget), [0.0, *budgets]) for m in methods}
    raw = {m: scores_at(deployed_until(curves.where(method=m), budget), budgets) for m in methods}
    scale = reference_table([task.name], sizes.robots.reference_seeds, runs_file)[0]
    threshold = gymnasium.spec(task.env).reward_threshold if ":" not in task.env else None
    peers = {m: scores[m] for m in methods if m != "operator"}
    rows = []
    for row in paired_rows({at: scores["operator"][at] for at in budgets}, "universal", peers, batch, budget):
        at = float(row["env_steps"])  # type: ignore[arg-type]
        gains = {m: score_ci({key: s - scores[m][0.0][key] for key, s in scores[m][at].items()}) for m in methods}
        rows.append({"env": task.name, **row,
                     **{f"{LABELS[m]}_gain": interval(gain) for m, gain in gains.items()},
                     "universal_gain_above_0": gains["operator"].lo > 0,
                     **{f"{LABELS[m]}_return": round(float(np.mean(list(raw[m][at].values()))), 2)
                        for m in methods},
                     "start_return": scale["start"], "reference_return": scale["reference"],
                     "reference_method": scale["reference_method"], "reward_threshold": threshold,
                     "seeds": len(scores["operator"][at]),
                     "source": source()})
    return rows


def references(tasks: list[AnyTask], operator: Path, budget: int, sizes: Sizes, runs_file: Path, table: Path,
               workers: int) -> None:
    """Stages 4 and 7: the long reference runs of ``tasks`` from ``operator``'s fresh starts and their table rows."""
    run_references(tasks, sizes.robots.reference_seeds, LONG_RUN * budget, operator, workers, runs_file)
    write_table([t.name for t in tasks], sizes.robots.reference_seeds, runs_file, table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ship", action="store_true", help="collect, fit and copy the operator and its collections' "
                        "configs to results/operators/universal.* (--quick: to <work>/operators), then measure it; "
                        "without it: measure the shipped one")
    parser.add_argument("--families", nargs="*", choices=loro.FAMILIES, help="the training families to compare the "
                        f"universal and the per-family operator on (default all five; --quick {QUICK_FAMILIES[0]}; "
                        "none: the unseen env only)")
    parser.add_argument("--tasks", type=int, help="validation tasks per family (default 8; --quick 1)")
    parser.add_argument("--seeds", type=int, help="seeds per validation task (default 3; --quick 1)")
    parser.add_argument("--env", nargs="?", const="", help=f"the unseen gymnasium env (1-D Box spaces; default "
                        f"{ENV}, --quick {QUICK.env}; --env alone: none, the families' stages only)")
    parser.add_argument("--sac", action=argparse.BooleanOptionalAction, default=True, help="run SAC on the env "
                        "beside the operator and ARS (default; --no-sac: the two, which --variant's rule needs)")
    parser.add_argument("--variant", choices=sorted(VARIANTS), help="fit the universal operator with this variant's "
                        "feature settings added (VARIANTS) and measure it as universal_<variant>, beside the shipped "
                        "one; it ships nothing")
    parser.add_argument("--env-seeds", type=int, help=f"seeds on the env (default {ENV_SEEDS}; --quick 2)")
    parser.add_argument("--env-budget", type=int, help=f"B on the env in env steps (default {ENV_APPLICATIONS} "
                        f"batches of the operator; --quick {QUICK.env_batches})")
    parser.add_argument("--workers", type=int, help="parallel processes (default 2; --quick: 1, which starts none "
                        "for apply and the references)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes end to end; everything, the csvs and shipped "
                        "files too, goes under --work, nothing to results/")
    parser.add_argument("--work", type=Path, help="where the stages' outputs go (default runs/loro, shared with "
                        "research/leave_one_robot_out.py; --quick: runs/universal_quick)")
    args = parser.parse_args()
    if args.variant and args.ship:
        parser.error("--variant measures a candidate and ships nothing; to ship it, make its settings the fit's own")
    work = args.work or ROOT / "runs" / ("universal_quick" if args.quick else "loro")
    sizes = QUICK if args.quick else FULL
    robots = dataclasses.replace(sizes.robots, tasks=args.tasks or sizes.robots.tasks,
                                 seeds=args.seeds or sizes.robots.seeds, where=work if args.quick else None)
    sizes = dataclasses.replace(sizes, robots=robots, env_seeds=args.env_seeds or sizes.env_seeds)
    workers = args.workers or (1 if args.quick else 2)
    name = NAME if args.variant is None else f"{NAME}_{args.variant}"
    families_out, env_out, figures = outputs(name, work / "results" if args.quick else RESULTS)
    runs_file, table = (work / REFERENCE_RUNS.name, work / TABLE.name) if args.quick else (REFERENCE_RUNS, TABLE)
    env_methods = ENV_METHODS if args.sac else tuple(m for m in ENV_METHODS if m != "sac")
    began = time.perf_counter()

    def stage(text: str) -> None:
        print(f"{text} ({(time.perf_counter() - began) / 60:.1f} minutes in)", flush=True)

    if args.ship or args.quick or args.variant:
        stage(f"[1/8] collect: {', '.join(loro.FAMILIES)}")
        datasets = [loro.collect_robot(f, work / "collect" / f, robots, workers) for f in loro.FAMILIES]
        stage("[2/8] train")
        fit = dataclasses.replace(robots, train=robots.train | {
            "features": robots.train.get("features", {}) | FIT | VARIANTS.get(args.variant or "", {})})
        universal = loro.train_heldout("none", datasets, work / name / "operator", fit)
    else:
        universal = resolve_operator(NAME)
        stage(f"[1-2/8] the shipped operator: {universal}")
    if not args.quick:
        for family in loro.FAMILIES:
            loro.check_own_teacher(universal, family)
    if args.ship:
        shipped = ship(universal, datasets, work / "operators" if args.quick else OPERATORS)
        if not args.quick and resolve_operator(NAME) != shipped:
            raise SystemExit(f"operator_path={NAME} resolves to {resolve_operator(NAME)}, not {shipped}")

    _, ckpt = OperatorCheckpoint.load(universal)
    unscored: list[str] = []
    default = QUICK_FAMILIES if args.quick else loro.FAMILIES
    for family in default if args.families is None else args.families:
        budget = family_budget_of(family, universal, sizes)
        stage(f"[3/8] apply on {family}: universal and per-family, {robots.tasks} validation tasks × {robots.seeds} "
              f"seeds, B = {budget}")
        runs = {label: apply_on_validation(operator, work / owner / "families" / family / label, family,
                                           ("operator",), robots.tasks, robots.seeds, budget, workers)
                for label, operator, owner in (("universal", universal, name),
                                               ("per_family", OPERATORS / f"{family}.safetensors", NAME))}
        stage(f"[4/8] references of {family}'s validation tasks -> {runs_file}")
        tasks = get_family(family).tasks("train", robots.tasks, start=validation_start(family))
        references(tasks, OPERATORS / f"{family}.safetensors", budget, sizes, runs_file, table, workers)
        try:
            rows = family_rows(family, runs, universal, budget, sizes, runs_file, figures)
        except NoScoreScale as exc:
            unscored.append(family)
            print(f"{family} not scored: {exc}", flush=True)
            rows = [{"family": family, "budget": "B", "env_steps": budget, "verdict": UNSCORED,
                     "paired_verdict": UNSCORED, "trained_on": " ".join(ckpt.families), "source": source()}]
        loro.write_rows(families_out, rows, "family")
        for row in rows:
            print(", ".join(f"{k}: {v}" for k, v in row.items() if k != "source"))
        stage(f"[5/8] {family}: {len(rows)} rows -> {families_out}")

    env_id = sizes.env if args.env is None else args.env
    if env_id:
        env = UserEnv.resolve(env_id)
        batch = BatchSchedule.of(ckpt).batch
        budget = args.env_budget or sizes.env_batches * batch
        stage(f"[6/8] apply on {env.name}: {', '.join(env_methods)}, {sizes.env_seeds} seeds, B = {budget}")
        out = work / name / "env" / env.name.replace("/", "_") / "apply"
        curves = apply(ApplyConfig(operator_path=str(universal), out=str(out), env=env_id, seeds=sizes.env_seeds,
                                   budget=budget, methods=list(env_methods), workers=workers))
        stage(f"[7/8] references of {env.name} -> {runs_file}")
        references([env], universal, budget, sizes, runs_file, table, workers)
        env_table = env_rows(env, curves, universal, budget, sizes, runs_file, figures, env_methods)
        loro.write_rows(env_out, env_table, "env")
        for row in env_table:
            print(", ".join(f"{k}: {v}" for k, v in row.items() if k != "source"))
        stage(f"[8/8] {len(env_table)} rows -> {env_out}")
    if unscored:
        print(f"families without a score scale, each one {UNSCORED!r} row in {families_out}: {', '.join(unscored)}")


if __name__ == "__main__":
    main()
