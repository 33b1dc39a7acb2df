"""A chaos run of the LLM runtime: three simulated providers, two MCP servers, faults, accounting.

:func:`run_chaos` starts three simulator processes (their own seeds and fault settings) as
``openai-compatible`` providers whose keys the harness owns (two environment variables and a key
file, distinctive ``sk-chaos-...`` values), the demo MCP server and ``mcp-server-time`` over stdio,
and the runtime (:func:`actors.llm._runtime.open_runtime`) with both MCP servers as extra children.
Concurrent callers send chats, full streams, streams abandoned after their first chunk and tool
calls while :mod:`tests.chaos.faults` injects one fault at a time. Then the faults stop, breakers
are given the time to close, a burst of expensive requests drives the day to its cost limit, the
ledger is reopened by a second runtime on the same database, and everything is shut down.

What is then checked, each a line of :attr:`ChaosReport.problems` when it fails:

- every operation ended exactly once, with a result or a typed error, none past its deadline;
- the ledger's peak (settled + reserved) and the persisted total never above the daily limit;
- at every simulator, requests and tokens in any 60 s window never above our limits;
- breakers opened under 5xx storms, and all closed again once faults stopped;
- restarts: each provider restart has its deliberate cause in the log, MCP restarts equal the
  kills, no other actor restarted;
- no task, file descriptor or child process left after shutdown, no upstream stream left open;
- no API key in any log record, error message, metrics text or health report.

Everything random is drawn from the seed: the fault schedule and targets, the callers' choices,
the simulators' own fault draws. A run prints its seed; the same seed replays the same schedule.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import random
import signal
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
from anyio.abc import TaskGroup

from actors.llm import (
    LLMClientError,
    LLMConfig,
    LLMCostLimitError,
    LLMRuntime,
    StreamEnd,
    TextDelta,
    open_runtime,
)
from actors.llm._ledger import LedgerBook
from actors.llm._ledger_store import LedgerStore
from actors.mcp import McpServerConfig, McpServerHealth, ToolCatalog, mcp_supervisor_spec
from runtime import ActorError
from simulator.process import SimulatorProcess

from .accounting import Books, Operation
from .faults import PATCHES, QUIET, FaultEvent, SimulatedProvider, max_in_window, schedule
from .procfs import descendant_pids, fd_count, open_sockets, rss_kib

__all__ = ["SHORT", "ChaosReport", "Profile", "run_chaos", "soak_profile"]

ROOT = Path(__file__).resolve().parents[2]
TIME_SERVER = Path(sys.executable).parent / "mcp-server-time"
CHEAP_MODEL = "gpt-4o-mini"
DEAR_MODEL = "gpt-4o"
PROVIDERS = ("alpha", "beta", "gamma")
CRASH_LOG_MESSAGES = (
    "%s rejected its API key: restarting to re-read it",
    "%s: %d consecutive connection failures, restarting",
)
"""The provider's log lines that announce a deliberate crash (the first argument is its name)."""


@dataclass(frozen=True)
class Profile:
    """How long and how hard a run is."""

    name: str
    load_s: float
    callers: int
    request_timeout_s: float = 6.0
    tool_timeout_s: float = 3.0
    fault_spacing_s: float = 4.0
    fault_length_s: float = 2.5
    tolerance_s: float = 3.0
    daily_cost_limit: float = 3.0
    think_s: tuple[float, float] = (0.2, 0.9)


SHORT = Profile("short", load_s=28.0, callers=16, fault_spacing_s=2.75)
"""CI's profile: 28 s of load fit one fault of each of the nine kinds (the soak runs it long)."""


def soak_profile(minutes: float) -> Profile:
    """The long profile: ``minutes`` of load with twice the callers, faults every 5 s."""
    return Profile("soak", load_s=minutes * 60.0, callers=32, fault_spacing_s=5.0,
                   daily_cost_limit=5.0)


