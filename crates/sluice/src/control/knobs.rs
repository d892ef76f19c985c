//! The one owner of the run-time knobs: feature flags, whether new
//! connections get HTTP/2, the policy engine's bound on the admission limit
//! and the tenants' concurrency caps. The admin API, the QoS policy engine
//! and a config reload all change them here, and only here; the pipeline,
//! the transport and the governor read them.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use sluice_core::admission::Admission;
use sluice_core::config::RuntimeConfig;
use sluice_core::flags::{Flag, Flags, FlagsConfig};
use sluice_core::sync::lock;

/// What protocols new connections are offered; read by the accept loop.
#[derive(Debug)]
pub struct ProtocolMode {
    http2: AtomicBool,
}

impl ProtocolMode {
    pub fn new(http2: bool) -> Self {
        Self {
            http2: AtomicBool::new(http2),
        }
    }

    pub fn http2_enabled(&self) -> bool {
        self.http2.load(Ordering::Relaxed)
    }

    fn set_http2(&self, enabled: bool) {
        self.http2.store(enabled, Ordering::Relaxed);
    }
}

/// The knobs' values at one moment: what a rollback restores.
#[derive(Debug, Clone, PartialEq)]
pub struct KnobValues {
    pub flags: FlagsConfig,
    pub http2: bool,
    pub limit_bound: u32,
    /// Each tenant's concurrency cap (`throttle_tenant` lowers them).
    pub tenant_caps: BTreeMap<String, u32>,
}

pub struct RuntimeKnobs {
    flags: Arc<Flags>,
    protocol: Arc<ProtocolMode>,
    /// The policy engine's bound on the admission limit; the governor keeps
    /// the limit at or under it.
    limit_bound: AtomicU32,
    admission: Arc<Admission>,
    min_limit: u32,
    max_limit: u32,
    /// The configuration as it runs: the start-up file with every change
    /// a reload applied. A reload compares against this, so a section that
    /// needs a restart is reported on every reload until the restart.
    running: Mutex<RuntimeConfig>,
}

impl RuntimeKnobs {
    pub fn new(config: &RuntimeConfig, admission: Arc<Admission>) -> Self {
        Self {
            flags: Arc::new(Flags::new(config.flags.clone())),
            protocol: Arc::new(ProtocolMode::new(config.server.http2.enabled)),
            limit_bound: AtomicU32::new(config.governor.max_streams),
            admission,
            min_limit: config.governor.min_streams,
            max_limit: config.governor.max_streams,
            running: Mutex::new(config.clone()),
        }
    }

    /// The flags, for the pipeline to read per request.
    pub fn flags(&self) -> &Arc<Flags> {
        &self.flags
    }

    /// The protocol mode, for the accept loop to read per connection.
    pub fn protocol(&self) -> &Arc<ProtocolMode> {
        &self.protocol
    }

    pub fn limit_bound(&self) -> u32 {
        self.limit_bound.load(Ordering::Relaxed)
    }

    pub fn values(&self) -> KnobValues {
        KnobValues {
            flags: (*self.flags.snapshot()).clone(),
            http2: self.protocol.http2_enabled(),
            limit_bound: self.limit_bound(),
            tenant_caps: self.admission.tenant_caps(),
        }
    }

    /// Restores every knob to `values` (a rollback).
    pub fn restore(&self, values: &KnobValues) {
        self.flags.replace(values.flags.clone());
        self.protocol.set_http2(values.http2);
        self.limit_bound
            .store(values.limit_bound, Ordering::Relaxed);
        self.admission.set_tenant_caps(&values.tenant_caps);
    }

    /// Switches whether new connections are offered HTTP/2; returns the
    /// previous setting. Open connections are not touched.
    pub fn set_http2(&self, enabled: bool) -> bool {
        let previous = self.protocol.http2_enabled();
        self.protocol.set_http2(enabled);
        previous
    }

    /// Replaces one flag; refused (nothing changes) for an unknown name or
    /// a set of flags that does not validate.
    pub fn set_flag(&self, name: &str, flag: Flag) -> Result<(), FlagChangeError> {
        let mut flags = (*self.flags.snapshot()).clone();
        let Some(slot) = flags.get_mut(name) else {
            return Err(FlagChangeError::Unknown);
        };
        *slot = flag;
        flags.validate().map_err(FlagChangeError::Invalid)?;
        self.flags.replace(flags);
        Ok(())
    }

