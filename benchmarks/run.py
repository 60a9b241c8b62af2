"""pmock-batch against the plain openai-SDK script, side by side, in one run (issue 4, part 3).

For each scenario this starts the project's mock server (``pmock-batch
mock-server``) as its own process on a free loopback port, then runs
pmock-batch (A) and ``benchmarks/baseline.py`` (B) in turn, A B A B ..., for
``--reps`` repetitions. Each run is a fresh child process in a fresh output
directory, measured from the outside: wall time around the child, and its
user+sys CPU seconds and peak RSS as GNU ``/usr/bin/time`` reports them (see
:func:`run_child` for why not ``os.wait4`` directly). The mock's counters are
zeroed (``POST /_mock/reset``) before each run and read (``GET /_mock/stats``)
after it, for the requests and 429s the server saw. Jobs ok are counted as
image files on disk, not taken from either tool's report.

Scenarios (``--scenario NAME``, repeatable; all by default)::

    rate-limited   mock limit 1,200 rpm, window and bucket limiters, 200 jobs, concurrency 32
                   (ideal 10 s)
    latency-bound  mock latency 0.5 s, 512 jobs, concurrency 32 (ideal N*L/C = 8 s)
    cpu            200 jobs, 1024x1024 PNGs of about 1.5 MB, concurrency 8
    memory-4k      32 jobs, 3840x2160 PNGs of about 12 MB, concurrency 16
    scale          100,000 vs 1,000 tiny jobs, concurrency 64 (pmock-batch only)
    resume         re-run of a fully done 10,000-job batch (pmock-batch only)

Usage::

    .venv/bin/python benchmarks/run.py                 # every scenario, about 13 minutes on 2 cores
    .venv/bin/python benchmarks/run.py --quick         # a smoke run, under a minute
    .venv/bin/python benchmarks/run.py --scenario cpu --reps 5

The report (markdown) goes to stdout and to ``--output`` (default
``benchmarks/results/latest.md``), the raw samples to the same name with
``.json``. Progress goes to stderr. Nothing leaves 127.0.0.1.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PYTHON = sys.executable
BASELINE = HERE / "baseline.py"
MODEL = "gpt-image-2"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
GNU_TIME = "/usr/bin/time"  # GNU time; on Debian/Ubuntu: apt-get install time
CHILD_TIMEOUT = 1800.0  # seconds; a child still running then is killed and the run fails
MB = 1024 * 1024  # peak RSS is reported in MiB
OURS = "pmock-batch"
BASE = "baseline"
# Realistic prompts are a sentence or two; the mock draws one picture per distinct prompt.
PROMPT = (
    "A lighthouse on a basalt cliff at dusk, oil painting, warm light in the lantern room, "
    "gulls over a rough sea, variant {n}"
)
_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never via a proxy


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# -- measuring a child ----------------------------------------------------------------------


@dataclass
class Sample:
    """One run of one side, measured from outside the process."""

    side: str
    label: str
    rep: int
    jobs: int
    exit_code: int
    wall_s: float
    user_s: float
    sys_s: float
    peak_rss_mb: float
    files_ok: int  # image files on disk after the run
    requests: int  # generation requests the mock received
    r429: int  # 429 answers the mock gave
    peak_in_flight: int
    mock_cpu_s: float  # CPU the mock server spent during the run (its own process)
    reported: dict[str, Any] | None = None  # the baseline's JSON line, if any
    stderr_tail: str = ""

    @property
    def cpu_s(self) -> float:
        return self.user_s + self.sys_s

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "cpu_s": round(self.cpu_s, 3)}


@dataclass(frozen=True)
class Usage:
    user_s: float
    sys_s: float
    peak_rss_kb: int


def run_child(cmd: list[str], *, env: dict[str, str]) -> tuple[int, float, Usage, str, str]:
    """Run ``cmd`` to the end: (exit code, wall seconds, its CPU and peak RSS, stdout, stderr).

    The child is started by GNU time, which forks it from its own tiny process and
    reports its rusage. Taking ``ru_maxrss`` from our own ``wait4`` would be wrong:
    Linux carries the high-water RSS of the process that forked over ``exec``, so
    every child would look at least as big as this script.
    """
    with (
        tempfile.TemporaryFile() as out,
        tempfile.TemporaryFile() as err,
        tempfile.NamedTemporaryFile("r", suffix=".time") as report,
    ):
        timed = [GNU_TIME, "-f", "%U %S %M", "-o", report.name, *cmd]
        start = time.perf_counter()
        proc = subprocess.Popen(
            timed, stdout=out, stderr=err, env=env, cwd=ROOT, start_new_session=True
        )
        killer = threading.Timer(CHILD_TIMEOUT, os.killpg, (proc.pid, signal.SIGKILL))
        killer.start()
        try:
            code = proc.wait()
        finally:
            killer.cancel()
        wall = time.perf_counter() - start
        user, system, rss = report.read().strip().splitlines()[-1].split()
        out.seek(0)
        err.seek(0)
        stdout = out.read().decode("utf-8", "replace")
        stderr = err.read().decode("utf-8", "replace")
    return code, wall, Usage(float(user), float(system), int(rss)), stdout, stderr


def child_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    env.pop("PMOCK_BASE_URL", None)
    env.update(
        PMOCK_API_KEY="sk-benchmark-dummy",
        OPENAI_API_KEY="sk-benchmark-dummy",
        NO_PROXY="127.0.0.1,localhost",
        no_proxy="127.0.0.1,localhost",
    )
    return env


def count_images(out: Path) -> int:
    if not out.exists():
        return 0
    total = 0
    stack = [out]
    while stack:
        with os.scandir(stack.pop()) as entries:
            for entry in entries:
                if entry.name.startswith("."):
                    continue
                if entry.is_dir(follow_symlinks=False):
                    stack.append(Path(entry.path))
                elif entry.name.endswith(IMAGE_SUFFIXES) and entry.stat().st_size > 0:
                    total += 1
    return total


# -- the mock server ------------------------------------------------------------------------


@dataclass(frozen=True)
class MockSetup:
    rpm: int | None = None
    limiter: str | None = None  # "window" (the mock's default) or "bucket"
    latency: float = 0.0
    payload_mb: float | None = None
    image_px: int | None = None
    trailing_bytes: int = 0  # bytes after each image's end (PNG IEND), which must not fail it

    def flags(self) -> list[str]:
        flags = []
        if self.rpm is not None:
            flags += ["--rpm", str(self.rpm)]
        if self.limiter is not None:
            flags += ["--limiter", self.limiter]
        if self.latency:
            flags += ["--latency", str(self.latency)]
        if self.payload_mb is not None:
            flags += ["--payload-mb", str(self.payload_mb)]
        if self.image_px is not None:
            flags += ["--image-px", str(self.image_px)]
        if self.trailing_bytes:
            flags += ["--trailing-bytes", str(self.trailing_bytes)]
        return flags


# Used only while ``pmock-batch mock-server`` has no --image-px flag yet: the same server,
# started through the library with the same options.
_SERVE_FALLBACK = """
import asyncio, json, sys
from pmock_batch.mock import MockOptions, serve
def ready(url):
    print(f"pmock-batch mock server listening on {url} (base URL {url}/v1)", file=sys.stderr,
          flush=True)
