"""Prometheus exposition (controller.metrics): families with HELP and TYPE,
counters and gauges, label escaping, histogram buckets, the text as
prometheus_client writes it, and the HTTP server (/metrics, 404 elsewhere,
500 on a failed render, collect on scrape, publish)."""

from __future__ import annotations

import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator

import pytest
from prometheus_client.parser import text_string_to_metric_families

from controller.metrics import Exposition, Histogram, MetricsServer

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
TIMEOUT = 5


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of ``text`` as a Prometheus parser reads it."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


# --- families, counters and gauges ------------------------------------------------------


def test_the_text_of_a_small_exposition() -> None:
    ex = Exposition()
    ex.add("breakwater_packets_total", "counter", "Packets by data-plane action.", 12,
           {"interface": "eth0", "action": "drop"})
    ex.add("breakwater_attacks_active", "gauge", "Attacks the detector holds active.", 0.5)
    ex.family("breakwater_rule_packets_total", "counter", "Packets matched per rule.")
    assert ex.text() == (
        "# HELP breakwater_packets_total Packets by data-plane action.\n"
        "# TYPE breakwater_packets_total counter\n"
        'breakwater_packets_total{action="drop",interface="eth0"} 12.0\n'
        "# HELP breakwater_attacks_active Attacks the detector holds active.\n"
        "# TYPE breakwater_attacks_active gauge\n"
        "breakwater_attacks_active 0.5\n"
        "# HELP breakwater_rule_packets_total Packets matched per rule.\n"
        "# TYPE breakwater_rule_packets_total counter\n")


def test_families_in_the_order_first_named_each_with_its_samples() -> None:
    ex = Exposition()
    for iface in ("eth0", "eth1"):  # as the agent adds them: interface by interface
        ex.add("a_total", "counter", "A.", 1, {"interface": iface})
        ex.add("b", "gauge", "B.", 2, {"interface": iface})
    lines = ex.text().splitlines()
    assert lines == ["# HELP a_total A.", "# TYPE a_total counter",
                     'a_total{interface="eth0"} 1.0', 'a_total{interface="eth1"} 1.0',
                     "# HELP b B.", "# TYPE b gauge", 'b{interface="eth0"} 2.0', 'b{interface="eth1"} 2.0']
    assert list(ex.names()) == ["a_total", "b"]


def test_a_declared_family_shows_once_with_its_samples() -> None:
    ex = Exposition()
    ex.family("x_total", "counter", "X.")
    ex.add("x_total", "counter", "X.", 3, {"rule": "r1"})
    text = ex.text()
    assert text.count("# TYPE x_total counter") == 1 and text.count("# HELP x_total X.") == 1
    assert _samples(text) == {("x_total", (("rule", "r1"),)): 3.0}


def test_counters_and_gauges_keep_their_names_and_types() -> None:
    ex = Exposition()
    ex.add("breakwater_rule_applies_total", "counter", "Rule sets swapped in.", 7)
    ex.add("breakwater_map_fill_ratio", "gauge", "Entries / capacity.", 0.25, {"map": "deny_v4"})
    fams = {f.name: f.type for f in text_string_to_metric_families(ex.text())}
    # the parser names a counter family without _total; its samples keep it
    assert fams == {"breakwater_rule_applies": "counter", "breakwater_map_fill_ratio": "gauge"}
    assert _samples(ex.text()) == {("breakwater_rule_applies_total", ()): 7.0,
                                   ("breakwater_map_fill_ratio", (("map", "deny_v4"),)): 0.25}


def test_a_counter_without_total_and_an_unknown_kind_are_refused() -> None:
    ex = Exposition()
    with pytest.raises(ValueError, match="_total"):
        ex.add("breakwater_applies", "counter", "Applies.", 1)
    with pytest.raises(ValueError, match="summary"):
        ex.family("breakwater_x", "summary", "X.")
    assert list(ex.names()) == []


def test_values_are_exact() -> None:
    ex = Exposition()
    values = {"big": 2**40 + 1, "millions": 1_234_567, "zero": 0, "fraction": 0.1, "small": 1e-9,
              "negative": -3}
    for name, v in values.items():
        ex.add(name, "gauge", "A value.", v)
    assert _samples(ex.text()) == {(name, ()): float(v) for name, v in values.items()}


