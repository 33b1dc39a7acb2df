"""open_runtime gives the metrics store the configured models: they keep their ``model`` label
however many other names the upstreams answer with."""

from __future__ import annotations

from pathlib import Path

from actors.llm import LLMConfig, configured_models, open_runtime
from actors.metrics import GetSummary, RequestFinished


def config(tmp_path: Path) -> LLMConfig:
    def provider(model: str, *fallbacks: str) -> dict[str, object]:
        return {"kind": "openai-compatible", "base_url": "http://127.0.0.1:9/v1", "model": model,
                "fallback_models": list(fallbacks), "requires_api_key": False}

    return LLMConfig.model_validate({
        "providers": {"a": provider("model-a", "fallback-a", "model-b"),
                      "b": provider("model-b", "fallback-b")},
        "cost": {"db_path": str(tmp_path / "ledger.sqlite3")},
    })


def test_configured_models_are_every_providers_model_and_fallbacks_once() -> None:
    assert configured_models(config(Path("/nonexistent"))) == [
        "model-a", "fallback-a", "model-b", "fallback-b"]


async def test_configured_fallback_models_keep_their_label_past_the_unconfigured_cap(
        tmp_path: Path) -> None:
    async with open_runtime(config(tmp_path)) as rt:
        for i in range(40):
            rt.metrics.tell(RequestFinished("a", f"upstream-{i}", 0.1, None, 1, 1, 0.0))
        rt.metrics.tell(RequestFinished("b", "fallback-b", 0.1, None, 1, 1, 0.0))
        summary = await rt.metrics.ask(GetSummary(), timeout=5)
    assert summary["by_model"]["a:other"]["total_requests"] == 8
    assert summary["by_model"]["b:fallback-b"]["total_requests"] == 1
