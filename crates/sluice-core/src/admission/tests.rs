//! Admission on a paused clock: order, fairness, caps, rates; shedding in
//! `shedding.rs`.

use super::*;

mod shedding;

fn limits() -> AdmissionLimits {
    AdmissionLimits {
        max_queue: 64,
        max_wait: Duration::from_secs(30),
        interactive_reserve: 0,
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
            queued: 1,
            booked: 0,
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
            interactive_reserve: 0,
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

fn with_reserve(limit: u32, interactive_reserve: u32) -> Arc<Admission> {
    Admission::new(
        limit,
        AdmissionLimits {
            interactive_reserve,
            ..limits()
        },
        HashMap::new(),
    )
}

fn batch() -> Urgency {
    Urgency {
        priority: Priority::Batch,
        ..Urgency::default()
    }
}

fn spawn_acquire(
    admission: &Arc<Admission>,
    tenant: &'static str,
    urgency: Urgency,
) -> tokio::task::JoinHandle<Result<Permit, Rejection>> {
    let admission = Arc::clone(admission);
    tokio::spawn(async move { admission.acquire_with(tenant, urgency).await })
}

#[tokio::test(start_paused = true)]
async fn batch_leaves_the_reserve_and_interactive_waiters_go_first() {
    let admission = with_reserve(4, 2);
    let first_batch = admission.acquire_with("b", batch()).await.unwrap();
    let _second_batch = admission.acquire_with("b", batch()).await.unwrap();
    let third_batch = spawn_acquire(&admission, "b", batch());
    settle().await;
    assert_eq!(
        admission.snapshot().queued,
        1,
        "the last 2 permits are held"
    );
    // An interactive request takes a reserved permit at once.
    let interactive = admission.acquire("i").await.unwrap();
    let interactive_too = admission.acquire("i").await.unwrap();
    // All four taken: an interactive waiter queues behind the batch one...
    let late_interactive = spawn_acquire(&admission, "i", Urgency::default());
    settle().await;
    assert_eq!(admission.snapshot().queued, 2);
    // ...and still goes first.
    drop(first_batch);
    let admitted = late_interactive.await.unwrap().unwrap();
    assert_eq!(admitted.tenant(), "i");
    assert_eq!(admission.snapshot().queued, 1);
    // The batch waiter needs the total under the reserve (2 running of
    // 4): three more ends.
    drop(interactive);
    drop(admitted);
    settle().await;
    assert_eq!(admission.snapshot().queued, 1);
    drop(interactive_too);
    assert_eq!(third_batch.await.unwrap().unwrap().tenant(), "b");
}

/// `count` interactive permits for `tenant`, each granted at once.
async fn acquire_now(admission: &Arc<Admission>, tenant: &str, count: usize) -> Vec<Permit> {
    let mut permits = Vec::new();
    for _ in 0..count {
        let started = Instant::now();
        permits.push(admission.acquire(tenant).await.unwrap());
        assert_eq!(started.elapsed(), Duration::ZERO, "granted at once");
    }
    permits
}

#[tokio::test(start_paused = true)]
async fn under_a_lowered_limit_interactive_passes_it_by_the_places_batch_holds() {
    let admission = with_reserve(8, 2);
    admission.set_limit(3);
    let _batch = [
        admission.acquire_with("b", batch()).await.unwrap(),
        admission.acquire_with("b", batch()).await.unwrap(),
    ];
    let third_batch = spawn_acquire(&admission, "b", batch());
    settle().await;
    assert_eq!(admission.snapshot().queued, 1, "batch leaves one place");
    // The limit of 3 plus the 2 places batch holds.
    let _interactive = acquire_now(&admission, "i", 3).await;
    assert_eq!(admission.snapshot().active, 5);
    let fourth = spawn_acquire(&admission, "i", Urgency::default());
    settle().await;
    assert_eq!(admission.snapshot().queued, 2);
    fourth.abort();
    third_batch.abort();
}
