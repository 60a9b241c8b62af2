"""Does the Batch API runner's memory stay flat on a large output file? (issue 12 §3)

It starts the project's mock server (``pmock-batch mock-server``, its own
process, a free loopback port, images padded to ``--payload-mb``), then runs
``pmock-batch JOBS --batch-api`` as a child process twice: with a small job
file (``--small`` images, 100 by default) and a large one (``--large``, 2,000
by default), each a single batch whose output file is one stream of every
image's base64. It reports the child's peak RSS (``os.wait4``'s
``ru_maxrss``: the client alone, not the mock) and wall time for each, and
whether the large run's peak is within ``--budget-mb`` (50) of the small's.

Usage::

    .venv/bin/python benchmarks/batch_memory.py              # 100 vs 2,000 images of ~1.5 MB
    .venv/bin/python benchmarks/batch_memory.py --quick      # 50 vs 300, a smoke run

Nothing leaves 127.0.0.1. The images are written to a temporary directory
(about ``large x payload`` MB of disk), removed at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
KEY = "sk-benchmark-batch-memory"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_ready(url: str, timeout: float = 20.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            with urllib.request.urlopen(url + "/_mock/stats", timeout=1):  # noqa: S310 (loopback)
                return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"the mock server did not start at {url}")


def _run(jobs: int, base: str, work: Path, poll: float) -> tuple[float, float]:
    """One client run; returns (peak RSS in MB, wall seconds)."""
    path = work / f"jobs-{jobs}.jsonl"
    path.write_text(
        "".join(json.dumps({"id": f"i{i}", "prompt": f"p {i}"}) + "\n" for i in range(jobs))
    )
    out = work / f"out-{jobs}"
    argv = [
        sys.executable,
        "-m",
        "pmock_batch",
        str(path),
        "--out",
        str(out),
        "--batch-api",
        "--poll-interval",
        str(poll),
        "-q",
    ]
    env = {**os.environ, "PMOCK_API_KEY": KEY, "PMOCK_BASE_URL": base, "PYTHONPATH": str(ROOT)}
    started = time.monotonic()
    child = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(child.pid, 0)
    wall = time.monotonic() - started
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"pmock-batch exited {os.waitstatus_to_exitcode(status)} for {jobs} jobs")
    images = sum(1 for p in out.iterdir() if p.suffix == ".png")
    if images != jobs:
        raise SystemExit(f"{images} images on disk, not {jobs}")
    return usage.ru_maxrss / 1024, wall


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--small", type=int, default=100)
    parser.add_argument("--large", type=int, default=2000)
    parser.add_argument("--payload-mb", type=float, default=1.5)
    parser.add_argument("--budget-mb", type=float, default=50.0)
    parser.add_argument("--quick", action="store_true", help="50 vs 300 images")
    args = parser.parse_args()
    if args.quick:
        args.small, args.large = 50, 300
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    mock = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pmock_batch",
            "mock-server",
            "--port",
            str(port),
            "--payload-mb",
            str(args.payload_mb),
            "--batch-seconds",
            "1",
        ],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_ready(base)
        with tempfile.TemporaryDirectory() as tmp:
            small = _run(args.small, base + "/v1", Path(tmp), 0.5)
            large = _run(args.large, base + "/v1", Path(tmp), 0.5)
    finally:
        mock.terminate()
        mock.wait()
    print("| images | payload | peak RSS | wall |\n|---:|---:|---:|---:|")
    for n, (rss, wall) in ((args.small, small), (args.large, large)):
        print(f"| {n:,} | {args.payload_mb} MB | {rss:.0f} MB | {wall:.1f} s |")
    grew = large[0] - small[0]
    verdict = "flat" if grew <= args.budget_mb else "NOT flat"
    print(
        f"\nThe large run's peak is {grew:+.0f} MB from the small's: {verdict} "
        f"(budget {args.budget_mb:.0f} MB)."
    )
    return 0 if grew <= args.budget_mb else 1


if __name__ == "__main__":
    raise SystemExit(main())
