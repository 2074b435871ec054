import pytest
import torch
import torch.nn.functional as F

from superdiffusion.errors import ConfigError
from superdiffusion.methods import Batch, StepContext, build_method
from superdiffusion.methods.losses import cps_loss
from superdiffusion.methods.ramps import linear_ramp, ramp_weight, sigmoid_ramp


def _batch(b=4, size=16, labeled=2):
    torch.manual_seed(1)
    images = torch.rand(b, 3, size, size) * 2 - 1
    labels = (torch.rand(b, size, size) > 0.5).long()
    flags = torch.arange(b) < labeled
    return Batch(images, labels, flags)


def _method(tiny_cfg, *overrides):
    return build_method(tiny_cfg(*overrides), channels=3, num_classes=2, spatial_dims=2)


def _ctx(phase="train", weight=2.0):
    return StepContext(phase, epoch=0, epochs=4, step=0, weight=weight)


def test_eq9_uses_the_tested_cross_pseudo_loss(tiny_cfg):
    """Eq. 9's value is the CPS loss (whose gradients test_baselines checks by hand) on the two
    mask pathways' logits, with round-0 targets and no confidence threshold (raw: the loop
    multiplies it by lambda)."""
    method = _method(tiny_cfg, "method.rounds=0", "method.pseudo_labels=round0")
    batch = _batch()
    torch.manual_seed(5)
    losses = method.losses(batch, _ctx(weight=3.0))
    torch.manual_seed(5)
    t = method.schedule.sample_timesteps(4)
    teacher = method.mask_pathway(method.teacher_mask, batch.images, t)
    student = method.mask_pathway(method.student_mask, batch.images, t)
    assert torch.allclose(losses["semi"], cps_loss(student, teacher))
    assert not torch.allclose(losses["semi"], cps_loss(student, teacher.flip(1)))  # the targets matter


def test_rounds_zero_is_plain_co_training(tiny_cfg):
    method = _method(tiny_cfg, "method.rounds=0", "method.supervised_loss=ce")  # Eq. 10's CE
    batch = _batch()
    torch.manual_seed(5)
    losses = method.losses(batch, _ctx())
    assert set(losses) == {"sup", "semi"}
    # the same computation written out from Eq. 8-10
    torch.manual_seed(5)
    t = method.schedule.sample_timesteps(4)
    teacher = method.mask_pathway(method.teacher_mask, batch.images, t)
    student = method.mask_pathway(method.student_mask, batch.images, t)
    lab = batch.labeled
    sup = F.cross_entropy(teacher[lab], batch.labels[lab]) + F.cross_entropy(student[lab], batch.labels[lab])
    semi = F.cross_entropy(student, teacher.argmax(1)) + F.cross_entropy(teacher, student.argmax(1))
    assert torch.allclose(losses["sup"], sup) and torch.allclose(losses["semi"], semi)  # raw: the loop weighs it
    sum(losses.values()).backward()
    assert all(p.grad is None for p in method.teacher_image.parameters())  # no image pathway at R = 0


def test_rounds_add_align_and_reconstruction_and_train_the_image_pathway(tiny_cfg):
    method = _method(tiny_cfg, "method.rounds=2")
    losses = method.losses(_batch(), _ctx())
    assert set(losses) == {"sup", "semi", "align", "recon"}
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in method.teacher_image.parameters())


def test_cycle_loss_trains_the_mask_pathway_without_labels(tiny_cfg):
    method = _method(tiny_cfg)
    batch = _batch()
    losses = method.losses(batch, _ctx("pretrain"))
    assert set(losses) == {"cycle"}
    losses["cycle"].backward()
    mask_grads = [p.grad for p in method.teacher_mask.parameters() if p.grad is not None]
    assert mask_grads and sum(g.abs().sum() for g in mask_grads) > 0  # Eq. 7 reaches f_m through softmax(m^)
    assert all(p.grad is None for p in method.student_mask.parameters())
    # labels play no part: other labels, same loss
    torch.manual_seed(0)
    a = method.pretrain_losses(batch)["cycle"]
    torch.manual_seed(0)
    b = method.pretrain_losses(Batch(batch.images, 1 - batch.labels, ~batch.labeled))["cycle"]
    assert torch.allclose(a, b)


