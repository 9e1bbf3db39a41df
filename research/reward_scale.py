"""Why does the universal operator that reads rewards as they are make a fresh policy on the unseen pendulum worse,
where ARS improves it?

``research/universal.py`` found that this operator, shipped as ``universal_raw`` (until ``features.reward_symlog``
replaced it as ``universal``), takes InvertedDoublePendulum-v5's fresh policies from a return of 88 to 37 in 20
batches. The operator is shape-agnostic, not scale-agnostic: it reads τ's
rewards as they are in two features (``returns``, the mean and spread of the per-step reward, and each sampled
transition's reward; :func:`~metaimprove.operator.features.encode`), and the pendulum's alive bonus of 10 a step
puts its rewards far above those of the five robots it was fitted to. Two measurements of that operator:

1. **Its step's two terms** (:meth:`~metaimprove.operator.networks.PerParamOperator.terms`: Δθ is an additive term
   g_0 plus a gated ES step 2σ(g_1)·Δθ_ES, before ``step_scale``), on the first application from the fresh starts of
   :data:`TERM_SEEDS` seeds, on the pendulum as it is and with the reward the operator reads rescaled (below), and on
   the first validation task of each family the operator was fitted to. Per task, reward scale and block of θ: g_0's
   mean and RMS and the ES term's RMS, each the mean over the seeds; and over all of θ (block ``all``) the two
   terms' cosine and norm ratio and the mean reward per step of the batch as the operator reads it. Written to
   ``results/universal_terms.csv``.
2. **The pendulum with the reward the operator reads rescaled**: the runs of ``research/universal.py``'s stage 6
   (:data:`~universal.ENV_SEEDS` seeds from fresh starts, :data:`~universal.ENV_APPLICATIONS` batches, apply's
   episodes and seeds) with the operator's encoding reading τ's rewards × s for each s of :data:`SCALES`; the env,
   its exploration and the returns scored are unchanged. s = 1 is the operator as ``apply`` runs it, and the script
   checks that it reproduces the committed curves (``results/universal_raw/InvertedDoublePendulum-v5.csv``) to
   float rounding. Scored as ``research/universal.py`` scores the env (same references), with each run's gain (its
   score less its start's) and its paired difference with ARS from the same θ⁰ (the committed ARS runs). Written
   to ``results/universal_reward_scale.csv``, one row per s and budget, and its curves to
   ``results/universal_raw/reward_scale.{csv,png}``.

This is a diagnosis, not a setting: s is the pendulum's reward scale known in hindsight, which no user has before
running, so these rows do not count toward any bar of the unseen env. What they say is where the loss comes from,
and so what a scale-free encoding must remove (docs/findings.md).

    python research/reward_scale.py [--work runs/reward_scale]
    python research/reward_scale.py --quick [--work DIR]

About 10 minutes of one core: 15 runs of 20 batches on the pendulum, their evaluations included. ``--quick`` (one
seed, 2 batches, the terms from one start) writes its csvs and figure under ``--work``, never to ``results/``.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import numpy as np
import torch
from torch.nn.functional import cosine_similarity

from metaimprove import seeds
from metaimprove.evaluation.apply import CURVE_FIELDS
from metaimprove.evaluation.plot import plot_curves, read_curves
from metaimprove.evaluation.stats import Curves, deployed_until, score_ci, scores_at
from metaimprove.operator.checkpoint import OperatorCheckpoint, resolve_operator
from metaimprove.operator.features import encode, next_normalizer, stack
from metaimprove.operator.networks import ImprovementOperator
from metaimprove.operator.runtime import BatchSchedule, Explorer, operator_update
from metaimprove.sim.envs import AnyTask, UserEnv
from metaimprove.sim.policy import Policy
from metaimprove.sim.rollout import Experience, evaluate_many
from metaimprove.sim.tasks import get_family
from metaimprove.storage import atomic_write_csv

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))  # benchmarks/common.py
import universal
from common import REFERENCE_RUNS, RESULTS, ROOT, interval, normalized, paired_rows, scored_budgets, validation_start

SCALES = (1.0, 0.3, 0.1)
"""the factors the rewards the operator reads are multiplied by; 1: as apply runs it"""
TERM_SEEDS = 3
"""fresh starts (seeds 0, 1, 2) whose first application's terms are measured"""
EVAL_EPISODES = 8
"""apply's ``eval_episodes`` default, with which research/universal.py's env runs were made"""
TERMS_OUT = RESULTS / "universal_terms.csv"
CURVES_OUT = RESULTS / "universal_reward_scale.csv"
OPERATOR = "universal_raw"
"""the operator diagnosed: the universal operator fitted without ``features.reward_symlog``"""
ENV = "InvertedDoublePendulum-v5"
"""the env it lost on, where ``research/universal.py`` measured it"""
FIGURE = universal.outputs(OPERATOR, RESULTS)[2] / "reward_scale"
TERM_FIELDS = ("task", "reward_scale", "block", "additive_mean", "additive_rms", "es_rms", "cosine",
               "additive_over_es", "reward_per_step")


