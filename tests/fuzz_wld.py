"""The WLD loss part of the fuzzed sweep of tests/test_fuzz.py (it runs in that sweep's subprocess):
odd and bad logits, targets and hyper-parameters; every case matches a float64 reference or raises a
short, clear error, as it was expected to."""

import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

import ic_networks as icn

#: The hypothesis settings of both sweeps: repeatable, no deadline, no example database.
SETTINGS = dict(
    derandomize=True,
    deadline=None,
    database=None,
    print_blob=True,
    suppress_health_check=list(HealthCheck),
    phases=[Phase.explicit, Phase.generate, Phase.shrink],
)


def sweep(budget, devices, floats, tol, counts, check_error):
    """The hypothesis test of the WLD loss, counting into ``counts`` as the convolution sweep does."""

    @st.composite
    def wld_cases(draw):
        sane = draw(st.sampled_from([True, True, False]))
        pick = lambda good, bad: draw(st.sampled_from(good if sane else good + bad))  # noqa: E731
        return {
            "device": draw(st.sampled_from(devices)),
            "dtype": pick(list(floats), [torch.int64, torch.complex64]),
            "teacher_dtype": pick([None], [torch.float64, torch.float16, torch.int64]),
            "b": pick([1, 2, 5], [0]),
            "k": pick([1, 2, 7], [0]),
            "teacher_shape": pick(["same"], ["transposed", "short"]),
            "layout": draw(st.sampled_from(["contiguous", "strided"])),
            "target_dtype": pick([torch.int64, torch.int32, torch.uint8], [torch.bool, torch.float32]),
            "target_bad": pick([None], [-1, "k", 2**40]),
            "lam": draw(
                st.one_of(
                    st.floats(0, 1), st.sampled_from([0.0, 1.0]) if sane else st.sampled_from([-0.5, 1.5, float("nan")])
                )
            ),
            "e": draw(
                st.one_of(st.floats(0, 1), st.just(0.005))
                if sane
                else st.sampled_from([-1.0, float("nan"), float("inf")])
            ),
            "tau": draw(st.floats(0.1, 10) if sane else st.sampled_from([0.0, -1.0, float("inf"), float("nan")])),
            "magnitude": draw(st.sampled_from([1.0, 30.0])),
            "special": draw(st.sampled_from([None, None, None, "nan", "inf"])),
            "seed": draw(st.integers(0, 2**16)),
        }

    def wld_reference(s, t, y, lam, e, tau):
        s, t = s.double(), t.double()
        ce = F.cross_entropy(s, y.long())
        kd = tau**2 * F.kl_div(
            F.log_softmax(s / tau, 1), F.log_softmax(t / tau, 1), reduction="batchmean", log_target=True
        )
        return (1 - lam) * ce + lam * torch.clamp(kd - e, min=0), ce.abs() + kd.abs() + 1

    @settings(max_examples=max(budget // 3, 1), **SETTINGS)
    @given(wld_cases())
    def sweep_wld(c):
        counts["examples"] += 1
        print("WLD CASE", {k: (str(v) if isinstance(v, torch.dtype) else v) for k, v in c.items()}, flush=True)
        g = torch.Generator().manual_seed(c["seed"])
        b, k, dev, dtype = c["b"], c["k"], c["device"], c["dtype"]
        s = torch.randn(b, k, generator=g, dtype=torch.float64) * c["magnitude"]
        t = torch.randn(b, k, generator=g, dtype=torch.float64) * c["magnitude"]
        if c["special"] and s.numel():
            s.view(-1)[c["seed"] % s.numel()] = float(c["special"])
        t = {"same": t, "transposed": t.t(), "short": t[:-1]}[c["teacher_shape"]]
        if c["layout"] == "strided":
            s, t = s.t().contiguous().t(), t.t().contiguous().t()
        y = torch.randint(0, max(k, 1), (b,), generator=g)
        bad = {None: None, "k": k}.get(c["target_bad"], c["target_bad"])
        if bad is not None and b:
            y[-1] = bad
        s = s.to(dev, dtype).requires_grad_(dtype in floats)
        t, y = t.to(dev, c["teacher_dtype"] or dtype), y.to(dev, c["target_dtype"]) if bad != 2**40 else y.to(dev)
        lam, e, tau = c["lam"], c["e"], c["tau"]
        valid_target = y.dtype in (torch.int64, torch.int32, torch.uint8) and bool(((y >= 0) & (y < k)).all())
        ok = (
            dtype in floats
            and t.dtype in floats
            and b > 0
            and k > 0
            and t.shape == s.shape
            and valid_target
            and 0 <= lam <= 1
            and 0 <= e < float("inf")
            and 0 < tau < float("inf")
        )
        expect = None if ok and t.dtype != dtype else ok  # a teacher of another float dtype may be accepted
        try:
            loss = icn.wld_loss(s, t, y, lam, e, tau)
        except (ValueError, TypeError, RuntimeError) as err:
            check_error(err)
            print(f"RAISED {type(err).__name__}: {str(err).splitlines()[0][:200]}", flush=True)
            assert expect is not True, f"a valid case raised {type(err).__name__}: {err}"
            counts["raised"] += 1
            return
        assert expect is not False, "an invalid case did not raise"
        assert loss.dtype == dtype and loss.shape == () and loss.device == s.device
        want, scale = wld_reference(s, t, y, lam, e, tau)
        assert bool(loss.isnan()) == bool(want.isnan()), (loss, want)
        if torch.isfinite(want):
            assert abs(loss.double().item() - want.item()) <= tol[dtype] * 10 * scale.item(), (loss, want)
            if torch.isfinite(s).all() and dtype in (torch.float32, torch.float64):
                (gs,) = torch.autograd.grad(loss, s)
                (ws,) = torch.autograd.grad(want, s)
                assert (gs.double() - ws).abs().max().item() <= tol[dtype] * 10 * (ws.abs().max().item() + 1)
        counts["matched"] += 1

    return sweep_wld
