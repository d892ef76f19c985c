//! The QoS evaluator's window: SLO indicators per scope (global, each
//! tracked tenant, each flag's canary and baseline cohorts), filled by the
//! same observations as the Prometheus series and taken whole by the QoS
//! loop (`control::qos`) at each evaluation.

use std::collections::HashMap;
use std::sync::Mutex;

use sluice_core::admission::DEFAULT_TENANT;
use sluice_core::flags::Cohort;
use sluice_core::policy::{CohortWindows, ScopedWindows, Window};
use sluice_core::sync::lock;

use super::observer::Outcome;

/// The QoS window's bucket for tenants it does not track. Tenants come
/// from configured API keys, so none lands here today; the bucket is what
/// keeps a new source of tenant names from growing the window.
pub const OTHER_TENANTS: &str = "_other";

/// Where one request's observations go in the QoS window: its tenant's
/// slot, and its cohort in each flag in partial rollout. Resolved once per
/// request, so a token costs no lookup.
#[derive(Debug, Clone)]
pub struct QosTags {
    tenant: usize,
    canaries: Vec<(&'static str, Cohort)>,
}

/// The window being filled and the fixed set of tenants it tracks.
pub struct QosWindows {
    window: Mutex<QosWindow>,
    /// Tenant name → its slot in the window; fixed at start.
    tenant_slots: HashMap<String, usize>,
    /// Slot → tenant name; the last slot is `OTHER_TENANTS`.
    tenant_names: Vec<String>,
}

/// One window: global, per tenant slot, per compared flag.
struct QosWindow {
    global: Window,
    tenants: Vec<Window>,
    flags: Vec<(&'static str, CohortWindows)>,
}

impl QosWindow {
    fn new(tenant_slots: usize) -> Self {
        Self {
            global: Window::new(),
            tenants: vec![Window::new(); tenant_slots],
            flags: Vec::new(),
        }
    }

    /// The global window and the request's tenant window.
    fn scopes(&mut self, tags: &QosTags) -> [&mut Window; 2] {
        [&mut self.global, &mut self.tenants[tags.tenant]]
    }

    /// Each cohort the request is in: a handful of flags, found by a short
    /// scan.
    fn record_cohorts(&mut self, tags: &QosTags, record: impl Fn(&mut CohortWindows, Cohort)) {
        for &(flag, cohort) in &tags.canaries {
            let index = match self.flags.iter().position(|(name, _)| *name == flag) {
                Some(index) => index,
                None => {
                    self.flags.push((flag, CohortWindows::default()));
                    self.flags.len() - 1
                }
            };
            record(&mut self.flags[index].1, cohort);
        }
    }
}

impl QosWindows {
    /// Tracks `tenants`, the default tenant and `OTHER_TENANTS`.
    pub fn new(tenants: Vec<String>) -> Self {
        let mut tenant_names = vec![DEFAULT_TENANT.to_owned()];
        for tenant in tenants {
            if !tenant_names.contains(&tenant) {
                tenant_names.push(tenant);
            }
        }
        tenant_names.push(OTHER_TENANTS.to_owned());
        let tenant_slots = tenant_names
            .iter()
            .enumerate()
            .map(|(slot, name)| (name.clone(), slot))
            .collect();
        Self {
            window: Mutex::new(QosWindow::new(tenant_names.len())),
            tenant_slots,
            tenant_names,
        }
    }

    pub fn tags(&self, tenant: &str, canaries: Vec<(&'static str, Cohort)>) -> QosTags {
        QosTags {
            tenant: self.tenant_slot(tenant),
            canaries,
        }
    }

    fn tenant_slot(&self, tenant: &str) -> usize {
        self.tenant_slots
            .get(tenant)
            .copied()
            .unwrap_or(self.tenant_names.len() - 1)
    }

    fn update(&self, update: impl FnOnce(&mut QosWindow)) {
        update(&mut lock(&self.window));
    }

    pub fn record_ttft(&self, seconds: f64, tags: &QosTags) {
        self.update(|window| {
            for scope in window.scopes(tags) {
                scope.ttft.record(seconds);
            }
            window.record_cohorts(tags, |flag, cohort| {
                flag.cohort_mut(cohort).ttft.record(seconds);
            });
        });
    }

    pub fn record_itl(&self, seconds: f64, tags: &QosTags) {
        self.update(|window| {
            for scope in window.scopes(tags) {
                scope.itl.record(seconds);
            }
            window.record_cohorts(tags, |flag, cohort| {
                flag.cohort_mut(cohort).itl.record(seconds);
            });
        });
    }

    pub fn count_output_tokens(&self, tokens: u32, tags: &QosTags) {
        self.update(|window| {
            for scope in window.scopes(tags) {
                scope.output_tokens += u64::from(tokens);
            }
        });
    }

    /// A rejection counts in the tenant's window, and in the global one
    /// only when the server (not the tenant's own limit) refused.
    pub fn count_rejected(&self, tenant: &str, by_server: bool) {
        let slot = self.tenant_slot(tenant);
        self.update(|window| {
            if by_server {
                window.global.rejections += 1;
            }
            window.tenants[slot].rejections += 1;
        });
    }

    pub fn count_finished(&self, outcome: Outcome, tags: &QosTags) {
        self.update(|window| {
            for scope in window.scopes(tags) {
                scope.requests += 1;
                if outcome.is_server_error() {
                    scope.errors += 1;
                }
                if outcome.is_infrastructure_cancellation() {
                    scope.infra_cancellations += 1;
                }
            }
        });
    }

    /// Ends the window: returns every scope of it (covering `seconds`) and
    /// starts anew.
    pub fn take(&self, seconds: f64) -> ScopedWindows {
        let fresh = QosWindow::new(self.tenant_names.len());
        let window = std::mem::replace(&mut *lock(&self.window), fresh);
        let with_seconds = |mut window: Window| {
            window.seconds = seconds;
            window
        };
        ScopedWindows {
            global: with_seconds(window.global),
            tenants: self
                .tenant_names
                .iter()
                .cloned()
                .zip(window.tenants.into_iter().map(with_seconds))
                .collect(),
            flags: window
                .flags
                .into_iter()
                .map(|(flag, cohorts)| (flag.to_owned(), cohorts))
                .collect(),
        }
    }
}
