"""The fuzz targets run for a bounded number of inputs without a crash: atheris on the Python
side (twin and compiled core through their API), libFuzzer on the Rust reader itself."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from messages import NOW_S, batch_body, compact, message

FUZZ = Path(__file__).parents[2] / "fuzz"
RUNS = 100_000

SEEDS = [
    b"\x80" + batch_body(message(), message(device_id="d 2", metrics={"a,b": True}), 5),
    b"\x81" + compact(message(ts=None, metrics={"v": 1e16, "w": -0.0})),
    b"\xc2"
    + batch_body(
        {
            "src": "shelly-1",
            "timestamp": NOW_S,
            "params": {"switch:0": {"apower": 12.5, "voltage": 230.1, "current": 0.054}},
        }
    ),
]


def test_fuzz_target_survives_a_hundred_thousand_inputs(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i, seed in enumerate(SEEDS):
        (corpus / f"seed-{i}").write_bytes(seed)
    run = subprocess.run(
        [
            sys.executable,
            str(FUZZ / "fuzz_core.py"),
            f"-runs={RUNS}",
            "-seed=1",
            "-max_len=2048",
            "-len_control=0",
            f"-dict={FUZZ / 'core.dict'}",
            str(corpus),
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-6000:]
    assert f"Done {RUNS} runs" in run.stderr


def test_rust_reader_fuzz_target_survives_two_hundred_thousand_inputs(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i, seed in enumerate(SEEDS):
        (corpus / f"seed-{i}").write_bytes(seed[1:])
    run = subprocess.run(
        [
            sys.executable,
            str(FUZZ / "rust" / "run.py"),
            "-runs=200000",
            "-seed=1",
            "-max_len=2048",
            str(corpus),
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert run.returncode == 0, run.stderr[-6000:]
    assert "Done 200000 runs" in run.stderr
