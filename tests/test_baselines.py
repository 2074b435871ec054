"""Each baseline's losses against values computed by hand on tiny tensors, with the
networks replaced by stubs that return fixed logits."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from superdiffusion.config import resolve
from superdiffusion.errors import ConfigError
from superdiffusion.methods import Batch, StepContext, build_method
from superdiffusion.methods.dtc import signed_distance
from superdiffusion.methods.losses import cps_loss, dice_loss
from superdiffusion.methods.mean_teacher import REFERENCE_DROPOUT, masked_consistency
from superdiffusion.methods.urpc import pyramid_consistency
from superdiffusion.nn import UNet
from superdiffusion.nn.unet import UNetOutput, perturb_features


class Fixed(nn.Module):
    """Returns the same logits whatever the input; counts its calls and their batch sizes."""

    def __init__(self, logits):
        super().__init__()
        self.logits = nn.Parameter(logits.clone())
        self.calls = []

    def forward(self, x, t=None):
        self.calls.append(x.shape[0])
        reps = x.shape[0] // self.logits.shape[0]
        return self.logits.repeat(reps, *([1] * (self.logits.dim() - 1)))


def _batch():
    images = torch.zeros(4, 1, 2, 2)
    labels = torch.tensor([[[1, 0], [0, 0]], [[1, 1], [0, 0]], [[0, 0], [0, 0]], [[0, 0], [0, 0]]])
    return Batch(images, labels, torch.tensor([True, True, False, False]))


def _logits(seed=0, b=4):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, 2, 2, 2, generator=g)


def _ctx(weight=1.0, epoch=0, epochs=10, step=0):
    return StepContext("train", epoch, epochs, step, weight)


def _method(name, *overrides):
    cfg = resolve([f"method={name}", "model.features=[4, 8, 16]", *overrides])
    return build_method(cfg, 1, 2, 2)


def _hand_dice(probs, onehot, classes):
    """SSL4MIS's DiceLoss: per class 1 - (2 sum(p y) + s) / (sum(p^2) + sum(y^2) + s), averaged."""
    s = 1e-5
    losses = [
        1 - (2 * (probs[:, c] * onehot[:, c]).sum() + s) / ((probs[:, c] ** 2).sum() + (onehot[:, c] ** 2).sum() + s)
        for c in classes
    ]
    return sum(losses) / len(losses)


def test_dice_loss_by_hand():
    logits, labels = _logits()[:2], _batch().labels[:2]
    probs, onehot = logits.softmax(1), F.one_hot(labels, 2).movedim(-1, 1).float()
    assert torch.allclose(dice_loss(logits, labels), _hand_dice(probs, onehot, [0, 1]), atol=1e-6)
    assert torch.allclose(dice_loss(logits, labels, include_background=False), _hand_dice(probs, onehot, [1]))


def test_supervised_is_half_ce_plus_dice_on_labeled_items_or_ce_alone():
    batch, logits = _batch(), _logits()
    method = _method("supervised")
    method.net = Fixed(logits[:2])
    expected = 0.5 * (F.cross_entropy(logits[:2], batch.labels[:2]) + dice_loss(logits[:2], batch.labels[:2]))
    assert torch.allclose(method.losses(batch, _ctx())["sup"], expected)
    method = _method("supervised", "method.supervised_loss=ce")
    method.net = Fixed(logits[:2])
    assert torch.allclose(method.losses(batch, _ctx())["sup"], F.cross_entropy(logits[:2], batch.labels[:2]))
    with pytest.raises(ConfigError, match="supervised_loss"):
        _method("supervised", "method.supervised_loss=focal")


def test_entropy_minimisation_covers_the_whole_batch():
    batch, logits = _batch(), _logits()
    method = _method("em")
    method.net = Fixed(logits)
    p = logits.softmax(1)
    entropy = -(p * p.log()).sum(1).mean() / math.log(2)  # every item, labeled ones included
    assert torch.allclose(
        method.losses(batch, _ctx(weight=0.5))["entropy"], entropy, atol=1e-6
    )  # raw: the loop weighs it


def test_cps_learns_the_other_networks_argmax_on_unlabeled_items_only():
    batch, la, lb = _batch(), _logits(0), _logits(1)
    method = _method("cps")
    method.net_a, method.net_b = Fixed(la), Fixed(lb)
    out = method.losses(batch, _ctx(weight=0.1))
    u = slice(2, 4)
    expected = F.cross_entropy(la[u], lb[u].argmax(1)) + F.cross_entropy(lb[u], la[u].argmax(1))
    assert torch.allclose(out["cps"], expected)  # raw: the loop weighs it
    sup = sum(0.5 * (F.cross_entropy(x[:2], batch.labels[:2]) + dice_loss(x[:2], batch.labels[:2])) for x in (la, lb))
    assert torch.allclose(out["sup"], sup)


