"""`mri-triage models` and `mri-triage bench models` print real figures; precision policy choice."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from models.precision import choose_policy, cpu_flags, key_flags, policy_scope
from pipeline.cli.main import main


def test_models_json_reports_every_architecture(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models", "--json", "--image-size", "64"]) == 0
    out = json.loads(capsys.readouterr().out)
    rows = {row["name"]: row for row in out["models"]}
    assert set(rows) == {"resnet50", "vgg16", "resunet", "resunet_pp"}
    # Fully convolutional segmenters have the same parameters at any size.
    assert rows["resunet"]["total"] == 1_210_513 and rows["resunet_pp"]["total"] == 4_070_385
    # At 64 px the classifier head sees a 1x1x2048 map: the first dense layer shrinks 4x.
    assert rows["resnet50"]["total"] == 25_817_218 - (8192 - 2048) * 256
    for row in rows.values():
        assert row["total"] == row["trainable"] + row["non_trainable"]
        assert row["gflops"] > 0
    assert rows["vgg16"]["gflops"] > rows["resnet50"]["gflops"] > rows["resunet"]["gflops"]


def test_bench_models_prints_measured_figures(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["bench", "models", "--models", "resunet", "--batch", "2", "--image-size", "32",
            "--repeats", "2", "--json"]  # fmt: skip
    assert main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    (row,) = out["results"]
    assert row["name"] == "resunet" and row["batch"] == 2 and len(row["timings_s"]) == 2
    assert row["slices_per_s"] > 0 and row["achieved_gflops_per_s"] > 0
    assert main(["bench", "models", "--models", "unet"]) == 2


@pytest.mark.parametrize(
    ("gpu", "flags", "policy"),
    [
        (True, {"avx2"}, "mixed_float16"),
        (True, {"amx_bf16"}, "mixed_float16"),
        (False, {"avx512f", "avx512_bf16"}, "mixed_bfloat16"),
        (False, {"amx_tile", "amx_bf16"}, "mixed_bfloat16"),
        (False, {"avx512f", "avx512_vnni"}, "float32"),
        (False, set(), "float32"),
    ],
)
def test_choose_policy(gpu: bool, flags: set[str], policy: str) -> None:
    assert choose_policy(gpu, flags) == policy


def test_cpu_flags_reads_cpuinfo(tmp_path: Path) -> None:
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu avx2 amx_bf16\n\nprocessor\t: 1\n")
    assert cpu_flags(info) == {"fpu", "avx2", "amx_bf16"}
    assert cpu_flags(tmp_path / "missing") == frozenset()
    assert key_flags(info) == ["avx2", "amx_bf16"]  # the ones speed depends on, in a fixed order


def test_policy_scope_restores_and_validates() -> None:
    import keras

    with policy_scope("mixed_bfloat16"):
        assert keras.mixed_precision.global_policy().name == "mixed_bfloat16"
    assert keras.mixed_precision.global_policy().name == "float32"
    with pytest.raises(ValueError, match="policy"), policy_scope("int8"):
        pass