asyncio.run(serve(MockOptions(**json.loads(sys.argv[1])), port=0, on_ready=ready))
"""


def _cli_has_image_px() -> bool:
    help_text = subprocess.run(
        [PYTHON, "-m", "pmock_batch", "mock-server", "--help"],
        capture_output=True,
        text=True,
        check=False,
        cwd=ROOT,
    ).stdout
    return "--image-px" in help_text


class Mock:
    """``pmock-batch mock-server`` in its own process on a free loopback port."""

    def __init__(self, setup: MockSetup, workdir: Path) -> None:
        self.setup = setup
        self.workdir = workdir
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""

    def command(self) -> list[str]:
        if self.setup.image_px is not None and not _cli_has_image_px():
            options = {k: v for k, v in asdict(self.setup).items() if v is not None}
            return [PYTHON, "-c", _SERVE_FALLBACK, json.dumps(options)]
        cli = [PYTHON, "-m", "pmock_batch", "mock-server", "--host", "127.0.0.1", "--port", "0"]
        return [*cli, *self.setup.flags()]

    def __enter__(self) -> Mock:
        err_path = self.workdir / "mock.stderr"
        with err_path.open("wb") as err:
            self.proc = subprocess.Popen(
                self.command(), stdout=subprocess.DEVNULL, stderr=err, env=child_env(), cwd=ROOT
            )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            found = re.search(r"listening on (http://127\.0\.0\.1:\d+)", err_path.read_text())
            if found:
                self.url = found.group(1)
                return self
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        self.__exit__()
        raise RuntimeError(f"the mock server did not start: {err_path.read_text()[-2000:]}")

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    @property
    def base_url(self) -> str:
        return self.url + "/v1"

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(  # noqa: S310 - always http://127.0.0.1
            self.url + path, data=data, method=method, headers={"Content-Type": "application/json"}
        )
        with _opener.open(request, timeout=600) as response:
            return json.loads(response.read())

    def reset(self) -> None:
        self._call("POST", "/_mock/reset")

    def stats(self) -> dict[str, Any]:
        return dict(self._call("GET", "/_mock/stats"))

    def warm(self, prompts: list[str], size: str) -> None:
        """Have the mock draw each distinct picture once, so no timed run pays for it."""

        def draw(prompt: str) -> None:
            body = {"model": MODEL, "size": size, "prompt": prompt}
            while True:
                try:
                    self._call("POST", "/v1/images/generations", body)
                    return
                except urllib.error.HTTPError as exc:
                    if exc.code != 429:
                        raise
                    time.sleep(float(exc.headers.get("Retry-After", "1")))

        with ThreadPoolExecutor(8) as pool:
            list(pool.map(draw, prompts))
        self.reset()

    def cpu_s(self) -> float:
        """The mock process's own user+sys CPU seconds so far, from /proc."""
        assert self.proc is not None
        try:
            fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rpartition(")")[2].split()
        except OSError:
            return float("nan")
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# -- jobs and runs --------------------------------------------------------------------------


