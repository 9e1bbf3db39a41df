"""Regenerate the README's Results section, and ``results/summary.md``, from the committed benchmark outputs.

No figure in the README is typed by hand: every benchmark writes its CSV (the improvement benchmark also its
``results/improvement.md``), and this script copies the figures into the block between ``<!-- results:start -->``
and ``<!-- results:end -->`` and writes the same section as ``results/summary.md``, the one page of every
benchmark's figures. ``--out FILE`` writes the section to FILE instead, leaving the README and the summary alone.

    python benchmarks/report.py [--out FILE]
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "results"
START, END = "<!-- results:start -->", "<!-- results:end -->"


def _rows(name: str) -> list[dict[str, str]]:
    """The rows of ``results/<name>`` (none when the benchmark has not been run)."""
    path = RESULTS / name
    if not path.exists():
        return []
    with path.open() as f:
        return list(csv.DictReader(f))


def _summary(path: Path) -> dict[str, str]:
    """``name -> value`` of a benchmark CSV: its summary rows, or every row of a two-column file."""
    rows = _rows(path.name)
    if rows and set(rows[0]) == {"name", "value"}:
        return {r["name"]: r["value"] for r in rows}
    return {r["name"]: r["value"] for r in rows if r.get("name") and r.get("value")}


def _teacher_check(stem: str, ours: str, reference: str) -> list[str]:
    """The check of one teacher against its reference implementation (``benchmarks/teacher_vs_sb3.py``)."""
    t = _summary(RESULTS / f"{stem}.csv")
    if not t:
        return []
    tasks = sorted({k.split("_")[0] for k in t if k.startswith("task") and k.endswith("_final_return_ours")})
    rows = [f"| {task} final return, ours vs reference | {t[f'{task}_final_return_ours']} vs "
            f"{t[f'{task}_final_return_sb3']} |" for task in tasks]
    return [
        f"### The {ours} teacher against {reference} (`benchmarks/teacher_vs_sb3.py --teacher {ours.lower()}`)",
        "",
        f"Same hyperparameters, same tasks and θ⁰, {t.get('seeds')} seeds, {t.get('env_steps_per_run')} env steps "
        f"per run ([plot](results/{stem}.png)):",
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
        f"![{ours} vs reference](results/{stem}.png)",
        "",
    ]


def _family_cost() -> list[str]:
    """Per-family cost relative to halfcheetah_vel (``benchmarks/family_cost.py``)."""
    rows = _rows("family_cost.csv")
    if not rows:
        return []
    return [
        "### What each task family costs (`benchmarks/family_cost.py`)",
        "",
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
    """The latest run of each reliability benchmark (``benchmarks/stress.py``, ``benchmarks/kill_resume.py``)."""
    rows = _rows("reliability.csv")
    if not rows:
        return []
    latest = {r["benchmark"]: r["date"] for r in rows}  # rows are appended in time order
    return [
        "### Reliability (`benchmarks/stress.py`, `benchmarks/kill_resume.py`)",
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
        "### One operator per family (`benchmarks/families.py`)",
        "",
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
    """How a held-out comparison (``benchmarks/heldout.py``) ran, and its peers' figures."""
    ars = f"; ARS: {first['ars_at_B']}" if first.get("ars_at_B") else ""
    return (f"applied on {first['runs']} from fresh starts, B = {first['budget_env_steps']} env steps. PPO at B on "
            f"the same runs: {first['ppo_at_B']}{ars}; the start: {first['start_at_B']}. IQM return at B with 95% CIs")


def _scaling() -> list[str]:
    """Held-out return at B against the number of training tasks (``benchmarks/scaling.py``)."""
    rows = _rows("scaling.csv")
    if not rows:
        return []
    return [
        "### More training tasks, better held-out returns? (`benchmarks/scaling.py`)",
        "",
        f"One operator per task count N, trained on the first N tasks of one collection "
        f"({rows[0].get('collection') or '32 tasks × 48 PPO updates'}; "
        f"{rows[0].get('settings') or 'the default training settings'}, every other training setting the default), "
        f"{_held_out_runs(rows[0])} ([plot](results/scaling.png)).",
        "",
        "| training tasks N | fitted on (rest validate) | operator at B |",
        "| --- | --- | --- |",
        *(f"| {r['n_tasks']} | {r['train_tasks']} | {r['operator_at_B']} |" for r in rows),
        "",
        "![scaling](results/scaling.png)",
        "",
    ]


