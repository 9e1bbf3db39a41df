"""Evaluation v2: the shipped operator against the peers a user would pick, per-task normalized and paired, on
validation tasks; ``--final`` alone reads the test and ood splits.

Runs ``metaimprove apply`` on ``halfcheetah_vel`` from fresh starts with every method of :data:`METHODS`, one apply
run per method and task set (a *chunk*, kept under ``--work`` as it ends, so an interrupted run resumes where it
stopped). Each return is normalized per task (0: the task's start return, 1: its reference return, from
``results/references_runs.csv``, ``benchmarks/references.py``). Per method: the mean normalized score at 1, 2, 4 and
8 batches, at B and at 4B, with 95% CIs from a bootstrap that resamples tasks, then seeds. The operator and the best
peer run to 4B; SAC (a gradient step per env step) runs to B on the first :data:`SUBSET` tasks × seeds only, and is
paired only there. The best peer is the peer with the highest mean score at B on validation, each over its own
runs. Against it: the operator's paired difference at B and at 4B, its probability of improvement, and
``steps_to_best_peer`` (env steps the operator needs to reach the best peer's mean score at B, over B). Of the ways
of deploying the operator (fresh, guarded, from its learned start), validation chooses the best at B the same way;
its score after 2 batches is ``few_shot_2_<set>``. Raw returns at B per task are reported too.

Task sets: ``validation`` (``train`` tasks from :data:`VALIDATION_START` on, outside every collection), ``test``
and ``ood``. Writes ``results/improvement_<set>.csv`` (every curve), ``.md`` (tables), ``_figures.csv``
(``name,value``) and ``.png`` (normalized curves), and prints the figures as ``name: value`` lines.

``--final`` runs ``test`` and ``ood`` against the best peer validation chose. Before anything runs it refuses a
working tree with changes (other than to the ledger) and a reference table lacking any of its tasks; then it appends
a row (date, commit, settings hash, methods) to ``results/test_ledger.csv``. A rerun at the same commit with the
same settings resumes that read and appends nothing. ``--render`` reruns nothing: it recomputes every set's
figures from the committed curves and prints ``test_ledger_reads``. ``--quick`` (2 validation tasks × 2 seeds, B / 4,
the methods that need nothing beyond the package's shipped files) works on a fresh clone and leaves results/ alone.

``--variants NAME=CHECKPOINT ...`` adds other operators (an ablation's, chosen and compared on validation first),
each run like ``operator`` from the same fresh starts to B, into ``improvement_<set>_variants.csv``; each set's
figures then give each variant's score, its paired difference with the shipped operator and with the best peer, and,
for variants named ``tasks_<N>``, ``scaling_<most>_vs_<fewest>_<set>``. Under ``--final`` the ledger row names each
variant with its file's hash, so the test split's read of an ablation is recorded like any other.

    python benchmarks/improvement.py [--tasks 8] [--seeds 3] [--methods operator ars ...] [--workers 2]
    python benchmarks/improvement.py --final [--tasks 16] [--variants tasks_16=DIR/operator.safetensors ...]
    python benchmarks/improvement.py --render | --quick

The peers that start from training checkpoints (``nearest_ars``, ``transferred_ars``) need the operator's training
collection, which is not in git; recreate it (2.2 minutes on 2 cores) with::

    metaimprove collect teacher=ars teacher.n_directions=32 teacher.top_b=16 teacher.n_steps=64 teacher.lr=0.03 \
        task=halfcheetah_vel n_tasks=32 seeds=1 iterations=48 workers=2 out=runs/ars32d64s_x48
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import datetime
import hashlib
import json
import math
import re
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
from common import BUDGET, DATASET, OPERATORS, REFERENCE_SEEDS, RESULTS, ROOT, dataset_or_exit, reference_table

from metaimprove.errors import UserError
from metaimprove.evaluation.apply import CURVE_FIELDS, apply
from metaimprove.evaluation.methods import METHODS as REGISTRY
from metaimprove.evaluation.plot import plot_curves, read_curves
from metaimprove.evaluation.protocol import ApplyConfig
from metaimprove.evaluation.stats import (
    PAIR_ON_INTERSECTION,
    Curves,
    Interval,
    TaskScale,
    deployed_until,
    normalize_curves,
    pair,
    paired_difference,
    probability_of_improvement,
    report_budgets,
    score_ci,
    scores_at,
    steps_to_best_peer,
)
from metaimprove.operator.checkpoint import OperatorCheckpoint
from metaimprove.operator.runtime import BatchSchedule
from metaimprove.sim.tasks import TaskConfig, get_family
from metaimprove.storage import atomic_write_csv, sha256_file

FAMILY = "halfcheetah_vel"
VALIDATION_START = 32
"""the first validation task: the shipped operator's collection holds train tasks 0-31"""
OPERATOR = "operator"
LEARNED_START = "operator_learned_start"
"""the operator applied from its learned start (``results/operators/<family>.start.safetensors``) instead of a fresh
one"""
NOT_PEERS = (OPERATOR, "operator_guarded", LEARNED_START, "no_update")
"""the methods that are not peers: the operator itself, behind its guard, from the learned start, and the floor"""
METHODS = ["operator", "operator_guarded", LEARNED_START, "ars", "teacher_op_batch", "ppo", "ppo_tuned", "sac",
           "nearest_ars", "transferred_ars", "dr_ars", "meta_ars", "nearest", "transferred", "dr", "meta", "no_update"]
