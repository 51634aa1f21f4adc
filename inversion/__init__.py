"""Gradient inversion: data, models, the FL client's shared update, and the attack on it."""
from . import _torchvision_compat  # noqa: F401  (must run before any torchvision/lpips import)
