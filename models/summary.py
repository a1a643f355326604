"""Parameter counts and GFLOPs per slice of every architecture (the MRI paper's Table 3).

GFLOPs are counted from the layer graph, not profiled: every Conv2D contributes
`2 x H_out x W_out x (kh x kw x C_in/groups) x C_out` and every Dense `2 x inputs x units` per
output position (a multiply-accumulate counts as two FLOPs). Biases, batch norm, activations,
pooling, additions and resizing are left out (together well under 1% for these networks).
Dilation does not change the count. `mri-triage models [--json]` prints the table.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Callable, Iterator
from typing import Any

import keras

MODEL_NAMES = ("resnet50", "vgg16", "resunet", "resunet_pp")


def build_named(name: str, image_size: int = 256) -> keras.Model:
    """Build one architecture by name with random weights at `image_size`x`image_size`x3.

    Args:
        name: "resnet50" / "vgg16" (classifiers, fully trainable) or "resunet" / "resunet_pp".
        image_size: input height and width in pixels.

    Returns:
        The model (float32 unless a global mixed policy is set).
    """
    shape = (image_size, image_size, 3)
    if name in ("resnet50", "vgg16"):
        from models.classifier import build_classifier

        return build_classifier(name, shape, weights=None, trainable="all")
    if name == "resunet":
        from models.resunet import build_resunet

        return build_resunet(shape)
    if name == "resunet_pp":
        from models.resunet_pp import build_resunet_pp

        return build_resunet_pp(shape)
    raise ValueError(f"unknown model {name!r}; choose from {MODEL_NAMES}")


def _walk(model: keras.Model) -> Iterator[keras.layers.Layer]:
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            yield from _walk(layer)
        else:
            yield layer


def model_flops(model: keras.Model) -> int:
    """FLOPs of one forward pass for one sample (2 x conv/dense multiply-accumulates)."""
    total = 0
    for layer in _walk(model):
        if isinstance(layer, keras.layers.Conv2D | keras.layers.Dense):
            positions = math.prod(int(d) for d in layer.output.shape[1:-1])
            total += 2 * positions * math.prod(int(d) for d in layer.kernel.shape)
    return total


def count_params(model: keras.Model) -> dict[str, int]:
    """`{"total", "trainable", "non_trainable"}` parameter counts of `model`."""
    trainable = sum(math.prod(w.shape) for w in model.trainable_weights)
    non_trainable = sum(math.prod(w.shape) for w in model.non_trainable_weights)
    return {
        "total": int(trainable + non_trainable),
        "trainable": int(trainable),
        "non_trainable": int(non_trainable),
    }


def model_row(name: str, model: keras.Model) -> dict[str, Any]:
    """One table row: name, total, trainable, non_trainable, gflops (per slice)."""
    return {"name": name, **count_params(model), "gflops": round(model_flops(model) / 1e9, 3)}


def parameter_table(
    image_size: int = 256, names: tuple[str, ...] = MODEL_NAMES
) -> list[dict[str, Any]]:
    """Build each architecture with random weights and return its row (see `model_row`).

    Args:
        image_size: input height and width in pixels (the paper: 256).
        names: which architectures, from `MODEL_NAMES`.

    Returns:
        One dict per model with keys name, total, trainable, non_trainable, gflops.
    """
    rows = []
    for name in names:
        model = build_named(name, image_size)
        rows.append(model_row(name, model))
        del model
    return rows


def format_table(
    rows: list[dict[str, Any]], columns: list[tuple[str, str, Callable[[Any], str]]]
) -> str:
    """Plain-text table: `columns` are (key, header, formatter)."""
    cells = [[header for _, header, _ in columns]]
    cells += [[fmt(row[key]) for key, _, fmt in columns] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(columns))]
    lines = [
        "  ".join(
            c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True))
        )
        for r in cells
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def cli_models(args: argparse.Namespace) -> int:
    """`mri-triage models [--json] [--image-size N]`."""
    if args.image_size < 32 or args.image_size % 16:
        print(
            f"error: --image-size must be a multiple of 16 and at least 32; got {args.image_size}"
        )
        return 2
    rows = parameter_table(args.image_size)
    if args.json:
        out = {
            "image_size": args.image_size,
            "gflops": "2 x conv/dense MACs per slice",
            "models": rows,
        }
        print(json.dumps(out, indent=2))
        return 0
    n = "{:,}".format
    print(f"Parameters and GFLOPs per {args.image_size}x{args.image_size}x3 slice (random weights)")
    print(format_table(rows, [
        ("name", "model", str), ("total", "total", n), ("trainable", "trainable", n),
        ("non_trainable", "non-trainable", n), ("gflops", "GFLOPs/slice", "{:.2f}".format),
    ]))  # fmt: skip
    return 0
