"""Archives in, outputs out: readers, the per-slice index, splits, preprocessing, input rules.

The bottom layer: imports nothing else of mri-triage (no models, no tracking), so reading an archive
never loads TensorFlow or MLflow. Everything a run writes goes through `manifest`'s atomic writes.
"""
