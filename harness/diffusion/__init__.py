"""The diffusion process: noise schedules, parameterizations, losses, samplers and guidance."""
