"""Installing the wheel beside an existing torch, and the import-time check of the torch it was built for.

The wheel is $IC_TEST_WHEEL (scripts/test.sh and scripts/compat.sh build it into dist/torch-X.Y/ with
scripts/lib.sh's build_release_wheel) or built here with `maturin build`. It goes into fresh venvs that
see packages of the current environment through a .pth file, with no index: pip can only keep the torch
that is there, and nothing downloads.

* The release wheel: `pip install --no-index -f dist/torch-X.Y ic-networks` into a venv that has only
  torch, torchvision and ic-networks' other dependencies (plus pytest to run the core tests), with every
  compiler hidden from PATH; then the core tests run against that install.
* Beside another torch minor pip refuses the wheel with a resolver error naming torch, and leaves that
  torch alone: on a stand-in torch of another minor (metadata only) in every run, and on a real one with
  $IC_TEST_OTHER_TORCH_SITE (a site-packages holding another torch minor; scripts/compat.sh sets it),
  where the import of a force-installed wheel must also fail with the mismatch error.
* With $IC_TEST_SDIST=1 (scripts/test.sh, once per CI run) the sdist builds from source and imports.
"""

import glob
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import textwrap
import time
import zipfile
from importlib import metadata
from pathlib import Path

import pytest
import torch
from packaging.requirements import Requirement

from ic_networks import _torch_check

ROOT = Path(__file__).resolve().parents[1]


# --- the check itself, on stamp files (no build) -------------------------------------------------


def _fake_core(tmp_path, version):
    path = tmp_path / "_core.so"
    path.write_bytes(b"\x7fELF junk\0" + _torch_check.MARKER + version.encode() + b"\0more junk")
    return str(path)


def test_stamp_is_read_from_the_file(tmp_path):
    assert _torch_check.read_stamp(_fake_core(tmp_path, "2.14.1+cu130")) == "2.14.1+cu130"
    (tmp_path / "plain.so").write_bytes(b"no stamp here")
    assert _torch_check.read_stamp(str(tmp_path / "plain.so")) is None


def test_same_minor_passes_and_other_minor_raises(tmp_path):
    assert _torch_check.check(_fake_core(tmp_path, "2.15.0+cpu"), running="2.15.1+cu132") == "2.15.0+cpu"
    with pytest.raises(ImportError) as err:
        _torch_check.check(_fake_core(tmp_path, "2.13.0+cu130"), running="2.15.0+cu132")
    msg = str(err.value)
    assert "2.13.0+cu130" in msg and "2.15.0+cu132" in msg
    assert _torch_check.REBUILD_COMMAND in msg
    assert "docs/install.md" in msg


def test_loaded_core_reports_the_running_torch():
    import ic_networks

    built = ic_networks._core.built_torch_version()
    assert _torch_check.major_minor(built) == _torch_check.major_minor(torch.__version__)
    core = _torch_check.core_path()
    assert core is not None and _torch_check.read_stamp(core) == built


