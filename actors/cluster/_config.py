"""The ``cluster:`` section of the configuration: where the shared Redis is and how to use it."""

from __future__ import annotations

from urllib.parse import unquote, urlsplit, urlunsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

__all__ = ["RESERVATION_TTL", "ClusterConfig", "redact_url"]

#: Seconds an unsettled reservation is held before it is swept, here and in the local ledger. A
#: request may run up to (not including) this long: the router refuses a longer timeout, so a call
#: never outlives its reservation (whose money could then be granted twice).
RESERVATION_TTL = 600.0


def redact_url(url: str) -> str:
    """``url`` with any user name and password replaced by ``***`` (host and path kept), the
    value of a ``password`` query parameter too (redis-py reads one there)."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port
    except ValueError:
        return "<unparseable redis url>"
    query = "&".join(_redact_parameter(item) for item in parts.query.split("&"))
    if parts.username is None and parts.password is None:
        if query == parts.query:
            return url
        head, _, rest = url.partition("?")  # urlunsplit would drop unix:// 's empty host
        return f"{head}?{query}{rest[len(parts.query):]}"
    if ":" in host:
        host = f"[{host}]"
    netloc = f"***@{host}" + (f":{port}" if port is not None else "")
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def _redact_parameter(item: str) -> str:
    name, equals, _ = item.partition("=")
    return f"{name}=***" if equals and unquote(name).lower() == "password" else item


class ClusterConfig(BaseModel):
    """Shared state across workers and instances. ``redis_url`` unset: one process, no Redis.

    The URL may carry a password (``redis://:secret@host:6379/0``); ``repr``, ``str`` and every
    error show it redacted.
    """

    # hide_input_in_errors: a rejected URL may hold a password.
    model_config = ConfigDict(frozen=True, extra="forbid", hide_input_in_errors=True)

    redis_url: str | None = Field(default=None, repr=False)
    key_prefix: str = Field(default="mcp-backend", min_length=1, pattern=r"^[A-Za-z0-9_.:-]+$")
    connect_timeout: float = Field(default=1.0, gt=0, le=30, description="seconds")
    op_timeout: float = Field(default=0.5, gt=0, le=30, description="seconds, one round trip")
    lease_ttl: float = Field(default=30.0, gt=0, description="conversation lease, seconds")
    reservation_ttl: float = Field(
        default=RESERVATION_TTL, ge=RESERVATION_TTL,
        description="an unsettled reservation; no shorter than the longest request may run",
    )
    in_flight_ttl: float = Field(
        default=300.0, gt=0,
        description="an admitted request not yet sent counts as sent at this age at the latest",
    )
    permit_lease: float = Field(
        default=0.2, ge=0, le=1.0,
        description="seconds a worker may use rate permits leased ahead (0: no pool); a pause "
                    "set elsewhere stops its requests at most this late",
    )
    allowances: bool = Field(
        default=True,
        description="each worker grants reservations from a money allowance Redis holds for it "
                    "(False: every reservation asks Redis)",
    )
    day_ttl: float = Field(default=3 * 86_400.0, gt=0, description="day totals, seconds")
    journal_interval: float = Field(
        default=1.0, gt=0, le=60,
        description="seconds between two offers of each worker's journal to the shared day; "
                    "after Redis lost its data, budgets grant nothing for 2x this + op_timeout",
    )
    rate_quarantine_on_loss: bool = Field(
        default=False,
        description="after Redis lost a provider's windows, refuse it for one window",
    )
    max_connections: int = Field(
        default=16, gt=0,
        description="commands in flight per process (one pipelined connection); Redis: one thread")

    @field_validator("redis_url")
    @classmethod
    def _redis_scheme(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            scheme = urlsplit(value).scheme
        except ValueError:
            raise ValueError("redis_url is not a URL") from None
        if scheme not in ("redis", "rediss", "unix"):
            # Never echo the value: it may hold a password.
            raise ValueError("redis_url must start with redis://, rediss:// or unix://")
        return value

    @model_validator(mode="after")
    def _in_flight_outlives_a_lease(self) -> ClusterConfig:
        # A permit leased ahead may be used until its lease ends: it must count in flight that
        # long at least, or the window frees its slot while it may still be sent.
        if self.in_flight_ttl < self.permit_lease:
            raise ValueError(f"cluster.in_flight_ttl ({self.in_flight_ttl:g} s) must be at "
                             f"least cluster.permit_lease ({self.permit_lease:g} s)")
        return self

    @property
    def enabled(self) -> bool:
        """Whether state is shared through Redis."""
        return self.redis_url is not None

    def __repr_args__(self) -> list[tuple[str | None, object]]:
        args = list(super().__repr_args__())
        shown = None if self.redis_url is None else redact_url(self.redis_url)
        return [("redis_url", shown), *args]
