"""hubvisor against supervisord, circus, a minimal event-driven daemon and the floor.

Usage::

    .venv/bin/python benchmarks/suite.py            # N = 200 and 1,000, 3 shuffled rounds
    .venv/bin/python benchmarks/suite.py --quick    # smoke run (N = 20, 1 round)

Every system runs the same workload: N children of ``/bin/sleep 100000``, each restarted
at once when it dies (no backoff, no restart limit that the benchmark can reach). Each
system is a daemon this script launches and observes from outside, all of them the same
way: its children are the pids in ``/proc/<daemon>/task/*/children``, and a child runs
once its ``/proc/<pid>/comm`` is the program's (``sleep``). Per run:

* ``first``: launch of the daemon until its first child runs;
* ``start``: launch until all N run;
* ``restart p50/p99``: SIGKILL of a random running child until a new child runs in its
  place (``--kills`` times, one at a time, 20 ms apart);
* ``idle``: the daemon's CPU time (all its threads, ``/proc/<pid>/task/*/schedstat``)
  over a window (``--idle`` seconds) after the kills, as % of one core;
* ``rss``: the daemon's VmRSS at the end of that window (``rss_helpers`` in the JSON: the
  VmRSS of its other children, such as hubvisor's orphan keeper);
* ``dead`` / ``exited``: SIGTERM to the daemon until every child is dead (gone or a
  zombie), and until the daemon itself exited.

The systems: ``floor`` (no daemon: this process calls ``os.posix_spawn`` N times,
restarts by ``kill``, ``waitpid``, ``posix_spawn``; the physical limit), ``minimal``
(``minimal_daemon.py``: ``Popen`` and ``os.wait()`` in 50 lines), ``hubvisor`` (``hubvisor
run`` on a one-pool tree, output captured as by default), ``hubvisor-nocapture`` (the
same with ``OutputSpec(capture=False)``), ``supervisord`` and ``circus``. supervisord
and circus live in a separate virtual environment (their import name ``supervisor``
clashes with ours) at ``$HUBVISOR_PEER_VENV`` or ``/tmp/hubvisor-peer-venv``, created
with pip on first use unless ``--no-install``; without it they are skipped, and said so.
matplotlib, for the chart, is installed there too (the project does not depend on it).

Rounds run the systems in a new random order each, so drift hits all alike. The table
gives, per N and system, the median over the rounds with the min-max and the ratio to
``minimal`` of the same N. JSON results go to ``--out`` (``results.json``) with every
raw value, and the chart (``chart.png``: start and restart latency per system, log
scale) beside them. Last, issue 24's targets, each met or missed (``targets.py``; the
other benchmarks' ones are skipped with ``--no-extra-targets``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import targets

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PEER = Path(os.environ.get("HUBVISOR_PEER_VENV", "/tmp/hubvisor-peer-venv"))
PEER_PACKAGES = ["supervisor", "circus", "matplotlib", "py-spy"]
SLEEP = os.path.realpath(shutil.which("sleep") or "/bin/sleep")
COMM = os.path.basename(SLEEP)[:15]
SYSTEMS = ["floor", "minimal", "hubvisor", "hubvisor-nocapture", "supervisord", "circus"]
PEERS = {"supervisord", "circus"}
METRICS = {  # key: (column title, unit, scale for display)
    "start": ("start all", "s", 1.0),
    "first": ("first child", "s", 1.0),
    "restart_p50": ("restart p50", "ms", 1e3),
    "restart_p99": ("restart p99", "ms", 1e3),
    "idle_cpu": ("idle CPU", "%", 1.0),
    "rss": ("RSS", "MiB", 1.0),
    "dead": ("stop: all dead", "s", 1.0),
    "exited": ("stop: exited", "s", 1.0),
}
_TIMEOUT = 120.0  # seconds any one phase may take before the run counts as failed


class RunFailed(Exception):
    """A system did not do what the workload asks within the time allowed."""


# ------------------------------------------------------------------------------------
# Observing a daemon from outside


def children(pid: int) -> list[int]:
    """The pids of ``pid``'s children, from every thread's ``children`` file."""
    out: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except FileNotFoundError:
        return out
    for task in tasks:
        try:
            with open(f"/proc/{pid}/task/{task}/children", "rb") as f:
                out.extend(map(int, f.read().split()))
        except (FileNotFoundError, ProcessLookupError):
            pass
    return out


def _comm(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/comm", "rb") as f:
            return f.read().decode(errors="replace").strip()
    except (FileNotFoundError, ProcessLookupError):
        return None


def _state(pid: int) -> str | None:
    """The process state letter (``R``, ``S``, ``Z``…), ``None`` if gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return data[data.rindex(b")") + 2 : data.rindex(b")") + 3].decode()