# --- the wheel in a fresh venv ------------------------------------------------------------------


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    if os.environ.get("IC_TEST_WHEEL"):
        return Path(os.environ["IC_TEST_WHEEL"]).resolve()
    if shutil.which("cargo") is None:
        pytest.skip("cargo is needed to build the wheel (or set IC_TEST_WHEEL)")
    out = tmp_path_factory.mktemp("wheel")
    cmd = [sys.executable, "-m", "maturin", "build", "--release", "--out", str(out)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    (found,) = glob.glob(str(out / "ic_networks-*.whl"))
    return Path(found)


def _venv_beside(tmp_path, site_packages):
    """A fresh venv whose sys.path ends with `site_packages`: its torch, its other deps, its pip.

    No pip or setuptools of its own (they would shadow newer ones that torch requires)."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    py = venv / "bin" / "python"
    purelib = subprocess.run(
        [str(py), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    Path(purelib, "zz_outer_env.pth").write_text(str(site_packages) + "\n")
    return py


def _run(py, code, env=None):
    # Away from the repository, so that ./python and ./tests are not on sys.path.
    return subprocess.run(
        [str(py), "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        cwd="/",
        env=env or {**os.environ, "PYTHONPATH": ""},
    )


def _pip(py, *args, env=None):
    proc = subprocess.run(
        [str(py), "-m", "pip", *args], capture_output=True, text=True, env=env or {**os.environ, "PYTHONPATH": ""}
    )
    assert proc.returncode == 0, f"pip {' '.join(args)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def _pip_install(py, wheel):
    """Install the wheel into the fresh venv (--force-reinstall: an ic-networks of the same version in
    the outer environment would otherwise count as installed), with no index: nothing downloads."""
    return _pip(py, "install", "--no-index", "--no-deps", "--force-reinstall", str(wheel))


def _installed_core(py, tmp_path):
    out = _run(py, "import importlib.util as u; print(u.find_spec('ic_networks').submodule_search_locations[0])")
    assert out.returncode == 0, out.stderr
    (core,) = glob.glob(os.path.join(out.stdout.strip(), "_core*.so"))
    # Never touch the environment the tests run in.
    assert Path(core).resolve().is_relative_to(Path(tmp_path).resolve()), f"{core} is not in the fresh venv"
    return Path(core)


# --- a site with only some distributions, and a PATH without compilers --------------------------


def _closure(roots, site):
    """The distributions in `site` that `roots` need, their dependencies (and those of the extras asked
    for) included, markers evaluated."""
    key = lambda name: re.sub(r"[-_.]+", "-", name).lower()  # noqa: E731
    dists = {
        key(metadata.Distribution.at(p).metadata["Name"]): metadata.Distribution.at(p)
        for p in Path(site).glob("*.dist-info")
    }
    found, seen, todo = {}, set(), [Requirement(r) for r in roots]
    while todo:
        req = todo.pop()
        name = key(req.name)
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue
        if name not in dists:
            raise AssertionError(f"{name} (needed for {roots}) is not installed in {site}")
        found[name] = dists[name]
        for extra in {""} | set(req.extras):
            if (name, extra) in seen:
                continue
            seen.add((name, extra))
            for dep in map(Requirement, dists[name].requires or []):
                if dep.marker is None or dep.marker.evaluate({"extra": extra}):
                    dep.marker = None
                    todo.append(dep)
    return found


def _site_with(tmp_path, site, roots, leave_out=()):
    """A folder of symlinks to the files of `roots` and their dependencies in `site` (top-level entries)."""
    farm = tmp_path / "site"
    farm.mkdir()
    for name, dist in _closure(roots, site).items():
        if name in leave_out:
            continue
        tops = {Path(f).parts[0] for f in dist.files or [] if not str(f).startswith("..")}
        tops.add(Path(dist._path).name)
        for top in tops:
            if (Path(site) / top).exists() and not (farm / top).exists():
                (farm / top).symlink_to(Path(site) / top)
    return farm


COMPILERS = [
    "cargo",
    "rustc",
    "rustup",
    "maturin",
    "cc",
    "c++",
    "gcc",
    "g++",
    "clang",
    "clang++",
    "ld",
    "gcc-12",
    "g++-12",
    "x86_64-linux-gnu-gcc",
    "x86_64-linux-gnu-g++",
    "x86_64-linux-gnu-gcc-12",
    "x86_64-linux-gnu-g++-12",
]


def _env_without_compilers(tmp_path, py):
    """An environment whose PATH finds, before anything else, stand-ins for every compiler and Rust tool
    that record their call and fail; returns it and the file the calls go to."""
    stubs, calls = tmp_path / "no-compilers", tmp_path / "compiler-calls.log"
    stubs.mkdir()
    for name in COMPILERS:
        stub = stubs / name
        # `--version` is how pip probes rustc for its user agent: not a compile, not recorded
        stub.write_text(f'#!/bin/sh\n[ "$1" = --version ] || echo {name} "$@" >> {calls}\nexit 127\n')
        stub.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k not in ("CC", "CXX", "CARGO", "RUSTC", "PYTHONPATH")}
    env["PATH"] = f"{Path(py).parent}{os.pathsep}{stubs}{os.pathsep}{env['PATH']}"
    return env, calls


OP_CHECK = """
    import torch, ic_networks as icn
    from ic_networks.reference import ic_conv2d_reference
    g = torch.Generator().manual_seed(0)
    x, w = (torch.randn(s, generator=g, dtype=torch.float64) for s in [(2, 3, 9, 9), (4, 3, 3, 3)])
    wp, b1 = torch.randn(4, 3, 1, 1, dtype=torch.float64), torch.randn(4, dtype=torch.float64)
    args = (x, w, wp, b1, torch.tensor(0.7, dtype=torch.float64), None, 2, 1)
    torch.testing.assert_close(icn.ic_conv2d(*args), ic_conv2d_reference(*args))
    print(icn.__file__)
    print(torch.__version__, icn._core.built_torch_version())
"""


def _check_op_and_torch(py, tmp_path, **kw):
    out = _run(py, OP_CHECK, **kw)
    assert out.returncode == 0, out.stderr
    path, versions = out.stdout.split("\n")[:2]
    assert path.startswith(str(tmp_path)), f"imported {path}, not the install in the fresh venv"
    running, built = versions.split()
    assert running == torch.__version__, "the install changed torch"
    assert _torch_check.major_minor(built) == _torch_check.major_minor(running)


def _torch_version_in(py):
    out = _run(py, "from importlib.metadata import version; print(version('torch'))")
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


# --- the release wheel ----------------------------------------------------------------------------

# ic-networks' dependencies, and pip (the fresh venvs have none of their own)
RUNTIME = ["torch", "torchvision", "numpy", "tqdm", "matplotlib", "pip"]
CORE_TESTS = ["tests/test_ic_conv.py"]


def test_wheel_folder_installs_without_a_compiler_and_passes_the_core_tests(tmp_path, wheel):
    site = _site_with(tmp_path, sysconfig.get_path("purelib"), RUNTIME + ["pytest", "hypothesis"])
    py = _venv_beside(tmp_path, site)
    env, calls = _env_without_compilers(tmp_path, py)
    assert subprocess.run(["gcc", "--version"], env=env, capture_output=True).returncode == 127, "gcc is not hidden"
    start = time.monotonic()
    proc = _pip(py, "install", "--no-index", "-f", str(wheel.parent), "ic-networks", env=env)
    took = time.monotonic() - start
    print(f"pip install --no-index -f {wheel.parent} ic-networks: {took:.1f} s")
    assert not calls.exists(), f"the install ran a compiler: {calls.read_text()}"
    assert "Successfully installed ic-networks-" in proc.stdout, proc.stdout
    assert not re.search(r"Uninstalling torch|Successfully installed.*\btorch-", proc.stdout), proc.stdout
    assert took < 60, f"the install took {took:.0f} s"
    assert _installed_core(py, tmp_path)
    _check_op_and_torch(py, tmp_path, env=env)
    tests = subprocess.run(
        [str(py), "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *CORE_TESTS],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    assert tests.returncode == 0, tests.stdout[-4000:] + tests.stderr[-2000:]
    assert not calls.exists(), f"the tests ran a compiler: {calls.read_text()}"


def _stand_in_torch(site, version):
    """Metadata of a torch distribution (no code): what pip's resolver sees of an installed torch."""
    info = site / f"torch-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: torch\nVersion: {version}\n")
    (info / "INSTALLER").write_text("pip\n")
    (info / "RECORD").write_text("")
    return info


