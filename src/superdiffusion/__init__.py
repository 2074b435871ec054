"""superdiffusion: semi-supervised biomedical image segmentation with diffusion models and
teacher-student co-training."""

__version__ = "0.1.0"
