"""The compose cluster, end to end, with nodes lost (run by tests/compose/run).

docker-compose.yml comes up as project `nimbus-e2e` on its own ports; the `nimbus`
CLI on this host deploys a Python function through the published gateway port,
finding the access key the gateway made in NIMBUS_KEYS_DIR (no other step); boto3
invokes it synchronously and asynchronously from several threads while
`docker kill` takes worker-1 and then scheduler-1 down. Then:
- every synchronous call answered 200 carries the right answer; a call fails only
  with the killed worker named or, held by the killed scheduler (in flight at its
  kill), with a ServiceException; the last calls, after both kills, all succeed
  (the cluster keeps serving);
- every accepted asynchronous call ran (counted from the function's own log lines,
  read through the logs API) exactly once, or at least once where its first run was
  on the killed worker.
The cluster is taken down with its volumes whatever happens.
"""

import concurrent.futures
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

import boto3
import botocore.auth
import botocore.awsrequest
import botocore.config
import botocore.credentials

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PROJECT = "nimbus-e2e"
GATEWAY_PORT = int(os.environ.get("NIMBUS_E2E_GATEWAY_PORT", "18080"))
ENDPOINT = f"http://127.0.0.1:{GATEWAY_PORT}"
SYNC_CALLS = 200
ASYNC_CALLS = 100
FUNCTION = "e2e-echo"
target = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
NIMBUS = os.environ.get("NIMBUS_CLI", os.path.join(target, "release", "nimbus"))

keys_dir = tempfile.mkdtemp(prefix="nimbus-e2e-keys-")
env = dict(os.environ)
for k in list(env):
    if k.startswith("AWS_") or k.startswith("NIMBUS_"):
        del env[k]
env.update(
    NIMBUS_KEYS_DIR=keys_dir,
    NIMBUS_GATEWAY_PORT=str(GATEWAY_PORT),
    NIMBUS_NATS_PORT=os.environ.get("NIMBUS_E2E_NATS_PORT", "14222"),
    NIMBUS_DRAIN_TIMEOUT_SECS="10",
)
env_file = os.path.join(ROOT, ".env")
if os.path.exists(env_file):  # the NATS image deploy/local-images made
    for line in open(env_file):
        if line.startswith("NIMBUS_NATS_IMAGE="):
            env["NIMBUS_NATS_IMAGE"] = line.strip().split("=", 1)[1]


def compose_cmd():
    if subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        return ["docker", "compose"]
    return ["docker-compose"]


COMPOSE = compose_cmd() + ["-p", PROJECT, "-f", os.path.join(ROOT, "docker-compose.yml")]
# On a cgroup v1 host the workers get the host's cgroup tree (the documented
# override) and must then report the whole box.
CGROUP_V1 = subprocess.run(["stat", "-fc", "%T", "/sys/fs/cgroup"], capture_output=True, text=True).stdout.strip() == "tmpfs"
if CGROUP_V1:
    COMPOSE += ["-f", os.path.join(ROOT, "deploy/compose.cgroup-v1.yml")]


def compose(*args, check=True, capture=False):
    return subprocess.run(COMPOSE + list(args), env=env, cwd=ROOT, check=check, capture_output=capture, text=True)


def container(service):
    out = compose("ps", "-q", service, capture=True).stdout.split()
    assert out, f"no container for {service}"
    return out[0]


def fail(msg):
    print(f"FAIL: {msg}")
    raise SystemExit(1)


def wait_for(what, pred, timeout):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if pred():
                return
        except Exception:
            pass
        time.sleep(0.5)
    fail(f"timed out waiting for {what}")


def healthz():
    with urllib.request.urlopen(f"{ENDPOINT}/healthz", timeout=2) as r:
        return r.status == 200


def credentials():
    text = open(os.path.join(keys_dir, "credentials")).read()
    kv = dict(
        (k.strip(), v.strip()) for k, v in (l.split("=", 1) for l in text.splitlines() if "=" in l)
    )
    return kv["aws_access_key_id"], kv["aws_secret_access_key"]


def signed_get(path, creds):
    req = botocore.awsrequest.AWSRequest(method="GET", url=ENDPOINT + path)
    botocore.auth.SigV4Auth(botocore.credentials.Credentials(*creds), "lambda", "us-east-1").add_auth(req)
    r = urllib.request.Request(ENDPOINT + path, headers=dict(req.headers.items()))
    with urllib.request.urlopen(r, timeout=10) as resp:
        return json.loads(resp.read())