def _refused(py, folder, env=None):
    """pip install from the folder must fail in the resolver, naming torch, and touch no torch."""
    before = _torch_version_in(py)
    proc = subprocess.run(
        [str(py), "-m", "pip", "install", "--no-index", "-f", str(folder), "ic-networks"],
        capture_output=True,
        text=True,
        env=env or {**os.environ, "PYTHONPATH": ""},
    )
    assert proc.returncode != 0, proc.stdout
    assert re.search(r"(satisfies the requirement|matching distribution found for) torch", proc.stderr), proc.stderr
    assert "Uninstalling torch" not in proc.stdout
    assert _torch_version_in(py) == before
    return proc.stderr


def _wheel_torch_minor(wheel):
    m = re.search(r"\+torch(\d+)\.(\d+)-", wheel.name)
    if not m:
        pytest.skip(f"{wheel.name} is not a release wheel (scripts/lib.sh build_release_wheel makes one)")
    return int(m.group(1)), int(m.group(2))


def test_wheel_folder_is_refused_beside_another_torch_minor_simulated(tmp_path, wheel):
    major, minor = _wheel_torch_minor(wheel)
    site = _site_with(tmp_path, sysconfig.get_path("purelib"), RUNTIME, leave_out={"torch", "torchvision"})
    _stand_in_torch(site, f"{major}.{minor - 1}.0")
    py = _venv_beside(tmp_path, site)
    err = _refused(py, wheel.parent)
    assert f"torch<{major}.{minor + 1},>={major}.{minor}" in err


