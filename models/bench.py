"""`mri-triage bench models`: batched inference speed of each architecture (printed, not asserted).

Each model is built with random weights under the requested precision policy and run on one random
`(batch, S, S, 3)` batch in [0, 1] through a compiled `tf.function` (graph mode, `training=False`).
Two warm-up calls (tracing, oneDNN kernel selection) are excluded; then `repeats` timed calls, each
synchronised by copying the result to NumPy. Reported: median wall and process-CPU seconds per batch
(CPU seconds well below wall x cores means other processes shared the machine), slices/s,
GFLOPs per slice (from the layer graph, see `models.summary`), achieved GFLOP/s = slices/s x
GFLOPs/slice.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from typing import Any

import numpy as np

from models.summary import MODEL_NAMES, build_named, format_table, model_flops

WARMUP_CALLS = 2


def bench_model(
    name: str,
    *,
    batch: int = 16,
    image_size: int = 256,
    repeats: int = 3,
    precision: str = "float32",
) -> dict[str, Any]:
    """Time batched inference of one architecture.

    Args:
        name: one of `MODEL_NAMES`.
        batch: slices per call.
        image_size: input height and width in pixels.
        repeats: timed calls (after the warm-up).
        precision: Keras dtype policy for the build ("float32", "mixed_bfloat16", "mixed_float16").

    Returns:
        name, precision, batch, seconds_per_batch (median wall), cpu_seconds_per_batch (median
        process CPU time, all threads), slices_per_s, gflops_per_slice,
        achieved_gflops_per_s, timings_s (every timed call).
    """
    import tensorflow as tf

    from models.precision import policy_scope

    with policy_scope(precision):
        model = build_named(name, image_size)
    flops = model_flops(model)
    x = tf.constant(
        np.random.default_rng(0).random((batch, image_size, image_size, 3), dtype=np.float32)
    )
    infer = tf.function(lambda t: model(t, training=False))
    for _ in range(WARMUP_CALLS):
        infer(x).numpy()
    timings, cpu = [], []
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        infer(x).numpy()
        timings.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    per_batch = statistics.median(timings)
    rate = batch / per_batch
    return {
        "name": name,
        "precision": precision,
        "batch": batch,
        "image_size": image_size,
        "seconds_per_batch": round(per_batch, 4),
        "cpu_seconds_per_batch": round(statistics.median(cpu), 4),
        "slices_per_s": round(rate, 2),
        "gflops_per_slice": round(flops / 1e9, 3),
        "achieved_gflops_per_s": round(rate * flops / 1e9, 1),
        "timings_s": [round(t, 4) for t in timings],
    }


def cli_bench_models(args: argparse.Namespace) -> int:
    """`mri-triage bench models [--batch B] [--image-size S] [--repeats R] [--models ...]
    [--precision P] [--json]`."""
    names = args.models or list(MODEL_NAMES)
    unknown = sorted(set(names) - set(MODEL_NAMES))
    if unknown:
        print(f"error: unknown model(s) {unknown}; choose from {list(MODEL_NAMES)}")
        return 2
    if args.batch < 1 or args.repeats < 1 or args.image_size < 32 or args.image_size % 16:
        print("error: --batch and --repeats must be >= 1, --image-size a multiple of 16 >= 32")
        return 2
    import tensorflow as tf

    rows = [
        bench_model(
            n,
            batch=args.batch,
            image_size=args.image_size,
            repeats=args.repeats,
            precision=args.precision,
        )
        for n in names
    ]
    machine = {
        "cpus": os.cpu_count(),
        "gpus": len(tf.config.list_physical_devices("GPU")),
        "tensorflow": tf.__version__,
        "processor": platform.processor() or platform.machine(),
    }
    if args.json:
        print(json.dumps({"machine": machine, "results": rows}, indent=2))
        return 0
    print(
        f"Batched inference, compiled tf.function, batch {args.batch}, "
        f"{args.image_size}x{args.image_size}x3, {args.precision}, {args.repeats} timed calls "
        f"after {WARMUP_CALLS} warm-up; {machine['cpus']} CPUs, {machine['gpus']} GPUs, "
        f"TF {machine['tensorflow']}"
    )
    print(
        format_table(
            rows,
            [
                ("name", "model", str),
                ("seconds_per_batch", "s/batch", "{:.3f}".format),
                ("cpu_seconds_per_batch", "CPU s/batch", "{:.3f}".format),
                ("slices_per_s", "slices/s", "{:.1f}".format),
                ("gflops_per_slice", "GFLOPs/slice", "{:.2f}".format),
                ("achieved_gflops_per_s", "GFLOP/s", "{:.1f}".format),
            ],
        )
    )
    return 0