"""every method a run compares: the operator, each peer of evaluation v2, the zero-shot starts they fine-tune, the
floor"""
QUICK_METHODS = ["operator", "ars", "teacher_op_batch", "ppo_tuned", "dr_ars", "no_update"]
"""``--quick``'s methods: those that need no collection and no SB3 run"""
LONG_RUN = 4
"""the operator and the best peer run to LONG_RUN × B"""
SUBSET = {"validation": (8, 1), "test": (8, 2), "ood": (8, 2)}
"""SAC's tasks × seeds per set (the first ones): it runs up to B there only. On validation, where it only has to be
compared, one seed of every task; on test and ood, where the operator is paired with it, two."""
SETS = {"validation": ("train", VALIDATION_START), "test": ("test", 0), "ood": ("ood", 0)}
"""each set of tasks: its split and its first task"""
DR_POLICY = OPERATORS / f"{FAMILY}.dr.safetensors"
META_POLICY = OPERATORS / f"{FAMILY}.meta.safetensors"
LEARNED_POLICY = OPERATORS / f"{FAMILY}.start.safetensors"
LEDGER = RESULTS / "test_ledger.csv"
LEDGER_FIELDS = ["date", "commit", "config_sha256", "methods", "tasks", "seeds", "budget"]
CHUNK_FIELDS = ["method", "budget", "tasks", "seeds", "commit", "minutes", "note"]
"""a chunk's record; ``minutes`` is blank and ``note`` says where it came from for a chunk made from an earlier
script's committed curves"""


@dataclasses.dataclass(frozen=True)
class Chunk:
    """One apply run: one method on the first ``n_tasks`` tasks × ``seeds`` seeds of a task set, up to ``budget``."""

    name: str
    """the task set"""
    method: str
    budget: int
    """env steps per run"""
    n_tasks: int
    seeds: int
    operator: Path | None = None
    """a variant's operator checkpoint (``--variants``), applied as ``operator``; None: the shipped operator"""

    def path(self, work: Path) -> Path:
        """Where the chunk's curves and record are kept once it has ended (a variant's: named by its file's hash too,
        so that another file under the same name is another chunk)."""
        tag = "" if self.operator is None else f"-{sha256_file(self.operator)[:12]}"
        return work / self.name / f"{self.method}{tag}-{self.budget}-{self.n_tasks}x{self.seeds}"

    @property
    def applies(self) -> str:
        """The apply method the chunk runs: a variant runs ``operator`` with its own checkpoint."""
        return self.method if self.operator is None else OPERATOR


def outputs(name: str, where: Path = RESULTS) -> tuple[Path, Path, Path, Path]:
    """The curves, summary, figures and plot of task set ``name``."""
    stem = where / f"improvement_{name}"
    return stem.with_suffix(".csv"), stem.with_suffix(".md"), Path(f"{stem}_figures.csv"), stem.with_suffix(".png")


def variants_csv(name: str, where: Path = RESULTS) -> Path:
    """The curves of task set ``name``'s ``--variants`` runs (each variant's name as its method)."""
    return where / f"improvement_{name}_variants.csv"


def task_names(name: str, n_tasks: int) -> list[str]:
    """The first ``n_tasks`` tasks of set ``name``."""
    split, start = SETS[name]
    return [t.name for t in get_family(FAMILY).tasks(split, n_tasks, start=start)]


def variant_chunks(name: str, args: argparse.Namespace) -> list[Chunk]:
    """The chunks of task set ``name`` of each ``--variants`` operator: fresh starts to B, as ``operator`` runs."""
    return [Chunk(name, variant, args.budget, args.tasks, args.seeds, path) for variant, path in args.variants.items()]


def plan(name: str, methods: list[str], args: argparse.Namespace, long: set[str]) -> list[Chunk]:
    """The chunks of task set ``name``: SAC on its subset to B, the methods in ``long`` to 4B, the rest to B."""
    chunks = []
    for method in methods:
        if method == "sac":
            tasks, seeds = SUBSET[name]
            chunks.append(Chunk(name, method, args.budget, min(tasks, args.tasks), min(seeds, args.seeds)))
        else:
            budget = LONG_RUN * args.budget if method in long else args.budget
            chunks.append(Chunk(name, method, budget, args.tasks, args.seeds))
    return chunks


