"""A fuzzed sweep of odd and bad input (hypothesis), run in a subprocess so that an abort, a
segfault or a Rust panic fails the test instead of killing pytest.

Every case either matches the oracle (``ic_networks.reference``, same dtype and device; tolerance
by dtype; NaN positions must agree) or raises ValueError/TypeError/RuntimeError with a short
message. Each case also says beforehand whether it must succeed, must fail, or may do either (the
few that depend on torch's own padding modes), so an op that raised on everything would fail too.

Run by hand: ``python tests/test_fuzz.py 2000`` (number of examples; derandomized, so repeatable).
"""

import os
import re
import sys

import pytest

BUDGET = int(os.environ.get("IC_FUZZ_EXAMPLES", "300"))
SUMMARY = re.compile(r"FUZZ SUMMARY examples=(\d+) matched=(\d+) raised=(\d+)")


def test_fuzz_sweep_in_subprocess(tmp_path):
    pytest.importorskip("hypothesis")
    from ic_networks.training import watchdog

    # a hang fails with the sweep's stacks (the sweep arms the dump handler), not a bare timeout
    r = watchdog.run(
        [sys.executable, __file__, str(BUDGET)], 900, dump_dir=tmp_path, merge_stderr=False, what="fuzz sweep"
    )
    out = r.stdout + r.stderr
    # the last "CASE" line names the input that crashed the process, if it did
    assert r.returncode == 0, f"exit code {r.returncode}\n{out[-6000:]}"
    m = SUMMARY.search(r.stdout)
    assert m, out[-3000:]
    examples, matched, raised = map(int, m.groups())
    assert examples >= BUDGET, m.group(0)
    assert matched >= 0.25 * examples and raised >= 0.1 * examples, m.group(0)