def prompts_for(count: int, distinct: int | None) -> list[str]:
    """``count`` prompts; with ``distinct`` they cycle through that many different ones."""
    return [PROMPT.format(n=i if distinct is None else i % distinct) for i in range(count)]


def write_jobs(path: Path, count: int, *, size: str, distinct: int | None) -> list[str]:
    prompts = prompts_for(count, distinct)
    with path.open("w", encoding="utf-8") as f:
        for i, prompt in enumerate(prompts):
            f.write(json.dumps({"id": f"j{i:06d}", "prompt": prompt, "size": size}) + "\n")
    return sorted(set(prompts))


class Runner:
    """Runs one side against a mock and turns the result into a :class:`Sample`."""

    def __init__(self, mock: Mock, workdir: Path) -> None:
        self.mock = mock
        self.workdir = workdir
        self.env = child_env()
        self.count = 0

    def command(self, side: str, jobs: Path, out: Path, concurrency: int) -> list[str]:
        if side == OURS:
            return [
                PYTHON,
                "-m",
                "pmock_batch",
                str(jobs),
                "--base-url",
                self.mock.base_url,
                "--concurrency",
                str(concurrency),
                "--out",
                str(out),
                "-q",
            ]
        return [
            PYTHON,
            str(BASELINE),
            str(jobs),
            "--base-url",
            self.mock.base_url,
            "--concurrency",
            str(concurrency),
            "--out",
            str(out),
        ]

    def fresh_out(self) -> Path:
        self.count += 1
        return self.workdir / f"out-{self.count}"

    def run(
        self,
        side: str,
        label: str,
        rep: int,
        jobs: Path,
        njobs: int,
        concurrency: int,
        *,
        out: Path | None = None,
        keep: bool = False,
    ) -> Sample:
        out = out or self.fresh_out()
        self.mock.reset()
        mock_cpu = self.mock.cpu_s()
        code, wall, usage, stdout, stderr = run_child(
            self.command(side, jobs, out, concurrency), env=self.env
        )
        mock_cpu = self.mock.cpu_s() - mock_cpu
        stats = self.mock.stats()
        reported = None
        if side == BASE:
            with contextlib.suppress(ValueError, IndexError):
                reported = json.loads(stdout.strip().splitlines()[-1])
        sample = Sample(
            side=side,
            label=label,
            rep=rep,
            jobs=njobs,
            exit_code=code,
            wall_s=round(wall, 3),
            user_s=round(usage.user_s, 3),
            sys_s=round(usage.sys_s, 3),
            peak_rss_mb=round(usage.peak_rss_kb * 1024 / MB, 1),
            files_ok=count_images(out),
            requests=int(stats["requests"]),
            r429=int(stats["outcomes"].get("429", 0)),
            peak_in_flight=int(stats["peak_in_flight"]),
            mock_cpu_s=round(mock_cpu, 2),
            reported=reported,
            stderr_tail=stderr[-600:] if code != 0 else "",
        )
        log(
            f"  {label:<14} {side:<11} rep {rep + 1}: wall {sample.wall_s:7.2f} s  "
            f"cpu {sample.cpu_s:6.2f} s  rss {sample.peak_rss_mb:6.1f} MiB  "
            f"ok {sample.files_ok}/{njobs}  requests {sample.requests}  429s {sample.r429}  "
            f"exit {code}"
        )
        if code != 0 and sample.stderr_tail:
            log("    stderr: " + sample.stderr_tail.strip().replace("\n", "\n    "))
        if not keep:
            shutil.rmtree(out, ignore_errors=True)
        return sample