class Observer:
    """Which of a daemon's children run the program, remembering the ones already seen."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self._known: set[int] = set()  # children seen running the program

    def running(self) -> set[int]:
        now: set[int] = set()
        for child in children(self.pid):
            if child in self._known or _comm(child) == COMM:
                now.add(child)
        self._known = now
        return now


def cpu_seconds(pid: int) -> float:
    """On-CPU time of every live thread of ``pid``, in seconds (nanosecond resolution)."""
    total = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        with (
            contextlib.suppress(FileNotFoundError, ProcessLookupError),
            open(f"/proc/{pid}/task/{task}/schedstat", "rb") as f,
        ):
            total += int(f.read().split()[0])
    return total / 1e9


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RunFailed(f"no VmRSS for pid {pid}")


def _helpers_rss(pid: int) -> float:
    """VmRSS of the daemon's children that are not the workload (hubvisor's orphan
    keeper, say), in MiB: kept in the JSON beside ``rss``, which is the daemon's own."""
    total = 0.0
    for child in children(pid):
        if _comm(child) not in (COMM, None):
            with contextlib.suppress(OSError, RunFailed):
                total += rss_mib(child)
    return total


def percentile(values: list[float], q: float) -> float:
    """The ``q`` quantile (0..1) by linear interpolation between closest ranks."""
    ordered = sorted(values)
    k = (len(ordered) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


# ------------------------------------------------------------------------------------
# The systems: each launches a daemon that runs N sleep children


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HUBVISOR_")}
    env.pop("PYTHONPATH", None)
    # Python daemons start as on a user's machine: from their bytecode cache, written on
    # the first run (a sandbox may set this to keep the tree clean; then every start
    # would compile hubvisor's sources again).
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


def launch_minimal(n: int, work: Path) -> subprocess.Popen[bytes]:
    return _popen([sys.executable, str(HERE / "minimal_daemon.py"), str(n), SLEEP, "100000"])


def _hubvisor(
    n: int, work: Path, capture: bool, log: Path | None = None
) -> subprocess.Popen[bytes]:
    tree = work / "tree.py"
    tree.write_text(
        "from strategies import Intensity, NoBackoff\n"
        "from supervisor import ChildSpec, OutputSpec, PoolSpec, SupervisorSpec\n"
        f"template = ChildSpec(id='t', argv=[{SLEEP!r}, '100000'], start_period=0,\n"
        f"                     shutdown=5, output=OutputSpec(capture={capture}))\n"
        "spec = SupervisorSpec(name='bench', intensity=Intensity(10**9, 1), children=[\n"
        f"    PoolSpec(agent_type='sleep', template=template, size={n}, max_size={max(n, 1)},\n"
        "             intensity=Intensity(10**9, 1), backoff=NoBackoff())])\n"
    )
    return _popen(
        [sys.executable, "-m", "supervisor", "run", str(tree), "--control-socket", "none"],
        cwd=ROOT,
        log=log,
    )


def launch_hubvisor(n: int, work: Path) -> subprocess.Popen[bytes]:
    return _hubvisor(n, work, capture=True)


def launch_hubvisor_nocapture(n: int, work: Path) -> subprocess.Popen[bytes]:
    return _hubvisor(n, work, capture=False)


def launch_supervisord(n: int, work: Path) -> subprocess.Popen[bytes]:
    conf = work / "supervisord.conf"
    conf.write_text(
        f"[unix_http_server]\nfile={work}/s.sock\n"
        f"[supervisord]\nnodaemon=true\nlogfile={work}/sd.log\npidfile={work}/sd.pid\n"
        f"minfds={max(1024, 4 * n + 256)}\n"
        "[rpcinterface:supervisor]\n"
        "supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface\n"
        f"[program:sleep]\ncommand={SLEEP} 100000\nnumprocs={n}\n"
        "process_name=%(program_name)s-%(process_num)d\nstartsecs=0\nstartretries=1000000\n"
        "stopwaitsecs=5\nautorestart=true\nstdout_logfile=NONE\nstderr_logfile=NONE\n"
    )
    return _popen([str(PEER / "bin" / "supervisord"), "-c", str(conf)])


def launch_circus(n: int, work: Path) -> subprocess.Popen[bytes]:
    conf = work / "circus.ini"
    conf.write_text(
        "[circus]\ncheck_delay = 0.1\nstatsd = False\n"
        f"endpoint = ipc://{work}/ctl.sock\npubsub_endpoint = ipc://{work}/pub.sock\n"
        f"stats_endpoint = ipc://{work}/stats.sock\n"
        f"[watcher:sleep]\ncmd = {SLEEP}\nargs = 100000\nnumprocesses = {n}\n"
        "warmup_delay = 0\ngraceful_timeout = 5\nmax_retry = -1\n"
    )
    return _popen([str(PEER / "bin" / "circusd"), str(conf)])


def _popen(
    argv: list[str], cwd: Path | None = None, log: Path | None = None
) -> subprocess.Popen[bytes]:
    with open(log or os.devnull, "wb") as err:  # the child keeps its own copy
        return subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=err,
            env=_env(),
            cwd=cwd,
        )


