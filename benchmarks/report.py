"""Write the results page, ``docs/results.md``, and the README's headline block from the committed outputs.

No figure in the docs or the README is typed by hand: every benchmark (``benchmarks/``) and every settled study
(``research/``) writes its CSV (the improvement benchmark also its ``results/improvement.md``), every file under
``results/`` names the script and command that produced it in ``results/PROVENANCE.csv`` (checked by
``tests/test_provenance.py``), and this script renders them into ``docs/results.md``, the one page of every figure,
each section under the command that produced it, and fills the block between
``<!-- headline:start -->`` and ``<!-- headline:end -->`` in ``README.md`` with the headline lines. A README without
the markers is an error. ``--check`` writes nothing and exits 1 when either differs from what this script would
write; ``--out FILE`` writes the page to FILE instead, leaving the docs and the README alone.

    python benchmarks/report.py [--check] [--out FILE]
"""

from __future__ import annotations

import argparse
import csv
import sys
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "results"
PAGE = ROOT / "docs" / "results.md"
README = ROOT / "README.md"
START, END = "<!-- headline:start -->", "<!-- headline:end -->"
PROVENANCE = RESULTS / "PROVENANCE.csv"


def _script(path: str, args: str = "") -> str:
    """A link to the script at ``path`` (from the repository root), shown with its arguments.

    Links start at the repository root (``/benchmarks/...``): GitHub resolves them there, and the docs build leaves
    them as they are, where a link out of ``docs/`` would fail it."""
    return f"[`{path}{' ' + args if args else ''}`](/{path})"


def _result(name: str) -> str:
    """The address of ``results/<name>`` from the page (see :func:`_script`)."""
    return f"/results/{name}"


def _rows(name: str) -> list[dict[str, str]]:
    """The rows of ``results/<name>`` (none when the benchmark has not been run)."""
    path = RESULTS / name
    if not path.exists():
        return []
    with path.open() as f:
        return list(csv.DictReader(f))


def _provenance(name: str) -> dict[str, dict[str, str]]:
    """``rows -> manifest row`` of ``results/<name>`` in ``results/PROVENANCE.csv`` (``""``: the whole file;
    ``column=value``: the rows of a file that several sources append to)."""
    return {r["rows"]: r for r in _rows(PROVENANCE.name) if r["path"] == f"results/{name}"}


def _produced(name: str) -> list[str]:
    """The paragraph naming the command that produced ``results/<name>`` (none when the manifest lacks it)."""
    row = _provenance(name).get("")
    return [f"Produced by `{row['command']}`.", ""] if row else []


def _head(title: str, script: str, name: str) -> list[str]:
    """A section's heading (``title`` and a link to ``script``) and the paragraph naming the command that produced
    ``results/<name>``."""
    return [f"### {title} ({_script(script)})", "", *_produced(name)]


def _table(rows: list[dict[str, str]], columns: list[str], cells: Callable[[dict[str, str]], list[str]]) -> list[str]:
    """A markdown table of ``rows`` under ``columns``, each row's ``cells``, and a blank line."""
    return [f"| {' | '.join(columns)} |", f"|{' --- |' * len(columns)}",
            *(f"| {' | '.join(cells(r))} |" for r in rows), ""]


def _summary(path: Path) -> dict[str, str]:
    """``name -> value`` of a benchmark CSV: its summary rows, or every row of a two-column file."""
    rows = _rows(path.name)
    if rows and set(rows[0]) == {"name", "value"}:
        return {r["name"]: r["value"] for r in rows}
    return {r["name"]: r["value"] for r in rows if r.get("name") and r.get("value")}


def _value(cell: str) -> str:
    """The estimate of a ``value [lo, hi]`` cell (``common.interval``), as written."""
    return cell.split(" ")[0]


def _lower(cell: str) -> float:
    """The CI's lower end of a ``value [lo, hi]`` cell (``common.interval``)."""
    return float(cell.split("[")[1].split(",")[0])


def _teacher_check(stem: str, ours: str, reference: str) -> list[str]:
    """The check of one teacher against its reference implementation (``benchmarks/teacher_vs_sb3.py``)."""
    t = _summary(RESULTS / f"{stem}.csv")
    if not t:
        return []
    tasks = sorted({k.split("_")[0] for k in t if k.startswith("task") and k.endswith("_final_return_ours")})
    rows = [f"| {task} final return, ours vs reference | {t[f'{task}_final_return_ours']} vs "
            f"{t[f'{task}_final_return_sb3']} |" for task in tasks]
    return [
        f"### The {ours} teacher against {reference} "
        f"({_script('benchmarks/teacher_vs_sb3.py', f'--teacher {ours.lower()}')})",
        "",
        *_produced(f"{stem}.csv"),
        f"Same hyperparameters, same tasks and θ⁰, {t.get('seeds')} seeds, {t.get('env_steps_per_run')} env steps "
        f"per run ([plot]({_result(f'{stem}.png')})):",
        "",
        "| figure | value |",
        "| --- | --- |",
        "| fraction of updates where our mean return lies in the reference's 95% CI | "
        f"{t.get('fraction_updates_inside_sb3_ci')} (two identical algorithms would score about "
        f"{t.get('fraction_expected_if_identical')}) |",
        f"| final return inside the reference's CI on every task | {t.get('final_return_inside_sb3_ci_all_tasks')} |",
        *rows,
        f"| end-to-end env-steps/s, ours over the reference | **{t.get('speed_ratio_ours_over_sb3')}×** "
        "(target ≥ 5×) |",
        "",
        f"![{ours} vs reference]({_result(f'{stem}.png')})",
        "",
    ]


def _family_cost() -> list[str]:
    """Per-family cost relative to halfcheetah_vel (``benchmarks/family_cost.py``)."""
    rows = _rows("family_cost.csv")
    if not rows:
        return []
    return [
        f"### What each task family costs ({_script('benchmarks/family_cost.py')})",
        "",
        *_produced("family_cost.csv"),
        "Ratios to `halfcheetah_vel` measured in the same round (median of rounds): one collector env step, and "
        "one PPO update (collect + improve, default teacher).",
        "",
        "| family | robot | obs / act | step cost | PPO update cost |",
        "| --- | --- | --- | --- | --- |",
        *(f"| {r['family']} | {r['robot']} | {r['obs_dim']} / {r['act_dim']} | {r['step_cost_ratio']}× | "
          f"{r['ppo_update_cost_ratio']}× |" for r in sorted(rows, key=lambda r: float(r["step_cost_ratio"]))),
        "",
    ]


def _reliability() -> list[str]:
    """The latest rows of each reliability figure's source (``results/reliability.csv``)."""
    rows = _rows("reliability.csv")
    if not rows:
        return []
    latest = {r["benchmark"]: r["date"] for r in rows}  # rows are appended in time order
    sources = _provenance("reliability.csv")
    return [
        "### Reliability (`results/reliability.csv`)",
        "",
        "The latest rows of each source, the value of their `benchmark` column:",
        "",
        *(f"- `{benchmark}`: produced by `{sources[f'benchmark={benchmark}']['command']}` "
          f"({_script(sources[f'benchmark={benchmark}']['script'])}); {sources[f'benchmark={benchmark}']['note']}."
          for benchmark in latest if f"benchmark={benchmark}" in sources),
        "",
        "| benchmark | figure | value | note |",
        "| --- | --- | --- | --- |",
        *(f"| {r['benchmark']} | {r['name']} | {r['value']} | {r['note']} |" for r in rows
          if r["date"] == latest[r["benchmark"]]),
        "",
    ]