# -- scenarios ------------------------------------------------------------------------------


@dataclass
class Check:
    target: str
    measured: str
    passed: bool


@dataclass
class Result:
    name: str
    title: str
    setup: str
    samples: list[Sample] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def of(self, side: str, label: str | None = None) -> list[Sample]:
        return [s for s in self.samples if s.side == side and (label is None or s.label == label)]


def med(samples: list[Sample], attr: str) -> float:
    values = [float(getattr(s, attr)) for s in samples]
    return statistics.median(values) if values else float("nan")


@dataclass(frozen=True)
class Params:
    reps: int
    quick: bool


@contextlib.contextmanager
def scenario_dirs(name: str) -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix=f"pmock-bench-{name}-") as tmp:
        yield Path(tmp)


def side_by_side(
    result: Result,
    *,
    setup: MockSetup,
    njobs: int,
    concurrency: int,
    size: str,
    distinct: int | None,
    params: Params,
    extra: Callable[[Runner, int], None] | None = None,
    label: str = "batch",
) -> None:
    """Run A B A B ... against one mock; ``extra(runner, rep)`` runs after each pair."""
    with scenario_dirs(result.name) as tmp, Mock(setup, tmp) as mock:
        jobs = tmp / "jobs.jsonl"
        distinct_prompts = write_jobs(jobs, njobs, size=size, distinct=distinct)
        mock.warm(distinct_prompts, size)
        runner = Runner(mock, tmp)
        for rep in range(params.reps):
            for side in (OURS, BASE):
                result.samples.append(runner.run(side, label, rep, jobs, njobs, concurrency))
            if extra is not None:
                extra(runner, rep)


def all_ok(samples: list[Sample]) -> tuple[str, bool]:
    worst = min(s.files_ok for s in samples)
    njobs = samples[0].jobs
    failed_exit = sum(s.exit_code != 0 for s in samples)
    text = f"{worst}/{njobs} in the worst rep" + (
        f"; {failed_exit} rep(s) exited non-zero" if failed_exit else ""
    )
    return text, worst == njobs and not failed_exit


RATE_LIMITERS = ("window", "bucket")  # the mock's --limiter kinds, run side by side
RATE_SLOWDOWN = 1.2  # wall at most this times the ideal (issue 8)
RATE_REFUSED = 0.10  # 429s at most this share of the jobs (issue 8)


