"""Is there a better update on ARS's batch? Hand-made variants of the teacher's step, scored at budget B.

An operator fitted to ARS's pairs learns, at best, ARS's update: its target is a function of the batch it reads
(``research/step_geometry.py``). It could beat its teacher only where a better update from the same kind of
batch exists. This benchmark looks for one among the obvious candidates, each run exactly as ``metaimprove
apply``'s ``ars`` arm (its fresh starts, seeds and evaluation) with ARS at its defaults (``teacher=ars``: 8
directions × 256 steps, α = 0.02) as the base, with the step changed:

* step size α scaled (longer or shorter steps along the same direction);
* ARS's own settings: how many directions enter the step (b), the perturbation size ν, and how the batch's env
  steps are split between directions and rollout length (more directions of shorter rollouts, same env steps per
  update: every batch starts from resets, so a rollout then scores only an episode's first steps);
* heavy-ball momentum on the step, with α shrunk so the steady-state step stays near ARS's;
* the step plus the batch's REINFORCE direction (``metaimprove.operator.features``' policy-gradient feature), scaled to
  the step's length;
* an oracle line search: each update tries the step scaled by 0.5, 1, 2 and 4 and keeps the one with the best
  return on 2 deterministic episodes that are *not* charged to the budget (an upper bound for any learned
  step-size rule, not a method).

Validation tasks (``train`` tasks 32–35, in no collection) and the held-out ``test`` tasks, fresh starts,
B = 61440 env steps; writes ``results/update_rules.csv`` (split, rule, IQM return at B [95% CI]).

    python research/update_rules.py [--tasks 4] [--seeds 3] [--workers 2] [--rules ars momentum_0.5 ...]
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import multiprocessing
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from metaimprove.evaluation.stats import iqm_ci
from metaimprove.operator.checkpoint import OperatorCheckpoint
from metaimprove.operator.features import FeatureConfig, advantages, per_episode_gradients
from metaimprove.sim.envs import AnyTask
from metaimprove.sim.policy import Policy
from metaimprove.sim.rollout import Experience, evaluate
from metaimprove.storage import atomic_write_csv
from metaimprove.teachers import ARS, ARSConfig

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))  # benchmarks/common.py
from common import OPERATORS, RESULTS, fmt
from heldout import add_arguments, final_return

OPERATOR = OPERATORS / "halfcheetah_vel.safetensors"
"""whose policy shape gives the runs' fresh starts (apply's, for this family)"""
SEARCH_EPISODES = 2
"""episodes per line-search candidate (uncharged)"""


@dataclass(frozen=True)
class Rule:
    """A variant of ARS's update."""

    name: str
    what: str
    """what changed, for the table"""
    config: tuple[tuple[str, float], ...] = ()
    """ARSConfig fields changed (``lr`` as a multiple of the default α)"""
    momentum: float = 0.0
    """heavy-ball coefficient β on the step"""
    pg: float = 0.0
    """weight of the unit REINFORCE direction, in units of the step's length"""
    line_search: tuple[float, ...] = ()
    """step scales an oracle line search tries at every update"""


