"""Prometheus text metrics for the agent, served by stdlib ``http.server``.

The agent's loop renders the whole exposition once per interval
(:class:`Exposition`) and the HTTP thread only hands out the latest text,
so a scrape never touches a BPF map or the detector.
"""

from __future__ import annotations

import http.server
import logging
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final

__all__ = ["Exposition", "Histogram", "MetricsServer"]

LOGGER = logging.getLogger("breakwater.metrics")

CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"
# Detection-loop and harvest durations, seconds.
DURATION_BUCKETS: Final = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)

Labels = Mapping[str, str]


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(labels: Labels) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{k}="{_escape(str(v))}"' for k, v in labels.items()) + "}"


def _num(value: float) -> str:
    if value == int(value) and abs(value) < 1e15:
        return str(int(value))
    return repr(float(value))


@dataclass
class Histogram:
    """A cumulative Prometheus histogram kept by the loop."""

    buckets: Sequence[float] = DURATION_BUCKETS
    counts: list[int] = field(default_factory=list)
    total: float = 0.0
    n: int = 0

    def __post_init__(self) -> None:
        self.counts = [0] * len(self.buckets)

    def observe(self, value: float) -> None:
        self.n += 1
        self.total += value
        for i, le in enumerate(self.buckets):
            if value <= le:
                self.counts[i] += 1


class Exposition:
    """Builds one exposition text: families with HELP and TYPE, then samples."""

    def __init__(self) -> None:
        self._families: dict[str, tuple[str, str, list[str]]] = {}

    def add(self, name: str, kind: str, help_text: str, value: float, labels: Labels | None = None) -> None:
        fam = self._families.setdefault(name, (kind, help_text, []))
        fam[2].append(f"{name}{_labels(labels or {})} {_num(value)}")

    def family(self, name: str, kind: str, help_text: str) -> None:
        """Declare a family that may have no samples (so HELP/TYPE still show)."""
        self._families.setdefault(name, (kind, help_text, []))

    def histogram(self, name: str, help_text: str, hist: Histogram, labels: Labels | None = None) -> None:
        fam = self._families.setdefault(name, ("histogram", help_text, []))
        base = dict(labels or {})
        for le, count in zip(hist.buckets, hist.counts, strict=True):
            fam[2].append(f"{name}_bucket{_labels({**base, 'le': _num(le)})} {count}")
        fam[2].append(f"{name}_bucket{_labels({**base, 'le': '+Inf'})} {hist.n}")
        fam[2].append(f"{name}_sum{_labels(base)} {_num(hist.total)}")
        fam[2].append(f"{name}_count{_labels(base)} {hist.n}")

    def text(self) -> str:
        out: list[str] = []
        for name, (kind, help_text, samples) in self._families.items():
            out.append(f"# HELP {name} {help_text}")
            out.append(f"# TYPE {name} {kind}")
            out.extend(samples)
        return "\n".join(out) + "\n"

    def names(self) -> Iterable[str]:
        return self._families.keys()


class MetricsServer:
    """``GET /metrics`` on a daemon thread. With ``render``, each scrape
    calls it for the text (collect on scrape, as Prometheus expects: a
    daemon's loop then pays nothing for its metrics between scrapes);
    otherwise :meth:`publish` swaps the text served. A failing ``render``
    answers 500 with the error, and the daemon goes on."""

    def __init__(self, host: str, port: int, render: Callable[[], str] | None = None) -> None:
        self._text = "# no interval finished yet\n"
        self._render = render
        self._render_lock = threading.Lock()
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path.split("?", 1)[0] not in ("/metrics", "/"):
                    self.send_error(404, "only /metrics here")
                    return
                try:
                    body = server.text().encode()
                except Exception as exc:  # a scrape must never take the daemon down
                    LOGGER.warning("metrics not rendered: %s", exc, extra={"event": "metrics_failed"})
                    self.send_error(500, f"metrics not rendered: {exc}")
                    return
                self.send_response(200)
                self.send_header("Content-Type", CONTENT_TYPE)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                LOGGER.debug("metrics: " + format, *args)

        cls = http.server.ThreadingHTTPServer
        if ":" in host:
            class V6Server(http.server.ThreadingHTTPServer):
                address_family = __import__("socket").AF_INET6
            cls = V6Server
        self._httpd = cls((host, port), Handler)
        self._httpd.daemon_threads = True
        self.address: tuple[str, int] = (host, int(self._httpd.server_address[1]))
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="metrics", daemon=True)

    def start(self) -> None:
        self._thread.start()
        LOGGER.info("metrics on http://%s:%d/metrics", *self.address,
                    extra={"event": "metrics_listening", "address": f"{self.address[0]}:{self.address[1]}"})

    def publish(self, text: str) -> None:
        self._text = text

    def text(self) -> str:
        """What a scrape gets now."""
        if self._render is None:
            return self._text
        with self._render_lock:  # one render at a time, whatever the scrapers do
            return self._render()

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
