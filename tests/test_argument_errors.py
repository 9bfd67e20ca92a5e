"""Bad arguments to the IC op and IcConv2d: a clear error that names the argument (never a crash,
a panic or a C++ trace), and the double backward refused with a pointer to the reference."""

import sys
import textwrap

import pytest
import torch

import ic_networks as icn
from ic_networks.reference import ic_conv2d_reference

BAD_INPUTS = textwrap.dedent(
    r"""
    import torch, ic_networks as icn
    from ic_networks.functional import ic_conv2d
    ok = lambda *s: torch.randn(*s)
    x, w, wa, b1, a = ok(2, 4, 8, 8), ok(6, 4, 3, 3), ok(6, 4, 1, 1), ok(6), torch.tensor(0.5)
    cases = {
        "rank":        lambda: ic_conv2d(ok(4, 8), w, wa, b1, a),
        "weight_rank": lambda: ic_conv2d(x, ok(6, 4, 3), wa, b1, a),
        "dtype_mismatch": lambda: ic_conv2d(x.double(), w, wa, b1, a),
        "int_tensor":  lambda: ic_conv2d(torch.ones(2, 4, 8, 8, dtype=torch.int64), w.long(), wa.long(), b1.long(), a),
        "channels":    lambda: ic_conv2d(ok(2, 5, 8, 8), w, wa, b1, a),
        "groups":      lambda: ic_conv2d(x, w, wa, b1, a, groups=3),
        "groups_out":  lambda: ic_conv2d(x, ok(6, 1, 3, 3), ok(6, 1, 1, 1), b1, a, groups=4),
        "adjust_w":    lambda: ic_conv2d(x, w, ok(6, 4, 3, 3), b1, a),
        "adjust_b":    lambda: ic_conv2d(x, w, wa, ok(5), a),
        "bias":        lambda: ic_conv2d(x, w, wa, b1, a, bias=ok(7)),
        "alpha_shape": lambda: ic_conv2d(x, w, wa, b1, ok(3)),
        "alpha_type":  lambda: ic_conv2d(x, w, wa, b1, "big"),
        "stride0":     lambda: ic_conv2d(x, w, wa, b1, a, stride=0),
        "neg_pad":     lambda: ic_conv2d(x, w, wa, b1, a, padding=-1),
        "dilation0":   lambda: ic_conv2d(x, w, wa, b1, a, dilation=0),
        "too_small":   lambda: ic_conv2d(ok(2, 4, 2, 2), w, wa, b1, a),
        "not_tensor":  lambda: ic_conv2d([[1.0]], w, wa, b1, a),
        "bad_padding": lambda: ic_conv2d(x, w, wa, b1, a, padding="full"),
        "same_stride": lambda: ic_conv2d(x, w, wa, b1, a, stride=2, padding="same"),
        "module_alpha_mode": lambda: icn.IcConv2d(4, 4, 3, alpha_mode="sometimes"),
        "module_rank": lambda: icn.IcConv2d(4, 4, 3)(ok(4)),
        "groups_bool": lambda: ic_conv2d(x, w, wa, b1, a, groups=True),
    }
    if torch.cuda.is_available():
        cases["device"] = lambda: ic_conv2d(x.cuda(), w, wa, b1, a)
    for name, fn in cases.items():
        try:
            fn()
        except (ValueError, TypeError, RuntimeError) as e:
            msg = str(e)
            assert msg and "panicked" not in msg and "Exception raised from" not in msg, (name, msg)
            print(f"{name}\t{type(e).__name__}\t{msg.splitlines()[0]}")
        else:
            print(f"{name}\tNO-ERROR\t")
    print("SURVIVED")
    """
)


