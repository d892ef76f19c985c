//! Admission: how many streams run at once, and who goes next.
//!
//! A stream runs while it holds a [`Permit`]; dropping the permit is the only
//! way to release it, so release happens exactly once, whatever ends the
//! stream. Waiters queue per tenant; when a permit frees up, the tenant that
//! has been served least relative to its weight goes next (start-time fair
//! queueing), skipping tenants at their concurrency cap. A waiter whose
//! future is dropped (client gone) leaves the queue at once.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::time::Instant;

#[derive(Debug, Clone, PartialEq)]
pub struct TenantPolicy {
    /// Share of admissions under contention, relative to other tenants.
    pub weight: f64,
    /// Most streams this tenant may run at once.
    pub max_concurrent: u32,
}

impl Default for TenantPolicy {
    fn default() -> Self {
        Self {
            weight: 1.0,
            max_concurrent: u32::MAX,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct AdmissionLimits {
    /// Most requests waiting at once, over all tenants.
    pub max_queue: usize,
    /// Longest a request may wait before it is rejected.
    pub max_wait: Duration,
}

/// Why a request was not admitted.
#[derive(Debug, Clone, PartialEq)]
pub enum Rejection {
    /// The queue is full.
    QueueFull { retry_after: Duration },
    /// The request waited `max_wait` without a free permit.
    WaitTimedOut { retry_after: Duration },
    /// The tenant is at its concurrency cap and its queue share is used up.
    TenantQueueFull { retry_after: Duration },
    /// Admission is closed (draining for shutdown).
    Closed,
}

impl Rejection {
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::QueueFull { retry_after }
            | Self::WaitTimedOut { retry_after }
            | Self::TenantQueueFull { retry_after } => Some(*retry_after),
            Self::Closed => None,
        }
    }
}

struct Waiter {
    id: u64,
    grant: oneshot::Sender<Permit>,
}

#[derive(Default)]
struct TenantState {
    active: u32,
    queue: VecDeque<Waiter>,
    /// Admissions so far divided by weight: the fair-queueing clock.
    virtual_served: f64,
}

struct State {
    limit: u32,
    active: u32,
    closed: bool,
    next_waiter: u64,
    queued: usize,
    tenants: HashMap<String, TenantState>,
    policies: HashMap<String, TenantPolicy>,
    /// Admission instants inside the drain-rate window.
    recent_admissions: VecDeque<Instant>,
}

/// Counts an observer may read at any time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AdmissionSnapshot {
    pub limit: u32,
    pub active: u32,
    pub queued: usize,
}

pub struct Admission {
    state: Mutex<State>,
    limits: AdmissionLimits,
}

/// The right to run one stream. Released on drop, exactly once.
pub struct Permit {
    admission: Arc<Admission>,
    tenant: String,
}

impl std::fmt::Debug for Permit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Permit")
            .field("tenant", &self.tenant)
            .finish()
    }
}

impl Permit {
    pub fn tenant(&self) -> &str {
        &self.tenant
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.admission.release(&self.tenant);
    }
}

/// How far back admissions count towards the drain rate.
const DRAIN_WINDOW: Duration = Duration::from_secs(30);
const MIN_RETRY_AFTER: Duration = Duration::from_secs(1);
const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);

/// Grants computed under the lock, sent after it is released: a grant whose
/// waiter is gone drops its permit, which takes the lock again.
type Grants = Vec<(oneshot::Sender<Permit>, Permit)>;

impl Admission {
    pub fn new(
        limit: u32,
        limits: AdmissionLimits,
        policies: HashMap<String, TenantPolicy>,
    ) -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new(State {
                limit,
                active: 0,
                closed: false,
                next_waiter: 0,
                queued: 0,
                tenants: HashMap::new(),
                policies,
                recent_admissions: VecDeque::new(),
            }),
            limits,
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // The state stays consistent at every await-free step; a panic
        // elsewhere must not take admission down with it.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn snapshot(&self) -> AdmissionSnapshot {
        let state = self.lock();
        AdmissionSnapshot {
            limit: state.limit,
            active: state.active,
            queued: state.queued,
        }
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

    /// Stops admitting: waiters and new requests are rejected as `Closed`.
    pub fn close(&self) {
        let mut state = self.lock();
        state.closed = true;
        for tenant in state.tenants.values_mut() {
            tenant.queue.clear();
        }
        state.queued = 0;
    }