    /// Turns a flag's kill switch on; false for an unknown flag.
    pub fn kill_flag(&self, name: &str) -> bool {
        let mut flags = (*self.flags.snapshot()).clone();
        let Some(setting) = flags.get_mut(name) else {
            return false;
        };
        setting.kill_switch = true;
        self.flags.replace(flags);
        true
    }

    /// Moves the limit bound by `delta` streams within the governor's
    /// range; returns the bound before and after. The governor brings the
    /// admission limit under it at its next tick.
    pub fn move_limit_bound(&self, delta: i64) -> (u32, u32) {
        let before = self.limit_bound();
        let after = (i64::from(before) + delta)
            .clamp(i64::from(self.min_limit), i64::from(self.max_limit)) as u32;
        self.limit_bound.store(after, Ordering::Relaxed);
        (before, after)
    }

    /// Lowers a tenant's concurrency cap to `max_concurrent`, never
    /// loosening a tighter cap in force; returns the cap before and after.
    pub fn throttle_tenant(&self, tenant: &str, max_concurrent: u32) -> (u32, u32) {
        let current = self
            .admission
            .tenant_caps()
            .get(tenant)
            .copied()
            .unwrap_or(u32::MAX);
        let next = current.min(max_concurrent);
        self.admission.set_tenant_cap(tenant, next);
        (current, next)
    }

    /// Applies what can change without a restart from a reloaded config
    /// (flags, whether new connections get HTTP/2), each swapped whole.
    /// Returns the other sections that differ from the running config,
    /// which need a restart.
    pub fn reload(&self, next: &RuntimeConfig) -> Vec<&'static str> {
        self.flags.replace(next.flags.clone());
        self.protocol.set_http2(next.server.http2.enabled);
        let mut running = lock(&self.running);
        running.flags = next.flags.clone();
        running.server.http2.enabled = next.server.http2.enabled;
        [
            ("server", next.server != running.server),
            ("model", next.model != running.model),
            ("engine", next.engine != running.engine),
            ("governor", next.governor != running.governor),
            ("admission", next.admission != running.admission),
            ("alerts", next.alerts != running.alerts),
            ("speculation", next.speculation != running.speculation),
            ("qos", next.qos != running.qos),
        ]
        .into_iter()
        .filter_map(|(name, differs)| differs.then_some(name))
        .collect()
    }
}

/// Why a flag change was refused.
#[derive(Debug)]
pub enum FlagChangeError {
    Unknown,
    Invalid(String),
}

#[cfg(test)]
mod tests {
    use sluice_core::admission::AdmissionLimits;

    use super::*;

    fn knobs(config: &RuntimeConfig) -> RuntimeKnobs {
        let admission = Admission::new(
            config.governor.max_streams,
            AdmissionLimits {
                max_queue: 4,
                max_wait: std::time::Duration::from_secs(1),
                interactive_reserve: 0,
            },
            Default::default(),
        );
        RuntimeKnobs::new(config, admission)
    }

    #[test]
    fn a_section_that_needs_a_restart_is_reported_on_every_reload() {
        let config = RuntimeConfig::default();
        let knobs = knobs(&config);
        let mut changed = config.clone();
        changed.engine.max_sequences += 1;
        changed.server.http2.enabled = !config.server.http2.enabled;
        assert_eq!(knobs.reload(&changed), ["engine"]);
        assert_eq!(
            knobs.protocol().http2_enabled(),
            changed.server.http2.enabled
        );
        assert_eq!(
            knobs.reload(&changed),
            ["engine"],
            "still not applied: still reported"
        );
        assert!(knobs.reload(&config).is_empty(), "back to what runs");
    }

    #[test]
    fn the_limit_bound_moves_within_the_governors_range() {
        let config = RuntimeConfig::default();
        let knobs = knobs(&config);
        let (min, max) = (config.governor.min_streams, config.governor.max_streams);
        assert_eq!(knobs.move_limit_bound(1), (max, max));
        assert_eq!(knobs.move_limit_bound(-i64::from(max) * 2), (max, min));
    }

    #[test]
    fn a_rollback_restores_every_knob() {
        let config = RuntimeConfig::default();
        let knobs = knobs(&config);
        let good = knobs.values();
        knobs.set_http2(!good.http2);
        knobs.move_limit_bound(-1);
        assert!(knobs.kill_flag("prefix_cache"));
        assert_ne!(knobs.values(), good);
        knobs.restore(&good);
        assert_eq!(knobs.values(), good);
    }
}
