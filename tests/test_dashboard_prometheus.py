"""deploy/grafana/virtwire-dashboard.json's PromQL, run on a real Prometheus (Debian's
prometheus, 2.42): the default LAN comes up with metrics, pings, and a Prometheus
scraping its services every second answers every panel's expression (instant and
range queries) and has the metrics and labels the templating variables read.

tests/test_grafana_dashboard.py checks the names statically; this checks that
Prometheus accepts the expressions and that those which must show this traffic do.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_grafana_dashboard import DASHBOARD
from test_metrics import free_port, free_port_range

from support.need import need
from support.procs import VIRTWIRE

pytestmark = pytest.mark.timeout(150)

ROOT = Path(__file__).resolve().parent.parent
PROMETHEUS = "/usr/bin/prometheus"
LAN = "dashlan"
#: Grafana's $__rate_interval is at least four scrape intervals; 15 s covers 1 s ones.
RATE_INTERVAL = "15s"
#: Panels whose every expression must return a series for a LAN that pinged (the
#: others, drops and Capture's, have none without drops).
MUST_HAVE_DATA = {
    "Frames/s per NetClient", "Mbit/s per NetClient", "Link up", "e1000 interrupts/s",
    "RPC latency p50 / p99", "RPCs/s by code", "Queue lengths",
    "DMA bytes/s: shared memory vs RPC", "DMA operations/s: shared memory vs RPC",
    "e1000 statistics registers/s",
}


def panel_targets(dashboard: dict[str, Any]) -> Iterator[tuple[str, str, str]]:
    """(panel title, expression, legend) of every panel target, rows' panels included."""
    def panels(items: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        for p in items:
            yield p
            yield from panels(p.get("panels", []))
    for panel in panels(dashboard["panels"]):
        for target in panel.get("targets", []):
            yield panel["title"], target["expr"], target.get("legendFormat", "")


def substitute(expr: str, variables: dict[str, str]) -> str:
    """Grafana's variables replaced as it would: $__rate_interval, then ours."""
    expr = expr.replace("$__rate_interval", RATE_INTERVAL)
    for name, value in sorted(variables.items(), key=lambda kv: -len(kv[0])):
        expr = expr.replace("${" + name + "}", value).replace("$" + name, value)
    assert "$" not in expr, f"a variable left unsubstituted: {expr}"
    return expr


def virtwire(*args: str, env: dict[str, str], check: bool = True) -> str:
    out = subprocess.run([*VIRTWIRE, *args], capture_output=True, text=True, timeout=60,
                         env=env)
    if check:
        assert out.returncode == 0, (args, out.stdout, out.stderr)
    return out.stdout


class Prometheus:
    """A prometheus process on 127.0.0.1 scraping ``targets`` every second."""

    def __init__(self, tmp: Path, targets: list[str]) -> None:
        config = tmp / "prometheus.yml"
        config.write_text(json.dumps({  # YAML is a superset of JSON
            "global": {"scrape_interval": "1s", "scrape_timeout": "1s",
                       "evaluation_interval": "1s"},
            "scrape_configs": [{"job_name": "virtwire",
                                "static_configs": [{"targets": targets}]}],
        }))
        self.url = f"http://127.0.0.1:{free_port()}"
        self.log = tmp / "prometheus.log"
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(
                [PROMETHEUS, f"--config.file={config}",
                 f"--storage.tsdb.path={tmp / 'tsdb'}",
                 f"--web.listen-address={self.url.removeprefix('http://')}"],
                stdout=log, stderr=subprocess.STDOUT, cwd=tmp)

    def api(self, path: str, **params: str) -> Any:
        """GET /api/v1/PATH?params; the JSON answer, whose status must be success."""
        url = f"{self.url}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        try:
            with urllib.request.urlopen(url, timeout=10) as resp:
                body = json.loads(resp.read())
        except urllib.error.HTTPError as e:  # 400/422: a bad query, with its error
            body = json.loads(e.read())
        assert body["status"] == "success", (path, params, body)
        return body["data"]

    def wait_ready(self, deadline: float) -> None:
        while True:
            assert self.proc.poll() is None, self.log.read_text()
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as resp:
                    if resp.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError):
                pass
            assert time.monotonic() < deadline, "prometheus not ready: " + self.log.read_text()
            time.sleep(0.2)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)


def wait_for(predicate: Any, deadline: float, what: str) -> None:
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.5)


