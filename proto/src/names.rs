//! KV bucket and stream names. Like subjects, they are derived from the configured
//! prefix so two clusters can share one NATS account.

/// Names of the JetStream resources one cluster uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Names {
    upper: String,
}

impl Names {
    /// `prefix` is the subject prefix (e.g. `nimbus`); stream and bucket names are
    /// its upper-case form (`NIMBUS_FUNCTIONS`).
    pub fn new(prefix: &str) -> Self {
        Self {
            upper: prefix.to_ascii_uppercase().replace(['.', '-'], "_"),
        }
    }

    /// KV bucket of function configurations, keyed by function name.
    pub fn functions_bucket(&self) -> String {
        format!("{}_FUNCTIONS", self.upper)
    }

    /// KV bucket of schedules, keyed by schedule name.
    pub fn schedules_bucket(&self) -> String {
        format!("{}_SCHEDULES", self.upper)
    }

    /// KV bucket of schedule state (last instant fired), keyed by schedule name.
    pub fn schedule_state_bucket(&self) -> String {
        format!("{}_SCHEDULE_STATE", self.upper)
    }

    /// KV bucket of completed asynchronous attempts (short-lived records).
    pub fn completions_bucket(&self) -> String {
        format!("{}_COMPLETIONS", self.upper)
    }

    /// KV bucket of leases for singleton tasks (bucket watchers).
    pub fn leases_bucket(&self) -> String {
        format!("{}_LEASES", self.upper)
    }

    /// KV bucket of what each bucket watcher saw last.
    pub fn watch_state_bucket(&self) -> String {
        format!("{}_WATCH_STATE", self.upper)
    }

    /// KV bucket of HTTP routes, keyed by route id.
    pub fn routes_bucket(&self) -> String {
        format!("{}_ROUTES", self.upper)
    }

    /// KV bucket of event triggers, keyed by trigger id.
    pub fn triggers_bucket(&self) -> String {
        format!("{}_TRIGGERS", self.upper)
    }

    /// Stream of durable asynchronous invocations.
    pub fn async_stream(&self) -> String {
        format!("{}_ASYNC", self.upper)
    }

    /// Durable consumer that schedulers share on the async stream.
    pub fn async_consumer(&self) -> String {
        format!("{}_SCHEDULERS", self.upper)
    }

    /// Stream of dead letters (invocation records of failed async invocations).
    pub fn dlq_stream(&self) -> String {
        format!("{}_DLQ", self.upper)
    }

    /// Bounded stream of log records.
    pub fn logs_stream(&self) -> String {
        format!("{}_LOGS", self.upper)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_prefix() {
        let n = Names::new("nimbus");
        assert_eq!(n.functions_bucket(), "NIMBUS_FUNCTIONS");
        assert_eq!(n.async_stream(), "NIMBUS_ASYNC");
        assert_eq!(Names::new("acme-prod").logs_stream(), "ACME_PROD_LOGS");
    }
}
