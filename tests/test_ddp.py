"""DistributedDataParallel with IC layers (gloo, 2 processes): the op under DDP, the Trainer under DDP,
and a dead peer reported by rank."""

import datetime
import os

import pytest
import torch
from torch import nn

import ic_networks as icn
import ic_networks.cli
from helpers import Flat, free_port, tiny_dataset
from ic_networks.training.recipes import get_recipe
from ic_networks.training.trainer import Trainer


# --------------------------------------------------------------------------------------------------
# The op under DDP
# --------------------------------------------------------------------------------------------------
def _ddp_model():
    torch.manual_seed(0)
    return nn.Sequential(
        icn.IcConv2d(3, 6, 3, padding=1, alpha=0.0, alpha_mode="learnable"),
        nn.ReLU(),
        icn.IcConv2d(6, 4, 3, padding=1, alpha=0.0),  # fixed alpha = 0: W' and b1 still get (zero) gradients
    )


def _ddp_worker(rank, world, port, dump_dir=None):
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    from ic_networks.training import watchdog
    from ic_networks.training.distributed import shutdown_distributed

    watchdog.arm(dump_dir)
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=world,
        timeout=datetime.timedelta(seconds=60),
    )
    try:
        model = DDP(_ddp_model(), find_unused_parameters=False)
        single = _ddp_model()  # the same model without DDP, on the whole batch
        opts = [torch.optim.SGD(m.parameters(), lr=0.1) for m in (model, single)]
        for step in range(3):
            g = torch.Generator().manual_seed(step)
            x = torch.randn(2 * world, 3, 8, 8, generator=g)
            for opt in opts:
                opt.zero_grad()
            model(x[2 * rank : 2 * rank + 2]).square().mean().backward()
            single(x).square().mean().backward()
            for (name, p), q in zip(model.module.named_parameters(), single.parameters()):
                assert p.grad is not None, (step, name)
                torch.testing.assert_close(p.grad, q.grad, rtol=1e-5, atol=1e-6, msg=f"step {step} {name}")
            for name in ("adjust_weight", "adjust_bias"):  # alpha = 0: zero gradients, not None
                assert torch.count_nonzero(getattr(model.module[2], name).grad) == 0
                if step == 0:  # (the learnable alpha of layer 0 moves away from 0 after the first step)
                    assert torch.count_nonzero(getattr(model.module[0], name).grad) == 0
            assert model.module[0].alpha.grad.abs() > 0
            for opt in opts:
                opt.step()
        ok = True
    except BaseException:
        ok = False
        raise
    finally:
        # While `model` (DDP) is still alive: its reducer must not hold the last reference to the
        # process group (see shutdown_distributed), else about 1 teardown in 10 hangs.
        shutdown_distributed(ok)


def test_ddp_gloo_two_processes_alpha_zero_no_unused_parameters(tmp_path):
    import torch.multiprocessing as mp

    from ic_networks.training import watchdog

    ctx = mp.start_processes(
        _ddp_worker, args=(2, free_port(), str(tmp_path)), nprocs=2, join=False, start_method="spawn"
    )
    watchdog.join(ctx, 300, dump_dir=tmp_path, what="DDP workers")  # a hang fails with every worker's stacks


# --------------------------------------------------------------------------------------------------
# The Trainer under DDP
# --------------------------------------------------------------------------------------------------
def _engine_env(rank, world, port):
    """The environment torchrun gives a worker, so the engine's own init_distributed runs."""
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world)
    )


def _trainer_ddp_worker(rank, world, port, out):
    from ic_networks.training import watchdog
    from ic_networks.training.distributed import init_distributed, shutdown_distributed

    watchdog.arm(out)
    _engine_env(rank, world, port)
    torch.set_num_threads(1)
    init_distributed()
    ok = False
    try:
        torch.manual_seed(0)
        model = Flat()
        recipe = get_recipe("scratch-fmnist", epochs=1, batch_size=16, lr=0.1, weight_decay=0.0, lr_schedule="constant")
        t = Trainer(
            model, recipe, tiny_dataset(), tiny_dataset(), out, device="cpu", log=None, progress=False, overwrite=True
        )
        summary = t.fit()
        torch.save({"state": model.state_dict(), "summary": summary}, os.path.join(out, f"rank{rank}.pt"))
        ok = True
    finally:
        shutdown_distributed(ok)  # t (and its DDP wrapper) still alive here: the case that can hang