def rate_limited(params: Params) -> Result:
    rpm, concurrency = 1200, 32
    njobs = 40 if params.quick else 200
    ideal = njobs / (rpm / 60)
    result = Result(
        "rate-limited",
        "Rate-limited",
        f"mock `--rpm {rpm}`, once with `--limiter window` (a sliding minute, and at most "
        f"{rpm // 60} requests in any 1 s) and once with `--limiter bucket` (a token bucket "
        f"refilled at {rpm // 60} per second, burst {rpm // 60}), {njobs} jobs of 1024x1024 "
        f"PNG, concurrency {concurrency}; ideal {ideal:g} s",
    )
    for limiter in RATE_LIMITERS:
        side_by_side(
            result,
            setup=MockSetup(rpm=rpm, limiter=limiter),
            njobs=njobs,
            concurrency=concurrency,
            size="1024x1024",
            distinct=32,
            params=params,
            label=limiter,
        )
        ours = result.of(OURS, limiter)
        text, ok = all_ok(ours)
        result.checks.append(Check(f"{limiter}: every job ok", text, ok))
        wall = med(ours, "wall_s")
        result.checks.append(
            Check(
                f"{limiter}: wall <= {RATE_SLOWDOWN:g} x ideal {ideal:g} s = "
                f"{RATE_SLOWDOWN * ideal:g} s (whole process)",
                f"{wall:.2f} s ({wall / ideal:.2f} x)",
                wall <= RATE_SLOWDOWN * ideal,
            )
        )
        worst429 = max(s.r429 for s in ours)
        result.checks.append(
            Check(
                f"{limiter}: 429s <= {RATE_REFUSED:.0%} of jobs = {RATE_REFUSED * njobs:g}",
                f"{worst429} in the worst rep (median {med(ours, 'r429'):g})",
                worst429 <= RATE_REFUSED * njobs,
            )
        )
        base = result.of(BASE, limiter)
        result.notes.append(
            f"{limiter}: baseline median {med(base, 'files_ok'):g}/{njobs} jobs ok, "
            f"median {med(base, 'r429'):g} 429s, {med(base, 'requests'):g} requests; "
            f"pmock-batch median {med(ours, 'files_ok'):g}/{njobs} jobs ok, "
            f"{med(ours, 'r429'):g} 429s, {med(ours, 'requests'):g} requests."
        )
    return result


def latency_bound(params: Params) -> Result:
    latency, concurrency = 0.5, 32
    njobs = 64 if params.quick else 512
    ideal = njobs * latency / concurrency
    result = Result(
        "latency-bound",
        "Latency-bound",
        f"mock `--latency {latency}`, {njobs} jobs of 1024x1024 PNG, concurrency {concurrency}; "
        f"ideal N·L/C = {ideal:g} s",
    )
    setup = MockSetup(latency=latency)

    def startup(runner: Runner, rep: int) -> None:
        one = runner.workdir / "one.jsonl"
        if not one.exists():
            write_jobs(one, 1, size="1024x1024", distinct=1)
        for side in (OURS, BASE):
            result.samples.append(runner.run(side, "one job", rep, one, 1, concurrency))

    side_by_side(
        result,
        setup=setup,
        njobs=njobs,
        concurrency=concurrency,
        size="1024x1024",
        distinct=32,
        params=params,
        extra=startup,
    )
    ours = result.of(OURS, "batch")
    text, ok = all_ok(ours)
    result.checks.append(Check("every job ok", text, ok))
    start_up = med(result.of(OURS, "one job"), "wall_s") - latency
    bound = 1.05 * ideal + start_up
    wall = med(ours, "wall_s")
    result.checks.append(
        Check(
            f"wall <= 1.05 x {ideal:g} s + start-up {start_up:.2f} s = {bound:.2f} s",
            f"{wall:.2f} s",
            wall <= bound,
        )
    )
    result.notes.append(
        "Start-up is measured, not assumed: the median wall time of a 1-job run against the "
        f"same mock, minus the {latency} s latency (pmock-batch {start_up:.2f} s, baseline "
        f"{med(result.of(BASE, 'one job'), 'wall_s') - latency:.2f} s)."
    )
    return result


def check_half_of_baseline(result: Result, key: str, what: str, unit: str, *, digits: int) -> None:
    """Every job ok, and our median of ``key`` at most half the baseline's."""
    ours, base = result.of(OURS), result.of(BASE)
    text, ok = all_ok(ours)
    result.checks.append(Check("every job ok", text, ok))
    value, baseline = med(ours, key), med(base, key)
    result.checks.append(
        Check(
            f"{what} <= 0.5 x baseline's {baseline:.{digits}f} {unit} "
            f"= {0.5 * baseline:.{digits}f} {unit}",
            f"{value:.{digits}f} {unit} ({value / baseline:.2f} x)",
            value <= 0.5 * baseline,
        )
    )


