//! Rust tests of the IC convolution kernels against libtorch's own autograd on the plain formula,
//! on small tensors, for the CPU backends (f32/f64, NCHW/NHWC, with and without the box-sum
//! fusion) and the libtorch backend (half types, mixed memory orders).
use _core::ic_conv::{self, ConvGeometry, NeedsGrad};
use _core::layout::{is_nhwc, layout_of};
use _core::{cpu, wld};
use tch::{Device, Kind, Tensor};

fn reference(x: &Tensor, w: &Tensor, wa: &Tensor, b1: &Tensor, a: &Tensor, b2: &Tensor, g: &ConvGeometry) -> Tensor {
    let y = x.conv2d(w, None::<Tensor>, g.stride, g.padding, g.dilation, g.groups);
    let c = x.size()[1];
    let (kh, kw) = (w.size()[2], w.size()[3]);
    let ones = Tensor::ones([c, 1, kh, kw], (x.kind(), x.device()));
    let s = x.conv2d(&ones, None::<Tensor>, g.stride, g.padding, g.dilation, c);
    let p = s.conv2d(wa, None::<Tensor>, [1, 1], [0, 0], [1, 1], g.groups);
    let z = &y - p + b1.view([1, -1, 1, 1]);
    &y + a * z.relu() + b2.view([1, -1, 1, 1])
}

/// NHWC memory order with the logical NCHW shape.
fn channels_last(t: &Tensor) -> Tensor {
    t.permute([0, 2, 3, 1]).contiguous().permute([0, 3, 1, 2])
}

fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).abs().max().double_value(&[])
}

/// Memory layout of the output gradient handed to the backward.
#[derive(Clone, Copy, Debug)]
enum GradLayout {
    /// The output's own layout.
    Same,
    /// The other memory order (NHWC for an NCHW output and back).
    Other,
    /// One value broadcast (stride 0), as `out.sum().backward()` hands it.
    Expanded,
}

fn check_case(kind: Kind, nhwc: bool, g: ConvGeometry, k: i64) {
    check_case_with(kind, nhwc, g, k, GradLayout::Same)
}

fn check_case_with(kind: Kind, nhwc: bool, g: ConvGeometry, k: i64, grad_layout: GradLayout) {
    tch::manual_seed(0);
    let opts = (kind, Device::Cpu);
    let (cin, cout) = (4, 6);
    let mut x = Tensor::randn([2, cin, 9, 8], opts);
    if nhwc {
        x = channels_last(&x);
    }
    let w = Tensor::randn([cout, cin / g.groups, k, k], opts) * 0.5;
    let wa = Tensor::randn([cout, cin / g.groups, 1, 1], opts) * 0.3;
    let b1 = Tensor::randn([cout], opts) * 0.5;
    let b2 = Tensor::randn([cout], opts);
    let a = Tensor::from(0.7f64).to_kind(kind);

    let fwd = ic_conv::forward(&x, &w, &wa, &b1, &a, Some(&b2), &g).unwrap();
    let leaves: Vec<Tensor> =
        [&x, &w, &wa, &b1, &a, &b2].iter().map(|t| t.detach().copy().set_requires_grad(true)).collect();
    let r = reference(&leaves[0], &leaves[1], &leaves[2], &leaves[3], &leaves[4], &leaves[5], &g);
    let tol = if kind == Kind::Double { 1e-10 } else { 1e-4 };
    assert!(max_diff(&fwd.out, &r) < tol, "forward differs: {}", max_diff(&fwd.out, &r));

    let go = match grad_layout {
        GradLayout::Same => Tensor::randn(r.size(), opts),
        GradLayout::Other if nhwc => Tensor::randn(r.size(), opts).contiguous(),
        GradLayout::Other => channels_last(&Tensor::randn(r.size(), opts)),
        GradLayout::Expanded => Tensor::randn([1, 1, 1, 1], opts).expand(r.size(), false),
    };
    let want = Tensor::run_backward(&[(&r * &go).sum(kind)], &leaves, false, false);
    let got = ic_conv::backward(&go, &x, &w, &wa, &b1, &a, &fwd.relu_z, true, &g, &NeedsGrad::all()).unwrap();
    let got = [got.x, got.weight, got.adjust_weight, got.adjust_bias, got.alpha, got.bias];
    let names = ["x", "weight", "adjust_weight", "adjust_bias", "alpha", "bias"];
    for ((gt, wt), name) in got.iter().zip(want.iter()).zip(names) {
        let gt = gt.as_ref().unwrap_or_else(|| panic!("no grad for {name}"));
        let scale = 1.0 + wt.abs().max().double_value(&[]);
        assert!(max_diff(gt, wt) < tol * scale * 10.0, "{name}: differs by {}", max_diff(gt, wt));
    }
}

