"""PYSKL's optimiser and schedule: cosine per iteration to 0, SGD Nesterov, weight decay on all params."""

import math

import pytest
import torch

from msg3d.engine.loader import iterations_per_epoch
from msg3d.engine.hparams import resolve_hparams
from msg3d.engine.schedule import CosineSchedule, MultiStepSchedule, build_optimizer, build_schedule, cosine_lr
from msg3d.models import build_model

NTU60_XSUB_ITERS = 25_072  # REFERENCE §5: 1,567 iterations/epoch x 16 epochs at global batch 128


@pytest.mark.parametrize(
    "train_samples, per_epoch",  # NTU60 xsub, xview, NTU120 xsub, xset
    [(40_091, 1_567), (37_646, 1_471), (63_026, 2_462), (54_468, 2_128)],
)
def test_iterations_per_epoch_as_pyskl(train_samples, per_epoch):
    # REFERENCE §5: repeat 5, 8 GPUs x 16, the sampler pads to a multiple of 8, no drop_last
    assert iterations_per_epoch(train_samples * 5, 8, 16) == per_epoch


def test_iterations_per_epoch_equals_the_loader_length():
    for n in range(1, 14):
        for world in (1, 2, 3):
            for batch in (1, 2, 5):
                sampler = torch.utils.data.DistributedSampler(range(n), num_replicas=world, rank=world - 1)
                loader = torch.utils.data.DataLoader(range(n), batch_size=batch, sampler=sampler)
                assert iterations_per_epoch(n, world, batch) == len(loader), (n, world, batch)


def test_cosine_values_at_chosen_iterations():
    lr, n = 0.1, NTU60_XSUB_ITERS
    assert cosine_lr(lr, 0, n) == 0.1
    assert cosine_lr(lr, n // 4, n) == pytest.approx(0.05 * (1 + math.sqrt(2) / 2), rel=1e-14)
    assert cosine_lr(lr, n // 2, n) == pytest.approx(0.05, rel=1e-14)
    assert cosine_lr(lr, 3 * n // 4, n) == pytest.approx(0.05 * (1 - math.sqrt(2) / 2), rel=1e-12)
    # the last iteration is just above 0: 0.05 (1 - cos(pi / n)) ~ 0.05 (pi / n)^2 / 2
    assert cosine_lr(lr, n - 1, n) == pytest.approx(0.05 * (math.pi / n) ** 2 / 2, rel=1e-6)
    assert cosine_lr(lr, n, n) == 0.0


def test_cosine_is_evaluated_in_mmcv_order():
    # mmcv: annealing_cos(start, 0, i / max) = 0 + 0.5 (start - 0) (cos(pi (i / max)) + 1)
    for i in (1, 7, 1234, 25_071):
        mmcv = 0 + 0.5 * (0.0125 - 0) * (math.cos(math.pi * (i / NTU60_XSUB_ITERS)) + 1)
        assert cosine_lr(0.0125, i, NTU60_XSUB_ITERS) == mmcv


def test_schedule_sets_every_group_and_checks_resume_state():
    params = [torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(3))]
    opt = torch.optim.SGD([{"params": params[:1]}, {"params": params[1:]}], lr=1.0)
    schedule = CosineSchedule(opt, 0.2, 10)
    assert schedule.apply(5) == pytest.approx(0.1)
    assert [g["lr"] for g in opt.param_groups] == [schedule.lr_at(5)] * 2
    schedule.load_state_dict(schedule.state_dict())
    with pytest.raises(ValueError, match="does not match"):
        schedule.load_state_dict({"base_lr": 0.2, "max_iters": 11})
    # checkpoints from before the multi-step schedule hold no "kind": they are cosine ones
    schedule.load_state_dict({"base_lr": 0.2, "max_iters": 10})


def test_multistep_is_msg3ds_kinetics_decay():
    """MS-G3D's adjust_learning_rate: lr * 0.1 ** sum(epoch >= step) for 0-based epochs, steps 45, 55."""
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    hp = resolve_hparams(recipe="msg3d-kinetics")
    iters_per_epoch = 7
    schedule = build_schedule(hp, opt, 0.1, hp.epochs * iters_per_epoch, iters_per_epoch)
    assert isinstance(schedule, MultiStepSchedule)
    per_epoch = [schedule.lr_at(e * iters_per_epoch + i) for e in range(hp.epochs) for i in (0, iters_per_epoch - 1)]
    expected = [0.1 * 0.1 ** ((e >= 45) + (e >= 55)) for e in range(hp.epochs) for _ in (0, 1)]
    assert per_epoch == expected
    assert schedule.lr_at(45 * iters_per_epoch - 1) == 0.1 and schedule.lr_at(45 * iters_per_epoch) == 0.1 * 0.1
    assert schedule.apply(55 * iters_per_epoch) == opt.param_groups[0]["lr"] == pytest.approx(1e-3)
    assert isinstance(build_schedule(resolve_hparams(), opt, 0.1, 10, 5), CosineSchedule)


def test_multistep_resume_checks_the_whole_schedule():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    schedule = MultiStepSchedule(opt, 0.1, 100, 10, [4, 8], 0.1)
    schedule.load_state_dict(schedule.state_dict())
    for changed in ({"steps": [4, 9]}, {"gamma": 0.5}, {"iters_per_epoch": 11}, {"kind": "cosine"}):
        with pytest.raises(ValueError, match=r"checkpoint schedule \(.*\) does not match this run's \(.*steps \[4, 8\]"):
            schedule.load_state_dict({**schedule.state_dict(), **changed})
    with pytest.raises(ValueError, match="does not match"):
        CosineSchedule(opt, 0.1, 100).load_state_dict(schedule.state_dict())


def test_sgd_nesterov_with_weight_decay_on_every_parameter():
    model = build_model(5, layout="nturgb+d", base_channels=12, num_gcn_scales=3, num_g3d_scales=2)
    opt = build_optimizer(model, lr=0.0125, momentum=0.9, nesterov=True, weight_decay=5e-4)
    assert len(opt.param_groups) == 1
    group = opt.param_groups[0]
    assert (group["lr"], group["momentum"], group["nesterov"], group["weight_decay"]) == (0.0125, 0.9, True, 5e-4)
    names = {id(p): n for n, p in model.named_parameters()}
    assert sorted(names[id(p)] for p in group["params"]) == sorted(names.values())
    # BN weights, biases and the learned graph offsets are decayed too (PYSKL has no param groups)
    assert any(n.endswith("data_bn.weight") for n in names.values())
    assert any(n.endswith(".bias") for n in names.values())
    assert any(n.endswith(".PA") for n in names.values())


def test_sgd_update_matches_hand_computed_nesterov_step():
    p = torch.nn.Parameter(torch.tensor([1.0, -2.0], dtype=torch.float64))
    opt = build_optimizer(torch.nn.ParameterList([p]), lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.5)
    grads = [torch.tensor([0.5, 0.25], dtype=torch.float64), torch.tensor([-1.0, 1.0], dtype=torch.float64)]
    expected, buf = p.detach().clone(), None
    for g in grads:
        d = g + 0.5 * expected  # weight decay enters the gradient
        buf = d if buf is None else 0.9 * buf + d
        expected = expected - 0.1 * (d + 0.9 * buf)  # Nesterov look-ahead
        p.grad = g.clone()
        opt.step()
    torch.testing.assert_close(p.detach(), expected, rtol=0, atol=1e-15)
