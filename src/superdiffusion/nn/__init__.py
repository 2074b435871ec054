from .unet import UNet, UNetFactory, UNetOutput

__all__ = ["UNet", "UNetFactory", "UNetOutput"]
