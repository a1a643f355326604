"""`mri-triage bench triage`: one table per runtime and precision, on the same slices, in one run.

Each configuration (TF fp32, OpenVINO f32 / bf16 / int8) runs `pipeline.cli.bench.bench_triage` in a
fresh subprocess, so its memory and start-up are its own (an OpenVINO run that imports no
TensorFlow shows it) and one configuration's caches cannot speed up the next. The TF run also times
the per-slice `model.predict` loop (the baseline every speed-up is quoted against) and counts the
models' FLOPs. The parent measures the machine's float32 matmul peak (numpy, all cores) before and
after, and prints the CPU flags the figures depend on. Figures are printed, never asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from models.precision import key_flags, onednn_setting


def cpu_summary(cpuinfo: str | Path = "/proc/cpuinfo") -> dict[str, Any]:
    """Model name, logical cores, and which `KEY_FLAGS` this CPU has."""
    name = "unknown"
    try:
        for line in Path(cpuinfo).read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    out: dict[str, Any] = {"cpu": name, "cores": os.cpu_count(), "flags": key_flags(cpuinfo),
                           "tf_onednn": onednn_setting()}  # fmt: skip
    from pipeline.triage.runtime import openvino_available, ov_capabilities

    if openvino_available():
        out["openvino_capabilities"] = list(ov_capabilities())
    return out


def matmul_peak_gflops(n: int = 2048, repeats: int = 5) -> float:
    """Best float32 matmul rate of this machine (numpy's BLAS, all cores), GFLOP/s."""
    rng = np.random.default_rng(0)
    a = rng.random((n, n), dtype=np.float32)
    b = rng.random((n, n), dtype=np.float32)
    a @ b  # warm-up (threads, pages)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2.0 * n**3 / best / 1e9


def interleaved(kwargs: dict[str, Any], configs: list[dict[str, str]], rounds: int = 5) -> dict:
    """The models alone, every configuration in one process, timed in turns on the same slices.

    Background load on a shared machine drifts between the separate runs; timing each
    configuration in alternation cancels most of that drift, so these ratios are the fair
    speed comparison. Returns per configuration the median seconds of a classifier call on
    `batch * 4` slices and of a segmenter call on the same slices, and their sum.
    """
    from pipeline.io.index import build_index
    from pipeline.io.preprocess import patient_inputs
    from pipeline.io.slices import load_patient
    from pipeline.triage.runtime import load_triage_runtime

    loaded = {}
    for cfg in configs:
        args = (kwargs["classifier"], kwargs["segmenter"], kwargs["batch"], kwargs["precision"])
        ov = cfg.get("ov_precision", "auto")
        loaded[cfg["name"]] = load_triage_runtime(
            *args, cfg["runtime"], ov, kwargs["threshold"], kwargs["xla"]
        )
    any_models = next(iter(loaded.values()))
    table = build_index(kwargs["archive"]).table
    xs: list[np.ndarray] = []
    for _, rows in table.groupby("patient", sort=True):
        pre = any_models.classifier.preprocess
        xs.append(patient_inputs(load_patient(rows, pre).images, pre))
        if sum(len(x) for x in xs) >= 4 * kwargs["batch"]:
            break
    x = np.concatenate(xs)[: 4 * kwargs["batch"]]
    xseg = patient_inputs(x, any_models.segmenter.preprocess)
    times: dict[str, dict[str, list[float]]] = {n: {"classify": [], "segment": []} for n in loaded}
    for r in range(rounds + 1):  # round 0 warms up
        for name, m in loaded.items():
            for stage, fn, inp in (("classify", m.classify, x), ("segment", m.segment, xseg)):
                start = time.perf_counter()
                fn(inp)
                if r:
                    times[name][stage].append(time.perf_counter() - start)
    out = {}
    for name, t in times.items():
        c, s = float(np.median(t["classify"])), float(np.median(t["segment"]))
        out[name] = {"slices": len(x), "classify_s": c, "segment_s": s, "total_s": c + s,
                     "runs_on": loaded[name].runtimes}  # fmt: skip
    return out


def run_one(kwargs: dict[str, Any]) -> dict[str, Any]:
    """One configuration in this process (the subprocess side): `bench_triage` plus start-up,
    whether TensorFlow was imported, and (TF only) FLOPs per slice."""
    import psutil

    from pipeline.cli.bench import bench_triage

    if "interleaved" in kwargs:
        configs = kwargs.pop("interleaved")
        return interleaved(kwargs, configs)
    want_flops = kwargs.pop("flops", False)
    result = bench_triage(**kwargs)
    result["startup_to_results_s"] = time.time() - psutil.Process().create_time()
    result["tensorflow_imported"] = "tensorflow" in sys.modules
    if want_flops:
        from models.summary import model_flops
        from pipeline.tracking import load_model
        from pipeline.triage.settings import DEFAULT_CLASSIFIER, DEFAULT_SEGMENTER

        uris = {"classifier": kwargs["classifier"] or DEFAULT_CLASSIFIER,
                "segmenter": kwargs["segmenter"] or DEFAULT_SEGMENTER}  # fmt: skip
        result["gflops_per_slice"] = {k: model_flops(load_model(u).model) / 1e9
                                      for k, u in uris.items()}  # fmt: skip
    return result


def run_config(kwargs: dict[str, Any], timeout: float = 1800.0) -> dict[str, Any]:
    """`run_one(kwargs)` in a fresh Python process; its JSON result (or `error`)."""
    cmd = [sys.executable, "-m", "pipeline.cli.bench_runtimes", json.dumps(kwargs)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode or not lines:
        return {"error": (proc.stderr or proc.stdout).strip().splitlines()[-5:]}
    return dict(json.loads(lines[-1]))


def _fmt(v: float | None, spec: str = ".2f", unit: str = "") -> str:
    return "n/a" if v is None else f"{v:{spec}}{unit}"


def _memory_rows(
    r: dict[str, Any], few: dict[str, Any] | None, big: dict[str, Any] | None
) -> list[tuple[str, str]]:
    """Peak RSS of the whole archive against the first N patients alone (target <= 1.05x) and
    against its largest patient alone (what a patient's own size costs, apart from their number)."""
    if not few or "error" in few:
        why = " / ".join(few["error"]) if few else "not measured (--memory-patients 0)"
        return [("RSS peak, first patients alone", why)]
    ratio = r["rss_peak_mb"] / few["rss_peak_mb"]
    rows = [
        (
            f"RSS peak, {r['patients']} patients / first {few['patients']} alone",
            f"{r['rss_peak_mb']:.0f} / {few['rss_peak_mb']:.0f} MB = {ratio:.3f}x "
            f"({r['slices'] / r['patients']:.1f} / {few['slices'] / few['patients']:.1f} "
            "slices per patient)",
        )
    ]
    if big and "error" not in big:
        rows.append(
            (
                f"RSS peak, {r['patients']} patients / largest alone ({big['slices']} slices)",
                f"{r['rss_peak_mb']:.0f} / {big['rss_peak_mb']:.0f} MB = "
                f"{r['rss_peak_mb'] / big['rss_peak_mb']:.3f}x",
            )
        )
    return rows


def _padding_rows(r: dict[str, Any], segmented: int) -> list[tuple[str, str]]:
    """What the models computed end to end, padding of the last batches included."""
    if "computed_classifier" not in r:
        return []
    clf, seg = r["computed_classifier"], r["computed_segmenter"]
    return [
        (
            "slices computed / needed (padding)",
            f"classifier {clf} / {r['slices']} = {clf / max(r['slices'], 1):.3f}x, segmenter "
            f"{seg} / {segmented} = {seg / max(segmented, 1):.3f}x",
        )
    ]


def _cpu_rows(r: dict[str, Any]) -> list[tuple[str, str]]:
    """The CPU budget (`pipeline.cli.bench.cpu_budget`) as table rows."""
    if r.get("ratio_floor") is None:
        return []
    return [
        (
            "CPU outside the models",
            f"{r['cpu_ms_outside_models_per_slice']:.1f} ms a slice (run "
            f"{r['cpu_s_end_to_end']:.1f} s of CPU, models alone {r['cpu_s_models']:.1f} s)",
        ),
        (
            "cores busy in the models alone",
            f"{r['cores_busy_in_models']:.2f} of {r['cores']}",
        ),
        (
            "end-to-end / models floor on these cores",
            f"{r['ratio_floor']:.2f} (the run's CPU shared over every core, over the models' time)",
        ),
    ]


def config_table(
    name: str,
    r: dict[str, Any],
    base: dict[str, Any],
    peak: float,
    few: dict[str, Any] | None = None,
    big: dict[str, Any] | None = None,
) -> str:
    """One configuration's figures as a Markdown table (speed-ups against the TF loop and run;
    `few` / `big` = the same configuration on the first patients / the largest one alone, for its
    memory)."""
    if "error" in r:
        return f"### {name}\n\nfailed: {' / '.join(r['error'])}"
    gf = base.get("gflops_per_slice") or {}
    segmented = r.get("segmenter_inputs", r["flagged"])  # the mirror counts: it is model work
    work = r["slices"] * gf.get("classifier", 0.0) + segmented * gf.get("segmenter", 0.0)
    rate = work / r["model_s"] if work else None
    rss = r["rss_mb_after_patient"]
    per_patient = (rss[-1] - rss[0]) / (len(rss) - 1) if len(rss) > 1 else 0.0
    loop = base.get("per_slice_loop_s")
    vs_tf = r["end_to_end_slices_per_s"] / base["end_to_end_slices_per_s"]
    share = f"{100 * rate / peak:.0f}%" if rate else "n/a"
    rows = [
        ("runs on", f"{r['runtimes'].get('classifier')} + {r['runtimes'].get('segmenter')}"),
        ("patients / slices / segmented", f"{r['patients']} / {r['slices']} / {r['flagged']}"),
        ("end-to-end slices/s", f"{r['end_to_end_slices_per_s']:.1f} ({r['end_to_end_s']:.2f} s)"),
        *_padding_rows(r, segmented),
        ("end-to-end vs TF fp32", f"{vs_tf:.2f}x"),
        (
            "models alone (batched)",
            f"{r['model_s']:.2f} s (classifier {r['model_s_classify']:.2f}, "
            f"segmenter {r['model_s_segment']:.2f})",
        ),
        ("end-to-end / models", f"{r['ratio_end_to_end_to_model']:.2f}"),
        *_cpu_rows(r),
        ("speed-up vs TF per-slice loop", _fmt(loop / r["end_to_end_s"] if loop else None, ".1f")),
        (
            "achieved GFLOP/s (models alone)",
            f"{_fmt(rate, '.1f')} = {share} of the fp32 matmul peak",
        ),
        (
            "RSS start / after first / last patient",
            f"{r['rss_mb_at_start']:.0f} / {rss[0]:.0f} / {rss[-1]:.0f} MB",
        ),
        ("RSS growth per patient", f"{per_patient:+.1f} MB"),
        ("RSS peak (sampled)", f"{r['rss_peak_mb']:.0f} MB"),
        *_memory_rows(r, few, big),
        ("process start to last result", f"{r['startup_to_results_s']:.1f} s"),
        ("TensorFlow imported", str(r["tensorflow_imported"])),
    ]
    for kind, p in sorted(r.get("parity", {}).items()):
        rows.append((f"parity {kind}", ", ".join(f"{k} {v}" for k, v in p.items())))
    rows += [("note", n) for n in r.get("notes", [])]
    lines = [f"### {name}", "", "| measure | value |", "|---|---|"]
    return "\n".join(lines + [f"| {a} | {b} |" for a, b in rows])


def interleaved_table(r: dict[str, Any]) -> str:
    """The alternating models-alone timings as one Markdown table (ratios against the first)."""
    if "error" in r:
        return f"### models alone, in turns\n\nfailed: {' / '.join(r['error'])}"
    base = next(iter(r.values()))
    lines = [
        "### models alone, in turns (one process, same slices, median of 5 rounds)",
        "",
        "| configuration | runs on | classifier s | segmenter s | slices/s | vs TF |",
        "|---|---|---|---|---|---|",
    ]
    for name, t in r.items():
        runs = " + ".join(t["runs_on"].values())
        lines.append(
            f"| {name} | {runs} | {t['classify_s']:.3f} | {t['segment_s']:.3f} | "
            f"{t['slices'] / t['total_s']:.1f} | {base['total_s'] / t['total_s']:.2f}x |"
        )
    return "\n".join(lines)


def bench_runtimes(args: argparse.Namespace) -> dict[str, Any]:
    """Run every configuration asked for; returns `{"cpu", "matmul_peak_gflops", "configs"}`."""
    from pipeline.triage.runtime import openvino_available, supported_precisions

    common = {
        "archive": args.archive, "classifier": args.classifier, "segmenter": args.segmenter,
        "threshold": args.threshold, "batch": args.batch, "precision": args.precision,
        "workers": args.workers, "prefetch": args.prefetch, "xla": args.xla,
    }  # fmt: skip
    configs = {"tf-" + args.precision: {"runtime": "tf", "loop_slices": args.loop_slices,
                                        "flops": True}}  # fmt: skip
    if "openvino" in args.runtimes and openvino_available():
        native = supported_precisions()
        for p in args.ov_precisions:
            if p in native or p == "auto":
                configs[f"openvino-{p}"] = {"runtime": "openvino", "ov_precision": p,
                                            "loop_slices": 0}  # fmt: skip
    peak_before = matmul_peak_gflops()
    results = {name: run_config({**common, **extra}) for name, extra in configs.items()}
    few, big = {}, {}  # each configuration on the first patients alone, and on the largest alone
    if args.memory_patients > 0:
        alone = {"patients": args.memory_patients, "loop_slices": 0, "flops": False}
        few = {name: run_config({**common, **extra, **alone}) for name, extra in configs.items()}
        one = {"largest": True, "loop_slices": 0, "flops": False}
        big = {name: run_config({**common, **extra, **one}) for name, extra in configs.items()}
    turns = [{"name": n, **{k: v for k, v in e.items() if k in ("runtime", "ov_precision")}}
             for n, e in configs.items()]  # fmt: skip
    alternating = run_config({**common, "interleaved": turns})
    peak = max(peak_before, matmul_peak_gflops())
    return {"cpu": cpu_summary(), "matmul_peak_gflops": round(peak, 1), "configs": results,
            "first_patients": few, "largest_patient": big,
            "interleaved": alternating}  # fmt: skip


def cli_bench_triage(args: argparse.Namespace) -> int:
    """`mri-triage bench triage ARCHIVE [--runtimes tf openvino] [--ov-precisions ...] [--json]`."""
    out = bench_runtimes(args)
    if args.json:
        print(json.dumps(out, indent=1))
        return 0
    cpu = out["cpu"]
    caps = " ".join(cpu.get("openvino_capabilities", ["-"]))
    print(f"CPU: {cpu['cpu']}, {cpu['cores']} cores; flags: {' '.join(cpu['flags'])}; "
          f"TF oneDNN: {cpu['tf_onednn']}; OpenVINO capabilities: {caps}")  # fmt: skip
    print(
        f"fp32 matmul peak (numpy, same run): {out['matmul_peak_gflops']:.1f} GFLOP/s "
        "(bf16 and int8 kernels can exceed it: GFLOP/s counts the fp32 model's operations)\n"
    )
    base = next(iter(out["configs"].values()))
    if "error" in base:
        print(f"the TF reference run failed: {base['error']}")
        return 1
    for name, r in out["configs"].items():
        few, big = out["first_patients"].get(name), out["largest_patient"].get(name)
        print(config_table(name, r, base, out["matmul_peak_gflops"], few, big) + "\n")
    print(interleaved_table(out["interleaved"]))
    return 0


if __name__ == "__main__":  # one configuration, in a subprocess of `bench_runtimes`
    print(json.dumps(run_one(json.loads(sys.argv[1])), default=str))
