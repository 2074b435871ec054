"""The options that let the paper's mechanism act: the pretrained teacher's zero-label score and
its polarity, keeping what pretraining learned, rounds that reach the student, and the bounds."""

import csv
import json

import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_config

from superdiffusion import api, cli
from superdiffusion.config import resolve
from superdiffusion.errors import ConfigError
from superdiffusion.evaluation import label_agreement
from superdiffusion.methods import Batch, StepContext, build_method
from superdiffusion.training import make_optimizer


def _method(*overrides):
    return build_method(tiny_config(*overrides), channels=3, num_classes=2, spatial_dims=2)


def _batch(b=4, size=16, labeled=2):
    torch.manual_seed(1)
    images = torch.rand(b, 3, size, size) * 2 - 1
    labels = (torch.rand(b, size, size) > 0.5).long()
    return Batch(images, labels, torch.arange(b) < labeled)


# --- the zero-label score ---------------------------------------------------------------------
def test_label_agreement_by_hand():
    labels = torch.zeros(2, 8, 8, dtype=torch.long)
    labels[:, 2:6, 2:6] = 1
    exact = torch.stack([1 - labels.float(), labels.float()], 1)
    scores = label_agreement(exact, labels)
    assert scores["dice"] == 1 and scores["dice_swapped"] == 0 and scores["auroc"] == 1
    inverted = exact.flip(1)
    scores = label_agreement(inverted, labels)
    assert scores["dice"] == 0 and scores["dice_swapped"] == 1 and scores["auroc"] == 0
    half = torch.full_like(exact, 0.5)
    half[:, 1, :4] = 0.6  # the top half foreground: 8 of 16 lesion pixels, 32 predicted per image
    assert label_agreement(half, labels)["dice"] == pytest.approx(2 * 8 / (32 + 16))


def test_swapping_the_teachers_classes_gives_the_same_function_with_names_exchanged():
    method = _method("method.rounds=1").eval()
    torch.manual_seed(0)
    x = torch.randn(2, 2 + 3, 16, 16)
    t = torch.tensor([10, 900])
    mask_in = torch.rand(2, 2, 16, 16)
    before_mask = method.teacher_mask(x, t)
    before_image = method.teacher_image(torch.cat([x[:, 2:], mask_in], 1), t)
    method.swap_teacher_classes()
    swapped = torch.cat([x[:, :2].flip(1), x[:, 2:]], 1)
    assert torch.allclose(method.teacher_mask(swapped, t), before_mask.flip(1), atol=1e-5)
    after_image = method.teacher_image(torch.cat([x[:, 2:], mask_in.flip(1)], 1), t)
    assert torch.allclose(after_image, before_image, atol=1e-5)


@pytest.mark.parametrize("enabled", [True, False])
def test_the_pretrained_teacher_is_swapped_when_its_inverse_matches_the_labels(enabled):
    method = _method(f"method.polarity_swap={str(enabled).lower()}")
    calls = []

    def score(net):
        calls.append(net)
        if len(calls) == 1:
            return {"dice": 0.1, "dice_swapped": 0.7, "auroc": 0.2}
        return {"dice": 0.7, "dice_swapped": 0.1, "auroc": 0.8}

    head = method.teacher_mask.decoder.head.weight.detach().clone()
    record = method.after_phase("pretrain", score)
    assert record["swapped"] is enabled
    assert record["dice"] == (0.7 if enabled else 0.1)
    assert torch.equal(method.teacher_mask.decoder.head.weight, head.flip(0) if enabled else head)
    assert method.after_phase("train", score) is None


def test_the_polarity_is_read_from_the_ranking_not_from_the_argmax():
    """A teacher whose foreground probability ranks thin structures first but stays under 0.5
    (argmax all background: Dice 0; swapped, all foreground: Dice above 0) is the right way round
    (AUROC 1) and is kept; one that ranks them last (AUROC 0) is swapped; where the labels hold one
    class (no AUROC), the Dice comparison decides."""
    labels = torch.zeros(2, 16, 16, dtype=torch.long)
    labels[:, :, 7] = 1  # a vessel one pixel wide: 1/16 of the pixels
    fg = 0.1 + 0.2 * labels.float()  # ranked first, under 0.5 everywhere
    right_way, wrong_way = torch.stack([1 - fg, fg], 1), torch.stack([fg, 1 - fg], 1)
    assert label_agreement(right_way, labels)["dice"] == 0 < label_agreement(right_way, labels)["dice_swapped"]
    for probs, swapped in ((right_way, False), (wrong_way, True)):
        method = _method()
        record = method.after_phase("pretrain", lambda net, p=probs: label_agreement(p, labels))
        assert record["swapped"] is swapped
    method = _method()
    record = method.after_phase("pretrain", lambda net: {"dice": 0.0, "dice_swapped": 0.4, "auroc": float("nan")})
    assert record["swapped"] is True


