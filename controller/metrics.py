"""Prometheus metrics of the agent and the controller: families built for
``prometheus_client``, written in its text format, served on ``/metrics``.

Who renders when. The agent collects on scrape: :class:`MetricsServer`
calls its ``render`` (``Agent.render_metrics``) on the metrics thread for
each scrape, one render at a time. The counters it shows come from the
detection loop's one read of the data plane per interval (the harvest), so a
scrape reads only the maps' fill, and shows counters up to one interval
old. The controller renders after each expiry sweep and
:meth:`MetricsServer.publish` swaps the text a scrape gets.

The text is ``prometheus_client``'s: :class:`Exposition` is a custom
collector (``collect()`` yields its ``CounterMetricFamily``,
``GaugeMetricFamily`` and ``HistogramMetricFamily``) written by
:func:`prometheus_client.generate_latest`, with the library's escaping of
label values and help text. Metric names, types, label names and label
values are those of the hand-written format it replaced; what a Prometheus
parser does not see changed: labels are sorted by name, values are written
as floats (``1.0``, and ``1.234567e+06`` from 10^6 up, exact), HELP text is
escaped. Histogram ``le`` labels keep their strings (``le="1"``, not
``"1.0"``: another series to Prometheus before 3.0), which is why
:class:`Histogram` stays ours rather than ``prometheus_client.Histogram``.
The server stays stdlib ``http.server`` (the library's answers on every
path, negotiates OpenMetrics and binds as it starts): ``/metrics`` and ``/``
only, 404 elsewhere, 500 with the error when a render fails, and bound in
the constructor, so a busy port fails before anything starts.

What it costs (``bench/metrics.py``: the agent's metric set for 2
interfaces with 10 rules each, 326 samples in 28 families; CPU time, median
of 500 renders, three runs on the 2-core development VM under load, Python
3.11, prometheus_client 0.26): 1.81-1.84 ms a render through the library
(0.39-0.41 ms building the families, 1.40-1.42 ms ``generate_latest``)
against 0.62-0.64 ms for the hand-written format, about 1.2 ms more. The
agent's whole scrape of one real interface (``bench/agent.py``
``loop_cpu_10k``, ``scrape_cpu_seconds``, map reads included; two runs
before, three after, with the machine busy) went from 6.5-7.1 ms to
8.3-9.2 ms. At Prometheus' default 15 s scrape that is 0.06%
of a core, on the metrics thread, against the 5% the agent's loop may take;
scraped every second, 0.9%, most of it the map reads. The cost grows with
the samples (8 interfaces with 100 rules each, 4,148 samples: 23-25 ms
against 7.1-7.4 ms), still 0.2% of a core at a 15 s scrape. It is affordable:
``prometheus_client`` it is.
"""

from __future__ import annotations

import http.server
import logging
import socket
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from prometheus_client import generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

__all__ = ["MAX_SCRAPERS", "SCRAPE_READ_TIMEOUT", "Exposition", "Histogram", "MetricsServer"]

LOGGER = logging.getLogger("breakwater.metrics")

# The Prometheus text format, version 0.0.4: what generate_latest writes.
CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"
# Detection-loop and harvest durations, seconds.
DURATION_BUCKETS: Final = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
# The paths a scrape may ask for; anything else is a 404.
MAX_SCRAPERS: Final = 8
"""Connections the metrics server serves at once; more are closed at once
(a Prometheus scrapes one at a time: a crowd is a client holding sockets)."""
SCRAPE_READ_TIMEOUT: Final = 5.0
"""Seconds a connection may take to send its request before it is closed
(a half-sent request otherwise holds a thread for ever)."""
METRICS_PATHS: Final = frozenset({"/metrics", "/"})
# Served until the controller publishes its first text.
NOTHING_YET: Final = "# no interval finished yet\n"
# The family class of each metric kind (a counter's name must end in _total:
# CounterMetricFamily drops the suffix and the text format puts it back).
FAMILIES: Final[Mapping[str, Callable[[str, str], Metric]]] = {
    "counter": CounterMetricFamily, "gauge": GaugeMetricFamily, "histogram": HistogramMetricFamily}