def _families() -> list[str]:
    """One shipped operator per family against PPO and ARS on its held-out tasks (``benchmarks/families.py``)."""
    rows = _rows("families.csv")
    if not rows:
        return []
    return [
        f"### One operator per family ({_script('benchmarks/families.py')})",
        "",
        *_produced("families.csv"),
        "Each family's operator (`results/operators/<family>.safetensors`, collection config beside it) against "
        "PPO and ARS on the family's `test` tasks from fresh starts, equal env-step budget B. IQM return at B with "
        "95% CIs; a verdict needs non-overlapping CIs; `steps_ratio_to_ppo` as under Held-out improvement. Every "
        "family but `halfcheetah_vel` comes from `metaimprove pipeline task=<family> teacher=<its teacher>` at the "
        "family's sizes, so its operator saw little data and its figures rest on few runs; `halfcheetah_vel`'s "
        "from `benchmarks/improvement.py`. Curves: `results/families/<family>.{csv,png}`.",
        "",
        "| family | trained on | B (env steps) | tasks × seeds | operator at B | PPO at B | ARS at B | start "
        "| nearest checkpoint | operator vs PPO | operator vs ARS | steps_ratio_to_ppo | pipeline minutes |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        *(f"| `{r['family']}` | {r['training']} | {r['budget_env_steps']} | {r['tasks_x_seeds']} | "
          f"{r['operator_at_B']} | {r['ppo_at_B']} | {r['ars_at_B']} | {r['start_at_B']} | {r['nearest_at_B']} | "
          f"**{r['operator_vs_ppo']}** | **{r['operator_vs_ars']}** | {r['steps_ratio_to_ppo']} | "
          f"{r['pipeline_minutes'] or '–'} |" for r in rows),
        "",
    ]


def _held_out_runs(first: dict[str, str]) -> str:
    """How a held-out comparison (``research/heldout.py``) ran, and its peers' figures."""
    ars = f"; ARS: {first['ars_at_B']}" if first.get("ars_at_B") else ""
    return (f"applied on {first['runs']} from fresh starts, B = {first['budget_env_steps']} env steps. PPO at B on "
            f"the same runs: {first['ppo_at_B']}{ars}; the start: {first['start_at_B']}. IQM return at B with 95% CIs")


def _scaling() -> list[str]:
    """Held-out return at B against the number of training tasks (``research/scaling.py``)."""
    rows = _rows("scaling.csv")
    if not rows:
        return []
    return [
        *_head("More training tasks, better held-out returns?", "research/scaling.py", "scaling.csv"),
        f"One operator per task count N, trained on the first N tasks of one collection "
        f"({rows[0].get('collection') or '32 tasks × 48 PPO updates'}; "
        f"{rows[0].get('settings') or 'the default training settings'}, every other training setting the default), "
        f"{_held_out_runs(rows[0])} ([plot]({_result('scaling.png')})).",
        "",
        *_table(rows, ["training tasks N", "fitted on (rest validate)", "operator at B"],
                lambda r: [r["n_tasks"], r["train_tasks"], r["operator_at_B"]]),
        f"![scaling]({_result('scaling.png')})",
        "",
    ]


def _confirm_choice() -> list[str]:
    """The ablation's top validation rows re-measured on fresh validation tasks (``research/confirm_choice.py``)."""
    rows = _rows("confirm_choice.csv")
    if not rows:
        return []
    first = rows[0]
    return [
        *_head("Does the choice hold on more validation tasks?", "research/confirm_choice.py", "confirm_choice.csv"),
        f"The {len(rows)} ablation rows with the best validation IQM, applied again on fresh validation tasks "
        f"(`{first['tasks']}`, {first['runs']}, fresh starts, B = {first['budget_env_steps']} env steps); the test "
        "tasks play no part. IQM return at B with 95% CIs. **Chosen** (and shipped): of the rows whose IQM here ties "
        "the best one's (overlapping CIs), the one with the lowest `steps_ratio_to_ppo`. "
        f"On the same runs: PPO {first['ppo_at_B']}, ARS {first['ars_at_B']}, the start {first['start_at_B']}.",
        "",
        *_table(rows, ["variant", "what changed", "ablation validation at B", "confirmation at B",
                       "steps_ratio_to_ppo", "vs the ablation's choice"],
                lambda r: [f"`{r['variant']}`{' **chosen**' if r['chosen'] else ''}", r["changed"],
                           r["ablation_val_at_B"], r["at_B"], r["steps_ratio"], r["vs_ablation_choice"]]),
    ]


def _learned_start() -> list[str]:
    """The candidate learned starts of the operator on validation tasks (``research/learned_start.py``)."""
    rows = _rows("learned_start.csv")
    if not rows:
        return []
    budgets = [k for k in rows[0] if k.startswith("score_")]
    labels = [k.removeprefix("score_").replace("_", " ") for k in budgets]
    return [
        *_head("Which start for the operator?", "research/learned_start.py", "learned_start.csv"),
        "Each candidate θ₀, meta-trained by Reptile on the operator's training collection for its env steps, applied "
        "as `operator_learned_start` on validation tasks (`train` 32–39 × 3 seeds); mean normalized score with 95% "
        "CIs. "
        "**Chosen** (and shipped as `results/operators/halfcheetah_vel.start.safetensors`): the higher mean over the "
        "budgets, the rule committed before these runs.",
        "",
        *_table(rows, ["candidate", *labels, "mean"],
                lambda r: [f"`{r['candidate']}`{' **chosen**' if r['chosen'] == 'True' else ''}",
                           *(r[k] for k in budgets), r["mean_score"]]),
    ]


def _outcome_horizon() -> list[str]:
    """An outcome-trained operator against the imitation-trained one and its teacher
    (``research/outcome_horizon.py``)."""
    rows = _rows("outcome_horizon.csv")
    if not rows:
        return []
    return [
        *_head("Does outcome training over T applications help at B?", "research/outcome_horizon.py",
               "outcome_horizon.csv"),
        f"The shipped operator's weights evolved by `metaimprove outcome` on the return after T = "
        f"{rows[0]['outcome_applications_T']} applications, applied on validation tasks (`train` 32–39 × 3 seeds) "
        "for B = 61440 env steps; mean normalized score with 95% CIs, and paired differences by task and seed.",
        "",
        *_table(rows, ["budget", "evolved", "imitation-trained", "evolved − imitation", "`teacher_op_batch`",
                       "evolved − teacher"],
                lambda r: [r["budget"], r["evolved"], r["operator"], r["evolved_minus_operator"],
                           r["teacher_op_batch"], r["evolved_minus_teacher_op_batch"]]),
    ]


