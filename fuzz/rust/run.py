"""Build the libFuzzer target of the core's JSON reader (stable Rust, coverage instrumentation
through rustc's sancov passes) and run it; arguments after the script go to libFuzzer.

    python fuzz/rust/run.py -max_total_time=600 fuzz/corpus-rust     # at length, on demand
    (tests/core/test_fuzz.py runs it for a bounded number of inputs on every test run)
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
# cargo-fuzz's flags minus the sanitizer (which needs nightly): edge counters, the PC table and
# comparison tracing are what libFuzzer's coverage guidance reads.
SANCOV = [
    "-Cpasses=sancov-module",
    "-Cllvm-args=-sanitizer-coverage-level=4",
    "-Cllvm-args=-sanitizer-coverage-inline-8bit-counters",
    "-Cllvm-args=-sanitizer-coverage-pc-table",
    "-Cllvm-args=-sanitizer-coverage-trace-compares",
    "--cfg=fuzzing",
]


def host_triple() -> str:
    """rustc's host target; building for it explicitly keeps the flags off build scripts."""
    out = subprocess.run(["rustc", "-vV"], capture_output=True, text=True, check=True).stdout
    return next(line.split()[1] for line in out.splitlines() if line.startswith("host:"))


def build() -> Path:
    """Build the instrumented target; returns the binary."""
    triple = host_triple()
    env = {**os.environ, "RUSTFLAGS": " ".join(SANCOV)}
    subprocess.run(
        ["cargo", "build", "--release", "-q", "--target", triple],
        cwd=HERE,
        env=env,
        check=True,
    )
    return HERE / "target" / triple / "release" / "reader"


if __name__ == "__main__":
    binary = build()
    args = [f"-dict={HERE.parent / 'core.dict'}", *sys.argv[1:]]
    sys.exit(subprocess.run([str(binary), *args]).returncode)