COUNTER_SUFFIX: Final = "_total"

Labels = Mapping[str, str]


def _num(value: float) -> str:
    """An ``le`` bound as the hand-written format wrote it (``1``, ``0.25``)."""
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


class Exposition(Collector):
    """One exposition: families in the order first named, each with its
    samples; a ``prometheus_client`` collector, written by :meth:`text`."""

    def __init__(self) -> None:
        self._families: dict[str, Metric] = {}

    def _family(self, name: str, kind: str, help_text: str) -> Metric:
        fam = self._families.get(name)
        if fam is None:
            make = FAMILIES.get(kind)
            if make is None:
                raise ValueError(f"{name}: metric kind {kind!r} is not one of {', '.join(FAMILIES)}")
            if kind == "counter" and not name.endswith(COUNTER_SUFFIX):
                raise ValueError(f"{name}: a counter's name ends in {COUNTER_SUFFIX}")
            fam = self._families[name] = make(name, help_text)
        return fam

    def add(self, name: str, kind: str, help_text: str, value: float, labels: Labels | None = None) -> None:
        self._family(name, kind, help_text).add_sample(
            name, {k: str(v) for k, v in labels.items()} if labels else {}, value)

    def family(self, name: str, kind: str, help_text: str) -> None:
        """Declare a family that may have no samples (so HELP/TYPE still show)."""
        self._family(name, kind, help_text)

    def histogram(self, name: str, help_text: str, hist: Histogram, labels: Labels | None = None) -> None:
        fam = self._family(name, "histogram", help_text)
        base = {k: str(v) for k, v in labels.items()} if labels else {}
        bucket = name + "_bucket"
        for le, count in zip(hist.buckets, hist.counts, strict=True):
            fam.add_sample(bucket, {**base, "le": _num(le)}, count)
        fam.add_sample(bucket, {**base, "le": "+Inf"}, hist.n)
        fam.add_sample(name + "_sum", base, hist.total)
        fam.add_sample(name + "_count", base, hist.n)

    def collect(self) -> Iterator[Metric]:
        return iter(self._families.values())

    def text(self) -> str:
        return generate_latest(self).decode()

    def names(self) -> Iterable[str]:
        return self._families.keys()


class MetricsServer:
    """``GET /metrics`` on a daemon thread. With ``render``, each scrape
    calls it for the text (collect on scrape, as Prometheus expects: a
    daemon's loop then pays nothing for its metrics between scrapes);
    otherwise :meth:`publish` swaps the text served. A failing ``render``
    answers 500 with the error, and the daemon goes on."""

    def __init__(self, host: str, port: int, render: Callable[[], str] | None = None) -> None:
        self._text = NOTHING_YET
        self._render = render
        self._render_lock = threading.Lock()
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            timeout = SCRAPE_READ_TIMEOUT  # the socket's: a slow request line or header is cut off

            def do_GET(self) -> None:
                if self.path.split("?", 1)[0] not in METRICS_PATHS:
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

        self.refused = 0
        slots = threading.BoundedSemaphore(MAX_SCRAPERS)

        class Bounded(http.server.ThreadingHTTPServer):
            """At most MAX_SCRAPERS connections served at once; the rest closed unread."""

            address_family = socket.AF_INET6 if ":" in host else socket.AF_INET

            def process_request(self, request: Any, client_address: Any) -> None:
                if not slots.acquire(blocking=False):
                    server.refused += 1
                    self.shutdown_request(request)
                    return
                try:
                    super().process_request(request, client_address)
                except BaseException:
                    slots.release()
                    raise

            def process_request_thread(self, request: Any, client_address: Any) -> None:
                try:
                    super().process_request_thread(request, client_address)
                finally:
                    slots.release()

        self._httpd = Bounded((host, port), Handler)
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
        if self._thread.ident is not None:  # shutdown() waits for serve_forever: only once started
            self._httpd.shutdown()
        self._httpd.server_close()
