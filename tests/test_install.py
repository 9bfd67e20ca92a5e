"""Installing the wheel beside an existing torch, and the import-time check of the torch it was built for.

The wheel is $IC_TEST_WHEEL (scripts/compat.sh sets it) or built here with `maturin build`. It goes
into a fresh venv that sees the current environment's packages through a .pth file (no download:
pip runs with --no-index, so it can only keep the torch that is there). With
$IC_TEST_OTHER_TORCH_SITE (a site-packages holding another torch minor) the wheel is also installed
beside that torch, where the import must fail with the mismatch error.
"""
import glob
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path

import pytest
import torch

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
        return Path(os.environ["IC_TEST_WHEEL"])
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
    purelib = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                             check=True, capture_output=True, text=True).stdout.strip()
    Path(purelib, "zz_outer_env.pth").write_text(str(site_packages) + "\n")
    return py


def _run(py, code, **kw):
    # Away from the repository, so that ./python and ./tests are not on sys.path.
    return subprocess.run([str(py), "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          cwd="/", env={**os.environ, "PYTHONPATH": ""}, **kw)


def _pip(py, *args):
    proc = subprocess.run([str(py), "-m", "pip", *args], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": ""})
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


def test_wheel_installs_beside_the_current_torch_and_imports(tmp_path, wheel):
    py = _venv_beside(tmp_path, sysconfig.get_path("purelib"))
    _pip_install(py, wheel)
    # Its dependencies, torch included, are satisfied by what is installed: no index, no change.
    proc = _pip(py, "install", "--no-index", str(wheel))
    assert not re.search(r"Uninstalling torch|Successfully installed.*\btorch-", proc.stdout), proc.stdout
    assert _installed_core(py, tmp_path)
    out = _run(py, """
        import torch, ic_networks as icn
        from ic_networks.reference import ic_conv2d_reference
        g = torch.Generator().manual_seed(0)
        x, w = (torch.randn(s, generator=g, dtype=torch.float64) for s in [(2, 3, 9, 9), (4, 3, 3, 3)])
        wp, b1 = torch.randn(4, 3, 1, 1, dtype=torch.float64), torch.randn(4, dtype=torch.float64)
        args = (x, w, wp, b1, torch.tensor(0.7, dtype=torch.float64), None, 2, 1)
        torch.testing.assert_close(icn.ic_conv2d(*args), ic_conv2d_reference(*args))
        print(icn.__file__)
        print(torch.__version__, icn._core.built_torch_version())
    """)
    assert out.returncode == 0, out.stderr
    path, versions = out.stdout.split("\n")[:2]
    assert path.startswith(str(tmp_path)), f"imported {path}, not the wheel"
    running, built = versions.split()
    assert running == torch.__version__, "the install changed torch"
    assert _torch_check.major_minor(built) == _torch_check.major_minor(running)


def test_wheel_beside_another_torch_minor_fails_clearly_simulated(tmp_path, wheel):
    """The stamp of the installed library is rewritten to a torch minor that is not installed."""
    py = _venv_beside(tmp_path, sysconfig.get_path("purelib"))
    _pip_install(py, wheel)
    core = _installed_core(py, tmp_path)
    data = core.read_bytes()
    at = data.index(_torch_check.MARKER) + len(_torch_check.MARKER)
    old = data[at:data.index(b"\0", at)]
    fake = b"2.1.0"
    core.write_bytes(data[:at] + fake + b"\0" * (len(old) - len(fake)) + data[at + len(old):])
    out = _run(py, "import ic_networks")
    assert out.returncode != 0
    assert "ImportError" in out.stderr
    assert "built against torch 2.1.0" in out.stderr and torch.__version__ in out.stderr
    assert _torch_check.REBUILD_COMMAND in out.stderr


@pytest.mark.skipif(not os.environ.get("IC_TEST_OTHER_TORCH_SITE"),
                    reason="set IC_TEST_OTHER_TORCH_SITE to a site-packages with another torch "
                           "(scripts/compat.sh does)")
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
