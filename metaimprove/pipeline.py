"""The whole job on a small default: collect → train → apply → plot, in one run directory."""

from __future__ import annotations

from pathlib import Path

from metaimprove.apply import ApplyConfig, apply
from metaimprove.collect import CollectConfig, collect
from metaimprove.config import PipelineConfig
from metaimprove.plot import PlotConfig, run_plot
from metaimprove.train import TrainConfig, train


def pipeline(cfg: PipelineConfig) -> None:
    """Run every stage with ``cfg``'s settings; each stage's output is a subdirectory of ``cfg.out``."""
    out = Path(cfg.out)
    dataset = out / "dataset"
    print(f"[1/4] collect: {cfg.n_tasks} {cfg.task.family} train tasks × {cfg.seeds} seeds × {cfg.iterations} "
          f"teacher updates -> {dataset}", flush=True)
    collect(CollectConfig(task=cfg.task, teacher=cfg.teacher, split="train", n_tasks=cfg.n_tasks, seeds=cfg.seeds,
                          iterations=cfg.iterations, workers=cfg.workers, out=str(dataset)))
    print(f"[2/4] train: {cfg.operator.arch} operator -> {out / 'operator'}", flush=True)
    checkpoint = train(TrainConfig(dataset=str(dataset), out=str(out / "operator"), operator=cfg.operator,
                                   max_epochs=cfg.max_epochs))
    print(f"[3/4] apply: {cfg.test_tasks} {cfg.test_split} tasks × {cfg.test_seeds} seeds × {cfg.applications} "
          f"applications, beside PPO, no update and the nearest training checkpoint -> {out / 'apply'}", flush=True)
    apply(ApplyConfig(operator_path=str(checkpoint), out=str(out / "apply"), task=cfg.task, split=cfg.test_split,
                      n_tasks=cfg.test_tasks, seeds=cfg.test_seeds, applications=cfg.applications,
                      methods=["operator", "ppo", "no_update", "nearest"], dataset=str(dataset),
                      workers=cfg.workers))
    print("[4/4] plot", flush=True)
    figure = run_plot(PlotConfig(runs=[str(out / "apply")], out=str(out / "plot")))[0]
    print(f"done: improvement curves in {figure}")