def _outcome_learned() -> list[str]:
    """An operator evolved over the whole budget from the learned start against the imitation-trained one from it
    (``research/outcome_horizon.py`` on an ``outcome start=learned`` run)."""
    rows = _rows("outcome_horizon_learned.csv")
    if not rows:
        return []
    first = rows[0]
    progress = "ended" if first["complete"] == "True" else "still running"
    return [
        *_head("Does outcome training over the whole budget help from the learned start?",
               "research/outcome_horizon.py", "outcome_horizon_learned.csv"),
        f"The shipped operator's weights evolved by `metaimprove outcome start=learned` on the return after T = "
        f"{first['outcome_applications_T']} applications (B's), {first['generations']} generations so far (the run "
        f"was {progress} when measured; its weights had moved {float(first['weights_moved']):.1%} of their norm), "
        "applied from the learned start on validation tasks (`train` 32–39 × 3 "
        "seeds); mean normalized score with 95% CIs, and the paired difference with the imitation-trained operator "
        "from the same start.",
        "",
        *_table(rows, ["budget", "evolved", "imitation-trained", "evolved − imitation"],
                lambda r: [r["budget"], r["evolved"], r["operator_learned_start"],
                           r["evolved_minus_operator_learned_start"]]),
    ]


def _operator_variants() -> list[str]:
    """Variants of the shipped operator's fit against it on its own family (``research/operator_variants.py``)."""
    rows = _rows("operator_variants.csv")
    if not rows:
        return []
    return [
        *_head("What do variants of the operator's fit give on its own family?", "research/operator_variants.py",
               "operator_variants.csv"),
        "Each variant fitted to the shipped collection with one setting changed, applied on validation tasks (`train` "
        "32–39 × 3 seeds, fresh starts); mean normalized score with 95% CIs, and paired differences by task and seed "
        "with the committed validation runs of the shipped operator and ARS.",
        "",
        *_table(rows, ["variant", "budget", "variant's score", "shipped", "variant − shipped", "`ars`",
                       "variant − `ars`"],
                lambda r: [f"`{r['variant']}` (`{r['setting']}`)", r["budget"], r["score"], r["operator"],
                           r["score_minus_operator"], r["ars"], r["score_minus_ars"]]),
    ]


def _task_scaling() -> list[str]:
    """The operator fitted to more or fewer training tasks, on validation (``research/task_scaling.py``)."""
    rows = _rows("task_scaling.csv")
    if not rows:
        return []
    counts = sorted({int(r["n_tasks"]) for r in rows})
    return [
        *_head("Do more training tasks make the operator better?", "research/task_scaling.py", "task_scaling.csv"),
        f"One operator per task count ({', '.join(map(str, counts))}; 32 is the shipped one), each fitted with the "
        "shipped operator's settings to the first N tasks of the shipped teacher's collections, applied on "
        "validation tasks (`train` 32–39 × 3 seeds, fresh starts); mean normalized score with 95% CIs, and paired "
        "differences by task and seed with the operator of 16 tasks and with ARS.",
        "",
        *_table(rows, ["training tasks", "budget", "score", "minus 16 tasks", "minus `ars`"],
                lambda r: [f"{r['n_tasks']}{' (shipped)' if r['shipped'] == 'True' else ''}", r["budget"],
                           r["score"], r["score_minus_n16"], r["score_minus_ars"]]),
    ]


def _leave_one_robot_out() -> list[str]:
    """One operator fitted to four robots, applied on the fifth (``research/leave_one_robot_out.py``)."""
    rows = _rows("leave_one_robot_out.csv")
    if not rows:
        return []
    return [
        *_head("Does an operator trained on four robots improve a fifth it never saw?",
               "research/leave_one_robot_out.py", "leave_one_robot_out.csv"),
        "Per held-out robot, one shape-agnostic operator (`features.agnostic=true`) fitted to the ARS collections of "
        "the other four, applied on the held-out family's validation tasks from fresh starts beside the family's own "
        "ARS teacher and PPO at its defaults and tuned; mean normalized score with 95% CIs, the paired difference "
        "with the teacher and with the best peer (the peer with the highest mean at that budget), and "
        "`steps_to_best_peer`: the env steps the operator needs to reach the best peer's score at that budget, over "
        "that budget (inf: not by B).",
        "",
        *_table(rows, ["held out", "budget", "tasks × seeds", "operator", "ARS teacher", "operator − ARS",
                       "best peer", "operator − best peer", "steps_to_best_peer"],
                lambda r: [f"`{r['heldout']}`", r["budget"], r["tasks_x_seeds"], r["operator"], r["ars"],
                           f"**{r['operator_minus_ars']}**", f"`{r['best_peer_method']}` {r['best_peer']}",
                           r["operator_minus_best_peer"], r["steps_to_best_peer"]]),
    ]


def _family_rows_table(rows: list[dict[str, str]], label: str) -> list[str]:
    """``research/universal.py``'s family rows of the operator ``label`` against each family's own operator."""
    return _table(rows, ["family", "budget", "tasks × seeds", label, "per-family", f"{label} − per-family", "verdict",
                         "paired"],
                  lambda r: [f"`{r['family']}`", r["budget"], r["tasks_x_seeds"], r["universal"], r["per_family"],
                             r["universal_minus_per_family"], r["verdict"], f"**{r['paired_verdict']}**"])


def _env_rows_table(rows: list[dict[str, str]], label: str) -> list[str]:
    """``research/universal.py``'s unseen-env rows of the operator ``label`` and its peers (SAC where it ran)."""
    peers = ["ars", "sac"] if "sac_gain" in rows[0] else ["ars"]
    names = [{"ars": "ARS", "sac": "SAC"}[p] for p in peers]
    return _table(rows, ["env", "budget", "seeds", f"{label} gain", *(f"{n} gain" for n in names),
                         *(f"{label} − {n}" for n in names), f"returns: {' / '.join([label, *names])}",
                         "start → reference"],
                  lambda r: [f"`{r['env']}`", r["budget"], r["seeds"], f"**{r['universal_gain']}**",
                             *(r[f"{p}_gain"] or "–" for p in peers),  # –: a peer not run on this env
                             *(r[f"universal_minus_{p}"] or "–" for p in peers),
                             " / ".join(r[f"{m}_return"] or "–" for m in ["universal", *peers]),
                             f"{r['start_return']} → {r['reference_return']}"])


def _universal() -> list[str]:
    """The universal operator on each training family and on an unseen env (``research/universal.py``)."""
    families, envs = _rows("universal_families.csv"), _rows("universal_unseen_env.csv")
    out = []
    if families:
        out += [
            *_head("Does one operator for five robots serve each as well as its own?", "research/universal.py",
                   "universal_families.csv"),
            "The universal operator (`results/operators/universal`, shape-agnostic, reading rewards on a log scale, "
            "fitted to the five robots' ARS collections) and each family's shipped operator, from the same fresh "
            "starts on the family's validation tasks; mean normalized score with 95% CIs and their paired "
            "difference. *Verdict*: the universal "
            "operator's mean within, above or below the per-family operator's CI; *paired*: the paired difference's "
            "CI above 0, below 0 or across it; *no score scale*: on some task the references end below the fresh "
            "starts. Curves: `results/universal/<family>.{csv,png}`.",
            "",
            *_family_rows_table(families, "universal"),
        ]
    if envs:
        out += [
            *_head("Does it improve a policy on an env no family uses?", "research/universal.py",
                   "universal_unseen_env.csv"),
            "`metaimprove apply operator_path=universal env=<id>` on a gymnasium env outside every family, beside ARS "
            "from the same θ⁰ and SAC from its own init (–: not run). Scores: 0 the fresh starts' mean return, 1 the "
            "best of ARS and tuned PPO after 8 B; the *gain* is a run's score less its own start's; CIs resample "
            "seeds (one task). Raw mean returns beside them, with the env's start and reference returns. The "
            "pendulum chose the operator's reward encoding (below), so for it the pendulum is no longer unseen: its "
            "rows are reported, and `Reacher-v5` is the env its bar is read on.",
            "",
            *_env_rows_table(envs, "universal"),
        ]
    return out + _replacement() + _reward_scale()


