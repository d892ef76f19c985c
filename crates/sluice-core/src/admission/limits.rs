//! Who may take a permit past the limit the governor sets: interactive
//! requests by the places batch holds, and booked retries by an eighth of
//! the limit until their first token. The limit itself is the governor's; these are the promises
//! admission keeps under it.

use std::sync::Arc;

use super::queue::Waiter;
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
    /// most an eighth of it awaiting a first token at a time (counted per
    /// stream, at 2x load the allowance was held for a stream's whole
    /// 150 s and retries due after it waited 11-17 s) and never past the
    /// baseline: their
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
        while state.overdraft_active < allowance && state.active() < ceiling {
            let booked = |waiter: &Waiter| !waiter.place.fresh;
            let Some(grant) = self.admit_next(state, Priority::Interactive, true, booked) else {
                break;
            };
            grants.push(grant);
        }
    }
}
