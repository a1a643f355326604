"""mri-triage core library: archive I/O, preprocessing, datasets, triage, metrics, reports, tracking."""

__version__ = "0.1.0"