#[test]
fn matches_libtorch_autograd_f64() {
    for (g, k) in [
        (ConvGeometry::default(), 3),
        (ConvGeometry { stride: [2, 2], padding: [1, 1], ..Default::default() }, 3),
        (ConvGeometry { padding: [2, 2], dilation: [2, 2], groups: 2, ..Default::default() }, 3),
        (ConvGeometry { padding: [1, 1], ..Default::default() }, 1),
    ] {
        check_case(Kind::Double, false, g, k);
        check_case(Kind::Double, true, g, k);
    }
}

#[test]
fn mixed_memory_orders_match_autograd() {
    // grad in another order than x and relu_z (the libtorch backend), or broadcast
    for (g, k) in [
        (ConvGeometry { padding: [1, 1], ..Default::default() }, 3),
        (ConvGeometry { stride: [2, 2], padding: [1, 1], ..Default::default() }, 3),
        (ConvGeometry { padding: [1, 1], groups: 2, ..Default::default() }, 3),
    ] {
        for nhwc in [false, true] {
            for gl in [GradLayout::Other, GradLayout::Expanded] {
                check_case_with(Kind::Double, nhwc, g, k, gl);
            }
        }
    }
}

#[test]
fn half_types_take_the_libtorch_backend() {
    // no CPU kernel for bfloat16: the libtorch ops, checked against the float64 result
    tch::manual_seed(4);
    let opts = (Kind::Double, Device::Cpu);
    let g = ConvGeometry { padding: [1, 1], ..Default::default() };
    let (x, w, wa, b1) = (
        Tensor::randn([2, 4, 7, 6], opts),
        Tensor::randn([6, 4, 3, 3], opts) * 0.3,
        Tensor::randn([6, 4, 1, 1], opts) * 0.3,
        Tensor::randn([6], opts),
    );
    let a = Tensor::from(0.5f64);
    let want = ic_conv::forward(&x, &w, &wa, &b1, &a, None, &g).unwrap().out;
    let bf = |t: &Tensor| t.to_kind(Kind::BFloat16);
    let got = ic_conv::forward(&bf(&x), &bf(&w), &bf(&wa), &bf(&b1), &a, None, &g).unwrap();
    assert_eq!(got.out.kind(), Kind::BFloat16);
    assert!(max_diff(&got.out.to_kind(Kind::Double), &want) < 0.2 * (1.0 + want.abs().max().double_value(&[])));
}

#[test]
fn matches_libtorch_autograd_f32() {
    let g = ConvGeometry { padding: [1, 1], ..Default::default() };
    check_case(Kind::Float, false, g, 3);
    check_case(Kind::Float, true, g, 3);
}

#[test]
fn alpha_zero_is_bit_identical_to_conv() {
    tch::manual_seed(1);
    let opts = (Kind::Float, Device::Cpu);
    let x = Tensor::randn([2, 8, 10, 10], opts);
    let w = Tensor::randn([8, 8, 3, 3], opts);
    let b2 = Tensor::randn([8], opts);
    let g = ConvGeometry { padding: [1, 1], ..Default::default() };
    let out = ic_conv::forward(
        &x,
        &w,
        &Tensor::randn([8, 8, 1, 1], opts),
        &Tensor::randn([8], opts),
        &Tensor::from(0.0f32),
        Some(&b2),
        &g,
    )
    .unwrap()
    .out;
    let conv = x.conv2d(&w, Some(&b2), [1, 1], [1, 1], [1, 1], 1);
    assert!(out.equal(&conv));
}

#[test]
fn fused_layout_detection() {
    let t = Tensor::zeros([2, 3, 4, 5], (Kind::Float, Device::Cpu));
    assert_eq!(cpu::layout_of(&t), Some(cpu::Layout::Nchw { c: 3, hw: 20 }));
    let cl = channels_last(&t);
    assert_eq!(cpu::layout_of(&cl), Some(cpu::Layout::Nhwc { c: 3 }));
    assert_eq!(cpu::layout_of(&t.transpose(2, 3)), None);
}

