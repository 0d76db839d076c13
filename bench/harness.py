"""What every suite reuses: cases, measured phases, server CPU from /proc, repeats, medians, ratios, output.

A suite builds :class:`Case` objects (a name, a concurrency, a ``drive`` coroutine that runs one bounded load
phase, and the pid of the process whose CPU counts as the server's), and :func:`run_suite` measures each case
``repeats`` times, cases inner and repeats outer so that drift on a shared machine spreads over every case. Each
measured phase follows its own warm-up phase. Server CPU per request is the utime+stime delta of the server pid
over the measured phase divided by the requests completed; a case behind a proxy may name its upstream's pid too,
whose CPU per request is reported beside the server's, and a case through several processes may name each of them
(``hop_pids``, name -> pid), each reported in its own column. Ratios are computed inside each repeat (side by side)
and reported as the median over repeats, as every other number is.
"""

from __future__ import annotations

import fnmatch
import json
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from bench.loadgen import Load

RESULTS = Path(__file__).with_name("results")
_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True, slots=True)
class Options:
    duration: float = 5.0  # seconds per measured phase
    warmup: float = 1.0  # seconds of the same load before each measured phase
    repeats: int = 3
    patterns: tuple[str, ...] = ()  # fnmatch patterns on case keys; empty selects all
    loadgen: str = "auto"  # auto (wrk when available), wrk, python

    def selects(self, key: str) -> bool:
        return not self.patterns or any(fnmatch.fnmatch(key, p) for p in self.patterns)


Drive = Callable[[int, float], Awaitable[Load]]  # (concurrency, seconds) -> one bounded load phase


@dataclass(frozen=True, slots=True)
class Case:
    name: str
    concurrency: int
    drive: Drive
    pid: int | None  # the server's pid; None: the load reports its own work CPU (in-process floors)
    upstream_pid: int | None = None  # what the server forwards to, when it is a proxy: its CPU is reported apart
    hop_pids: dict[str, int] = field(default_factory=dict)  # every process on a multi-hop path, by name

    @property
    def key(self) -> str:
        return f"{self.name}@c{self.concurrency}"


@dataclass(frozen=True, slots=True)
class Measurement:
    case: str
    concurrency: int
    generator: str
    requests: int
    errors: int
    rps: float
    p50_ms: float
    p99_ms: float
    server_cpu_us: float  # per request
    client_cpu_us: float | None  # per request
    other_cpu_pct: float | None = None  # CPU that neither server nor client used, % of all cores: a noise gauge
    error_sample: str = ""
    upstream_cpu_us: float | None = None  # per request, for a case with an upstream pid
    hop_cpu_us: dict[str, float] = field(default_factory=dict)  # per request, for each of a case's hop_pids

    @property
    def key(self) -> str:
        return f"{self.case}@c{self.concurrency}"


@dataclass(frozen=True, slots=True)
class Ratio:
    name: str
    value: float | None  # None: a case it needs was not run or failed
    target: str = ""  # e.g. ">= 5600", "<= 2"; empty: informational
    passed: bool | None = None


@dataclass
class SuiteResult:
    name: str
    runs: list[dict[str, Measurement]] = field(default_factory=list)  # one dict per repeat, by case key
    medians: list[Measurement] = field(default_factory=list)
    ratios: list[Ratio] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # printed under the table: what was skipped, and why


def probed(drive: Drive, probe: Callable[[], Awaitable[None]]) -> Drive:
    """``drive``, preceded once by ``probe`` (one request whose answer is checked); if the probe fails, every phase
    fails with its message, so a fast error path is never what gets measured."""
    outcome: list[str | None] = []

    async def run(concurrency: int, duration: float) -> Load:
        if not outcome:
            try:
                await probe()
                outcome.append(None)
            except Exception as exc:
                outcome.append(f"probe failed: {type(exc).__name__}: {exc}")
        if outcome[0] is not None:
            raise RuntimeError(outcome[0])
        return await drive(concurrency, duration)

    return run


def machine_busy_seconds() -> float:
    """CPU time processes (and the hypervisor's steal) took on the whole machine so far, all cores (/proc/stat).

    Interrupt and softirq time are left out: loopback networking runs there, and it belongs to the requests."""
    ticks = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]
    user, nice, system, _idle, _iowait, _irq, _softirq, steal = map(int, ticks)
    return (user + nice + system + steal) / _TICKS


