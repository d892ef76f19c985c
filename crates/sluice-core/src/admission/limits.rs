//! Who may take a permit past the limit the governor sets: interactive
//! requests by the places batch holds, and booked retries by an eighth of
//! the limit. The limit itself is the governor's; these are the promises
//! admission keeps under it.

use std::sync::Arc;

use super::{Admission, Grants, Priority, State};

/// Booked retries may pass the limit by `limit / BOOKED_OVERDRAFT_SHARE`
/// permits ([`Admission::dispatch_booked_overdraft`]).
const BOOKED_OVERDRAFT_SHARE: u32 = 8;

impl Admission {
    /// The permits held in all that a class may take one more under. Batch
    /// leaves the reserve of the baseline, and one place under a lower
    /// limit: the governor lowers it to hold prompts in admission, and the
    /// next place to open there is an interactive request's. Interactive
    /// may pass a lower limit by the places batch holds, up to the reserve
    /// and never past the baseline.
    pub(super) fn class_limit(&self, state: &State, class: Priority) -> u32 {
        let reserve = self.limits.interactive_reserve;
        match class {
            Priority::Interactive => {
                let batch = state.active_by_class[Priority::Batch.index()];
                let ceiling = state.baseline.max(state.limit);
                state.limit.saturating_add(batch.min(reserve)).min(ceiling)
            }
            Priority::Batch => state
                .limit
                .saturating_sub(reserve.min(1))
                .min(state.baseline.saturating_sub(reserve)),
        }
    }

    /// Booked retries at the front of their queue pass the limit, by at
    /// most an eighth of it at a time and never past the baseline: their
    /// place was promised for now, and the governor may have lowered the
    /// limit since (first tokens running late), which would hold them
    /// behind streams admitted long before they came back, past their
    /// deadline (measured at 1.5x load: booked retries' TTFT p95 21.6 s, the
    /// longest when the limit fell just before they returned).
    pub(super) fn dispatch_booked_overdraft(
        self: &Arc<Self>,
        state: &mut State,
        grants: &mut Grants,
    ) {
        let allowance = state.limit / BOOKED_OVERDRAFT_SHARE;
        let ceiling = state.baseline.max(state.limit);
        let queue = Priority::Interactive.index();
        while state.overdraft_active < allowance && state.active() < ceiling {
            let next = state
                .tenants
                .iter()
                .filter(|(name, tenant)| {
                    let cap = state
                        .policies
                        .get(*name)
                        .map_or(u32::MAX, |p| p.max_concurrent);
                    tenant.queues[queue]
                        .front()
                        .is_some_and(|waiter| !waiter.place.fresh)
                        && tenant.active < cap
                })
                .min_by(|a, b| a.1.virtual_served.total_cmp(&b.1.virtual_served))
                .map(|(name, _)| name.clone());
            let Some(name) = next else { break };
            let waiter = state
                .tenants
                .get_mut(&name)
                .and_then(|tenant| tenant.queues[queue].pop_front())
                .expect("tenant chosen for a booked retry at its front");
            state.queued -= 1;
            state.queued_by_class[queue] -= 1;
            let permit = self.admit(
                state,
                &name,
                Priority::Interactive,
                waiter.predicted_wait,
                true,
            );
            grants.push((waiter.grant, permit));
        }
    }
}
