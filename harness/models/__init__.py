"""Denoising networks: the UNet backbone."""
