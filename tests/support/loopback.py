"""The lifecycle the loopback fakes share: bind a port, serve from a daemon thread, stop, and a context manager.

A fake subclasses ``LoopbackServer``, builds its HTTP server (a ``QuietHTTPServer``) in ``_make_server``, names
its thread, and calls ``_init_loopback(host, port)`` from its ``__init__``.
"""

from __future__ import annotations

import sys
import threading
from http.server import ThreadingHTTPServer
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from typing_extensions import Self


class QuietHTTPServer(ThreadingHTTPServer):
    """A threading HTTP server whose handler threads are daemons and that ignores clients hanging up early."""

    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client hanging up mid-response (a timeout, a range reader closing early) is not worth a traceback."""
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class LoopbackServer:
    """A fake service on a loopback port, served from a daemon thread; a context manager that starts and stops it."""

    thread_name: ClassVar[str]
    url_path: ClassVar[str] = ""
    """Appended to ``http://host:port`` in ``url``."""

    def _make_server(self, address: tuple[str, int]) -> ThreadingHTTPServer:
        """The HTTP server that answers for this fake, bound to ``address``."""
        raise NotImplementedError

    def _init_loopback(self, host: str, port: int) -> None:
        self._address = (host, port)
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """The base URL clients are given."""
        if self._httpd is None:
            raise RuntimeError(f"{type(self).__name__} is not running: call start() or use it as a context manager")
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}{self.url_path}"

    def start(self) -> Self:
        """Bind the port and serve from a daemon thread."""
        if self._httpd is None:
            self._httpd = self._make_server(self._address)
            self._thread = threading.Thread(
                target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, name=self.thread_name, daemon=True
            )
            self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and release the port."""
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            if self._thread is not None:
                self._thread.join()
            self._httpd = self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
