"""Deadlines for worker processes, with every worker's stacks dumped when one hangs.

A multi-process run (DDP under ``torch.multiprocessing`` or ``torchrun``) that hangs tells nothing
by itself. The helpers here turn a hang into a report:

* in each worker, :func:`arm` registers a ``faulthandler`` dump of every thread's Python stack on
  ``SIGUSR1``, into ``DIR/stacks-<pid>.txt``; ``import ic_networks`` does it by itself in a process
  started with ``$IC_NETWORKS_STACK_DIR`` set (as :func:`run` starts its command);
* in the parent, :func:`join` (for ``torch.multiprocessing`` contexts) and :func:`run` (for a
  command such as ``torchrun``) wait up to a deadline; past it they signal the workers, collect
  the Python stacks and, where ``gdb`` is installed, the native stacks of every thread, kill the
  workers, and raise :class:`WorkerHang` with all of it in the message.

Used by the test suite and ``scripts/stress_ddp.py``; nothing here sleeps to make a test pass.
"""

from __future__ import annotations

import faulthandler
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

__all__ = ["WorkerHang", "arm", "armed_by_env", "join", "run", "stack_report", "DUMP_DIR_ENV"]

DUMP_SIGNAL = signal.SIGUSR1
DUMP_DIR_ENV = "IC_NETWORKS_STACK_DIR"
_armed = []  # keeps the dump files open for the life of the process


class WorkerHang(RuntimeError):
    """Worker processes did not finish before their deadline; the message holds their stacks."""


def arm(dump_dir: os.PathLike | None = None) -> Path | None:
    """In a worker process: on ``SIGUSR1`` write every thread's Python stack to
    ``dump_dir/stacks-<pid>.txt`` (``dump_dir`` defaults to ``$IC_NETWORKS_STACK_DIR``; without
    either, to stderr). Returns the file's path, or None for stderr. Arming again with the same
    file does nothing."""
    dump_dir = dump_dir or os.environ.get(DUMP_DIR_ENV)
    if not dump_dir:
        faulthandler.register(DUMP_SIGNAL, all_threads=True)
        return None
    path = Path(dump_dir) / f"stacks-{os.getpid()}.txt"
    if _armed and _armed[-1].name == str(path):
        return path  # armed already (at import, by $IC_NETWORKS_STACK_DIR): keep that file
    fh = open(path, "w")  # noqa: SIM115 -- must outlive this call: faulthandler writes to its fd
    _armed.append(fh)
    faulthandler.register(DUMP_SIGNAL, file=fh, all_threads=True)
    return path


def armed_by_env() -> bool:
    """Whether this process was started with ``$IC_NETWORKS_STACK_DIR`` set."""
    return bool(os.environ.get(DUMP_DIR_ENV))


def _children(pid: int) -> list[int]:
    """Direct and indirect children of ``pid`` (from /proc; empty where that is unavailable)."""
    out, frontier = [], [pid]
    while frontier:
        p = frontier.pop()
        try:
            kids = Path(f"/proc/{p}/task/{p}/children").read_text().split()
        except OSError:
            kids = []
        for k in map(int, kids):
            out.append(k)
            frontier.append(k)
    return out


def _native_stacks(pid: int, timeout: float = 120.0) -> str:
    gdb = shutil.which("gdb")
    if gdb is None:
        return "(no native stacks: gdb is not installed)"
    try:
        r = subprocess.run(
            [gdb, "-p", str(pid), "-batch", "-nx", "-ex", "thread apply all bt 25"],
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except (subprocess.TimeoutExpired, OSError) as exc:
        return f"(gdb failed: {exc})"
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith(("Thread ", "#"))]
    return "\n".join(lines) or r.stderr.strip()[-2000:]


def stack_report(pids: Iterable[int], dump_dir: os.PathLike | None = None, native: bool = True) -> str:
    """Signals each live process in ``pids`` to dump its Python stacks (see :func:`arm`), and
    returns a report with those stacks and, with ``native=True``, gdb's backtrace of every thread."""
    pids = [p for p in pids if _alive(p)]
    for p in pids:
        if _catches(p, DUMP_SIGNAL):  # uncaught, SIGUSR1 would kill the process before gdb looks
            try:
                os.kill(p, DUMP_SIGNAL)
            except OSError:
                pass
    time.sleep(1.0)  # let faulthandler write (it runs in the signal handler, at once)
    parts = []
    for p in pids:
        parts.append(f"===== process {p} =====")
        if dump_dir is not None:
            f = Path(dump_dir) / f"stacks-{p}.txt"
            if f.is_file():
                parts.append("--- Python stacks ---\n" + f.read_text()[-6000:])
        if native:
            parts.append("--- native stacks ---\n" + _native_stacks(p)[-12000:])
    return "\n".join(parts) if parts else "(no live worker left to inspect)"


def _catches(pid: int, sig: int) -> bool:
    """Whether ``pid`` has a handler for ``sig`` (the SigCgt mask in /proc/PID/status)."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("SigCgt:"):
                    return bool(int(line.split()[1], 16) >> (int(sig) - 1) & 1)
    except (OSError, ValueError):
        pass
    return False


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def join(ctx, timeout: float, dump_dir: os.PathLike | None = None, what: str = "workers") -> None:
    """Waits for a ``torch.multiprocessing`` context (``start_processes(..., join=False)``) up to
    ``timeout`` seconds. A worker's exception is re-raised as ``ctx.join`` raises it. Past the
    deadline the workers' stacks are collected, the workers killed, and :class:`WorkerHang` raised."""
    deadline = time.monotonic() + timeout
    try:
        while not ctx.join(timeout=0.5):
            if time.monotonic() > deadline:
                pids = [p.pid for p in ctx.processes if p.is_alive()]
                report = stack_report(pids, dump_dir)
                raise WorkerHang(f"{what} still running after {timeout:.0f} s (alive: {pids})\n{report}")
    finally:
        for p in ctx.processes:
            if p.is_alive():
                p.kill()
                p.join(5)


def run(
    cmd: Sequence[str],
    timeout: float,
    dump_dir: os.PathLike | None = None,
    env=None,
    cwd=None,
    what: str | None = None,
    merge_stderr: bool = True,
) -> subprocess.CompletedProcess:
    """Runs ``cmd`` (for example ``torchrun ...``) with a deadline; its output is captured
    (stderr into stdout unless ``merge_stderr=False``). Past the deadline the stacks of the command
    and all its descendants are collected (a Python child dumps its own stacks when it called
    :func:`arm`, or runs with ``python -X faulthandler``), the process group is killed, and
    :class:`WorkerHang` raised."""
    env = dict(os.environ if env is None else env)
    if dump_dir is not None:
        env[DUMP_DIR_ENV] = str(dump_dir)
    err = subprocess.STDOUT if merge_stderr else subprocess.PIPE
    proc = subprocess.Popen(
        list(cmd), stdout=subprocess.PIPE, stderr=err, text=True, env=env, cwd=cwd, start_new_session=True
    )
    try:
        out, errs = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired as timed_out:
        pids = [proc.pid] + _children(proc.pid)
        report = stack_report(pids, dump_dir)
        _kill_group(proc)
        out, errs = proc.communicate()
        tail = (out or "")[-4000:] + ("\n--- stderr ---\n" + errs[-4000:] if errs else "")
        raise WorkerHang(
            f"{what or cmd[0]} still running after {timeout:.0f} s\n{report}\n--- output ---\n{tail}"
        ) from timed_out
    finally:
        if proc.poll() is None:
            _kill_group(proc)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, errs)


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except OSError:
        proc.kill()
    proc.wait(10)