@pytest.mark.skipif(
    not os.environ.get("IC_TEST_OTHER_TORCH_SITE"),
    reason="set IC_TEST_OTHER_TORCH_SITE to a site-packages with another torch (scripts/compat.sh does)",
)
def test_wheel_folder_is_refused_beside_another_real_torch_minor(tmp_path, wheel):
    _wheel_torch_minor(wheel)
    other_site = os.environ["IC_TEST_OTHER_TORCH_SITE"]
    py = _venv_beside(tmp_path, _site_with(tmp_path, other_site, RUNTIME))
    other = _torch_version_in(py)
    if _torch_check.major_minor(other) == _torch_check.major_minor(torch.__version__):
        pytest.skip(f"{other_site} has torch {other}, the same minor as this one")
    _refused(py, wheel.parent)


def test_release_wheel_is_manylinux_2_28_and_pins_its_torch(wheel):
    major, minor = _wheel_torch_minor(wheel)
    assert wheel.name.endswith("-manylinux_2_28_x86_64.whl"), wheel.name
    assert _torch_check.major_minor(torch.__version__) == (major, minor)
    with zipfile.ZipFile(wheel) as z:
        (meta,) = [n for n in z.namelist() if n.endswith(".dist-info/METADATA")]
        text = z.read(meta).decode()
        (core,) = [n for n in z.namelist() if re.search(r"/_core[^/]*\.so$", n)]
        names = z.namelist()
    assert f"Requires-Dist: torch>={major}.{minor},<{major}.{minor + 1}" in text, text[:2000]
    assert re.search(rf"^Version: \d+\.\d+\.\d+\+torch{major}\.{minor}$", text, re.M)
    assert not [n for n in names if re.search(r"lib(torch|c10|gomp)[^/]*\.so", n)], "torch's libraries were bundled"
    if importlib.util.find_spec("auditwheel"):  # scripts/lib.sh installs it to repair the wheel
        # the core loads torch's libgomp (its run path, torch/lib): auditwheel must judge that one,
        # not a newer libgomp of the build machine's compiler
        env = {**os.environ, "LD_LIBRARY_PATH": os.path.join(os.path.dirname(torch.__file__), "lib")}
        show = subprocess.run(
            [sys.executable, "-m", "auditwheel", "show", str(wheel)], capture_output=True, text=True, env=env
        )
        assert 'constrains the platform tag to "manylinux_2_28_x86_64"' in " ".join(show.stdout.split()), show.stdout