def apply_config(chunk: Chunk, args: argparse.Namespace, out: Path) -> ApplyConfig:
    """The apply settings of ``chunk``; the files a method needs are passed only to the methods that need them."""
    split, start = SETS[chunk.name]
    needs = REGISTRY[chunk.applies].needs
    operator = OPERATORS / f"{FAMILY}.safetensors" if chunk.operator is None else chunk.operator
    return ApplyConfig(operator_path=str(operator), out=str(out), task=TaskConfig(FAMILY),
                       split=split, task_start=start, n_tasks=chunk.n_tasks, seeds=chunk.seeds, budget=chunk.budget,
                       methods=[chunk.applies], workers=args.workers,
                       dataset=str(args.dataset) if "dataset" in needs else None,
                       dr_policy=str(DR_POLICY) if "dr_policy" in needs else None,
                       meta_policy=str(META_POLICY) if "meta_policy" in needs else None)


def check(chunks: list[Chunk], args: argparse.Namespace, ckpt: OperatorCheckpoint) -> None:
    """Before anything runs: every chunk's method can pay for one of its steps, and its files exist."""
    for chunk in chunks:
        method = REGISTRY[chunk.applies]
        if "dataset" in method.needs:
            dataset_or_exit(Path(args.dataset))
        for need, path in (("dr_policy", DR_POLICY), ("meta_policy", META_POLICY), ("learned_start", LEARNED_POLICY)):
            if need in method.needs and not path.exists():
                raise SystemExit(f"{chunk.method} needs {path.relative_to(ROOT)}, which is missing: see "
                                 "docs/evaluation.md for the command that makes it")
        if method.check_budget is not None:
            own = ckpt if chunk.operator is None else OperatorCheckpoint.load(chunk.operator)[1]
            try:
                method.check_budget(apply_config(chunk, args, Path()), own, chunk.budget, FAMILY)
            except UserError as err:
                raise SystemExit(f"{chunk.method}: {err}") from None


def head_commit() -> str:
    """The commit the code runs at."""
    return subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                          check=True).stdout.strip()


def run_chunk(chunk: Chunk, args: argparse.Namespace) -> Path:
    """Run ``chunk`` unless it has ended before; returns its directory (``curves.csv`` and ``chunk.json``)."""
    done = chunk.path(args.work)
    if (done / "chunk.json").exists():
        return done
    # apply keeps each finished run in its out and reuses it on a rerun with the same settings and files, so an
    # interrupted chunk resumes run by run.
    partial = done.with_name(done.name + ".partial")
    resumed = (partial / "runs").is_dir()
    print(f"{chunk.name}: {chunk.method} on {chunk.n_tasks} tasks × {chunk.seeds} seeds, {chunk.budget} env steps",
          flush=True)
    began = time.perf_counter()
    apply(apply_config(chunk, args, partial))
    notes = ([f"operator {chunk.operator} (sha256 {sha256_file(chunk.operator)[:12]})"] if chunk.operator else []) + (
        ["resumed: the minutes are the last invocation's"] if resumed else [])
    record = {"method": chunk.method, "budget": chunk.budget, "tasks": chunk.n_tasks, "seeds": chunk.seeds,
              "commit": head_commit(), "minutes": round((time.perf_counter() - began) / 60, 2),
              "note": "; ".join(notes)}
    (partial / "chunk.json").write_text(json.dumps(record, indent=1) + "\n")
    partial.rename(done)
    return done


def collate(chunks: list[Chunk], args: argparse.Namespace, curves_csv: Path) -> None:
    """Curves from ``chunks`` (per method, its longest chunk; a variant's rows named by it) into ``curves_csv``, and
    each chunk's record beside it (``<stem>_chunks.csv``)."""
    longest: dict[str, Path] = {}
    for chunk in sorted(chunks, key=lambda c: c.budget):
        longest[chunk.method] = chunk.path(args.work)
    rows, records = [], []
    for method in dict.fromkeys(c.method for c in chunks):
        mine = read_rows(longest[method])
        for shorter in {c.path(args.work) for c in chunks if c.method == method} - {longest[method]}:
            # Runs are seeded and never look at their budget until it stops them: a longer run's start is the
            # shorter one, which the table's scores at B rely on.
            short = read_rows(shorter)
            budget = max(float(r["env_steps"]) for r in short)
            if short != [r for r in mine if float(r["env_steps"]) <= budget]:
                raise SystemExit(f"{method}'s runs to {budget:g} env steps differ from the start of its longer runs")
        rows += [{**row, "method": method} for row in mine]
        records.append(json.loads((longest[method] / "chunk.json").read_text()))
    atomic_write_csv(curves_csv, CURVE_FIELDS, rows)
    atomic_write_csv(curves_csv.with_name(f"{curves_csv.stem}_chunks.csv"), CHUNK_FIELDS, records)


def read_rows(chunk: Path) -> list[dict[str, str]]:
    """The curve rows of an ended chunk."""
    with (chunk / "curves.csv").open() as f:
        return list(csv.DictReader(f))


