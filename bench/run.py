"""fieldlink benchmark: real MQTT in, real WebSocket clients out, on this machine.

    python bench/run.py [a|b|c|selfcheck|fleet|commands|all] [--quick]
                        [--backend sqlite|pg|pg2] [--protocol native|socketio] [--rules N]
                        [--rates R1,R2,...]

Starts its own mosquitto and `fieldlink serve` on free ports, a client fleet
(bench/wsclients.py) and a load generator (bench/loadgen.py) as separate processes, and
reports end-to-end latency (publish -> client receive), deliveries/s, losses, and the hubs'
peak RSS. Backends: ``sqlite`` (one instance, SQLite in a temporary directory), ``pg`` (one
instance on a private PostgreSQL with default durability + a private Redis), ``pg2`` (two
instances sharing the ingest through $share and the bus through Redis; the client fleet is
split between them). ``fleet`` times the 24-hour fleet chart query (bench/fleet_query.py);
``commands`` times command round trips (bench/commands.py).
Results: a table on stdout and JSON in bench/results/.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
BENCH = ROOT / "bench"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"port {port} not listening")


class Stack:
    """mosquitto + hub(s) (+ PostgreSQL and Redis), started fresh for each scenario."""

    backend = "sqlite"
    rules = 0  # alert rules to create before the run (--rules), all watching every device

    def __init__(self) -> None:
        self.tmp = tempfile.TemporaryDirectory(prefix="fieldlink-bench-")
        d = Path(self.tmp.name)
        self.mqtt_port = free_port()
        conf = d / "mosquitto.conf"
        lines = [f"listener {self.mqtt_port} 127.0.0.1", "allow_anonymous true",
                 "max_queued_messages 1000000", "max_inflight_messages 0", "persistence false",
                 "set_tcp_nodelay true"]
        if os.geteuid() == 0:
            lines.append("user root")
        conf.write_text("\n".join(lines) + "\n")
        mosquitto = "/usr/sbin/mosquitto" if os.path.exists("/usr/sbin/mosquitto") else "mosquitto"
        self.broker = subprocess.Popen([mosquitto, "-c", str(conf)], stdout=subprocess.DEVNULL,
                                       stderr=subprocess.DEVNULL)
        wait_port(self.mqtt_port)
        self.pg: Any = None
        self.redis: Any = None
        extra: list[str] = []
        instances = 1
        if self.backend in ("pg", "pg2"):
            sys.path.insert(0, str(ROOT))
            from tests.support.servers import Postgres, Redis

            self.pg = Postgres(durable=True)
            self.pg.start()
            self.redis = Redis(d / "redis")
            self.redis.start()
            extra = ["--database-url", self.pg.url, "--redis-url", self.redis.url]
            if self.backend == "pg2":
                instances = 2
                extra += ["--mqtt-shared-group", "bench"]
        # One secret for every instance, so one admin token works on all of them; no per-user
        # cap and a high message rate, since the whole client fleet is one user.
        extra += ["--jwt-secret", "bench-" + os.urandom(24).hex(), "--ws-max-per-user", "0",
                  "--ws-messages-per-s", "100000"]
        self.http_ports = [free_port() for _ in range(instances)]
        self.http_port = self.http_ports[0]
        self.hubs = [
            subprocess.Popen(
                [PY, "-m", "fieldlink.cli", "serve", "--mqtt-url",
                 f"mqtt://127.0.0.1:{self.mqtt_port}", "--http-port", str(port),
                 "--data-dir", str(d / f"data{i}"), *extra],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT)
            for i, port in enumerate(self.http_ports)
        ]
        self.hub = self.hubs[0]
        for port in self.http_ports:
            wait_port(port, 60)
        self.token = (d / "data0" / "admin.token").read_text().strip()
        self._create_rules()
        self.ws_ports = ",".join(str(p) for p in self.http_ports)
        self.rss_peak = 0
        self._sampling = True
        self._sampler = threading.Thread(target=self._sample, daemon=True)
        self._sampler.start()

    def _sample(self) -> None:
        procs = [psutil.Process(h.pid) for h in self.hubs]
        while self._sampling:
            try:
                self.rss_peak = max(self.rss_peak, max(p.memory_info().rss for p in procs))
            except psutil.Error:
                return
            time.sleep(0.2)

    def _create_rules(self) -> None:
        """``rules`` alert rules over the load generator's metrics (power_kw 3.25, soc 55.5)
        whose thresholds the readings never reach: the steady cost of evaluating them."""
        for i in range(self.rules):
            if i % 2:
                rule = {"metric": "soc", "op": "<", "clear": 20,
                        "levels": [{"name": "warning", "threshold": 10 - i * 0.1}]}
            else:
                rule = {"metric": "power_kw", "op": ">", "clear": 90 + i,
                        "levels": [{"name": "alarm_level_1", "threshold": 100 + i},
                                   {"name": "alarm_level_2", "threshold": 200 + i}]}
            request = urllib.request.Request(
                f"http://127.0.0.1:{self.http_port}/api/alert-rules", data=json.dumps(rule).encode(),
                headers={"Authorization": f"Bearer {self.token}",
                         "Content-Type": "application/json"}, method="POST")
            urllib.request.urlopen(request).read()

    def metrics(self) -> dict[str, float]:
        """Every instance's counters, summed."""
        out: dict[str, float] = {}
        for port in self.http_ports:
            request = urllib.request.Request(f"http://127.0.0.1:{port}/metrics",
                                             headers={"Authorization": f"Bearer {self.token}"})
            text = urllib.request.urlopen(request).read().decode()
            for line in text.splitlines():
                if line.startswith("fieldlink_") and " " in line:
                    name, value = line.rsplit(" ", 1)
                    out[name] = out.get(name, 0.0) + float(value)
        return out

    def hub_cpu_s(self) -> float:
        total = 0.0
        for hub in self.hubs:
            t = psutil.Process(hub.pid).cpu_times()
            total += t.user + t.system
        return total

    def close(self) -> None:
        self._sampling = False
        for proc in (*self.hubs, self.broker):
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self.redis is not None:
            self.redis.stop()
        if self.pg is not None:
            self.pg.remove()
        self.tmp.cleanup()