# --------------------------------------------------------------------------------------------------
# The sweep (runs in the subprocess)
# --------------------------------------------------------------------------------------------------
def _main(budget: int) -> None:  # noqa: C901 -- one self-contained harness
    import torch
    import torch.nn.functional as F
    from hypothesis import given, settings
    from hypothesis import strategies as st

    import fuzz_wld
    import ic_networks as icn
    from ic_networks.reference import boxsum_reference, ic_conv2d_reference

    torch.set_num_threads(1)
    torch.backends.cudnn.allow_tf32 = False  # exact float32 convolutions on CUDA, for the oracle and the op alike
    torch.backends.cuda.matmul.allow_tf32 = False
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    floats = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
    tol = {torch.float64: 1e-10, torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 5e-2}
    limit = 2**31 - 1
    huge_ints = [0, -1, 2**20, 2**31, 2**40, 2**62, 2**64]
    counts = {"examples": 0, "matched": 0, "raised": 0}

    small = lambda lo: st.one_of(st.integers(lo, 3), st.tuples(st.integers(lo, 3), st.integers(lo, 3)))  # noqa: E731
    bad_values = {
        "dtype": [torch.int64, torch.int32, torch.uint8, torch.bool, torch.complex64],
        "other_dtype": [torch.float64, torch.float16, torch.int64],
        "cin_g": [0],
        "cout_g": [0],
        "kernel": [(40, 3), (3, 40)],
        "hw": [(0, 5), (5, 0), (1, 1)],
        "stride": huge_ints,
        "padding": huge_ints + ["full"],
        "dilation": huge_ints,
        "alpha": ["shape3", "int_tensor", "string"],
        "layout": ["huge"],
        "rank": [5],
    }

    @st.composite
    def cases(draw):
        """Half 'sane' cases (valid types and ranks; odd layouts, NaN/inf, geometry that may not fit),
        a quarter with exactly one wrong or absurd field, a quarter where any field can be wrong."""
        mode = draw(st.sampled_from(["sane", "sane", "one_bad", "wild"]))
        bad_field = draw(st.sampled_from(sorted(bad_values))) if mode == "one_bad" else None

        def pick(field, good):
            if field == bad_field:
                return draw(st.sampled_from(bad_values[field]))
            if mode == "wild" and draw(st.booleans()):
                return draw(st.sampled_from(bad_values[field]))
            return draw(good)

        n = draw(st.integers(0, 3))
        padding = pick("padding", st.one_of(small(0), st.sampled_from(["same", "valid"])))
        return {
            "api": draw(st.sampled_from(["functional", "functional", "module", "op", "boxsum"])),
            "device": draw(st.sampled_from(devices)),
            "dtype": pick("dtype", st.sampled_from(floats)),
            "other_dtype": pick("other_dtype", st.none()),
            "n": n,
            "groups": draw(st.sampled_from([1, 1, 2, 3])),
            "cin_g": pick("cin_g", st.integers(1, 3)),
            "cout_g": pick("cout_g", st.integers(1, 3)),
            "kernel": pick(
                "kernel", st.tuples(st.sampled_from([1, 2, 3, 3, 4, 5]), st.sampled_from([1, 2, 3, 3, 4, 5]))
            ),
            "hw": pick("hw", st.tuples(st.integers(3, 12), st.integers(3, 12))),
            "stride": pick("stride", st.just(1) if padding == "same" else small(1)),
            "padding": padding,
            "dilation": pick("dilation", small(1)),
            "padding_mode": draw(st.sampled_from(["zeros"] * 5 + ["reflect", "replicate", "circular"])),
            "bias": draw(st.booleans()),
            "alpha": pick("alpha", st.one_of(st.floats(-2, 2), st.just(0.0), st.just("tensor"))),
            "layout": pick(
                "layout", st.sampled_from(["contiguous", "contiguous", "channels_last", "strided", "expanded"])
            ),
            "special": draw(st.sampled_from([None] * 4 + ["nan", "inf", "-inf", "nan_weight"])),
            "rank": pick("rank", st.sampled_from([4, 4, 4] + ([3] if n == 1 else []))),
            "magnitude": draw(st.sampled_from([1.0, 1e-3, 30.0])),
            "grad": draw(st.booleans()),
            "seed": draw(st.integers(0, 2**16)),
        }

    def make(c):
        """Builds the arguments; returns (tensors, expect): True must match, False must raise, None either."""
        g = torch.Generator().manual_seed(c["seed"])
        dev, dtype = c["device"], c["dtype"]
        cin, cout = c["cin_g"] * c["groups"], c["cout_g"] * c["groups"]
        kh, kw = c["kernel"]
        h, w = c["hw"]
        base = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
        n, big = c["n"], c["layout"] in ("huge", "expanded")
        if c["layout"] == "huge":
            h = w = 2**20
        if big:  # a stride-0 view, expanded after the dtype conversion (which would materialise it)
            x = base(
                1,
                1 if c["layout"] == "huge" else cin,
                1 if c["layout"] == "huge" else h,
                1 if c["layout"] == "huge" else w,
            )
        elif c["layout"] == "strided":
            x = base(n, cin, h, 2 * w)[..., ::2]
        else:
            x = base(n, cin, h, w)
        x = x * c["magnitude"]
        wt, wa = base(cout, c["cin_g"], kh, kw) * 0.5, base(cout, c["cin_g"], 1, 1) * 0.3
        b1, b2 = base(cout) * 0.3, (base(cout) if c["bias"] else None)
        special = c["special"]
        if special and x.numel() and not big:
            x.view(-1)[c["seed"] % x.numel()] = {"nan": float("nan"), "inf": float("inf"), "-inf": -float("inf")}.get(
                special, 1.0
            )
        if special == "nan_weight" and wt.numel():
            wt.view(-1)[c["seed"] % wt.numel()] = float("nan")
        conv = lambda t: None if t is None else t.to(device=dev, dtype=dtype)  # noqa: E731
        x, wt, wa, b1, b2 = (conv(t) for t in (x, wt, wa, b1, b2))
        if big:
            x = x.expand(n, cin, h, w)
        if c["layout"] == "channels_last":
            x = x.contiguous(memory_format=torch.channels_last)
        if c["rank"] == 3 and c["n"] == 1:
            x = x[0]
        elif c["rank"] == 5:
            x = x.unsqueeze(0)
        if c["other_dtype"] is not None:
            wt = wt.to(c["other_dtype"])
        a = c["alpha"]
        if a == "tensor":
            a = torch.tensor(0.4, dtype=dtype if dtype in floats else torch.float32, device=dev)
        elif a == "shape3":
            a = torch.full((3,), 0.4, device=dev)
        elif a == "int_tensor":
            a = torch.tensor(1, device=dev)

        # Must it succeed? (False: must raise; None: either)
        api, alpha = c["api"], c["alpha"]
        fine = lambda v, lo: all(lo <= e <= limit for e in ((v, v) if isinstance(v, int) else v))  # noqa: E731
        stride, dilation = [(v, v) if isinstance(v, int) else v for v in (c["stride"], c["dilation"])]
        pad = c["padding"]
        if api == "op" and isinstance(pad, str):
            pad = 0  # call() passes 0
        geo_ok = fine(stride, 1) and fine(dilation, 1)
        out_hw = (h, w)
        if pad == "same":
            geo_ok = geo_ok and api in ("functional", "module") and stride == (1, 1)
        else:
            geo_ok = geo_ok and pad != "full" and (pad == "valid" or fine(pad, 0))
            pad = (0, 0) if pad == "valid" else (pad, pad) if isinstance(pad, int) else pad
            if geo_ok:
                out_hw = [
                    (size + 2 * p - d * (k - 1) - 1) // st + 1
                    for size, p, d, k, st in zip((h, w), pad, dilation, (kh, kw), stride)
                ]
        size_ok = geo_ok and min(out_hw) >= 1 and min(h, w) >= 1
        per_pixel = cin if api == "boxsum" else 2 * cout + cin  # output and temporaries
        memory = 8 * (n * cin * h * w + n * out_hw[0] * out_hw[1] * per_pixel) if size_ok else 0
        size_ok = size_ok and memory < 2**40  # else terabytes: the memory guard must refuse it
        ok = (
            dtype in floats
            and geo_ok
            and size_ok
            and (x.dim() == 4 or x.dim() == 3 and api in ("functional", "module"))
        )
        if api == "boxsum":
            ok = ok and x.dim() == 4 and not isinstance(c["padding"], str)  # ints only
            expect = ok and cin > 0
        else:
            alpha_ok = api == "module" or isinstance(alpha, float) or alpha == "tensor"
            ok = ok and alpha_ok and min(cin, cout) > 0 and c["other_dtype"] in (None, dtype)
            expect = None if ok and api == "module" and c["padding_mode"] != "zeros" else ok
        if expect and memory > 2**28:
            expect = None  # too big to be sure either way (whether libtorch can allocate it depends on this machine)
        return (x, wt, wa, b1, a, b2), expect

    def call(c, args):
        """Runs the case; returns (output, spec) where spec holds what the oracle needs."""
        x, wt, wa, b1, a, b2 = args
        s, p, d, groups = c["stride"], c["padding"], c["dilation"], c["groups"]
        spec = dict(
            x=x,
            weight=wt,
            adjust_weight=wa,
            adjust_bias=b1,
            alpha=a,
            bias=b2,
            stride=s,
            padding=p,
            dilation=d,
            groups=groups,
            boxsum=c["api"] == "boxsum",
        )
        if c["api"] == "functional":
            return icn.ic_conv2d(x, wt, wa, b1, a, b2, s, p, d, groups), spec
        if c["api"] == "boxsum":
            return icn.functional.boxsum(x, wt.shape[2:], s, p, d), spec
        if c["api"] == "op":
            lst = lambda v: [v, v] if isinstance(v, int) else list(v)  # noqa: E731
            spec["padding"] = 0 if isinstance(p, str) else p
            if isinstance(a, float):
                a = spec["alpha"] = torch.tensor(
                    a, dtype=x.dtype if x.is_floating_point() else torch.float32, device=x.device
                )
            return torch.ops.ic_networks.ic_conv2d_forward(
                x, wt, wa, b1, a, b2, lst(s), lst(spec["padding"]), lst(d), groups
            )[0], spec
        m = icn.IcConv2d(
            x.shape[-3] if x.dim() >= 3 else 1,
            wt.shape[0],
            tuple(wt.shape[2:]),
            s,
            p,
            d,
            groups,
            b2 is not None,
            c["padding_mode"],
            alpha=a if isinstance(a, float) else 0.4,
            device=x.device,
            dtype=wt.dtype,
        )
        with torch.no_grad():
            for name, t in (("weight", wt), ("adjust_weight", wa), ("adjust_bias", b1), ("bias", b2)):
                if t is not None:
                    getattr(m, name).copy_(t)
        spec.update(
            weight=m.weight, adjust_weight=m.adjust_weight, adjust_bias=m.adjust_bias, alpha=m.alpha, bias=m.bias
        )
        if m.padding_mode != "zeros":
            xb = x.unsqueeze(0) if x.dim() == 3 else x  # as nn.Conv2d pads for a non-zero padding mode
            spec["x"], spec["padding"] = F.pad(xb, m._reversed_padding_repeated_twice, mode=m.padding_mode), 0
            if x.dim() == 3:
                spec["x"] = spec["x"][0]
        return m(x), spec

    def oracle(spec, absolute=False):
        """The reference output; with absolute=True, the float64 sum of |terms| (an error scale)."""
        sp = dict(spec)
        if absolute:

            def fix(t):
                if not isinstance(t, torch.Tensor):
                    return t
                return torch.nan_to_num(t.detach().double().abs(), nan=0.0, posinf=0.0, neginf=0.0)

            sp = {k: fix(v) for k, v in sp.items()}
            sp["alpha"] = abs(sp["alpha"]) if isinstance(sp["alpha"], float) else sp["alpha"]
        x = sp["x"]
        unbatched = x.dim() == 3
        x = x.unsqueeze(0) if unbatched else x
        k = sp["weight"].shape[2:]
        if sp["boxsum"]:
            out = boxsum_reference(x, k, sp["stride"], sp["padding"], sp["dilation"])
        elif absolute:
            geo = (sp["stride"], sp["padding"], sp["dilation"])
            y = F.conv2d(x, sp["weight"], None, *geo, sp["groups"])
            p = F.conv2d(boxsum_reference(x, k, *geo), sp["adjust_weight"], None, 1, 0, 1, sp["groups"])
            out = y + sp["alpha"] * (y + p + sp["adjust_bias"].view(1, -1, 1, 1))
            out = out + (sp["bias"].view(1, -1, 1, 1) if sp["bias"] is not None else 0) + 1e-30
        else:
            out = ic_conv2d_reference(
                x,
                sp["weight"],
                sp["adjust_weight"],
                sp["adjust_bias"],
                sp["alpha"],
                sp["bias"],
                sp["stride"],
                sp["padding"],
                sp["dilation"],
                sp["groups"],
            )
        return out[0] if unbatched else out

    def compare(got, want, scale, dtype, what):
        assert got.shape == want.shape and got.dtype == want.dtype and got.device == want.device, (
            what,
            got.shape,
            want.shape,
        )
        got, want = got.detach().double().cpu(), want.detach().double().cpu()
        nan_g, nan_w = got.isnan(), want.isnan()
        assert torch.equal(nan_g, nan_w), f"{what}: NaN positions differ ({int(nan_g.sum())} vs {int(nan_w.sum())})"
        inf = want.isinf() | got.isinf()
        assert torch.equal(got[inf], want[inf]), f"{what}: inf positions/signs differ"
        fin = ~(nan_w | inf)
        err = (got - want).abs()[fin]
        bound = (tol[dtype] * scale.expand_as(got)[fin]) + 1e-300
        assert bool((err <= bound).all()), f"{what}: max error {err.max():.3g} > bound {bound[(err > bound)].min():.3g}"

    def check_error(e):
        msg = str(e)
        assert msg.strip(), f"empty {type(e).__name__} message"
        for bad in ("panicked", "Exception raised from", "frame #", "PanicException"):
            assert bad not in msg, f"unclear {type(e).__name__}: {msg[:400]}"
        assert len(msg) < 1500, f"{type(e).__name__} message too long: {msg[:400]}"

    base = {
        "api": "functional",
        "device": devices[-1],
        "dtype": torch.float32,
        "other_dtype": None,
        "n": 2,
        "groups": 1,
        "cin_g": 2,
        "cout_g": 3,
        "kernel": (3, 3),
        "hw": (7, 6),
        "stride": 1,
        "padding": 1,
        "dilation": 1,
        "padding_mode": "zeros",
        "bias": True,
        "alpha": 0.5,
        "layout": "contiguous",
        "special": None,
        "rank": 4,
        "magnitude": 1.0,
        "grad": True,
        "seed": 1,
    }
    explicit = [  # always run, whatever the budget: the cases the issue names
        {},
        {"layout": "channels_last"},
        {"padding": 2**20},
        {"padding": 2**20, "api": "boxsum"},
        {"layout": "huge"},
        {"layout": "huge", "n": 0},
        {"stride": 2**40},
        {"dilation": 2**62},
        {"padding": 2**64},
        {"kernel": (40, 40)},
        {"special": "nan"},
        {"special": "inf", "dtype": torch.float16},
        {"dtype": torch.complex64},
        {"n": 0},
        {"padding": "same", "kernel": (4, 2), "dilation": 1},
        {"dtype": torch.bfloat16, "layout": "expanded"},
    ]

    @settings(max_examples=budget, **fuzz_wld.SETTINGS)
    @given(cases())
    def sweep(c):
        counts["examples"] += 1
        print("CASE", {k: (str(v) if isinstance(v, torch.dtype) else v) for k, v in c.items()}, flush=True)
        args, expect = make(c)
        try:
            out, spec = call(c, args)
        except (ValueError, TypeError, RuntimeError) as e:
            check_error(e)
            print(f"RAISED {type(e).__name__}: {str(e).splitlines()[0][:200]}", flush=True)
            assert expect is not True, f"a valid case raised {type(e).__name__}: {e}"
            counts["raised"] += 1
            return
        assert expect is not False, f"an invalid case did not raise (output {tuple(out.shape)})"
        dtype = out.dtype
        compare(out, oracle(spec), oracle(spec, absolute=True), dtype, "forward")
        counts["matched"] += 1
        finite = all(torch.isfinite(t).all() for t in args if isinstance(t, torch.Tensor))
        if not (c["grad"] and finite and dtype in (torch.float32, torch.float64) and out.numel()):
            return
        # gradients of <out, go> against the oracle's, for every tensor argument
        req = lambda t: t.detach().clone().requires_grad_() if isinstance(t, torch.Tensor) else t  # noqa: E731
        args = tuple(req(t) for t in args)
        out, spec = call(c, args)
        leaves = [t for t in args if isinstance(t, torch.Tensor)]
        if c["api"] == "module":
            leaves = [args[0]] + [
                spec[k] for k in ("weight", "adjust_weight", "adjust_bias", "bias") if spec[k] is not None
            ]
        elif c["api"] == "boxsum":
            leaves = [args[0]]
        want = oracle(spec)
        go = torch.randn(out.shape, generator=torch.Generator().manual_seed(c["seed"]), dtype=torch.float64).to(out)
        got_g = torch.autograd.grad(out, leaves, go, allow_unused=True)
        want_g = torch.autograd.grad(want, leaves, go, allow_unused=True)
        for i, (gg, wg) in enumerate(zip(got_g, want_g)):
            wg = torch.zeros_like(leaves[i]) if wg is None else wg
            assert gg is not None, f"gradient {i} is None"
            assert gg.shape == leaves[i].shape and gg.dtype == leaves[i].dtype, f"gradient {i}: shape/dtype"
            err, bound = (gg - wg).abs().max().item(), 50 * tol[dtype] * (wg.abs().max().item() + 1)
            assert err <= bound, f"gradient {i}: error {err:.3g} > {bound:.3g}"

    sweep_wld = fuzz_wld.sweep(budget, devices, floats, tol, counts, check_error)

    for overrides in explicit:
        sweep.hypothesis.inner_test({**base, **overrides})
    sweep()
    sweep_wld()
    print(
        f"FUZZ SUMMARY examples={counts['examples']} matched={counts['matched']} raised={counts['raised']}", flush=True
    )


if __name__ == "__main__":
    _main(int(sys.argv[1]) if len(sys.argv) > 1 else BUDGET)
