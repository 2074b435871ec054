"""The noise schedule of the diffusion model (Eq. 1, 3 and A.1), kept apart from any network.

Tensors of any rank ``(B, C, *spatial)`` work: coefficients are broadcast over every axis
after the batch axis, so 2D and 3D share the same code.
"""

from __future__ import annotations

import torch
from torch import nn


class NoiseSchedule(nn.Module):
    """Linear-beta DDPM schedule. ``alpha_bar[t]`` is ``A_t`` of the paper (Eq. A.1)."""

    def __init__(self, timesteps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02):
        super().__init__()
        if timesteps < 1:
            raise ValueError(f"diffusion.timesteps must be >= 1, got {timesteps}")
        betas = torch.linspace(beta_start, beta_end, timesteps, dtype=torch.float64)
        alpha_bar = torch.cumprod(1.0 - betas, dim=0)
        self.timesteps = timesteps
        self.register_buffer("sqrt_alpha_bar", alpha_bar.sqrt().float(), persistent=False)
        self.register_buffer("sqrt_one_minus_alpha_bar", (1 - alpha_bar).sqrt().float(), persistent=False)

    @staticmethod
    def _at(coef: torch.Tensor, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return coef[t].view(-1, *([1] * (like.dim() - 1))).to(like.dtype)

    def sample_timesteps(self, batch: int, device: torch.device | str = "cpu") -> torch.Tensor:
        """``t ~ U{0, ..., T-1}``, one per sample, shape ``(B,)``."""
        return torch.randint(0, self.timesteps, (batch,), device=device)

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """Eq. 1: ``sqrt(A_t) x0 + sqrt(1 - A_t) v``."""
        return self._at(self.sqrt_alpha_bar, t, x0) * x0 + self._at(self.sqrt_one_minus_alpha_bar, t, x0) * noise

    def pure_noise(
        self, shape: tuple[int, ...], t: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Eq. 5's pure-noise input: noise added to a zero tensor at step ``t``, ``q(0, t, v)``."""
        noise = torch.randn(shape, generator=generator, device=t.device)
        return self._at(self.sqrt_one_minus_alpha_bar, t, noise) * noise

    def predict_x0(self, x_t: torch.Tensor, t: torch.Tensor, noise_pred: torch.Tensor) -> torch.Tensor:
        """Eq. 3 with the sign corrected: ``(x_t - sqrt(1 - A_t) v^) / sqrt(A_t)``."""
        return (x_t - self._at(self.sqrt_one_minus_alpha_bar, t, x_t) * noise_pred) / self._at(
            self.sqrt_alpha_bar, t, x_t
        )