def rescaled(exp: Experience, scale: float) -> Experience:
    """τ with its rewards × ``scale``: what the operator reads of a robot that paid ``scale`` times as much."""
    return exp if scale == 1.0 else dataclasses.replace(exp, reward=exp.reward * scale)


def label(scale: float) -> str:
    """A run's method name in the curves: ``reward_x<scale>``."""
    return f"reward_x{scale:g}"


def first_terms(op: ImprovementOperator, ckpt: OperatorCheckpoint, task: AnyTask, seed: int,
                scale: float) -> tuple[torch.Tensor, torch.Tensor, float]:
    """The additive and the ES term (:meth:`PerParamOperator.terms`) of the operator's first application from run
    ``seed``'s fresh start on ``task``, on the batch apply's run collects, its rewards read × ``scale``, and that
    batch's mean reward per step as read."""
    start = ckpt.fresh_policy(seed)
    exp = rescaled(Explorer(ckpt, task, start, seed)(start, 0), scale)
    feats = stack([encode(start, exp, ckpt.features, torch.Generator().manual_seed(seed), task,
                          next_normalizer(start, exp))])
    with torch.no_grad():
        context = op.context(feats, ckpt.ask(None).unsqueeze(0))
        additive, es = op.update.terms(feats, context, start.spec)
    if es is None:
        raise SystemExit(f"{OPERATOR} forms no ES step (features.es_gradient=false): nothing to split")
    return additive[0], es[0], float(exp.reward.mean())


def _stats(terms: list[tuple[torch.Tensor, torch.Tensor]]) -> dict[str, float]:
    """g_0's mean and RMS and the ES term's RMS over (additive, es) pairs' entries, each the mean over the pairs."""
    def mean(values: list[torch.Tensor]) -> float:
        return round(float(torch.stack(values).mean()), 4)
    return {"additive_mean": mean([a.mean() for a, _ in terms]),
            "additive_rms": mean([a.square().mean().sqrt() for a, _ in terms]),
            "es_rms": mean([e.square().mean().sqrt() for _, e in terms])}


def term_rows(op: ImprovementOperator, ckpt: OperatorCheckpoint, task: AnyTask, scale: float,
              n_seeds: int) -> list[dict[str, object]]:
    """Measurement 1's rows of ``task`` at ``scale`` over the first applications from ``n_seeds`` fresh starts: per
    block of θ, then over all of it."""
    ckpt = ckpt.on(task)
    firsts = [first_terms(op, ckpt, task, seed, scale) for seed in range(n_seeds)]
    terms = [(a, e) for a, e, _ in firsts]
    layout = ckpt.spec.layout()
    ends = [offset for _, _, offset in layout[1:]] + [ckpt.spec.n_params]
    rows: list[dict[str, object]] = [
        {"task": task.name, "reward_scale": scale, "block": name,
         **_stats([(a[begin:end], e[begin:end]) for a, e in terms]), "cosine": "", "additive_over_es": "",
         "reward_per_step": ""}
        for (name, _, begin), end in zip(layout, ends, strict=True)]
    rows.append({"task": task.name, "reward_scale": scale, "block": "all", **_stats(terms),
                 "cosine": round(float(torch.stack([cosine_similarity(a, e, dim=0) for a, e in terms]).mean()), 3),
                 "additive_over_es": round(float(torch.stack([a.norm() / e.norm() for a, e in terms]).mean()), 2),
                 "reward_per_step": round(float(np.mean([r for _, _, r in firsts])), 3)})
    return rows


def run(op: ImprovementOperator, ckpt: OperatorCheckpoint, task: AnyTask, seed: int, applications: int,
        scale: float) -> list[dict[str, object]]:
    """Run ``seed`` of the operator on ``task`` as apply runs it (fresh start, its Explorer, ``operator_update`` with
    apply's generator, no guard, every point evaluated on apply's episodes), its rewards read × ``scale``: the
    curve's rows."""
    policy: Policy = ckpt.fresh_policy(seed)
    explore = Explorer(ckpt, task, policy, seed)
    update = operator_update(op, ckpt, task, ckpt.ask(None), torch.Generator().manual_seed(seed))
    policies, steps = [policy], [0]
    for _ in range(applications):
        exp = explore(policy, steps[-1])
        policy = update(policy, rescaled(exp, scale))
        policies.append(policy)
        steps.append(steps[-1] + exp.n_steps)
    returns = evaluate_many(policies, task, EVAL_EPISODES, seed=seeds.evaluation(seed))
    return [{"method": label(scale), "task": task.name, "seed": seed, "env_steps": at, "return": ret,
             "fallbacks": 0, "guard_steps": 0} for at, ret in zip(steps, returns, strict=True)]