# --- labels -----------------------------------------------------------------------------


def test_label_values_are_escaped_and_read_back_whole() -> None:
    tricky = 'a "quoted" \\ back\nslash'
    ex = Exposition()
    ex.add("breakwater_rule_packets_total", "counter", "Packets.", 1, {"rule": tricky})
    text = ex.text()
    assert 'rule="a \\"quoted\\" \\\\ back\\nslash"' in text
    assert len(text.splitlines()) == 3  # the newline did not break the line
    assert _samples(text) == {("breakwater_rule_packets_total", (("rule", tricky),)): 1.0}


def test_help_text_is_escaped() -> None:
    ex = Exposition()
    ex.add("g", "gauge", "two\nlines \\ here", 1)
    assert "# HELP g two\\nlines \\\\ here\n" in ex.text()
    assert next(iter(text_string_to_metric_families(ex.text()))).documentation == "two\nlines \\ here"


def test_label_values_that_are_not_strings_are_written_as_strings() -> None:
    ex = Exposition()
    ex.add("g", "gauge", "G.", 1, {"slot": 3, "empty": ""})  # type: ignore[dict-item]
    assert 'g{empty="",slot="3"} 1.0' in ex.text()


# --- histograms -------------------------------------------------------------------------


def test_histogram_buckets_are_cumulative_with_inf_sum_and_count() -> None:
    hist = Histogram(buckets=(0.01, 0.1, 1.0))
    for v in (0.005, 0.01, 0.05, 0.5, 3.0):
        hist.observe(v)
    assert hist.counts == [2, 3, 4] and hist.n == 5 and hist.total == pytest.approx(3.565)
    ex = Exposition()
    ex.histogram("breakwater_harvest_duration_seconds", "Harvests.", hist, {"interface": "eth0"})
    lines = ex.text().splitlines()
    assert lines == [
        "# HELP breakwater_harvest_duration_seconds Harvests.",
        "# TYPE breakwater_harvest_duration_seconds histogram",
        'breakwater_harvest_duration_seconds_bucket{interface="eth0",le="0.01"} 2.0',
        'breakwater_harvest_duration_seconds_bucket{interface="eth0",le="0.1"} 3.0',
        'breakwater_harvest_duration_seconds_bucket{interface="eth0",le="1"} 4.0',  # "1" as before
        'breakwater_harvest_duration_seconds_bucket{interface="eth0",le="+Inf"} 5.0',
        f'breakwater_harvest_duration_seconds_sum{{interface="eth0"}} {hist.total!r}',
        'breakwater_harvest_duration_seconds_count{interface="eth0"} 5.0',
    ]
    (fam,) = text_string_to_metric_families(ex.text())
    assert fam.type == "histogram"


def test_histograms_of_two_interfaces_share_one_family() -> None:
    ex = Exposition()
    for iface in ("eth0", "eth1"):
        ex.histogram("loop_seconds", "Loops.", Histogram(), {"interface": iface})
    text = ex.text()
    assert text.count("# TYPE loop_seconds histogram") == 1
    assert 'loop_seconds_bucket{interface="eth1",le="0.0025"} 0.0' in text
    assert 'loop_seconds_count{interface="eth1"} 0.0' in text
    # the default buckets, as the agent's duration histograms have always had them
    les = [s.labels["le"] for f in text_string_to_metric_families(text) for s in f.samples
           if s.name == "loop_seconds_bucket" and s.labels["interface"] == "eth0"]
    assert les == ["0.001", "0.0025", "0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1", "2.5",
                   "+Inf"]


def test_an_empty_histogram_without_labels() -> None:
    ex = Exposition()
    ex.histogram("rt_seconds", "Round trips.", Histogram(buckets=(0.5,)))
    assert ex.text().splitlines()[2:] == ['rt_seconds_bucket{le="0.5"} 0.0',
                                          'rt_seconds_bucket{le="+Inf"} 0.0',
                                          "rt_seconds_sum 0.0", "rt_seconds_count 0.0"]