def _reward_scale() -> list[str]:
    """The diagnosis of the universal operator's loss on the unseen env (``research/reward_scale.py``)."""
    scales, terms = _rows("universal_reward_scale.csv"), _rows("universal_terms.csv")
    if not scales or not terms:
        return []
    return [
        *_head("Why did the raw-reward operator lose on the pendulum? A diagnosis", "research/reward_scale.py",
               "universal_reward_scale.csv"),
        "Of `universal_raw`, the operator that reads rewards as they are. Its step is an additive term plus a gated "
        "ES term. Of its first application from 3 fresh starts: the additive term's mean and RMS over θ, the ES "
        "term's RMS, the two terms' cosine and norm ratio, and the batch's mean reward per step as the operator "
        "reads it, on the pendulum (its rewards read as they are and "
        "scaled by s) and on a validation task of each training family (`results/universal_terms.csv`, per block of "
        "θ too).",
        "",
        *_table([r for r in terms if r["block"] == "all"],
                ["task", "s", "additive mean", "additive RMS", "ES RMS", "cosine", "additive / ES", "reward per step"],
                lambda r: [f"`{r['task']}`", r["reward_scale"], r["additive_mean"], r["additive_rms"], r["es_rms"],
                           f"**{r['cosine']}**", r["additive_over_es"], r["reward_per_step"]]),
        "Its pendulum runs (as in its table above) with the rewards it reads × s; the env, its exploration and the "
        "scored returns are unchanged, and s = 1 is `universal_raw` as `apply` runs it (its committed curves, "
        "reproduced). s is hindsight, which no user has before a run, so these rows count toward no bar.",
        "",
        *_table(scales, ["env", "s", "budget", "seeds", "operator gain", "ARS score", "operator − ARS", "return"],
                lambda r: [f"`{r['env']}`", r["reward_scale"], r["budget"], r["seeds"], f"**{r['operator_gain']}**",
                           r["ars"], r["operator_minus_ars"], r["operator_return"]]),
    ]


def _replacement() -> list[str]:
    """How the shipped universal operator replaced ``universal_raw``, the fit that read rewards as they are: the
    rule ``docs/design.md`` set before measuring it, read on the shipped operator's rows at B, and the raw fit's."""
    families = [r for r in _rows("universal_families.csv") if r["budget"] == "B"]
    envs = [r for r in _rows("universal_unseen_env.csv") if r["budget"] == "B"]
    raw_families = [r for r in _rows("universal_raw_families.csv") if r["budget"] == "B"]
    raw_envs = [r for r in _rows("universal_raw_unseen_env.csv") if r["budget"] == "B"]
    if not raw_families and not raw_envs:
        return []
    scored = [r for r in families if r["verdict"] != "no score scale"]
    failed = [r["family"] for r in scored if r["verdict"] == "worse"]
    reacher = [r for r in envs if r["env"] == "Reacher-v5"]
    missing = sorted({f for r in families for f in r["trained_on"].split()} - {r["family"] for r in families})
    one = ("(1) is not measured" if not families else f"(1) fails on {', '.join(failed)}" if failed else
           f"(1) holds on {', '.join(r['family'] for r in scored)}"
           + (f", not measured on {', '.join(missing)}" if missing else ""))
    two = ("(2) is not measured" if not reacher else
           f"(2) {'holds' if reacher[0]['universal_gain_above_0'] == 'True' else 'fails'}: gain "
           f"{reacher[0]['universal_gain']}")
    unscored = [r["family"] for r in families if r["verdict"] == "no score scale"]
    out = [*_head("How it replaced the operator that read rewards as they are", "research/universal.py",
                  "universal_raw_families.csv"),
           "The shipped operator is the universal fit with `features.reward_symlog=true`, measured as a candidate "
           "(`research/universal.py --variant symlog`) and then shipped. By the rule `docs/design.md` set before "
           "measuring it, it replaces the fit that read rewards as they are (now `universal_raw`) only if (1) on "
           "every training family with a score scale its mean at B lies within the per-family operator's CI or "
           "above, and (2) its gain at B on `Reacher-v5` has a CI above 0. "
           f"Rule: {one}{' (no score scale: ' + ', '.join(unscored) + ')' if unscored else ''}; {two}.",
           "", "`universal_raw` at B, measured as the shipped operator was before it was replaced:", ""]
    if raw_families:
        out += _family_rows_table(raw_families, "universal_raw")
    if raw_envs:
        out += _env_rows_table(raw_envs, "universal_raw")
    return out


def _memorization() -> list[str]:
    """The memorization audit of the shipped ways of deploying the operator (``benchmarks/memorization.py``)."""
    rows = _rows("memorization.csv")
    if not rows:
        return []
    return [
        *_head("Does the operator recall training checkpoints?", "benchmarks/memorization.py", "memorization.csv"),
        f"Each shipped way of deploying the operator and tuned PPO applied on validation tasks ({rows[0]['runs']}, "
        "B); distances between final policies with θ folded into one normalizer, medians. `ratio`: the method's "
        "distance to the nearest θ of any training run over the distance between two tuned-PPO seeds' policies on "
        "one task; a memorizing operator would land near training checkpoints, far below 1.",
        "",
        *_table(rows, ["method", "its start to the nearest training checkpoint", "its final policy to it",
                       "tuned PPO's to it", "tuned PPO seed to seed", "ratio"],
                lambda r: [f"`{r['method']}`", r["start_to_nearest_checkpoint"], r["to_nearest_checkpoint"],
                           r["ppo_tuned_to_nearest_checkpoint"], r["ppo_tuned_seed_to_seed"], f"**{r['ratio']}**"]),
    ]


def _reproduce() -> list[str]:
    """Whether each shipped operator with training settings comes back bit for bit (``benchmarks/reproduce.py``)."""
    rows = _rows("reproduce.csv")
    if not rows:
        return []
    return [
        *_head("Does the shipped operator come back from its configs?", "benchmarks/reproduce.py", "reproduce.csv"),
        "`metaimprove train` with `results/operators/<family>.train.yaml` on the collection of "
        "`<family>.collect.yaml`, compared with the shipped checkpoint, on a CPU whose instruction set torch's kernels "
        "use is the row's (`torch.backends.cpu.get_cpu_capability()`). Bit for bit holds only on the instruction set "
        "that collected and fitted the shipped operator: kernels of other vector widths round differently, and a "
        "rollout turns the last bit into another trajectory (the script's docstring has the measurement).",
        "",
        *_table(rows, ["operator", "CPU", "same tensors (SHA-256)", "same `.safetensors` bytes", "minutes"],
                lambda r: [f"`{r['family']}`", r["cpu_capability"], r["same_tensors"],
                           r["same_safetensors_bytes"], r["minutes"]]),
    ]


