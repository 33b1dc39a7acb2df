"""What the catalog offers in all: each input schema was capped, their total was not (128 tools
of 16 KB put 2 MB of schema in every request of every conversation)."""

from __future__ import annotations

import json

import pytest

from actors.mcp import ToolCatalog, ToolLimits
from tests.mcp.test_review3_hostile import health, mcp_system, raw_server, wait_ready

SCHEMA = 16_000  # characters of each s000 ... s199 tool's schema
GET = len(json.dumps({"type": "object", "properties": {}}, separators=(",", ":")))


async def test_the_offered_schemas_are_capped_in_all_and_the_rest_reported(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with mcp_system({"raw": raw_server("many-schemas", SCHEMA)}) as system:
        await wait_ready(system, "raw")
        sizes = {spec.name: len(json.dumps(spec.input_schema, separators=(",", ":")))
                 for spec in health(system, "raw").tools}
        assert sizes["get"] == GET and sizes["s000"] == SCHEMA
        offered = await ToolCatalog(system, ["raw"]).refresh()
        names = [tool["function"]["name"] for tool in offered.openai_tools()]
        # 262,144 characters: "get" and 16 schemas of 16,000 (256,033); a 17th would pass it.
        assert names == ["get", *(f"s{n:03d}" for n in range(16))]
        over = tuple(f"s{n:03d}" for n in range(16, 200))
        assert offered.limits == ToolLimits(offered=17, omitted=(), descriptions_cut=(),
                                            schemas_refused=(), schemas_over_total=over)
        # /health and the log line show the first 128 names and the count (review 8).
        assert offered.limits.as_dict()["schemas_over_total"] == list(over[:128])
        assert offered.limits.as_dict()["schemas_over_total_count"] == len(over)
        assert sum(sizes[name] for name in names) <= 262_144
        assert [r.getMessage() for r in caplog.records if r.name == "actors.mcp._tools"] == [
            "MCP tools: offering 17 of 201 (at most 128 per request); left out: none;"
            " descriptions cut to 1024 characters: none; past 262144 characters of schemas in"
            f" all, left out: {', '.join(over[:128])}, ... (184 in all)"
        ]
        _, result = await offered.call("s016", "{}", 5)
        assert result.text.startswith("Unknown tool 's016'.")


@pytest.mark.parametrize(("spare", "offered"), [(0, 4), (-1, 3)])
async def test_a_schema_that_fills_the_total_exactly_is_offered(spare: int, offered: int) -> None:
    async with mcp_system({"raw": raw_server("many-schemas", 1000)}) as system:
        await wait_ready(system, "raw")
        catalog = ToolCatalog(system, ["raw"], max_offered_schema_chars=GET + 3 * 1000 + spare)
        refreshed = await catalog.refresh()
        assert refreshed.limits.offered == offered
        assert len(refreshed.limits.schemas_over_total) == 201 - offered