@pytest.mark.skipif(
    not os.environ.get("IC_TEST_SDIST"),
    reason="set IC_TEST_SDIST=1 to build the sdist from source (a Rust build; scripts/test.sh does)",
)
def test_sdist_builds_from_source_and_imports(tmp_path):
    out = tmp_path / "sdist"
    proc = subprocess.run(
        [sys.executable, "-m", "maturin", "sdist", "--out", str(out)], cwd=ROOT, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (sdist,) = out.glob("ic_networks-*.tar.gz")
    py = _venv_beside(tmp_path, sysconfig.get_path("purelib"))
    # The build runs in the fresh venv (its python first on PATH) and reuses the repository's build of
    # the dependencies, tch's C++ wrapper above all (minutes): torch-sys rebuilds it when its
    # environment changes, so VIRTUAL_ENV stays the outer environment's (the same torch) and
    # CPLUS_INCLUDE_PATH (which .cargo/config.toml sets relative to the source tree) the checkout's
    # copy of the sdist's src/cpp/compat.
    env = {
        **os.environ,
        "PYTHONPATH": "",
        "PATH": f"{py.parent}{os.pathsep}{os.environ['PATH']}",
        "CPLUS_INCLUDE_PATH": str(ROOT / "src" / "cpp" / "compat"),
        "CARGO_TARGET_DIR": os.environ.get("CARGO_TARGET_DIR", str(ROOT / "target")),
    }
    _pip(py, "install", "--no-index", "--no-deps", "--no-build-isolation", "--force-reinstall", str(sdist), env=env)
    assert _installed_core(py, tmp_path)
    _check_op_and_torch(py, tmp_path)


def test_wheel_beside_another_torch_minor_fails_clearly_simulated(tmp_path, wheel):
    """The stamp of the installed library is rewritten to a torch minor that is not installed."""
    py = _venv_beside(tmp_path, sysconfig.get_path("purelib"))
    _pip_install(py, wheel)
    core = _installed_core(py, tmp_path)
    data = core.read_bytes()
    at = data.index(_torch_check.MARKER) + len(_torch_check.MARKER)
    old = data[at : data.index(b"\0", at)]
    fake = b"2.1.0"
    core.write_bytes(data[:at] + fake + b"\0" * (len(old) - len(fake)) + data[at + len(old) :])
    out = _run(py, "import ic_networks")
    assert out.returncode != 0
    assert "ImportError" in out.stderr
    assert "built against torch 2.1.0" in out.stderr and torch.__version__ in out.stderr
    assert _torch_check.REBUILD_COMMAND in out.stderr


def test_torch_check_runs_before_the_core_is_loaded(tmp_path):
    """A core built against another torch minor usually cannot even be loaded (undefined symbols), so
    the check must read its stamp before `_core` is imported: here the core is a file that no loader
    accepts, stamped with another torch, and the import must still end in the check's ImportError."""
    import ic_networks

    pkg = tmp_path / "ic_networks"
    shutil.copytree(Path(ic_networks.__file__).parent, pkg, ignore=shutil.ignore_patterns("__pycache__", "_core*"))
    suffix = Path(_torch_check.core_path()).name[len("_core") :]
    (pkg / f"_core{suffix}").write_bytes(b"not a shared library " + _torch_check.MARKER + b"2.1.0\0" + b"\0" * 64)
    out = subprocess.run(
        [sys.executable, "-c", "import ic_networks"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(tmp_path)},
    )
    assert out.returncode != 0
    assert "built against torch 2.1.0" in out.stderr and torch.__version__ in out.stderr, out.stderr[-2000:]


@pytest.mark.skipif(
    not os.environ.get("IC_TEST_OTHER_TORCH_SITE"),
    reason="set IC_TEST_OTHER_TORCH_SITE to a site-packages with another torch (scripts/compat.sh does)",
)
def test_wheel_beside_another_torch_minor_fails_clearly(tmp_path, wheel):
    site = os.environ["IC_TEST_OTHER_TORCH_SITE"]
    py = _venv_beside(tmp_path, site)
    other = _run(py, "import torch; print(torch.__version__)")
    assert other.returncode == 0, other.stderr
    other = other.stdout.strip()
    if _torch_check.major_minor(other) == _torch_check.major_minor(torch.__version__):
        pytest.skip(f"{site} has torch {other}, the same minor as this one")
    _pip_install(py, wheel)
    out = _run(py, "import ic_networks")
    assert out.returncode != 0
    assert "ImportError" in out.stderr, out.stderr[-2000:]
    built = _torch_check.read_stamp(str(_installed_core(py, tmp_path)))
    assert f"built against torch {built}, but torch {other} is installed" in out.stderr
    assert _torch_check.REBUILD_COMMAND in out.stderr
