"""Keras architectures, losses and metrics for mri-triage."""
