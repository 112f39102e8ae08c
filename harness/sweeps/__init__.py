"""Optuna sweeps over a spec: the search space, the study and its storage, trials and their workers."""