def test_cps_pseudo_labels_carry_no_gradient():
    """Each network's gradient comes from its own cross entropy alone: the other network's
    argmax is a constant target (soft or differentiable targets would add gradient)."""
    a = torch.randn(2, 2, 5, 5, requires_grad=True)
    b = torch.randn(2, 2, 5, 5, requires_grad=True)
    cps_loss(a, b).backward()
    a2, b2 = a.detach().clone().requires_grad_(True), b.detach().clone().requires_grad_(True)
    F.cross_entropy(a2, b.detach().argmax(1)).backward()
    F.cross_entropy(b2, a.detach().argmax(1)).backward()
    assert torch.allclose(a.grad, a2.grad) and torch.allclose(b.grad, b2.grad)
    # and the loss differs from a soft-target version, so the comparison can fail
    soft = F.cross_entropy(a2, b.detach().softmax(1)) + F.cross_entropy(b2, a.detach().softmax(1))
    assert not torch.allclose(soft, cps_loss(a, b))


def test_mean_teacher_consistency_and_exact_ema():
    batch, ls, lt = _batch(), _logits(0), _logits(1)
    method = _method("mt")
    method.student, method.teacher = Fixed(ls), Fixed(lt[2:])
    method.teacher.logits.requires_grad_(False)
    out = method.losses(batch, _ctx(weight=0.1))
    expected = ((ls[2:].softmax(1) - lt[2:].softmax(1)) ** 2).mean()
    assert torch.allclose(out["consistency"], expected)  # raw: the loop weighs it
    # EMA: teacher = a teacher_prev + (1 - a) student, a = min(1 - 1 / (step + 1), decay)
    method = _method("mt")
    with torch.no_grad():
        for p in method.student.parameters():
            p.add_(1.0)
    for step in (0, 1, 5, 500):
        prev = [p.clone() for p in method.teacher.parameters()]
        with torch.no_grad():
            for p in method.student.parameters():
                p.mul_(1.1)
        method.after_step(_ctx(step=step))
        a = min(1 - 1 / (step + 1), 0.99)
        for t, tp, s in zip(method.teacher.parameters(), prev, method.student.parameters()):
            assert torch.allclose(t, a * tp + (1 - a) * s, atol=1e-6)


def test_mt_and_uamt_use_the_reference_elementwise_dropout():
    for name in ("mt", "uamt"):
        cfg = resolve([f"method={name}"])
        method = build_method(cfg, 1, 2, 2)
        rates = [m.p for m in method.student.modules() if isinstance(m, nn.Dropout)]
        assert tuple(rates) == REFERENCE_DROPOUT
        assert not any(isinstance(m, nn.Dropout2d) for m in method.student.modules())


def test_uamt_target_is_one_noisy_pass_and_mc_passes_only_mask():
    batch, ls, lt = _batch(), _logits(0), _logits(1)
    method = _method("uamt")
    method.student, method.teacher = Fixed(ls), Fixed(lt[2:])
    method.teacher.logits.requires_grad_(False)
    out = method.losses(batch, _ctx(weight=1.0, epoch=0, epochs=10))
    assert method.teacher.calls == [2, 16]  # the target, then 8 MC passes of the 2 unlabeled items
    pt = lt[2:].softmax(1)
    entropy = -(pt * (pt + 1e-6).log()).sum(1, keepdim=True)
    mask = (entropy < (0.75 + 0.25 * math.exp(-5)) * math.log(2)).float()
    dist = (ls[2:].softmax(1) - pt) ** 2
    assert torch.allclose(out["consistency"], (mask * dist).sum() / (2 * mask.sum() + 1e-16))
    assert torch.allclose(masked_consistency(torch.ones(1, 2, 1, 2), torch.tensor([[[[1.0, 0.0]]]])), torch.tensor(1.0))


def test_cct_perturbations_and_consistency():
    x = torch.ones(3, 4, 8, 8)
    noisy = perturb_features(x, "noise")
    assert torch.equal(noisy[0], noisy[1]) and torch.equal(noisy[1], noisy[2])  # shared over the batch
    assert (noisy - x).abs().max() <= 0.3 + 1e-6
    torch.manual_seed(0)
    dropped = perturb_features(torch.ones(200_000), "dropout", UNet.AUX_DROPOUT)
    assert abs(float((dropped == 0).float().mean()) - 0.3) < 0.01
    batch, main, aux = _batch(), _logits(0), [_logits(k) for k in (1, 2, 3)]
    method = _method("cct")
    method.net.forward_all = lambda images: UNetOutput(main, aux=aux)
    out = method.losses(batch, _ctx(weight=0.1))
    u = slice(2, 4)
    cons = sum(((a[u].softmax(1) - main[u].softmax(1)) ** 2).mean() for a in aux) / 3
    assert torch.allclose(out["consistency"], cons)  # raw: the loop weighs it
    sup = sum(
        0.5 * (F.cross_entropy(h[:2], batch.labels[:2]) + dice_loss(h[:2], batch.labels[:2])) for h in [main, *aux]
    )
    assert torch.allclose(out["sup"], sup / 4)