# --- the server -------------------------------------------------------------------------


def _get(server: MetricsServer, path: str) -> tuple[int, str, str]:
    host, port = server.address
    host = f"[{host}]" if ":" in host else host
    try:
        with urllib.request.urlopen(f"http://{host}:{port}{path}", timeout=TIMEOUT) as resp:
            return resp.status, resp.headers["Content-Type"], resp.read().decode()
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, exc.headers["Content-Type"], exc.read().decode()


@pytest.fixture
def serve() -> Iterator[Callable[..., MetricsServer]]:
    servers: list[MetricsServer] = []

    def make(render: Callable[[], str] | None = None, host: str = "127.0.0.1") -> MetricsServer:
        server = MetricsServer(host, 0, render=render)
        servers.append(server)
        server.start()
        return server

    yield make
    for server in servers:
        server.close()


def test_metrics_with_the_text_format_content_type(serve: Callable[..., MetricsServer]) -> None:
    ex = Exposition()
    ex.add("up_total", "counter", "Up.", 1)
    server = serve(ex.text)
    for path in ("/metrics", "/", "/metrics?name[]=up_total"):
        status, ctype, body = _get(server, path)
        assert (status, ctype, body) == (200, CONTENT_TYPE, ex.text()), path


def test_anything_but_metrics_is_404(serve: Callable[..., MetricsServer]) -> None:
    server = serve(lambda: "x 1\n")
    for path in ("/favicon.ico", "/metrics/extra", "/healthz"):
        status, _, body = _get(server, path)
        assert status == 404 and "only /metrics here" in body, path


def test_each_scrape_renders_anew(serve: Callable[..., MetricsServer]) -> None:
    calls: list[int] = []

    def render() -> str:
        calls.append(1)
        ex = Exposition()
        ex.add("scrapes_total", "counter", "Scrapes.", len(calls))
        return ex.text()

    server = serve(render)
    assert calls == []  # nothing is collected until a scrape asks
    assert "scrapes_total 1.0" in _get(server, "/metrics")[2]
    assert "scrapes_total 2.0" in _get(server, "/metrics")[2]


def test_a_failing_render_answers_500_and_the_server_goes_on(serve: Callable[..., MetricsServer]) -> None:
    fail = [True]

    def render() -> str:
        if fail[0]:
            raise RuntimeError("map gone")
        return "ok 1\n"

    server = serve(render)
    status, _, body = _get(server, "/metrics")
    assert status == 500 and "map gone" in body
    fail[0] = False
    assert _get(server, "/metrics")[:1] == (200,)


def test_one_render_at_a_time(serve: Callable[..., MetricsServer]) -> None:
    inside, most = [0], [0]
    lock = threading.Lock()

    def render() -> str:
        with lock:
            inside[0] += 1
            most[0] = max(most[0], inside[0])
        time.sleep(0.02)
        with lock:
            inside[0] -= 1
        return "x 1\n"

    server = serve(render)
    results: list[int] = []
    threads = [threading.Thread(target=lambda: results.append(_get(server, "/metrics")[0])) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(TIMEOUT)
    assert results == [200] * 6 and most[0] == 1


def test_published_text(serve: Callable[..., MetricsServer]) -> None:
    server = serve()
    assert _get(server, "/metrics")[1:] == (CONTENT_TYPE, "# no interval finished yet\n")
    ex = Exposition()
    ex.add("breakwater_controller_rule_version", "gauge", "The version.", 4)
    server.publish(ex.text())
    assert _get(server, "/metrics")[2] == ex.text()


def test_a_busy_port_fails_in_the_constructor(serve: Callable[..., MetricsServer]) -> None:
    server = serve()
    with pytest.raises(OSError):
        MetricsServer(*server.address)


def test_ipv6(serve: Callable[..., MetricsServer]) -> None:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback")
    server = serve(lambda: "x 1\n", host="::1")
    assert _get(server, "/metrics")[:1] == (200,)


def test_close_frees_the_port() -> None:
    server = MetricsServer("127.0.0.1", 0)
    server.start()
    address = server.address
    server.close()
    again = MetricsServer(*address)
    again.close()