def _confirm_choice() -> list[str]:
    """The ablation's top validation rows re-measured on fresh validation tasks (``benchmarks/confirm_choice.py``)."""
    rows = _rows("confirm_choice.csv")
    if not rows:
        return []
    first = rows[0]
    return [
        "### Does the choice hold on more validation tasks? (`benchmarks/confirm_choice.py`)",
        "",
        f"The {len(rows)} ablation rows with the best validation IQM, applied again on fresh validation tasks "
        f"(`{first['tasks']}`, {first['runs']}, fresh starts, B = {first['budget_env_steps']} env steps); the test "
        "tasks play no part. IQM return at B with 95% CIs. **Chosen** (and shipped): of the rows whose IQM here ties "
        "the best one's (overlapping CIs), the one with the lowest `steps_ratio_to_ppo`. "
        f"On the same runs: PPO {first['ppo_at_B']}, ARS {first['ars_at_B']}, the start {first['start_at_B']}.",
        "",
        "| variant | what changed | ablation validation at B | confirmation at B | steps_ratio_to_ppo "
        "| vs the ablation's choice |",
        "| --- | --- | --- | --- | --- | --- |",
        *(f"| `{r['variant']}`{' **chosen**' if r['chosen'] else ''} | {r['changed']} | {r['ablation_val_at_B']} | "
          f"{r['at_B']} | {r['steps_ratio']} | {r['vs_ablation_choice']} |" for r in rows),
        "",
    ]


def _step_geometry() -> list[str]:
    """The teacher's steps against a random walk, and the operator's against the teacher's
    (``benchmarks/step_geometry.py``)."""
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
        "### Why asking for k does not buy k updates (`benchmarks/step_geometry.py`)",
        "",
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
    """Hand-made variants of ARS's update on its own batch, at budget B (``benchmarks/update_rules.py``)."""
    rows = _rows("update_rules.csv")
    if not rows:
        return []
    rules = list(dict.fromkeys(r["rule"] for r in rows))
    row = {(r["split"], r["rule"]): r for r in rows}
    first = rows[0]
    return [
        "### Is there a better update on ARS's batch? (`benchmarks/update_rules.py`)",
        "",
        "An operator fitted to ARS's pairs learns at best ARS's update, since its target is a function of the batch "
        "it reads; it could beat its teacher only where a better update from the same kind of batch exists. ARS at "
        "its defaults (`teacher=ars`) with its step or its batch's split changed, all else as `apply`'s `ars` arm "
        "(the `dirs_32_steps_64_alpha_x1.5` row is the teacher the shipped operator learns from), from "
        f"fresh starts, B = {first['budget']} env steps, {first['tasks']} tasks × {first['seeds']} seeds per set "
        "(validation: `train` tasks 32–35). IQM return at B with 95% CIs. The oracle line search evaluates its "
        "candidates on episodes the budget does not pay for, so it bounds what a learned step-size rule could buy.",
        "",
        "| rule | what changed | validation at B | test at B |",
        "| --- | --- | --- | --- |",
        *(f"| `{rule}` | {row[('val', rule)]['what']} | {row[('val', rule)]['at_B']} | {row[('test', rule)]['at_B']} |"
          for rule in rules),
        "",
    ]


