//! A waiter in admission's queues: where it stands, how it leaves when its
//! request goes away without a permit, and what it is told when it waits
//! out `max_wait`.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::time::Instant;

use super::shed::{self, MAX_RETRY_AFTER, MIN_RETRY_AFTER};
use super::{Admission, Permit, Priority, Rejection, State};

pub(super) struct Waiter {
    pub(super) id: u64,
    /// Its place in its queue, which is kept in this order.
    pub(super) place: QueuePlace,
    pub(super) grant: oneshot::Sender<Permit>,
    pub(super) predicted_wait: Option<Duration>,
}

/// Where a waiter stands: a fresh one by its number, a booked retry by the
/// number the next waiter had when it was booked, ahead of that waiter
/// (and of every booked retry with a later place: a retry that comes back
/// late does not lose its place to one booked after it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct QueuePlace {
    pub(super) number: u64,
    pub(super) fresh: bool,
}

/// Removes a waiter from its queue when its `acquire` future ends without a
/// permit (timed out, or dropped because the client went away).
pub(super) struct QueueExit<'a> {
    pub(super) admission: &'a Arc<Admission>,
    pub(super) tenant: &'a str,
    pub(super) class: Priority,
    pub(super) id: u64,
    pub(super) armed: bool,
}

impl Drop for QueueExit<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.admission.leave_queue(self.tenant, self.class, self.id);
        }
    }
}

pub(super) fn min_backlogged_virtual(state: &State) -> Option<f64> {
    state
        .tenants
        .values()
        .filter(|t| t.queues.iter().any(|queue| !queue.is_empty()))
        .map(|t| t.virtual_served)
        .reduce(f64::min)
}

/// Waiters a request of `class` queues behind: its class and those above.
pub(super) fn queued_ahead(state: &State, class: Priority) -> usize {
    match class {
        Priority::Interactive => state.queued_by_class[Priority::Interactive.index()],
        Priority::Batch => state.queued,
    }
}

/// Waiters a request of `class` at `place` has ahead of it, whatever their
/// tenant: those of classes above and those of its own with an earlier place.
fn waiters_ahead(state: &State, class: Priority, place: QueuePlace) -> usize {
    let own = class.index();
    let earlier_of_its_class: usize = state
        .tenants
        .values()
        .map(|tenant| tenant.queues[own].partition_point(|waiter| waiter.place < place))
        .sum();
    state.queued_by_class[..own].iter().sum::<usize>() + earlier_of_its_class
}

/// Seconds until the queue would drain at the measured rate.
pub(super) fn retry_after(state: &mut State) -> Duration {
    let now = Instant::now().into_std();
    let seconds = state
        .drain
        .sustained_per_second(now)
        .map_or(MIN_RETRY_AFTER.as_secs_f64(), |rate| {
            (state.queued as f64 + 1.0) / rate
        });
    Duration::from_secs_f64(seconds.ceil()).clamp(MIN_RETRY_AFTER, MAX_RETRY_AFTER)
}

/// The answer to a waiter that waited `max_wait` at `place`: come back
/// when the waiters and bookings ahead of it have drained, its place held.
/// Told only how long the whole queue takes to drain, without a place, a
/// cold burst's last waiters came back to a queue refilled by then and
/// were shed (benchmarks/results/2026-12-07-5a20ab7581d8-overload-closed,
/// c75); given a new place on the bookings' calendar, they went behind
/// every retry booked while they waited, some past its horizon.
pub(super) fn timed_out(
    state: &mut State,
    class: Priority,
    place: QueuePlace,
    key: u64,
) -> Rejection {
    let now = Instant::now().into_std();
    let Some(rate) = state.drain.calendar_per_second(now) else {
        return Rejection::WaitTimedOut {
            retry_after: retry_after(state),
            booked: false,
        };
    };
    let ahead = waiters_ahead(state, class, place) + state.bookings.held_before(place.number, now);
    let (retry_after, place_in) = shed::advice(ahead as f64 / rate);
    let booked = place_in
        .is_some_and(|place_in| state.bookings.book(key, now + place_in, place.number, now));
    Rejection::WaitTimedOut {
        retry_after,
        booked,
    }
}
