#!/usr/bin/env python3
"""Leader failover time of the embedded election backend.

Starts three `ficus run` processes sharing one data directory (loopback,
OS-chosen ports, no plugins), then, ROUNDS times for each of kill -9 and
SIGTERM of the leader, measures the time from the signal to a survivor
reporting itself leader at /admin/leader (polled every 5 ms). Prints min,
median and max per event. Reports; never gates.

    cargo build -p ficus
    python3 bench/leader-failover.py [TTL_MS RENEW_DEADLINE_MS RETRY_MS ROUNDS]

Defaults: 1500 1000 250 10. FICUS=path/to/ficus overrides the binary
(default target/debug/ficus).
"""
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FICUS = os.environ.get("FICUS", os.path.join(ROOT, "target", "debug", "ficus"))


def start(workdir, data, index, ttl, deadline, retry):
    config = os.path.join(workdir, f"n{index}.toml")
    with open(config, "w") as f:
        f.write(
            f"""[server]
listen = "127.0.0.1:0"
admin = "127.0.0.1:0"
cache_dir = "{workdir}/cache"
[backend]
data_dir = "{data}"
[leader]
node_id = "n{index}"
lease_ttl_ms = {ttl}
renew_deadline_ms = {deadline}
retry_period_ms = {retry}
groups = ["default"]
"""
        )
    proc = subprocess.Popen(
        [FICUS, "run", "--config", config],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    line = proc.stdout.readline()
    match = re.search(r"admin (http://\S+)", line)
    if not match:
        proc.kill()
        sys.exit(f"ficus did not start: {line!r}")
    return proc, match.group(1)


def role(admin):
    with urllib.request.urlopen(admin + "/admin/leader", timeout=2) as r:
        return json.load(r)["groups"]["default"]["role"]


def main():
    args = [int(a) for a in sys.argv[1:5]]
    ttl, deadline, retry, rounds = args + [1500, 1000, 250, 10][len(args):]
    results = {"kill -9": [], "SIGTERM": []}
    for r in range(rounds):
        for event, sig in (("kill -9", signal.SIGKILL), ("SIGTERM", signal.SIGTERM)):
            with tempfile.TemporaryDirectory(prefix="ficus-failover-") as workdir:
                data = os.path.join(workdir, "data")
                nodes = [start(workdir, data, i, ttl, deadline, retry) for i in range(3)]
                try:
                    # Vary the signal's phase relative to the renewals.
                    time.sleep(0.3 + (r * 0.07) % (retry / 1000))
                    assert role(nodes[0][1]) == "leader", "the first node should lead"
                    started = time.monotonic()
                    nodes[0][0].send_signal(sig)
                    while not any(role(admin) == "leader" for _, admin in nodes[1:]):
                        time.sleep(0.005)
                    results[event].append((time.monotonic() - started) * 1000)
                finally:
                    for proc, _ in nodes:
                        proc.kill()
                        proc.wait()
    print(f"lease TTL {ttl} ms, renew deadline {deadline} ms, retry {retry} ms, {rounds} rounds")
    for event, times in results.items():
        times.sort()
        print(
            f"{event:>8}: min {times[0]:.0f} ms, median {statistics.median(times):.0f} ms, "
            f"max {times[-1]:.0f} ms"
        )


if __name__ == "__main__":
    main()
