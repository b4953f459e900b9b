"""A loopback OpenAI-compatible HTTP server: a stand-in for GPT-4V (the judge) and for pool endpoints in tests.

It speaks the part of the OpenAI API the ``openai`` client uses for the pipeline: ``POST /v1/chat/completions``
(image content parts, ``usage`` numbers), ``POST /v1/files`` (multipart), ``GET /v1/files/{id}`` and
``/content``, ``POST /v1/batches``, ``GET /v1/batches/{id}`` and ``GET /v1/batches``.

    with OpenAIServer(latency=0.05) as server:
        client = OpenAI(base_url=server.url, api_key="sk-test")
        ...
    # or as a separate process (the benchmark): python tests/support/openai_server.py --latency 0.2

How it answers a chat request:

- A **judge** request is one whose text holds the responses as ``<text k>`` … ``</text k>`` blocks (the kit's
  rubric renders them so). Each response is rated on the three aspects from a ``[[rate=H,V,E]]`` marker in its
  text, or from a hash of the text. The reply is the kit's JSON format, or the original sectioned format with
  markdown noise when the instruction holds ``[[sectioned]]`` or the request is the original VLFeedback template
  (texts as ``- <text k> …`` lines), which asks for that format.
- Any other request is a **pool** request, answered with a deterministic text naming the model.
- Directives in the request text switch faults on for one item: ``[[malformed]]`` (the first reply misses a
  rating; ``[[malformed:N]]`` the first N replies to this content, ``[[malformed:always]]`` every one),
  ``[[refuse]]`` (an "I'm sorry" reply), ``[[refuse-field]]`` (``message.refusal`` set), ``[[status:429]]`` /
  ``[[status:500]]`` (the first call with this content fails so), ``[[slow:S]]`` (the first call takes S more
  seconds). Replies are counted per content (the first user message), so a re-ask counts as the next reply.
- Server-wide knobs: ``latency`` (seconds per chat call), ``fail_next(status, count)``, ``retry_after_ms``
  (sent with every 429), ``batch_polls`` (retrievals before a batch completes), ``api_key`` (401 otherwise),
  ``drop_chat`` (every chat call's connection is closed without a reply; ``dropped`` counts them),
  ``reject_params`` (request fields answered with a 400 "unsupported parameter", as some servers do for ``seed``).
- ``GET /v1/models`` lists ``models`` (``probes`` counts the requests).
- ``kill()`` stops it as a crashed replica would: new connections are refused, and every request on a connection
  already open — the calls in flight included, after their latency — is dropped without a reply (counted in
  ``dropped``; such a call is not logged in ``calls``). ``kill_after(n)`` kills it when its n-th chat call over
  HTTP arrives (that call is dropped too): a replica dying mid-run at a point the test chooses.

``calls`` logs every chat completion made (over HTTP or inside a batch) with the hash of the request's first user
message — the item's content — so a test can count the calls per item, and the text of its last user message (a
re-ask's correction). ``tokens`` holds the bearer tokens seen.
"""

from __future__ import annotations

import argparse
import email.parser
import email.policy
import hashlib
import itertools
import json
import re
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from typing import Any

try:
    from support.loopback import LoopbackServer, QuietHTTPServer
except ModuleNotFoundError:  # run as a script (the benchmark): tests/support is on sys.path, tests/ is not
    from loopback import LoopbackServer, QuietHTTPServer

ASPECTS = ("Helpfulness", "Visual Faithfulness", "Ethical Considerations")
TEXT_BLOCK = re.compile(r"<text (\d+)>\n?(.*?)\n?</text \1>", re.DOTALL)
ORIGINAL_TEXT = re.compile(r"^- <text (\d+)> (.*)$", re.MULTILINE)
"""A text as the original VLFeedback template shows it (``- <text k> [[text_k_placeholder]]``)."""
RATE_MARKER = re.compile(r"\[\[rate=(\d),(\d),(\d)\]\]")
DIRECTIVE = re.compile(r"\[\[(malformed|refuse|refuse-field|sectioned|status|slow)(?::([\w.]+))?\]\]")
REFUSAL = "I'm sorry, but I can't help with evaluating this image."
IMAGE_TOKENS = 85


@dataclass(frozen=True)
class Call:
    """One chat completion the server answered (or failed on purpose)."""

    content_hash: str
    model: str
    text: str
    last_text: str
    attempt: int
    status: int
    prompt_tokens: int
    completion_tokens: int
    at: float
    via: str


