"""A GPU simulator against the CPU collector: MuJoCo Warp's HalfCheetah env-steps/s at 1k-16k worlds, and this
machine's CPU stepping the same model with ``mujoco.batch`` on all its cores.

Whether a GPU simulator backend is worth building rests on this figure, so it is measured where a GPU is lent and
nowhere else: nothing in the package depends on ``mujoco-warp``. Both sides step the ``halfcheetah_vel`` training
task's model (its physics randomization applied) with random controls, ``FRAME_SKIP`` physics steps per env step,
no policy and no rewards: physics against physics. The GPU side captures one env step in a CUDA graph and replays
it; the CPU side is ``mujoco.batch`` with as many threads as the process may use, at 64 and at 1,024 envs. Prints
``name: value`` lines and appends them to ``results/gpu_sim.csv``. ``--device cpu`` runs Warp's CPU backend instead
(a check of this script, not a figure worth keeping: it writes nothing).

    pip install -c constraints.txt -e ".[gpu]"     # mujoco-warp and warp-lang, several hundred MB
    python benchmarks/gpu_sim.py [--worlds 1024 2048 4096 8192 16384] [--steps 200] [--device cuda|cpu]
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import platform
import time
from datetime import UTC, datetime

import mujoco
import mujoco.batch
import numpy as np
from common import RESULTS

from metaimprove.sim.rollout import FRAME_SKIP, cores
from metaimprove.sim.tasks import build_model, get_family

OUT = RESULTS / "gpu_sim.csv"
FIELDS = ["date", "host", "device", "name", "value"]
CPU_WIDTHS = (64, 1024)
"""the CPU batch widths: the ARS teacher's 64 envs and a width where threads have work to share"""


def model() -> mujoco.MjModel:
    """The ``halfcheetah_vel`` training task 0's model."""
    return build_model(get_family("halfcheetah_vel").task("train", 0))


def cpu_rate(m: mujoco.MjModel, width: int, steps: int) -> float:
    """Env-steps/s of ``mujoco.batch`` stepping ``width`` envs on every core this process may use."""
    batch = mujoco.batch.Batch(m, nsim=width, nthread=min(cores(), width))
    ctrl = batch.bind("ctrl")
    rng = np.random.default_rng(0)
    ctrl[:] = rng.uniform(-1, 1, ctrl.shape)
    batch.step(nstep=FRAME_SKIP)  # warm-up
    start = time.perf_counter()
    for _ in range(steps):
        ctrl[:] = rng.uniform(-1, 1, ctrl.shape)
        batch.step(nstep=FRAME_SKIP)
    return width * steps / (time.perf_counter() - start)


def warp_rate(m: mujoco.MjModel, worlds: int, steps: int, device: str) -> float:
    """Env-steps/s of MuJoCo Warp stepping ``worlds`` copies of ``m`` on ``device`` (controls drawn on the device)."""
    import mujoco_warp as mjw
    import warp as wp

    @wp.kernel
    def random_ctrl(seed: int, ctrl: wp.array2d(dtype=float)):  # type: ignore[valid-type]
        world, actuator = wp.tid()
        state = wp.rand_init(seed, world * ctrl.shape[1] + actuator)
        ctrl[world, actuator] = 2.0 * wp.randf(state) - 1.0

    with wp.ScopedDevice(device):
        gpu_model = mjw.put_model(m)
        data = mjw.make_data(m, nworld=worlds)

        def env_step(seed: int) -> None:
            wp.launch(random_ctrl, dim=(worlds, m.nu), inputs=[seed, data.ctrl])
            for _ in range(FRAME_SKIP):
                mjw.step(gpu_model, data)

        env_step(0)  # compiles every kernel
        wp.synchronize()
        graph = None
        if wp.get_device(device).is_cuda:
            with wp.ScopedCapture() as capture:
                env_step(1)
            graph = capture.graph
        start = time.perf_counter()
        for i in range(steps):
            if graph is not None:
                wp.capture_launch(graph)
            else:
                env_step(i)
        wp.synchronize()
        return worlds * steps / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worlds", type=int, nargs="+", default=[1024, 2048, 4096, 8192, 16384])
    parser.add_argument("--steps", type=int, default=200, help="env steps timed per width")
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    args = parser.parse_args()
    if min(args.worlds) < 1 or args.steps < 1:
        raise SystemExit("--worlds and --steps must be >= 1")
    if importlib.util.find_spec("mujoco_warp") is None:
        raise SystemExit("mujoco-warp is not installed: pip install -c constraints.txt -e \".[gpu]\"")
    import warp as wp

    wp.config.quiet = True
    if args.device == "cuda" and wp.get_cuda_device_count() == 0:
        raise SystemExit("no CUDA device here: nothing measured (--device cpu checks this script on Warp's CPU "
                         "backend)")
    m = model()
    figures = {f"cpu_batch_{w}_envs_{cores()}_threads_env_steps_per_s": cpu_rate(m, w, args.steps) for w in CPU_WIDTHS}
    best_cpu = max(figures.values())
    for worlds in args.worlds:
        rate = warp_rate(m, worlds, args.steps, args.device)
        figures[f"warp_{worlds}_worlds_env_steps_per_s"] = rate
        figures[f"warp_{worlds}_worlds_vs_cpu_batch"] = rate / best_cpu
    for name, value in figures.items():
        print(f"{name}: {value:.4g}")
    if args.device == "cpu":
        return
    device = wp.get_device("cuda").name
    new = not OUT.exists()
    with OUT.open("a", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        if new:
            writer.writerow(FIELDS)
        stamp = datetime.now(UTC).isoformat(timespec="seconds")
        for name, value in figures.items():
            writer.writerow([stamp, platform.node(), device, name, f"{value:.4g}"])


if __name__ == "__main__":
    main()
