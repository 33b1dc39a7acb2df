"""The bundled demo MCP server: small deterministic tools for demos and tests.

Run it over stdio with ``python -m server.demo_mcp_server``, or over streamable HTTP on
127.0.0.1 with ``python -m server.demo_mcp_server --http PORT`` (endpoint ``/mcp``).

It imports nothing of ours beyond this file, so it starts as fast as the ``mcp`` SDK allows.
Every tool is deterministic except ``current_time`` and ``pid``, which report the world as it is.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import statistics
from datetime import datetime
from typing import TypedDict
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import anyio
from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError

__all__ = ["MAX_SLEEP_SECONDS", "demo_server", "main"]

MAX_SLEEP_SECONDS = 60.0

_CONDITIONS = (
    "sunny",
    "partly cloudy",
    "cloudy",
    "light rain",
    "heavy rain",
    "snow",
    "fog",
    "windy",
)

demo_server: MCPServer = MCPServer(
    name="demo",
    instructions="Deterministic demo tools. get_weather returns FAKE data, never a real forecast.",
)


class FakeWeather(TypedDict):
    city: str
    temperature_c: int
    conditions: str
    humidity_percent: int
    wind_kmh: int
    source: str


class NumberStats(TypedDict):
    count: int
    mean: float
    min: float
    max: float


@demo_server.tool()
def add(a: float, b: float) -> float:
    """Add two numbers and return their sum."""
    return a + b


@demo_server.tool()
def echo(text: str) -> str:
    """Return the given text unchanged."""
    return text


@demo_server.tool()
def get_weather(city: str) -> FakeWeather:
    """Return FAKE weather for a city: deterministic demo data from the name, not a forecast."""
    digest = hashlib.sha256(city.strip().casefold().encode()).digest()
    return FakeWeather(
        city=city,
        temperature_c=digest[0] % 45 - 10,
        conditions=_CONDITIONS[digest[1] % len(_CONDITIONS)],
        humidity_percent=20 + digest[2] % 76,
        wind_kmh=digest[3] % 60,
        source="FAKE demo data: derived from a hash of the city name, not a real forecast",
    )


@demo_server.tool()
def current_time(timezone: str = "UTC") -> str:
    """Return the current time in an IANA timezone (for example "Europe/Paris") as ISO 8601."""
    try:
        zone = ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ToolError(f"unknown timezone {timezone!r}: use an IANA name such as 'UTC'") from exc
    return datetime.now(zone).isoformat(timespec="seconds")


@demo_server.tool()
async def sleep(seconds: float) -> str:
    """Sleep for the given number of seconds (capped at 60), then say how long it slept."""
    slept = min(max(seconds, 0.0), MAX_SLEEP_SECONDS)
    await anyio.sleep(slept)
    return f"slept {slept:g} s"


@demo_server.tool()
def fail(message: str) -> str:
    """Always fail with the given message (the result has isError set)."""
    raise ToolError(message)


@demo_server.tool()
def structured_stats(numbers: list[float]) -> NumberStats:
    """Return the count, mean, minimum and maximum of a non-empty list of numbers."""
    if not numbers:
        raise ToolError("numbers must not be empty")
    return NumberStats(
        count=len(numbers),
        mean=statistics.fmean(numbers),
        min=min(numbers),
        max=max(numbers),
    )


@demo_server.tool()
def pid() -> int:
    """Return the process id of this server."""
    return os.getpid()


def main(argv: list[str] | None = None) -> None:
    """Serve over stdio, or over streamable HTTP on 127.0.0.1 with ``--http PORT``."""
    parser = argparse.ArgumentParser(prog="python -m server.demo_mcp_server", description=__doc__)
    parser.add_argument(
        "--http", type=int, metavar="PORT", help="serve streamable HTTP on 127.0.0.1:PORT/mcp"
    )
    args = parser.parse_args(argv)
    if args.http is None:
        demo_server.run()
    else:
        demo_server.run("streamable-http", host="127.0.0.1", port=args.http)


if __name__ == "__main__":
    main()