@dataclass
class ChaosReport:
    """What a run did and what it found; ``problems`` empty means every invariant held."""

    seed: int
    profile: str
    duration_s: float = 0.0
    operations: Counter[str] = field(default_factory=Counter)
    outcomes: Counter[str] = field(default_factory=Counter)
    faults: Counter[str] = field(default_factory=Counter)
    fallbacks: int = 0
    restarts: dict[str, int] = field(default_factory=dict)
    breaker_trips: dict[str, int] = field(default_factory=dict)
    lost: int = 0
    hung: int = 0
    duplicated: int = 0
    untyped: int = 0
    max_overshoot_s: float = 0.0
    daily_limit: float = 0.0
    peak_spend: float = 0.0
    persisted_spend: float = 0.0
    budget_overshoot: float = 0.0
    window_max: dict[str, tuple[int, int, int, int]] = field(default_factory=dict)
    """Per provider: (max requests, max tokens in a 60 s window at the simulator, rpm, tpm)."""
    rss_start_kib: int = 0
    rss_warm_kib: int = 0
    """RSS once the load has run a quarter of its time (encoders, pools and caches warm)."""
    rss_peak_kib: int = 0
    rss_end_kib: int = 0
    log_records: int = 0
    problems: list[str] = field(default_factory=list)

    def rows(self) -> list[tuple[str, str]]:
        """The summary table's rows."""
        faults = ", ".join(f"{kind} {n}" for kind, n in sorted(self.faults.items())) or "none"
        outcomes = ", ".join(f"{kind} {n}" for kind, n in self.outcomes.most_common())
        windows = "; ".join(f"{name} {r}/{rpm} req, {t}/{tpm} tok"
                            for name, (r, t, rpm, tpm) in sorted(self.window_max.items()))
        restarts = ", ".join(f"{name} {n}" for name, n in sorted(self.restarts.items()) if n)
        trips = ", ".join(f"{name} {n}" for name, n in sorted(self.breaker_trips.items()) if n)
        return [
            ("seed", str(self.seed)),
            ("profile", f"{self.profile}, {self.duration_s:.0f} s"),
            ("requests (all operations)", str(sum(self.operations.values()))),
            ("operations by kind", ", ".join(f"{k} {n}" for k, n in
                                             sorted(self.operations.items()))),
            ("outcomes", outcomes),
            ("faults injected", faults),
            ("fallbacks", str(self.fallbacks)),
            ("restarts", restarts or "none"),
            ("breaker trips (to open)", trips or "none"),
            ("lost", str(self.lost)),
            ("hung", str(self.hung)),
            ("duplicated", str(self.duplicated)),
            ("untyped errors", str(self.untyped)),
            ("latest end past deadline", f"{self.max_overshoot_s:+.2f} s"),
            ("budget overshoot", f"{self.budget_overshoot:.6f} USD (peak {self.peak_spend:.4f},"
                                 f" persisted {self.persisted_spend:.4f},"
                                 f" limit {self.daily_limit:.2f})"),
            ("max per 60 s at simulators", windows),
            ("peak RSS", f"{self.rss_peak_kib / 1024:.1f} MiB"),
            ("RSS growth", f"{(self.rss_end_kib - self.rss_start_kib) / 1024:+.1f} MiB from"
                           f" start, {(self.rss_end_kib - self.rss_warm_kib) / 1024:+.1f} MiB"
                           " after the first quarter of the load"),
            ("problems", str(len(self.problems))),
        ]

    def markdown(self) -> str:
        lines = ["| measure | value |", "|---|---|"]
        lines += [f"| {name} | {value} |" for name, value in self.rows()]
        if self.problems:
            lines += ["", "Problems:", *[f"- {problem}" for problem in self.problems]]
        return "\n".join(lines)


class _Capture(logging.Handler):
    """Watches every log record of the run: keys in its text (traceback included), crashes."""

    def __init__(self, keys: list[str]) -> None:
        super().__init__(logging.DEBUG)
        self.keys = keys  # the run's list, which grows as keys are rotated
        self.count = 0
        self.leaks: list[str] = []
        self.crashes: Counter[str] = Counter()
        self.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        self.count += 1
        text = self.format(record)
        if any(key in text for key in self.keys):
            self.leaks.append(text[:300])
        if record.msg in CRASH_LOG_MESSAGES and isinstance(record.args, tuple) and record.args:
            self.crashes[str(record.args[0])] += 1


