"""Demo mode: the built-in simulator stands in for the LLM when no provider has an API key.

With ``simulator.enabled: always``, or ``auto`` and no provider key available, the server starts
``python -m simulator`` as a child process on 127.0.0.1 and replaces the ``llm:`` providers with
one ``openai-compatible`` provider pointing at it; its ``/_sim/`` control endpoints need a token
only this process knows (random, or ``SIMULATOR_CONTROL_TOKEN`` from the server's environment).
The switch is loud: a WARNING in the log, ``"simulated": true`` in ``/health`` and a banner on
the chat page. Demo spend goes to its own ledger file, so simulated calls never count against the
real daily limit.
"""

from __future__ import annotations

import logging
import os
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Final

from actors.llm import LLMConfig, ModelPrice, ProviderConfig, RateLimitConfig
from server.config import AppConfig
from simulator.process import SimulatorProcess, SimulatorStartError

__all__ = [
    "SIMULATED_MODEL",
    "SIMULATOR_PROVIDER",
    "SimulatorStartError",
    "run_simulator",
    "simulated_llm_config",
    "wants_simulator",
]

logger = logging.getLogger("server.simulated")

SIMULATOR_PROVIDER = "simulator"
SIMULATED_MODEL = "gpt-4o-mini"
"""A model the catalog knows, so the demo shows realistic token counts and prices."""
DEMO_MODELS = ("gpt-4o-mini", "gpt-4.1-mini", "o4-mini", "gpt-5-mini", "deepseek/deepseek-r1",
               "deepseek-reasoner")
"""Models the simulator serves by default, offered in the chat page's picker in demo mode: plain
ones, OpenAI-style reasoning (``o4-mini``: reasoning tokens, no text) and reasoning that streams
(``deepseek/deepseek-r1`` as OpenRouter sends it, ``deepseek-reasoner`` as DeepSeek does)."""

CONTROL_TOKEN_VARIABLE = "SIMULATOR_CONTROL_TOKEN"
"""The simulator reads its control token from this variable (its documented interface)."""

_STARTUP_TIMEOUT = 20.0


def wants_simulator(config: AppConfig) -> bool:
    """Whether to serve the simulator: ``always``, or ``auto`` with no provider key available."""
    mode = config.simulator.enabled
    if mode == "always":
        return True
    if mode == "never":
        return False
    return not config.llm.providers_with_credentials()


def simulated_llm_config(llm: LLMConfig, base_url: str) -> LLMConfig:
    """``llm`` with its providers replaced by one keyless provider at ``base_url``.

    Its model is the first provider's configured ``model`` when the simulator serves it (``model:
    o4-mini`` runs a simulated o4-mini), else :data:`SIMULATED_MODEL`; the other
    :data:`DEMO_MODELS` are configured too (listed, chosen per turn, never tried automatically).
    Cost limits, hedging and timeouts are kept; the ledger moves to a ``.simulated`` file next to
    the configured one.
    """
    configured = llm.providers[llm.candidate_order()[0]].model
    model = configured if configured in DEMO_MODELS else SIMULATED_MODEL
    provider = ProviderConfig(
        kind="openai-compatible",
        base_url=base_url.rstrip("/") + "/v1",
        requires_api_key=False,
        model=model,
        fallback_models=[name for name in DEMO_MODELS if name != model],
        enable_fallback_models=False,
        prices=_DEMO_PRICES,
        max_connections=1000,
        max_keepalive_connections=200,
        rate_limits=RateLimitConfig(),
    )
    db_path = Path(llm.cost.db_path)
    cost = llm.cost.model_copy(
        update={"db_path": str(db_path.with_name(f"{db_path.stem}.simulated{db_path.suffix}"))}
    )
    return LLMConfig(
        providers={SIMULATOR_PROVIDER: provider},
        active=SIMULATOR_PROVIDER,
        fallback_order=[SIMULATOR_PROVIDER],
        cost=cost,
        hedging=llm.hedging,
        request_timeout=llm.request_timeout,
    )


# The simulator's prices for the demo models the catalog does not price (USD per million tokens):
# without a price the ledger could not reserve, and would refuse the turn.
_DEMO_PRICES: Final = {
    "deepseek/deepseek-r1": ModelPrice(input=0.4, output=2.0),
    "deepseek-reasoner": ModelPrice(input=0.56, output=1.68),
}


@asynccontextmanager
async def run_simulator(port: int = 0) -> AsyncIterator[str]:
    """Run ``python -m simulator`` on 127.0.0.1 as a child process; yield its base URL.

    The process is terminated on exit (killed if it does not stop within 5 s). Raises
    :class:`SimulatorStartError` if it exits or stays silent during start-up.
    """
    # Only this process (and whoever started it with the variable set) knows the token, so no
    # other local process can reconfigure the simulator's faults under a running demo.
    token = os.environ.get(CONTROL_TOKEN_VARIABLE) or secrets.token_urlsafe(32)
    child = SimulatorProcess(port=port, startup_timeout=_STARTUP_TIMEOUT, control_token=token)
    async with child:
        logger.info("simulator child process %d listening on %s", child.pid, child.url)
        yield child.url
