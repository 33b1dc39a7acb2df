"""The domain, one subpackage per subsystem; dependencies point one way.

* :mod:`actors.chat`: one actor per conversation (history, the tool loop of a turn);
* :mod:`actors.llm`: calling models (providers, router, ledger, tokens, the runtime facade);
* :mod:`actors.mcp`: MCP servers and their tools;
* :mod:`actors.metrics`: the metrics actor and its store.

``chat -> llm | mcp -> metrics -> runtime`` (import-linter checks it in ``make test``).
"""
