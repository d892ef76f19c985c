//! The door before admission: how many requests may be read, parsed and
//! tokenized at once, over all tenants and per tenant. Admission bounds
//! the work after tokenizing; without this gate a client could make the
//! server read and tokenize any number of megabyte prompts at once.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use sluice_core::config::LimitsConfig;
use sluice_core::sync::lock;

use crate::openai::ApiError;

/// Counts requests between their arrival and their admission.
pub struct PendingGate {
    max_total: usize,
    max_per_tenant: usize,
    /// Total, and per tenant (tenant names are configured names or the
    /// default tenant: the map stays small).
    counts: Mutex<(usize, HashMap<String, usize>)>,
}

impl PendingGate {
    pub fn new(limits: &LimitsConfig) -> Self {
        Self {
            max_total: limits.max_pending_requests,
            max_per_tenant: limits.max_pending_per_tenant,
            counts: Mutex::new((0, HashMap::new())),
        }
    }

    /// A place at the door, or 429 at once: a client told to retry costs
    /// less than one whose body is read only to wait.
    pub fn enter(self: &Arc<Self>, tenant: &str) -> Result<Pending, ApiError> {
        let mut counts = lock(&self.counts);
        let (total, per_tenant) = &mut *counts;
        let tenant_count = per_tenant.get(tenant).copied().unwrap_or(0);
        if *total >= self.max_total || tenant_count >= self.max_per_tenant {
            let scope = if *total >= self.max_total {
                format!("{} requests are", self.max_total)
            } else {
                format!("{} requests of this tenant are", self.max_per_tenant)
            };
            return Err(ApiError::too_many_requests(
                "rate_limit_exceeded",
                "too_many_pending_requests",
                format!("{scope} being read and tokenized already; retry shortly."),
                1,
            ));
        }
        *total += 1;
        per_tenant.insert(tenant.to_owned(), tenant_count + 1);
        Ok(Pending {
            gate: Arc::clone(self),
            tenant: tenant.to_owned(),
        })
    }
}

/// One request's place at the door, given back when dropped.
pub struct Pending {
    gate: Arc<PendingGate>,
    tenant: String,
}

impl Drop for Pending {
    fn drop(&mut self) {
        let mut counts = lock(&self.gate.counts);
        let (total, per_tenant) = &mut *counts;
        *total -= 1;
        if let Some(count) = per_tenant.get_mut(&self.tenant) {
            *count -= 1;
            if *count == 0 {
                per_tenant.remove(&self.tenant);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use sluice_core::config::LimitsConfig;

    use super::PendingGate;

    #[test]
    fn the_gate_bounds_the_total_and_each_tenant_and_reopens_on_drop() {
        let gate = Arc::new(PendingGate::new(&LimitsConfig {
            max_pending_requests: 3,
            max_pending_per_tenant: 2,
            ..LimitsConfig::default()
        }));
        let a1 = gate.enter("a").unwrap();
        let _a2 = gate.enter("a").unwrap();
        let refused = gate.enter("a").err().unwrap();
        assert_eq!(refused.status.as_u16(), 429);
        assert_eq!(refused.retry_after_seconds, Some(1));
        let _b1 = gate.enter("b").unwrap();
        assert!(gate.enter("c").is_err(), "the total is full");
        drop(a1);
        assert!(gate.enter("a").is_ok());
    }
}
