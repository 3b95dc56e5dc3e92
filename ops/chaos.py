#!/usr/bin/env python3
"""The fault-injection campaign behind ops/chaos (see its header). Stdlib only.

Everything runs on loopback under $CUSTOS_STATE_DIR/chaos: a PostgreSQL cluster and a Tansu
of the campaign's own (ops/services with that state directory), two `custos-broker serve`
instances on one database schema, consumer group and chunk store, a third broker that serves
only as the connectors' time-stamping authority, and three `custos-connector run`, one per
provider. A workload submits and approves requests; faults are injected at random times; a
supervisor brings every killed process back after a random delay; then the checker reads the
database, the chunk store, the connectors' state and the custody log.
"""
import argparse
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, ".build", "debug")
STATE = os.environ.get("CUSTOS_STATE_DIR", os.path.join(ROOT, ".custos"))
DIR = os.path.join(STATE, "chaos")
SERVICES_ENV = dict(os.environ, CUSTOS_STATE_DIR=DIR)


def use_dir(name):
    """Works under $CUSTOS_STATE_DIR/<name> instead (its own services, logs and state)."""
    global DIR, SERVICES_ENV
    DIR = os.path.join(STATE, name)
    SERVICES_ENV = dict(os.environ, CUSTOS_STATE_DIR=DIR)
PROVIDERS = ["chaos-telco-1", "chaos-telco-2", "chaos-telco-3"]
LOCK = threading.Lock()


def log(text):
    with LOCK:
        print(f"chaos [{time.strftime('%H:%M:%S')}] {text}", flush=True)


def run(args, env=None, check=True, timeout=120, input=None):
    p = subprocess.run(args, env=env or ENV, capture_output=True, text=True, timeout=timeout, input=input)
    if check and p.returncode != 0:
        raise RuntimeError(f"{' '.join(args[:3])}… failed ({p.returncode}): {p.stderr.strip()[-400:]}")
    return p


def services(*args, check=True):
    return run([os.path.join(ROOT, "ops", "services"), *args], env=SERVICES_ENV, check=check, timeout=180)


def service_pids():
    out = services("pids", check=False).stdout.split()
    return dict(zip(out[::2], (int(p) for p in out[1::2])))