def test_a_run_records_the_pretrained_teachers_score_and_its_updates(tmp_path):
    cfg = tiny_config("train.epochs=2", "method.pretrain_epochs=1", "method.rounds=1", "train.threads=1")
    results = api.train(cfg, tmp_path / "run")
    assert set(results["pretrain"]) == {"dice", "auroc", "swapped"}
    assert 0 <= results["pretrain"]["dice"] <= 1
    assert results["updates"] == {"pretrain": 2, "train": 4}
    saved = json.loads((tmp_path / "run" / "results.json").read_text())
    assert saved["pretrain"] == results["pretrain"]
    import subprocess  # the code state is recorded: a comparison holds between runs of one state

    head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=api.__file__.rsplit("/", 1)[0])
    assert saved["code"]["version"] and saved["code"]["commit"] == (head.stdout.strip() or None)
    assert isinstance(saved["code"]["modified"], bool) or saved["code"]["commit"] is None
    package = subprocess.run(["git", "rev-parse", "HEAD:./"], capture_output=True, text=True, cwd=api.__file__.rsplit("/", 1)[0])
    assert saved["code"]["tree"] == (package.stdout.strip() or None)  # the package's files, docs aside
    with open(tmp_path / "run" / "history.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    pretrain_rows = [r for r in rows if r["phase"] == "pretrain"]
    assert float(pretrain_rows[-1]["pretrain_dice"]) == pytest.approx(results["pretrain"]["dice"])
    log = (tmp_path / "run" / "train.log").read_text()
    assert "the teacher's mask against the labeled training images" in log


# --- keeping what pretraining learned -----------------------------------------------------------
def test_teacher_lr_factor_gives_the_teacher_its_own_lr_through_the_lr_steps():
    cfg = tiny_config("method.teacher_lr_factor=0.1", "train.lr=0.01", "train.lr_step=1")
    method = build_method(cfg, 3, 2, 2)
    optimizer, scheduler = make_optimizer(method.parameters_for("train"), cfg.train)
    lrs = [g["lr"] for g in optimizer.param_groups]
    assert lrs == pytest.approx([0.01, 0.001])
    teacher = {id(p) for p in method.teacher_mask.parameters()}
    assert all(
        id(p) in teacher or p in set(method.teacher_image.parameters()) for p in optimizer.param_groups[1]["params"]
    )
    assert not any(id(p) in teacher for p in optimizer.param_groups[0]["params"])
    optimizer.step()
    scheduler.step()
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([0.001, 0.0001])
    # without the factor: one group, as before (checkpoints stay compatible)
    plain = build_method(tiny_config("method.teacher_lr_factor=1"), 3, 2, 2).parameters_for("train")
    assert not isinstance(plain[0], dict)


def test_lambda_can_start_above_zero_or_stay_constant():
    method = _method("method.lambda_start=0.5", "method.lambda_max=1.0", "method.ramp=linear")
    assert method.weight(0, 4) == pytest.approx(0.5 + 0.5 * 1 / 4)
    assert method.weight(3, 4) == pytest.approx(1.0)
    constant = _method("method.lambda_max=0.3", "method.ramp=constant")
    assert constant.weight(0, 4) == constant.weight(3, 4) == pytest.approx(0.3)
    with pytest.raises(ConfigError, match="lambda_start"):
        tiny_config("method.lambda_start=2", "method.lambda_max=1")


@pytest.mark.parametrize("carry", [True, False])
def test_carrying_the_pretraining_optimizer_state_into_co_training(tmp_path, monkeypatch, carry):
    from superdiffusion import training

    seen = {}
    original = training.Trainer.run_phase

    def spy(self, index, phase):
        original(self, index, phase)
        if phase.name == "pretrain":
            seen["pretrain"] = {p: s["exp_avg"].clone() for p, s in self.optimizer.state.items()}

    made = training.make_optimizer

    def spy_make(parameters, t, saved=None):
        optimizer, scheduler = made(parameters, t, saved)
        seen.setdefault("made", []).append(optimizer)
        return optimizer, scheduler

    monkeypatch.setattr(training.Trainer, "run_phase", spy)
    monkeypatch.setattr(training, "make_optimizer", spy_make)
    monkeypatch.setattr(training, "carry_state", _recording(training.carry_state, seen))
    cfg = tiny_config(
        "train.epochs=1",
        "method.pretrain_epochs=1",
        "method.rounds=0",
        "train.threads=1",
        "method.teacher_lr_factor=1",  # one parameter group: the teacher's parameters are found in it
        f"method.carry_optimizer={str(carry).lower()}",
    )
    api.train(cfg, tmp_path / "run")
    assert ("carried" in seen) is carry
    if carry:
        co_training = seen["carried"]
        teacher = list(co_training.param_groups[0]["params"])
        moved = [p for p in teacher if p in seen["pretrain"]]
        assert moved  # the teacher's parameters went on from their pretraining moments
        assert all(torch.equal(seen["carried_state"][p], seen["pretrain"][p]) for p in moved)


def _recording(carry_state, seen):
    def wrapper(source, target):
        carry_state(source, target)
        seen["carried"] = target
        seen["carried_state"] = {p: s["exp_avg"].clone() for p, s in target.state.items()}

    return wrapper


# --- rounds that reach the student -----------------------------------------------------------------
def _scripted(method, outputs):
    """Replace the pathways: the mask pathway returns ``outputs`` in turn; the image pathway
    returns the images and a zero loss, recording its t."""
    calls, ts = iter(outputs), []

    def mask_pathway(net, images, t, generator=None):
        ts.append(("mask", t))
        return next(calls)

    def image_pathway(images, probs, t, pure_noise=False):
        ts.append(("image", t))
        return images, images.new_zeros(())

    method.mask_pathway, method.image_pathway = mask_pathway, image_pathway
    return ts


@pytest.mark.parametrize("source", ["round0", "last", "mean"])
def test_the_students_targets_come_from_the_chosen_round(source):
    method = _method("method.rounds=1", f"method.pseudo_labels={source}")
    batch = _batch()
    torch.manual_seed(3)
    teacher, student, round1 = (torch.randn(4, 2, 16, 16) for _ in range(3))
    _scripted(method, [teacher, student, round1])
    losses = method.losses(batch, StepContext("train", 0, 4, 0, 2.0))
    target = {
        "round0": teacher.argmax(1),
        "last": round1.argmax(1),
        "mean": (teacher.softmax(1) + round1.softmax(1)).argmax(1),
    }[source]
    semi = F.cross_entropy(teacher, student.argmax(1)) + F.cross_entropy(student, target)
    assert torch.allclose(losses["semi"], semi)  # raw: the loop weighs it
    assert not torch.equal(teacher.argmax(1), round1.argmax(1))  # the three sources differ here


def test_the_rounds_t_can_be_capped():
    method = _method("method.rounds=3", "method.rounds_t_max=200")
    ts = _scripted(method, [torch.randn(4, 2, 16, 16) for _ in range(5)])
    torch.manual_seed(0)
    method.losses(_batch(), StepContext("train", 0, 4, 0, 1.0))
    rounds = ts[2:]  # after the teacher's and the student's passes
    assert len(rounds) == 6 and all(int(t.max()) < 200 for _, t in rounds)
    with pytest.raises(ConfigError, match="rounds_t_max"):
        tiny_config("method.rounds_t_max=5000")


def test_the_method_takes_the_baselines_supervised_loss():
    batch = _batch()
    logits = torch.randn(4, 2, 16, 16)
    ce = _method("method.supervised_loss=ce").labeled_loss(logits, batch)
    ce_dice = _method("method.supervised_loss=ce_dice").labeled_loss(logits, batch)
    assert torch.equal(_method().labeled_loss(logits, batch), ce_dice)  # the cpu profile's choice
    assert torch.allclose(ce, F.cross_entropy(logits[:2], batch.labels[:2]))
    assert not torch.allclose(ce, ce_dice)


def test_profile_paper_pretrains_with_eq_6_and_7_as_printed():
    method = resolve(["profile=paper"]).method
    assert method.pretrain_image_input == "noise" and method.recon_space == "image"
    # and keeps the paper's co-training: lambda 5 on a linear ramp, round-0 targets, CE, one lr
    assert (method.lambda_max, method.ramp, method.pseudo_labels, method.supervised_loss) == (
        5.0,
        "linear",
        "round0",
        "auto",
    )
    assert method.teacher_lr_factor == 1.0 and not method.carry_optimizer and method.rounds_t_max == 0


@pytest.mark.parametrize("profile", ["cpu", "quick"])
def test_the_cpu_profiles_take_the_mechanism_the_screening_chose(profile):
    """benchmarks/results/screening.json's choice, on validation: eq67-keep-rounds-cedice."""
    import json
    from pathlib import Path

    screening = json.loads((Path(__file__).parents[1] / "benchmarks" / "results" / "screening.json").read_text())
    chosen = screening["combinations"][screening["choice"]["chosen"]]
    method = resolve([f"profile={profile}"]).method
    for setting in chosen:
        key, _, value = setting.removeprefix("method.").partition("=")
        assert str(getattr(method, key)).lower() == value.lower(), setting
    assert method.lambda_max == 0.1 and method.ramp == "constant"  # -keep's constant lambda at CPS's weight


def test_rounds_are_bounded(tmp_path, capsys):
    assert cli.main(["train", "method.rounds=100000", "--out", str(tmp_path / "run")]) != 0
    assert not (tmp_path / "run").exists()
    err = capsys.readouterr().err
    assert "method.rounds" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


# --- Eq. 6/7 guarded: each mutation of the pathways that once survived the suite fails here ----
class _Zero(torch.nn.Module):
    """An image pathway that predicts zero noise, and records what it was given."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def forward(self, x, t):
        self.seen.append(x.detach().clone())
        return torch.zeros_like(x[:, :3])


def test_eq6_pretraining_gives_the_image_pathway_pure_noise_whatever_the_image():
    """Eq. 6 (``pretrain_image_input=noise``): the image pathway starts from pure noise, so
    its input holds nothing of the image; two different images under one seed give it the
    same noisy input (a pathway given ``q(i, t, v)`` would see the images)."""
    method = _method("method.pretrain_image_input=noise", "method.recon_space=image")
    method.teacher_image = _Zero()
    for scale in (1.0, -1.0):
        torch.manual_seed(0)
        images = _batch().images * scale
        method.pretrain_losses(Batch(images, torch.zeros(4, 16, 16, dtype=torch.long), torch.zeros(4, dtype=bool)))
    first, second = (x[:, :3] for x in method.teacher_image.seen)
    assert torch.equal(first, second)


def test_eq7_the_cycle_loss_is_measured_on_the_image():
    """Eq. 7 (``recon_space=image``): with a pathway that predicts zero noise from pure noise
    ``v`` at step t, the reconstruction is ``clip(v / sqrt(A_t))`` and the loss its squared
    distance to the image, by hand (a noise-space loss would give mean(v^2) instead)."""
    method = _method("method.recon_space=image", "method.x0_clip=1.0")
    method.teacher_image = _Zero()
    images = _batch().images
    t = torch.tensor([10, 200, 500, 900])
    torch.manual_seed(3)
    _, loss = method.image_pathway(images, torch.full((4, 2, 16, 16), 0.5), t, pure_noise=True)
    torch.manual_seed(3)
    noise = torch.randn_like(images)
    alpha = method.schedule.sqrt_alpha_bar[t].view(-1, 1, 1, 1)
    assert torch.allclose(loss, F.mse_loss((noise / alpha).clamp(-1, 1), images))
    assert not torch.allclose(loss, F.mse_loss(torch.zeros_like(noise), noise))


def test_eq11_the_rounds_reconstruct_from_the_noised_image_not_from_pure_noise():
    """Eq. 11: a round's image pathway starts from ``q(i, t', v)``; at t' = 0 a pathway that
    predicts zero noise gives the image back almost exactly (one always fed pure noise would
    give noise back)."""
    method = _method("method.recon_space=image", "method.x0_clip=1.0")
    method.teacher_image = _Zero()
    images = _batch().images
    torch.manual_seed(0)
    recon, loss = method.image_pathway(images, torch.full((4, 2, 16, 16), 0.5), torch.zeros(4, dtype=torch.long))
    assert (recon - images).abs().max() < 0.1 and loss < 1e-3


# --- the intensity-prior control ------------------------------------------------------------------
def test_otsu_threshold_by_hand():
    from superdiffusion.data.prior import otsu_threshold

    values = torch.tensor([0.0] * 50 + [1.0] * 30 + [4.0] * 20 + [5.0] * 60)
    assert 1.0 < otsu_threshold(values) < 4.0  # the gap between the two groups
    assert otsu_threshold(torch.full((10,), 3.0)) == 3.0


def test_the_intensity_prior_control_reads_its_polarity_as_the_teacher_does(tmp_path):
    """Dark squares on bright images: Otsu's threshold finds them exactly once its polarity is
    read from the labels (swapped); a run records the control beside the teacher's score."""
    from superdiffusion.data import Split
    from superdiffusion.protocol import intensity_prior_agreement

    masks = torch.zeros(3, 12, 12, dtype=torch.long)
    masks[:, 3:8, 4:9] = 1
    images = (1 - masks.float())[:, None].expand(-1, 3, -1, -1) * 1.5 - 0.5 + 0.01 * torch.rand(3, 3, 12, 12)
    found = intensity_prior_agreement(Split(images, masks, ["a", "b", "c"]))
    assert found["swapped"] and found["dice"] == pytest.approx(1.0) and found["auroc"] == pytest.approx(1.0)
    found = intensity_prior_agreement(Split(-images, masks, ["a", "b", "c"]))  # bright squares: no swap
    assert not found["swapped"] and found["dice"] == pytest.approx(1.0)
    results = api.train(tiny_config("method=supervised", "train.epochs=1", "train.threads=1"), tmp_path / "run")
    assert set(results["intensity_prior"]) == {"dice", "auroc", "swapped"}
    assert 0 <= results["intensity_prior"]["dice"] <= 1