def _ask_control() -> list[str]:
    """The realized gain at each requested improvement (``research/ask_control.py``)."""
    rows = _rows("ask_control.csv")
    if not rows:
        return []
    levels = [k for k in rows[0] if k.startswith("gain_at_")]
    return [
        *_head("Does asking for a larger improvement give one?", "research/ask_control.py", "ask_control.csv"),
        "The shipped operator asked for each requested improvement of mean reward per step (columns), evenly spaced "
        "over its trained range, on validation tasks (`train` 32–39 × 3 seeds, fresh starts): each run's normalized "
        "score after the budget minus its start's, mean with 95% CIs; the rank correlation (Spearman) between the "
        "level and the mean gain, and each run's own one, averaged. The rule, committed before the runs: the ask "
        "stays a setting only with a rank correlation of at least 0.8 at every budget.",
        "",
        *_table(rows, ["budget", *(f"asked {k.removeprefix('gain_at_')}" for k in levels), "rank correlation",
                       "per run"],
                lambda r: [r["budget"], *(r[k] for k in levels), r["rank_correlation_of_means"],
                           r["rank_correlation_per_run"]]),
    ]


def _step_geometry() -> list[str]:
    """The teacher's steps against a random walk, and the operator's against the teacher's
    (``research/step_geometry.py``)."""
    rows = _rows("step_geometry.csv")
    if not rows:
        return []
    value = {(r["quantity"], r["k"]): r["value"] for r in rows}
    ks = sorted({int(r["k"]) for r in rows if r["quantity"] == "operator_step_over_teacher_step"})

    def spread(quantity: str) -> str:
        values = sorted(float(value[(quantity, str(k))]) for k in ks)
        return f"{values[0]:.2f}" if values[0] == values[-1] else f"{values[0]:.2f}–{values[-1]:.2f}"

    share = float(value.get(("operator_env_share", "1"), 1))
    reads = "all of the teacher's batch" if share == 1 else (
        f"{share:.0%} of the teacher's envs, so part of the teacher's step comes from envs it never sees")
    return [
        f"### Why asking for k does not buy k updates ({_script('research/step_geometry.py')})",
        "",
        *_produced("step_geometry.csv"),
        "On the collection's runs of the tasks the shipped operator was not fitted to. Consecutive ARS steps have "
        f"cosine {value[('teacher_consecutive_step_cosine', '1')]}: the teacher's path through parameter space is "
        "close to a random walk, so a k-step target adds to the one step that τⁿ determines k − 1 steps it cannot "
        f"predict. The shipped operator reads {reads}. Asked for k = {ks[0]} to {ks[-1]}, its step is "
        f"{spread('operator_step_over_teacher_step')} of the teacher's one step from the same batch, at cosine "
        f"{spread('operator_cosine_to_teacher_step')} to it: whatever k it is asked for, an application does at most "
        "about one teacher update's work, not k:",
        "",
        r"| k | teacher: \|θⁿ⁺ᵏ − θⁿ\| / (k · step) | random walk: 1/√k | operator step / teacher step "
        "| cosine to teacher step | cosine to k-step target |",
        "| --- | --- | --- | --- | --- | --- |",
        *(f"| {k} | {value[('teacher_displacement_over_k_steps', str(k))]} | "
          f"{value[('random_walk_displacement_over_k_steps', str(k))]} | "
          f"{value[('operator_step_over_teacher_step', str(k))]} | "
          f"{value[('operator_cosine_to_teacher_step', str(k))]} | "
          f"{value[('operator_cosine_to_k_step_target', str(k))]} |" for k in ks),
        "",
    ]


def _update_rules() -> list[str]:
    """Hand-made variants of ARS's update on its own batch, at budget B (``research/update_rules.py``)."""
    rows = _rows("update_rules.csv")
    if not rows:
        return []
    rules = list(dict.fromkeys(r["rule"] for r in rows))
    row = {(r["split"], r["rule"]): r for r in rows}
    first = rows[0]
    return [
        *_head("Is there a better update on ARS's batch?", "research/update_rules.py", "update_rules.csv"),
        "An operator fitted to ARS's pairs learns at best ARS's update, since its target is a function of the batch "
        "it reads; it could beat its teacher only where a better update from the same kind of batch exists. ARS at "
        "its defaults (`teacher=ars`) with its step or its batch's split changed, all else as `apply`'s `ars` arm "
        "(the `dirs_32_steps_64_alpha_x1.5` row is the teacher the shipped operator learns from), from "
        f"fresh starts, B = {first['budget']} env steps, {first['tasks']} tasks × {first['seeds']} seeds per set "
        "(validation: `train` tasks 32–35). IQM return at B with 95% CIs. The oracle line search evaluates its "
        "candidates on episodes the budget does not pay for, so it bounds what a learned step-size rule could buy.",
        "",
        *_table([row[("val", rule)] for rule in rules], ["rule", "what changed", "validation at B", "test at B"],
                lambda r: [f"`{r['rule']}`", r["what"], r["at_B"], row[("test", r["rule"])]["at_B"]]),
    ]


def _tune_ppo() -> list[str]:
    """PPO's settings tried on validation tasks and the one chosen (``benchmarks/tune_ppo.py``)."""
    rows = _rows("tune_ppo_summary.csv")
    if not rows:
        return []
    best = max(rows, key=lambda r: float(r["normalized_score"]))
    return [
        *_head("PPO tuned on validation tasks", "benchmarks/tune_ppo.py", "tune_ppo_summary.csv"),
        "Each setting runs PPO from `apply`'s fresh starts for B env steps on validation tasks (`train` tasks outside "
        "every collection). Mean normalized score at B over tasks and seeds (0: the task's start return, 1: the best "
        "setting's mean there), with 95% CIs from a bootstrap that resamples tasks, then seeds. The highest is chosen "
        "(the rule was committed before the runs) and shipped as `configs/teacher/ppo_tuned.yaml`: "
        f"`{best['setting']}`.",
        "",
        *_table(rows, ["setting", "changes to PPO's defaults", "normalized score at B", "runs"],
                lambda r: [f"`{r['setting']}`{' **chosen**' if r is best else ''}", f"`{r['changes']}`", r["ci"],
                           r["runs"]]),
    ]


def _tune_ppo_line(rows: list[dict[str, str]]) -> str:
    """One headline line: how far tuning on validation moved PPO (``benchmarks/tune_ppo.py``)."""
    ci = {r["setting"]: r["ci"] for r in rows}
    best = max(rows, key=lambda r: float(r["normalized_score"]))
    return (f"- **PPO is a weak peer at its defaults**: on validation tasks its normalized score at B is "
            f"{ci['default']}; tuned there (`{best['setting']}`) it is {ci[best['setting']]}, and evaluation v2 "
            "runs the tuned one (`ppo_tuned`). "
            "From [`benchmarks/tune_ppo.py`](benchmarks/tune_ppo.py).")


