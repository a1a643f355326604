"""mri-triage core library.

Archive I/O, preprocessing, datasets, triage, metrics, reports and tracking.
"""

__version__ = "0.1.0"