def test_image_space_reconstruction_option(tiny_cfg):
    method = _method(tiny_cfg, "method.recon_space=image", "method.pretrain_image_input=noise")
    loss = method.losses(_batch(), _ctx("pretrain"))["cycle"]
    assert torch.isfinite(loss) and loss < 10  # clipped x0 keeps it bounded


def test_lambda_ramps():
    assert linear_ramp(199, 200) == 1.0 and linear_ramp(0, 200) == 1 / 200
    assert ramp_weight("linear", 5.0, 99, 200) == 2.5
    assert abs(sigmoid_ramp(0, 10) - torch.exp(torch.tensor(-5.0)).item()) < 1e-6
    assert sigmoid_ramp(10, 10) == 1.0


def test_prediction_draws_and_uncertainty(tiny_cfg):
    method = _method(tiny_cfg).eval()
    images = _batch().images
    one = method.predict(images, samples=1)
    again = method.predict(images, samples=1)
    assert torch.allclose(one.probs, again.probs)  # fixed t and seeded noise: reproducible
    many = method.predict(images, samples=4)
    assert many.probs.shape == (4, 2, 16, 16) and many.spread.shape == (4, 16, 16)
    assert torch.allclose(many.probs.sum(1), torch.ones(4, 16, 16), atol=1e-5)
    assert many.spread.max() > 0


def test_thin_structure_options_zero_mask_noise_confidence_and_dice(tiny_cfg):
    method = _method(tiny_cfg, "method.mask_noise=zero").eval()
    images = _batch().images
    pred = method.predict(images, samples=3)
    assert pred.spread.abs().max() == 0  # no noise input: every draw is the same
    method = _method(tiny_cfg, "method.pseudo_confidence=0.8", "method.pseudo_loss=ce_dice")
    logits = torch.tensor([[2.0, 0.0], [0.0, 0.1], [-3.0, 3.0]]).T.reshape(1, 2, 1, 3)  # confidences .88 .52 1.0
    labels = method.pseudo_labels(logits)
    assert labels.tolist() == [[[0, -100, 1]]]
    kept = logits[..., [0, 2]]
    probs = kept.softmax(1)
    onehot = torch.tensor([[1.0, 0.0], [0.0, 1.0]]).reshape(1, 2, 1, 2)
    dice = 1 - (2 * (probs * onehot).sum((0, 2, 3)) + 1e-5) / ((probs**2).sum((0, 2, 3)) + 1 + 1e-5)
    expected = 0.5 * (F.cross_entropy(kept, torch.tensor([[[0, 1]]])) + dice.mean())
    assert torch.allclose(method.pseudo_term(logits, labels), expected, atol=1e-6)
    with pytest.raises(ConfigError, match="mask_noise"):
        _method(tiny_cfg, "method.mask_noise=half")


def test_pseudo_label_share_is_logged_and_flags_a_background_drift(tiny_cfg):
    from superdiffusion.evaluation import health_flags, thresholds

    method = _method(tiny_cfg, "method.rounds=0")
    batch = _batch(labeled=2)
    torch.manual_seed(5)
    method.losses(batch, _ctx())
    torch.manual_seed(5)  # the student's pseudo-labels on the two unlabeled images, by hand
    t = method.schedule.sample_timesteps(4)
    method.mask_pathway(method.teacher_mask, batch.images, t)  # the teacher draws its noise first
    student = method.mask_pathway(method.student_mask, batch.images, t)
    share = float((student[2:].argmax(1) == 1).float().mean())
    assert 0 < share < 1 and method.diagnostics["pseudo_fg"] == pytest.approx(share)
    best = {"score": 0.6, "threshold": 0.5, "predicted_fraction": 0.08, "true_fraction": 0.08}
    history = [{"val_dice_per_image": 0.6, "threshold": 0.5, "pseudo_fg": 0.01}]
    assert health_flags(history, best, thresholds(0, 0.9, 0.02), "val_dice_per_image") == ["pseudo_labels_background"]
