"""Stress test of the project's multi-process (DDP, gloo) paths: runs each case many times with a
deadline, counts hangs and failures, and prints every worker's stacks on a hang.

    python scripts/stress_ddp.py --runs 200                  # the two-process DDP test case
    python scripts/stress_ddp.py --runs 0 --engine-runs 5    # the engine under torchrun, on tiny data

Cases:
* ``ddp``: the worker of ``tests/test_ddp.py::test_ddp_gloo_two_processes_alpha_zero_no_unused_parameters``
  (IC layers under DDP, gradients checked against one process), spawned with two processes.
* ``trainer``: the worker of ``tests/test_ddp.py::test_ddp_two_processes_gloo`` (the ``Trainer``
  under gloo DDP).
* ``engine``: ``torchrun --nproc-per-node 2 -m ic_networks train`` on a tiny Fashion-MNIST-shaped
  IDX data set written by this script.

Exit status 1 if any run hung or failed.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))


def _naive_shutdown(ok=True):
    """The teardown the project had before the fix (destroy while the DDP wrapper is alive)."""
    import torch.distributed as dist

    dist.destroy_process_group()


def _armed(rank, target, args, dump_dir, old_teardown=False):
    from ic_networks.training import distributed, train_recipe, watchdog

    watchdog.arm(dump_dir)
    if old_teardown:  # control: the stress must catch the original hang
        train_recipe.shutdown_distributed = distributed.shutdown_distributed = _naive_shutdown
    target(rank, *args)


def _spawn_case(name: str, timeout: float, tmp: Path, start_method: str, old_teardown: bool):
    import torch.multiprocessing as mp

    from ic_networks.training import watchdog

    if name == "ddp":
        import test_ddp as t
        from helpers import free_port

        target, args = t._ddp_worker, (2, free_port())
    else:
        import test_ddp as t
        from helpers import free_port

        out = tmp / "out"
        out.mkdir(exist_ok=True)
        target, args = t._trainer_ddp_worker, (2, free_port(), str(out))
    ctx = mp.start_processes(
        _armed, args=(target, args, str(tmp), old_teardown), nprocs=2, join=False, start_method=start_method
    )
    watchdog.join(ctx, timeout, dump_dir=tmp, what=f"{name} workers")


def tiny_fmnist(root: Path, n_train: int = 64, n_test: int = 32) -> Path:
    """A Fashion-MNIST-shaped IDX data set of random images (for plumbing, not accuracy): the
    test suite's ``tiny_fmnist_dir``."""
    from helpers import tiny_fmnist_dir

    root.mkdir(parents=True, exist_ok=True)
    return tiny_fmnist_dir(root, n_train, n_test)


def _engine_case(timeout: float, tmp: Path) -> None:
    from ic_networks.training import watchdog

    data = tiny_fmnist(tmp / "data")
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
        "-m",
        "ic_networks",
        "train",
        "--recipe",
        "scratch-fmnist",
        "--data",
        str(data),
        "--out",
        str(tmp / "run"),
        "--epochs",
        "1",
        "--batch-size",
        "16",
        "--device",
        "cpu",
        "--overwrite",
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    r = watchdog.run(cmd, timeout, dump_dir=tmp, env=env, what="torchrun")
    if r.returncode != 0:
        raise RuntimeError(f"torchrun exited with {r.returncode}:\n{r.stdout[-3000:]}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=200, help="runs of the two-process DDP test case")
    p.add_argument("--trainer-runs", type=int, default=0, help="runs of the Trainer-under-DDP test case")
    p.add_argument("--engine-runs", type=int, default=3, help="runs of the engine under torchrun")
    p.add_argument("--timeout", type=float, default=90.0, help="seconds before a run counts as hung")
    p.add_argument(
        "--start-method",
        choices=("forkserver", "spawn"),
        default="forkserver",
        help="forkserver (default: torch is imported once, ~5x faster per run) or spawn (as the tests)",
    )
    p.add_argument(
        "--old-teardown",
        action="store_true",
        help="control: use the teardown from before the fix (destroy_process_group with DDP alive)",
    )
    args = p.parse_args(argv)
    if args.start_method == "forkserver":
        import multiprocessing

        multiprocessing.set_forkserver_preload(["torch", "torch.distributed", "ic_networks", "helpers", "test_ddp"])

    from ic_networks.training.watchdog import WorkerHang

    plan = [("ddp", args.runs), ("trainer", args.trainer_runs), ("engine", args.engine_runs)]
    totals = {}
    for name, n in plan:
        hung = failed = 0
        times = []
        for i in range(n):
            with tempfile.TemporaryDirectory(prefix=f"stress-{name}-") as tmp:
                t0 = time.monotonic()
                try:
                    if name == "engine":
                        _engine_case(args.timeout, Path(tmp))
                    else:
                        _spawn_case(name, args.timeout, Path(tmp), args.start_method, args.old_teardown)
                except WorkerHang as exc:
                    hung += 1
                    print(f"[{name} {i + 1}/{n}] HUNG\n{exc}", flush=True)
                except Exception as exc:  # noqa: BLE001 -- counted and shown
                    failed += 1
                    print(f"[{name} {i + 1}/{n}] FAILED: {type(exc).__name__}: {str(exc)[-3000:]}", flush=True)
                times.append(time.monotonic() - t0)
            if (i + 1) % 10 == 0 or i + 1 == n:
                print(
                    f"[{name}] {i + 1}/{n} runs: {hung} hung, {failed} failed, "
                    f"median {sorted(times)[len(times) // 2]:.1f} s, max {max(times):.1f} s",
                    flush=True,
                )
        if n:
            totals[name] = (n, hung, failed)
    print("summary: " + ", ".join(f"{k}: {h} hung, {f} failed of {n}" for k, (n, h, f) in totals.items()))
    return 1 if any(h or f for _, h, f in totals.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
