"""The code in README.md and docs/*.md runs as written.

The blocks are read with pytest-codeblocks (``pytest_codeblocks.extract_from_file``, the ``[test]``
extra). Every ```python block is executed, and every ```bash / ```sh block is run by bash with
``set -euo pipefail`` (so each of its commands must succeed, not only the last), each in a fresh
temporary folder. That folder links the checkout's top-level entries (scripts/, src/, configs/, ...),
so a block sees the checkout as a user in its root would, and what a block writes (runs/, *.pth)
stays in the temporary folder. ``ic-networks`` is this Python's command (``python -m ic_networks``).

A block that cannot run in CI is marked, on the line right above its fence, in pytest-codeblocks'
syntax, with the reason (required; ``pytest -ra`` prints it):

    <!--pytest.mark.skip(reason="needs a GPU")-->
    ```bash
    ic-networks bench --device cuda
    ```

Reasons in use: "needs a GPU", "needs mmdetection", "needs data: ...", "needs the network",
"compiles ...", "takes minutes: ...", "takes hours: ...". ``pytest.mark.skipif(condition, reason=...)``
works too (``sys``, ``os`` and ``pytest`` are defined for the condition), and so does
``<!--pytest-codeblocks:importorskip(module)-->``. Blocks in another language
(```text, a bare fence) are not run, so a command meant to run must be in a python/bash/sh block:
:func:`test_commands_are_in_runnable_blocks` checks that. A shell block that installs, builds or
runs a long script (pip, cargo, maturin, apt, scripts/setup.sh, compat.sh, ..., torchrun) and is not
marked fails without running.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md"] + sorted((ROOT / "docs").glob("*.md"))
RUNNABLE = ("python", "bash", "sh")
TIMEOUT_S = 600  # per block; the slowest runnable one takes well under a minute

if os.environ.get("CI"):
    import pytest_codeblocks  # CI must run the doc test: a missing tool is an error there
else:
    pytest_codeblocks = pytest.importorskip(
        "pytest_codeblocks", reason='the doc test needs pytest-codeblocks: pip install ".[test]"'
    )

MARK_NAMES = {"sys": sys, "os": os, "pytest": pytest}
FENCE = re.compile(r"^(\s*)(`{3,})(.*)$")
COMMAND = re.compile(
    r"^\s*(?:[A-Z_]+=\S*\s+)*(ic-networks\s|python\s+-m\s+ic_networks\b|torchrun\s.*-m\s+ic_networks\b)"
)
# What installs, builds or runs for long: such a block never runs unmarked (it fails instead).
INSTALLS = re.compile(
    r"\b(pip3?\s+(install|wheel|download)|cargo\s+\w+|maturin\s+\w+|apt(-get)?\s+install|conda\s+install"
    r"|scripts/(setup|setup_mmdet|compat|test|demo|gpu_check|build_wheels)\.sh|torchrun)\b"
)


def _located(mark, where: str):
    """A skip/skipif mark of the docs with the block's place before its reason, so that the skip
    line of ``pytest -ra`` says which block it is; other marks as they are."""
    if mark.name in ("skip", "skipif") and mark.kwargs.get("reason"):
        kwargs = {**mark.kwargs, "reason": f"{where}: {mark.kwargs['reason']}"}
        return getattr(pytest.mark, mark.name)(*mark.args, **kwargs)
    return mark


def _blocks():
    """Every python/bash/sh block of the docs, as a pytest.param with its marks and an id
    ``FILE:LINE``."""
    params = []
    for path in DOCS:
        rel = path.relative_to(ROOT).as_posix()
        for block in pytest_codeblocks.extract_from_file(path):
            if block.syntax not in RUNNABLE:
                continue
            where = f"{rel}:{block.lineno}"
            marks = [_located(eval(mark, dict(MARK_NAMES)), where) for mark in block.marks]  # noqa: S307
            params.append(pytest.param(rel, block, marks=marks, id=where))
    return params


BLOCKS = _blocks()


def _workdir(tmp_path: Path) -> Path:
    """A folder that looks like the checkout's root: links to its top-level entries, except the
    ones a block may write (runs/) and the build and environment folders."""
    work = tmp_path / "work"
    work.mkdir()
    for entry in ROOT.iterdir():
        if entry.name in {"runs", "target", "build", "dist", ".git"} or entry.name.startswith(".venv"):
            continue
        (work / entry.name).symlink_to(entry)
    return work


def _shell_env(tmp_path: Path) -> dict:
    """This Python first on PATH, and ``ic-networks`` the command of this Python's ic_networks."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    script = bindir / "ic-networks"
    script.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m ic_networks "$@"\n')
    script.chmod(0o755)
    (bindir / "python").symlink_to(sys.executable)
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(bindir), os.path.dirname(sys.executable), env.get("PATH", "")])
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)  # the ic_networks this test imports
    env.setdefault("OMP_NUM_THREADS", os.environ.get("IC_TEST_THREADS", "1"))
    env["MPLBACKEND"] = "Agg"
    return env


