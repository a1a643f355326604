"""One segmenter that averages several: a Keras model holding the members and their mean.

Segmenters trained on the same patients with different seeds or recipes disagree most where each
is least sure, and their mean probability map is steadier than any one of them (docs/ACCURACY.md,
rows 17, 37 and 59: on two folds of the LGG patients the mean of three was above the best-known
single recipe on both, and between its members on the BraTS cases). The average is an ordinary
Keras model (one input, the members side by side, a Keras `Average` layer), so everything that
takes a segmenter takes it unchanged: triage, evaluate `--no-train`, mirror TTA, the OpenVINO
export and its parity checks. It costs each member's inference time.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def average_segmenters(members: Sequence[Any], name: str = "segmenter_mean") -> Any:
    """A Keras model whose output is the element-wise mean of `members`' outputs.

    Args:
        members: two or more Keras segmenters with the same input and output shapes.
        name: the new model's name.

    Raises:
        ValueError: fewer than two members, or members whose shapes differ.
    """
    import keras

    if len(members) < 2:
        raise ValueError(f"averaging needs at least two segmenters, got {len(members)}")
    shapes = {(tuple(m.input_shape), tuple(m.output_shape)) for m in members}
    if len(shapes) != 1:
        raise ValueError(
            "the segmenters differ in input or output shape: "
            + "; ".join(f"{m.name}: in {m.input_shape}, out {m.output_shape}" for m in members)
        )
    inp = keras.Input(shape=tuple(members[0].input_shape[1:]), name="image")
    outs = []
    for i, member in enumerate(members):
        # Each member becomes a named sub-model; names must be unique inside one model (two
        # trainings of one architecture share their default name).
        member.name = f"member_{i}"
        outs.append(member(inp))
    return keras.Model(inp, keras.layers.Average(name="mean")(outs), name=name)