def _privileged_targets() -> list[str]:
    """Operators fitted to ARS's steps and to those of ARS with 8× the directions
    (``research/privileged_targets.py``)."""
    rows = _rows("privileged_targets.csv")
    if not rows:
        return []
    first = rows[0]
    return [
        *_head("Can an operator learn a better teacher's step from ARS's batch?", "research/privileged_targets.py",
               "privileged_targets.csv"),
        "ARS at its defaults (`teacher=ars`, 8 directions × 256 steps) with 8× the directions improves faster per "
        "update; an operator that took that step from the batch it reads would beat its teacher. Two operators "
        "fitted on collections of one size "
        f"({first['collection']}, one seed, every training setting the default), one to ARS's steps and one to the "
        "8× ARS's steps from a 16-env subset of each of its batches, applied as `apply` does from fresh starts "
        f"with 16-env batches, B = {first['budget']} env steps, {first['tasks']} tasks × {first['seeds']} seeds per "
        "set (validation: `train` tasks 32–35). The oracle is the 8× teacher itself with its extra env steps not "
        "charged: the headroom. IQM return at B with 95% CIs.",
        "",
        *_table(rows, ["method", "what", "validation at B", "test at B", "fit minutes"],
                lambda r: [f"`{r['method']}`", r["what"], r["val_at_B"], r["test_at_B"], r["fit_minutes"] or "—"]),
    ]


ABLATION_TABLES = {
    "ablations.csv": ("What does each part of the operator buy, and which settings ship?",
                      "the shipped operator's collection (ARS, 32 directions × 64 steps, 32 tasks × 48 updates)"),
    "ablations_ars8d256s.csv": ("The same rows on the earlier collection",
                                "the earlier shipped collection (ARS, 8 directions × 256 steps, 32 tasks × 48 "
                                "updates; its ARS peer is that teacher), kept for comparison"),
}
"""ablation table -> (heading, the collection its rows trained on)"""


def _ablations(name: str) -> list[str]:
    """One row per operator variant on validation and held-out tasks (``research/ablations.py``), from
    ``results/<name>`` (see :data:`ABLATION_TABLES`)."""
    rows = _rows(name)
    if not rows:
        return []
    first = rows[0]
    heading, collection = ABLATION_TABLES[name]
    return [
        f"### {heading} ({_script('research/ablations.py')}, `{name}`)",
        "",
        *_produced(name),
        f"Each variant trained on {collection} with every other setting the default (the "
        "baseline `per_param`: every default), applied from fresh starts with B = "
        f"{first['budget_env_steps']} env steps on {first['runs']}: validation tasks (`train` tasks 32–35, in no "
        "collection) and held-out `test` tasks. IQM return at B with 95% CIs; a verdict needs non-overlapping CIs. "
        "`steps_ratio_to_ppo` as under Held-out improvement, against PPO on the same runs (— : a row "
        "measured before the column). The row with the best validation IQM is marked **chosen**; it and its two "
        "runners-up are re-measured on more validation tasks below, which picks the row that ships. The test columns "
        "play no part in either choice. "
        f"On validation: PPO {first['val_ppo_at_B']}, ARS {first['val_ars_at_B']}, the start "
        f"{first['val_start_at_B']}; on test: PPO {first['ppo_at_B']}, ARS {first['ars_at_B']}, the start "
        f"{first['start_at_B']}.",
        "",
        *_table(rows, ["variant", "what changed", "validation at B", "test at B",
                       "steps_ratio_to_ppo (validation / test)", "vs baseline (test)", "vs PPO (test)", "fit minutes"],
                lambda r: [f"`{r['variant']}`{' **chosen**' if r['chosen'] else ''}", r["changed"], r["val_at_B"],
                           r["operator_at_B"], f"{r.get('val_steps_ratio', '—')} / {r.get('steps_ratio', '—')}",
                           r["vs_baseline"], f"**{r['vs_ppo']}**", r["train_minutes"]]),
    ]


def _latest_throughput() -> dict[str, str]:
    """Each figure of ``results/throughput.csv`` as its latest full (not ``--quick``) run measured it."""
    return {r["name"]: r["value"] for r in _rows("throughput.csv") if r["mode"] == "full"}


THROUGHPUT_FIGURES = [
    ("collector_vs_raw_ratio", "collector (policy inference, rewards, bookkeeping) over a bare `mj_step` loop, "
     "8 envs, 1 thread", "≥ 0.9×"),
    ("collector_vs_raw_ratio_64_envs", "the same at 64 envs (the ARS teacher's batch)", "≥ 0.9×"),
    ("scaling_1_to_2_threads", "2 threads over 1 in one process, 64 envs", ""),
    ("scaling_1_to_2_threads_8_envs", "2 threads over 1 in one process, 8 envs", ""),
    ("scaling_1_to_2_workers", "2 worker processes over 1", "≥ 1.8×"),
    ("ray_scaling_1_to_2_workers", "2 Ray workers over 1 (local Ray instance, one task per worker)", ""),
    ("operator_step_vs_ppo_update", "one operator application over one PPO update, same batch", "≤ 0.1×"),
    ("outcome_vs_collector", "the outcome stage (16 operators and the teacher side by side, their evaluations) over "
     "the collector on the same batches", "≥ 0.7×"),
]
"""the throughput figures the results page shows: name, what it is, the target (issues 25 and 28)"""


TASK_SETS = ("validation", "test", "ood")
"""evaluation v2's task sets, in the order the page shows them"""


def _markdown_section(name: str, script: str) -> list[str]:
    """``results/<name>`` (a script's markdown summary), its headings moved under the section's, with its
    provenance."""
    path = RESULTS / name
    if not path.exists():
        return []
    lines = ["##" + line if line.startswith("#") else line for line in path.read_text().splitlines()]
    lines[0] = lines[0].replace(f"(`{script}`)", f"({_script(script)})")
    lines[2:2] = _produced(name)
    return lines


def _improvement() -> list[str]:
    """Evaluation v2 (``benchmarks/improvement.py``): each task set's summary and its normalized curves."""
    out = []
    for name in TASK_SETS:
        lines = _markdown_section(f"improvement_{name}.md", "benchmarks/improvement.py")
        if lines:
            png = f"improvement_{name}.png"
            out += [*lines, "", f"![normalized curves, {name} tasks]({_result(png)})", ""]
    return out


def _improvement_v1() -> list[str]:
    """Evaluation v1 (``research/improvement_v1.py``): IQM raw returns, the guard and the memorization audit."""
    lines = _markdown_section("improvement_v1.md", "research/improvement_v1.py")
    figures = [f"![evaluation v1, {split}]({_result(f'improvement_v1_{split}.png')})" for split in ("test", "ood")
               if (RESULTS / f"improvement_v1_{split}.png").exists()]
    return [*lines, "", *figures, ""] if lines else []


def _improvement_line(figures: dict[str, str], name: str, what: str) -> str:
    """One headline line: the operator against the best peer on task set ``name`` (``benchmarks/improvement.py``)."""
    best = figures[f"best_peer_{name}"]
    long = figures.get(f"paired_vs_best_peer_4B_{name}")
    return (f"- **{what}** (per-task normalized scores, 0 = start, 1 = reference; paired by task and seed): the best "
            f"peer, chosen on validation, is `{best}` at {figures[f'score_at_B_{best}_{name}']} at B; the operator "
            f"scores {figures[f'score_at_B_operator_{name}']}, a paired difference of "
            f"{figures[f'paired_vs_best_peer_{name}']}{f' (at 4B: {long})' if long else ''}, and reaches the best "
            f"peer's score at B in {figures[f'steps_to_best_peer_{name}']} of B; after 2 batches it scores "
            f"{figures[f'few_shot_2_operator_{name}']} against {figures[f'few_shot_2_{best}_{name}']}."
            f"{_top_peer_clause(figures, name)}{_learned_start_clause(figures, name)}"
            f"{_variants_clause(figures, name)} From "
            "[`benchmarks/improvement.py`](benchmarks/improvement.py).")