@pytest.mark.parametrize("doc, block", BLOCKS)
def test_doc_block(doc, block, tmp_path, monkeypatch):
    if block.importorskip:  # <!--pytest-codeblocks:importorskip(module)-->
        pytest.importorskip(block.importorskip)
    work = _workdir(tmp_path)
    where = f"{doc}, the {block.syntax} block at line {block.lineno}"
    if block.syntax == "python":
        monkeypatch.chdir(work)
        namespace = {"__name__": "__main__"}
        try:
            exec(compile(block.code, f"<{doc}:{block.lineno}>", "exec"), namespace)  # noqa: S102
        except Exception as exc:
            raise AssertionError(f"{where} failed: {type(exc).__name__}: {exc}\n{block.code}") from exc
        return
    if INSTALLS.search(block.code):
        pytest.fail(f"{where} installs, builds or runs for long: mark it <!--pytest.mark.skip(reason=...)-->")
    proc = subprocess.run(
        ["bash", "-c", "set -euo pipefail\n" + block.code],
        cwd=work,
        env=_shell_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 0, (
        f"{where} exited with status {proc.returncode}\n{block.code}\n--- stdout\n{proc.stdout[-4000:]}"
        f"\n--- stderr\n{proc.stderr[-4000:]}"
    )


def _fences(path: Path):
    """``(line, info string, code)`` of every fenced block of ``path``, whatever its language."""
    lines = path.read_text(encoding="utf-8").splitlines()
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        ticks, info, start = m.group(2), m.group(3).strip(), i + 1
        j = start
        while j < len(lines) and not lines[j].lstrip().startswith(ticks):
            j += 1
        yield start, info, "\n".join(lines[start:j])
        i = j + 1


def test_commands_are_in_runnable_blocks():
    """A fenced block with an ``ic-networks``/``python -m ic_networks`` command or Python that
    imports ic_networks is tagged python/bash/sh (so test_doc_block runs it), and a runnable block
    that installs or builds something is marked skipped (it must never run here)."""
    problems = []
    skipped = {(p.values[0], p.values[1].lineno) for p in BLOCKS if any(m.name == "skip" for m in p.marks)}
    for path in DOCS:
        rel = path.relative_to(ROOT).as_posix()
        for line, info, code in _fences(path):
            lang = info.split()[0] if info else ""
            runs_something = any(COMMAND.match(ln) for ln in code.splitlines()) or "import ic_networks" in code
            if lang not in RUNNABLE and runs_something:
                problems.append(f"{rel}:{line}: a ```{info} block with commands: tag it bash or python")
            if lang in ("bash", "sh") and INSTALLS.search(code) and (rel, line) not in skipped:
                problems.append(f"{rel}:{line}: installs or builds: mark it <!--pytest.mark.skip(reason=...)-->")
    assert not problems, "\n".join(problems)


def test_every_skip_names_its_reason():
    for p in BLOCKS:
        for mark in p.marks:
            if mark.name in ("skip", "skipif"):
                assert mark.kwargs.get("reason"), f"{p.id}: a skip mark without reason=..."


def test_the_doc_test_sees_the_docs():
    """The blocks this module runs are the docs' blocks: the README's usage example among them."""
    ids = [p.id for p in BLOCKS]
    assert any(i.startswith("README.md:") for i in ids) and any(i.startswith("docs/") for i in ids)
    usage = next(p.values[1] for p in BLOCKS if "WLDLoss" in p.values[1].code and p.values[0] == "README.md")
    assert not usage.marks, "the README usage block runs"
    assert shutil.which("bash"), "bash runs the shell blocks"