def nats_publish(port, user, password, subject, payload):
    """One PUB over NATS's text protocol; what the server said up to PONG."""
    import socket
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        info = sock.recv(4096)
        assert info.startswith(b"INFO "), info
        body = payload.encode()
        connect = json.dumps({"user": user, "pass": password, "verbose": False, "pedantic": False})
        sock.sendall(f"CONNECT {connect}\r\nPUB {subject} {len(body)}\r\n".encode() + body + b"\r\nPING\r\n")
        answer = b""
        while b"PONG" not in answer and b"-ERR" not in answer:
            chunk = sock.recv(4096)
            if not chunk:
                break
            answer += chunk
        return answer.decode(errors="replace")


def run_lines(creds):
    """(kind, id, host) of every E2E-RUN line in the function's logs."""
    events = signed_get(f"/nimbus/v1/functions/{FUNCTION}/logs?limit=1000", creds)["events"]
    runs = []
    for e in events:
        for line in e["message"].splitlines():
            if line.startswith("E2E-RUN "):
                f = dict(p.split("=", 1) for p in line.split()[1:])
                runs.append((f["kind"], int(f["id"]), f["host"]))
    return runs


def main():
    t0 = time.time()
    compose("up", "-d")
    wait_for("the gateway's /healthz", healthz, 180)
    wait_for("the access key the gateway makes", lambda: os.path.getsize(os.path.join(keys_dir, "credentials")) > 0, 30)
    for svc in ("worker-1", "worker-2", "scheduler-1", "scheduler-2"):
        wait_for(f"{svc} healthy", lambda s=svc: b"healthy" in subprocess.run(
            ["docker", "inspect", "-f", "{{.State.Health.Status}}", container(s)], capture_output=True).stdout, 120)
    print(f"compose test: cluster up and healthy in {time.time() - t0:.1f} s")

    # Deploy with the CLI, which finds the key by itself (NIMBUS_DATA_DIR is where
    # the CLI looks by default; the compose file mounts the same place).
    code = tempfile.mkdtemp(prefix="nimbus-e2e-code-")
    with open(os.path.join(code, "app.py"), "w") as f:
        f.write(
            "import socket, time\n"
            "def handler(event, context):\n"
            "    if 'Records' in event:\n"
            "        for r in event['Records']:\n"
            "            print(f\"E2E-S3 bucket={r['s3']['bucket']['name']} event={r['eventName']}\")\n"
            "        return {}\n"
            "    time.sleep(event.get('sleep', 0))\n"
            "    print(f\"E2E-RUN kind={event['kind']} id={event['id']} host={socket.gethostname()}\")\n"
            "    return {'id': event['id'], 'kind': event['kind'], 'double': event['id'] * 2}\n"
        )
    cli_env = {k: v for k, v in env.items() if not k.startswith("NIMBUS_")}
    cli_env["NIMBUS_DATA_DIR"] = keys_dir
    subprocess.run(
        [NIMBUS, "--endpoint", ENDPOINT, "deploy", FUNCTION, "--runtime", "python3.11",
         "--handler", "app.handler", "--code", code, "--timeout", "30"],
        env=cli_env, check=True)
    out = subprocess.run([NIMBUS, "--endpoint", ENDPOINT, "invoke", FUNCTION, "--payload",
                          '{"kind":"probe","id":21}'], env=cli_env, check=True, capture_output=True, text=True).stdout
    if '"double": 42' not in out and '"double":42' not in out:
        fail(f"CLI invoke answered {out!r}")

    creds = credentials()
    # The box inside the worker containers, as the workers report it.
    workers = []

    def both_workers():
        nonlocal workers
        workers = signed_get("/nimbus/v1/cluster", creds)["workers"]
        return sorted(w["id"] for w in workers) == ["worker-1", "worker-2"]

    wait_for("both workers in the cluster call", both_workers, 30)
    want_on = ["uid", "mount_namespace", "pid_namespace"] + (["cgroup"] if CGROUP_V1 else [])
    for w in workers:
        off = [p for p in want_on if not w["sandbox"].get(p, "").startswith("on")]
        if off:
            fail(f"{w['id']} runs functions without {off}: {w['sandbox']}")
    print(f"compose test: workers report {', '.join(want_on)} on")
    lam = boto3.client(
        "lambda", endpoint_url=ENDPOINT, region_name="us-east-1",
        aws_access_key_id=creds[0], aws_secret_access_key=creds[1],
        config=botocore.config.Config(retries={"total_max_attempts": 1}, read_timeout=60, max_pool_connections=16))

    ids = {svc: container(svc) for svc in ("worker-1", "worker-2", "scheduler-1")}
    hosts = {svc: ids[svc][:12] for svc in ("worker-1", "worker-2")}
    killed = {}
    lock = threading.Lock()
    sync_ok, sync_bad, sync_err = [], [], []
    async_accepted, async_refused = [], []
    done = [0]

    spans = {}  # call -> (start, end): which calls were in flight at a kill

    def call(i):
        kind = "async" if i % 3 == 2 else "sync"
        started = time.time()
        payload = json.dumps({"kind": kind, "id": i, "sleep": 0.5}).encode()
        try:
            if kind == "async":
                r = lam.invoke(FunctionName=FUNCTION, InvocationType="Event", Payload=payload)
                (async_accepted if r["StatusCode"] == 202 else async_refused).append(i)
            else:
                r = lam.invoke(FunctionName=FUNCTION, Payload=payload)
                body = json.loads(r["Payload"].read())
                if r["StatusCode"] == 200 and "FunctionError" not in r:
                    (sync_ok if body == {"id": i, "kind": "sync", "double": 2 * i} else sync_bad).append((i, body))
                else:
                    sync_err.append((i, r.get("FunctionError"), body))
        except Exception as e:  # a kill can cut a call: counted, never hidden
            (async_refused if kind == "async" else sync_err).append((i, type(e).__name__, str(e)[:200]))
        with lock:
            spans[i] = (started, time.time())
            done[0] += 1

    total = SYNC_CALLS + ASYNC_CALLS
    tail_start = total - 30
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(call, i) for i in range(tail_start)]
        while done[0] < tail_start:
            # The scheduler goes a few seconds after the worker: long enough for
            # the worker's loss to be noticed by whoever placed work on it.
            if done[0] >= total // 4 and "worker" not in killed:
                killed["worker"] = time.time()
                subprocess.run(["docker", "kill", ids["worker-1"]], check=True, capture_output=True)
                print(f"compose test: killed worker-1 after {done[0]} calls")
            if done[0] >= total // 2 and "scheduler" not in killed and time.time() - killed["worker"] > 5:
                killed["scheduler"] = time.time()
                subprocess.run(["docker", "kill", ids["scheduler-1"]], check=True, capture_output=True)
                print(f"compose test: killed scheduler-1 after {done[0]} calls")
            time.sleep(0.05)
        concurrent.futures.wait(futures)
    if len(killed) != 2:
        fail(f"the kills did not happen: {killed}")
    # After both kills: the cluster keeps serving (the dead worker is out of
    # placement 3 s after its last heartbeat).
    time.sleep(4)
    sync_err_before = len(sync_err)
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        list(pool.map(call, range(tail_start, total)))
    tail_errors = sync_err[sync_err_before:]

    for svc in ("worker-1", "scheduler-1"):
        state = subprocess.run(["docker", "inspect", "-f", "{{.State.Status}} restarts={{.RestartCount}}", ids[svc]],
                               capture_output=True, text=True).stdout.strip()
        print(f"compose test: {svc} after its kill: {state}")
    n_sync = len([i for i in range(total) if i % 3 != 2])
    print(f"compose test: sync {len(sync_ok)} ok, {len(sync_bad)} wrong, {len(sync_err)} failed of {n_sync}; "
          f"async {len(async_accepted)} accepted, {len(async_refused)} refused")
    for e in sync_err[:10]:
        print(f"  failed sync call: {e}")
    if sync_bad:
        fail(f"synchronous calls answered 200 with a wrong body: {sync_bad[:5]}")
    # A call may fail when it was in a killed service's hands: the killed worker is
    # named; a call the killed scheduler held (in flight at its kill) ends with the
    # gateway's ServiceException once its wait runs out.
    def in_flight_at_scheduler_kill(e):
        start, end = spans.get(e[0], (0, 0))
        return e[1] == "ServiceException" and start <= killed["scheduler"] <= end

    not_named = [e for e in sync_err if "worker-1" not in str(e) and not in_flight_at_scheduler_kill(e)]
    if not_named:
        fail(f"synchronous calls failed other than with the killed worker named: {not_named[:5]}")
    if tail_errors:
        fail(f"calls after the kills failed: {tail_errors[:5]}")
    if len(sync_ok) < n_sync * 0.8:
        fail(f"only {len(sync_ok)} of {n_sync} synchronous calls succeeded")
    if async_refused:
        fail(f"asynchronous calls not accepted (the gateway stayed up): {async_refused[:5]}")

    # Every accepted async call runs: at least once, exactly once unless the
    # killed worker ran it first.
    want = set(async_accepted)
    runs = []

    def all_ran():
        nonlocal runs
        runs = [r for r in run_lines(creds) if r[0] == "async"]
        return want <= {r[1] for r in runs}

    wait_for("every accepted asynchronous call to run", all_ran, 180)
    by_id = {}
    for _, i, host in runs:
        by_id.setdefault(i, []).append(host)
    twice = {i: h for i, h in by_id.items() if len(h) > 1}
    for i, h in twice.items():
        if hosts["worker-1"] not in h:
            fail(f"async call {i} ran {len(h)} times, none on the killed worker: {h}")
    unknown = {h for hs in by_id.values() for h in hs} - set(hosts.values())
    if unknown:
        fail(f"runs on unknown hosts {unknown} (workers {hosts})")
    on_survivor = sum(1 for hs in by_id.values() for h in hs if h == hosts["worker-2"])
    print(f"compose test: {len(want)} async calls ran; {len(twice)} twice (each first on the killed worker); "
          f"{on_survivor} runs on worker-2")
    # A worker that comes back is used as soon as it heartbeats: more concurrent
    # calls than worker-2 has slots must spill onto it.
    subprocess.run(["docker", "start", ids["worker-1"]], check=True, capture_output=True)
    wait_for("worker-1 back in the cluster", lambda: "worker-1" in json.dumps(signed_get("/nimbus/v1/cluster", creds)), 60)
    rejoin_ok, rejoin_err = [], []

    def rejoin(i):
        try:
            r = lam.invoke(FunctionName=FUNCTION, Payload=json.dumps({"kind": "rejoin", "id": i, "sleep": 1.5}).encode())
            body = json.loads(r["Payload"].read())
            (rejoin_ok if body == {"id": i, "kind": "rejoin", "double": 2 * i} else rejoin_err).append((i, body))
        except Exception as e:
            rejoin_err.append((i, str(e)[:200]))

    slots = 16
    with concurrent.futures.ThreadPoolExecutor(slots + 8) as pool:
        list(pool.map(rejoin, range(1000, 1000 + slots + 8)))
    if rejoin_err:
        fail(f"calls after worker-1 came back failed: {rejoin_err[:5]}")
    on_returned = []

    def rejoin_ran():
        nonlocal on_returned
        runs = [r for r in run_lines(creds) if r[0] == "rejoin"]
        on_returned = [r for r in runs if r[2] == hosts["worker-1"]]
        return len(runs) >= slots + 8

    wait_for("the rejoin calls' logs", rejoin_ran, 30)
    if not on_returned:
        fail("worker-1 came back but ran none of the calls that did not fit on worker-2")
    print(f"compose test: worker-1 came back and ran {len(on_returned)} of {slots + 8} concurrent calls")
    # MinIO's path: a recorded MinIO notification published to the cluster's NATS
    # as the publisher user (the password from the secrets volume) reaches the
    # function bound to the bucket.
    subprocess.run([NIMBUS, "--endpoint", ENDPOINT, "trigger", "add", "s3", "--function", FUNCTION,
                    "--bucket", "photos", "--events", "s3:ObjectCreated:*"], env=cli_env, check=True)
    password = compose("exec", "-T", "gateway", "cat", "/run/nimbus/secrets/nats-publisher-password",
                       capture=True).stdout.strip()
    if len(password) < 32:
        fail(f"publisher password {password!r}")
    record = open(os.path.join(ROOT, "tests/fixtures/s3/minio-nats-put.json")).readline().strip()
    answer = nats_publish(int(env["NIMBUS_NATS_PORT"]), "publisher", password, "nimbus.events.s3", record)
    if "-ERR" in answer or "PONG" not in answer:
        fail(f"nats-server answered the publisher with {answer!r}")
    # The bus is locked: the same publish with a wrong password is refused.
    answer = nats_publish(int(env["NIMBUS_NATS_PORT"]), "publisher", "wrong", "nimbus.events.s3", record)
    if "Authorization Violation" not in answer:
        fail(f"a wrong password got {answer!r}")
    wait_for("the MinIO notification to run the function",
             lambda: any("E2E-S3 bucket=photos event=s3:ObjectCreated:Put" in e["message"]
                         for e in signed_get(f"/nimbus/v1/functions/{FUNCTION}/logs?limit=50", creds)["events"]), 30)
    print("compose test: a recorded MinIO notification on the published NATS port ran the function")
    print("compose test: PASSED")


if __name__ == "__main__":
    try:
        main()
    except SystemExit:
        print("--- service logs (last lines) ---")
        compose("logs", "--tail", "40", check=False)
        raise
    finally:
        compose("down", "-v", "--remove-orphans", check=False)
        shutil.rmtree(keys_dir, ignore_errors=True)