# Bytes after each PNG's IEND in the cpu and memory-4k scenarios: a valid image (decoders
# accept it) that pmock-batch keeps as received, with a warning, and must not slow down on.
TRAILING_BYTES = 4096


def cpu_per_image(params: Params) -> Result:
    concurrency, payload = 8, 1.5
    njobs = 40 if params.quick else 200
    result = Result(
        "cpu",
        "CPU per image",
        f"no latency, {njobs} jobs of 1024x1024 PNG padded to about {payload} MB "
        f"(`--payload-mb {payload}`) with {TRAILING_BYTES} bytes after IEND "
        f"(`--trailing-bytes {TRAILING_BYTES}`), concurrency {concurrency}",
    )
    side_by_side(
        result,
        setup=MockSetup(payload_mb=payload, trailing_bytes=TRAILING_BYTES),
        njobs=njobs,
        concurrency=concurrency,
        size="1024x1024",
        distinct=16,
        params=params,
    )
    check_half_of_baseline(result, "cpu_s", "user+sys CPU", "s", digits=2)
    return result


def memory_4k(params: Params) -> Result:
    concurrency, payload = 16, 12.0
    njobs = 16 if params.quick else 32
    result = Result(
        "memory-4k",
        "Memory at 4K",
        f"{njobs} jobs of 3840x2160 PNG padded to about {payload:g} MB, with "
        f"{TRAILING_BYTES} bytes after IEND, concurrency {concurrency}",
    )
    side_by_side(
        result,
        setup=MockSetup(payload_mb=payload, trailing_bytes=TRAILING_BYTES),
        njobs=njobs,
        concurrency=concurrency,
        size="3840x2160",
        distinct=8,
        params=params,
    )
    check_half_of_baseline(result, "peak_rss_mb", "peak RSS", "MiB", digits=0)
    return result


def scale(params: Params, large: int) -> Result:
    concurrency, px = 64, 8
    small = 200 if params.quick else 1000
    large = 2000 if params.quick else large
    result = Result(
        "scale",
        "Scale",
        f"{large:,} vs {small:,} tiny jobs (every image {px}x{px} via the mock's `image_px`, "
        f"whatever the requested 1024x1024; every prompt distinct), no latency, "
        f"concurrency {concurrency}; pmock-batch only",
    )
    with scenario_dirs("scale") as tmp, Mock(MockSetup(image_px=px), tmp) as mock:
        files = {}
        for n in (small, large):
            files[n] = tmp / f"jobs-{n}.jsonl"
            write_jobs(files[n], n, size="1024x1024", distinct=None)
        runner = Runner(mock, tmp)
        for rep in range(params.reps):
            for n in (small, large):
                result.samples.append(
                    runner.run(OURS, f"{n:,} jobs", rep, files[n], n, concurrency)
                )
    big, little = result.of(OURS, f"{large:,} jobs"), result.of(OURS, f"{small:,} jobs")
    for group in (little, big):
        text, ok = all_ok(group)
        result.checks.append(Check(f"every job ok ({group[0].jobs:,} jobs)", text, ok))
    growth = med(big, "peak_rss_mb") - med(little, "peak_rss_mb")
    allowed = 100 * (large - small) / (100_000 - 1_000)
    result.checks.append(
        Check(
            f"peak RSS({large:,}) - peak RSS({small:,}) <= {allowed:.0f} MiB "
            "(100 MB per 99,000 more jobs, about 1 KB per job)",
            f"{growth:.0f} MiB ({growth * MB / 1000 / (large - small):.2f} kB per job)",
            growth <= allowed,
        )
    )
    return result