def first_user_content(messages: list[dict]) -> Any:
    """The content of the first user message: what identifies an item across attempts."""
    return next((m.get("content") for m in messages if m.get("role") == "user"), None)


def text_of(content: Any) -> str:
    """All text parts of a message content joined (a plain string content is returned as is)."""
    if isinstance(content, str):
        return content
    return "\n".join(part.get("text", "") for part in content or [] if part.get("type") == "text")


def images_in(messages: list[dict]) -> int:
    """Number of image parts over all messages."""
    return sum(
        1
        for message in messages
        if isinstance(message.get("content"), list)
        for part in message["content"]
        if part.get("type") == "image_url"
    )


def content_hash(messages: list[dict]) -> str:
    """A short hash of the first user message (text and images)."""
    blob = json.dumps(first_user_content(messages), sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def ratings_for(response: str) -> tuple[int, int, int]:
    """The ratings a response gets: its ``[[rate=H,V,E]]`` marker, or three values from a hash of its text."""
    marker = RATE_MARKER.search(response)
    if marker:
        return tuple(int(v) for v in marker.groups())
    digest = hashlib.sha256(response.encode()).digest()
    return tuple(1 + digest[i] % 5 for i in range(3))


def kit_reply(ratings: list[tuple[int, int, int]], drop_last: bool = False) -> str:
    """The kit's JSON judge format (``drop_last`` omits the last text's Ethical Considerations: malformed)."""
    reply = {
        aspect: [
            {"text": k + 1, "rationale": f"Text {k + 1} earns {r[a]} on {aspect.lower()}.", "rating": r[a]}
            for k, r in enumerate(ratings)
        ]
        for a, aspect in enumerate(ASPECTS)
    }
    if drop_last:
        reply["Ethical Considerations"].pop()
    return "Here is my assessment.\n```json\n" + json.dumps(reply, indent=1) + "\n```"


def sectioned_reply(ratings: list[tuple[int, int, int]]) -> str:
    """The original sectioned format, with the usual noise: bold markers, labels after ratings, blank lines."""
    labels = {1: "Not Helpful", 2: "Somewhat", 3: "Moderate", 4: "Helpful", 5: "Highly Helpful"}
    lines = []
    for a, aspect in enumerate(ASPECTS):
        lines += [f"# {aspect} Assessment", ""]
        for k, r in enumerate(ratings):
            lines += [
                f"## **Output for Text {k + 1}**",
                f"**Rating:**  {r[a]} ({labels[r[a]]})",
                f"Rationale:   Text {k + 1} is rated {r[a]} for {aspect}.",
                "   The answer was checked against the image.",
                "",
            ]
    return "\n".join(lines)


def pool_reply(model: str, text: str) -> str:
    """A deterministic answer of a pool model to an instruction."""
    digest = hashlib.sha256(f"{model}\n{text}".encode()).hexdigest()[:8]
    return f"{model} answers ({digest}): the image shows what the question asks about."


def answer(messages: list[dict], model: str, reply_number: int) -> tuple[str | None, str | None, str]:
    """(content, refusal, finish_reason) for the ``reply_number``-th reply (1-based) to a request's content."""
    text = text_of(first_user_content(messages))
    directives = dict(DIRECTIVE.findall(text))
    texts = [body for _, body in TEXT_BLOCK.findall(text)]
    original = [body for k, body in ORIGINAL_TEXT.findall(text) if body != f"[Text {k}]"]
    if original and not texts:
        texts, directives = original, {**directives, "sectioned": ""}
    if not texts:
        return pool_reply(model, text), None, "stop"
    if "refuse" in directives:
        return REFUSAL, None, "stop"
    if "refuse-field" in directives:
        return None, "I can't assist with that request.", "stop"
    ratings = [ratings_for(body) for body in texts]
    if "malformed" in directives:
        limit = directives["malformed"] or "1"
        if limit == "always" or reply_number <= int(limit):
            return kit_reply(ratings, drop_last=True), None, "stop"
    if "sectioned" in directives:
        return sectioned_reply(ratings), None, "stop"
    return kit_reply(ratings), None, "stop"


def completion_body(model: str, content: str | None, refusal: str | None, finish: str, usage: tuple[int, int]):
    """A chat.completion object as the API returns it."""
    prompt_tokens, completion_tokens = usage
    return {
        "id": f"chatcmpl-{hashlib.sha256(f'{time.time_ns()}'.encode()).hexdigest()[:12]}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content, "refusal": refusal},
                "finish_reason": finish,
            }
        ],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }


