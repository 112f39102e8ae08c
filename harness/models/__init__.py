"""Denoising networks: the backbones (UNet, DiT), chosen by name in ``registry.BACKBONES``."""
