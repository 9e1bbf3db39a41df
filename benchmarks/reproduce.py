"""Does the shipped operator come back bit for bit from its shipped configs?

Trains ``metaimprove train`` with ``results/operators/<family>.train.yaml`` on the collection
``<family>.collect.yaml`` describes, and compares the checkpoint with the shipped one: the SHA-256 of its tensors
(recorded in the JSON beside each) and the ``.safetensors`` bytes. The collection is not in git; the dataset given
must have been collected with exactly the shipped collect settings (its ``config.yaml`` is compared), and
``benchmarks/improvement.py``'s docstring gives the command that recreates it (collection is deterministic and
worker-count independent, so a recreated one is the one the operator was trained on). Writes a row per family and
CPU to ``results/reproduce.csv`` and prints ``shipped_reproduces_<family>: true|false``. About 5 minutes on 2 cores.

Bit for bit holds only on a CPU on which torch runs its kernels with the instruction set of the machine that
collected and fitted the shipped operator (``torch.backends.cpu.get_cpu_capability()``, the row's
``cpu_capability``): vectorized kernels of different widths round differently, and a rollout amplifies the last bit
into a different trajectory. Measured on one AVX2 machine: ``halfcheetah_vel``'s collection under
``ATEN_CPU_CAPABILITY=default`` differs from the same collection under AVX2 from its first shard on, and its AVX2
collection differs from the one the shipped operator was fitted to. The machine that produced the rows before this
column existed did not record its capability (``unrecorded``).

    python benchmarks/reproduce.py [--family halfcheetah_vel] [--dataset runs/ars32d64s_x48] [--work DIR]
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from pathlib import Path

import torch
import yaml
from common import DATASET, OPERATORS, RESULTS, ROOT, dataset_or_exit
from omegaconf import OmegaConf

from metaimprove.storage import atomic_write_csv
from metaimprove.training.train import TrainConfig, train

OUT = RESULTS / "reproduce.csv"


def train_config(family: str, dataset: Path, out: Path) -> TrainConfig:
    """The shipped ``<family>.train.yaml`` as a :class:`TrainConfig` fitting ``dataset`` into ``out``."""
    settings = yaml.safe_load((OPERATORS / f"{family}.train.yaml").read_text())
    merged = OmegaConf.merge(OmegaConf.structured(TrainConfig), settings, {"dataset": str(dataset), "out": str(out)})
    return OmegaConf.to_object(merged)  # type: ignore[return-value]


def tensors_sha256(checkpoint: Path) -> str:
    """The tensors' SHA-256 the checkpoint's JSON records."""
    return json.loads(checkpoint.with_suffix(".json").read_text())["tensors_sha256"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", default="halfcheetah_vel", help="a shipped operator with a <family>.train.yaml")
    parser.add_argument("--dataset", type=Path, default=DATASET, help="its collection, from <family>.collect.yaml")
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "reproduce")
    args = parser.parse_args()
    shipped = OPERATORS / f"{args.family}.safetensors"
    if not (OPERATORS / f"{args.family}.train.yaml").exists():
        known = sorted(p.name.removesuffix(".train.yaml") for p in OPERATORS.glob("*.train.yaml"))
        raise SystemExit(f"--family {args.family}: no results/operators/{args.family}.train.yaml; "
                         f"shipped with training settings: {', '.join(known)}")
    dataset = dataset_or_exit(args.dataset)
    collect = yaml.safe_load((OPERATORS / f"{args.family}.collect.yaml").read_text())
    if yaml.safe_load((dataset / "config.yaml").read_text()) != collect:
        raise SystemExit(f"{dataset} was not collected with results/operators/{args.family}.collect.yaml's "
                         "settings; pass --dataset with a collection made from them")
    torch.set_num_threads(1)  # the CLI's setting, under which the shipped operator was trained
    out = args.work / args.family
    began = time.perf_counter()
    trained = train(train_config(args.family, dataset, out))
    same_tensors = tensors_sha256(trained) == tensors_sha256(shipped)
    same_bytes = trained.read_bytes() == shipped.read_bytes()
    capability = torch.backends.cpu.get_cpu_capability()
    row = {"family": args.family, "cpu_capability": capability, "shipped_tensors_sha256": tensors_sha256(shipped),
           "trained_tensors_sha256": tensors_sha256(trained), "same_tensors": same_tensors,
           "same_safetensors_bytes": same_bytes, "minutes": round((time.perf_counter() - began) / 60, 2)}
    rows = [row]
    if OUT.exists():
        with OUT.open() as f:
            key = (args.family, capability)
            rows = [r for r in csv.DictReader(f) if (r["family"], r["cpu_capability"]) != key] + rows
    atomic_write_csv(OUT, list(row), rows)
    print(f"shipped_reproduces_{args.family}: {str(same_tensors and same_bytes).lower()}")


if __name__ == "__main__":
    main()
