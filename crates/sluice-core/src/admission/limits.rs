//! Who may take a permit past the limit the governor sets: interactive
//! requests by the places batch holds, and booked retries by two awaiting
//! their first token. The limit itself is the governor's; these are the promises
//! admission keeps under it.

use std::sync::Arc;

use super::queue::Waiter;
use super::{Admission, Grants, Priority, State};

/// Booked retries awaiting their first token past the limit at a time
/// ([`Admission::dispatch_booked_overdraft`]). The engine prefills prompts
/// in admission order, so each one more waits a whole prefill longer (at
/// 2x load an eighth of a limit of 60, seven, left the last retries of a
/// burst 10-13 s from admission to first token); counted until the first
/// token, two pass as fast as the engine turns prompts into first tokens.
const BOOKED_OVERDRAFT: u32 = 2;

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

    /// Booked retries at the front of their queue pass the limit, at most
    /// [`BOOKED_OVERDRAFT`] awaiting a first token at a time (counted per
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
        let ceiling = state.baseline.max(state.limit);
        while state.overdraft_active < BOOKED_OVERDRAFT && state.active() < ceiling {
            let booked = |waiter: &Waiter| !waiter.place.fresh;
            let Some(grant) = self.admit_next(state, Priority::Interactive, true, booked) else {
                break;
            };
            grants.push(grant);
        }
    }
}
