"""The module dependency rule of the Rust core (docs/architecture.md), checked from the source.

Every `crate::` path in src/**/*.rs (in `use` lines, grouped `use crate::{...}` included, and inline
paths) names the top-level module it reaches; that module must be one the file's room may import.
Inside cpu/ the kernel files import each other and dense.rs, never their mod.rs.
"""

import re
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src"

LEAVES = {"error", "geometry", "types", "dtype", "layout", "c_abi"}
# The crate's macros, by the module that defines them.
MACROS = {
    "value_err": "error",
    "type_err": "error",
    "dispatch_float": "dtype",
    "to_py": "lib",
    "multiversion": "cpu",
}
ANY = None  # the bindings: lib.rs and the modules it registers with Python

# room (top-level module name) -> the modules it may import besides the leaves and itself
RULE = {
    "lib": ANY,
    "py_cuda_fused": ANY,
    "ffi": {"ic_conv", "boxsum", "wld", "validate"},
    "ic_conv": {"cpu", "cuda", "libtorch", "validate", "aten", "backend"},
    "boxsum": {"cpu", "libtorch"},
    "wld": {"aten"},
    "neuron": set(),
    "cuda": {"libtorch", "aten", "backend"},
    "cpu": {"libtorch", "aten", "backend"},
    "libtorch": {"aten", "backend"},
    "validate": set(),
    "aten": set(),
    "backend": set(),
    # leaves import at most error.rs
    "error": set(),
    "geometry": set(),
    "types": set(),
    "dtype": set(),
    "layout": set(),
    "c_abi": set(),
}

CRATE_PATH = re.compile(r"\bcrate::(\{[^}]*\}|\w+)")


def room(path: Path) -> str:
    rel = path.relative_to(SRC)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def first_segments(target: str) -> list[str]:
    """`a` -> [a]; `{a, b::c}` -> [a, b]."""
    parts = target.strip("{}").split(",") if target.startswith("{") else [target]
    return [n for n in (p.strip().split("::")[0] for p in parts) if n]


def imported(text: str) -> set[str]:
    """The top-level modules that the `crate::` paths in `text` reach."""
    return {MACROS.get(n, n) for m in CRATE_PATH.finditer(text) for n in first_segments(m.group(1))}


def rust_files():
    files = sorted(SRC.rglob("*.rs"))
    assert files, SRC
    return files


def test_every_room_is_in_the_rule():
    rooms = {room(f) for f in rust_files()}
    assert rooms <= set(RULE), f"add these modules to the rule (and docs/architecture.md): {rooms - set(RULE)}"


def test_modules_import_only_what_the_rule_allows():
    bad = []
    for f in rust_files():
        r = room(f)
        allowed = RULE[r]
        if allowed is ANY:
            continue
        leaf_room = r in LEAVES
        for target in imported(f.read_text()) - {r}:
            ok = target == "error" if leaf_room else (target in LEAVES or target in allowed)
            if not ok:
                bad.append(f"{f.relative_to(SRC)} -> {target}")
    assert not bad, "imports against the dependency rule (docs/architecture.md):\n" + "\n".join(bad)


def test_cpu_kernel_files_do_not_import_their_mod():
    cpu = SRC / "cpu"
    siblings = {f.stem for f in cpu.glob("*.rs")} - {"mod"}
    bad = []
    for f in cpu.glob("*.rs"):
        if f.stem == "mod":
            continue
        for line in f.read_text().splitlines():
            m = re.match(r"use super::(\{[^}]*\}|\w+)", line)  # top-level lines only (not `mod tests`)
            if not m:
                continue
            bad += [f"{f.name}: super::{n}" for n in first_segments(m.group(1)) if n not in siblings]
    assert not bad, bad


def test_the_parser_sees_grouped_and_inline_paths():
    text = "use crate::{boxsum, wld};\nuse crate::error::Error;\nlet s = crate::aten::f(); use crate::value_err;"
    assert imported(text) == {"boxsum", "wld", "error", "aten"}
