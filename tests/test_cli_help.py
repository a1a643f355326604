"""The command line explains itself: defaults, choices, examples, exit codes, typo hints, and
input checks that answer before Prefect, MLflow or TensorFlow load, creating nothing."""

from __future__ import annotations

import argparse
import io
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.cli.main import EXAMPLES, _normalise_archive, build_parser, main


def _parsers(
    parser: argparse.ArgumentParser, path: str = ""
) -> list[tuple[str, argparse.ArgumentParser]]:
    out = [(path, parser)]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                out += _parsers(child, f"{path} {name}".strip())
    return out


def test_every_subcommand_has_an_example_and_shows_defaults() -> None:
    parser = build_parser()
    for path, p in _parsers(parser)[1:]:
        text = p.format_help()
        assert path in EXAMPLES and "example:" in text and "exit codes:" in text, path
        for action in p._actions:
            given = action.default is not None and action.default is not False
            if action.option_strings and given and action.default != argparse.SUPPRESS:
                assert "default" in (action.help or "").lower() or (
                    f"(default: {action.default})" in " ".join(text.split())
                ), (path, action.dest)


def test_loss_is_a_choice_and_archive_is_positional_everywhere() -> None:
    parser = build_parser()
    args = parser.parse_args(["train", "segmenter", "A", "--loss", "dice"])
    _normalise_archive(parser, args)
    assert args.archive == "A" and args.loss == "dice"
    old = parser.parse_args(["train", "classifier", "--archive", "B"])
    _normalise_archive(parser, old)
    assert old.archive == "B" and not hasattr(old, "archive_option")
    with pytest.raises(SystemExit):
        parser.parse_args(["train", "segmenter", "A", "--loss", "dicee"])
    for argv in (["index", "A"], ["triage", "A", "--out", "O"], ["export", "A"]):
        ns = parser.parse_args(argv)
        _normalise_archive(parser, ns)
        assert ns.archive == "A"


def test_a_typo_suggests_the_nearest_command(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["triag", "x"])
    assert exc.value.code == 2 and "did you mean 'triage'?" in capsys.readouterr().err


def _triage(tmp_path: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    code = (
        "import sys; from pipeline.cli.main import main; rc = main(sys.argv[1:]); "
        "heavy = [m for m in ('prefect', 'tensorflow', 'mlflow') if m in sys.modules]; "
        "print('loaded:', heavy); sys.exit(rc)"
    )
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}"}
    return subprocess.run(
        [sys.executable, "-c", code, "triage", *argv], capture_output=True, text=True, env=env
    )


def test_missing_archive_or_champion_fails_fast_creating_nothing(tmp_path: Path) -> None:
    archive = tmp_path / "archive"
    missing = _triage(tmp_path, str(archive), "--out", str(tmp_path / "out"))
    assert missing.returncode == 2 and missing.stderr.count("\n") == 1
    assert "archive folder" in missing.stderr and str(archive) in missing.stderr
    archive.mkdir()
    champion = _triage(tmp_path, str(archive), "--out", str(tmp_path / "out"))
    assert champion.returncode == 2 and champion.stderr.count("\n") == 1
    line = champion.stderr
    assert "models:/mri-triage-classifier@champion" in line and "mlflow.db" in line
    assert "mri-triage train classifier" in line  # how to fix it
    model = _triage(tmp_path, str(archive), "--out", str(tmp_path / "o"), "--classifier", "c.keras")
    assert model.returncode == 2 and "c.keras not found" in model.stderr
    for done in (missing, champion, model):
        assert "loaded: []" in done.stdout  # answered before Prefect, TensorFlow, MLflow
    assert sorted(p.name for p in tmp_path.iterdir()) == ["archive"]  # nothing created


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_on_a_terminal_only() -> None:
    from pipeline.triage.progress import Progress, progress_line

    tty, log = _Tty(), io.StringIO()
    for stream in (tty, log):
        p = Progress(2, 20, stream)
        p.update(10)
        p.update(10)
        p.close()
    assert "patients 2/2" in tty.getvalue() and "slices/s" in tty.getvalue()
    assert log.getvalue() == ""  # quiet in logs and pipes
    assert progress_line(1, 4, 10, 40, 5.0) == "patients 1/4 · 2.0 slices/s · ETA 0:15"


def test_native_noise_is_kept_off_the_terminal() -> None:
    code = (
        "import os; from models.quiet import native_stderr_silenced\n"
        "with native_stderr_silenced(): os.write(2, b'cuInit noise')\n"
        "os.write(2, b'after')"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.stderr == "after"


def test_onednns_integer_notice_is_kept_off_the_terminal() -> None:
    """With oneDNN on (as the command runs TensorFlow), a CPU without AVX-512 logs "oneDNN
    supports DT_INT32 only on platforms with AVX-512" at the first graph holding an integer op
    (every training step has one): the quiet import meets it first, with stderr closed."""
    from models.quiet import has_nvidia_driver

    if has_nvidia_driver():
        pytest.skip("machines with a GPU keep TensorFlow's native messages")
    code = (
        "import os; os.environ['TF_ENABLE_ONEDNN_OPTS'] = '1'\n"
        "from models.quiet import import_tensorflow_quietly; import_tensorflow_quietly()\n"
        "import tensorflow as tf\n"
        "f = tf.function(lambda a: tf.transpose(a * 3), autograph=False)\n"
        "print(f(tf.constant([[1, 2]])).numpy().tolist())"
    )
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[[3], [6]]"
    assert "oneDNN" not in done.stderr and "util.cc" not in done.stderr, done.stderr


@pytest.mark.parametrize("command", [["train", "classifier"], ["evaluate"], ["export"]])
def test_every_command_answers_a_missing_archive_at_once(
    command: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([*command, str(tmp_path / "nope")]) == 2
    assert "nope not found" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_a_wrong_time_zone_is_refused_before_prefect(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "a").mkdir()
    argv = ["serve", str(tmp_path / "a"), "--out", str(tmp_path / "o"), "--classifier", __file__]
    argv += ["--segmenter", __file__, "--timezone", "Mars/Olympus"]
    assert main(argv) == 2 and "Mars/Olympus" in capsys.readouterr().err
