//! Admission: how many streams run at once, and who goes next.
//!
//! A stream runs while it holds a [`Permit`]; dropping the permit is the only
//! way to release it, so release happens exactly once, whatever ends the
//! stream. Waiters queue per tenant; when a permit frees up, the tenant that
//! has been served least relative to its weight goes next (start-time fair
//! queueing), skipping tenants at their concurrency cap. A waiter whose
//! future is dropped (client gone) leaves the queue at once.
//!
//! A tenant may also have a token rate: each request is charged tokens from
//! the tenant's bucket before it queues ([`Admission::charge_tokens`]), and
//! the charge is settled against the real use when the request ends.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::rate::TokenBucket;

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
}

impl Default for TenantPolicy {
    fn default() -> Self {
        Self {
            weight: 1.0,
            max_concurrent: u32::MAX,
            tokens_per_minute: None,
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
    /// The tenant's token bucket does not hold the request's charge;
    /// `retry_after` is when it will.
    TokenRateExceeded {
        retry_after: Duration,
        tokens_per_minute: u32,
    },
    /// Admission is closed (draining for shutdown).
    Closed,
}

impl Rejection {
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::QueueFull { retry_after }
            | Self::WaitTimedOut { retry_after }
            | Self::TenantQueueFull { retry_after }
            | Self::TokenRateExceeded { retry_after, .. } => Some(*retry_after),
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
    /// Token buckets of the tenants with a token rate.
    buckets: HashMap<String, TokenBucket>,
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

/// Tokens a request took from its tenant's bucket. Dropping it settles the
/// charge against the use recorded with [`TokenCharge::record_use`]: unused
/// tokens go back, tokens used beyond the charge are taken as debt. A
/// request that never ran (rejected later, engine full) records no use and
/// gets its whole charge back.
pub struct TokenCharge {
    admission: Arc<Admission>,
    tenant: String,
    charged: u64,
    used: u64,
}

impl std::fmt::Debug for TokenCharge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenCharge")
            .field("tenant", &self.tenant)
            .field("charged", &self.charged)
            .field("used", &self.used)
            .finish()
    }
}

impl TokenCharge {
    pub fn charged(&self) -> u64 {
        self.charged
    }

    /// The tokens the request has used so far (prompt plus completion).
    pub fn record_use(&mut self, tokens: u64) {
        self.used = tokens;
    }
}

impl Drop for TokenCharge {
    fn drop(&mut self) {
        self.admission
            .settle_tokens(&self.tenant, self.charged, self.used);
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
                active: 0,
                closed: false,
                next_waiter: 0,
                queued: 0,
                tenants: HashMap::new(),
                policies,
                buckets,
                recent_admissions: VecDeque::new(),
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

    /// Charges `tokens` to the tenant's token bucket, before the request
    /// queues: a tenant over its rate gets its answer at once and holds no
    /// queue place. `None` for a tenant without a token rate.
    pub fn charge_tokens(
        self: &Arc<Self>,
        tenant: &str,
        tokens: u64,
    ) -> Result<Option<TokenCharge>, Rejection> {
        let mut state = self.lock();
        let Some(bucket) = state.buckets.get_mut(tenant) else {
            return Ok(None);
        };
        match bucket.try_take(tokens, Instant::now().into_std()) {
            Ok(charged) => Ok(Some(TokenCharge {
                admission: Arc::clone(self),
                tenant: tenant.to_owned(),
                charged,
                used: 0,
            })),
            Err(wait) => Err(Rejection::TokenRateExceeded {
                retry_after: Duration::from_secs(wait.as_secs_f64().ceil() as u64)
                    .max(MIN_RETRY_AFTER),
                tokens_per_minute: bucket.tokens_per_minute(),
            }),
        }
    }

    fn settle_tokens(&self, tenant: &str, charged: u64, used: u64) {
        let mut state = self.lock();
        let Some(bucket) = state.buckets.get_mut(tenant) else {
            return;
        };
        let now = Instant::now().into_std();
        if used < charged {
            bucket.refund(charged - used, now);
        } else {
            bucket.debit(used - charged, now);
        }
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
                max_concurrent: 1,
                ..TenantPolicy::default()
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

    fn rated(tenant: &str, tokens_per_minute: u32) -> Arc<Admission> {
        let policy = TenantPolicy {
            tokens_per_minute: Some(tokens_per_minute),
            ..TenantPolicy::default()
        };
        Admission::new(4, limits(), HashMap::from([(tenant.to_owned(), policy)]))
    }

    #[tokio::test(start_paused = true)]
    async fn a_tenant_over_its_token_rate_is_rejected_until_its_bucket_refills() {
        let admission = rated("small", 60);
        let charge = admission.charge_tokens("small", 50).unwrap().unwrap();
        assert_eq!(charge.charged(), 50);
        let rejection = admission.charge_tokens("small", 30).unwrap_err();
        // 10 tokens left at 1 token/s: 20 s until 30 fit.
        assert_eq!(
            rejection,
            Rejection::TokenRateExceeded {
                retry_after: Duration::from_secs(20),
                tokens_per_minute: 60
            }
        );
        assert!(
            admission.charge_tokens("other", 10_000).unwrap().is_none(),
            "a tenant without a rate is not charged"
        );
        tokio::time::advance(Duration::from_secs(20)).await;
        assert!(admission.charge_tokens("small", 30).unwrap().is_some());
        drop(charge);
    }

    #[tokio::test(start_paused = true)]
    async fn a_settled_charge_returns_unused_tokens_and_takes_overuse() {
        let admission = rated("t", 60);
        let mut charge = admission.charge_tokens("t", 60).unwrap().unwrap();
        charge.record_use(20);
        drop(charge);
        // 40 came back.
        let mut charge = admission.charge_tokens("t", 40).unwrap().unwrap();
        assert!(admission.charge_tokens("t", 1).is_err());
        // The request used 70 of its 40: 30 tokens of debt.
        charge.record_use(70);
        drop(charge);
        assert_eq!(
            admission.charge_tokens("t", 30).unwrap_err().retry_after(),
            Some(Duration::from_secs(60))
        );
        // A charge dropped unused (the request never ran) comes back whole.
        tokio::time::advance(Duration::from_secs(90)).await;
        let unused = admission.charge_tokens("t", 60).unwrap().unwrap();
        drop(unused);
        assert!(admission.charge_tokens("t", 60).unwrap().is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn a_tenant_cap_changed_at_run_time_applies_and_restores() {
        let admission = admission(8);
        let saved = admission.tenant_caps();
        assert_eq!(admission.set_tenant_cap("noisy", 1), u32::MAX);
        let _running = admission.acquire("noisy").await.unwrap();
        let waiter = {
            let admission = Arc::clone(&admission);
            tokio::spawn(async move { admission.acquire("noisy").await })
        };
        settle().await;
        assert_eq!(
            admission.snapshot().queued,
            1,
            "capped at 1 under a limit of 8"
        );
        assert_eq!(admission.tenant_caps()["noisy"], 1);
        admission.set_tenant_caps(&saved);
        let second = waiter.await.unwrap().unwrap();
        assert_eq!(second.tenant(), "noisy");
        assert_eq!(admission.tenant_caps()["noisy"], u32::MAX);
    }
}