def _dying_peer_worker(rank, world, port, out):
    """Rank 1 dies (os._exit) in its second training step; rank 0 must fail with an error naming
    its rank, not hang."""
    from ic_networks.training import watchdog
    from ic_networks.training.distributed import init_distributed, shutdown_distributed

    watchdog.arm(out)
    _engine_env(rank, world, port)
    os.environ["IC_NETWORKS_DIST_TIMEOUT"] = "30"
    torch.set_num_threads(1)
    init_distributed()
    ok = False
    try:
        torch.manual_seed(0)
        recipe = get_recipe("scratch-fmnist", epochs=2, batch_size=8, lr=0.1, weight_decay=0.0, lr_schedule="constant")
        t = Trainer(
            Flat(), recipe, tiny_dataset(), tiny_dataset(), out, device="cpu", log=None, progress=False, overwrite=True
        )
        step = t._train_step

        def dying_step(x, y):
            if rank == 1 and t.step == 1:
                os._exit(3)
            step(x, y)

        t._train_step = dying_step
        try:
            t.fit()
        except BaseException as exc:  # recorded whatever it is: the test shows what rank 0 saw
            with open(os.path.join(out, f"error{rank}.txt"), "w") as fh:
                fh.write(f"{type(exc).__name__}: {exc}")
            return
        ok = True
    finally:
        shutdown_distributed(ok)


def test_ddp_two_processes_gloo(tmp_path):
    import torch.multiprocessing as mp

    from ic_networks.training import watchdog

    ctx = mp.start_processes(
        _trainer_ddp_worker, args=(2, free_port(), str(tmp_path)), nprocs=2, join=False, start_method="spawn"
    )
    watchdog.join(ctx, 300, dump_dir=tmp_path, what="DDP trainer workers")  # a hang fails with every worker's stacks
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    assert r0["summary"]["world_size"] == 2 and r0["summary"]["step"] == 2
    for k in r0["state"]:
        assert torch.equal(r0["state"][k], r1["state"][k]), k  # replicas stay identical
    assert r0["summary"]["val_top1"] == r1["summary"]["val_top1"]  # all-reduced evaluation
    assert (tmp_path / "checkpoint.pt").is_file()

    # the same two steps in one process with the global batch: the gradients DDP averaged are the same
    torch.manual_seed(0)
    model = Flat()
    recipe = get_recipe("scratch-fmnist", epochs=1, batch_size=16, lr=0.1, weight_decay=0.0, lr_schedule="constant")
    ds = tiny_dataset()
    # Both draw the same seeded permutation; the two ranks' batches of 8 interleave the single run's 16.
    Trainer(model, recipe, ds, ds, tmp_path / "single", device="cpu", log=None, progress=False).fit()
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, r0["state"][k], rtol=1e-5, atol=1e-6)


def test_ddp_dead_peer_gives_an_error_naming_the_rank(tmp_path):
    import torch.multiprocessing as mp

    from ic_networks.training import watchdog

    ctx = mp.start_processes(
        _dying_peer_worker, args=(2, free_port(), str(tmp_path)), nprocs=2, join=False, start_method="spawn"
    )
    p0, p1 = ctx.processes
    try:
        p0.join(300)  # rank 0 must notice the dead peer by itself (not ctx.join: it would kill rank 0)
        if p0.is_alive():
            pytest.fail("rank 0 still running 300 s after its peer died\n" + watchdog.stack_report([p0.pid], tmp_path))
        p1.join(30)
    finally:
        for p in (p0, p1):
            if p.is_alive():
                p.kill()
    err = tmp_path / "error0.txt"
    msg = err.read_text() if err.is_file() else "(rank 0 raised nothing)"
    assert p1.exitcode == 3 and p0.exitcode == 0, (p0.exitcode, p1.exitcode, msg)
    assert msg.startswith("RuntimeError: rank 0 of 2"), msg