def rss_and_fds(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            rss = next(int(line.split()[1]) // 1024 for line in f if line.startswith("VmRSS:"))
        return rss, len(os.listdir(f"/proc/{pid}/fd"))
    except (OSError, StopIteration):
        return None


def allow_core_dumps():
    import resource
    resource.setrlimit(resource.RLIMIT_CORE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))


class Managed:
    """A process the campaign supervises: started, killed, paused, and brought back."""

    def __init__(self, name, args, ready, env=None):
        self.name, self.args, self.ready, self.env = name, args, ready, env or ENV
        self.proc = None
        self.down_until = 0.0  # kept down (killed) until then; the supervisor restarts it after
        self.incarnations = []  # (first RSS sample after warm-up, last RSS, last fds) per incarnation
        self.log = open(os.path.join(DIR, f"{name}.log"), "a")

    def start(self, wait=True):
        self.log.write(f"\n--- start {time.strftime('%H:%M:%S')}\n")
        self.log.flush()
        # In DIR: a core dump (CHAOS_CORE_DUMPS=1 allows them) lands there, never in the checkout.
        self.proc = subprocess.Popen(self.args, env=self.env, stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=DIR,
                                     preexec_fn=allow_core_dumps if os.environ.get("CHAOS_CORE_DUMPS") else None)
        self.incarnations.append([None, None, None, time.time()])
        if wait:
            deadline = time.time() + 90
            while time.time() < deadline:
                if self.proc.poll() is not None:
                    return False
                with open(self.log.name, errors="replace") as f:
                    f.seek(max(0, os.path.getsize(self.log.name) - 20000))
                    if self.ready in f.read().split("--- start")[-1]:
                        return True
                time.sleep(0.2)
            return False
        return True

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def kill9(self, downtime):
        if self.alive():
            self.proc.send_signal(signal.SIGCONT)
            self.proc.kill()
            self.proc.wait()
        self.down_until = time.time() + downtime

    def sample(self):
        if self.alive():
            s = rss_and_fds(self.proc.pid)
            if s:
                inc = self.incarnations[-1]
                if inc[0] is None and time.time() - inc[3] > 20:
                    inc[0] = s[0]
                inc[1], inc[2] = s

    def stop(self):
        if self.alive():
            self.proc.send_signal(signal.SIGCONT)
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def deploy(providers, brokers_count, per_target, separate_tsa=True, fast_waits=True):
    """Fresh services under DIR and a whole deployment: `brokers_count` brokers on one schema,
    a connector per provider (its adapter writing `per_target[provider]` records a target), a
    TSA apart (or broker 1's own); returns its parts, every process started."""
    # Fresh services of the campaign's own.
    services("down", "--purge", check=False)
    services("up")
    env = dict(os.environ)
    for line in open(os.path.join(DIR, "services.env")):
        if line.startswith("export "):
            k, v = line[7:].strip().split("=", 1)
            env[k] = v
    env["PATH"] = BIN + ":" + env["PATH"]
    env["CUSTOS_DATABASE_SCHEMA"] = "chaos"
    env["CUSTOS_KAFKA_GROUP_ID"] = "custos-broker-chaos"
    env["CUSTOS_LOG_LEVEL"] = "info"
    # Fast failover between the two instances, as an operator would set it.
    env["CUSTOS_KAFKA_PROPERTIES"] = "session.timeout.ms=6000,heartbeat.interval.ms=500"
    global ENV
    ENV = env
    pki = os.path.join(DIR, "pki")
    run(["bash", "-c", f'source "{ROOT}/ops/lib.sh"; demo_pki "{pki}"; synthetic_decision "{DIR}/decision.pdf"'])
    for p in providers:
        if not os.path.exists(f"{pki}/{p}.pem"):
            run(["custos-broker", "pki", "issue", "--name", p, "--organization", p, "--role", "signer", "--ca-certificate", f"{pki}/provider-ca.pem",
                 "--ca-key", f"{pki}/provider-ca.key", "--key-out", f"{pki}/{p}.key", "--certificate-out", f"{pki}/{p}.pem"])
    for d in ["chunks", "state-1", "state-2", "state-3", "witness-state.json"]:
        subprocess.run(["rm", "-rf", os.path.join(DIR, d)])
    broker_cfg = {
        "signingKeyFile": f"{pki}/broker.key", "http": {"host": "127.0.0.1", "port": 0},
        "storage": {"directory": f"{DIR}/chunks", "keyFile": f"{pki}/storage.key"},
        "tsa": {"trustFile": f"{pki}/tsa-ca.pem", "certificateFile": f"{pki}/tsa.pem", "keyFile": f"{pki}/tsa.key"},
        "custody": {"origin": "chaos.custos/custody", "certificateFile": f"{pki}/custody.pem", "keyFile": f"{pki}/custody.key"},
        "providers": {"refreshSeconds": 2},
    }
    if fast_waits:
        # Shorter waits than production's, so that a lost message is noticed within the run.
        broker_cfg["outbox"] = {"acknowledgementTimeoutSeconds": 20, "emergencyAcknowledgementTimeoutSeconds": 10, "maxResends": 30}
        broker_cfg["packages"] = {"missingChunksAfterSeconds": 15, "emergencyMissingChunksAfterSeconds": 8, "maxResendRequests": 30}
    json.dump(broker_cfg, open(f"{DIR}/broker.json", "w"))
    cfg = ["--config", f"{DIR}/broker.json"]
    run(["custos-broker", "migrate", *cfg])
    for p in providers:
        run(["custos-broker", "providers", "add", p, "--certificate", f"{pki}/{p}.pem", "--ca-certificate", f"{pki}/provider-ca.pem", *cfg])
    suffix = str(int(time.time()))
    tokens = {role: run(["custos-broker", "users", "add", f"chaos-{role}-{suffix}", "--role", role, *cfg]).stdout.strip()
              for role in ["investigator", "approver", "duty-approver", "reviewer"]}
    witness = run(["custos-broker", "witnesses", "add", f"chaos-witness-{suffix}", "--certificate", f"{pki}/witness.pem", *cfg]).stdout.strip()

    ports = [int(run(["python3", "-c", "import socket; s=socket.socket(); s.bind(('127.0.0.1',0)); print(s.getsockname()[1])"]).stdout) for _ in range(3)]
    brokers = [Managed(f"broker-{i + 1}", ["custos-broker", "serve", *cfg], "custos-broker listening on",
                       env=dict(env, CUSTOS_HTTP_PORT=str(ports[i]))) for i in range(brokers_count)]
    # The authority's time-stamping service: a broker on a schema of its own, with no provider.
    tsa = Managed("tsa", ["custos-broker", "serve", *cfg], "custos-broker listening on",
                  env=dict(env, CUSTOS_HTTP_PORT=str(ports[2]), CUSTOS_DATABASE_SCHEMA="chaos_tsa", CUSTOS_KAFKA_GROUP_ID="custos-chaos-tsa"))
    urls = [f"http://127.0.0.1:{p}" for p in ports[:brokers_count]]
    tsa_port = ports[2] if separate_tsa else ports[0]
    connectors = []
    preserve = os.path.join(DIR, "preserve.sh")
    with open(preserve, "w") as f:
        f.write("#!/bin/sh\ncat > /dev/null\nexit 0\n")
    os.chmod(preserve, 0o755)
    for i, p in enumerate(providers):
        c = {"providerId": p, "signingKeyFile": f"{pki}/{p}.key", "certificateFile": f"{pki}/{p}.pem",
             "brokerPublicKeyFile": f"{pki}/broker.pub", "stateDirectory": f"{DIR}/state-{i + 1}",
             "tsa": {"url": f"http://127.0.0.1:{tsa_port}/tsa", "trustFile": f"{pki}/tsa-ca.pem"},
             "adapters": {"default": {"command": [f"{BIN}/custos-synth", "--records-per-target", str(per_target[p]), "--padding", "330"]},
                          "preservation": {"command": [preserve]}},
             **({"receipts": {"timeoutSeconds": 30, "emergencyTimeoutSeconds": 15, "longestWaitSeconds": 60}} if fast_waits else {}),
             "log": {"level": "info"}}
        json.dump(c, open(f"{DIR}/connector-{i + 1}.json", "w"))
        connectors.append(Managed(f"connector-{i + 1}", ["custos-connector", "run", "--config", f"{DIR}/connector-{i + 1}.json"],
                                  "custos-connector running", env=dict(env, CUSTOS_KAFKA_GROUP_ID=f"custos-connector-{p}")))
    for m in ([tsa] if separate_tsa else []) + [*brokers, *connectors]:
        if not m.start():
            sys.exit(f"chaos: {m.name} did not start (log: {m.log.name})")
    return argparse.Namespace(env=env, cfg=cfg, pki=pki, tokens=tokens, witness=witness, brokers=brokers, tsa=tsa,
                              connectors=connectors, urls=urls, ports=ports)



def main():
    ap = argparse.ArgumentParser(prog="ops/chaos", description="fault-injection campaign (see ops/chaos)")
    ap.add_argument("faults", nargs="?", type=int, default=100)
    ap.add_argument("minutes", nargs="?", type=float, default=30)
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--largest-mb", type=int, default=100, help="the largest package, in MB (default 100)")
    ap.add_argument("--drain-minutes", type=float, default=None, help="time allowed after the faults for everything to settle")
    ap.add_argument("--without", action="append", default=[], choices=["kill-connector", "kill-broker", "kill-postgres", "kill-kafka", "pause"],
                    help="leave this kind of fault out (repeatable)")
    ap.add_argument("--backlog", type=int, default=12, help="approved requests not yet ended at once, at most (default 12)")
    a = ap.parse_args()
    seed = a.seed if a.seed is not None else random.randrange(1 << 30)
    rng = random.Random(seed)
    os.makedirs(DIR, exist_ok=True)
    log(f"seed {seed}: {a.faults} faults over {a.minutes:g} minutes, packages up to {a.largest_mb} MB; everything in {DIR}")

    per_target = {PROVIDERS[0]: 2, PROVIDERS[1]: 2000, PROVIDERS[2]: max(2, a.largest_mb * 1_000_000 // 570 // 9)}
    d = deploy(PROVIDERS, 2, per_target)
    env, cfg, pki, tokens, witness = d.env, d.cfg, d.pki, d.tokens, d.witness
    brokers, tsa, connectors, urls, ports = d.brokers, d.tsa, d.connectors, d.urls, d.ports
    log(f"brokers {urls[0]} and {urls[1]}, TSA on port {ports[2]}, connectors for {', '.join(PROVIDERS)}")
    # The TSA is no fault's target, but PostgreSQL's are its faults too: it is brought back as well.
    processes = {m.name: m for m in [*brokers, *connectors, tsa]}
    exits = []  # processes that ended by themselves: (name, exit status)
    stop = threading.Event()  # the workload and the faults are over
    finished = threading.Event()  # the drain is over too: the supervisor may stop
    faults_done = []
    submitted = {}  # request id -> (provider, kind)
    injected = [0]
    paused = {}

    def cli(token, args, timeout=60):
        last = None
        for url in rng.sample(urls, 2):
            e = dict(env, CUSTOS_URL=url, CUSTOS_TOKEN=token)
            try:
                p = subprocess.run(["custos", *args], env=e, capture_output=True, text=True, timeout=timeout)
            except subprocess.TimeoutExpired:
                last = "timed out"
                continue
            if p.returncode == 0:
                return p.stdout.strip()
            last = p.stderr.strip()
        raise RuntimeError(last or "failed")

    def retry(what, fn, attempts=40):
        for i in range(attempts):
            try:
                return fn()
            except RuntimeError as e:
                if any(s in str(e) for s in ["already", "not in state", "409"]):
                    return None
                if i == attempts - 1:
                    log(f"gave up on {what}: {str(e)[:200]}")
                time.sleep(1.5)
        return None

    backlog = a.backlog

    def workload():
        wl = random.Random(seed + 1)
        case = retry("creating the case", lambda: cli(tokens["investigator"], ["case", "create", "--title", "Chaos campaign case"]))
        n = 0
        ended_states = "('verified', 'refused', 'expired', 'revoked', 'preserved', 'released', 'rejected', 'withdrawn')"
        while not stop.is_set():
            # A steady workload: at most `backlog` approved requests not yet ended at once.
            try:
                ids = list(submitted)
                open_now = int(psql(f"SELECT count(*) FROM requests WHERE id = ANY('{{{','.join(ids)}}}'::uuid[]) AND state NOT IN {ended_states}")[0][0]) if ids else 0
            except RuntimeError:
                open_now = backlog
            if open_now >= backlog:
                stop.wait(2)
                continue
            n += 1
            provider = wl.choice(PROVIDERS)
            roll = wl.random()
            kind = "emergency" if roll < 0.2 else "preservation" if roll < 0.3 else "normal"
            targets = [f"msisdn:+849{wl.randrange(10_000_000, 99_999_999)}" for _ in range(wl.randint(1, 9 if provider == PROVIDERS[2] else 3))]
            args = ["request", "create", "--case", case, "--provider", provider, "--decision-number", f"QD-{n}/2026",
                    "--authority", "Chaos Authority", "--issued-on", "2026-11-20", "--decision-file", f"{DIR}/decision.pdf",
                    "--category", "traffic", "--from", "2026-11-01T00:00:00Z", "--to", "2026-11-20T00:00:00Z", "--submit"]
            for t in targets:
                args += ["--target", t]
            if kind == "emergency":
                args += ["--emergency", "threat-to-life", "--statement", "Synthetic emergency raised by the chaos campaign's workload."]
            if kind == "preservation":
                args += ["--preservation"]
            try:
                request = cli(tokens["investigator"], args)
            except RuntimeError:
                time.sleep(1)
                continue  # not created, or created without our knowing: never approved either way
            if kind == "emergency":
                ok = retry("approving an emergency", lambda: cli(tokens["duty-approver"], ["request", "approve", request]))
                retry("confirming an emergency", lambda: cli(tokens["reviewer"], ["request", "review", request, "--confirm"]))
            else:
                ok = retry("approving", lambda: cli(tokens["approver"], ["request", "approve", request]))
            state = retry("reading a request", lambda: json.loads(cli(tokens["investigator"], ["request", "status", request, "--json"]))["state"])
            if state not in (None, "submitted", "draft"):
                submitted[request] = (provider, kind, sum(1 for _ in targets))
            if n % 15 == 0:
                # Malformed messages on a provider's topic, on purpose: they, and only they, become dead letters.
                p = run([f"{BIN}/custos-bench", "kafka-noise", env["CUSTOS_KAFKA_BROKERS"], f"custos.from.{wl.choice(PROVIDERS)}", "3", request],
                        check=False, timeout=60)
                if p.returncode == 0:
                    injected[0] += 3
            stop.wait(wl.uniform(1.0, 4.0))

    def supervisor():
        # It runs through the drain as well: a process that ends by itself then (librdkafka's
        # crash after Tansu's last restart, or a start while a service is still coming back)
        # is brought back as a supervisor would.
        while not finished.is_set():
            now = time.time()
            for m in processes.values():
                m.sample()
                if m.proc is not None and m.proc.poll() is not None and m.proc.returncode != -signal.SIGKILL and not getattr(m.proc, "reported", False):
                    m.proc.reported = True
                    exits.append((m.name, m.proc.returncode))
                    log(f"{m.name} exited by itself (status {m.proc.returncode}); see {m.log.name}")
                if not m.alive() and now >= m.down_until and m.name not in paused:
                    if not m.start(wait=False):
                        m.down_until = now + 2
                    else:
                        m.down_until = now + 3  # a process that exits at once (a fault still in place) is tried again
            pids = service_pids()
            for svc, key in [("postgres", "pg_down"), ("kafka", "kafka_down")]:
                if svc not in pids and now >= downs.get(key, 0):
                    services("up", check=False)
            time.sleep(0.5)

    downs = {}
    fault_kinds = [k for k in ["kill-connector", "kill-broker", "kill-postgres", "kill-kafka", "pause"] if k not in a.without]
    weighted = [k for k, w in [("kill-connector", 4), ("kill-broker", 3), ("kill-postgres", 2), ("kill-kafka", 2), ("pause", 3)]
                for _ in range(w) if k not in a.without]

    def inject(i):
        kind = fault_kinds[i % len(fault_kinds)] if i < len(fault_kinds) else rng.choice(weighted)
        if kind == "kill-connector":
            m = rng.choice(connectors)
            m.kill9(rng.uniform(0.5, 6))
            what = m.name
        elif kind == "kill-broker":
            m = rng.choice(brokers)
            m.kill9(rng.uniform(0.5, 6))
            what = m.name
        elif kind in ("kill-postgres", "kill-kafka"):
            svc = "postgres" if kind == "kill-postgres" else "kafka"
            pid = service_pids().get(svc)
            if pid:
                os.kill(pid, signal.SIGKILL)
            downs["pg_down" if svc == "postgres" else "kafka_down"] = time.time() + rng.uniform(1, 6)
            what = svc + ("" if pid else " (already down)")
        else:
            m = rng.choice([*brokers, *connectors])
            if m.alive():
                paused[m.name] = True
                m.proc.send_signal(signal.SIGSTOP)
                secs = rng.uniform(1, 8)
                threading.Timer(secs, lambda: (m.alive() and m.proc.send_signal(signal.SIGCONT), paused.pop(m.name, None))).start()
                what = f"{m.name} for {secs:.1f} s"
            else:
                what = f"{m.name} (down already)"
        faults_done.append(kind)
        log(f"fault {len(faults_done)}/{a.faults}: {kind} {what}")

    threads = [threading.Thread(target=workload, daemon=True), threading.Thread(target=supervisor, daemon=True)]
    for t in threads:
        t.start()
    started = time.time()
    span = a.minutes * 60
    times = sorted(rng.uniform(10, span) for _ in range(a.faults))
    for i, at in enumerate(times):
        while time.time() - started < at:
            time.sleep(0.1)
        inject(i)
    while time.time() - started < span:
        time.sleep(0.5)
    stop.set()
    log(f"{len(faults_done)} faults injected; {len(submitted)} requests approved; waiting for every process and service to be back")
    # The supervisor brings back whatever is still down, and goes on doing so during the drain.
    back = time.time() + 120
    while time.time() < back and not (all(m.alive() for m in processes.values()) and {"postgres", "kafka"} <= set(service_pids())):
        time.sleep(1)

    # Drain: everything approved reaches its end, or the time allowed runs out.
    ended = {"normal": {"verified", "refused", "expired"}, "emergency": {"verified", "refused", "expired", "revoked"},
             "preservation": {"preserved", "released", "expired", "refused"}}
    drain = (a.drain_minutes if a.drain_minutes is not None else max(10, a.minutes)) * 60
    deadline = time.time() + drain
    states = {}
    while time.time() < deadline:
        states = dict(psql("SELECT id, state FROM requests"))
        pending = [r for r, (_, kind, _) in submitted.items() if states.get(r) not in ended[kind]]
        if not pending:
            break
        time.sleep(5)
    finished.set()
    threads[1].join(30)
    for m in processes.values():
        m.sample()
    log("settled; checking")

    rows = []
    lost, doubled = [], []

    def check(name, ok, detail):
        rows.append((name, "ok" if ok else "FAILED", detail))

    not_ended = [f"request {r} ({kind}, {states.get(r)})" for r, (_, kind, _) in submitted.items() if states.get(r) not in ended[kind]]
    lost += not_ended
    by_state = {}
    for r, (_, kind, _) in submitted.items():
        by_state[states.get(r)] = by_state.get(states.get(r), 0) + 1
    check("every approved request verified or ended by its rules", not not_ended,
          f"{len(submitted)} approved: " + ", ".join(f"{n} {s}" for s, n in sorted(by_state.items(), key=lambda x: str(x[0]))))
    twice = psql("SELECT request_id, count(*) FROM packages WHERE state <> 'receiving' AND manifest NOT LIKE '%\"partial\":true%' GROUP BY request_id HAVING count(*) > 1")
    doubled += [f"request {r}: {n} packages judged" for r, n in twice]
    rejected = psql("SELECT id, verification FROM packages WHERE state = 'rejected'")
    lost += [f"package {p} rejected" for p, _ in rejected]
    packages = int(psql("SELECT count(*) FROM packages WHERE state = 'verified'")[0][0])
    check("every package stored exactly once", not twice and not rejected, f"{packages} verified, {len(twice)} requests with two, {len(rejected)} rejected")
    events = psql("""SELECT kind, coalesce(package_id::text, request_id::text), count(*) FROM custody_events
                     WHERE kind IN ('package.completed', 'package.verdict', 'request.verified', 'request.approved', 'request.dispatched')
                     GROUP BY 1, 2 HAVING count(*) > 1""")
    doubled += [f"event {k} for {s} ×{n}" for k, s, n in events]
    check("no custody event doubled", not events, f"{len(events)} doubled")
    # Content-addressed: a chunk is one file named by its SHA-256 whatever the number of times it
    # arrived. A file no index row names is a write whose transaction a fault rolled back and
    # whose chunk never came again (an abandoned package's): kept, and counted here.
    chunk_files = {f for root, _, files in os.walk(f"{DIR}/chunks") for f in files if not f.startswith(".")}
    indexed = {r[0] for r in psql("SELECT DISTINCT sha256 FROM package_chunks WHERE location IS NOT NULL")}
    missing = indexed - chunk_files
    lost += [f"chunk {c} indexed but not in the store" for c in sorted(missing)]
    check("every chunk indexed is in the store, once", not missing,
          f"{len(indexed)} distinct chunks indexed, {len(chunk_files)} files ({len(chunk_files - indexed)} from rolled-back writes, not indexed)")
    # The witness checks and co-signs the newest checkpoint; the audit reads every chunk back.
    trust = os.path.join(DIR, "trust")
    os.makedirs(trust, exist_ok=True)
    for f in ["provider-ca.pem", "tsa-ca.pem", "custody-ca.pem"]:
        subprocess.run(["cp", f"{pki}/{f}", trust])
    subprocess.run(["cp", f"{pki}/witness.pem", f"{trust}/witnesses.pem"])
    time.sleep(3)
    cos = run(["custos", "witness", "cosign", "--trust", trust, "--key", f"{pki}/witness.key", "--certificate", f"{pki}/witness.pem",
               "--state", f"{DIR}/witness-state.json"], env=dict(env, CUSTOS_URL=urls[0], CUSTOS_TOKEN=witness), check=False)
    audit = run(["custos-broker", "audit", "--checkpoint", f"{DIR}/witness-state.json", *cfg], check=False, timeout=1800)
    consistent = audit.returncode == 0 and "CONSISTENT" in audit.stdout and cos.returncode == 0
    check("custos-broker audit against the checkpoints and the witness's", consistent,
          (audit.stdout.strip().splitlines() or [audit.stderr.strip()])[-1][:120] if cos.returncode == 0 else "witness: " + cos.stderr.strip()[-120:])
    # The three kinds custos-bench kafka-noise sends; some may have been lost with Tansu before the broker read them.
    ours = "reason LIKE 'malformed: invalid JSON at byte 0%' OR reason LIKE 'badSignature:%' OR reason LIKE 'malformed: envelope header: version%'"
    dead = int(psql(f"SELECT count(*) FROM dead_letters WHERE {ours}")[0][0])
    others = psql(f"SELECT topic, kafka_offset, reason FROM dead_letters WHERE NOT ({ours})")
    for t, o, r in others:
        print(f"unexpected dead letter: {t} offset {o}: {r[:160]}")
    check("dead letters are only the malformed messages injected", not others and dead <= injected[0],
          f"{dead} of the {injected[0]} injected (any others were lost with Tansu before the broker read them), {len(others)} others")
    unsent = int(psql("SELECT count(*) FROM outbox WHERE sent_at IS NULL")[0][0])
    check("the outbox is drained", unsent == 0, f"{unsent} messages not sent")
    stuck = psql("""SELECT c.request_id, c.clock FROM request_clocks c JOIN requests r ON r.id = c.request_id
                    WHERE c.stopped_at IS NULL AND c.paused_at IS NULL
                      AND (r.state IN ('verified', 'refused', 'expired', 'revoked', 'released', 'rejected', 'withdrawn')
                           OR (c.late_at IS NULL AND c.deadline < now() - interval '1 minute'))""")
    check("no clock is stuck", not stuck, f"{len(stuck)} stuck")
    unfinished = []
    for i in range(3):
        jobs = os.path.join(DIR, f"state-{i + 1}", "jobs")
        for j in os.listdir(jobs) if os.path.isdir(jobs) else []:
            files = set(os.listdir(os.path.join(jobs, j)))
            if "revoked.json" in files or "sent" in files and "manifest.json" not in files:
                continue
            if "receipt.json" not in files:
                unfinished.append(f"{PROVIDERS[i]} job {j}")
    lost += unfinished
    check("every connector job has its receipt", not unfinished, f"{len(unfinished)} without")
    growth = []
    for m in processes.values():
        firsts = [inc[0] for inc in m.incarnations if inc[0]]
        lasts = [inc[1] for inc in m.incarnations if inc[1]]
        if firsts and lasts and lasts[-1] > max(1.5 * firsts[0], firsts[0] + 96):
            growth.append(f"{m.name} {firsts[0]} → {lasts[-1]} MiB")
    mem = ", ".join(f"{m.name} {len(m.incarnations)}× {m.incarnations[-1][1] or '?'} MiB" for m in processes.values())
    check("no process leaked memory across its restarts", not growth, "; ".join(growth) or mem)

    width = max(len(r[0]) for r in rows)
    print()
    print(f"{'check'.ljust(width)}  result  detail")
    for name, result, detail in rows:
        print(f"{name.ljust(width)}  {result.ljust(6)}  {detail}")
    print()
    print(f"faults: " + ", ".join(f"{k} {faults_done.count(k)}" for k in sorted(set(faults_done))))
    if exits:
        print("ended by themselves (then brought back): " + ", ".join(f"{n} (status {c})" for n, c in exits))
    for item in lost:
        print(f"lost: {item}")
    for item in doubled:
        print(f"doubled: {item}")
    for m in [*processes.values(), tsa]:
        m.stop()
    failed = [r for r in rows if r[1] != "ok"]
    print(f"chaos: {len(faults_done)} faults, {len(lost)} lost, {len(doubled)} doubled" + (f"; {len(failed)} checks failed" if failed else ""))
    if os.environ.get("CHAOS_KEEP_SERVICES") is None:
        services("down", check=False)
    sys.exit(1 if lost or doubled or failed else 0)


def psql(sql):
    """Rows of `sql` in the deployment's schema, as lists of text fields."""
    url = ENV["CUSTOS_DATABASE_ADMIN_URL"]
    p = run(["psql", url, "-AtF", "\t", "-c", f"SET search_path TO chaos; {sql}"], check=True)
    return [line.split("\t") for line in p.stdout.splitlines() if line and line != "SET"]


ENV = dict(os.environ)
if __name__ == "__main__":
    main()