    /// Waits for a permit for `tenant`, at most the configured wait.
    pub async fn acquire(self: &Arc<Self>, tenant: &str) -> Result<Permit, Rejection> {
        let (id, grant) = {
            let mut state = self.lock();
            if state.closed {
                return Err(Rejection::Closed);
            }
            let policy = state.policies.get(tenant).cloned().unwrap_or_default();
            let tenant_state = state.tenants.entry(tenant.to_owned()).or_default();
            let tenant_has_room = tenant_state.active < policy.max_concurrent;
            if state.active < state.limit && tenant_has_room && state.queued == 0 {
                return Ok(self.admit(&mut state, tenant));
            }
            if state.queued >= self.limits.max_queue {
                let retry_after = retry_after(&state);
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
                && tenant_state.queue.is_empty()
            {
                // A tenant returning from idle does not bank credit.
                tenant_state.virtual_served = tenant_state.virtual_served.max(min_virtual);
            }
            tenant_state.queue.push_back(Waiter { id, grant });
            state.queued += 1;
            let grants = self.dispatch(&mut state);
            drop(state);
            send_grants(grants);
            (id, granted)
        };
        let mut leave_queue = QueueExit {
            admission: self,
            tenant,
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
                Err(Rejection::WaitTimedOut {
                    retry_after: retry_after(&self.lock()),
                })
            }
        }
    }

    fn admit(self: &Arc<Self>, state: &mut State, tenant: &str) -> Permit {
        let weight = state
            .policies
            .get(tenant)
            .map_or(1.0, |p| p.weight)
            .max(1e-6);
        let tenant_state = state.tenants.get_mut(tenant).expect("tenant exists");
        tenant_state.active += 1;
        tenant_state.virtual_served += 1.0 / weight;
        state.active += 1;
        let now = Instant::now();
        state.recent_admissions.push_back(now);
        while state
            .recent_admissions
            .front()
            .is_some_and(|&t| now.duration_since(t) > DRAIN_WINDOW)
        {
            state.recent_admissions.pop_front();
        }
        Permit {
            admission: Arc::clone(self),
            tenant: tenant.to_owned(),
        }
    }

    /// Hands free permits to waiters, fairest tenant first.
    fn dispatch(self: &Arc<Self>, state: &mut State) -> Grants {
        let mut grants = Vec::new();
        while state.active < state.limit {
            let next = state
                .tenants
                .iter()
                .filter(|(name, tenant)| {
                    let cap = state
                        .policies
                        .get(*name)
                        .map_or(u32::MAX, |p| p.max_concurrent);
                    !tenant.queue.is_empty() && tenant.active < cap
                })
                .min_by(|a, b| a.1.virtual_served.total_cmp(&b.1.virtual_served))
                .map(|(name, _)| name.clone());
            let Some(name) = next else { break };
            let waiter = state
                .tenants
                .get_mut(&name)
                .and_then(|tenant| tenant.queue.pop_front())
                .expect("tenant chosen for a non-empty queue");
            state.queued -= 1;
            let permit = self.admit(state, &name);
            grants.push((waiter.grant, permit));
        }
        grants
    }

    fn release(self: &Arc<Self>, tenant: &str) {
        let grants = {
            let mut state = self.lock();
            state.active -= 1;
            if let Some(tenant_state) = state.tenants.get_mut(tenant) {
                tenant_state.active -= 1;
            }
            self.dispatch(&mut state)
        };
        send_grants(grants);
    }

    fn leave_queue(&self, tenant: &str, id: u64) {
        let mut state = self.lock();
        let removed = state.tenants.get_mut(tenant).is_some_and(|t| {
            let before = t.queue.len();
            t.queue.retain(|waiter| waiter.id != id);
            t.queue.len() < before
        });
        if removed {
            state.queued -= 1;
        }
    }
}

fn send_grants(grants: Grants) {
    for (grant, permit) in grants {
        // A waiter that left drops the permit here, which releases it.
        let _ = grant.send(permit);
    }
}

fn min_backlogged_virtual(state: &State) -> Option<f64> {
    state
        .tenants
        .values()
        .filter(|t| !t.queue.is_empty())
        .map(|t| t.virtual_served)
        .reduce(f64::min)
}

/// Seconds until the queue ahead would drain at the measured admission rate.
fn retry_after(state: &State) -> Duration {
    let admissions = state.recent_admissions.len();
    let seconds = match (
        state.recent_admissions.front(),
        state.recent_admissions.back(),
    ) {
        (Some(&first), Some(&last)) if admissions > 1 && last > first => {
            let rate = (admissions - 1) as f64 / (last - first).as_secs_f64();
            (state.queued as f64 + 1.0) / rate
        }
        _ => MIN_RETRY_AFTER.as_secs_f64(),
    };
    Duration::from_secs_f64(seconds.ceil()).clamp(MIN_RETRY_AFTER, MAX_RETRY_AFTER)
}

/// Removes a waiter from its queue when its `acquire` future ends without a
/// permit (timed out, or dropped because the client went away).
struct QueueExit<'a> {
    admission: &'a Arc<Admission>,
    tenant: &'a str,
    id: u64,
    armed: bool,
}

