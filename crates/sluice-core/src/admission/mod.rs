//! Admission: how many streams run at once, and who goes next.
//!
//! A stream runs while it holds a [`Permit`]; dropping the permit is the only
//! way to release it, so release happens exactly once, whatever ends the
//! stream. Waiters queue per tenant; when a permit frees up, the tenant that
//! has been served least relative to its weight goes next (start-time fair
//! queueing), skipping tenants at their concurrency cap. A waiter whose
//! future is dropped (client gone) leaves the queue at once.
//!
//! Two priority classes share the permits: `interactive` waiters go before
//! any `batch` waiter, and batch streams never take the last
//! `interactive_reserve` permits, so interactive traffic does not wait for
//! a batch flood to finish. Under a limit the governor lowered, batch
//! leaves one place, and interactive requests may go past the limit by
//! the places batch holds (at most the reserve): the engine prefills an
//! interactive prompt before any batch work, so what the governor holds
//! back is batch, not the interactive request behind it. A request with
//! a deadline for its first token that the queue cannot meet is shed at
//! once ([`shed`]).
//!
//! A tenant may also have a token rate: each request is charged tokens from
//! the tenant's bucket before it queues ([`Admission::charge_tokens`]), and
//! the charge is settled against the real use when the request ends.

mod charge;
mod limits;
mod permit;
mod queue;
pub mod shed;
mod urgency;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::rate::TokenBucket;
pub use charge::{TokenCharge, TokenLedger};
pub use permit::Permit;
use queue::{
    QueueExit, QueuePlace, Waiter, min_backlogged_virtual, queued_ahead, retry_after, timed_out,
};
use shed::{Arrival, Bookings, DrainRate, Verdict};
pub use urgency::{Priority, Urgency};

/// Requests without a known API key belong to this tenant.
pub const DEFAULT_TENANT: &str = "default";

#[derive(Debug, Clone, PartialEq)]
pub struct TenantPolicy {
    /// Share of admissions under contention, relative to other tenants.
    pub weight: f64,
    /// Most streams this tenant may run at once.
    pub max_concurrent: u32,
    /// Prompt plus completion tokens per minute; unlimited when `None`.
    pub tokens_per_minute: Option<u32>,
    /// The class of the tenant's requests that name none.
    pub priority: Priority,
}

impl Default for TenantPolicy {
    fn default() -> Self {
        Self {
            weight: 1.0,
            max_concurrent: u32::MAX,
            tokens_per_minute: None,
            priority: Priority::Interactive,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct AdmissionLimits {
    /// Most requests waiting at once, over all tenants.
    pub max_queue: usize,
    /// Longest a request may wait before it is rejected.
    pub max_wait: Duration,
    /// Permits batch requests may not take.
    pub interactive_reserve: u32,
}

/// Why a request was not admitted.
#[derive(Debug, Clone, PartialEq)]
pub enum Rejection {
    /// The queue is full.
    QueueFull { retry_after: Duration },
    /// The request waited `max_wait` without a free permit; `retry_after`
    /// is when what is ahead of it will have drained, its place held for it
    /// when `booked`.
    WaitTimedOut { retry_after: Duration, booked: bool },
    /// The tenant is at its concurrency cap and its queue share is used up.
    TenantQueueFull { retry_after: Duration },
    /// The tenant's token bucket does not hold the request's charge;
    /// `retry_after` is when it will.
    TokenRateExceeded {
        retry_after: Duration,
        tokens_per_minute: u32,
    },
    /// Its predicted first token misses its deadline; `retry_after` is when
    /// the queue ahead of it will have drained, its place held for it when
    /// `booked`.
    Shed {
        retry_after: Duration,
        predicted_wait: Duration,
        booked: bool,
    },
    /// The store of shared token rates cannot be reached and the server is
    /// configured to refuse rather than count locally.
    QuotaStoreUnavailable { retry_after: Duration },
    /// Admission is closed (draining for shutdown).
    Closed,
}

impl Rejection {
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::QueueFull { retry_after }
            | Self::WaitTimedOut { retry_after, .. }
            | Self::TenantQueueFull { retry_after }
            | Self::TokenRateExceeded { retry_after, .. }
            | Self::Shed { retry_after, .. }
            | Self::QuotaStoreUnavailable { retry_after } => Some(*retry_after),
            Self::Closed => None,
        }
    }
}

#[derive(Default)]
struct TenantState {
    active: u32,
    /// Waiters by class ([`Priority::index`]).
    queues: [VecDeque<Waiter>; 2],
    /// Admissions so far divided by weight: the fair-queueing clock.
    virtual_served: f64,
}

struct State {
    limit: u32,
    /// The limit it was built with: the governor's baseline.
    baseline: u32,
    /// Permits held by class ([`Priority::index`]).
    active_by_class: [u32; 2],
    /// Permits taken past the limit by booked retries still awaiting
    /// their first token.
    overdraft_active: u32,
    closed: bool,
    next_waiter: u64,
    queued: usize,
    /// Waiters by class ([`Priority::index`]).
    queued_by_class: [usize; 2],
    tenants: HashMap<String, TenantState>,
    policies: HashMap<String, TenantPolicy>,
    /// Token buckets of the tenants with a token rate.
    buckets: HashMap<String, TokenBucket>,
    drain: DrainRate,
    bookings: Bookings,
    /// Admission to first token, as the governor last measured it.
    service: Duration,
}

impl State {
    /// Permits held, both classes.
    fn active(&self) -> u32 {
        self.active_by_class.iter().sum()
    }
}

/// Counts an observer may read at any time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AdmissionSnapshot {
    pub limit: u32,
    pub active: u32,
    pub queued: usize,
    /// Places held for shed requests' retries.
    pub booked: usize,
}

