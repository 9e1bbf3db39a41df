"""The ``pipeline`` stage: collect → train → apply → plot in one run directory, at each family's small default sizes.

Why sizes per family: see the design notes (docs/design.md, "Tasks and physics randomization").
"""

from __future__ import annotations

from pathlib import Path

from metaimprove.config import PipelineConfig
from metaimprove.data.collect import CollectConfig, collect
from metaimprove.errors import UserError
from metaimprove.evaluation.apply import apply
from metaimprove.evaluation.plot import PlotConfig, run_plot
from metaimprove.evaluation.protocol import ApplyConfig
from metaimprove.sim.tasks import get_family
from metaimprove.teachers import teacher_class
from metaimprove.training.train import TrainConfig, train


def pipeline_sizes(cfg: PipelineConfig) -> dict[str, int]:
    """The sizes the pipeline runs with (training tasks, teacher updates, held-out tasks, seeds, applications):
    ``cfg``'s where set, else the family's ``pipeline:`` block in ``tasks/<family>.yaml``, else
    :data:`~metaimprove.sim.tasks.PIPELINE_SIZES`."""
    family = get_family(cfg.task.family).pipeline_sizes()
    sizes = {k: v if getattr(cfg, k) is None else getattr(cfg, k) for k, v in family.items()}
    bad = [k for k, v in sizes.items() if v < 1]
    if bad:
        raise UserError(f"pipeline sizes {bad} must be >= 1")
    return sizes


def pipeline(cfg: PipelineConfig) -> None:
    """Run every stage with ``cfg``'s settings; each stage's output is a subdirectory of ``cfg.out``."""
    out = Path(cfg.out)
    dataset = out / "dataset"
    n = pipeline_sizes(cfg)
    print(f"[1/4] collect: {n['n_tasks']} {cfg.task.family} train tasks × {cfg.seeds} seeds × {n['iterations']} "
          f"teacher updates -> {dataset}", flush=True)
    collect(CollectConfig(task=cfg.task, teacher=cfg.teacher, split="train", n_tasks=n["n_tasks"], seeds=cfg.seeds,
                          iterations=n["iterations"], workers=cfg.workers, out=str(dataset)))
    print(f"[2/4] train: {cfg.operator.arch} operator -> {out / 'operator'}", flush=True)
    checkpoint = train(TrainConfig(dataset=str(dataset), out=str(out / "operator"), operator=cfg.operator,
                                   max_epochs=cfg.max_epochs, ask_k=cfg.ask_k))
    # The operator's own teacher is always among its peers, PPO too when it is another.
    teachers = list(dict.fromkeys(["ppo", teacher_class(cfg.teacher).name]))
    print(f"[3/4] apply: {n['test_tasks']} {cfg.test_split} tasks × {n['test_seeds']} seeds × {n['applications']} "
          f"applications, beside {', '.join(t.upper() for t in teachers)}, no update and the nearest training "
          f"checkpoint -> {out / 'apply'}", flush=True)
    apply(ApplyConfig(operator_path=str(checkpoint), out=str(out / "apply"), task=cfg.task, split=cfg.test_split,
                      n_tasks=n["test_tasks"], seeds=n["test_seeds"], applications=n["applications"],
                      methods=["operator", *teachers, "no_update", "nearest"], dataset=str(dataset),
                      workers=cfg.workers))
    print("[4/4] plot", flush=True)
    figure = run_plot(PlotConfig(runs=[str(out / "apply")], out=str(out / "plot")))[0]
    print(f"done: improvement curves in {figure}")