def launch_hubvisor_empty(work: Path) -> subprocess.Popen[bytes]:
    """hubvisor with capture on one pool of size 0, its log in ``work/hub.log``: the
    import cost of ``targets.hub_import_rss``."""
    return _hubvisor(0, work, capture=True, log=work / "hub.log")


LAUNCHERS: dict[str, Callable[[int, Path], subprocess.Popen[bytes]]] = {
    "minimal": launch_minimal,
    "hubvisor": launch_hubvisor,
    "hubvisor-nocapture": launch_hubvisor_nocapture,
    "supervisord": launch_supervisord,
    "circus": launch_circus,
}


# ------------------------------------------------------------------------------------
# One run of one system


def _until(what: str, check: Callable[[], bool], pause: float, timeout: float = _TIMEOUT) -> float:
    """Poll ``check`` every ``pause`` seconds until true; the time it became true."""
    deadline = time.perf_counter() + timeout
    while not check():
        if time.perf_counter() > deadline:
            raise RunFailed(f"timed out waiting for {what}")
        time.sleep(pause)
    return time.perf_counter()


def run_daemon(system: str, n: int, args: argparse.Namespace) -> dict[str, Any]:
    rng = random.Random()
    with tempfile.TemporaryDirectory(prefix=f"hvbench-{system}-") as tmp:
        t0 = time.perf_counter()
        daemon = LAUNCHERS[system](n, Path(tmp))
        obs = Observer(daemon.pid)
        seen: set[int] = set()
        try:
            first_at: list[float] = []

            def all_running() -> bool:
                if daemon.poll() is not None:
                    raise RunFailed(f"{system} exited with {daemon.returncode} while starting")
                running = obs.running()
                seen.update(running)
                if running and not first_at:
                    first_at.append(time.perf_counter())
                return len(running) >= n

            start = _until("all children running", all_running, 0.001) - t0
            first = first_at[0] - t0
            time.sleep(args.settle)

            latencies = [_restart_once(obs, rng, system, seen) for _ in range(args.kills)]
            time.sleep(args.settle)

            cpu0, w0 = cpu_seconds(daemon.pid), time.perf_counter()
            time.sleep(args.idle)
            cpu1, w1 = cpu_seconds(daemon.pid), time.perf_counter()
            idle = max(0.0, cpu1 - cpu0) / (w1 - w0) * 100
            rss = rss_mib(daemon.pid)
            helpers = _helpers_rss(daemon.pid)

            pids = obs.running()
            seen.update(pids)
            t1 = time.perf_counter()
            daemon.send_signal(signal.SIGTERM)
            alive = set(pids)

            def all_dead() -> bool:
                for pid in list(alive):
                    if _state(pid) in (None, "Z", "X"):
                        alive.discard(pid)
                return not alive

            dead = _until("every child dead after SIGTERM", all_dead, 0.001) - t1
            exited = _until("the daemon's exit", lambda: daemon.poll() is not None, 0.001) - t1
        finally:
            _cleanup(daemon, seen)
    return {
        "start": start,
        "first": first,
        "restart_p50": statistics.median(latencies) if latencies else None,
        "restart_p99": percentile(latencies, 0.99) if latencies else None,
        "restarts": latencies,
        "idle_cpu": idle,
        "rss": rss,
        "rss_helpers": helpers,
        "dead": dead,
        "exited": exited,
    }


