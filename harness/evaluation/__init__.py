"""Scoring a trained model: sampling for evaluation, feature extractors, metrics, and `harness score`."""