# --- the hidden-label monitor ---------------------------------------------------------------------
@pytest.mark.parametrize("method", ["superdiffusion", "cps"])
def test_the_hidden_masks_are_scored_but_never_trained_on(tmp_path, method):
    """With eval.hidden_labels, every evaluated epoch scores the student's targets, its
    prediction and the teacher's against the unlabeled images' hidden masks (history.csv); the
    trained weights are bit-identical whatever those masks hold (here: blanked), so no update
    reads them."""
    from superdiffusion.data import build_data
    from superdiffusion.training import Trainer

    own = ["method.pretrain_epochs=1", "method.rounds=1"] if method == "superdiffusion" else []
    cfg = tiny_config(
        f"method={method}", "train.epochs=2", *own, "train.threads=1", "data.labeled_percent=20", "eval.hidden_labels=true"
    )
    states, histories = [], []
    for blank in (False, True):
        data = build_data(cfg.data, cfg.train.seed)
        assert len(data.hidden) == len(data.unlabeled) > 0
        if blank:
            data.hidden.masks = [torch.zeros_like(m) for m in data.hidden.masks]
        trainer = Trainer(cfg, data, tmp_path / f"run-{blank}")
        trainer.fit()
        states.append({k: v.clone() for k, v in trainer.method.state_dict().items()})
        histories.append(trainer.progress.history)
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])
    last = histories[0][-1]
    names = {"hidden_student_dice", "hidden_student_auroc", "hidden_targets_dice", "hidden_targets_fg", "hidden_true_fg"}
    assert names <= set(last) and 0 <= last["hidden_targets_dice"] <= 1
    assert ("hidden_teacher_dice" in last) == (method == "superdiffusion")
    assert histories[1][-1]["hidden_true_fg"] == 0 < last["hidden_true_fg"]  # the monitor did read them
    with open(tmp_path / "run-False" / "history.csv", newline="") as handle:
        assert "hidden_targets_dice" in next(csv.DictReader(handle))