def resume(params: Params) -> Result:
    concurrency, px = 64, 8
    njobs = 500 if params.quick else 10_000
    result = Result(
        "resume",
        "Resume",
        f"re-run of a fully done {njobs:,}-job batch (tiny {px}x{px} images); pmock-batch only",
    )
    with scenario_dirs("resume") as tmp, Mock(MockSetup(image_px=px), tmp) as mock:
        jobs = tmp / "jobs.jsonl"
        write_jobs(jobs, njobs, size="1024x1024", distinct=None)
        runner = Runner(mock, tmp)
        out = tmp / "done"
        first = runner.run(OURS, "first run", 0, jobs, njobs, concurrency, out=out, keep=True)
        result.samples.append(first)
        for rep in range(params.reps):
            result.samples.append(
                runner.run(OURS, "re-run", rep, jobs, njobs, concurrency, out=out, keep=True)
            )
    text, ok = all_ok([first])
    result.checks.append(Check("the first run finishes every job", text, ok))
    again = result.of(OURS, "re-run")
    wall = med(again, "wall_s")
    result.checks.append(Check("re-run wall <= 2 s", f"{wall:.2f} s", wall <= 2.0))
    sent = max(s.requests for s in again)
    exits = {s.exit_code for s in again}
    result.checks.append(
        Check(
            "re-run sends no request (and exits 0)",
            f"{sent} requests at most; exit {sorted(exits)}",
            sent == 0 and exits == {0},
        )
    )
    return result


SCENARIOS = ("rate-limited", "latency-bound", "cpu", "memory-4k", "scale", "resume")


# -- the report -----------------------------------------------------------------------------


def table(headers: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join(" --- " for _ in headers) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def fmt(value: float, digits: int = 2) -> str:
    return "-" if value != value else f"{value:,.{digits}f}"  # NaN -> dash


METRICS = [
    ("wall s", "wall_s", 2),
    ("user+sys CPU s", "cpu_s", 2),
    ("  user s", "user_s", 2),
    ("  sys s", "sys_s", 2),
    ("peak RSS MiB", "peak_rss_mb", 0),
    ("jobs ok (files on disk)", "files_ok", 0),
    ("requests seen by the mock", "requests", 0),
    ("429 answers", "r429", 0),
    ("peak in flight at the mock", "peak_in_flight", 0),
    ("mock server CPU s", "mock_cpu_s", 2),
]


def scenario_table(result: Result) -> str:
    labels = list(dict.fromkeys(s.label for s in result.samples))
    sides = list(dict.fromkeys(s.side for s in result.samples))
    columns = [(label, side) for label in labels for side in sides if result.of(side, label)]
    side_by = len(sides) == 2
    headers = ["median of reps"]
    for label, side in columns:
        headers.append(side if len(labels) == 1 else f"{label}: {side}")
    if side_by:
        headers += [
            "ours / baseline" if len(labels) == 1 else f"{lb}: ours / base" for lb in labels
        ]
    rows = []
    for name, attr, digits in METRICS:
        row = [name]
        for label, side in columns:
            row.append(fmt(med(result.of(side, label), attr), digits))
        if side_by:
            for label in labels:
                a, b = med(result.of(OURS, label), attr), med(result.of(BASE, label), attr)
                row.append(f"{a / b:.2f}" if b else "-")
        rows.append(row)
    return table(headers, rows)


def machine() -> list[str]:
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.partition(":")[2].strip()
                break
    mem = "unknown"
    with contextlib.suppress(OSError):
        kb = int(Path("/proc/meminfo").read_text().split()[1])
        mem = f"{kb / 1024 / 1024:.1f} GiB"
    return [
        f"- CPU: {cpu}, {os.cpu_count()} logical cores (`nproc`); RAM {mem}",
        f"- OS: {platform.platform()}",
        f"- Python {platform.python_version()} ({PYTHON})",
        f"- pmock-batch {version('pmock-batch')}, openai {version('openai')}, "
        f"aiohttp {version('aiohttp')}",
    ]


def commit() -> str:
    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], capture_output=True, text=True, check=False, cwd=ROOT)
        return done.stdout.strip()

    head = git("rev-parse", "--short", "HEAD") or "unknown"
    dirty = git("status", "--porcelain", "--", "pmock_batch")
    return head + (" plus uncommitted changes in pmock_batch/" if dirty else "")


