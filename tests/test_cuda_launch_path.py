"""The op's fused CUDA route (the Rust launch path) end to end without a GPU: a stand-in libcuda
(tests/cuda_emu/fake_libcuda.cpp) runs the launches under the host emulation, with
IC_NETWORKS_CUDA_EMULATION=1 in a child process.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from cuda_emu.host import _core, _nvrtc

ROOT = Path(__file__).resolve().parents[1]

# --------------------------------------------------------------------------- the Rust launch path, emulated

EMULATED_CHILD = r"""
import ctypes, json, os, sys
import torch
from ic_networks import cuda_kernels as ck
from ic_networks.functional import ic_conv2d
from ic_networks.reference import ic_conv2d_reference
assert ck.available(), ck.unavailable_reason()
warm = ck.warm_up(0)
res = {"warm_up": warm, "cases": 0, "max_fwd": 0.0, "max_bwd": 0.0, "max_vs_libtorch": 0.0}
if sys.argv[1:] == ["warm-up-only"]:
    print("RESULT " + json.dumps(res))
    sys.exit(0)
from cuda_fused_compose import module_on_both_routes, op_on_route as run_op
rel = lambda u, v: ((u.double().reshape(v.shape) - v.double()).abs().max() / v.double().abs().max()).item()


f64, f32 = torch.float64, torch.float32
for k, s, p, d, dt, cl, groups in [
        (3, 1, 1, 1, f64, False, 1), (3, 1, 1, 1, f64, True, 1), (5, 1, 2, 1, f64, False, 1),
        (3, 1, 2, 2, f64, True, 1), (1, 1, 0, 1, f64, False, 1), (3, 2, 1, 1, f64, False, 1),
        (3, 2, 1, 1, f64, True, 1), (5, 2, 2, 1, f64, False, 2), (3, 1, 1, 1, f64, False, 2),
        (3, 1, 1, 1, f32, True, 1), (3, 2, 1, 1, f32, False, 1)]:
    g = torch.Generator().manual_seed(k * 100 + s * 10 + p)
    r = lambda *sh: torch.randn(*sh, generator=g, dtype=torch.float64)
    x, w, wa = r(2, 8, 9, 10), r(12, 8 // groups, k, k) * 0.3, r(12, 8 // groups, 1, 1) * 0.3
    b1, b2, a = r(12), r(12), torch.tensor(0.7, dtype=torch.float64)
    t = [v.to(dt) for v in (x, w, wa, b1, a, b2)]
    if cl:
        t[0] = t[0].contiguous(memory_format=torch.channels_last)
    leaves = [v.detach().double().requires_grad_() for v in t]
    ref = ic_conv2d_reference(*leaves[:5], leaves[5], s, p, d, groups)
    grad = torch.randn(ref.shape, generator=g, dtype=torch.float64)
    rg = torch.autograd.grad(ref, leaves, grad)
    gr = grad.to(dt)
    if cl:
        gr = gr.contiguous(memory_format=torch.channels_last)
    out, gs, steps = run_op(t, s, p, d, groups, gr, True)
    # forward + collision backward, + the strided P-path backward
    assert steps == (2 if s == 1 else 3), (k, s, steps)
    tol = 1e-12 if dt == torch.float64 else 1e-5
    ef = rel(out, ref)
    eb = max(rel(u, v) for u, v in zip(gs, rg))
    assert ef < tol and eb < 100 * tol, (k, s, p, d, dt, cl, groups, ef, [rel(u, v) for u, v in zip(gs, rg)])
    # the same op with the switch off: the libtorch route, no fused step
    out0, gs0, steps0 = run_op(t, s, p, d, groups, gr, False)
    assert steps0 == 0
    res["max_vs_libtorch"] = max(res["max_vs_libtorch"], rel(out, out0), *(rel(u, v) for u, v in zip(gs, gs0)))
    if dt == torch.float64:
        res["max_fwd"], res["max_bwd"] = max(res["max_fwd"], ef), max(res["max_bwd"], eb)
    res["cases"] += 1
    # only some gradients asked for (W' and alpha: the P path without dx)
    if dt == torch.float64:
        _, gp, _ = run_op(t, s, p, d, groups, gr, True, wants=(False, False, True, False, True, False))
        assert gp[0] is None and gp[1] is None and gp[3] is None and gp[5] is None
        assert rel(gp[2], rg[2]) < 1e-10 and rel(gp[4], rg[4]) < 1e-10
ck.set_enabled(True)
# gradcheck through the public op on the fused route (float64)
for s, cl in [(1, False), (1, True), (2, False), (2, True)]:
    g = torch.Generator().manual_seed(90 + s)
    r = lambda *sh: torch.randn(*sh, generator=g, dtype=torch.float64)
    xg = r(1, 2, 5, 6)
    if cl:
        xg = xg.contiguous(memory_format=torch.channels_last)
    ts = [xg, r(3, 2, 3, 3) * 0.4, r(3, 2, 1, 1) * 0.4, r(3) * 0.3, torch.tensor(0.8, dtype=torch.float64), r(3) * 0.3]
    ts = [v.requires_grad_() for v in ts]
    f = lambda x, w, wa, b1, al, b2: ic_conv2d(x, w, wa, b1, al, b2, s, 1, 1, 1)
    before = ck.calls()
    assert torch.autograd.gradcheck(f, ts, eps=1e-6, atol=1e-7, rtol=1e-5)
    assert ck.calls() > before
# inference (no relu_z) and fp16 through the whole layer
h = [v.detach().half() for v in (x, w, wa, b1, a, b2)]
before = ck.calls()
with torch.no_grad():
    out = ic_conv2d(*h[:5], h[5], 1, 1, 1, 1)
assert out.dtype == torch.float16 and ck.calls() == before + 1
ref = ic_conv2d_reference(*[v.double() for v in h[:5]], h[5].double(), 1, 1, 1, 1)
assert rel(out, ref) < 1e-2, rel(out, ref)
# CPU bf16 autocast (the op's autocast kernel, then the fused route in bfloat16) vs the switched-off op
from ic_networks.nn import IcConv2d
for s in (1, 2):
    torch.manual_seed(11)
    m = IcConv2d(8, 8, 3, stride=s, padding=1, alpha=0.5)
    with torch.no_grad():
        m.adjust_bias.normal_(0, 0.3)
    got = module_on_both_routes(m, torch.randn(2, 8, 10, 10), "cpu", torch.bfloat16)
    (d1, o1, g1, n1), (d0, o0, g0, n0) = got[True], got[False]
    assert d1 == d0 == torch.bfloat16 and n1 == (2 if s == 1 else 3) and n0 == 0, (d1, d0, n1, n0)
    assert rel(o1, o0) < 2e-2 and all(rel(u, v) < 5e-2 for u, v in zip(g1, g0)), [rel(u, v) for u, v in zip(g1, g0)]
res["launches"] = ctypes.CDLL(os.environ["IC_NETWORKS_LIBCUDA"]).fake_libcuda_launches()
print("RESULT " + json.dumps(res))
"""


def build_fake_driver(out_dir: Path, stub: bool = False, name: str = "libcuda.so") -> Path:
    """tests/cuda_emu/fake_libcuda.cpp built as `out_dir/name` (the toolkit-style stub with `stub`)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    cmd = [
        shutil.which("g++"),
        "-std=c++17",
        "-O1",
        "-shared",
        "-fPIC",
        str(ROOT / "tests" / "cuda_emu" / "fake_libcuda.cpp"),
        "-o",
        str(out_dir / name),
    ]
    subprocess.run(cmd + (["-DIC_FAKE_STUB"] if stub else []), check=True, capture_output=True, text=True)
    return out_dir / name


def emulated_env(core, fake: Path | None, cache: Path, **extra) -> dict:
    """The environment of a child process that runs the op on the stand-in driver `fake`."""
    env = dict(
        os.environ,
        IC_NETWORKS_CUDA_EMULATION="1",
        IC_NETWORKS_KERNEL_CACHE_DIR=str(cache),
        PYTHONPATH=os.pathsep.join(
            p for p in [str(Path(core.__file__).parents[1]), str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")] if p
        ),
    )
    env.pop("IC_NETWORKS_CUDA_SYNC_CHECK", None)
    if fake is not None:
        env["IC_NETWORKS_LIBCUDA"] = str(fake)
    env.update(extra)
    return env


def run_child(code: str, env: dict, *args: str) -> dict:
    import json

    r = subprocess.run([os.sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return json.loads(r.stdout.split("RESULT ", 1)[1])


def needs_emulated_driver():
    core = _core()
    if not hasattr(core, "cuda_fused_libraries"):
        pytest.skip("this _core build has no fused CUDA route")
    if not core.cuda_emulation_built():
        pytest.skip("this _core was built without the cuda-emulation feature (release wheels leave it out)")
    if _nvrtc() is None:
        pytest.skip("libnvrtc not loadable: the emulated launch path needs NVRTC to build the module")
    if shutil.which("g++") is None:
        pytest.skip("no g++")
    return core


@pytest.fixture(scope="module")
def fake_driver(tmp_path_factory):
    """(the stand-in libcuda, a kernel cache already holding its module): for the tests below that
    do not test the cold compile."""
    core = needs_emulated_driver()
    d = tmp_path_factory.mktemp("fake_driver")
    fake = build_fake_driver(d / "driver")
    run_child(EMULATED_CHILD, emulated_env(core, fake, d / "cache"), "warm-up-only")
    return fake, d / "cache"


def test_rust_launch_path_under_emulated_driver(tmp_path):
    """The op's fused CUDA route end to end without a GPU: a stand-in libcuda
    (tests/cuda_emu/fake_libcuda.cpp) runs cuLaunchKernel under the host emulation, and
    IC_NETWORKS_CUDA_EMULATION=1 makes CPU tensors take the CUDA backend. The public op
    (`functional.ic_conv2d`, autograd, the C++ op library) with the switch on is compared with the
    float64 oracle and with the same op switched off (the libtorch route), gradchecked, and counted
    (`cuda_fused_calls`) so that a silent fallback fails. That also covers availability, the
    primary-context push/pop (the stand-in refuses launches without it), NVRTC compile + disk cache,
    kernel-parameter packing, the accumulating GEMM, groups and the strided path."""
    core = needs_emulated_driver()
    fake = build_fake_driver(tmp_path / "driver")
    env = emulated_env(core, fake, tmp_path / "cache")
    runs = [run_child(EMULATED_CHILD, env, *args) for args in ([], ["warm-up-only"])]  # the second reads the disk cache
    first, second = runs
    assert first["warm_up"] == {"compute_capability": 90, "cubin": True, "from_cache": False, "replaced": None}
    assert second["warm_up"]["from_cache"] is True
    assert first["launches"] > 20
    assert first["max_vs_libtorch"] < 1e-4
    print(
        f"\nemulated driver: {first['cases']} op cases, {first['launches']} launches; max rel. error vs float64 "
        f"oracle: forward {first['max_fwd']:.2e}, backward {first['max_bwd']:.2e}; vs the libtorch route "
        f"{first['max_vs_libtorch']:.2e}"
    )


GLUE_CHILD = r"""
import ctypes, json, os, sys
import torch
from ic_networks import _core, cuda_kernels as ck
from ic_networks.functional import ic_conv2d
fake = ctypes.CDLL(os.environ["IC_NETWORKS_LIBCUDA"])
what = sys.argv[1]
res = {}
if what == "reject-cubin":
    fake.fake_libcuda_set(0, 0, 1)
res["warm_up"] = ck.warm_up(0)
res["image"] = fake.fake_libcuda_last_image()
res["sync_check"] = _core.cuda_fused_sync_check()
g = torch.Generator().manual_seed(0)
x = torch.randn(1, 4, 6, 7, generator=g, dtype=torch.float64)
w = torch.randn(4, 4, 3, 3, generator=g, dtype=torch.float64)
wa = torch.randn(4, 4, 1, 1, generator=g, dtype=torch.float64)
b1, b2 = torch.randn(4, generator=g, dtype=torch.float64), torch.randn(4, generator=g, dtype=torch.float64)
ck.set_enabled(True)


def op(alpha, grad=True):
    ts = [t.clone().requires_grad_(grad) for t in (x, w, wa, b1)]
    a = alpha.clone().requires_grad_(grad)
    out = ic_conv2d(*ts, a, b2, 1, 1, 1, 1)
    if grad:
        out.sum().backward()
    return out


def last_alpha():
    v = ctypes.c_double()
    has_ptr = fake.fake_libcuda_last_alpha(ctypes.byref(v))
    return v.value, has_ptr


if what in ("alpha", "reject-cubin"):
    # a 0-d CPU alpha (the op accepts one) reaches both kernels by value, in the accumulation dtype
    for alpha in (torch.tensor(0.7, dtype=torch.float64), torch.tensor(0.3, dtype=torch.float32), torch.tensor([0.25])):
        before = ck.calls()
        op(alpha)
        assert ck.calls() == before + 2
        res.setdefault("alpha", []).append(last_alpha())
    # while the stream is capturing (after the warm-up): no compile, no copy, no sync; the launch goes through
    fake.fake_libcuda_set(1, 0, 0)
    syncs, n = fake.fake_libcuda_syncs(), fake.fake_libcuda_launches()
    with torch.no_grad():
        op(torch.tensor(0.5, dtype=torch.float64), grad=False)
    res["capture"] = [fake.fake_libcuda_launches() - n, fake.fake_libcuda_syncs() - syncs, last_alpha()]
    fake.fake_libcuda_set(0, 0, 0)
elif what == "fault":
    # the stream reports an illegal address from the next launch on
    syncs = fake.fake_libcuda_syncs()
    fake.fake_libcuda_set(0, fake.fake_libcuda_launches() + 1, 0)
    try:
        with torch.no_grad():
            op(torch.tensor(0.5, dtype=torch.float64), grad=False)
        res["error"] = None
    except RuntimeError as e:
        res["error"] = str(e)
    res["syncs"] = fake.fake_libcuda_syncs() - syncs
elif what == "capture-sync":
    # under the sync check, a capturing stream is never synchronised
    fake.fake_libcuda_set(1, 0, 0)
    syncs = fake.fake_libcuda_syncs()
    with torch.no_grad():
        op(torch.tensor(0.5, dtype=torch.float64), grad=False)
    res["syncs"] = fake.fake_libcuda_syncs() - syncs
print("RESULT " + json.dumps(res))
"""


def test_cpu_alpha_is_passed_by_value(fake_driver, tmp_path):
    """A 0-d CPU alpha is read on the host and passed to the forward and backward kernels by value
    (no copy to the device per call, nothing that breaks capture); the stand-in driver records what
    each launch got. A launch on a capturing stream (after warm-up) goes through, unsynchronised."""
    fake, cache = fake_driver
    r = run_child(GLUE_CHILD, emulated_env(_core(), fake, cache), "alpha")
    assert r["warm_up"]["from_cache"] is True
    (a64, p64), (a32, p32), (a1, p1) = r["alpha"]
    assert (p64, p32, p1) == (0, 0, 0)
    assert a64 == 0.7 and a32 == float(torch.tensor(0.3, dtype=torch.float32)) and a1 == 0.25
    launched, synced, (a, p) = r["capture"]
    assert launched == 1 and synced == 0 and (a, p) == (0.5, 0)


def test_sync_check_names_the_failing_kernel(fake_driver):
    """IC_NETWORKS_CUDA_SYNC_CHECK=1: a kernel that faults (the stand-in's stream reports an
    illegal address after it) is an error at its own launch, naming it; without the switch the op
    returns and the fault would surface at some later op. A capturing stream is never synchronised."""
    fake, cache = fake_driver
    core = _core()
    on = run_child(GLUE_CHILD, emulated_env(core, fake, cache, IC_NETWORKS_CUDA_SYNC_CHECK="1"), "fault")
    assert on["sync_check"] is True
    assert on["error"] is not None, on
    assert "ic_fwd_box_f64" in on["error"] and "illegal memory access" in on["error"], on["error"]
    assert "IC_NETWORKS_CUDA_SYNC_CHECK" in on["error"]
    off = run_child(GLUE_CHILD, emulated_env(core, fake, cache), "fault")
    assert off["sync_check"] is False and off["error"] is None and off["syncs"] == 0
    cap = run_child(GLUE_CHILD, emulated_env(core, fake, cache, IC_NETWORKS_CUDA_SYNC_CHECK="1"), "capture-sync")
    assert cap["syncs"] == 0


def test_rejected_cubin_is_recompiled_then_ptx(fake_driver, tmp_path):
    """A cached CUBIN the driver rejects (here: a file with an ELF magic but no valid image) is
    replaced by a fresh compilation, which also repairs the cache entry; a driver that rejects every
    CUBIN gets the same compilation's PTX, and the op runs on it."""
    fake, cache = fake_driver
    core = _core()
    mine = tmp_path / "cache"
    shutil.copytree(cache, mine)
    (entry,) = [f for f in mine.iterdir() if f.suffix == ".cubin"]
    entry.write_bytes(b"\x7fELF" + b"\0" * 60)
    r = run_child(GLUE_CHILD, emulated_env(core, fake, mine), "warm-up")
    w = r["warm_up"]
    assert w["cubin"] is True and w["from_cache"] is False and r["image"] == 1
    assert "rejected the cached CUBIN" in w["replaced"] and "recompiled" in w["replaced"], w
    assert entry.read_bytes() == (cache / entry.name).read_bytes()  # the entry is a good CUBIN again
    r = run_child(GLUE_CHILD, emulated_env(core, fake, mine), "reject-cubin")
    w = r["warm_up"]
    assert w["cubin"] is False and r["image"] == 2, r
    assert "rejected the cached CUBIN" in w["replaced"] and "loaded its PTX" in w["replaced"], w
    assert [p for _, p in r["alpha"]] == [0, 0, 0]  # and the op ran on the PTX module


LIBS_CHILD = r"""
import json
from ic_networks import _core
res = {"libraries": _core.cuda_fused_libraries(), "reason": _core.cuda_fused_unavailable_reason()}
print("RESULT " + json.dumps(res))
"""


def test_libraries_are_loaded_by_full_path(fake_driver, tmp_path):
    """With a toolkit-style stub `libcuda.so` and a broken `libnvrtc.so` first on the loader path,
    the driver's own `libcuda.so.1` and torch's NVRTC are the ones loaded, and reported by full path;
    with only the stub there, the reason names it."""
    fake, cache = fake_driver
    core = _core()
    decoys, real = tmp_path / "decoys", tmp_path / "driver"
    build_fake_driver(decoys, stub=True)
    (decoys / "libnvrtc.so").write_bytes(fake.read_bytes())  # loads, but has no NVRTC entry points
    build_fake_driver(real, name="libcuda.so.1")
    env = emulated_env(
        core,
        None,
        cache,
        LD_LIBRARY_PATH=os.pathsep.join([str(decoys), str(real), os.environ.get("LD_LIBRARY_PATH", "")]),
    )
    env.pop("IC_NETWORKS_LIBCUDA", None)
    env.pop("IC_NETWORKS_LIBNVRTC", None)
    r = run_child(LIBS_CHILD, env)
    assert r["reason"] is None, r
    assert r["libraries"]["libcuda"] == str((real / "libcuda.so.1").resolve()), r
    nvrtc = Path(r["libraries"]["nvrtc"])
    assert nvrtc.is_absolute() and nvrtc.name.startswith("libnvrtc.so.") and decoys not in nvrtc.parents, r
    torch_site = Path(torch.__file__).resolve().parents[1]
    if (torch_site / "nvidia").is_dir():
        assert torch_site in nvrtc.parents, (nvrtc, torch_site)
    env["LD_LIBRARY_PATH"] = os.pathsep.join([str(decoys), os.environ.get("LD_LIBRARY_PATH", "")])
    r = run_child(LIBS_CHILD, env)
    if not Path("/proc/driver/nvidia/version").exists():  # no real driver to find after the stub
        assert "stub" in r["reason"] and str(decoys / "libcuda.so") in r["reason"], r


def test_gpu_check_runs_on_the_stand_in_driver(fake_driver, tmp_path):
    """scripts/gpu_check.sh end to end without a GPU (GPU_CHECK_EMULATE=1, the stand-in driver):
    stages 1 and 2 pass, each leaves exactly one tarball in OUTDIR with every log and JSON and the
    summary (the kernel cache stays outside it), the second info step hits the disk cache, and a
    deadline too short for any step skips them all, fails, and still packs the tarball."""
    import json
    import tarfile

    fake, _ = fake_driver
    out, work = tmp_path / "out", tmp_path / "work"
    # caps and deadline scaled for a loaded CPU machine (the GPU's are the script's defaults)
    env = dict(
        os.environ,
        GPU_CHECK_EMULATE="1",
        IC_NETWORKS_LIBCUDA=str(fake),
        GPU_CHECK_WORK=str(work),
        GPU_CHECK_CAP_SCALE="8",
        GPU_CHECK_DEADLINE="2400",
    )
    for k in ("STAGE", "STEPS", "IC_NETWORKS_CUDA_SYNC_CHECK"):
        env.pop(k, None)
    script = ROOT / "scripts" / "gpu_check.sh"

    def run(stage, **extra):
        r = subprocess.run(
            ["bash", str(script), str(out)],
            capture_output=True,
            text=True,
            timeout=2400,
            env=dict(env, STAGE=str(stage), **extra),
        )
        with tarfile.open(out / f"gpu_check-stage{stage}.tar.gz") as t:
            files = {m.name.split("/", 1)[1]: m for m in t.getmembers() if m.isfile()}
            read = lambda n: t.extractfile(files[n]).read().decode()  # noqa: E731
            return r, files, {n: read(n) for n in files if n.endswith((".log", ".json", ".tsv", ".txt"))}

    r, files, text = run(1)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    assert "gpu_check stage 1: PASSED" in r.stdout
    assert {
        "info-cold.log",
        "info-cached.log",
        "gpu-tests.log",
        "gpu-tests.xml",
        "bench-n256.log",
        "bench-n256.json",
        "steps.tsv",
        "summary.txt",
        "nvidia-smi.txt",
    } <= set(files), sorted(files)
    assert not any("kernel-cache" in n for n in files)
    assert "'from_cache': False" in text["info-cold.log"] and "'from_cache': True" in text["info-cached.log"]
    assert "'libcuda': '" + str(fake.resolve()) in text["info-cold.log"], text["info-cold.log"]
    assert json.loads(text["bench-n256.json"])["emulated"] is True
    assert [line.split("\t")[0] for line in text["steps.tsv"].splitlines()[1:]] == [
        "info-cold",
        "info-cached",
        "gpu-tests",
        "bench-n256",
    ]

    r, files, text = run(2)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    rows = json.loads(text["kernels.json"])["rows"]
    assert len(rows) == 4 and all(row["fwd_ms"] > 0 and row["bwd_ms"] > 0 for row in rows), rows
    assert "sanitizer\t-\t0\tSKIPPED (needs a GPU)" in text["steps.tsv"]
    assert sorted(p.name for p in out.iterdir()) == ["gpu_check-stage1.tar.gz", "gpu_check-stage2.tar.gz"]

    r, files, text = run(1, GPU_CHECK_DEADLINE="20")
    assert r.returncode == 1, r.stdout[-4000:]
    assert "gpu_check stage 1: FAILED" in r.stdout
    assert text["steps.tsv"].count("SKIPPED (deadline") == 4, text["steps.tsv"]
