"""Every NIMBUS_* setting the compose file and the Kubernetes manifests give a
Nimbus service is accepted by that service's own `--check-config`, and a typo is
refused. Run by tests/tests/deploy.rs: deploy_config.py REPO BIN_DIR."""

import glob
import os
import re
import subprocess
import sys

import yaml

repo, bin_dir = sys.argv[1], sys.argv[2]
BINARIES = {"gateway": "nimbus-gateway", "scheduler": "nimbus-scheduler", "worker": "nimbus-worker"}
failures = []
checked = []


def interpolate(value):
    """Compose's interpolation with nothing set: ${A:-d} → d, ${A} → '', $$ → $."""
    if not isinstance(value, str):
        return "true" if value is True else "false" if value is False else str(value)

    def sub(m):
        if m.group(0) == "$$":
            return "$"
        inner = m.group(1)
        for sep in (":-", "-", ":?", "?"):
            if sep in inner:
                name, default = inner.split(sep, 1)
                return default if "-" in sep else ""
        return ""

    return re.sub(r"\$\$|\$\{([^}]*)\}", sub, value)


def service_of(image):
    m = re.match(r"^(?:\$\{[A-Z_]+:-)?nimbus/(gateway|scheduler|worker)[:}]", image or "")
    return m.group(1) if m else None


def check(where, service, env, expect_ok=True, needle=None):
    base = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    base.update(env)
    p = subprocess.run(
        [os.path.join(bin_dir, BINARIES[service]), "--check-config"],
        env=base,
        capture_output=True,
        text=True,
        timeout=30,
    )
    out = p.stdout + p.stderr
    ok = p.returncode == 0
    if ok != expect_ok or (needle and needle not in out):
        failures.append(f"{where}: exit {p.returncode}, expected {'success' if expect_ok else 'failure'}:\n{out}")
    checked.append(where)


# The compose file.
with open(os.path.join(repo, "docker-compose.yml")) as f:
    compose = yaml.safe_load(f)
compose_envs = {}
for name, svc in compose["services"].items():
    service = service_of(svc.get("image"))
    if service is None or "command" in svc:
        continue  # not a Nimbus service, or a one-shot (nimbus init-secrets)
    env = {k: interpolate(v) for k, v in (svc.get("environment") or {}).items()}
    assert any(k.startswith("NIMBUS_") for k in env), f"compose {name} sets no NIMBUS_* variable"
    compose_envs[name] = (service, env)
    check(f"compose {name}", service, env)
for need in ("gateway", "scheduler-1", "scheduler-2", "worker-1", "worker-2"):
    if need not in compose_envs:
        failures.append(f"compose: no Nimbus service {need}")

# The Kubernetes manifests.
docs = []
for path in sorted(glob.glob(os.path.join(repo, "deploy/k8s/*.yaml"))):
    with open(path) as f:
        docs += [(os.path.basename(path), d) for d in yaml.safe_load_all(f) if d]
config_maps = {d["metadata"]["name"]: d.get("data", {}) for _, d in docs if d["kind"] == "ConfigMap"}
SECRET_SAMPLES = {"access-keys": "NIMBCHECKKEY:check-secret"}
k8s_services = set()
for file, d in docs:
    if d["kind"] not in ("Deployment", "StatefulSet", "DaemonSet"):
        continue
    for c in d["spec"]["template"]["spec"]["containers"]:
        service = service_of(c["image"])
        if service is None:
            continue
        env = {}
        for src in c.get("envFrom", []):
            env.update(config_maps[src["configMapRef"]["name"]])
        for e in c.get("env", []):
            if "value" in e:
                env[e["name"]] = e["value"]
            elif "secretKeyRef" in e.get("valueFrom", {}):
                env[e["name"]] = SECRET_SAMPLES.get(e["valueFrom"]["secretKeyRef"]["key"], "check-secret")
            else:
                env[e["name"]] = "nimbus-worker-5d9c7-x2x4z"  # a pod name
        k8s_services.add(service)
        check(f"k8s {file} {d['metadata']['name']}", service, env)
if k8s_services != set(BINARIES):
    failures.append(f"k8s: Nimbus services found {sorted(k8s_services)}, want {sorted(BINARIES)}")

# The check can fail: a misspelt variable is named in the refusal.
service, env = compose_envs["gateway"]
check("typo", service, dict(env, NIMBUS_GATEWAY_ADRR="0.0.0.0:8080"), expect_ok=False, needle="NIMBUS_GATEWAY_ADRR")
# Read by every service outside its flags (telemetry): accepted.
service, env = compose_envs["scheduler-1"]
check("shared variable", service, dict(env, NIMBUS_LOG_FORMAT="json"))
service, env = compose_envs["worker-1"]
check("bad value", service, dict(env, NIMBUS_WORKER_SLOTS="many"), expect_ok=False, needle="many")

print(f"checked: {', '.join(checked)}")
if failures:
    print("\n".join(failures))
    sys.exit(1)
print("deploy settings OK")