def test_bad_inputs_raise_clear_errors_in_subprocess(tmp_path):
    from ic_networks.training import watchdog

    r = watchdog.run(
        [sys.executable, "-X", "faulthandler", "-c", BAD_INPUTS],
        300,
        dump_dir=tmp_path,
        merge_stderr=False,
        what="bad-input sweep",
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert "SURVIVED" in r.stdout
    lines = dict(line.split("\t", 1) for line in r.stdout.splitlines() if "\t" in line)
    bad = {k: v for k, v in lines.items() if v.startswith("NO-ERROR")}
    assert not bad, bad
    expected_words = {
        "rank": "x",
        "weight_rank": "weight",
        "dtype_mismatch": "dtype",
        "int_tensor": "floating",
        "channels": "channels",
        "groups": "groups",
        "adjust_w": "adjust_weight",
        "adjust_b": "adjust_bias",
        "bias": "bias",
        "alpha_shape": "alpha",
        "alpha_type": "alpha",
        "stride0": "stride",
        "neg_pad": "padding",
        "dilation0": "dilation",
        "too_small": "kernel",
        "not_tensor": "x",
        "bad_padding": "padding",
        "same_stride": "same",
        "module_alpha_mode": "alpha_mode",
        "module_rank": "x",
        "groups_bool": "groups",
    }
    for name, word in expected_words.items():
        assert word in lines[name], (name, lines[name])


@pytest.mark.parametrize(
    "kwargs,name",
    [
        (dict(stride=-1), "stride"),
        (dict(stride=0), "stride"),
        (dict(stride=(1, 0)), "stride"),
        (dict(kernel_size=0), "kernel_size"),
        (dict(kernel_size=(3, -1)), "kernel_size"),
        (dict(padding=-1), "padding"),
        (dict(padding=(0, -2)), "padding"),
        (dict(padding="full"), "padding"),
        (dict(dilation=0), "dilation"),
        (dict(groups=0), "groups"),
        (dict(groups=3), "groups"),
        (dict(out_channels=6, groups=4), "groups"),
        (dict(in_channels=0), "in_channels"),
        (dict(out_channels=-2), "out_channels"),
        (dict(alpha_mode="sometimes"), "alpha_mode"),
        (dict(stride=2, padding="same"), "same"),
    ],
)
def test_constructor_refuses_bad_arguments_naming_them(kwargs, name):
    args = dict(in_channels=4, out_channels=8, kernel_size=3)
    args.update(kwargs)
    with pytest.raises(ValueError, match=name):
        icn.IcConv2d(**args)


@pytest.mark.parametrize(
    "kwargs,name",
    [
        (dict(stride=1.5), "stride"),
        (dict(kernel_size="3"), "kernel_size"),
        (dict(groups=True), "groups"),
        (dict(dilation=(1, 2, 3)), "dilation"),
    ],
)
def test_constructor_refuses_wrong_argument_types_naming_them(kwargs, name):
    args = dict(in_channels=4, out_channels=8, kernel_size=3)
    args.update(kwargs)
    with pytest.raises((TypeError, ValueError), match=name):
        icn.IcConv2d(**args)


def test_double_backward_is_refused_naming_the_reference():
    """A gradient penalty: the native op's gradient is not differentiable again; the error names the
    twice-differentiable reference, and the reference's second derivative is a real one."""
    torch.manual_seed(0)
    layer = icn.IcConv2d(3, 4, 3, padding=1, alpha=0.5).double()
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64, requires_grad=True)
    (gx,) = torch.autograd.grad(layer(x).square().sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match=r"double backward.*ic_networks\.reference\.ic_conv2d_reference"):
        gx.square().sum().backward()
    args = (layer.weight, layer.adjust_weight, layer.adjust_bias, layer.alpha, layer.bias, 1, 1, 1, 1)
    (gx_ref,) = torch.autograd.grad(ic_conv2d_reference(x, *args).square().sum(), x, create_graph=True)
    torch.testing.assert_close(gx_ref, gx.detach())
    (gw,) = torch.autograd.grad(gx_ref.square().sum(), layer.weight)
    assert gw.abs().sum() > 0
    assert torch.autograd.gradgradcheck(
        lambda x_, w_: ic_conv2d_reference(x_, w_, *args[1:]),
        (x.detach()[:1].requires_grad_(), layer.weight.detach().requires_grad_()),
    )
