"""The fidelity tools: W'/b1 initialisations, the branch-ratio diagnostic, the IC-branch learning
rate, seed statistics, the residual Fashion-MNIST network, and the ablation study end to end on
tiny data."""

import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import ic_networks as icn
from helpers import tiny_fmnist_dir
from ic_networks.diagnostics import branch_ratios, format_branch_ratios
from ic_networks.experiments import stats, study
from ic_networks.nn import ADJUST_INITS
from ic_networks.reference import boxsum_reference
from ic_networks.training.recipes import get_recipe
from ic_networks.training.trainer import param_groups


# ----------------------------------------------------------------------------- W' and b1 inits
def test_adjust_inits_draw_the_documented_distributions():
    torch.manual_seed(0)
    cin, k = 64, 3
    bound = 1 / math.sqrt(cin * k * k)
    layers = {init: icn.IcConv2d(cin, 256, k, adjust_init=init, adjust_bias_init=0.25) for init in ADJUST_INITS}
    w = {init: m.adjust_weight.detach() for init, m in layers.items()}
    assert w["like_weight"].abs().max() <= bound and w["like_weight"].abs().max() > 0.95 * bound
    assert w["scaled"].abs().max() <= bound / 9 and w["scaled"].abs().max() > 0.95 * bound / 9
    assert torch.count_nonzero(w["zeros"]) == 0
    assert abs(w["normal"].std().item() - 0.01) < 0.0005 and abs(w["normal"].mean().item()) < 0.0005
    for m in layers.values():
        assert torch.equal(m.adjust_bias.detach(), torch.full((256,), 0.25))
    m = layers["zeros"]
    with torch.no_grad():
        m.adjust_weight.fill_(3.0)
    m.reset_parameters()  # a reset follows the layer's own init
    assert torch.count_nonzero(m.adjust_weight) == 0


def test_adjust_init_errors_name_the_argument():
    with pytest.raises(ValueError, match="adjust_init"):
        icn.IcConv2d(2, 2, 3, adjust_init="xavier")
    with pytest.raises(TypeError, match="adjust_bias_init"):
        icn.IcConv2d(2, 2, 3, adjust_bias_init=float("nan"))
    with pytest.raises(ValueError, match="adjust_init"):
        icn.convert(nn.Conv2d(2, 2, 3), adjust_init="ones")


@pytest.mark.parametrize("init", ADJUST_INITS)
def test_conversion_with_any_init_keeps_alpha0_bit_identity(init):
    torch.manual_seed(1)
    plain = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 4, 3, stride=2)).eval()
    ic = icn.convert(plain, adjust_init=init, adjust_bias_init=-0.5)
    layers = icn.ic_layers(ic)
    assert len(layers) == 2 and all(m.adjust_init == init and float(m.adjust_bias[0].detach()) == -0.5 for m in layers)
    x = torch.randn(2, 3, 9, 9)
    assert torch.equal(ic(x), plain(x))


# --------------------------------------------------------------------------------- diagnostic
def _ratio_by_hand(m: icn.IcConv2d, x: torch.Tensor) -> float:
    """float64, plain PyTorch: std(alpha relu(Y - W' boxsum(X) + b1)) / std(Y)."""
    xd = m.op_input(x).double()
    w, wa, b1 = m.weight.double(), m.adjust_weight.double(), m.adjust_bias.double()
    y = F.conv2d(xd, w, None, m.stride, m._ic_padding, m.dilation, m.groups)
    s = boxsum_reference(xd, m.kernel_size, m.stride, m._ic_padding, m.dilation)
    z = y - F.conv2d(s, wa, None, 1, 0, 1, m.groups) + b1.view(1, -1, 1, 1)
    return (float(m.alpha) * torch.relu(z)).std().item() / y.std().item()


def test_branch_ratios_match_a_float64_computation_by_hand():
    torch.manual_seed(2)
    a = icn.IcConv2d(3, 8, 3, padding=1, padding_mode="reflect", alpha=0.7)
    b = icn.IcConv2d(8, 6, 3, stride=2, padding="valid", groups=2, alpha=1.3, adjust_bias_init=0.2)
    model = nn.Sequential(a, nn.ReLU(), b)
    x = torch.randn(4, 3, 11, 11)
    stats_ = branch_ratios(model, x)
    assert [s.name for s in stats_] == ["0", "2"]
    h = torch.relu(a(x)).detach()
    for s, m, inp in zip(stats_, (a, b), (x, h)):
        assert s.ratio == pytest.approx(_ratio_by_hand(m, inp), rel=1e-4)
        assert s.alpha == pytest.approx(float(m.alpha)) and 0 < s.active < 1
        assert s.ratio == pytest.approx(s.branch_std / s.conv_std)
    table = format_branch_ratios(stats_)
    assert "| 0 | 0.7 |" in table and "mean of 2 layers" in table
    a.set_alpha(0.0)
    assert branch_ratios(model, x)[0].ratio == 0.0