def process_cpu_seconds(pid: int) -> float:
    """utime + stime of every thread of ``pid`` so far (fields 14 and 15 of /proc/<pid>/stat)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    rest = stat[stat.rindex(")") + 2:].split()  # the command name may hold spaces; fields resume after ')'
    return (int(rest[11]) + int(rest[12])) / _TICKS


async def measure(case: Case, options: Options) -> Measurement:
    try:
        if case.pid is not None and options.warmup > 0:
            await case.drive(case.concurrency, options.warmup)
        pids = {p for p in (case.pid, case.upstream_pid, *case.hop_pids.values()) if p is not None}
        busy = machine_busy_seconds()
        before = {pid: process_cpu_seconds(pid) for pid in pids}
        load = await case.drive(case.concurrency, options.duration)
        spent = {pid: process_cpu_seconds(pid) - cpu for pid, cpu in before.items()}
        busy = machine_busy_seconds() - busy
        work = spent[case.pid] if case.pid is not None else (load.work_cpu_s or 0.0)
        upstream = spent[case.upstream_pid] if case.upstream_pid is not None else 0.0
    except Exception as exc:  # a failed phase is reported in the table, and the suite goes on
        return Measurement(case.name, case.concurrency, "-", 0, 1, 0.0, math.nan, math.nan, math.nan, None,
                           error_sample=f"{type(exc).__name__}: {exc}"[:500])
    n = max(load.requests, 1)
    client = None if load.client_cpu_s is None else load.client_cpu_s / n * 1e6
    other = None  # an in-process case's window holds its child's start-up, which is not noise
    if case.pid is not None:
        used = sum(spent.values()) + (load.client_cpu_s or 0.0)  # each process once, if it is named twice
        other = max(0.0, busy - used) / (load.elapsed_s * (os.cpu_count() or 1)) * 100
    hops = {name: spent[pid] / n * 1e6 for name, pid in case.hop_pids.items()}
    return Measurement(case.name, case.concurrency, load.generator, load.requests, load.errors,
                       load.requests / load.elapsed_s, load.p50_ms, load.p99_ms, work / n * 1e6, client, other,
                       load.error_sample, None if case.upstream_pid is None else upstream / n * 1e6, hops)


async def run_suite(
    name: str, cases: Sequence[Case], options: Options,
    ratios: Callable[[dict[str, Measurement]], list[Ratio]] | None = None,
) -> SuiteResult:
    result = SuiteResult(name)
    selected = [c for c in cases if options.selects(c.key)]
    for i in range(options.repeats):
        run: dict[str, Measurement] = {}
        for case in selected:
            m = run[case.key] = await measure(case, options)
            flag = f"  ERRORS {m.errors}: {m.error_sample}" if m.errors else ""
            hops = "".join(f"  {hop} {cpu:.0f}" for hop, cpu in m.hop_cpu_us.items())
            print(f"  [{name} {i + 1}/{options.repeats}] {case.key:20} {m.rps:8.0f} rps  p50 {m.p50_ms:7.3f} ms"
                  f"  cpu {m.server_cpu_us:6.0f} us/req{hops}  other {m.other_cpu_pct or 0:3.0f}%{flag}",
                  file=sys.stderr, flush=True)
        result.runs.append(run)
    result.medians = [median_of([run[c.key] for run in result.runs]) for c in selected]
    if ratios is not None:
        result.ratios = median_ratios([ratios(run) for run in result.runs])
    return result


def median_of(ms: list[Measurement]) -> Measurement:
    """Medians of every number over the repeats; errors are summed, so one failing repeat still shows."""
    first = ms[0]

    def med(attr: str) -> float | None:
        values = [getattr(m, attr) for m in ms if getattr(m, attr) is not None]
        return statistics.median(values) if values else None

    hops = {name: statistics.median(m.hop_cpu_us[name] for m in ms if name in m.hop_cpu_us)
            for m in ms for name in m.hop_cpu_us}
    return Measurement(first.case, first.concurrency, first.generator, int(med("requests")),
                       sum(m.errors for m in ms), med("rps"), med("p50_ms"), med("p99_ms"), med("server_cpu_us"),
                       med("client_cpu_us"), med("other_cpu_pct"),
                       next((m.error_sample for m in ms if m.error_sample), ""), med("upstream_cpu_us"), hops)


def median_ratios(per_run: list[list[Ratio]]) -> list[Ratio]:
    out = []
    for i, first in enumerate(per_run[0]):
        values = [run[i].value for run in per_run if run[i].value is not None and not math.isnan(run[i].value)]
        value = statistics.median(values) if values else None
        out.append(Ratio(first.name, value, first.target, check(value, first.target)))
    return out


def check(value: float | None, target: str) -> bool | None:
    if not target or value is None:
        return None
    op, bound = target.split()
    return value >= float(bound) if op == ">=" else value <= float(bound)


def format_table(result: SuiteResult) -> str:
    upstreams = any(m.upstream_cpu_us is not None for m in result.medians)  # the column only where a case has one
    # likewise one column per hop, in the order of the case that names the most (the longest path)
    by_length = sorted(result.medians, key=lambda m: -len(m.hop_cpu_us))
    hops = list(dict.fromkeys(name for m in by_length for name in m.hop_cpu_us))
    head = ("case", "conc", "gen", "rps", "p50 ms", "p99 ms", "srv CPU us/req", *("ups CPU us/req",) * upstreams,
            *(f"{hop} us/req" for hop in hops), "cli CPU us/req", "other CPU %", "errors")
    rows = [head] + [
        (m.case, str(m.concurrency), m.generator, f"{m.rps:.0f}", f"{m.p50_ms:.3f}", f"{m.p99_ms:.3f}",
         f"{m.server_cpu_us:.0f}", *(_opt(m.upstream_cpu_us),) * upstreams,
         *(_opt(m.hop_cpu_us.get(hop)) for hop in hops), _opt(m.client_cpu_us),
         _opt(m.other_cpu_pct), str(m.errors) + (" !" if m.errors else ""))
        for m in result.medians
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) if i < 3 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    runs = len(result.runs)
    out = [f"== {result.name}: median of {runs} run{'s' * (runs != 1)} ==", *lines,
           "(other CPU %: what the rest of the machine used during the phase, of all cores; high means noise)"]
    if upstreams:
        out.append("(ups CPU us/req: the upstream's CPU per request, for cases through a proxy)")
    if hops:
        out.append("(<hop> us/req: that process's CPU per request, where it is on the case's path; - where not)")
    out += [f"  ! {m.key}: {m.error_sample}" for m in result.medians if m.errors]
    out += [f"  note: {note}" for note in result.notes]
    if result.ratios:
        out += ["", "ratios (computed within each run, median over runs):"]
        for r in result.ratios:
            verdict = {True: "PASS", False: "FAIL", None: ""}[r.passed]
            value = "n/a" if r.value is None else f"{r.value:,.2f}"
            target = f"  (target {r.target})" if r.target else ""
            out.append(f"  {r.name:58} {value:>10}{target} {verdict}")
    return "\n".join(out)


def _opt(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def write_json(results: list[SuiteResult], options: Options, started: float, path: Path | None = None) -> Path:
    stamp = time.strftime("%Y%m%dT%H%M%S", time.localtime(started))
    path = path or RESULTS / f"{stamp}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {
        "started": stamp, "wall_s": round(time.time() - started, 1), "options": asdict(options), "host": _host(),
        "suites": [
            {"name": r.name, "median": [_row(m) for m in r.medians], "ratios": [asdict(x) for x in r.ratios],
             "notes": r.notes,
             "runs": [[_row(m) for m in run.values()] for run in r.runs]}
            for r in results
        ],
    }
    path.write_text(json.dumps(doc, indent=1, allow_nan=True) + "\n")
    return path


def _row(m: Measurement) -> dict[str, object]:
    row = {f.name: getattr(m, f.name) for f in fields(m)}
    if not m.hop_cpu_us:
        del row["hop_cpu_us"]  # the suites without hops keep their documents as they were
    return row


def _host() -> dict[str, object]:
    import onnxruntime

    return {"cpus": os.cpu_count(), "machine": platform.machine(), "python": platform.python_version(),
            "onnxruntime": onnxruntime.__version__, "processor": _cpu_model()}


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()
