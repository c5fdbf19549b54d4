//! Checking a service's configuration before it runs: every `NIMBUS_*` variable in
//! the environment must be one the service reads, so a typo in a compose file, a
//! Kubernetes manifest or a shell does not silently fall back to a default.

/// Variables every service reads outside its command line (telemetry).
pub const SHARED_ENV: &[&str] = &["NIMBUS_LOG_FORMAT"];

/// The `NIMBUS_*` environment variables `cmd` (a service's command line) reads.
pub fn known_env(cmd: &clap::Command) -> Vec<String> {
    let mut names: Vec<String> = cmd
        .get_arguments()
        .filter_map(|a| a.get_env())
        .map(|e| e.to_string_lossy().into_owned())
        .chain(SHARED_ENV.iter().map(|s| s.to_string()))
        .collect();
    names.sort();
    names
}

/// `NIMBUS_*` variables set in this process's environment that `cmd` does not read.
pub fn unknown_env(cmd: &clap::Command) -> Vec<String> {
    let known = known_env(cmd);
    let mut unknown: Vec<String> = std::env::vars_os()
        .filter_map(|(k, _)| k.into_string().ok())
        .filter(|k| k.starts_with("NIMBUS_") && !known.contains(k))
        .collect();
    unknown.sort();
    unknown
}

/// At start: name the variables the service ignores — usually another service's
/// (`nimbus up` hands every service one environment), sometimes a typo, which
/// `--check-config` refuses.
pub fn warn_unknown_env(cmd: &clap::Command) {
    let unknown = unknown_env(cmd);
    if !unknown.is_empty() {
        tracing::info!(
            ignored = unknown.join(","),
            "NIMBUS_* variables this service does not read (a typo? --check-config tells)"
        );
    }
}

/// `--check-config`: fail on any variable the service would ignore, naming it and
/// the ones it does read.
pub fn check_env(cmd: &clap::Command) -> anyhow::Result<()> {
    let unknown = unknown_env(cmd);
    if unknown.is_empty() {
        return Ok(());
    }
    anyhow::bail!(
        "{} does not read {}; it reads {}",
        cmd.get_name(),
        unknown.join(", "),
        known_env(cmd).join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{Arg, Command};

    #[test]
    fn lists_the_variables_a_command_reads() {
        let cmd = Command::new("svc")
            .arg(Arg::new("a").long("a").env("NIMBUS_B"))
            .arg(Arg::new("b").long("b").env("NIMBUS_A"))
            .arg(Arg::new("c").long("c"));
        assert_eq!(
            known_env(&cmd),
            vec!["NIMBUS_A", "NIMBUS_B", "NIMBUS_LOG_FORMAT"]
        );
    }
}
