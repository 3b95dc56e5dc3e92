#!/usr/bin/env python3
"""`ops/bench soak [N]`: N exchanges (default 2,000) back to back through one broker and one
connector, as separate processes over a PostgreSQL and a Tansu of their own (under
$CUSTOS_STATE_DIR/soak). Each exchange: a request submitted, approved, delivered (one target,
200 records, about 110 KB) and verified. Every 100 exchanges it prints the broker's and the
connector's RSS and open file descriptors. The baseline is the figure after the first 200
exchanges, measured in the same run; the last line is
`soak growth after 200: broker RSS X.XX×, connector RSS Y.YY×` (fds are printed beside).
Target: below 1.10× for both."""
import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import chaos  # noqa: E402


def main():
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
    if n < 300:
        sys.exit("ops/bench soak: N must be at least 300 (the baseline is taken after 200)")
    chaos.use_dir("soak")
    os.makedirs(chaos.DIR, exist_ok=True)
    provider = "soak-telco"
    d = chaos.deploy([provider], 1, {provider: 200}, separate_tsa=False, fast_waits=False)
    broker, connector = d.brokers[0], d.connectors[0]
    env = dict(d.env, CUSTOS_URL=d.urls[0])

    def cli(token, *args):
        p = subprocess.run(["custos", *args], env=dict(env, CUSTOS_TOKEN=token), capture_output=True, text=True, timeout=300)
        if p.returncode != 0:
            sys.exit(f"ops/bench soak: custos {args[0]} {args[1]} failed: {p.stderr.strip()[-300:]}")
        return p.stdout.strip()

    case = cli(d.tokens["investigator"], "case", "create", "--title", "Soak case")
    print(f"soak: {n} exchanges through one broker and one connector (logs in {chaos.DIR})", flush=True)
    print(f"{'exchanges':>9}  {'broker RSS':>10}  {'broker fds':>10}  {'connector RSS':>13}  {'connector fds':>13}  {'exchanges/s':>11}", flush=True)
    baseline = None
    started = last = time.time()
    figures = None
    for i in range(1, n + 1):
        request = cli(d.tokens["investigator"], "request", "create", "--case", case, "--provider", provider, "--decision-number", f"QD-{i}/2026",
                      "--authority", "Soak Authority", "--issued-on", "2026-11-20", "--decision-file", f"{chaos.DIR}/decision.pdf",
                      "--target", f"msisdn:+8491{i:07d}", "--category", "traffic",
                      "--from", "2026-11-01T00:00:00Z", "--to", "2026-11-20T00:00:00Z", "--submit")
        cli(d.tokens["approver"], "request", "approve", request)
        cli(d.tokens["investigator"], "request", "status", request, "--watch", "--timeout", "120")
        state = json.loads(cli(d.tokens["investigator"], "request", "status", request, "--json"))["state"]
        if state != "verified":
            sys.exit(f"ops/bench soak: exchange {i} ended {state}")
        if i % 100 == 0:
            b, c = chaos.rss_and_fds(broker.proc.pid), chaos.rss_and_fds(connector.proc.pid)
            if not b or not c:
                sys.exit("ops/bench soak: the broker or the connector is gone")
            now = time.time()
            print(f"{i:>9}  {b[0]:>7} MiB  {b[1]:>10}  {c[0]:>10} MiB  {c[1]:>13}  {100 / (now - last):>11.1f}", flush=True)
            last = now
            figures = (b, c)
            if i == 200:
                baseline = figures
    for m in [connector, broker]:
        m.stop()
    chaos.services("down", check=False)
    (b0, c0), (b1, c1) = baseline, figures
    print(f"soak: {n} exchanges in {time.time() - started:.0f} s; fds after 200 → end: broker {b0[1]} → {b1[1]}, connector {c0[1]} → {c1[1]}")
    print(f"soak growth after 200: broker RSS {b1[0] / b0[0]:.2f}×, connector RSS {c1[0] / c0[0]:.2f}×")


if __name__ == "__main__":
    main()