def _top_peer_clause(figures: dict[str, str], name: str) -> str:
    """The headline's sentence on the peer task set ``name`` ranks first at B, where that is not the best peer."""
    top = figures.get(f"top_peer_{name}")
    if top is None or top == figures[f"best_peer_{name}"]:
        return ""
    return f" On these tasks the peer with the highest mean at B is `{top}`, at {figures[f'score_at_B_{top}_{name}']}."


def _variants_clause(figures: dict[str, str], name: str) -> str:
    """The headline's sentence on the ``--variants`` operators task set ``name`` ran: the best of them against the
    shipped operator at B, and the scaling figure where there is one."""
    suffix = f"_paired_vs_operator_{name}"
    diffs = {k.removeprefix("variant_").removesuffix(suffix): v for k, v in figures.items()
             if k.startswith("variant_") and k.endswith(suffix)}
    if not diffs:
        return ""
    best = max(diffs, key=lambda v: float(_value(diffs[v])))
    scaling = [(k.removesuffix(f"_{name}"), v) for k, v in figures.items()
               if k.startswith("scaling_") and k.endswith(f"_{name}")]
    more = "".join(f" `{k}`: {v}." for k, v in scaling)
    return (f" Of the {len(diffs)} ablation variants read here (`--variants`), the one highest against the shipped "
            f"operator at B is `{best}`, paired {diffs[best]}.{more}")


def _learned_start_clause(figures: dict[str, str], name: str) -> str:
    """The headline's sentence on the operator from its learned start, where task set ``name`` ran it."""
    key = f"operator_learned_start_{{}}_{name}".format
    if key("paired_vs_best_peer") not in figures:
        return ""
    return (f" From its learned start (`operator_learned_start`) the operator scores "
            f"{figures[f'score_at_B_operator_learned_start_{name}']} at B, paired "
            f"{figures[key('paired_vs_best_peer')]} against the best peer, and reaches the best peer's score at B in "
            f"{figures[key('steps_to_best_peer')]} of B; against ARS from its meta-learned start (`meta_ars`), paired: "
            f"{figures[key('paired_vs_meta_ars_1_batch')]} after one batch, {figures[key('paired_vs_meta_ars')]} at B.")


def _task_diversity() -> list[str]:
    """PPO trained on one task and evaluated on the others (``benchmarks/task_diversity.py``)."""
    diversity = _summary(RESULTS / "task_diversity.csv")
    if not diversity:
        return []
    return [
        f"### Do the tasks really differ? ({_script('benchmarks/task_diversity.py')})",
        "",
        *_produced("task_diversity.csv"),
        "PPO trained on one task, evaluated on every other task of its family (deterministic mean action). "
        "*Transfer ratio*: the share of a specialist's gain over the untrained policy that policies trained on "
        "other tasks reach (1 = tasks are interchangeable).",
        "",
        "| family | own-task return | return on other tasks | transfer ratio |",
        "| --- | --- | --- | --- |",
        *(f"| {fam} | {diversity[f'{fam}_own_task_return']} | {diversity[f'{fam}_other_task_return']} | "
          f"{diversity[f'{fam}_transfer_ratio']} |" for fam in ("halfcheetah_vel", "halfcheetah_rand_params")
          if f"{fam}_own_task_return" in diversity),
        "",
    ]


def _throughput() -> list[str]:
    """The latest throughput figures (``benchmarks/throughput.py``)."""
    throughput = _latest_throughput()
    if not throughput:
        return []
    rows = [f"| {what} | **{throughput[name]}×** | {target} |" for name, what, target in THROUGHPUT_FIGURES
            if name in throughput]
    if "quickstart_minutes" in throughput:
        rows.append(f"| the README's main job from a fresh clone, its install included | "
                    f"**{float(throughput['quickstart_minutes']):.1f} minutes** | ≤ 6 minutes |")
    return [
        f"### Throughput ({_script('benchmarks/throughput.py')})",
        "",
        *_produced("throughput.csv"),
        "| figure | value | target |",
        "| --- | --- | --- |",
        *rows,
        "",
        "Measured on a 2-core machine shared with other jobs, each figure a ratio within one run; Ray's own processes "
        "(raylet, GCS) run on the same two cores as the collectors. Why each figure is what it is: "
        "[performance](performance.md).",
        "",
        *_by_capability("operator_step_vs_ppo_update", "one operator application over one PPO update"),
    ]


def _by_capability(name: str, what: str) -> list[str]:
    """A paragraph giving throughput figure ``name`` (``what``) as the latest full run on each CPU instruction set
    measured it (``cpu_capability``), where runs on more than one are recorded."""
    latest = {r["cpu_capability"]: r["value"] for r in _rows("throughput.csv") if r["mode"] == "full"
              and r["name"] == name}
    if len(latest) < 2:
        return []
    runs = "; ".join(f"{value}× on a machine whose instruction set was not recorded" if cap == "unrecorded" else
                     f"{value}× where torch's CPU kernels use {cap}" for cap, value in latest.items())
    return [f"It depends on the CPU: {what} is {runs}. The table gives the latest run's.", ""]


INTRO = [
    "# Results",
    "",
    "Every figure on this page comes from a script whose output is committed under `results/`: the benchmarks in "
    "`benchmarks/` measure what the package ships against the peers a user would pick; the settled studies in "
    "`research/` are the experiments that chose its settings and explain its limits (their questions and answers: "
    "[findings](findings.md)). `python benchmarks/report.py` writes this page and the README's headline lines from "
    "those files; nothing here is typed by hand. Timings are ratios measured within one run on a shared 2-core "
    "machine; absolute speeds there are noise.",
    "",
]


def page() -> str:
    """``docs/results.md``: the benchmarks' sections, then the settled studies'."""
    out = [*INTRO, "## Benchmarks", ""]
    for stem, ours, reference in (("teacher_vs_sb3", "PPO", "Stable-Baselines3's PPO"),
                                  ("ars_vs_sb3", "ARS", "sb3-contrib's ARS")):
        out += _teacher_check(stem, ours, reference)
    out += _improvement() + _memorization() + _reproduce() + _tune_ppo() + _families()
    out += _task_diversity() + _family_cost() + _throughput() + _reliability()
    out += ["## Settled studies", "",
            f"Each study's question, answer and command: {_script('research/README.md')}; its finding in one "
            "paragraph: [findings](findings.md).", ""]
    out += _scaling()
    for name in ABLATION_TABLES:
        out += _ablations(name)
    out += (_confirm_choice() + _learned_start() + _outcome_horizon() + _outcome_learned() + _operator_variants()
            + _task_scaling() + _leave_one_robot_out() + _universal())
    out += _ask_control()
    out += _step_geometry()
    out += _update_rules()
    out += _privileged_targets() + _improvement_v1()
    return "\n".join(out).rstrip() + "\n"


# -------------------------------------------------------------------------------------- the headline