def _privileged_targets() -> list[str]:
    """Operators fitted to ARS's steps and to those of ARS with 8× the directions (``privileged_targets.py``)."""
    rows = _rows("privileged_targets.csv")
    if not rows:
        return []
    first = rows[0]
    return [
        "### Can an operator learn a better teacher's step from ARS's batch? (`benchmarks/privileged_targets.py`)",
        "",
        "ARS at its defaults (`teacher=ars`, 8 directions × 256 steps) with 8× the directions improves faster per "
        "update; an operator that took that step from the batch it reads would beat its teacher. Two operators "
        "fitted on collections of one size "
        f"({first['collection']}, one seed, every training setting the default), one to ARS's steps and one to the "
        "8× ARS's steps from a 16-env subset of each of its batches, applied as `apply` does from fresh starts "
        f"with 16-env batches, B = {first['budget']} env steps, {first['tasks']} tasks × {first['seeds']} seeds per "
        "set (validation: `train` tasks 32–35). The oracle is the 8× teacher itself with its extra env steps not "
        "charged: the headroom. IQM return at B with 95% CIs.",
        "",
        "| method | what | validation at B | test at B | fit minutes |",
        "| --- | --- | --- | --- | --- |",
        *(f"| `{r['method']}` | {r['what']} | {r['val_at_B']} | {r['test_at_B']} | {r['fit_minutes'] or '—'} |"
          for r in rows),
        "",
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
    """One row per operator variant on validation and held-out tasks (``benchmarks/ablations.py``), from
    ``results/<name>`` (see :data:`ABLATION_TABLES`)."""
    rows = _rows(name)
    if not rows:
        return []
    first = rows[0]
    heading, collection = ABLATION_TABLES[name]
    return [
        f"### {heading} (`benchmarks/ablations.py`, `{name}`)",
        "",
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
        "| variant | what changed | validation at B | test at B | steps_ratio_to_ppo (validation / test) "
        "| vs baseline (test) | vs PPO (test) | fit minutes |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
        *(f"| `{r['variant']}`{' **chosen**' if r['chosen'] else ''} | {r['changed']} | {r['val_at_B']} | "
          f"{r['operator_at_B']} | {r.get('val_steps_ratio', '—')} / {r.get('steps_ratio', '—')} | "
          f"{r['vs_baseline']} | **{r['vs_ppo']}** | {r['train_minutes']} |" for r in rows),
        "",
    ]


def _latest_throughput() -> dict[str, str]:
    rows = _rows("throughput.csv")
    if not rows:
        return {}
    last = rows[-1]["date"]
    return {r["name"]: r["value"] for r in rows if r["date"] == last}


def _improvement() -> list[str]:
    """``results/improvement.md`` (written by ``benchmarks/improvement.py``), its headings moved under the section's."""
    path = RESULTS / "improvement.md"
    if not path.exists():
        return []
    lines = []
    for line in path.read_text().splitlines():
        lines.append("##" + line if line.startswith("#") else line)
    figures = [f"![improvement curves, {split}](results/improvement_{split}.png)" for split in ("test", "ood")
               if (RESULTS / f"improvement_{split}.png").exists()]
    return [*lines, "", *figures, ""]


def section() -> str:
    """The Results section's markdown."""
    out: list[str] = []
    for stem, ours, reference in (("teacher_vs_sb3", "PPO", "Stable-Baselines3's PPO"),
                                  ("ars_vs_sb3", "ARS", "sb3-contrib's ARS")):
        out += _teacher_check(stem, ours, reference)
    diversity = _summary(RESULTS / "task_diversity.csv")
    if diversity:
        out += [
            "### Do the tasks really differ? (`benchmarks/task_diversity.py`)",
            "",
            "PPO trained on one task, evaluated on every other task of its family (deterministic mean action). "
            "*Transfer ratio*: the share of a specialist's gain over the untrained policy that policies trained on "
            "other tasks reach (1 = tasks are interchangeable).",
            "",
            "| family | own-task return | return on other tasks | transfer ratio |",
            "| --- | --- | --- | --- |",
        ]
        for fam in ("halfcheetah_vel", "halfcheetah_rand_params"):
            if f"{fam}_own_task_return" in diversity:
                out.append(f"| {fam} | {diversity[f'{fam}_own_task_return']} | "
                           f"{diversity[f'{fam}_other_task_return']} | {diversity[f'{fam}_transfer_ratio']} |")
        out.append("")
    out += _family_cost()
    throughput = _latest_throughput()
    if throughput:
        out += [
            "### Collector throughput (`benchmarks/throughput.py`)",
            "",
            "| figure | value |",
            "| --- | --- |",
            f"| collector (policy inference, rewards, bookkeeping) over a bare `mj_step` loop, 1 worker | "
            f"**{throughput.get('collector_vs_raw_ratio')}×** (target ≥ 0.8×) |",
            f"| 2 workers over 1 worker | **{throughput.get('scaling_1_to_2_workers')}×** (target ≥ 1.8×) |",
            *([f"| 2 Ray workers over 1 (local Ray instance, one task per worker) | "
               f"**{throughput['ray_scaling_1_to_2_workers']}×** |"] if "ray_scaling_1_to_2_workers" in throughput
              else []),
            "",
            "Measured on a 2-core machine, where Ray's own processes (raylet, GCS) run on the same two cores as "
            "the collectors; Ray was not measured on a machine with cores to spare.",
            "",
        ]
    out += _reliability()
    out += _improvement()
    out += _scaling()
    for name in ABLATION_TABLES:
        out += _ablations(name)
    out += _confirm_choice()
    out += _step_geometry()
    out += _update_rules()
    out += _privileged_targets()
    out += _families()
    return "\n".join(out).rstrip() + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="write the section here instead of into README.md")
    args = parser.parse_args()
    if args.out is not None:
        args.out.write_text(section())
        print(f"wrote the Results section to {args.out}")
        return
    readme = ROOT / "README.md"
    text = readme.read_text()
    if START not in text or END not in text:
        raise SystemExit(f"README.md lacks the {START} ... {END} markers")
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    results = section()
    readme.write_text(f"{head}{START}\n{results}{END}{tail}")
    # The summary lies in results/, so its links to results/<file> become <file>.
    (RESULTS / "summary.md").write_text("# Results\n\n" + results.replace("](results/", "]("))
    print(f"updated the Results section of {readme} and {RESULTS / 'summary.md'}")


if __name__ == "__main__":
    main()