impl Drop for QueueExit<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.admission.leave_queue(self.tenant, self.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> AdmissionLimits {
        AdmissionLimits {
            max_queue: 64,
            max_wait: Duration::from_secs(30),
        }
    }

    fn admission(limit: u32) -> Arc<Admission> {
        Admission::new(limit, limits(), HashMap::new())
    }

    /// Lets spawned waiters run up to their next await.
    async fn settle() {
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn admits_up_to_the_limit_then_queues_in_order() {
        let admission = admission(2);
        let first = admission.acquire("a").await.unwrap();
        let _second = admission.acquire("a").await.unwrap();
        let waiting = {
            let admission = Arc::clone(&admission);
            tokio::spawn(async move { admission.acquire("a").await })
        };
        settle().await;
        assert_eq!(
            admission.snapshot(),
            AdmissionSnapshot {
                limit: 2,
                active: 2,
                queued: 1
            }
        );
        drop(first);
        let third = waiting.await.unwrap().unwrap();
        assert_eq!(third.tenant(), "a");
        assert_eq!(admission.snapshot().queued, 0);
        assert_eq!(admission.snapshot().active, 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_light_tenant_is_not_starved_by_a_flood() {
        let admission = admission(1);
        let running = admission.acquire("flood").await.unwrap();
        let (order_tx, mut order_rx) = tokio::sync::mpsc::unbounded_channel();
        let spawn_waiter = |tenant: &'static str| {
            let (admission, order_tx) = (Arc::clone(&admission), order_tx.clone());
            // Each admitted stream reports and finishes at once.
            tokio::spawn(async move {
                let _permit = admission.acquire(tenant).await.unwrap();
                order_tx.send(tenant).unwrap();
            })
        };
        let mut waiters: Vec<_> = (0..10).map(|_| spawn_waiter("flood")).collect();
        settle().await;
        waiters.push(spawn_waiter("light"));
        settle().await;
        drop(running);
        for waiter in waiters {
            waiter.await.unwrap();
        }
        let order: Vec<&str> = std::iter::from_fn(|| order_rx.try_recv().ok()).collect();
        assert_eq!(order.len(), 11);
        let light_at = order.iter().position(|t| *t == "light").unwrap();
        assert!(
            light_at < 2,
            "light admitted at position {light_at}: {order:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn tenant_cap_holds_while_others_run() {
        let mut policies = HashMap::new();
        policies.insert(
            "capped".to_owned(),
            TenantPolicy {
                weight: 1.0,
                max_concurrent: 1,
            },
        );
        let admission = Admission::new(4, limits(), policies);
        let _one = admission.acquire("capped").await.unwrap();
        let blocked = {
            let admission = Arc::clone(&admission);
            tokio::spawn(async move { admission.acquire("capped").await })
        };
        settle().await;
        let other = admission.acquire("free").await.unwrap();
        assert_eq!(other.tenant(), "free");
        assert_eq!(admission.snapshot().active, 2);
        assert_eq!(admission.snapshot().queued, 1);
        blocked.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn full_queue_rejects_with_retry_after() {
        let admission = Admission::new(
            1,
            AdmissionLimits {
                max_queue: 1,
                max_wait: Duration::from_secs(30),
            },
            HashMap::new(),
        );
        let _running = admission.acquire("a").await.unwrap();
        let _queued = {
            let admission = Arc::clone(&admission);
            tokio::spawn(async move { admission.acquire("a").await })
        };
        settle().await;
        let rejection = admission.acquire("a").await.unwrap_err();
        assert!(matches!(rejection, Rejection::QueueFull { .. }));
        assert!(rejection.retry_after().unwrap() >= Duration::from_secs(1));
    }

    #[tokio::test(start_paused = true)]
    async fn waiting_past_the_deadline_is_rejected_and_leaves_the_queue() {
        let admission = admission(1);
        let _running = admission.acquire("a").await.unwrap();
        let rejection = admission.acquire("a").await.unwrap_err();
        assert!(matches!(rejection, Rejection::WaitTimedOut { .. }));
        assert_eq!(admission.snapshot().queued, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiter_that_goes_away_leaves_the_queue_at_once() {
        let admission = admission(1);
        let running = admission.acquire("a").await.unwrap();
        let waiter = {
            let admission = Arc::clone(&admission);
            tokio::spawn(async move { admission.acquire("a").await })
        };
        settle().await;
        assert_eq!(admission.snapshot().queued, 1);
        waiter.abort();
        settle().await;
        assert_eq!(admission.snapshot().queued, 0);
        drop(running);
        assert_eq!(admission.snapshot().active, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn raising_the_limit_admits_waiters_and_lowering_revokes_nothing() {
        let admission = admission(1);
        let first = admission.acquire("a").await.unwrap();
        let waiter = {
            let admission = Arc::clone(&admission);
            tokio::spawn(async move { admission.acquire("a").await })
        };
        settle().await;
        admission.set_limit(2);
        let second = waiter.await.unwrap().unwrap();
        admission.set_limit(1);
        assert_eq!(admission.snapshot().active, 2);
        drop(first);
        drop(second);
        assert_eq!(admission.snapshot().active, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn closing_rejects_new_requests() {
        let admission = admission(1);
        admission.close();
        assert_eq!(admission.acquire("a").await.unwrap_err(), Rejection::Closed);
    }
}
