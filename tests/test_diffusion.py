import torch

from superdiffusion.diffusion import NoiseSchedule


def test_schedule_matches_linear_betas_by_hand():
    s = NoiseSchedule(1000, 1e-4, 0.02)
    assert torch.isclose(s.sqrt_alpha_bar[0] ** 2, torch.tensor(1 - 1e-4))
    expected_a1 = (1 - 1e-4) * (1 - (1e-4 + (0.02 - 1e-4) / 999))
    assert torch.isclose(s.sqrt_alpha_bar[1] ** 2, torch.tensor(expected_a1))
    assert s.sqrt_alpha_bar[-1] ** 2 < 1e-4  # pure noise at t = T


def test_q_sample_and_its_inversion_recover_x0_in_2d_and_3d():
    s = NoiseSchedule()
    for shape in [(3, 2, 8, 8), (2, 1, 4, 4, 4)]:
        x0 = torch.rand(shape) * 2 - 1
        noise = torch.randn(shape)
        t = torch.tensor([0, 500, 999][: shape[0]])
        x_t = s.q_sample(x0, t, noise)
        a = s.sqrt_alpha_bar[t].view(-1, *[1] * (len(shape) - 1))
        assert torch.allclose(x_t, a * x0 + (1 - a**2).sqrt() * noise, atol=1e-5)
        assert torch.allclose(s.predict_x0(x_t, t[: shape[0]], noise), x0, atol=5e-3)


def test_pure_noise_is_noise_added_to_zero():
    s = NoiseSchedule()
    t = torch.full((4000,), 10)
    v = s.pure_noise((4000, 1, 1, 1), t, torch.Generator().manual_seed(0))
    assert abs(v.std().item() - s.sqrt_one_minus_alpha_bar[10].item()) < 0.01
    assert abs(v.mean().item()) < 0.01