def test_branch_ratios_errors():
    with pytest.raises(ValueError, match="model: it has no IcConv2d"):
        branch_ratios(nn.Conv2d(1, 1, 3), torch.randn(1, 1, 5, 5))
    with pytest.raises(TypeError, match="x: expected a torch.Tensor"):
        branch_ratios(icn.IcConv2d(1, 1, 3), [1.0])


def test_cli_diagnose_prints_a_table(capsys):
    assert icn.cli.main(["diagnose", "ic_fmnist_cnn", "--probe", "noise", "--batch", "4"]) == 0
    out = capsys.readouterr().out
    assert "| features.0 | 1 |" in out and "mean of 3 layers" in out


# ------------------------------------------------------------------------------ IC branch lr
def test_param_groups_give_the_ic_branch_its_own_lr_and_alpha_no_decay():
    model = nn.Sequential(icn.IcConv2d(1, 4, 3, alpha=0.0, alpha_mode="learnable"), nn.Flatten(), nn.LazyLinear(3))
    model(torch.randn(1, 1, 6, 6))
    recipe = get_recipe("wld-fmnist", ic_lr_mult=10.0, weight_decay=1e-3)
    groups = param_groups(model, recipe)
    where = {id(p): (g["lr"], g["weight_decay"]) for g in groups for p in g["params"]}
    ic = model[0]
    assert where[id(ic.weight)] == (recipe.lr, 1e-3) and where[id(model[2].weight)] == (recipe.lr, 1e-3)
    assert where[id(ic.adjust_weight)] == (10 * recipe.lr, 1e-3) and where[id(ic.adjust_bias)] == (10 * recipe.lr, 1e-3)
    assert where[id(ic.alpha)] == (10 * recipe.lr, 0.0)
    assert len(where) == sum(1 for _ in model.parameters())
    assert len(param_groups(model, recipe.replace(ic_lr_mult=1.0))) == 2  # decay / alpha
    with pytest.raises(ValueError, match="ic_lr_mult"):
        recipe.replace(ic_lr_mult=0.0)


# -------------------------------------------------------------------------------- statistics
def test_mean_std_and_paired_differences():
    ms = stats.mean_std([1.0, 2.0, 3.0, 4.0])
    assert ms.mean == 2.5 and ms.std == pytest.approx(math.sqrt(5 / 3)) and str(ms) == "2.50 ± 1.29"
    assert stats.mean_std([7.0]).std == 0.0
    d = stats.paired_diff([1.0, 2.0, 3.0], [2.0, 3.0, 5.0])  # differences 1, 1, 2
    half = 4.303 * math.sqrt(1 / 3) / math.sqrt(3)
    assert (
        d.mean == pytest.approx(4 / 3)
        and d.low == pytest.approx(4 / 3 - half)
        and d.high == pytest.approx(4 / 3 + half)
    )
    assert (d.wins, d.losses, d.significant, d.verdict()) == (3, 0, False, "within seed noise")
    d = stats.paired_diff([80.0, 81.0, 82.0], [79.0, 80.1, 80.9])
    assert d.significant and d.verdict() == "exceeds seed noise (worse)" and d.losses == 3
    assert stats.paired_diff([1.0], [2.0]).verdict() == "one seed: no noise estimate"
    with pytest.raises(ValueError, match="a, b"):
        stats.paired_diff([1.0], [1.0, 2.0])
    assert stats.t975(2) == 4.303 and stats.t975(100) == 1.96