def error_body(status: int) -> dict:
    """An OpenAI error object."""
    kinds = {401: "invalid_api_key", 404: "not_found", 429: "rate_limit_exceeded", 500: "server_error"}
    return {"error": {"message": f"simulated {status}", "type": kinds.get(status, "error"), "code": None}}


class OpenAIServer(LoopbackServer):
    """A fake OpenAI API on a loopback port; a context manager that starts and stops it.

    Args:
        latency: seconds every chat completion over HTTP takes.
        api_key: when set, requests without this bearer token get 401.
        batch_polls: how many retrievals of a batch return ``in_progress`` before it completes.
        retry_after_ms: the ``retry-after-ms`` header sent with a 429 (also ``Retry-After`` in whole seconds).
    """

    thread_name = "fake-openai"
    url_path = "/v1"

    def __init__(
        self,
        *,
        latency: float = 0.0,
        api_key: str | None = None,
        batch_polls: int = 1,
        retry_after_ms: int = 100,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self.latency = latency
        self.api_key = api_key
        self.batch_polls = batch_polls
        self.retry_after_ms = retry_after_ms
        self.calls: list[Call] = []
        self.requests: list[dict] = []
        self.models = ["gpt-4o"]
        self.probes = 0
        self.drop_chat = False
        self.dropped = 0
        self.killed = False
        self._kill_at: int | None = None
        self._http_chats = 0
        self.reject_params: set[str] = set()
        self.tokens: set[str] = set()
        self.files: dict[str, dict] = {}
        self.batches: dict[str, dict] = {}
        self._failures: list[int] = []
        self._first_seen: set[str] = set()
        self._replies: Counter = Counter()
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._init_loopback(host, port)

    def _make_server(self, address: tuple[str, int]) -> _Server:
        return _Server(address, self)

    def fail_next(self, status: int, count: int = 1) -> None:
        """Answer the next ``count`` chat calls with HTTP ``status``."""
        with self._lock:
            self._failures += [status] * count

    def kill_after(self, calls: int) -> None:
        """Kill the server when its ``calls``-th chat call over HTTP arrives."""
        with self._lock:
            self._kill_at = self._http_chats + calls

    def kill(self) -> None:
        """Stop like a crashed process: refuse new connections, drop every request of the open ones unanswered."""
        self.killed = True
        self.stop()

    def arrives(self, via: str) -> bool:
        """Count a chat call; False when it is the one ``kill_after`` named (the server dies on receiving it)."""
        if via != "http":
            return True
        with self._lock:
            self._http_chats += 1
            dies = self._kill_at is not None and self._http_chats >= self._kill_at
            if dies:
                self._kill_at = None
        if dies:
            self.kill()  # from a handler thread: the serving loop runs in its own
        return not dies

    def counts_by_hash(self, status: int | None = 200) -> Counter:
        """Chat calls per item content hash (only those answered with ``status``; None: all)."""
        with self._lock:
            return Counter(c.content_hash for c in self.calls if status is None or c.status == status)

    def calls_about(self, marker: str) -> list[Call]:
        """The chat calls whose text contains ``marker`` (e.g. an item's unique instruction)."""
        with self._lock:
            return [c for c in self.calls if marker in c.text]

    def usage_totals(self) -> tuple[int, int]:
        """Total (prompt_tokens, completion_tokens) the server reported over all successful chat calls."""
        with self._lock:
            ok = [c for c in self.calls if c.status == 200]
        return sum(c.prompt_tokens for c in ok), sum(c.completion_tokens for c in ok)

    # --- request handling (called from the handler threads) ---------------------------------------------------

    def chat(self, body: dict, via: str) -> tuple[int, dict, dict[str, str]] | None:
        """Run one chat completion: (status, JSON body, extra headers), or None when the server was killed before
        it could reply (the connection is then closed without one)."""
        if not self.arrives(via):
            return None
        messages = body.get("messages") or []
        with self._lock:
            self.requests.append(
                {**{k: v for k, v in body.items() if k != "messages"}, "text": text_of(first_user_content(messages))}
            )
        rejected = sorted(self.reject_params & set(body))
        if rejected:
            message = f"Unsupported parameter: '{rejected[0]}' is not supported with this model."
            return 400, {"error": {"message": message, "type": "invalid_request_error", "code": None}}, {}
        model = body.get("model", "")
        text = text_of(first_user_content(messages))
        key = content_hash(messages)
        directives = dict(DIRECTIVE.findall(text))
        with self._lock:
            injected = self._failures.pop(0) if self._failures else None
            first = injected is None and key not in self._first_seen
            if injected is None:
                self._first_seen.add(key)
        status = injected or (int(directives["status"]) if first and "status" in directives else 200)
        if via == "http":
            extra = float(directives["slow"]) if first and "slow" in directives else 0.0
            time.sleep(self.latency + extra)
            if self.killed:
                return None
        attempt = 1 + sum(m.get("role") == "assistant" for m in messages)
        usage = (0, 0)
        headers: dict[str, str] = {}
        if status == 200:
            with self._lock:
                self._replies[key] += 1
                number = self._replies[key]
            content, refusal, finish = answer(messages, model, number)
            all_text = "\n".join(text_of(m.get("content")) for m in messages)
            usage = (len(all_text) // 4 + 1 + IMAGE_TOKENS * images_in(messages), len(content or refusal) // 4 + 1)
            reply = completion_body(model, content, refusal, finish, usage)
        else:
            reply = error_body(status)
            if status == 429:
                headers = {
                    "retry-after-ms": str(self.retry_after_ms),
                    "Retry-After": str(max(1, self.retry_after_ms // 1000)),
                }
        with self._lock:
            last = text_of([m for m in messages if m.get("role") == "user"][-1]["content"]) if messages else ""
            self.calls.append(Call(key, model, text, last, attempt, status, *usage, time.monotonic(), via))
        return status, reply, headers

    def new_id(self, prefix: str) -> str:
        """A fresh object id."""
        with self._lock:
            return f"{prefix}-{next(self._ids)}"

    def add_file(self, content: bytes, filename: str, purpose: str) -> dict:
        """Store an uploaded (or generated) file; returns its FileObject."""
        file_id = self.new_id("file")
        record = {
            "id": file_id,
            "object": "file",
            "bytes": len(content),
            "created_at": int(time.time()),
            "filename": filename,
            "purpose": purpose,
            "status": "processed",
        }
        with self._lock:
            self.files[file_id] = {"meta": record, "content": content}
        return record

    def create_batch(self, body: dict) -> tuple[int, dict]:
        """Register a batch over an uploaded input file."""
        if body.get("input_file_id") not in self.files:
            return 404, error_body(404)
        batch = {
            "id": self.new_id("batch"),
            "object": "batch",
            "endpoint": body.get("endpoint"),
            "input_file_id": body["input_file_id"],
            "completion_window": body.get("completion_window", "24h"),
            "status": "validating",
            "created_at": int(time.time()),
            "metadata": body.get("metadata"),
            "request_counts": {"total": 0, "completed": 0, "failed": 0},
            "polls": 0,
        }
        with self._lock:
            self.batches[batch["id"]] = batch
        return 200, _public(batch)

    def retrieve_batch(self, batch_id: str) -> tuple[int, dict]:
        """A batch's state; after ``batch_polls`` retrievals it runs every request and completes."""
        with self._lock:
            batch = self.batches.get(batch_id)
            if batch is None:
                return 404, error_body(404)
            batch["polls"] += 1
            run = batch["status"] != "completed" and batch["polls"] > self.batch_polls
            if not run and batch["status"] != "completed":
                batch["status"] = "in_progress"
        if run:
            self._run_batch(batch)
        return 200, _public(batch)

    def _run_batch(self, batch: dict) -> None:
        lines = self.files[batch["input_file_id"]]["content"].decode().splitlines()
        outputs, errors = [], []
        for line in filter(None, lines):
            request = json.loads(line)
            status, reply, _ = self.chat(request["body"], via="batch")
            entry = {
                "id": self.new_id("batch_req"),
                "custom_id": request["custom_id"],
                "response": {"status_code": status, "request_id": self.new_id("req"), "body": reply},
                "error": None,
            }
            (outputs if status == 200 else errors).append(json.dumps(entry))
        batch["output_file_id"] = self.add_file("\n".join(outputs).encode() + b"\n", "output.jsonl", "batch_output")[
            "id"
        ]
        if errors:
            batch["error_file_id"] = self.add_file("\n".join(errors).encode() + b"\n", "errors.jsonl", "batch_output")[
                "id"
            ]
        batch["request_counts"] = {
            "total": len(outputs) + len(errors),
            "completed": len(outputs),
            "failed": len(errors),
        }
        batch["status"] = "completed"
        batch["completed_at"] = int(time.time())


def _public(batch: dict) -> dict:
    return {k: v for k, v in batch.items() if k != "polls"}


class _Server(QuietHTTPServer):
    request_queue_size = 1024

    def __init__(self, address: tuple[str, int], app: OpenAIServer) -> None:
        self.app = app
        super().__init__(address, _Handler)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out as two writes: without this, delayed ACKs add 40 ms
    server: _Server

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base class's name
        pass

    def _send(self, status: int, body: dict | bytes, headers: dict[str, str] | None = None) -> None:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream" if isinstance(body, bytes) else "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def _authorized(self) -> bool:
        app = self.server.app
        token = (self.headers.get("Authorization") or "").removeprefix("Bearer ").strip()
        with app._lock:
            app.tokens.add(token)
        if app.api_key is not None and token != app.api_key:
            self._send(401, error_body(401))
            return False
        return True

    def _body(self) -> bytes:
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        app = self.server.app
        body = self._body()
        if not self._authorized():
            return
        path = self.path.split("?", 1)[0]
        answer = None
        if path == "/v1/chat/completions" and not (app.drop_chat or app.killed):
            answer = app.chat(json.loads(body), via="http")
        if path == "/v1/chat/completions" and answer is None:
            with app._lock:
                app.dropped += 1
            self.close_connection = True
        elif path == "/v1/chat/completions":
            self._send(*answer)
        elif path == "/v1/files":
            form = _multipart(self.headers.get("Content-Type", ""), body)
            self._send(200, app.add_file(form["file"][1], form["file"][0] or "upload", form["purpose"][1].decode()))
        elif path == "/v1/batches":
            self._send(*app.create_batch(json.loads(body)))
        else:
            self._send(404, error_body(404))

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        app = self.server.app
        self._body()
        if app.killed:
            self.close_connection = True
            return
        if not self._authorized():
            return
        parts = self.path.split("?", 1)[0].strip("/").split("/")
        if parts == ["v1", "models"]:
            with app._lock:
                app.probes += 1
            self._send(200, {"object": "list", "data": [{"id": m, "object": "model"} for m in app.models]})
        elif parts == ["v1", "batches"]:
            with app._lock:
                data = [_public(b) for b in app.batches.values()]
            self._send(200, {"object": "list", "data": data[::-1], "has_more": False})
        elif parts[:2] == ["v1", "batches"] and len(parts) == 3:
            self._send(*app.retrieve_batch(parts[2]))
        elif parts[:2] == ["v1", "files"] and len(parts) in (3, 4) and parts[2] in app.files:
            stored = app.files[parts[2]]
            self._send(200, stored["content"] if len(parts) == 4 else stored["meta"])
        else:
            self._send(404, error_body(404))


def _multipart(content_type: str, body: bytes) -> dict[str, tuple[str | None, bytes]]:
    """The fields of a multipart/form-data body: name → (filename, bytes)."""
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        f"Content-Type: {content_type}\r\n\r\n".encode() + body
    )
    return {
        part.get_param("name", header="content-disposition"): (part.get_filename(), part.get_payload(decode=True))
        for part in message.iter_parts()
    }


def main() -> None:
    """Serve in the foreground (for the benchmark); prints the base URL on the first line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latency", type=float, default=0.0, help="seconds per chat completion")
    parser.add_argument("--port", type=int, default=0, help="port (0: a free one)")
    args = parser.parse_args()
    # 64 handler threads share one GIL: a short switch interval keeps a thread whose sleep has ended from waiting
    # up to 5 ms per hand-over, so the simulated latency stays the latency asked for
    sys.setswitchinterval(0.0005)
    with OpenAIServer(latency=args.latency, port=args.port) as server:
        print(server.url, flush=True)
        threading.Event().wait()


if __name__ == "__main__":
    main()
