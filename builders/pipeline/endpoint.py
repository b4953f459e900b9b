"""Calling an OpenAI-compatible endpoint (OpenAI, vLLM, TGI…): our own retry policy, bounded concurrency, run stats.

The ``openai`` client's retries are switched off so that every call is seen here: 429 and 5xx answers, timeouts and
dropped connections are retried with jittered exponential backoff, never sooner than the server's ``Retry-After``
(or ``retry-after-ms``); authentication and not-found errors stop the run; other 4xx answers fail the one item.
Before fanning out, ``probe`` asks the endpoint for its model list once, so a wrong URL, a closed port, a host that
does not resolve or a rejected key stops the run at once, with the host and the cause on one line (and, for a 404,
the hint that OpenAI-compatible base URLs end in ``/v1``). During the run a ``Breaker`` takes an endpoint out after
``BREAKER_LIMIT`` consecutive connection failures with the same cause, so a dead server stops the run instead of
every item being retried for minutes.

A base URL setting may list several replicas of one deployment (``base_urls``: a YAML list, a repeated flag or a
comma-separated value). ``Replicas`` spreads the requests over them (each holds at most ``concurrency`` in flight,
the least busy is asked first); each replica has its own breaker, and one that trips is taken out of the run and
tried again with a single request every ``REPLICA_COOLDOWN`` seconds while the others carry the run. A request that
meets a dead replica is re-sent at once to another one. The run stops only when every replica is down, with one
line naming each (redacted) and its cause.
The API key is read from an environment variable and handed to the client only — never printed or stored.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import os
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

from vlfeedback_kit.builders.pipeline.judge import Reply
from vlfeedback_kit.errors import UserError

if TYPE_CHECKING:
    from openai import AsyncOpenAI, OpenAI


BREAKER_LIMIT = 5
"""Consecutive connection failures with the same cause after which a run stops."""
REPLICA_COOLDOWN = 30.0
"""Seconds a replica its breaker took out stays out before one request tries it again."""
PROBE_TIMEOUT = 20.0
"""Seconds the endpoint probe waits (at most; less when --timeout is shorter)."""
TRANSIENT_STATUS = (408, 409, 429)
"""HTTP statuses below 500 that are retried (timeout, conflict, rate limit); every 5xx is retried too."""


@dataclass(frozen=True)
class RetryPolicy:
    """How transient failures are retried: ``max_retries`` times, backoff from ``base_delay`` up to ``max_delay``."""

    max_retries: int = 8
    base_delay: float = 1.0
    max_delay: float = 60.0


@dataclass(frozen=True)
class Completion:
    """One successful chat completion: the reply, the usage the API reported, and the model that answered (the
    response's ``model``, which eval records; the ledger does not keep it)."""

    reply: Reply
    prompt_tokens: int
    completion_tokens: int
    model: str | None = None


class GaveUp(Exception):
    """Transient failures outlasted the retry policy; the item stays pending and a re-run tries it again."""


class Rejected(Exception):
    """The API refused this one request (a 4xx other than auth/not-found/rate-limit): the item fails."""


def api_key_from_env(name: str, flag: str = "--api-key-env, or api_key_env in a pool file,") -> str:
    """The API key held in the environment variable ``name`` (``flag`` names the variable, never the key)."""
    key = os.environ.get(name)
    if not key:
        raise UserError(
            f"the environment variable {name} is not set; put the API key there ({flag} names the variable)"
        )
    return key


def retry_after_seconds(headers: Mapping[str, str] | None, now: float | None = None) -> float | None:
    """The server's requested wait: ``retry-after-ms``, or ``Retry-After`` in seconds or as an HTTP date."""
    if not headers:
        return None
    for name, divisor in (("retry-after-ms", 1000.0), ("retry-after", 1.0)):
        value = headers.get(name)
        if value is None:
            continue
        try:
            return max(0.0, float(value) / divisor)
        except ValueError:
            parsed = email.utils.parsedate_tz(value)
            if parsed is not None:
                return max(0.0, email.utils.mktime_tz(parsed) - (time.time() if now is None else now))
    return None


def backoff_delay(retry: int, retry_after: float | None, policy: RetryPolicy, jitter: float) -> float:
    """Seconds to wait before retry number ``retry`` (0-based); ``jitter`` is uniform in [0, 1)."""
    if retry_after is not None:
        return retry_after * (1.0 + 0.2 * jitter)
    return min(policy.max_delay, policy.base_delay * 2**retry) * (0.5 + 0.5 * jitter)


def is_transient(status: int) -> bool:
    """Whether an HTTP error status is worth asking again (a later call may succeed) rather than failing the item."""
    return status in TRANSIENT_STATUS or status >= 500


def redact_url(url: str) -> str:
    """A URL without credentials or query (what reports and messages may show)."""
    parts = urlsplit(url)
    host = f"{parts.hostname or ''}{f':{parts.port}' if parts.port else ''}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


def host_of(url: str) -> str:
    """``host:port`` of a URL as written (an IPv6 host keeps its brackets), without credentials: what messages show
    and what a pool member's answers record as its ``endpoint``."""
    return urlsplit(url).netloc.rsplit("@", 1)[-1] or url


def base_urls(value: str | Sequence[str] | None, flag: str = "--base-url") -> tuple[str, ...]:
    """The replicas a base URL setting names, in order: one URL, a comma-separated string, or a list of either (a
    YAML list, a repeated flag). Empty or repeated entries are refused, naming ``flag``."""
    items = [value] if isinstance(value, str) else list(value or [])
    urls = tuple(part.strip() for item in items for part in str(item).split(",") if part.strip())
    if not urls:
        raise UserError(f"{flag}: no base URL given (one URL, or several replicas as a list or comma-separated)")
    repeated = sorted({redact_url(url) for url in urls if urls.count(url) > 1})
    if repeated:
        raise UserError(f"{flag}: {', '.join(repeated)} is listed more than once; list each replica once")
    return urls


def _chain(err: BaseException) -> list[BaseException]:
    chain: list[BaseException] = []
    link: BaseException | None = err
    while link is not None and link not in chain:
        chain.append(link)
        link = link.__cause__ or link.__context__
    return chain


def is_timeout(err: Exception) -> bool:
    """Whether a failed call timed out — a ``TimeoutError`` somewhere in its chain (both transports raise one under
    their own exceptions) — and not a connection refused or dropped that the transport reported as a timeout
    (openai's aiohttp transport maps every aiohttp connection error to ``ConnectTimeout``)."""
    import openai

    return isinstance(err, openai.APITimeoutError) and any(isinstance(e, TimeoutError) for e in _chain(err))


def connection_cause(err: Exception) -> str:
    """Why a connection failed, in words: refused, DNS, dropped, timed out — or the underlying error's text."""
    import socket

    if is_timeout(err):
        return "no reply before the timeout"
    chain = _chain(err)
    if any(isinstance(e, ConnectionRefusedError) for e in chain):
        return "connection refused"
    if any(isinstance(e, socket.gaierror) for e in chain):
        return "the host name does not resolve (DNS)"
    text = " / ".join(dict.fromkeys(str(e) for e in chain[1:] if str(e))) or str(err)
    lowered = text.lower()
    if "refused" in lowered:
        return "connection refused"
    if any(s in lowered for s in ("name or service not known", "name resolution", "nodename nor servname")):
        return "the host name does not resolve (DNS)"
    if "disconnected" in lowered or "connection reset" in lowered:
        return "the server closed the connection without a reply"
    return text[:200]


def _ends_in_v1(base_url: str) -> bool:
    """Whether a base URL has the ``/v1`` path OpenAI-compatible servers serve under (a 404 without it is a hint)."""
    return urlsplit(str(base_url)).path.rstrip("/").endswith("/v1")


def not_found_message(base_url: str, path: str, err: Exception) -> str:
    """One line for a 404: the URL asked and, when the base URL lacks ``/v1``, the hint to add it."""
    base_url = redact_url(str(base_url))
    url = f"{base_url.rstrip('/')}{path}"
    hint = (
        f"; OpenAI-compatible base URLs end in /v1 (e.g. {base_url.rstrip('/')}/v1)"
        if not _ends_in_v1(base_url)
        else ""
    )
    return f"{host_of(str(base_url))} answered 404 Not Found for {urlsplit(url).path} ({_message(err)}){hint}"


@dataclass
class Breaker:
    """Counts one replica's consecutive connection failures; it trips after ``limit`` in a row with the same cause.
    Any reply from the server resets it."""

    base_url: str
    limit: int = BREAKER_LIMIT
    cause: str | None = None
    streak: int = 0

    def failed(self, cause: str) -> bool:
        """Count a connection failure; True once ``limit`` in a row had this cause (the replica is down)."""
        self.streak = self.streak + 1 if cause == self.cause else 1
        self.cause = cause
        return self.streak >= self.limit

    def answered(self) -> None:
        """The server replied (whatever the status): the streak is over."""
        self.streak, self.cause = 0, None

    def describe(self) -> str:
        """The replica and why it is down, for the run's last line: ``host:port: cause (N requests in a row)``."""
        return f"{host_of(self.base_url)}: {self.cause} ({self.streak} requests in a row)"


@dataclass(eq=False)
class Replica:
    """One replica of a deployment: its breaker, the requests it holds, while its breaker has it out of the run when
    it may be tried again (``time.monotonic``), and its client in the current event loop (None between loops)."""

    base_url: str
    breaker: Breaker
    in_flight: int = 0
    down_until: float | None = None
    client: AsyncOpenAI | None = None


class Replicas:
    """The replicas of one OpenAI-compatible deployment a run sends to (one or more base URLs; see the module
    docstring): ``acquire`` a replica for a request, ``release`` it after, and report its ``answered`` or
    ``failed`` connection. ``flag`` names the setting in messages. Clients are made in the event loop that uses
    them and ``close`` ends them; the replicas' state (breakers, who is out) outlives it, so a caller that runs one
    loop per batch keeps a dead replica out across batches."""

    def __init__(
        self,
        urls: Sequence[str],
        api_key: str,
        timeout: float,
        flag: str = "--base-url",
        concurrency: int | None = None,
        cooldown: float | None = None,
    ) -> None:
        self.flag, self.concurrency, self._api_key, self._timeout = flag, concurrency, api_key, timeout
        self.cooldown = REPLICA_COOLDOWN if cooldown is None else cooldown
        self.replicas = [Replica(url, Breaker(url)) for url in urls]
        self._turn = 0
        self._changed: asyncio.Condition | None = None

    def __len__(self) -> int:
        return len(self.replicas)

    def _capacity(self, replica: Replica, now: float) -> int:
        """Requests the replica may hold now: none while out, one on trial after its cooldown, else the limit."""
        if replica.down_until is not None:
            return 0 if now < replica.down_until else 1
        return self.concurrency or 1 << 30

    async def acquire(self, avoid: Collection[Replica] = ()) -> Replica:
        """A replica with room for one more request, not one of ``avoid`` (those this request failed on) while
        another is in the run: one due for a trial first, else the least busy (in turn); waits while they are full."""
        self._changed = self._changed or asyncio.Condition()
        async with self._changed:
            while True:
                now = time.monotonic()
                others = [r for r in self.replicas if r not in avoid] if self.up_besides(*avoid) else self.replicas
                free = [r for r in others if r.in_flight < self._capacity(r, now)]
                if free:
                    self._turn += 1
                    turn = {id(r): (i - self._turn) % len(self.replicas) for i, r in enumerate(self.replicas)}
                    replica = min(free, key=lambda r: (r.down_until is None, r.in_flight, turn[id(r)]))
                    replica.in_flight += 1
                    if replica.client is None:
                        replica.client = make_client(replica.base_url, self._api_key, self._timeout)
                    return replica
                due = [r.down_until - now for r in self.replicas if r.down_until is not None and r.down_until > now]
                with contextlib.suppress(TimeoutError):  # a replica's cooldown is over: it may take a trial
                    await asyncio.wait_for(self._changed.wait(), timeout=min(due) if due else None)

    async def release(self, replica: Replica) -> None:
        """The request is over: its slot is free."""
        async with self._changed:
            replica.in_flight -= 1
            self._changed.notify_all()

    def answered(self, replica: Replica) -> None:
        """The replica replied (whatever the status): it is up, its streak is over."""
        replica.breaker.answered()
        replica.down_until = None

    def failed(self, replica: Replica, cause: str) -> None:
        """Count a connection failure of the replica: its breaker (or a failed trial) takes it out of the run; a
        UserError naming every replica and its cause once all are out."""
        tripped = replica.breaker.failed(cause)
        if tripped or replica.down_until is not None:
            replica.down_until = time.monotonic() + self.cooldown
        if all(r.down_until is not None for r in self.replicas):
            raise UserError(self.all_down())

    def up_besides(self, *replicas: Replica) -> bool:
        """Whether a replica other than these is in the run (a failed request can go there at once)."""
        return any(r not in replicas and r.down_until is None for r in self.replicas)

    def all_down(self) -> str:
        """The run's last line when no replica answers: each (redacted) with its cause, and what to check."""
        if len(self.replicas) == 1:
            return (
                f"cannot reach {self.replicas[0].breaker.describe()}; check {self.flag} and that the server is up, "
                "then re-run the same command"
            )
        down = "; ".join(r.breaker.describe() for r in self.replicas)
        return (
            f"cannot reach any of the {len(self.replicas)} replicas of {self.flag}: {down}; check {self.flag} and "
            "that the servers are up, then re-run the same command"
        )

    async def close(self) -> None:
        """Close the clients of this event loop (the next loop that acquires a replica makes new ones)."""
        for replica in self.replicas:
            if replica.client is not None:
                await replica.client.close()
                replica.client = None
        self._changed = None


class Unreachable(UserError):
    """The probe got no answer from an endpoint (``cause`` says why): with other replicas up, the run goes on."""

    def __init__(self, message: str, cause: str) -> None:
        super().__init__(message)
        self.cause = cause


async def probe(client: AsyncOpenAI, base_url: str, flag: str = "--base-url", key_flag: str = "--api-key-env") -> None:
    """One request before any work: the model list. Unreachable (``Unreachable``), 404 or a refused key → a one-line
    UserError."""
    import openai

    last = ""
    for _ in range(2):
        try:
            await client.get("/models", cast_to=dict, options={"timeout": min(client.timeout, PROBE_TIMEOUT)})
            return
        except openai.NotFoundError as err:
            if _ends_in_v1(base_url):
                return  # a /v1 server without a model list: the calls themselves will tell
            raise UserError(f"{flag} {redact_url(base_url)}: {not_found_message(base_url, '/models', err)}") from err
        except (openai.AuthenticationError, openai.PermissionDeniedError) as err:
            raise UserError(
                f"{host_of(base_url)} refused the API key ({err.status_code}: {_message(err)}); check {key_flag}"
            ) from err
        except openai.APIConnectionError as err:
            last = connection_cause(err)
        except openai.APIStatusError:
            return  # 429 / 5xx: transient, the run's retries deal with them
    raise Unreachable(f"cannot reach {host_of(base_url)}: {last}; check {flag} and that the server is up", last)


def check_endpoint(
    base_url: str | Sequence[str],
    api_key: str,
    timeout: float,
    flag: str = "--base-url",
    key_flag: str = "--api-key-env",
) -> list[str]:
    """``probe`` every replica from synchronous code (its own event loop and clients). A wrong URL or a refused key
    anywhere stops the run; unreachable replicas stop it only when none answers (one line naming each), else they
    are returned, one line each, for the caller to print (the run takes them out at their first failures)."""
    urls = base_urls(base_url, flag)

    async def one(url: str) -> str | None:
        client = make_client(url, api_key, timeout)
        try:
            await probe(client, url, flag, key_flag)
        except Unreachable as err:
            if len(urls) == 1:
                raise
            return f"{host_of(url)}: {err.cause}"
        finally:
            await client.close()
        return None

    async def run() -> list[str | None]:
        return list(await asyncio.gather(*(one(url) for url in urls)))

    down = [line for line in asyncio.run(run()) if line]
    if len(down) == len(urls):
        raise UserError(
            f"cannot reach any of the {len(urls)} replicas of {flag}: {'; '.join(down)}; check {flag} and that the "
            "servers are up"
        )
    return [f"{flag}: replica {line}; the run goes on with the others" for line in down]


def _client_options(base_url: str, api_key: str, timeout: float, max_retries: int = 0) -> dict[str, Any]:
    """What every OpenAI client of the kit is built with: the endpoint, the key (handed to the client only, never
    printed), the per-request timeout, and openai's own retries (0 where ``complete`` retries)."""
    return {"base_url": base_url, "api_key": api_key, "timeout": timeout, "max_retries": max_retries}


def make_client(base_url: str, api_key: str, timeout: float) -> AsyncOpenAI:
    """An ``AsyncOpenAI`` client for ``base_url`` with the client's own retries off.

    With the ``aiohttp`` extra of ``openai`` installed (the kit's ``[pipeline]`` and ``[eval]`` extras name it), the
    client sends through ``openai.DefaultAioHttpClient``, the transport openai documents for high concurrency: at
    64 calls in flight it costs ~2.3 ms of CPU a call against ~3.2 ms for the default httpx transport
    (BENCHMARKS.md), which is what bounds a judge run on a small machine."""
    from openai import AsyncOpenAI

    return AsyncOpenAI(**_client_options(base_url, api_key, timeout), http_client=aiohttp_client(base_url, timeout))


def make_sync_client(base_url: str, api_key: str, timeout: float, max_retries: int) -> OpenAI:
    """A synchronous ``OpenAI`` client for ``base_url`` (the Batch API's few file and batch calls), with the same
    settings as ``make_client`` but openai's own retries (``max_retries``): these calls do not go through
    ``complete``."""
    from openai import OpenAI

    return OpenAI(**_client_options(base_url, api_key, timeout, max_retries))


def aiohttp_client(base_url: str, timeout: float) -> Any:
    """openai's aiohttp transport, or None (openai's default httpx client) when aiohttp or an openai that has it is
    not installed, or the URL holds credentials (aiohttp refuses them next to the bearer header; httpx sends
    both)."""
    if urlsplit(base_url).username is not None:
        return None
    try:
        import aiohttp  # noqa: F401 - only whether it is installed
        from openai import DefaultAioHttpClient

        return DefaultAioHttpClient(timeout=timeout)
    except (ImportError, RuntimeError):  # openai 1.x without httpx_aiohttp raises RuntimeError on construction
        return None


def completion_of(body: Mapping) -> Completion:
    """A Completion from a chat.completion object (a parsed response, or a Batch API output line's body)."""
    choice = body["choices"][0]
    message = choice.get("message") or {}
    usage = body.get("usage") or {}
    reply = Reply(message.get("content"), message.get("refusal"), choice.get("finish_reason"))
    tokens = int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)
    return Completion(reply, *tokens, body.get("model"))