def test_dashboard_queries_run_on_prometheus(tmp_path: Path) -> None:
    need(os.access(PROMETHEUS, os.X_OK) and shutil.which(PROMETHEUS) is not None,
         f"{PROMETHEUS} not installed (Debian package prometheus)")
    deadline = time.monotonic() + 110
    env = {**os.environ, "VIRTWIRE_STATE_DIR": str(tmp_path / "state")}
    lan_file = tmp_path / "lan.yaml"
    lan_file.write_text((ROOT / "examples" / "default.yaml").read_text()
                        .replace("name: default", f"name: {LAN}")
                        .replace("127.0.0.1:10555", f"127.0.0.1:{free_port()}"))
    dashboard = json.loads(DASHBOARD.read_text())
    prometheus: Prometheus | None = None
    try:
        virtwire("up", str(lan_file), "--detach", "--metrics", str(free_port_range(12)),
                 env=env)
        status = json.loads(virtwire("status", LAN, "--json", env=env))
        targets = [s["metrics"] for n in status["nodes"] for s in n["services"]
                   if s["metrics"]]
        assert len(targets) == 8, status
        (tmp_path / "prom").mkdir()
        prometheus = Prometheus(tmp_path / "prom", targets)
        prom = prometheus
        prom.wait_ready(deadline)

        def all_up() -> bool:
            active = prom.api("targets")["activeTargets"]
            return (sorted(t["labels"]["instance"] for t in active) == sorted(targets)
                    and all(t["health"] == "up" for t in active))
        wait_for(all_up, deadline, "every target up")

        # Two pings a few scrapes apart: a series a first RPC creates has no rate() until
        # it moves again (the GuestService/Ping latency's), so the second one shows.
        every = {"lan": LAN, "service": ".*", "netclient": ".*"}
        exprs = {title: substitute(expr, every) for title, expr, _ in panel_targets(dashboard)
                 if title in ("Frames/s per NetClient", "Mbit/s per NetClient",
                              "e1000 interrupts/s")}
        exprs["RPC latency"] = substitute(next(e for t, e, _ in panel_targets(dashboard)
                                               if t == "RPC latency p50 / p99"), every)
        for _ in range(2):
            virtwire("ping", "vm1", "vm2", "--lan", LAN, "-c", "5", "-i", "0.1", env=env)
            time.sleep(3)

        def moving(query: str) -> bool:
            """Some series of ``query`` is a number above zero (not NaN)."""
            return any(float(r["value"][1]) > 0  # NaN > 0 is False
                       for r in prom.api("query", query=query)["result"])
        for title, query in exprs.items():
            wait_for(lambda q=query: moving(q), deadline, f"{title} to show the ping ({query})")

        now = time.time()
        empty: list[str] = []
        for variables in ({"lan": LAN, "service": ".*", "netclient": ".*"},
                          {"lan": ".*", "service": ".*", "netclient": ".*"}):
            for title, expr, legend in panel_targets(dashboard):
                query = substitute(expr, variables)
                instant = prom.api("query", query=query, time=f"{now:.3f}")
                ranged = prom.api("query_range", query=query, start=f"{now - 30:.3f}",
                                  end=f"{now:.3f}", step="1")
                assert instant["resultType"] == "vector", (query, instant)
                assert ranged["resultType"] == "matrix", (query, ranged)
                if title in MUST_HAVE_DATA and not (instant["result"] and ranged["result"]):
                    empty.append(f"{title}: {query}")
                # The legend's {{label}}s are labels the aggregation kept.
                for series in instant["result"]:
                    for label in re.findall(r"{{\s*(\w+)\s*}}", legend):
                        assert label in series["metric"], (title, legend, series)
        assert not empty, "no series for: " + "; ".join(empty)
        # The templating variables: label_values(METRIC{...}, LABEL) is Grafana's; the
        # series it reads exist here and carry the label, with the LAN among the values.
        for var in dashboard["templating"]["list"]:
            if var["type"] != "query":
                continue
            text = var["query"]["query"]
            assert text.startswith("label_values(") and text.endswith(")"), text
            selector, label = (p.strip() for p in text[len("label_values("):-1].rsplit(",", 1))
            selector = substitute(selector, {"lan": LAN, "service": ".*"})
            series = prom.api("series", **{"match[]": selector, "start": f"{now - 30:.3f}",
                                           "end": f"{now:.3f}"})
            assert series, f"variable {var['name']}: no series for {selector}"
            assert all(label in s for s in series), (var["name"], label, series[:3])
            values = {s[label] for s in series}
            assert values <= set(prom.api(f"label/{label}/values")), values
            if label == "lan":
                assert values == {LAN}, values
    finally:
        if prometheus is not None:
            prometheus.stop()
        virtwire("down", LAN, env=env, check=False)