def _restart_once(obs: Observer, rng: random.Random, system: str, seen: set[int]) -> float:
    before = obs.running()
    victim = rng.choice(sorted(before))
    replaced: list[float] = []

    def replaced_yet() -> bool:
        now = obs.running()
        new = now - before
        if new:
            seen.update(new)
            replaced.append(time.perf_counter())
        return bool(new)

    t = time.perf_counter()
    os.kill(victim, signal.SIGKILL)
    _until(f"{system} to replace pid {victim}", replaced_yet, 0.0002, timeout=30)
    latency = replaced[0] - t
    time.sleep(0.02)
    return latency


def _cleanup(daemon: subprocess.Popen[bytes], seen: Iterable[int]) -> None:
    """Leave nothing behind, whatever happened: the daemon and every child it had, and
    wait until they are gone (zombies reaped), so the next run starts on a quiet machine.
    """
    if daemon.poll() is None:
        daemon.kill()
        daemon.wait()
    left = set(seen) | set(children(daemon.pid))
    for pid in left:
        if _comm(pid) == COMM:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
    deadline = time.perf_counter() + 30
    while any(_comm(pid) == COMM for pid in left) and time.perf_counter() < deadline:
        time.sleep(0.01)
    time.sleep(1.0)  # the kernel and init finish tearing the last run down


def run_floor(n: int, args: argparse.Namespace) -> dict[str, Any]:
    """The limit: this process spawns, kills and respawns, no daemon in between."""
    rng = random.Random()
    env = _env()
    argv = [SLEEP, "100000"]
    pids: list[int] = []
    try:
        t0 = time.perf_counter()
        pids.append(os.posix_spawn(SLEEP, argv, env))
        first = time.perf_counter() - t0
        pids.extend(os.posix_spawn(SLEEP, argv, env) for _ in range(n - 1))
        start = time.perf_counter() - t0
        time.sleep(args.settle)
        latencies = []
        for _ in range(args.kills):
            i = rng.randrange(len(pids))
            t = time.perf_counter()
            os.kill(pids[i], signal.SIGKILL)
            os.waitpid(pids[i], 0)
            pids[i] = os.posix_spawn(SLEEP, argv, env)
            latencies.append(time.perf_counter() - t)
            time.sleep(0.02)
        t1 = time.perf_counter()
        for pid in pids:
            os.kill(pid, signal.SIGTERM)
        for pid in pids:
            os.waitpid(pid, 0)
        pids.clear()
        dead = time.perf_counter() - t1
        time.sleep(1.0)  # as after a daemon's run (see _cleanup)
    finally:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
    return {
        "start": start,
        "first": first,
        "restart_p50": statistics.median(latencies) if latencies else None,
        "restart_p99": percentile(latencies, 0.99) if latencies else None,
        "restarts": latencies,
        "idle_cpu": None,
        "rss": None,
        "dead": dead,
        "exited": None,
    }