def test_urpc_kl_direction_by_hand():
    heads = [_logits(k, b=2) for k in range(4)]
    probs = [h.softmax(1).numpy().astype(np.float64) for h in heads]
    mean = sum(probs) / 4
    total = 0.0
    for p in probs:
        kl = (mean * np.log(mean / p)).sum(1, keepdims=True)  # KLDivLoss(log p_s, mean): KL(mean || p_s)
        w = np.exp(-kl)
        total += (w * (mean - p) ** 2).mean() / (w.mean() + 1e-8) + kl.mean()
    assert abs(float(pyramid_consistency(heads)) - total / 4) < 1e-5
    reverse = sum((p * np.log(p / mean)).sum(1).mean() for p in probs)  # the other direction differs
    assert abs(reverse - sum((mean * np.log(mean / p)).sum(1).mean() for p in probs)) > 1e-4


def test_urpc_heads_are_3x3_nearest_and_perturbed_only_in_training():
    net = UNet(1, 2, features=(4, 8, 16, 32), deep_supervision=True)
    assert all(h.kernel_size == (3, 3) for h in net.deep_heads)
    net.eval()
    x = torch.randn(1, 1, 16, 16)
    coarse = net.forward_all(x).deep[0]  # from the 4x4 scale, upsampled x4 by nearest
    assert torch.equal(coarse, coarse[..., ::4, ::4].repeat_interleave(4, -1).repeat_interleave(4, -2))
    assert torch.equal(net.forward_all(x).deep[0], coarse)  # no perturbation in eval mode
    net.train()
    torch.manual_seed(0)
    a = net.forward_all(x).deep[0]
    torch.manual_seed(1)
    assert not torch.equal(a, net.forward_all(x).deep[0])


def test_dtc_losses_weight_and_edge_boundary():
    assert resolve(["method=dtc"]).method.lambda_max == 1.0
    batch, logits = _batch(), _logits()
    sdf = torch.tanh(_logits(5)[:, :1])
    method = _method("dtc")
    method.net.forward_all = lambda images: UNetOutput(logits, sdf=sdf)
    out = method.losses(batch, _ctx(weight=1.0))
    probs, onehot = logits[:2].softmax(1), F.one_hot(batch.labels[:2], 2).movedim(-1, 1).float()
    assert set(out) == {"sup", "sdf", "consistency"}  # the reference trains on Dice + 0.3 SDF, no CE
    assert torch.allclose(out["sup"], _hand_dice(probs, onehot, [1]))
    assert torch.allclose(out["consistency"], ((torch.sigmoid(-1500 * sdf) - logits.softmax(1)[:, 1:]) ** 2).mean())
    mask = np.zeros((5, 5), bool)
    mask[:3, :3] = True  # touches the top and left image edges
    d = signed_distance(mask)
    assert d[0, 0] < 0 and d[1, 1] < 0  # object pixels on the image edge are not boundary
    assert d[2, 0] == 0 and d[0, 2] == 0 and d[2, 2] == 0  # pixels next to background are


def test_lambda_schedule_paper_reading():
    cfg = resolve(["method=cps", "method.lambda_schedule=paper"])
    assert (cfg.method.lambda_max, cfg.method.ramp) == (5.0, "linear")
    assert resolve(["method=cps"]).method.lambda_max == 0.1
    with pytest.raises(ConfigError, match="drop the explicit method.lambda_max"):
        resolve(["method=cps", "method.lambda_schedule=paper", "method.lambda_max=1"])
    with pytest.raises(ConfigError, match="reference or paper"):
        resolve(["method.lambda_schedule=both"])


def test_method_settings_keep_their_types():
    cfg = resolve(["method.pseudo_confidence=0.8", "method.rounds=2"])
    method = build_method(cfg, 1, 2, 2)
    assert method.params.pseudo_confidence == 0.8 and method.params.rounds == 2
    with pytest.raises(ConfigError, match=r"command line: method.rounds: input should be a valid integer.*got 2.5"):
        resolve(["method.rounds=2.5"])


def test_method_numbers_are_saved_with_their_own_type():
    saved = resolve(["method.rounds=2", "method.x0_clip=1e-1", "method.recon_space=image"]).to_dict()["method"]
    assert {k: saved[k] for k in ("rounds", "x0_clip", "recon_space")} == {
        "rounds": 2,
        "x0_clip": 0.1,
        "recon_space": "image",
    }
    assert type(saved["rounds"]) is int
    with pytest.raises(ConfigError, match="method.rounds: input should be a valid integer"):
        resolve(["method.rounds=2x"])