pub struct Admission {
    state: Mutex<State>,
    limits: AdmissionLimits,
}

/// Grants computed under the lock, sent after it is released: a grant whose
/// waiter is gone drops its permit, which takes the lock again.
type Grants = Vec<(oneshot::Sender<Permit>, Permit)>;

impl Admission {
    pub fn new(
        limit: u32,
        limits: AdmissionLimits,
        policies: HashMap<String, TenantPolicy>,
    ) -> Arc<Self> {
        let now = Instant::now().into_std();
        let buckets = policies
            .iter()
            .filter_map(|(name, policy)| {
                let rate = policy.tokens_per_minute?;
                Some((name.clone(), TokenBucket::new(rate, now)))
            })
            .collect();
        Arc::new(Self {
            state: Mutex::new(State {
                limit,
                baseline: limit,
                active_by_class: [0; 2],
                overdraft_active: 0,
                closed: false,
                next_waiter: 0,
                queued: 0,
                queued_by_class: [0; 2],
                tenants: HashMap::new(),
                policies,
                buckets,
                drain: DrainRate::default(),
                bookings: Bookings::default(),
                service: Duration::ZERO,
            }),
            limits,
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        crate::sync::lock(&self.state)
    }

    pub fn snapshot(&self) -> AdmissionSnapshot {
        let state = self.lock();
        AdmissionSnapshot {
            limit: state.limit,
            active: state.active(),
            queued: state.queued,
            booked: state.bookings.len(),
        }
    }

    /// Sets the time an admitted stream takes to its first token, which
    /// shedding adds to the queue wait it predicts (the governor's input).
    pub fn set_service_time(&self, service: Duration) {
        self.lock().service = service;
    }

    /// The class a tenant's requests get when they name none.
    pub fn default_priority(&self, tenant: &str) -> Priority {
        self.lock()
            .policies
            .get(tenant)
            .map_or(Priority::Interactive, |policy| policy.priority)
    }

    /// Sets the concurrency limit (the governor's output). Raising it admits
    /// waiters at once; lowering it never revokes running streams.
    pub fn set_limit(self: &Arc<Self>, limit: u32) {
        let grants = {
            let mut state = self.lock();
            state.limit = limit;
            self.dispatch(&mut state)
        };
        send_grants(grants);
    }

    /// Every tenant's concurrency cap (`u32::MAX`: none), for a rollback.
    pub fn tenant_caps(&self) -> BTreeMap<String, u32> {
        self.lock()
            .policies
            .iter()
            .map(|(name, policy)| (name.clone(), policy.max_concurrent))
            .collect()
    }

    /// Sets one tenant's concurrency cap at run time and returns the one it
    /// replaces. Raising it admits the tenant's waiters at once; lowering it
    /// never revokes running streams.
    pub fn set_tenant_cap(self: &Arc<Self>, tenant: &str, max_concurrent: u32) -> u32 {
        let (previous, grants) = {
            let mut state = self.lock();
            let policy = state.policies.entry(tenant.to_owned()).or_default();
            let previous = std::mem::replace(&mut policy.max_concurrent, max_concurrent);
            (previous, self.dispatch(&mut state))
        };
        send_grants(grants);
        previous
    }

    /// Restores caps saved by [`Admission::tenant_caps`]; a tenant missing
    /// from `caps` gets none.
    pub fn set_tenant_caps(self: &Arc<Self>, caps: &BTreeMap<String, u32>) {
        let grants = {
            let mut state = self.lock();
            for (name, policy) in &mut state.policies {
                policy.max_concurrent = caps.get(name).copied().unwrap_or(u32::MAX);
            }
            for (name, cap) in caps {
                state
                    .policies
                    .entry(name.clone())
                    .or_default()
                    .max_concurrent = *cap;
            }
            self.dispatch(&mut state)
        };
        send_grants(grants);
    }

    /// Stops admitting: waiters and new requests are rejected as `Closed`.
    pub fn close(&self) {
        let mut state = self.lock();
        state.closed = true;
        for tenant in state.tenants.values_mut() {
            tenant.queues.iter_mut().for_each(VecDeque::clear);
        }
        state.queued = 0;
        state.queued_by_class = [0; 2];
    }

    /// Waits for an interactive permit for `tenant` without a deadline.
    pub async fn acquire(self: &Arc<Self>, tenant: &str) -> Result<Permit, Rejection> {
        self.acquire_with(tenant, Urgency::default()).await
    }

    /// Waits for a permit for `tenant`, at most the configured wait, or
    /// sheds the request at once when its deadline cannot be met.
    pub async fn acquire_with(
        self: &Arc<Self>,
        tenant: &str,
        urgency: Urgency,
    ) -> Result<Permit, Rejection> {
        let class = urgency.priority;
        let (id, place, grant) = {
            let mut state = self.lock();
            if state.closed {
                return Err(Rejection::Closed);
            }
            let now = Instant::now().into_std();
            let policy = state.policies.get(tenant).cloned().unwrap_or_default();
            let tenant_state = state.tenants.entry(tenant.to_owned()).or_default();
            let tenant_has_room = tenant_state.active < policy.max_concurrent;
            let ahead = queued_ahead(&state, class);
            let must_wait = !(state.active() < self.class_limit(&state, class)
                && tenant_has_room
                && ahead == 0);
            let claimed = state.bookings.claim(urgency.retry_key, now);
            let verdict = if claimed.is_some() {
                Verdict::Queue {
                    predicted_wait: None,
                }
            } else {
                // Bookings due before its first token must come go ahead;
                // without a deadline, every booking (none reaches past the
                // horizon).
                let within = urgency.deadline.map_or(shed::MAX_RETRY_AFTER, |deadline| {
                    deadline.saturating_sub(state.service)
                });
                let booked = state
                    .bookings
                    .held_for_others(urgency.retry_key, now, within);
                let arrival = Arrival {
                    must_wait,
                    queued_ahead: ahead,
                    booked,
                    drain_per_second: state.drain.sustained_per_second(now),
                    calendar_per_second: state.drain.calendar_per_second(now),
                    service: state.service,
                    deadline: urgency.deadline,
                };
                shed::decide(&arrival)
            };
            let predicted_wait = match verdict {
                Verdict::Queue { predicted_wait } => predicted_wait,
                Verdict::Shed {
                    predicted_wait,
                    retry_after,
                    place_in,
                } => {
                    let place = state.next_waiter;
                    let booked = place_in.is_some_and(|place_in| {
                        state
                            .bookings
                            .book(urgency.retry_key, now + place_in, place, now)
                    });
                    return Err(Rejection::Shed {
                        retry_after,
                        predicted_wait,
                        booked,
                    });
                }
            };
            if !must_wait {
                return Ok(self.admit(&mut state, tenant, class, predicted_wait, false));
            }
            if state.queued >= self.limits.max_queue {
                let retry_after = retry_after(&mut state);
                return Err(if tenant_has_room {
                    Rejection::QueueFull { retry_after }
                } else {
                    Rejection::TenantQueueFull { retry_after }
                });
            }
            let id = state.next_waiter;
            state.next_waiter += 1;
            let (grant, granted) = oneshot::channel();
            let min_virtual = min_backlogged_virtual(&state);
            let tenant_state = state.tenants.get_mut(tenant).expect("inserted above");
            if let Some(min_virtual) = min_virtual
                && tenant_state.queues.iter().all(VecDeque::is_empty)
            {
                // A tenant returning from idle does not bank credit.
                tenant_state.virtual_served = tenant_state.virtual_served.max(min_virtual);
            }
            let queue = &mut tenant_state.queues[class.index()];
            let place = claimed.map_or(
                QueuePlace {
                    number: id,
                    fresh: true,
                },
                |number| QueuePlace {
                    number,
                    fresh: false,
                },
            );
            let at = queue.partition_point(|waiter| waiter.place <= place);
            queue.insert(
                at,
                Waiter {
                    id,
                    place,
                    grant,
                    predicted_wait,
                },
            );
            state.queued += 1;
            state.queued_by_class[class.index()] += 1;
            let grants = self.dispatch(&mut state);
            drop(state);
            send_grants(grants);
            (id, place, granted)
        };
        let mut leave_queue = QueueExit {
            admission: self,
            tenant,
            class,
            id,
            armed: true,
        };
        let outcome = tokio::time::timeout(self.limits.max_wait, grant).await;
        match outcome {
            Ok(Ok(permit)) => {
                leave_queue.armed = false;
                Ok(permit)
            }
            Ok(Err(_)) => {
                leave_queue.armed = false;
                Err(Rejection::Closed)
            }
            Err(_) => {
                drop(leave_queue);
                Err(timed_out(&mut self.lock(), class, place, urgency.retry_key))
            }
        }
    }

    fn admit(
        self: &Arc<Self>,
        state: &mut State,
        tenant: &str,
        class: Priority,
        predicted_wait: Option<Duration>,
        overdraft: bool,
    ) -> Permit {
        let weight = state
            .policies
            .get(tenant)
            .map_or(1.0, |p| p.weight)
            .max(1e-6);
        let tenant_state = state.tenants.get_mut(tenant).expect("tenant exists");
        tenant_state.active += 1;
        tenant_state.virtual_served += 1.0 / weight;
        state.active_by_class[class.index()] += 1;
        state.overdraft_active += u32::from(overdraft);
        state.drain.record(Instant::now().into_std());
        Permit {
            admission: Arc::clone(self),
            tenant: tenant.to_owned(),
            class,
            predicted_wait,
            overdraft,
        }
    }

    /// Hands free permits to waiters: interactive before batch, within a
    /// class the fairest tenant first.
    fn dispatch(self: &Arc<Self>, state: &mut State) -> Grants {
        let mut grants = Vec::new();
        for class in [Priority::Interactive, Priority::Batch] {
            while state.active() < self.class_limit(state, class) {
                let Some(grant) = self.admit_next(state, class, false, |_| true) else {
                    break;
                };
                grants.push(grant);
            }
        }
        self.dispatch_booked_overdraft(state, &mut grants);
        grants
    }

    /// Admits the front waiter of `class` of the fairest tenant (least
    /// served for its weight) under its cap whose front waiter is
    /// `eligible`; None when there is none.
    fn admit_next(
        self: &Arc<Self>,
        state: &mut State,
        class: Priority,
        overdraft: bool,
        eligible: impl Fn(&Waiter) -> bool,
    ) -> Option<(oneshot::Sender<Permit>, Permit)> {
        let queue = class.index();
        let name = state
            .tenants
            .iter()
            .filter(|(name, tenant)| {
                let cap = state
                    .policies
                    .get(*name)
                    .map_or(u32::MAX, |p| p.max_concurrent);
                tenant.queues[queue].front().is_some_and(&eligible) && tenant.active < cap
            })
            .min_by(|a, b| a.1.virtual_served.total_cmp(&b.1.virtual_served))
            .map(|(name, _)| name.clone())?;
        let waiter = state
            .tenants
            .get_mut(&name)
            .and_then(|tenant| tenant.queues[queue].pop_front())?;
        state.queued -= 1;
        state.queued_by_class[queue] -= 1;
        let permit = self.admit(state, &name, class, waiter.predicted_wait, overdraft);
        Some((waiter.grant, permit))
    }

    fn release(self: &Arc<Self>, tenant: &str, class: Priority, overdraft: bool) {
        let grants = {
            let mut state = self.lock();
            state.active_by_class[class.index()] -= 1;
            state.overdraft_active -= u32::from(overdraft);
            state.drain.record_end(Instant::now().into_std());
            if let Some(tenant_state) = state.tenants.get_mut(tenant) {
                tenant_state.active -= 1;
            }
            self.dispatch(&mut state)
        };
        send_grants(grants);
    }

    fn settle_overdraft(self: &Arc<Self>) {
        let grants = {
            let mut state = self.lock();
            state.overdraft_active -= 1;
            self.dispatch(&mut state)
        };
        send_grants(grants);
    }

    fn leave_queue(&self, tenant: &str, class: Priority, id: u64) {
        let mut state = self.lock();
        let removed = state.tenants.get_mut(tenant).is_some_and(|t| {
            let queue = &mut t.queues[class.index()];
            let before = queue.len();
            queue.retain(|waiter| waiter.id != id);
            queue.len() < before
        });
        if removed {
            state.queued -= 1;
            state.queued_by_class[class.index()] -= 1;
        }
    }
}

fn send_grants(grants: Grants) {
    for (grant, permit) in grants {
        // A waiter that left drops the permit here, which releases it.
        let _ = grant.send(permit);
    }
}

#[cfg(test)]
mod tests;