# ------------------------------------------------------------------------------------
# Peers, summary, table, chart


def ensure_peers(install: bool) -> bool:
    """Whether the peers' venv is there (creating it with pip when ``install``)."""
    if (PEER / "bin" / "supervisord").exists() and (PEER / "bin" / "circusd").exists():
        return True
    if not install:
        return False
    print(f"installing {', '.join(PEER_PACKAGES)} into {PEER} (once) ...", flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(PEER)], check=True)
    subprocess.run([str(PEER / "bin" / "pip"), "install", "-q", *PEER_PACKAGES], check=True)
    return True


def peer_versions() -> dict[str, str]:
    pip = PEER / "bin" / "pip"
    if not pip.exists():
        return {}
    out = subprocess.run([str(pip), "list", "--format=json"], capture_output=True, text=True)
    try:
        listed = json.loads(out.stdout)
    except json.JSONDecodeError:
        return {}
    wanted = {"supervisor", "circus"}
    return {p["name"]: p["version"] for p in listed if p["name"].lower() in wanted}


def summarize(raw: dict[str, dict[str, list[dict[str, Any]]]]) -> dict[str, Any]:
    """Per N and system: median, min and max over the rounds, and the ratio to minimal."""
    summary: dict[str, Any] = {}
    for n, systems in raw.items():
        summary[n] = {}
        for system, runs in systems.items():
            row: dict[str, Any] = {"runs": len(runs)}
            for metric in METRICS:
                values = [r[metric] for r in runs if r.get(metric) is not None]
                if not values:
                    continue
                row[metric] = {
                    "median": statistics.median(values),
                    "min": min(values),
                    "max": max(values),
                }
            summary[n][system] = row
        base = summary[n].get("minimal", {})
        for row in summary[n].values():
            for metric in METRICS:
                cell, ref = row.get(metric), base.get(metric)
                if cell and ref and ref["median"] > 0:
                    cell["ratio"] = cell["median"] / ref["median"]
    return summary


def _fmt(value: float, unit: str) -> str:
    if unit == "%":
        return f"{value:.3f}"
    if unit == "MiB":
        return f"{value:.1f}"
    if value >= 100:
        return f"{value:,.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.3g}" if value < 1 else f"{value:.2f}"


