"""Training one configuration: data sets, the training loop, EMA and atomic checkpoints."""