# ------------------------------------------------------------------------ the residual network
def test_fmnist_resnet_shapes_params_and_ic_layers():
    m = icn.models.fmnist_resnet()
    assert sum(p.numel() for p in m.parameters()) == 77_754
    assert m(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    ic = icn.models.ic_fmnist_resnet()
    layers = icn.ic_layers(ic)
    assert len(layers) == 7 and all(tuple(x.kernel_size) == (3, 3) for x in layers)  # 1x1 shortcuts stay plain
    assert len(icn.ic_layers(icn.models.ic_fmnist_resnet(depth=14))) == 13
    with pytest.raises(ValueError, match="depth"):
        icn.models.fmnist_resnet(depth=10)
    with pytest.raises(ValueError, match="x: expected a"):
        m(torch.randn(1, 1, 32, 32))


# --------------------------------------------------------------------------------- the study
def test_study_cells_cover_the_factors():
    cells = study.scratch_cells(("cnn", "resnet"), (0.05, 0.1))
    cnn = [c for c in cells if c.net == "cnn"]
    assert {c.factor for c in cnn} == {"", "W' init", "alpha", "b1 init"}
    assert {(c.ic, c.lr) for c in cnn if not c.factor} == {(False, 0.05), (True, 0.05), (False, 0.1), (True, 0.1)}
    assert {c.adjust_init for c in cnn} == set(ADJUST_INITS)
    assert len({c.name for c in cells}) == len(cells)
    wld = study.wld_cells()
    assert wld[0].mode == "ce" and {c.factor for c in wld[1:]} == {"", "branch lr", "alpha start", "e", "tau"}
    with pytest.raises(ValueError, match="nets"):
        study.StudyConfig(nets=("vgg",))
    with pytest.raises(ValueError, match="train_images"):
        study.StudyConfig(train_images=59_000, val_images=5_000)


def test_study_end_to_end_on_tiny_data_and_resume(tmp_path):
    (tmp_path / "data").mkdir()
    data = tiny_fmnist_dir(tmp_path / "data")
    cfg = study.StudyConfig(
        train_images=256,
        val_images=128,
        epochs=1,
        wld_epochs=1,
        seeds=(0, 1),
        nets=("cnn",),
        lrs=(0.05,),
        probe_images=32,
    )
    with pytest.raises(ValueError, match="run the scratch part first"):
        study.run_study(
            study.StudyConfig(**{**cfg.__dict__, "parts": ("wld",)}), tmp_path / "s", data, jobs=1, log=lambda s: None
        )
    lines = []
    res = study.run_study(cfg, tmp_path / "s", data, jobs=1, log=lines.append)
    n_scratch = len(study.scratch_cells(("cnn",), (0.05,)))
    assert len(res["runs"]) == 2 * (n_scratch + len(study.wld_cells()))
    cells = res["summary"]["scratch"]["cells"]
    plain, ic = cells["cnn/plain/lr0.05"], cells["cnn/ic/lr0.05"]
    assert "d_val" not in plain and ic["d_val"]["n"] == 2 and len(ic["epochs_to_ref_final"]) == 2
    by_seed = {r["seed"]: r for r in res["runs"] if r["cell"]["name"] == "cnn/ic/lr0.05"}
    base = {r["seed"]: r for r in res["runs"] if r["cell"]["name"] == "cnn/plain/lr0.05"}
    assert ic["d_val"]["mean"] == pytest.approx(sum(by_seed[s]["val_top1"] - base[s]["val_top1"] for s in (0, 1)) / 2)
    assert ic["ratio_init"] > 0 and plain["ratio_init"] is None
    assert cells["cnn/ic/W'=0"]["cell"]["adjust_init"] == "zeros"
    chosen = res["summary"]["scratch"]["chosen_on_val"]["cnn"]
    assert chosen["plain_candidates"] == 1 and chosen["ic_candidates"] == n_scratch - 1
    wld = res["summary"]["wld"]["cells"]
    assert (
        wld["WLD, IC branch lr x10"]["d_val"]["n"] == 2 and wld["CE control (plain, fine-tuned)"]["alpha_end"] is None
    )
    report = (tmp_path / "s" / "report.md").read_text()
    assert all(name in report for name in cells) and "WLD, tau=1" in report
    assert json.loads((tmp_path / "s" / "results.json").read_text())["summary"] == json.loads(
        json.dumps(res["summary"])
    )
    assert (tmp_path / "s" / "study.png").read_bytes()[:4] == b"\x89PNG"
    # a second study with the same settings reuses every run
    lines2 = []
    again = study.run_study(cfg, tmp_path / "s", data, jobs=1, log=lines2.append)
    assert any(f"{2 * n_scratch} run(s) reused" in s for s in lines2)
    assert any(f"{2 * len(study.wld_cells())} run(s) reused" in s for s in lines2)
    assert not any("worker process" in s for s in lines2)
    assert again["summary"] == res["summary"]


def test_study_runs_in_worker_processes(tmp_path):
    (tmp_path / "data").mkdir()
    data = tiny_fmnist_dir(tmp_path / "data")
    cfg = study.StudyConfig(
        train_images=128,
        val_images=64,
        epochs=1,
        seeds=(0,),
        nets=("cnn",),
        lrs=(0.05,),
        parts=("scratch",),
        probe_images=16,
    )
    dkey = cfg.data_key()
    cells = study.scratch_cells(("cnn",), (0.05,))[:2]
    import dataclasses

    jobs = [
        dict(
            part="scratch",
            cell=dataclasses.asdict(c),
            seed=0,
            epochs=1,
            data=dkey,
            root=str(data),
            threads=1,
            out=str(tmp_path / "runs" / str(i)),
        )
        for i, c in enumerate(cells)
    ]
    res = study.run_all(jobs, 2, lambda s: None)
    assert [r["cell"]["name"] for r in res] == [c.name for c in cells] and all(r["threads"] == 1 for r in res)
    threads = torch.get_num_threads()
    try:
        single = study.run_job(dict(jobs[1], out=str(tmp_path / "again")))
    finally:
        torch.set_num_threads(threads)
    assert single["val_top1"] == res[1]["val_top1"]  # same run in this process: same result