def _family_table(rows: list[dict[str, str]]) -> str:
    """The headline's family table: each family's shipped operator against PPO and ARS (``benchmarks/families.py``),
    and the universal operator against it at B where ``research/universal.py`` measured that family."""
    universal = {r["family"]: r for r in _rows("universal_families.csv") if r["budget"] == "B"}
    trained = {f for r in universal.values() for f in r["trained_on"].split()}
    note = (" Last column: the universal operator less the family's own, paired at B on validation "
            "([`research/universal.py`](research/universal.py)); –: not one of its five robots.") if universal else ""
    head = "| family | vs PPO | vs ARS |" + (" universal − own |" if universal else "")
    rule = "| --- | --- | --- |" + (" --- |" if universal else "")

    def line(r: dict[str, str]) -> str:
        cells = [f"`{r['family']}`", r["operator_vs_ppo"], r["operator_vs_ars"]]
        if universal:
            u = universal.get(r["family"])
            if u is None:
                cells.append("not yet run" if r["family"] in trained else "–")
            elif u["paired_verdict"] == "no score scale":
                cells.append(u["paired_verdict"])
            else:
                cells.append(f"{_value(u['universal_minus_per_family'])} ({u['paired_verdict']})")
        return "| " + " | ".join(cells) + " |"

    return "\n".join([
        f"- **One operator per family** ({len(rows)} families, each on its own `test` tasks at its own budget, "
        "against PPO and ARS; a verdict needs non-overlapping CIs). From "
        f"[`benchmarks/families.py`](benchmarks/families.py).{note}",
        "", head, rule, *map(line, rows), ""])


def _loro_line(rows: list[dict[str, str]]) -> str:
    """One headline line: an operator fitted to four robots, on the fifth at B
    (``research/leave_one_robot_out.py``)."""
    def reach(r: dict[str, str]) -> str:
        steps = r["steps_to_best_peer"]
        return "not reached by B" if steps.startswith("inf") else f"reached in {steps} of B"

    parts = [f"on `{r['heldout']}` {r['operator']} against its ARS teacher's {r['ars']}, paired "
             f"{r['operator_minus_ars']}; best peer `{r['best_peer_method']}` {r['best_peer']}, {reach(r)}"
             for r in rows if r["budget"] == "B"]
    return (f"- **A robot it never saw** (fitted to four robots, applied on the fifth's validation tasks, score at B): "
            f"{'; '.join(parts)}. From [`research/leave_one_robot_out.py`](research/leave_one_robot_out.py).")


def headline() -> str:
    """The README's headline lines, between the markers."""
    lines = []
    for name, what in (("validation", "Validation tasks"), ("test", "Held-out test tasks"),
                       ("ood", "Out of the training ranges")):
        figures = _summary(RESULTS / f"improvement_{name}_figures.csv")
        if figures:
            lines.append(_improvement_line(figures, name, what))
    reads = len(_rows("test_ledger.csv"))
    lines.append(f"- **Sealed test split**: read {reads} time{'' if reads == 1 else 's'}, each through "
                 "`benchmarks/improvement.py --final` and recorded in `results/test_ledger.csv`.")
    asks = _rows("ask_control.csv")
    if asks:
        lines.append(_ask_line(asks))
    scaling = _rows("task_scaling.csv")
    if scaling:
        lines.append(_scaling_line(scaling))
    tuned = _rows("tune_ppo_summary.csv")
    if tuned:
        lines.append(_tune_ppo_line(tuned))
    families = _rows("families.csv")
    if families:
        lines.append(_family_table(families))
    loro = _rows("leave_one_robot_out.csv")
    if loro:
        lines.append(_loro_line(loro))
    throughput = _latest_throughput()
    if throughput:
        lines.append(_throughput_line(throughput))
    return "\n".join(lines) + "\n"


def _ask_line(rows: list[dict[str, str]]) -> str:
    """One headline line: whether the requested improvement controls the operator (``research/ask_control.py``)."""
    gains = [_value(r[k]) for r in rows[:1] for k in r if k.startswith("gain_at_")]
    spread = f"{min(gains, key=float)} to {max(gains, key=float)}"
    rhos = ", ".join(f"{r['rank_correlation_of_means']} after {r['budget']}" for r in rows)
    return (f"- **Asking does not control the operator**: asked for improvements across its trained range, it "
            f"realizes the same gain ({spread} after one batch on validation); rank "
            f"correlations {rhos}, against the 0.8 required, so `apply ask_improvement=` was dropped. From "
            "[`research/ask_control.py`](research/ask_control.py).")


def _scaling_line(rows: list[dict[str, str]]) -> str:
    """One headline line: the operator's score at B for each training-task count (``research/task_scaling.py``)."""
    at_b = {int(r["n_tasks"]): r for r in rows if r["budget"] == "B"}
    most = max(at_b)
    scores = ", ".join(f"{_value(at_b[n]['score'])} for {n}" for n in sorted(at_b))
    diff = at_b[most]["score_minus_n16"]
    better = _lower(diff) > 0
    verdict = "improves with more training tasks" if better else "does no better with more training tasks"
    return (f"- **Training tasks** (validation, normalized score at B by the number of tasks the operator was fitted "
            f"to): {scores}; {most} against 16, paired: {diff}, so the operator {verdict}. From "
            "[`research/task_scaling.py`](research/task_scaling.py).")


def _throughput_line(throughput: dict[str, str]) -> str:
    """The headline's speed line, from the latest ``results/throughput.csv`` figures."""
    parts = [f"the collector runs at {throughput['collector_vs_raw_ratio']}× a bare `mj_step` loop at 8 envs"]
    if "collector_vs_raw_ratio_64_envs" in throughput:
        parts[0] += f" and {throughput['collector_vs_raw_ratio_64_envs']}× at 64"
    names = {"scaling_1_to_2_threads": "2 threads give {}× one", "scaling_1_to_2_workers": "2 workers {}× one",
             "operator_step_vs_ppo_update": "an operator application costs {}× a PPO update"}
    parts += [text.format(throughput[name]) for name, text in names.items() if name in throughput]
    if "quickstart_minutes" in throughput:
        parts.append(f"the main job takes {float(throughput['quickstart_minutes']):.1f} minutes from a fresh clone")
    return (f"- **Speed** (2 cores, [`benchmarks/throughput.py`](benchmarks/throughput.py)): {'; '.join(parts)}.")


def _with_headline(readme: str) -> str:
    """``readme`` with :func:`headline` between its markers; exits with one line when it lacks them."""
    if readme.count(START) != 1 or readme.count(END) != 1 or readme.index(START) > readme.index(END):
        raise SystemExit(f"report.py: README.md needs one {START} line and one {END} line after it; "
                         "nothing written")
    head, rest = readme.split(START, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{START}\n{headline()}{END}{tail}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true",
                        help="write nothing; exit 1 if docs/results.md or the README's headline block is stale")
    parser.add_argument("--out", type=Path, help="write the page here, leaving docs/results.md and README.md alone")
    args = parser.parse_args()
    if args.out is not None:
        args.out.write_text(page())
        print(f"wrote the results page to {args.out}")
        return
    readme = README.read_text()
    outputs = {PAGE: page(), README: _with_headline(readme)}
    if args.check:
        stale = [path.relative_to(ROOT).as_posix() for path, text in outputs.items()
                 if not path.exists() or path.read_text() != text]
        if stale:
            sys.exit(f"report.py --check: {' and '.join(stale)} {'differs' if len(stale) == 1 else 'differ'} from "
                     "what the committed results give; run python benchmarks/report.py")
        print("docs/results.md and the README's headline block match the committed results")
        return
    for path, text in outputs.items():
        path.write_text(text)
    print(f"wrote {PAGE.relative_to(ROOT)} and the headline block of {README.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