def check_reproduces(mine: Curves, committed: Curves) -> None:
    """Exit non-zero unless the s = 1 runs return the committed operator curves (at the same seeds and env steps) to
    float rounding (1e-3 relative)."""
    def by_run(c: Curves) -> dict[tuple[int, int], float]:
        return {(int(s), int(x)): float(r) for s, x, r in zip(c.seed, c.env_steps, c.returns, strict=True)}

    a, b = by_run(mine.where(method=label(1.0))), by_run(committed.where(method="operator"))
    worst = max(abs(a[k] - b[k]) / max(abs(b[k]), 1.0) for k in a) if a.keys() <= b.keys() else np.inf
    if worst > 1e-3:
        raise SystemExit(f"the s = 1 runs do not reproduce {ENV}'s committed operator curves (largest "
                         f"relative difference {worst:.2g}); nothing written")
    print(f"s = 1 reproduces the committed operator curves (largest relative difference {worst:.2g})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, help="where the runs go (default runs/reward_scale; --quick: "
                        "runs/reward_scale_quick, with its outputs)")
    parser.add_argument("--quick", action="store_true", help="one seed, 2 batches; outputs under --work")
    args = parser.parse_args()
    work = args.work or ROOT / "runs" / ("reward_scale_quick" if args.quick else "reward_scale")
    env_seeds, applications, term_seeds = (1, 2, 1) if args.quick else (universal.ENV_SEEDS,
                                                                     universal.ENV_APPLICATIONS, TERM_SEEDS)
    terms_out, curves_out, figure = ((work / TERMS_OUT.name, work / CURVES_OUT.name, work / FIGURE.name)
                                     if args.quick else (TERMS_OUT, CURVES_OUT, FIGURE))
    torch.set_num_threads(1)
    op, shipped = OperatorCheckpoint.load(resolve_operator(OPERATOR))
    env = UserEnv.resolve(ENV)
    families = [get_family(f).task("train", validation_start(f)) for f in shipped.families]
    terms = [row for scale in SCALES for row in term_rows(op, shipped, env, scale, term_seeds)]
    terms += [row for task in families for row in term_rows(op, shipped, task, 1.0, term_seeds)]
    print(f"terms of the first application: {len(terms)} rows")

    ckpt = shipped.on(env)
    rows = [row for scale in SCALES for seed in range(env_seeds)
            for row in run(op, ckpt, env, seed, applications, scale)]
    work.mkdir(parents=True, exist_ok=True)
    atomic_write_csv(work / "curves.csv", CURVE_FIELDS, rows)
    mine = read_curves([work / "curves.csv"])
    committed = read_curves([FIGURE.parent / f"{ENV}.csv"])
    check_reproduces(mine, committed)

    batch = float(BatchSchedule.of(ckpt).batch)
    budget = float(applications * batch)
    budgets = scored_budgets(batch, budget)
    ars = committed.where(method="ars", seeds=range(env_seeds))  # the committed ARS runs of this run's seeds
    both = universal.joined([mine, ars])
    scored = normalized(both, REFERENCE_RUNS, universal.FULL.robots.reference_seeds)
    scores = {m: scores_at(deployed_until(scored.where(method=m), budget), [0.0, *budgets])
              for m in [*map(label, SCALES), "ars"]}
    raw = {label(scale): scores_at(deployed_until(mine.where(method=label(scale)), budget), budgets)
           for scale in SCALES}
    out = []
    for scale in SCALES:
        mine_scores = scores[label(scale)]
        for row in paired_rows({at: mine_scores[at] for at in budgets}, "operator", {"ars": scores["ars"]}, batch,
                               budget):
            at = float(row["env_steps"])  # type: ignore[arg-type]
            gain = score_ci({key: s - mine_scores[0.0][key] for key, s in mine_scores[at].items()})
            returns = list(raw[label(scale)][at].values())
            out.append({"env": ENV, "reward_scale": scale, **row, "operator_gain": interval(gain),
                        "operator_gain_above_0": gain.lo > 0, "operator_return": round(float(np.mean(returns)), 2),
                        "seeds": len(mine_scores[at]), "source": "research/reward_scale.py"})
    atomic_write_csv(terms_out, TERM_FIELDS, terms)
    atomic_write_csv(curves_out, list(out[0]), out)
    atomic_write_csv(figure.with_suffix(".csv"), CURVE_FIELDS, rows)
    plot_curves(scored, figure.with_suffix(".png"), budget=budget, value="normalized score")
    for row in out:
        print(", ".join(f"{k}: {v}" for k, v in row.items()))


if __name__ == "__main__":
    main()
