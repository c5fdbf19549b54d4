//! The deployment files: Kubernetes manifests valid against the Kubernetes schemas,
//! every setting they and the compose file give accepted by the services' own
//! config check, and both nats-server configs loading with the platform's
//! authorization block. (The compose cluster itself runs in tests/compose/e2e.py.)

use std::path::Path;
use std::process::Command;

use nimbus_tests::{bin, bin_dir, nats_server_bin, test_python, workspace_root};

fn run(cmd: &mut Command) -> (bool, String) {
    let out = cmd.output().expect("spawn");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn manifests() -> Vec<std::path::PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(workspace_root().join("deploy/k8s"))
        .expect("deploy/k8s")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(files.len() >= 6, "manifests: {files:?}");
    files
}

fn kubernetes_validate(files: &[std::path::PathBuf]) -> (bool, String) {
    run(Command::new(test_python())
        .args(["-m", "kubernetes_validate", "--strict", "--no-warn"])
        .args(files))
}

#[test]
fn kubernetes_manifests_pass_the_schemas() {
    let files = manifests();
    let (ok, out) = kubernetes_validate(&files);
    assert!(ok, "kubernetes-validate refused the manifests:\n{out}");
    for kind in [
        "statefulset/nats",
        "deployment/nimbus-gateway",
        "deployment/nimbus-scheduler",
        "deployment/nimbus-worker",
    ] {
        assert!(
            out.contains(&format!("passed for resource {kind}")),
            "{kind}: {out}"
        );
    }
    // The validator can fail: a misspelt field in a copy of the worker manifest.
    let dir = tempfile::tempdir().unwrap();
    let worker = std::fs::read_to_string(workspace_root().join("deploy/k8s/60-worker.yaml"))
        .unwrap()
        .replace(
            "terminationGracePeriodSeconds:",
            "terminationGracePeriodSecs:",
        );
    let broken = dir.path().join("worker.yaml");
    std::fs::write(&broken, worker).unwrap();
    let (ok, out) = kubernetes_validate(&[broken]);
    assert!(!ok, "a misspelt field passed:\n{out}");
    assert!(out.contains("terminationGracePeriodSecs"), "{out}");
}

#[test]
fn deploy_settings_pass_the_services_config_check() {
    for b in ["nimbus-gateway", "nimbus-scheduler", "nimbus-worker"] {
        bin(b);
    }
    let (ok, out) = run(Command::new(test_python())
        .arg(workspace_root().join("tests/py/deploy_config.py"))
        .arg(workspace_root())
        .arg(bin_dir()));
    assert!(ok, "{out}");
    assert!(out.contains("deploy settings OK"), "{out}");
    for place in [
        "compose gateway",
        "compose worker-2",
        "compose scheduler-1",
        "nimbus-worker",
    ] {
        assert!(out.contains(place), "{place} not checked: {out}");
    }
}

/// The platform's authorization block (from proto) line by line, trimmed.
fn auth_lines(service: &str, publisher: &str) -> Vec<String> {
    nimbus_proto::Subjects::new("nimbus")
        .unwrap()
        .nats_authorization_values(service, publisher)
        .lines()
        .map(|l| l.trim().to_string())
        .collect()
}

fn assert_contains_lines(text: &str, lines: &[String], what: &str) {
    let have: Vec<String> = text.lines().map(|l| l.trim().to_string()).collect();
    assert!(
        have.windows(lines.len()).any(|w| w == lines),
        "{what} lacks the platform's authorization block:\n{}\n--- in ---\n{text}",
        lines.join("\n")
    );
}

fn nats_check(conf: &Path, env: &[(&str, &str)]) -> (bool, String) {
    run(Command::new(nats_server_bin())
        .args(["-t", "-c"])
        .arg(conf)
        .envs(env.iter().copied()))
}

#[test]
fn compose_nats_config_loads_the_secrets_init_secrets_writes() {
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("nats.conf");
    std::fs::copy(workspace_root().join("deploy/nats/nats.conf"), &conf).unwrap();
    // Without the secrets the config does not load: the include is real.
    let (ok, out) = nats_check(&conf, &[]);
    assert!(!ok, "loaded without its secrets: {out}");
    let secrets = dir.path().join("secrets");
    let (ok, out) = run(Command::new(bin("nimbus"))
        .arg("init-secrets")
        .arg(&secrets));
    assert!(ok, "{out}");
    let service = std::fs::read_to_string(secrets.join("nats-service-password")).unwrap();
    let publisher = std::fs::read_to_string(secrets.join("nats-publisher-password")).unwrap();
    assert!(service.len() >= 32 && publisher.len() >= 32 && service != publisher);
    let auth = std::fs::read_to_string(secrets.join("nats-auth.conf")).unwrap();
    assert_contains_lines(
        &auth,
        &auth_lines(&format!("\"{service}\""), &format!("\"{publisher}\"")),
        "nats-auth.conf",
    );
    // A second run keeps the passwords.
    let (ok, out) = run(Command::new(bin("nimbus"))
        .arg("init-secrets")
        .arg(&secrets));
    assert!(ok, "{out}");
    assert_eq!(
        std::fs::read_to_string(secrets.join("nats-service-password")).unwrap(),
        service
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(secrets.join("nats-service-password"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o077, 0, "secret readable by others: {mode:o}");
    // The store dir is the container's /data; point it somewhere writable.
    let text = std::fs::read_to_string(&conf).unwrap();
    assert!(text.contains("sync_interval: always"), "{text}");
    std::fs::write(
        &conf,
        text.replace(
            "store_dir: /data",
            &format!("store_dir: {}", dir.path().join("js").display()),
        ),
    )
    .unwrap();
    let (ok, out) = nats_check(&conf, &[]);
    assert!(ok, "compose nats.conf does not load: {out}");
}

#[test]
fn kubernetes_nats_config_takes_the_passwords_from_the_environment() {
    let manifest =
        std::fs::read_to_string(workspace_root().join("deploy/k8s/20-nats.yaml")).unwrap();
    // The ConfigMap's nats.conf: the block under `nats.conf: |`, de-indented.
    let start = manifest
        .find("nats.conf: |")
        .expect("nats.conf in 20-nats.yaml");
    let conf_text: String = manifest[start..]
        .lines()
        .skip(1)
        .take_while(|l| l.starts_with("    ") || l.is_empty())
        .map(|l| format!("{}\n", l.get(4..).unwrap_or("")))
        .collect();
    assert!(conf_text.contains("sync_interval: always"), "{conf_text}");
    assert_contains_lines(
        &conf_text,
        &auth_lines("$NIMBUS_NATS_PASSWORD", "$NIMBUS_NATS_PUBLISHER_PASSWORD"),
        "20-nats.yaml",
    );
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("nats.conf");
    std::fs::write(
        &conf,
        conf_text.replace(
            "store_dir: /data",
            &format!("store_dir: {}", dir.path().join("js").display()),
        ),
    )
    .unwrap();
    let (ok, out) = nats_check(
        &conf,
        &[
            ("NIMBUS_NATS_PASSWORD", "a"),
            ("NIMBUS_NATS_PUBLISHER_PASSWORD", "b"),
        ],
    );
    assert!(ok, "k8s nats.conf does not load: {out}");
}