def _key(rng: random.Random) -> str:
    return "sk-chaos-" + "".join(rng.choice("abcdefghijklmnopqrstuvwxyz0123456789")
                                 for _ in range(32))


def _prompt(rng: random.Random) -> list[dict[str, Any]]:
    # Single letters: the simulator's estimate (characters / 4) stays below tiktoken's count, so
    # the tokens it sees per window can be compared with the limit our side counts against.
    letters = " ".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(4, 12)))
    return [{"role": "user", "content": f"chaos {letters}"}]


class ChaosRun:
    """One run (see the module docstring); use :func:`run_chaos`."""

    def __init__(self, seed: int, profile: Profile, workdir: Path) -> None:
        self.seed = seed
        self.profile = profile
        self.workdir = workdir
        self.rng = random.Random(seed)
        self.books = Books(profile.tolerance_s)
        self.report = ChaosReport(seed=seed, profile=profile.name,
                                  daily_limit=profile.daily_cost_limit)
        self.keys: dict[str, str] = {}
        self.all_keys: list[str] = []
        self.env_names = {name: f"CHAOS_KEY_{name.upper()}_{seed}" for name in PROVIDERS}
        self.key_file = workdir / "beta.key"
        self.providers: dict[str, SimulatedProvider] = {}
        self.error_texts: list[str] = []
        self.fallbacks = 0
        self.mcp_kills = 0
        self.storms: list[tuple[str, int]] = []  # (provider, 5xx served during the storm)
        self.rt: LLMRuntime | None = None
        self.catalog: ToolCatalog | None = None
        self.cost_refusals = 0
        self.capture = _Capture(self.all_keys)
        self._day = ""
        self._second_runtime_at = math.inf  # set when the ledger check opens a new runtime

    # -- keys ---------------------------------------------------------------------------------

    def _new_key(self) -> str:
        key = _key(self.rng)
        self.all_keys.append(key)
        return key

    def _install_key(self, provider: str, key: str) -> None:
        self.keys[provider] = key
        if provider == "beta":
            self.key_file.write_text(key + "\n")
        else:
            os.environ[self.env_names[provider]] = key

    # -- configuration -------------------------------------------------------------------------

    def llm_config(self) -> LLMConfig:
        limits = {"alpha": (600, 60_000), "beta": (30, 1_500), "gamma": (120, 6_000)}

        def provider(name: str) -> dict[str, Any]:
            rpm, tpm = limits[name]
            entry: dict[str, Any] = {
                "kind": "openai-compatible", "base_url": self.providers[name].sim.base_url,
                "model": CHEAP_MODEL, "max_tokens": 24, "timeout": 2.5, "connect_timeout": 1.0,
                "max_connection_failures": 5,
                "rate_limits": {"requests_per_minute": rpm, "tokens_per_minute": tpm},
                "breaker": {"failure_rate_threshold": 50, "sliding_window_size": 10,
                            "minimum_number_of_calls": 6, "wait_duration_in_open_state": 2.0,
                            "permitted_calls_in_half_open_state": 2},
                "prices": {CHEAP_MODEL: {"input": 0.15, "output": 0.6},
                           DEAR_MODEL: {"input": 5000.0, "output": 20000.0}},
            }
            if name == "beta":
                entry["api_key_file"] = str(self.key_file)
            else:
                entry["api_key_env"] = self.env_names[name]
            if name == "gamma":
                entry["mailbox_size"] = 4  # tiny: a burst overflows it (Overloaded)
            return entry

        return LLMConfig.model_validate({
            "providers": {name: provider(name) for name in PROVIDERS},
            "active": "alpha",
            "cost": {"db_path": str(self.workdir / "ledger.sqlite3"),
                     "daily_cost_limit": self.profile.daily_cost_limit,
                     "max_cost_per_request": 1.0},
            "request_timeout": self.profile.request_timeout_s,
        })

    def mcp_servers(self) -> dict[str, McpServerConfig]:
        return {
            "demo": McpServerConfig(command=sys.executable, args=["-m", "server.demo_mcp_server"],
                                    cwd=str(ROOT), call_timeout=10),
            "time": McpServerConfig(command=str(TIME_SERVER), call_timeout=10),
        }

    # -- operations ---------------------------------------------------------------------------

    def _ended_with_error(self, op: Operation, exc: BaseException) -> None:
        self.error_texts.append(f"{exc!s} {exc!r}")
        if isinstance(exc, LLMCostLimitError):
            self.cost_refusals += 1
        if isinstance(exc, LLMClientError | ActorError):
            attempts = [f"{a.provider}:{a.error_type}:{a.duration_ms:.0f}ms"
                        for a in getattr(exc, "attempts", None) or ()]
            self.books.end(op, type(exc).__name__, detail=f"{exc} {attempts or ''}")
        else:
            self.books.end(op, "untyped", untyped=exc)

    def _watchdog(self, deadline: float) -> float:
        return deadline + self.profile.tolerance_s + 5.0

    async def chat(self, rng: random.Random, *, kind: str = "chat", provider: str | None = None,
                   model: str | None = None) -> Operation:
        assert self.rt is not None
        timeout = self.profile.request_timeout_s
        op = self.books.begin(kind, timeout)
        with anyio.move_on_after(self._watchdog(timeout)):
            try:
                response = await self.rt.chat(_prompt(rng), timeout=timeout, provider=provider,
                                               model=model)
            except Exception as exc:  # recorded: an untyped one is what the check looks for
                self._ended_with_error(op, exc)
            else:
                if len(response.attempts) > 1:
                    self.fallbacks += 1
                self.books.end(op, "ok")
        if not op.outcomes:
            self.books.end(op, "watchdog")
        return op

    async def _chat_with(self, rng: random.Random, kind: str, provider: str | None) -> None:
        await self.chat(rng, kind=kind, provider=provider)

    async def stream(self, rng: random.Random, *, abandon: bool) -> Operation:
        assert self.rt is not None
        timeout = self.profile.request_timeout_s
        op = self.books.begin("abandoned_stream" if abandon else "stream", timeout)
        ended = False
        with anyio.move_on_after(self._watchdog(timeout)):
            try:
                async with self.rt.stream(_prompt(rng), timeout=timeout) as events:
                    async for item in events:
                        if ended:
                            self.books.delivered_after_end(op)
                        elif isinstance(item, TextDelta) and abandon:
                            self.books.end(op, "abandoned")
                            ended = True
                            break
                        elif isinstance(item, StreamEnd):
                            if len(item.response.attempts) > 1:
                                self.fallbacks += 1
                            self.books.end(op, "ok")
                            ended = True
                if not ended:
                    self.books.end(op, "incomplete")
            except Exception as exc:  # recorded: an untyped one is what the check looks for
                if ended:
                    self.books.delivered_after_end(op)
                else:
                    self._ended_with_error(op, exc)
        if not op.outcomes:
            self.books.end(op, "watchdog")
        return op

    async def tool_call(self, rng: random.Random, *, kind: str = "tool",
                        call: tuple[str, str, str] | None = None) -> Operation:
        assert self.catalog is not None
        timeout = self.profile.tool_timeout_s
        if call is None:
            call = rng.choice([
                ("demo", "add", '{"a": 2, "b": 3}'),
                ("demo", "echo", '{"text": "chaos"}'),
                ("demo", "sleep", '{"seconds": 0.3}'),
                ("time", "get_current_time", '{"timezone": "UTC"}'),
            ])
        server, tool, arguments = call
        op = self.books.begin(kind, timeout + 5.0)
        with anyio.move_on_after(self._watchdog(timeout + 5.0)):
            try:
                # As a turn does: the names and the call of one refresh (another task's refresh
                # may rename the tool between the two).
                offered = await self.catalog.refresh()
                exposed = next((name for name, spec in offered.exposed.items()
                                if (spec.server, spec.name) == (server, tool)), tool)
                _, result = await offered.call(exposed, arguments, timeout)
            except Exception as exc:  # the catalog promises never to raise for a tool problem
                self.books.end(op, "untyped", untyped=exc)
            else:
                self.error_texts.append(result.text or "")
                self.books.end(op, "tool_error" if result.is_error else "ok")
        if not op.outcomes:
            self.books.end(op, "watchdog")
        return op

    async def caller(self, index: int, stop_at: float) -> None:
        rng = random.Random(f"{self.seed}-caller-{index}")
        low, high = self.profile.think_s
        while anyio.current_time() < stop_at:
            draw = rng.random()
            if draw < 0.55:
                await self.chat(rng)
            elif draw < 0.78:
                await self.stream(rng, abandon=False)
            elif draw < 0.88:
                await self.stream(rng, abandon=True)
            else:
                await self.tool_call(rng)
            await anyio.sleep(rng.uniform(low, high))

    # -- faults ---------------------------------------------------------------------------------

    def _directed(self, group: TaskGroup, provider: str, count: int, kind: str) -> None:
        for _ in range(count):
            group.start_soon(self._chat_with, random.Random(self.rng.random()), kind, provider)

    async def inject(self, event: FaultEvent, group: TaskGroup) -> None:
        self.report.faults[event.kind] += 1
        length = self.profile.fault_length_s
        if event.kind in PATCHES:
            target = self.providers[event.target]
            before = await target.sim.stats()
            await target.configure_faults(**PATCHES[event.kind])
            if event.kind == "burst_5xx":
                self._directed(group, event.target, 12, "directed")
            await anyio.sleep(length)
            await target.configure_faults(**QUIET)
            if event.kind == "burst_5xx":
                after = await target.sim.stats()
                served = sum(after["faults"].get(k, 0) - before["faults"].get(k, 0)
                             for k in ("500", "502", "503"))
                self.storms.append((event.target, served))
        elif event.kind == "kill_restart":
            await self.providers[event.target].kill_and_restart(down_s=1.5)
        elif event.kind == "key_rotation":
            target = self.providers[event.target]
            new_key = self._new_key()
            await target.set_keys([new_key])  # the key we hold is revoked
            self._directed(group, event.target, 3, "directed")
            await anyio.sleep(length / 2)
            self._install_key(event.target, new_key)  # ... and rotated
            await anyio.sleep(length / 2)
            self._directed(group, event.target, 2, "directed")
        elif event.kind == "mcp_kill":
            await self._kill_mcp_mid_call(group)
        elif event.kind == "mailbox_flood":
            self._directed(group, event.target, 40, "flood")

    async def _kill_mcp_mid_call(self, group: TaskGroup) -> None:
        assert self.rt is not None
        health = self.rt.system.durable("mcp:demo")
        assert isinstance(health, McpServerHealth)
        if health.state != "ready" or health.pid is None:
            return
        pid = health.pid
        rng = random.Random(self.rng.random())
        group.start_soon(lambda: self.tool_call(rng, kind="mcp_killed_call",
                                                call=("demo", "sleep", '{"seconds": 2}')))
        await anyio.sleep(0.5)
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            return
        self.mcp_kills += 1

    async def run_faults(self, group: TaskGroup, events: list[FaultEvent], t0: float) -> None:
        for event in events:
            await anyio.sleep(max(0.0, t0 + event.at_s - anyio.current_time()))
            await self.inject(event, group)

    # -- phases -------------------------------------------------------------------------------

    async def settle_breakers(self, within: float = 75.0) -> None:
        """With faults off, probe each provider until its breaker is closed (bounded).

        A half-open breaker closes only when trial calls get through, and a provider whose rate
        window the load filled admits none for up to a minute (the probes are refused at once,
        retryable, meanwhile): hence the bound just above one window.
        """
        assert self.rt is not None
        deadline = anyio.current_time() + within
        rng = random.Random(self.rng.random())
        while anyio.current_time() < deadline:
            health = self.rt.health()["providers"]
            waiting = [name for name, entry in health.items()
                       if entry.get("breaker") != "closed" or entry["state"] != "running"]
            if not waiting:
                return
            async with anyio.create_task_group() as group:
                for name in waiting:
                    group.start_soon(self._chat_with, rng, "probe", name)
            await anyio.sleep(0.3)

    async def exhaust_budget(self) -> None:
        """Bursts of expensive requests until the ledger refuses one for the daily limit (at most
        24 bursts, 60 s). The load phase may have used every provider's requests of the minute:
        a burst the rate limits refused is followed by a pause while the windows slide, so the
        limit is reached by spending, whatever the load phase left."""
        rng = random.Random(self.rng.random())
        deadline = time.monotonic() + 60.0
        burst: list[Operation] = []

        async def one() -> None:
            burst.append(await self.chat(rng, kind="budget", model=DEAR_MODEL))

        for _ in range(24):
            burst.clear()
            async with anyio.create_task_group() as group:
                for _ in range(8):
                    group.start_soon(one)
            if self.cost_refusals or time.monotonic() > deadline:
                return
            if any("LLMRateLimitError" in op.outcomes for op in burst):
                await anyio.sleep(3.0)

    # -- the run --------------------------------------------------------------------------------

    async def run(self) -> ChaosReport:
        started = time.monotonic()
        baseline_tasks = len(asyncio.all_tasks())
        baseline_fds = fd_count()
        baseline_children = descendant_pids()
        self.report.rss_start_kib = self.report.rss_peak_kib = rss_kib()
        for name in PROVIDERS:
            self._install_key(name, self._new_key())
        capture = self.capture
        root = logging.getLogger()
        old_level = root.level
        root.addHandler(capture)
        root.setLevel(logging.INFO)
        http_logger = logging.getLogger("httpx2")
        http_level = http_logger.level
        http_logger.setLevel(logging.WARNING)  # one line per request: noise, and no headers
        try:
            await self._run_system()
        finally:
            root.removeHandler(capture)
            root.setLevel(old_level)
            http_logger.setLevel(http_level)
            for name in self.env_names.values():
                os.environ.pop(name, None)
        await self._check_leaks(baseline_tasks, baseline_fds, baseline_children)
        self._check_secrets()
        self.report.log_records = capture.count
        self.report.duration_s = time.monotonic() - started
        self.report.rss_end_kib = rss_kib()
        return self.report

    async def _run_system(self) -> None:
        sims: dict[str, SimulatorProcess] = {
            name: SimulatorProcess({
                "seed": self.rng.randrange(2**31),
                "flavor": "openrouter" if name == "gamma" else "openai",
                "api_keys": [self.keys[name]],
            }) for name in PROVIDERS
        }
        async with sims["alpha"] as alpha, sims["beta"] as beta, sims["gamma"] as gamma:
            limits = {"alpha": (600, 60_000), "beta": (30, 1_500), "gamma": (120, 6_000)}
            for name, sim in (("alpha", alpha), ("beta", beta), ("gamma", gamma)):
                rpm, tpm = limits[name]
                self.providers[name] = SimulatedProvider(name, sim, rpm, tpm)
            config = self.llm_config()
            servers = self.mcp_servers()
            async with open_runtime(config, extra_children=[mcp_supervisor_spec(servers)]) as rt:
                self.rt = rt
                self.catalog = ToolCatalog(rt.system, list(servers))
                await self._wait_mcp_ready(["demo", "time"])
                await self._load_phase()
                await self._quiet_phase()
                await self.exhaust_budget()
                await self._check_runtime(rt)
            await self._check_ledger_after_restart(config)
            await self._check_simulators()

    async def _wait_mcp_ready(self, servers: list[str], within: float = 30.0) -> None:
        assert self.rt is not None
        with anyio.fail_after(within):
            for server in servers:
                while self.rt.system.durable(f"mcp:{server}").state != "ready":
                    await anyio.sleep(0.05)

    async def _load_phase(self) -> None:
        profile = self.profile
        t0 = anyio.current_time()
        stop_at = t0 + profile.load_s
        events = schedule(self.rng, list(PROVIDERS), start_s=2.0,
                          spacing_s=profile.fault_spacing_s, until_s=profile.load_s - 1.0)
        async with anyio.create_task_group() as group:
            for index in range(profile.callers):
                group.start_soon(self.caller, index, stop_at)
            group.start_soon(self.run_faults, group, events, t0)
            group.start_soon(self._sample_rss, stop_at)

    async def _sample_rss(self, stop_at: float) -> None:
        warm_at = stop_at - 0.75 * self.profile.load_s
        while anyio.current_time() < stop_at:
            rss = rss_kib()
            self.report.rss_peak_kib = max(self.report.rss_peak_kib, rss)
            if not self.report.rss_warm_kib and anyio.current_time() >= warm_at:
                self.report.rss_warm_kib = rss
            await anyio.sleep(1.0)

    async def _quiet_phase(self) -> None:
        for provider in self.providers.values():
            await provider.configure_faults(**QUIET)
        await self.settle_breakers()

    # -- checks ---------------------------------------------------------------------------------

    def problem(self, text: str) -> None:
        self.report.problems.append(text)

    async def _check_runtime(self, rt: LLMRuntime) -> None:
        report, books = self.report, self.books
        report.operations = books.kind_counts()
        report.outcomes = books.outcome_counts()
        report.lost = len(books.lost())
        report.hung = len(books.hung())
        report.duplicated = len(books.duplicated())
        report.untyped = len(books.untyped())
        report.max_overshoot_s = books.max_overshoot()
        for name, ops in books.violations().items():
            self.problem(f"invariant 1: {len(ops)} shown of the {name} operations: {ops}")
        summary = rt.metrics_summary()
        report.fallbacks = int(summary["fallbacks"]["total"])
        # Breakers: a storm that served at least a window of 5xx opened its provider's breaker;
        # every breaker is closed again after the quiet phase.
        breakers = summary["breakers"]
        for name in PROVIDERS:
            transitions = breakers.get(name, {}).get("transitions", {})
            report.breaker_trips[name] = int(transitions.get("open", 0))
        window = 10
        for name, served in self.storms:
            if served >= window and report.breaker_trips.get(name, 0) == 0:
                self.problem(f"breaker: {name} served {served} 5xx in a storm and never opened")
        for name, entry in rt.health()["providers"].items():
            if entry.get("breaker") != "closed" or entry["state"] != "running":
                self.problem(f"breaker: {name} is {entry} after the quiet phase")
            transitions = breakers.get(name, {}).get("transitions", {})
            if transitions.get("open", 0) and not transitions.get("half_open", 0):
                self.problem(f"breaker: {name} opened but never went half-open: {transitions}")
        # Restarts: each provider restart announced by its deliberate crash, nothing else.
        statuses = rt.system.status()
        report.restarts = {name: status.restart_count for name, status in statuses.items()}
        for name, status in statuses.items():
            if name.startswith("provider:"):
                provider = name.split(":", 1)[1]
                expected = self._announced_crashes(provider)
                if status.restart_count != expected:
                    self.problem(f"restarts: {name} restarted {status.restart_count} times, "
                                 f"{expected} deliberate crashes were logged")
            elif name == "mcp:demo":
                if status.restart_count != self.mcp_kills:
                    self.problem(f"restarts: mcp:demo restarted {status.restart_count} times "
                                 f"after {self.mcp_kills} kills")
            elif status.restart_count:
                self.problem(f"restarts: {name} restarted {status.restart_count} times unasked")
        for op in books.operations.values():
            if op.kind == "mcp_killed_call" and op.outcomes != ["tool_error"]:
                self.problem(f"mcp: a call whose server was killed ended {op.outcomes}")
        # Money.
        book = rt.system.durable("ledger")
        assert isinstance(book, LedgerBook)
        report.peak_spend = book.peak_usd
        report.budget_overshoot = max(0.0, book.peak_usd - self.profile.daily_cost_limit)
        if book.peak_usd > self.profile.daily_cost_limit + 1e-9:
            self.problem(f"invariant 2: ledger peak {book.peak_usd} above the daily limit "
                         f"{self.profile.daily_cost_limit}")
        if book.open:
            self.problem(f"ledger: {len(book.open)} reservations still open after every request "
                         f"ended (${book.reserved_usd:.6f} held; their settles were lost)")
        if book.overages:
            self.problem(f"invariant 2: {book.overages} settles cost more than reserved")
        if not self.cost_refusals:
            self.problem("budget: the daily limit was never reached (no LLMCostLimitError)")
        self._day = book.day
        self.error_texts.append(rt.prometheus_text().decode())
        self.error_texts.append(repr(rt.health()) + repr(rt.system) + repr(book))

    def _announced_crashes(self, provider: str) -> int:
        return self.capture.crashes.get(provider, 0)

    async def _check_ledger_after_restart(self, config: LLMConfig) -> None:
        with LedgerStore(config.cost.db_path) as store:
            persisted = store.day_total(self._day)
        self.report.persisted_spend = persisted
        if persisted > self.profile.daily_cost_limit + 1e-9:
            self.problem(f"invariant 2: persisted spend {persisted} above the limit")
        # A new runtime on the same database continues the day: still refused at the limit.
        self._second_runtime_at = time.monotonic()
        async with open_runtime(config) as rt:
            spend = await rt.spend()
            if abs(spend.settled - persisted) > 1e-6:
                self.problem(f"ledger: a new runtime sees {spend.settled}, persisted {persisted}")
            rng = random.Random(self.rng.random())
            self.rt = rt
            async with anyio.create_task_group() as group:
                for _ in range(4):
                    group.start_soon(lambda: self.chat(rng, kind="after_restart",
                                                       model=DEAR_MODEL))
            book = rt.system.durable("ledger")
            assert isinstance(book, LedgerBook)
            if book.peak_usd > self.profile.daily_cost_limit + 1e-9:
                self.problem(f"invariant 2: after a restart the peak is {book.peak_usd}")
            self.report.peak_spend = max(self.report.peak_spend, book.peak_usd)
        self.rt = None

    async def _check_simulators(self) -> None:
        # The limiter's windows survive actor restarts, not process restarts: the second runtime
        # (the ledger check) starts with fresh windows, so only the first runtime's traffic is
        # held to the limits. The logs of every life of a simulator are merged, so a window that
        # spans a simulator restart is checked for requests and tokens alike.
        cutoff = self._second_runtime_at
        for name, provider in self.providers.items():
            lives = await provider.final_stats()
            log = [e for life in lives for e in life["log"] if float(e[0]) < cutoff]
            most_requests, most_tokens = max_in_window(log)
            self.report.window_max[name] = (most_requests, most_tokens, provider.rpm,
                                            provider.tpm)
            if most_requests > provider.rpm:
                self.problem(f"invariant 3: {name} received {most_requests} requests in 60 s, "
                             f"limit {provider.rpm}")
            if most_tokens > provider.tpm:
                self.problem(f"invariant 3: {name} received {most_tokens} tokens in 60 s, "
                             f"limit {provider.tpm}")
            still_open = lives[-1]["streams"]["open"]
            if still_open:
                self.problem(f"invariant 5: {still_open} upstream streams still open at {name}")

    async def _check_leaks(self, tasks: int, fds: int, children: set[int]) -> None:
        deadline = anyio.current_time() + 10.0
        while anyio.current_time() < deadline:
            extra_children = descendant_pids() - children
            if (len(asyncio.all_tasks()) <= tasks and fd_count() <= fds + 2
                    and not extra_children):
                return
            await anyio.sleep(0.1)
        if len(asyncio.all_tasks()) > tasks:
            names = sorted(t.get_name() + ":" + repr(t.get_coro())[:80]
                           for t in asyncio.all_tasks())
            self.problem(f"leak: {len(asyncio.all_tasks())} tasks, baseline {tasks}: {names[:8]}")
        if fd_count() > fds + 2:
            self.problem(f"leak: {fd_count()} file descriptors ({open_sockets()} sockets), "
                         f"baseline {fds}")
        if descendant_pids() - children:
            self.problem(f"leak: child processes {sorted(descendant_pids() - children)} remain")

    def _check_secrets(self) -> None:
        for text in self.capture.leaks[:3]:
            self.problem(f"invariant 6: an API key appears in the log record {text!r}")
        for text in self.error_texts:
            if any(key in text for key in self.all_keys):
                self.problem(f"invariant 6: an API key appears in: {text[:300]!r}")
                return


async def run_chaos(seed: int, profile: Profile, workdir: Path) -> ChaosReport:
    """Run one chaos run and return its report (``problems`` lists every violation)."""
    return await ChaosRun(seed, profile, workdir).run()