def seal(args: argparse.Namespace) -> None:
    """Before a ``--final`` run: refuse a changed tree or missing references, then record the read in the ledger,
    unless the ledger holds it already (a rerun at the same commit with the same settings resumes that read)."""
    ledger = str(LEDGER.relative_to(ROOT))
    changed = [line for line in subprocess.run(["git", "status", "--porcelain"], cwd=ROOT, capture_output=True,
                                               text=True, check=True).stdout.splitlines() if line[3:] != ledger]
    if changed:
        raise SystemExit(f"--final reads the test split only from a clean tree: {len(changed)} changed paths "
                         f"({changed[0].strip()}, ...); commit them first")
    for name in ("test", "ood"):
        reference_table(task_names(name, args.tasks), REFERENCE_SEEDS)  # exits naming the tasks it lacks
    # A variant is its file's content, not its path: another file is another read.
    variants = [f"{name}={sha256_file(path)[:12]}" for name, path in args.variants.items()]
    settings = {k: str(v) for k, v in sorted(vars(args).items()) if k not in ("workers", "render", "work", "variants")}
    if variants:
        settings["variants"] = " ".join(variants)
    row = {"date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"), "commit": head_commit(),
           "config_sha256": hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest(),
           "methods": " ".join(args.methods + variants), "tasks": args.tasks, "seeds": args.seeds,
           "budget": args.budget}
    for read in ledger_rows():
        if (read["commit"], read["config_sha256"]) == (row["commit"], row["config_sha256"]):
            print(f"resuming the test read the ledger recorded on {read['date']}", flush=True)
            return
    new = not LEDGER.exists()
    with LEDGER.open("a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=LEDGER_FIELDS, lineterminator="\n")
        if new:
            writer.writeheader()
        writer.writerow(row)


def ledger_rows() -> list[dict[str, str]]:
    """The ledger's rows: one per read of the test split by ``--final``."""
    if not LEDGER.exists():
        return []
    with LEDGER.open() as f:
        return list(csv.DictReader(f))


# ------------------------------------------------------------------------------------------ figures


def fmt(est: Interval) -> str:
    """``mean [lo, hi]`` with three decimals."""
    return f"{est.value:.3f} [{est.lo:.3f}, {est.hi:.3f}]"


def choose_best(scores: dict[str, dict[tuple[str, int], float]], among: tuple[str, ...] | None = None) -> str:
    """The selection rule: the peer (or, with ``among``, the method of those) with the highest mean score at B over
    its own runs (SAC's: its subset)."""
    candidates = [m for m in scores if (m not in NOT_PEERS if among is None else m in among)]
    return max(candidates, key=lambda m: float(np.mean(list(scores[m].values()))))  # max keeps the first of equals


OPERATOR_METHODS = (OPERATOR, "operator_guarded", LEARNED_START)
"""the ways of deploying the operator, of which validation chooses the best one (``best_operator_validation``)"""


@dataclasses.dataclass
class Scored:
    """One task set's curves, normalized, with each method's scores at every budget its runs were given."""

    path: Path
    """the curves file"""
    curves: Curves
    normalized: Curves
    scales: dict[str, TaskScale]
    budgets: list[float]
    """1, 2, 4 and 8 batches, B and 4B"""
    scores: dict[str, dict[float, dict[tuple[str, int], float]]]
    """method -> budget -> (task, seed) -> score, for the budgets up to the one its runs were given where every run
    has deployed a policy"""

    @classmethod
    def of(cls, path: Path, batch: float, budget: float) -> Scored:
        """Normalize the curves in ``path`` by the reference table and score each method at its budgets."""
        curves = read_curves([path])
        scales = {r["task"]: TaskScale(float(r["start"]), float(r["reference"]))
                  for r in reference_table(curves.tasks(), REFERENCE_SEEDS)}
        normalized = normalize_curves(curves, scales)
        budgets = sorted(set(report_budgets(batch, budget)))
        scores = {}
        for method in curves.methods():
            runs = normalized.where(method=method)
            given = LONG_RUN * budget if runs.env_steps.max() > budget else budget
            at = scores_at(deployed_until(runs, given), [b for b in budgets if b <= given])
            # A method that spends env steps before its first policy (a selection, a pretraining charge) has no
            # score at the budgets before it.
            scores[method] = {b: s for b, s in at.items() if not any(math.isnan(v) for v in s.values())}
        return cls(path, curves, normalized, scales, budgets, scores)


def figures(scored: Scored, budget: float, batch: float, name: str, best: str,
            best_operator: str) -> tuple[dict[str, str], list[str]]:
    """The key figures (``name`` -> ``value``) and the summary's markdown lines of task set ``name``; ``best`` and
    ``best_operator`` are the best peer and the best way of deploying the operator that validation chose."""
    scores, methods = scored.scores, list(scored.scores)
    estimates = {m: {b: score_ci(s) for b, s in scores[m].items()} for m in methods}
    long = LONG_RUN * budget
    paired = pair(scores[OPERATOR][budget], scores[best][budget], PAIR_ON_INTERSECTION)
    diff, poi = paired_difference(paired), probability_of_improvement(paired)
    steps = steps_to_best_peer(scored.normalized.where(method=OPERATOR),
                               deployed_until(scored.normalized.where(method=best), budget), budget,
                               PAIR_ON_INTERSECTION)
    out = {f"best_peer_{name}": best, f"paired_vs_best_peer_{name}": fmt(diff),
           f"probability_of_improvement_vs_best_peer_{name}": fmt(poi), f"steps_to_best_peer_{name}": fmt(steps)}
    if long in scores[best]:
        out[f"paired_vs_best_peer_4B_{name}"] = fmt(paired_difference(
            pair(scores[OPERATOR][long], scores[best][long], PAIR_ON_INTERSECTION)))
    if "sac" in scores and best != "sac":
        out[f"paired_vs_sac_{name}"] = fmt(paired_difference(
            pair(scores[OPERATOR][budget], scores["sac"][budget], PAIR_ON_INTERSECTION)))
    if LEARNED_START in scores:
        out |= learned_start_figures(scored, budget, batch, name, best)
    out |= {f"score_at_B_{m}_{name}": fmt(estimates[m][budget]) for m in methods}
    out |= {f"score_at_4B_{m}_{name}": fmt(estimates[m][long]) for m in methods if long in estimates[m]}
    out |= {f"few_shot_2_{m}_{name}": fmt(estimates[m][2 * batch]) for m in (OPERATOR, best)}
    out |= {f"best_operator_{name}": best_operator, f"few_shot_2_{name}": fmt(estimates[best_operator][2 * batch])}
    # The peer this set itself ranks first at B: the best peer is validation's choice, and a set may rank another.
    out[f"top_peer_{name}"] = choose_best({m: s[budget] for m, s in scores.items()})
    out |= guard_figures(scored, budget, name)
    labels = {b: budget_label(b, batch, budget) for b in scored.budgets}
    split, start = SETS[name]
    tasks = scored.curves.tasks()
    lines = [f"{name.capitalize()} tasks: `{FAMILY}` `{split}` {start}–{start + len(tasks) - 1}, fresh starts, "
             f"B = {budget:g} env steps, batches of {batch:g} (the operator's). Mean per-task normalized score (0: "
             "the task's start return, 1: its reference return) with 95% CIs resampling tasks, then seeds. The "
             f"operator and the best peer run to 4B; SAC runs to B on the first {SUBSET[name][0]} tasks × "
             f"{SUBSET[name][1]} seed{'s' if SUBSET[name][1] > 1 else ''} only; `—`: a budget the method's runs do not "
             "reach or has not deployed a policy at.", "",
             f"| method | runs | {' | '.join(labels.values())} |", f"| --- | --- |{' --- |' * len(labels)}"]
    for m in methods:
        runs = next(iter(scores[m].values()))
        cells = [fmt(estimates[m][b]) if b in estimates[m] else "—" for b in scored.budgets]
        tag = " **best peer**" if m == best else ""
        lines.append(f"| `{m}`{tag} | {len({t for t, _ in runs})} × {len(runs) // len({t for t, _ in runs})} | "
                     f"{' | '.join(cells)} |")
    lines += ["", f"The operator against the best peer (`{best}`, chosen on validation) at B, paired by task and seed "
              f"({paired.n_pairs} pairs): difference {fmt(diff)}, probability of improvement {fmt(poi)}; it reaches "
              f"the best peer's score at B in {fmt(steps)} of B (inf: not within its runs).", ""]
    lines += [f"Of the ways of deploying the operator, validation's best at B is `{best_operator}`; after two of its "
              f"batches it scores {out[f'few_shot_2_{name}']}.", ""]
    top = out[f"top_peer_{name}"]
    if top != best:
        lines += [f"On these tasks the peer with the highest mean score at B is `{top}` "
                  f"({fmt(estimates[top][budget])}), not the best peer validation chose.", ""]
    if f"paired_vs_best_peer_4B_{name}" in out:
        lines += [f"At 4B, paired: {out[f'paired_vs_best_peer_4B_{name}']}.", ""]
    if f"paired_vs_sac_{name}" in out:
        lines += [f"Against `sac` at B, paired on SAC's runs: {out[f'paired_vs_sac_{name}']}.", ""]
    if LEARNED_START in scores:
        key = f"{LEARNED_START}_{{}}_{name}".format
        lines += [f"The operator from its learned start (`{LEARNED_START}`) against the best peer at B, paired: "
                  f"{out[key('paired_vs_best_peer')]}, probability of improvement "
                  f"{out[key('probability_of_improvement_vs_best_peer')]}, the best peer's score at B in "
                  f"{out[key('steps_to_best_peer')]} of B. Against ARS from its meta-learned start (`meta_ars`), "
                  "paired: "
                  f"{out.get(key('paired_vs_meta_ars'), '—')} at B, {out.get(key('paired_vs_meta_ars_1_batch'), '—')} "
                  "after one batch.", ""]
    lines += [f"Guard: runs ending below their start return, unguarded {out[f'operator_runs_below_start_{name}']}, "
              f"guarded {out[f'operator_guarded_runs_below_start_{name}']}; fallbacks per guarded run "
              f"{out[f'guard_fallbacks_per_run_{name}']}.", ""] if f"guard_fallbacks_per_run_{name}" in out else []
    lines += ["Raw returns at B, mean over seeds:", "",
              f"| task | start | reference | {' | '.join(f'`{m}`' for m in methods)} |",
              f"| --- | --- | --- |{' --- |' * len(methods)}"]
    for task in tasks:
        cells = []
        for m in methods:
            finals = scores_at(deployed_until(scored.curves.where(method=m, task=task), budget), [budget])[budget]
            cells.append(f"{np.mean(list(finals.values())):.1f}" if finals else "—")
        lines.append(f"| {task} | {scored.scales[task].start:.1f} | {scored.scales[task].reference:.1f} | "
                     f"{' | '.join(cells)} |")
    return out, lines


def learned_start_figures(scored: Scored, budget: float, batch: float, name: str, best: str) -> dict[str, str]:
    """The operator from its learned start (:data:`LEARNED_START`) against the best peer, and against ARS from its
    meta-learned start (``meta_ars``) at B and after one batch: a learned start with a learned update against a learned
    start with a hand-designed one."""
    scores = scored.scores[LEARNED_START]
    paired = pair(scores[budget], scored.scores[best][budget], PAIR_ON_INTERSECTION)
    steps = steps_to_best_peer(scored.normalized.where(method=LEARNED_START),
                               deployed_until(scored.normalized.where(method=best), budget), budget,
                               PAIR_ON_INTERSECTION)
    out = {"paired_vs_best_peer": fmt(paired_difference(paired)),
           "probability_of_improvement_vs_best_peer": fmt(probability_of_improvement(paired)),
           "steps_to_best_peer": fmt(steps), "few_shot_2": fmt(score_ci(scores[2 * batch]))}
    for at, label in ((budget, ""), (batch, "_1_batch")):
        if "meta_ars" in scored.scores and at in scored.scores["meta_ars"]:
            out[f"paired_vs_meta_ars{label}"] = fmt(paired_difference(
                pair(scores[at], scored.scores["meta_ars"][at], PAIR_ON_INTERSECTION)))
    return {f"{LEARNED_START}_{k}_{name}": v for k, v in out.items()}


def guard_figures(scored: Scored, budget: float, name: str) -> dict[str, str]:
    """The guard's record on task set ``name``: runs ending below their start, with and without it, and fallbacks."""
    if "operator_guarded" not in scored.scores:
        return {}
    out = {}
    for method in (OPERATOR, "operator_guarded"):
        curves = scored.curves.where(method=method)
        starts, finals = scores_at(deployed_until(curves, budget), [0.0, budget]).values()
        below = [finals[run] < starts[run] for run in finals]
        out[f"{method}_runs_below_start_{name}"] = f"{sum(below)}/{len(below)}"
    last: dict[tuple[str, str], int] = {}
    with scored.path.open() as f:
        for row in csv.DictReader(f):  # a guarded run's rows count its fallbacks so far
            if row["method"] == "operator_guarded":
                last[row["task"], row["seed"]] = int(row["fallbacks"])
    out[f"guard_fallbacks_per_run_{name}"] = f"{np.mean(list(last.values())):.2f}"
    return out


def variant_figures(variants: Scored, scored: Scored, budget: float, batch: float, name: str,
                    best: str) -> tuple[dict[str, str], list[str]]:
    """Each ``--variants`` operator's score at every budget to B, and its paired difference at B with the shipped
    operator and with the best peer (the same tasks, seeds and fresh starts); with two or more variants named
    ``tasks_<N>``, ``scaling_<most>_vs_<fewest>_<set>``: the variant of most training tasks minus that of fewest."""
    budgets = [b for b in scored.budgets if b <= budget]
    labels = [budget_label(b, batch, budget) for b in budgets]
    out: dict[str, str] = {}
    lines = ["Variants (`--variants`: other operators, each applied like `operator` from the same fresh starts, to "
             "B): mean normalized score, and the paired difference at B with the shipped operator and with the best "
             f"peer (`{best}`, on its runs).", "",
             f"| variant | {' | '.join(labels)} | minus `operator` at B | minus `{best}` at B |",
             f"| --- |{' --- |' * (len(labels) + 2)}"]
    for variant, scores in variants.scores.items():
        key = f"variant_{variant}_{{}}_{name}".format
        out[key("score_at_B")] = fmt(score_ci(scores[budget]))
        for against, label in ((OPERATOR, "operator"), (best, "best_peer")):
            out[key(f"paired_vs_{label}")] = fmt(paired_difference(
                pair(scores[budget], scored.scores[against][budget], PAIR_ON_INTERSECTION)))
        cells = [fmt(score_ci(scores[b])) if b in scores else "—" for b in budgets]
        lines.append(f"| `{variant}` | {' | '.join(cells)} | {out[key('paired_vs_operator')]} | "
                     f"{out[key('paired_vs_best_peer')]} |")
    counts = {int(v.removeprefix("tasks_")): v for v in variants.scores if re.fullmatch(r"tasks_\d+", v)}
    if len(counts) > 1:
        most, fewest = max(counts), min(counts)
        scaling = f"scaling_{most}_vs_{fewest}_{name}"
        out[scaling] = fmt(paired_difference(pair(variants.scores[counts[most]][budget],
                                                  variants.scores[counts[fewest]][budget], PAIR_ON_INTERSECTION)))
        lines += ["", f"Trained on {most} tasks against {fewest}, paired at B: {out[scaling]}."]
    return out, lines


def budget_label(env_steps: float, batch: float, budget: float) -> str:
    """A budget's name in the tables: ``B``, ``4B`` or ``<n> batch(es)``."""
    if env_steps == budget:
        return "B"
    if env_steps == LONG_RUN * budget:
        return f"{LONG_RUN}B"
    return f"{env_steps / batch:g} batch{'es' if env_steps > batch else ''}"


def report(name: str, args: argparse.Namespace, batch: float, best: str | None, target: Path) -> dict[str, str]:
    """Recompute task set ``name``'s summary, figures and plot from its curves; returns the figures. ``best``: the best
    peer validation chose (None on validation's first report, which chooses it)."""
    curves_csv, summary, figures_csv, png = outputs(name, target)
    scored = Scored.of(curves_csv, batch, float(args.budget))
    at_b = {m: s[float(args.budget)] for m, s in scored.scores.items()}
    if name == "validation":  # validation chooses: the best peer (unless chosen already) and the best deployment
        best, best_operator = best or choose_best(at_b), choose_best(at_b, OPERATOR_METHODS)
    else:
        best_operator = read_figures(outputs("validation")[2]).get("best_operator_validation", "")
        if not best_operator:
            raise SystemExit("the validation figures name no best_operator_validation: run benchmarks/improvement.py "
                             "--render first")
    key, lines = figures(scored, float(args.budget), batch, name, best, best_operator)
    if variants_csv(name, target).exists():
        more, more_lines = variant_figures(Scored.of(variants_csv(name, target), batch, float(args.budget)), scored,
                                           float(args.budget), batch, name, best)
        key |= more
        lines += ["", *more_lines]
    chunks = curves_csv.with_name(f"improvement_{name}_chunks.csv")
    if chunks.exists():
        with chunks.open() as f:
            records = list(csv.DictReader(f))
        timed = [r for r in records if r["minutes"]]
        key[f"apply_minutes_{name}"] = f"{sum(float(r['minutes']) for r in timed):.1f}"
        commits = sorted({r["commit"][:7] for r in records})
        earlier = "; ".join(f"`{r['method']}`: {r['note']}" for r in records if not r["minutes"])
        lines += ["", f"{len(timed)} apply runs took {key[f'apply_minutes_{name}']} minutes on the shared 2-core "
                  f"machine, at commit{'s' if len(commits) > 1 else ''} {', '.join(commits)} (`{chunks.name}`)"
                  f"{f'; earlier runs, time not recorded: {earlier}' if earlier else ''}."]
    title = f"# Evaluation v2 on {name} tasks (`benchmarks/improvement.py`)"
    summary.write_text("\n".join([title, "", *lines]) + "\n")
    atomic_write_csv(figures_csv, ["name", "value"], [{"name": k, "value": v} for k, v in key.items()])
    shown = [m for m in scored.curves.methods() if not REGISTRY[m].policy or m == "no_update"]
    plot_curves(scored.normalized, png, methods=shown, budget=float(args.budget), value="normalized score")
    return key


# ----------------------------------------------------------------------------------------------- main


def ask_figures() -> dict[str, str]:
    """``ask_rank_correlation``: the smallest, over its budgets, rank correlation between the requested improvement
    and the mean realized one on validation (``research/ask_control.py``'s ``results/ask_control.csv``; none before
    that study has run)."""
    path = RESULTS / "ask_control.csv"
    if not path.exists():
        return {}
    with path.open() as f:
        rhos = [float(r["rank_correlation_of_means"]) for r in csv.DictReader(f)]
    return {"ask_rank_correlation": f"{min(rhos):.3f}"}


def read_figures(path: Path) -> dict[str, str]:
    """A figures file's ``name`` -> ``value``."""
    with path.open() as f:
        return {r["name"]: r["value"] for r in csv.DictReader(f)}


def parse_variants(given: list[str]) -> dict[str, Path]:
    """``--variants``' ``NAME=CHECKPOINT`` pairs, checked (one line and exit 2 on a bad one): a new lower-case name,
    and a checkpoint of the shipped operator's policy spec."""
    _, shipped = OperatorCheckpoint.load(OPERATORS / f"{FAMILY}.safetensors")
    variants: dict[str, Path] = {}
    for item in given:
        name, _, path = item.partition("=")
        if not re.fullmatch(r"[a-z][a-z0-9_]*", name) or not path:
            raise SystemExit(f"--variants {item}: give NAME=CHECKPOINT with a lower-case name (letters, digits, _)")
        if name in REGISTRY or name in variants:
            raise SystemExit(f"--variants {item}: the name {name} is taken (a method, or another variant)")
        try:
            _, ckpt = OperatorCheckpoint.load(path)
        except UserError as err:
            raise SystemExit(f"--variants {item}: {err}") from None
        if ckpt.spec != shipped.spec:
            raise SystemExit(f"--variants {item}: its policies are {ckpt.spec}, not the shipped operator's "
                             f"{shipped.spec}; a variant must improve the same policies")
        variants[name] = Path(path).resolve()
    return variants


def arguments() -> argparse.Namespace:
    """The command line, checked: one line and exit 2 on anything it cannot run."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=None, help="tasks per set (default 8; --final 16; --quick 2)")
    parser.add_argument("--seeds", type=int, default=None, help="seeds per task (default 3; --quick 2)")
    parser.add_argument("--budget", type=int, default=None, help=f"B in env steps per run (default {BUDGET})")
    parser.add_argument("--methods", nargs="+", default=None, help="default: every method of METHODS")
    parser.add_argument("--dataset", type=Path, default=DATASET, help="the operator's training collection")
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "evaluation_v2",
                        help="where each ended apply run is kept, so that a rerun resumes")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--variants", nargs="+", default=[], metavar="NAME=CHECKPOINT",
                        help="other operators (an ablation's), each run like `operator` from fresh starts to B and "
                             "reported beside it; variants named tasks_<N> give scaling_<most>_vs_<fewest>")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--final", action="store_true", help="the test and ood splits (recorded in the ledger)")
    mode.add_argument("--render", action="store_true", help="run nothing: recompute from the committed curves")
    mode.add_argument("--quick", action="store_true", help="a small validation run from a fresh clone")
    args = parser.parse_args()
    args.tasks = args.tasks or (2 if args.quick else 16 if args.final else 8)
    args.seeds = args.seeds or (2 if args.quick else 3)
    args.budget = args.budget or (BUDGET // 4 if args.quick else BUDGET)
    args.methods = args.methods or (QUICK_METHODS if args.quick else METHODS)
    unknown = [m for m in args.methods if m not in REGISTRY]
    if unknown:
        raise SystemExit(f"unknown method(s) {', '.join(unknown)}; known: {', '.join(REGISTRY)}")
    if OPERATOR not in args.methods or not set(args.methods) - set(NOT_PEERS):
        raise SystemExit("--methods needs the operator and at least one peer")
    args.variants = parse_variants(args.variants)
    if args.quick:
        args.work = Path(tempfile.mkdtemp(prefix="improvement-quick-"))
    return args


def main() -> None:
    args = arguments()
    _, ckpt = OperatorCheckpoint.load(OPERATORS / f"{FAMILY}.safetensors")
    batch = float(BatchSchedule.of(ckpt).batch)
    chosen = outputs("validation")[2]
    target = args.work if args.quick else RESULTS
    if args.render:
        names = [n for n in SETS if outputs(n)[0].exists()]
    elif args.final:
        if not chosen.exists():
            raise SystemExit("--final compares against the best peer validation chose: run benchmarks/improvement.py "
                             "first")
        best = read_figures(chosen)["best_peer_validation"]
        chunks = [c for n in ("test", "ood") for c in plan(n, args.methods, args, {OPERATOR, best})
                  + variant_chunks(n, args)]
        check(chunks, args, ckpt)
        seal(args)
        names = ["test", "ood"]
    else:
        names = ["validation"]
        reference_table(task_names("validation", args.tasks), REFERENCE_SEEDS)  # exits naming the tasks it lacks
        check(plan("validation", args.methods, args, set()) + variant_chunks("validation", args), args, ckpt)
    key: dict[str, str] = {}
    for name in names:
        if not args.render:
            key |= run_set(name, args, batch, target, chosen)
        else:
            best = None if name == "validation" else read_figures(chosen)["best_peer_validation"]
            key |= report(name, args, batch, best, target)
    validation = outputs("validation", target)[2]
    if validation.exists():
        key["best_peer"] = read_figures(validation)["best_peer_validation"]  # the peer every set is paired with
    key["test_ledger_reads"] = str(len(ledger_rows()))
    key |= ask_figures()
    for name, value in key.items():
        print(f"{name}: {value}")
    print(f"outputs: {target}")


def run_set(name: str, args: argparse.Namespace, batch: float, target: Path, chosen: Path) -> dict[str, str]:
    """Run task set ``name``'s chunks (validation: every method to B, then the operator and the best peer it
    chose to 4B) and report it."""
    if name == "validation":
        chunks = plan(name, args.methods, args, set())
        for chunk in chunks:
            run_chunk(chunk, args)
        collate(chunks, args, outputs(name, target)[0])
        best = report(name, args, batch, None, target)[f"best_peer_{name}"]
        chunks += plan(name, [OPERATOR, best], args, {OPERATOR, best})
    else:
        best = read_figures(chosen)["best_peer_validation"]
        chunks = plan(name, args.methods, args, {OPERATOR, best})
    for chunk in chunks:
        run_chunk(chunk, args)
    collate(chunks, args, outputs(name, target)[0])
    variants = variant_chunks(name, args)
    for chunk in variants:
        run_chunk(chunk, args)
    if variants:
        collate(variants, args, variants_csv(name, target))
    return report(name, args, batch, best, target)


if __name__ == "__main__":
    main()