#[test]
fn errors_name_the_argument() {
    let opts = (Kind::Float, Device::Cpu);
    let g = ConvGeometry::default();
    let x = Tensor::randn([1, 4, 5, 5], opts);
    let w = Tensor::randn([4, 4, 3, 3], opts);
    let e = ic_conv::forward(
        &x,
        &w,
        &Tensor::randn([4, 4, 3, 3], opts),
        &Tensor::randn([4], opts),
        &Tensor::from(1.0f32),
        None,
        &g,
    )
    .err()
    .unwrap();
    assert!(e.to_string().contains("adjust_weight"), "{e}");
    assert!(ConvGeometry::from_lists(&[0], &[0], &[1], 1).unwrap_err().to_string().contains("stride"));
}

#[test]
fn wld_gradient_matches_autograd() {
    tch::manual_seed(2);
    let opts = (Kind::Double, Device::Cpu);
    let s = Tensor::randn([5, 7], opts) * 3.0;
    let t = Tensor::randn([5, 7], opts) * 3.0;
    let y = Tensor::from_slice(&[0i64, 3, 6, 2, 2]);
    let cfg = wld::WldConfig { lam: 0.6, e: 0.0, tau: 2.0 };
    let out = wld::forward(&s, &t, &y, &cfg).unwrap();
    // reference with libtorch autograd
    let sl = s.detach().copy().set_requires_grad(true);
    let tau = cfg.tau;
    let kd = (t.shallow_clone() / tau).softmax(1, Kind::Double)
        * ((t.shallow_clone() / tau).log_softmax(1, Kind::Double) - (&sl / tau).log_softmax(1, Kind::Double));
    let kd = kd.sum(Kind::Double) * (tau * tau / 5.0);
    let ce = sl.log_softmax(1, Kind::Double).gather(1, &y.unsqueeze(1), false).mean(Kind::Double).neg();
    let loss = &ce * (1.0 - cfg.lam) + (&kd - cfg.e).clamp_min(0.0) * cfg.lam;
    assert!((loss.double_value(&[]) - out.loss.double_value(&[])).abs() < 1e-12);
    let want = Tensor::run_backward(&[&loss], &[&sl], false, false).pop().unwrap();
    let got = wld::backward(&Tensor::from(1.0f64), &s, &t, &y, &cfg).unwrap();
    assert!(max_diff(&got, &want) < 1e-12);
}

#[test]
fn cpu_boxsum_matches_libtorch_in_every_geometry() {
    // The Rust separable kernel (dense f32/f64, NCHW/NHWC) against a depthwise conv with ones,
    // and its adjoint against the conv's input gradient.
    tch::manual_seed(3);
    for kind in [Kind::Float, Kind::Double] {
        for nhwc in [false, true] {
            for (k, s, p, d) in
                [(3, 1, 1, 1), (3, 2, 1, 1), (5, 1, 2, 1), (3, 1, 2, 2), (1, 1, 1, 1), (3, 2, 0, 2), (1, 2, 0, 1)]
            {
                let g = ConvGeometry { stride: [s, s], padding: [p, p], dilation: [d, d], groups: 1 };
                let mut x = Tensor::randn([2, 3, 9, 8], (kind, Device::Cpu));
                if nhwc {
                    x = channels_last(&x);
                }
                let ones = Tensor::ones([3, 1, k, k], (kind, Device::Cpu));
                let want = x.conv2d(&ones, None::<Tensor>, [s, s], [p, p], [d, d], 3);
                let got = _core::boxsum::boxsum(&x, k, k, &g).unwrap();
                assert_eq!(got.size(), want.size());
                assert!(max_diff(&got, &want) < 1e-4, "boxsum k{k} s{s} p{p} d{d} nhwc={nhwc}");
                let gout = Tensor::randn(want.size(), (kind, Device::Cpu));
                let xl = x.detach().copy().set_requires_grad(true);
                let y = xl.conv2d(&ones, None::<Tensor>, [s, s], [p, p], [d, d], 3);
                let gw = Tensor::run_backward(&[(&y * &gout).sum(kind)], &[&xl], false, false).pop().unwrap();
                let shape: [i64; 4] = x.size().try_into().unwrap();
                // the adjoint comes out in grad's memory order
                let order = layout_of(&gout).unwrap().order();
                let gg = cpu::boxsum::backward(&gout, shape, k, k, &g, (kind, order), cpu::dense::empty).unwrap();
                assert!(max_diff(&gg, &gw) < 1e-4, "adjoint k{k} s{s} p{p} d{d} nhwc={nhwc}");
                let gg = _core::libtorch::boxsum::backward(&gout, shape, k, k, &g, is_nhwc(&gout)).unwrap();
                assert!(max_diff(&gg, &gw) < 1e-4, "libtorch adjoint k{k} s{s} p{p} d{d} nhwc={nhwc}");
            }
        }
    }
}
