from .unet import UNet, UNetOutput

__all__ = ["UNet", "UNetOutput"]