class Clients:
    protocol = "native"  # or "socketio" (--protocol)

    def __init__(self, stack: Stack, n: int, subscribe: str, latency_clients: int = 50) -> None:
        self.n = n
        self.proc = subprocess.Popen(
            [PY, str(BENCH / "wsclients.py"), "--port", stack.ws_ports, "--token", stack.token,
             "--clients", str(n), "--protocol", self.protocol,
             "--subscribe", subscribe, "--latency-clients", str(latency_clients)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().strip()
        if line != "READY":
            raise RuntimeError(f"client fleet failed to start: {line!r}")

    def ask(self, command: str) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())

    def drain(self, expected: int, timeout: float) -> float:
        """Wait until the fleet has received ``expected`` events; returns the seconds waited."""
        start = time.monotonic()
        while time.monotonic() - start < timeout:
            if self.ask("count")["events"] >= expected:
                break
            time.sleep(0.05)
        return time.monotonic() - start

    def cpu_s(self) -> float:
        t = psutil.Process(self.proc.pid).cpu_times()
        return t.user + t.system

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write("quit\n")
        self.proc.stdin.close()
        self.proc.wait(20)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def publish(stack: Stack, devices: int, rate: float, duration: float, seq_start: int) -> dict[str, Any]:
    out = subprocess.run(
        [PY, str(BENCH / "loadgen.py"), "--port", str(stack.mqtt_port), "--devices", str(devices),
         "--rate", str(rate), "--duration", str(duration), "--seq-start", str(seq_start)],
        capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def caught_up(stack: Stack, sent_total: float, timeout: float) -> tuple[bool, float, dict[str, float]]:
    start = time.monotonic()
    m: dict[str, float] = {}
    while time.monotonic() - start < timeout:
        m = stack.metrics()
        if (m.get("fieldlink_ingest_received_total", 0) >= sent_total
                and m.get("fieldlink_ingest_pending", 1) == 0):
            return True, time.monotonic() - start, m
        time.sleep(0.05)
    return False, time.monotonic() - start, m


def step(stack: Stack, clients: Clients, devices: int, rate: float, duration: float,
         expected_for: Any, sent_before: float) -> dict[str, Any]:
    cpu0, clients_cpu0 = stack.hub_cpu_s(), clients.cpu_s()
    pub = publish(stack, devices, rate, duration, int(sent_before) + 1)
    ok, lag_s, m = caught_up(stack, sent_before + pub["sent"], 30)
    expected = expected_for(pub)
    waited = clients.drain(sum(expected), 10)
    stats = clients.ask("stats")
    cpu = stack.hub_cpu_s() - cpu0
    clients_cpu = clients.cpu_s() - clients_cpu0
    lost = sum(max(0, e - c) for e, c in zip(expected, stats["counts"], strict=True))
    dropped = sum(v for k, v in m.items() if k.startswith("fieldlink_ingest_dropped_total"))
    return {
        "rate_target": rate, "sent": pub["sent"], "publish_rate": pub["rate"],
        "delivered": stats["events"], "expected": sum(expected), "lost": lost,
        "deliveries_per_s": round(stats["events"] / pub["elapsed_s"]),
        "p50_ms": stats["p50_ms"], "p99_ms": stats["p99_ms"], "max_ms": stats["max_ms"],
        "frames": stats["frames"], "clients_closed": stats["closed"],
        "ingest_caught_up": ok, "ingest_lag_s": round(lag_s, 2), "drain_wait_s": round(waited, 2),
        "stored_total": m.get("fieldlink_ingest_stored_total"),
        "received_total": m.get("fieldlink_ingest_received_total"),
        "dropped_total": dropped, "conflated_total": m.get("fieldlink_ws_conflated_total"),
        "slow_disconnects": m.get("fieldlink_ws_slow_disconnects_total"),
        "hub_cpu_s": round(cpu, 2), "clients_cpu_s": round(clients_cpu, 2),
        "hub_rss_peak_mb": round(stack.rss_peak / 2**20, 1),
    }


def scenario_a(quick: bool) -> dict[str, Any]:
    devices, n_clients, rate = 100, 1000, 1000
    duration = 5 if quick else 20
    stack = Stack()
    try:
        clients = Clients(stack, n_clients, f"per-device:{devices}")
        try:
            def expected(pub: dict[str, Any]) -> list[int]:
                per_device = list(pub["per_device"].values())
                return [per_device[i % devices] for i in range(n_clients)]
            result = step(stack, clients, devices, rate, duration, expected, 0)
        finally:
            clients.close()
    finally:
        stack.close()
    return {"scenario": "a", "devices": devices, "clients": n_clients, "duration_s": duration,
            "steps": [result]}


def stepped(name: str, devices: int, n_clients: int, rates: list[float], duration: float,
            stop: Any, latency_clients: int) -> dict[str, Any]:
    stack = Stack()
    steps = []
    try:
        clients = Clients(stack, n_clients, "all", latency_clients)
        try:
            sent = 0.0
            for rate in rates:
                r = step(stack, clients, devices, rate, duration,
                         lambda pub: [pub["sent"]] * n_clients, sent)
                sent += r["sent"]
                steps.append(r)
                print(f"  {name} step {rate:>7.0f}/s: " + summary_line(r), flush=True)
                if stop(r):
                    break
        finally:
            clients.close()
    finally:
        stack.close()
    return {"scenario": name, "devices": devices, "clients": n_clients, "duration_s": duration,
            "latency_clients": latency_clients, "steps": steps}


RATES: list[float] | None = None  # --rates: these steps only, none of them ends the run


def scenario_b(quick: bool) -> dict[str, Any]:
    rates = [100, 300, 500] if quick else [100, 200, 300, 400, 500, 700, 1000, 1500]
    if RATES:
        return stepped("b", 10, 1000, RATES, 4 if quick else 10, lambda r: False,
                       latency_clients=50)
    return stepped("b", 10, 1000, rates, 4 if quick else 10,
                   lambda r: r["lost"] > 0 or (r["p99_ms"] or 0) > 100, latency_clients=50)


def scenario_c(quick: bool) -> dict[str, Any]:
    rates = [5000, 10000, 20000] if quick else [5000, 10000, 15000, 20000, 25000, 30000, 40000]
    # Latency on 2 of the 10 clients; the others count every event exactly without parsing.
    return stepped("c", 1000, 10, rates, 4 if quick else 10,
                   lambda r: (not r["ingest_caught_up"] or r["ingest_lag_s"] > 2 or r["lost"] > 0
                              or r["dropped_total"] > 0),
                   latency_clients=2)


def selfcheck(quick: bool) -> dict[str, Any]:
    """The load generator alone (against a bare mosquitto) and the client fleet alone
    (against bench/blaster.py), so neither is mistaken for the hub's limit."""
    duration = 3 if quick else 8
    out: dict[str, Any] = {"scenario": "selfcheck", "loadgen": [], "clients": []}
    tmp = tempfile.TemporaryDirectory(prefix="fieldlink-selfcheck-")
    port = free_port()
    conf = Path(tmp.name) / "m.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\n"
                    + ("user root\n" if os.geteuid() == 0 else ""))
    broker = subprocess.Popen(["/usr/sbin/mosquitto", "-c", str(conf)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(port)
        for rate in (20000, 50000, 100000):
            r = json.loads(subprocess.run(
                [PY, str(BENCH / "loadgen.py"), "--port", str(port), "--devices", "1000",
                 "--rate", str(rate), "--duration", str(duration)],
                capture_output=True, text=True, check=True).stdout)
            out["loadgen"].append({"target": rate, "achieved": r["rate"]})
            print(f"  loadgen alone: target {rate}/s -> {r['rate']}/s", flush=True)
    finally:
        broker.terminate()
        broker.wait()
        tmp.cleanup()
    for per_client in (300, 600, 1000):
        port = free_port()
        blaster = subprocess.Popen(
            [PY, str(BENCH / "blaster.py"), "--port", str(port), "--clients", "1000",
             "--rate", str(per_client), "--batch", "5", "--duration", str(duration)],
            stdout=subprocess.PIPE, text=True)
        assert blaster.stdout is not None
        blaster.stdout.readline()
        fleet = subprocess.Popen(
            [PY, str(BENCH / "wsclients.py"), "--port", str(port), "--clients", "1000"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert fleet.stdout is not None and fleet.stdin is not None
        fleet.stdout.readline()
        sent = json.loads(blaster.stdout.readline())
        time.sleep(1.0)
        fleet.stdin.write("stats\n")
        fleet.stdin.flush()
        stats = json.loads(fleet.stdout.readline())
        fleet.stdin.write("quit\n")
        fleet.stdin.close()
        fleet.wait(20)
        blaster.wait(20)
        fleet.stdout.close()
        blaster.stdout.close()
        rate = stats["events"] / sent["elapsed_s"]
        out["clients"].append({"offered_per_s": per_client * 1000, "absorbed_per_s": round(rate),
                               "expected": sent["sent_per_client"] * 1000,
                               "received": stats["events"], "p99_ms": stats["p99_ms"]})
        print(f"  client fleet alone: offered {per_client * 1000:,}/s -> absorbed {rate:,.0f}/s "
              f"(p99 {stats['p99_ms']} ms)", flush=True)
    return out


def commands(quick: bool) -> dict[str, Any]:
    """Command round trip (send -> acked) through the hub, sequential and 20 in flight."""
    stack = Stack()
    out: dict[str, Any] = {"scenario": "commands", "runs": []}
    try:
        for concurrency in (1, 20):
            n = 200 if quick else 2000
            r = json.loads(subprocess.run(
                [PY, str(BENCH / "commands.py"), "--http-port", str(stack.http_port),
                 "--token", stack.token,
                 "--mqtt-port", str(stack.mqtt_port), "--commands", str(n),
                 "--concurrency", str(concurrency)],
                capture_output=True, text=True, check=True, cwd=ROOT).stdout)
            out["runs"].append(r)
            print(f"  commands, {concurrency} in flight: {r['per_s']}/s p50 {r['p50_ms']} ms "
                  f"p99 {r['p99_ms']} ms max {r['max_ms']} ms {r['outcomes']}", flush=True)
    finally:
        stack.close()
    return out


def fleet_query(quick: bool) -> dict[str, Any]:
    """The 24-hour fleet chart query (1,000 devices x 1 day of 5-second data) on PostgreSQL."""
    args = ["--devices", "100"] if quick else []
    out = subprocess.run([PY, str(BENCH / "fleet_query.py"), *args], capture_output=True,
                         text=True, check=True, cwd=ROOT)
    sys.stdout.write(out.stderr)
    return {"scenario": "fleet", **json.loads(out.stdout)}


def summary_line(r: dict[str, Any]) -> str:
    return (f"sent {r['sent']:>7} deliveries/s {r['deliveries_per_s']:>9,} lost {r['lost']:>6} "
            f"p50 {r['p50_ms']} ms p99 {r['p99_ms']} ms max {r['max_ms']:.1f} ms "
            f"caught-up {r['ingest_caught_up']} (lag {r['ingest_lag_s']} s) "
            f"dropped {r['dropped_total']:.0f} "
            f"hub cpu {r['hub_cpu_s']} s clients cpu {r.get('clients_cpu_s')} s rss {r['hub_rss_peak_mb']} MB")


def machine() -> dict[str, Any]:
    model = ""
    with open("/proc/cpuinfo") as fh:
        for line in fh:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {"cpus": os.cpu_count(), "cpu_model": model,
            "ram_gb": round(psutil.virtual_memory().total / 2**30, 1),
            "python": platform.python_version(), "kernel": platform.release()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("which", nargs="?", default="all",
                   choices=["a", "b", "c", "selfcheck", "fleet", "commands", "all"])
    p.add_argument("--quick", action="store_true", help="short steps (smoke run)")
    p.add_argument("--backend", default="sqlite", choices=["sqlite", "pg", "pg2"],
                   help="sqlite: one instance; pg: PostgreSQL + Redis; pg2: two instances")
    p.add_argument("--protocol", default="native", choices=["native", "socketio"],
                   help="the clients' protocol: native /ws, or Socket.IO over WebSocket")
    p.add_argument("--rules", type=int, default=0,
                   help="alert rules watching every device, evaluated on every record")
    p.add_argument("--rates", default="",
                   help="b only: run just these msg/s steps (comma-separated), none stops the run")
    a = p.parse_args()
    global RATES
    RATES = [float(x) for x in a.rates.split(",") if x] or None
    Stack.backend = a.backend
    Stack.rules = a.rules
    Clients.protocol = a.protocol
    runs = {"selfcheck": selfcheck, "a": scenario_a, "b": scenario_b, "c": scenario_c,
            "fleet": fleet_query, "commands": commands}
    chosen = [n for n in runs if n != "fleet"] if a.which == "all" else [a.which]
    results: dict[str, Any] = {"machine": machine(), "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
                               "command": " ".join(sys.argv), "backend": a.backend,
                               "protocol": a.protocol, "rules": a.rules,
                               "results": []}
    print(json.dumps(results["machine"]))
    for name in chosen:
        print(f"== {name}", flush=True)
        r = runs[name](a.quick)
        results["results"].append(r)
        if name == "a":
            print("  a: " + summary_line(r["steps"][0]), flush=True)
    out_dir = BENCH / "results"
    out_dir.mkdir(exist_ok=True)
    path = out_dir / f"bench-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(results, indent=2))
    print(f"results: {path}")


if __name__ == "__main__":
    main()