async def complete(
    replicas: Replicas,
    request: dict,
    policy: RetryPolicy,
    on_retry: Callable[[str], None] | None = None,
) -> Completion:
    """One chat completion from one of ``replicas``, retried on transient failures (a connection failure goes at
    once to another replica while one is up); raises GaveUp, Rejected, or UserError (stop the run)."""
    import openai

    last = "no attempt"
    retry = failovers = 0
    failed_on: list[Replica] = []
    while True:
        headers = None
        replica = await replicas.acquire(failed_on)
        try:
            # the client's documented raw `post`: the typed `chat.completions.create` walks the whole request
            # (base64 image included) through its params transform, ~1.5 ms of CPU a call
            body = await replica.client.post("/chat/completions", cast_to=dict, body=request)
            replicas.answered(replica)
            return completion_of(body)
        except openai.NotFoundError as err:
            raise UserError(not_found_message(replica.base_url, "/chat/completions", err)) from err
        except (openai.AuthenticationError, openai.PermissionDeniedError) as err:
            raise UserError(
                f"{host_of(replica.base_url)} refused the run ({err.status_code}): {_message(err)}"
            ) from err
        except openai.APIStatusError as err:
            replicas.answered(replica)
            if not is_transient(err.status_code):
                raise Rejected(f"HTTP {err.status_code}: {_message(err)}") from err
            last, headers = f"HTTP {err.status_code}", err.response.headers
        except (openai.APITimeoutError, openai.APIConnectionError) as err:
            timed_out = is_timeout(err)
            last = "APITimeoutError" if timed_out else "APIConnectionError"
            if not timed_out:
                replicas.failed(replica, connection_cause(err))
                failed_on.append(replica)
                if replicas.up_besides(*failed_on) and failovers < BREAKER_LIMIT * len(replicas):
                    failovers += 1
                    if on_retry is not None:
                        on_retry(f"{last}: sent to another replica")
                    continue
        finally:
            await replicas.release(replica)
        if retry == policy.max_retries:
            break
        if on_retry is not None:
            on_retry(last)
        await asyncio.sleep(backoff_delay(retry, retry_after_seconds(headers), policy, random.random()))
        retry += 1
    raise GaveUp(f"{last} after {policy.max_retries} retries")