RULES = [
    Rule("ars", "ARS at its defaults (α = 0.02, b = 4 of 8 directions, ν = 0.03)"),
    Rule("alpha_x0.5", "α × 0.5", (("lr", 0.5),)),
    Rule("alpha_x2", "α × 2", (("lr", 2.0),)),
    Rule("alpha_x4", "α × 4", (("lr", 4.0),)),
    Rule("top_b_2", "b = 2 of the 8 directions", (("top_b", 2),)),
    Rule("top_b_8", "b = all 8 directions", (("top_b", 8),)),
    Rule("nu_0.02", "ν = 0.02", (("noise_std", 0.02),)),
    Rule("nu_0.05", "ν = 0.05", (("noise_std", 0.05),)),
    *(Rule(f"dirs_{n}_steps_{t}", f"{n} directions of {t}-step rollouts (b = {n // 2}): the same env steps per update",
           (("n_directions", n), ("top_b", n // 2), ("n_steps", t))) for n, t in ((16, 128), (32, 64), (64, 32))),
    Rule("dirs_32_steps_64_alpha_x1.5", "32 directions of 64-step rollouts (b = 16), α × 1.5",
         (("n_directions", 32), ("top_b", 16), ("n_steps", 64), ("lr", 1.5))),
    Rule("momentum_0.5", "momentum β = 0.5, α × 0.5", (("lr", 0.5),), momentum=0.5),
    Rule("momentum_0.75", "momentum β = 0.75, α × 0.25", (("lr", 0.25),), momentum=0.75),
    Rule("momentum_0.9", "momentum β = 0.9, α × 0.1", (("lr", 0.1),), momentum=0.9),
    Rule("plus_pg_0.5", "step + 0.5 × its length × the batch's unit REINFORCE direction", pg=0.5),
    Rule("oracle_line_search", f"oracle: the best of the step × 0.5, 1, 2, 4 on {SEARCH_EPISODES} uncharged "
         "episodes per update", line_search=(0.5, 1.0, 2.0, 4.0)),
]


class RuledARS(ARS):
    """ARS whose parameter step passes through a :class:`Rule` (α, b, ν and the batch's shape through its config)."""

    def __init__(self, config: ARSConfig, rule: Rule) -> None:
        scaled = {k: v * config.lr if k == "lr" else type(getattr(config, k))(v) for k, v in rule.config}
        super().__init__(dataclasses.replace(config, **scaled))
        self.rule = rule

    def start(self, task: AnyTask, policy: Policy, seed: int) -> None:
        """As ARS; also keeps the task and seed the line search evaluates on, and clears the momentum."""
        super().start(task, policy, seed)
        self._task, self._seed, self._velocity, self._updates = task, seed, None, 0

    def improve(self, experience: Experience) -> Policy:
        """ARS's step from ``experience``, changed by the rule; returns the policy the run continues from."""
        old = self.policy
        new = super().improve(experience)
        step = new.theta - old.theta
        if self.rule.pg:
            direction = self._reinforce_direction(old, experience)
            step = step + self.rule.pg * step.norm() * direction / direction.norm()
        if self.rule.momentum:
            self._velocity = step if self._velocity is None else self.rule.momentum * self._velocity + step
            step = self._velocity
        if self.rule.line_search:
            # Seeds apart from apply's evaluation (1_000_003·seed + 17), selection (+29) and verification (+41).
            seed = 1_000_003 * self._seed + 53 + self._updates
            candidates = [Policy(new.spec, old.theta + s * step, new.normalizer) for s in self.rule.line_search]
            returns = [evaluate(c, self._task, SEARCH_EPISODES, seed=seed) for c in candidates]
            step = self.rule.line_search[max(range(len(returns)), key=returns.__getitem__)] * step
        self._updates += 1
        self._policy = Policy(new.spec, old.theta + step, new.normalizer)
        return self._policy

    def _reinforce_direction(self, policy: Policy, exp: Experience) -> torch.Tensor:
        """The batch's mean REINFORCE gradient over the weights and biases ARS perturbs (log_std left out)."""
        states = policy.normalizer.normalize(exp.obs)
        features = FeatureConfig()  # the operator's own policy-gradient feature, at its defaults
        adv = advantages(exp, states, features.gamma, features.baseline_ridge)
        direction = per_episode_gradients(policy.spec, policy.theta, states, exp.action, adv).mean(0)
        direction[self._n_perturbed:] = 0
        return direction


def run(job: tuple[str, str, int, int, int]) -> float:
    """One run (rule, split, task index, seed, budget): the return at B of the default ARS under the rule."""
    name, split, task_index, seed, budget = job
    rule = next(r for r in RULES if r.name == name)
    _, ckpt = OperatorCheckpoint.load(OPERATOR)
    return final_return(RuledARS(ARSConfig(), rule), ckpt, split, task_index, seed, budget)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser, dataset=False, ask=False)
    parser.add_argument("--rules", nargs="+", default=[r.name for r in RULES], choices=[r.name for r in RULES],
                        help="the rules to run (default: all)")
    args = parser.parse_args()
    rows = []
    with multiprocessing.get_context("spawn").Pool(args.workers) as pool:
        for rule, split in itertools.product([r for r in RULES if r.name in args.rules], ("val", "test")):
            jobs = [(rule.name, split, t, s, args.budget) for s in range(args.seeds) for t in range(args.tasks)]
            finals = torch.tensor(pool.map(run, jobs)).reshape(args.seeds, args.tasks)
            est = iqm_ci(finals.numpy())
            print(f"{split} {rule.name}: at B {fmt(est)}", flush=True)
            rows.append({"split": split, "rule": rule.name, "what": rule.what, "budget": args.budget,
                         "tasks": args.tasks, "seeds": args.seeds, "at_B": fmt(est), "iqm": round(est.iqm, 2),
                         "lo": round(est.lo, 2), "hi": round(est.hi, 2)})
    atomic_write_csv(RESULTS / "update_rules.csv", list(rows[0]), rows)
    print(f"wrote {RESULTS / 'update_rules.csv'}")


if __name__ == "__main__":
    main()