def report(
    results: list[Result], params: Params, started: datetime, seconds: float, commits: str
) -> str:
    parts = [
        "# pmock-batch vs. the plain openai-SDK script",
        "",
        f"Measured {started:%Y-%m-%d %H:%M} UTC at commit {commits}, "
        f"{params.reps} rep(s) per side; the whole run took {seconds / 60:.1f} min.",
        *(
            [
                "",
                "**--quick: counts are shrunk for a smoke run, so the targets below are only "
                "indicative; fixed costs such as start-up weigh far more than at full size.**",
            ]
            if params.quick
            else []
        ),
        "",
        *machine(),
        "",
        "## Targets",
        "",
        table(
            ["scenario", "target (pmock-batch)", "measured", "result"],
            [
                [r.title, c.target, c.measured, "PASS" if c.passed else "**FAIL**"]
                for r in results
                for c in r.checks
            ],
        ),
    ]
    for r in results:
        parts += ["", f"## {r.title}", "", r.setup + ".", "", scenario_table(r)]
        if r.notes:
            parts += ["", *r.notes]
        failed = [s for s in r.samples if s.exit_code != 0]
        for s in failed:
            reported = f", reported {json.dumps(s.reported)}" if s.reported else ""
            parts.append(
                f"\n- {s.side} ({s.label}, rep {s.rep + 1}) exited {s.exit_code}{reported}"
            )
        parts.append(f"\n_{r.seconds:.0f} s for this scenario._")
    return "\n".join(parts) + "\n"


# -- main -----------------------------------------------------------------------------------


def compile_project() -> None:
    """Write the project's bytecode before anything is timed, as installing a wheel would.

    The baseline's dependencies were installed by pip, which compiles them; the
    project is installed in editable mode, and with ``PYTHONDONTWRITEBYTECODE``
    set (as on this machine) every pmock-batch run would otherwise compile its
    80-odd modules from source again: about 70 ms of CPU that a user never pays.
    """
    import compileall

    compileall.compile_dir(ROOT / "pmock_batch", quiet=1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--scenario", action="append", choices=SCENARIOS, help="run only this one; repeatable"
    )
    parser.add_argument("--reps", type=int, default=None, help="repetitions per side (default 3)")
    parser.add_argument("--quick", action="store_true", help="shrunk counts, 1 rep: a smoke run")
    parser.add_argument(
        "--scale-jobs",
        type=int,
        default=100_000,
        metavar="N",
        help="jobs in the large scale run (default 100000)",
    )
    parser.add_argument(
        "--output", type=Path, default=HERE / "results" / "latest.md", help="report path"
    )
    args = parser.parse_args()
    params = Params(reps=args.reps or (1 if args.quick else 3), quick=args.quick)
    if not os.access(GNU_TIME, os.X_OK):
        parser.error(f"{GNU_TIME} (GNU time) is needed; on Debian/Ubuntu: apt-get install time")
    chosen = args.scenario or list(SCENARIOS)
    compile_project()
    runs: dict[str, Callable[[], Result]] = {
        "rate-limited": lambda: rate_limited(params),
        "latency-bound": lambda: latency_bound(params),
        "cpu": lambda: cpu_per_image(params),
        "memory-4k": lambda: memory_4k(params),
        "scale": lambda: scale(params, args.scale_jobs),
        "resume": lambda: resume(params),
    }
    started = datetime.now(UTC)
    first_commit = commit()
    t0 = time.perf_counter()
    results = []
    for name in SCENARIOS:
        if name not in chosen:
            continue
        log(f"{name} ...")
        t = time.perf_counter()
        result = runs[name]()
        result.seconds = time.perf_counter() - t
        results.append(result)
    commits = first_commit if commit() == first_commit else f"{first_commit} -> {commit()}"
    text = report(results, params, started, time.perf_counter() - t0, commits)
    print(text)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text, encoding="utf-8")
    raw = {
        "started": started.isoformat(),
        "commit": commits,
        "params": asdict(params),
        "scenarios": {
            r.name: {
                "checks": [asdict(c) for c in r.checks],
                "samples": [s.to_json() for s in r.samples],
            }
            for r in results
        },
    }
    args.output.with_suffix(".json").write_text(json.dumps(raw, indent=1) + "\n", encoding="utf-8")
    log(f"report written to {args.output}")
    return 0 if all(c.passed for r in results for c in r.checks) else 1


if __name__ == "__main__":
    sys.exit(main())