def _message(err: Exception) -> str:
    body = getattr(err, "body", None)
    if isinstance(body, dict):
        return str(body.get("message") or body)[:300]
    return str(err)[:300]


@dataclass
class RunStats:
    """What one run did: calls and spend, retries by cause, items left pending and why."""

    calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    finished: Counter = field(default_factory=Counter)
    retries: Counter = field(default_factory=Counter)
    pending: dict[str, str] = field(default_factory=dict)
    stopped: str | None = None
    seconds: float = 0.0
    batches: list[str] = field(default_factory=list)
    seed_sent: bool | None = None
    priced: bool = True

    def add_call(self, prompt_tokens: int, completion_tokens: int, cost: float | None) -> None:
        """Count one paid call."""
        self.calls += 1
        self.prompt_tokens += prompt_tokens
        self.completion_tokens += completion_tokens
        self.cost_usd += cost or 0.0

    def retried(self, reason: str) -> None:
        """Count one retry of a transient failure."""
        self.retries[reason] += 1

    def to_dict(self) -> dict:
        """The report's view of the run."""
        return {
            "calls": self.calls,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "cost_usd": round(self.cost_usd, 6) if self.priced else None,
            "finished": dict(self.finished),
            "retries": dict(self.retries),
            "stopped": self.stopped,
            "seconds": round(self.seconds, 3),
            "items_per_second": round(sum(self.finished.values()) / self.seconds, 2) if self.seconds else None,
            "batches": self.batches,
            "seed_sent": self.seed_sent,
        }


async def for_each(
    items: Iterable, handle: Callable[[object], Awaitable[None]], concurrency: int, admit: Callable[[object], bool]
) -> bool:
    """Run ``handle`` over ``items`` with at most ``concurrency`` in flight; False if ``admit`` stopped the intake.

    The first exception in any handler cancels the rest and propagates.
    """
    queue: asyncio.Queue = asyncio.Queue(concurrency)
    stop = object()

    async def worker() -> None:
        while (item := await queue.get()) is not stop:
            await handle(item)

    async def produce() -> bool:
        complete_intake = True
        for item in items:
            if not admit(item):
                complete_intake = False
                break
            await queue.put(item)
        for _ in range(concurrency):
            await queue.put(stop)
        return complete_intake

    producer = asyncio.ensure_future(produce())
    pending = {producer, *(asyncio.ensure_future(worker()) for _ in range(concurrency))}
    try:
        while pending:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_EXCEPTION)
            for task in done:
                if task.exception() is not None:
                    raise task.exception()
    finally:
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
    return producer.result()