def table(summary: dict[str, Any], n: str) -> str:
    """A Markdown table: median (min-max) and ratio to minimal, per system and metric."""
    head = ["N = " + f"{int(n):,}"] + [f"{t} ({u})" for t, u, _ in METRICS.values()]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for system in SYSTEMS:
        row = summary[n].get(system)
        if row is None:
            continue
        cells = [f"{system} ({row['runs']})"]
        for metric, (_, unit, scale) in METRICS.items():
            cell = row.get(metric)
            if cell is None:
                cells.append("—")
                continue
            text = _fmt(cell["median"] * scale, unit)
            if row["runs"] > 1:
                text += f" ({_fmt(cell['min'] * scale, unit)}-{_fmt(cell['max'] * scale, unit)})"
            if "ratio" in cell and system != "minimal":
                text += f" {cell['ratio']:.2f}x"
            cells.append(text)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def draw_chart(results: Path, png: Path) -> str:
    """Draw the chart with the peers' venv's matplotlib; a note saying why not if it can't."""
    python = PEER / "bin" / "python"
    if not python.exists():
        return f"no chart: {PEER} is absent (run without --no-install to create it)"
    proc = subprocess.run(
        [str(python), str(HERE / "chart.py"), str(results), str(png)],
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        return f"no chart: chart.py failed: {proc.stderr.strip().splitlines()[-1:]}"
    return f"chart: {png}"


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # so a run's cleanup stops its daemon and children


def main(argv: list[str] | None = None) -> int:
    signal.signal(signal.SIGTERM, _interrupt)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, action="append", help="children (repeatable)")
    parser.add_argument("--rounds", type=int, default=None, help="shuffled rounds (3)")
    parser.add_argument("--kills", type=int, default=None, help="SIGKILLs per run (50)")
    parser.add_argument("--idle", type=float, default=None, help="idle window, s (10)")
    parser.add_argument("--settle", type=float, default=None, help="pause between phases (2)")
    parser.add_argument("--systems", default=",".join(SYSTEMS), help="comma-separated")
    parser.add_argument("--quick", action="store_true", help="smoke run: N=20, 1 round")
    parser.add_argument("--no-install", action="store_true", help="never pip-install peers")
    parser.add_argument("--out", type=Path, default=HERE / "results", help="results folder")
    parser.add_argument(
        "--no-extra-targets",
        action="store_true",
        help="skip the targets of the other benchmarks (heartbeat, registry, testing, Redis)",
    )
    args = parser.parse_args(argv)
    quick = args.quick
    ns = args.n or ([20] if quick else [200, 1000])
    args.rounds = args.rounds or (1 if quick else 3)
    args.kills = args.kills if args.kills is not None else (5 if quick else 50)
    args.idle = args.idle if args.idle is not None else (0.5 if quick else 10.0)
    args.settle = args.settle if args.settle is not None else (0.2 if quick else 2.0)
    systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    unknown = set(systems) - set(SYSTEMS)
    if unknown:
        parser.error(f"unknown systems {sorted(unknown)}; choose from {SYSTEMS}")
    if PEERS & set(systems) and not ensure_peers(not args.no_install):
        skipped = sorted(PEERS & set(systems))
        print(f"note: skipping {', '.join(skipped)}: no peer venv at {PEER} (--no-install)")
        systems = [s for s in systems if s not in PEERS]

    raw: dict[str, dict[str, list[dict[str, Any]]]] = {str(n): {} for n in ns}
    failures: list[str] = []
    import_rss: list[float] = []
    for r in range(args.rounds):
        if "hubvisor" in systems:
            import_rss.append(targets.hub_import_rss(launch_hubvisor_empty))
            print(f"round {r + 1}/{args.rounds} hubvisor, no child: RSS {import_rss[-1]:.1f} MiB")
        for n in ns:
            order = systems[:]
            random.shuffle(order)
            for system in order:
                print(f"round {r + 1}/{args.rounds} N={n} {system} ...", end=" ", flush=True)
                try:
                    res = run_floor(n, args) if system == "floor" else run_daemon(system, n, args)
                except RunFailed as exc:
                    print(f"FAILED: {exc}")
                    failures.append(f"N={n} {system}: {exc}")
                    continue
                raw[str(n)].setdefault(system, []).append(res)
                print(f"start {res['start']:.3f} s, restart p50 {res['restart_p50'] * 1e3:.2f} ms")

    summary = summarize(raw)
    verdicts = targets.daemon_targets(summary, import_rss)
    verdicts += targets.extra_targets(not args.no_extra_targets, quick)
    command = "python benchmarks/suite.py" + (" " + " ".join(argv) if argv else "")
    if argv is None:
        command = "python benchmarks/suite.py " + " ".join(sys.argv[1:])
    meta = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Linux {platform.release()}",
        "python": platform.python_version(),
        "command": command.strip(),
        "rounds": args.rounds,
        "kills": args.kills,
        "idle_window": args.idle,
        "peers": peer_versions() if PEERS & set(systems) else {},
        "failures": failures,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    results = args.out / "results.json"
    everything: dict[str, Any] = {"meta": meta, "summary": summary, "raw": raw}
    everything.update(targets=verdicts, import_rss=import_rss)
    results.write_text(json.dumps(everything, indent=1))
    print()
    print(f"{meta['date']}; {meta['machine']}; Python {meta['python']}; {meta['command']}")
    print(f"median of {args.rounds} rounds (min-max), ratio to minimal of the same N")
    for n in summary:
        print()
        print(table(summary, n))
    print()
    print("targets (issue 24): median ratios to minimal of the same N, or values")
    print(targets.report(verdicts))
    print()
    print(f"results: {results}")
    print(draw_chart(results, args.out / "chart.png"))
    for failure in failures:
        print(f"FAILED: {failure}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