def test_the_papers_targets_are_the_mean_over_the_rounds():
    """pseudo_targets gives what Eq. 9's student term learns: with pseudo_labels=mean, the mean
    softmax over the teacher's masks m^_0..m^_R of one co-training step's draw."""
    method = _method("method.rounds=2", "method.pseudo_labels=mean").eval()
    images = _batch().images
    torch.manual_seed(5)
    targets = method.pseudo_targets(images)
    torch.manual_seed(5)
    teacher = method.mask_pathway(method.teacher_mask, images, method._t(4, images.device))
    masks, _ = method.rounds(images, teacher)
    assert len(masks) == 3
    assert torch.allclose(targets, torch.stack([m.softmax(1) for m in masks]).mean(0))


def test_the_intensity_prior_can_teach_the_student_in_place_of_the_diffusion_teacher(tmp_path):
    """method.teacher=otsu: the student's Eq. 9 targets are the intensity prior's classes in the
    polarity the labeled images give (recorded as results.json's prior); nothing of the teacher
    trains, and the setting refuses rounds or pretraining it would leave without effect."""
    with pytest.raises(ConfigError, match="method.teacher=otsu has no diffusion teacher"):
        resolve(["method=superdiffusion", "method.teacher=otsu"])
    otsu = ["method.teacher=otsu", "method.rounds=0", "method.pretrain_epochs=0"]
    method = _method(*otsu)
    images = _batch().images
    method.prior_swapped.fill_(True)
    targets = method.pseudo_targets(images)
    from superdiffusion.data.prior import intensity_prior

    assert torch.allclose(targets, torch.stack([intensity_prior(i) for i in images]).flip(1))
    cfg = tiny_config("method=superdiffusion", *otsu, "train.epochs=1", "train.threads=1")
    results = api.train(cfg, tmp_path / "run")
    assert set(results["prior"]) == {"dice", "auroc", "swapped"} and results["prior"] == results["intensity_prior"]
    assert results["updates"] == {"train": 2} and "pretrain" not in results
