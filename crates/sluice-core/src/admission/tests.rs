//! Admission on a paused clock: order, fairness, caps, rates, shedding.

use super::*;

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

/// Ten streams admitted two seconds apart, each ending as the next comes:
/// 0.5 admissions per second over the drain window, the last one held.
async fn drained_at_half_a_stream_per_second(admission: &Arc<Admission>) -> Permit {
    for _ in 0..9 {
        let permit = admission.acquire("a").await.unwrap();
        tokio::time::advance(Duration::from_secs(2)).await;
        drop(permit);
    }
    admission.acquire("a").await.unwrap()
}

/// One permit running after a drain of 0.5 per second, 1 s from admission
/// to a first token, and three waiters queued behind it.
async fn three_queued_behind_a_measured_drain() -> (
    Arc<Admission>,
    Permit,
    Vec<tokio::task::JoinHandle<Result<Permit, Rejection>>>,
) {
    let admission = admission(1);
    admission.set_service_time(Duration::from_secs(1));
    let running = drained_at_half_a_stream_per_second(&admission).await;
    let queued: Vec<_> = (0..3)
        .map(|_| spawn_acquire(&admission, "a", Urgency::default()))
        .collect();
    settle().await;
    (admission, running, queued)
}

fn due_in(seconds: u64, retry_key: u64) -> Urgency {
    Urgency {
        deadline: Some(Duration::from_secs(seconds)),
        retry_key,
        ..Urgency::default()
    }
}

#[tokio::test(start_paused = true)]
async fn a_request_that_would_miss_its_deadline_is_shed_at_once_and_its_retry_has_its_place() {
    let (admission, running, queued) = three_queued_behind_a_measured_drain().await;
    // Fourth in line: (3 + 1) / 0.5 = 8 s of queue + 1 s > 5 s.
    let started = Instant::now();
    let rejection = admission.acquire_with("a", due_in(5, 7)).await.unwrap_err();
    assert_eq!(started.elapsed(), Duration::ZERO, "answered at once");
    // The three ahead drain first: 6 s.
    assert_eq!(
        rejection,
        Rejection::Shed {
            retry_after: Duration::from_secs(6),
            predicted_wait: Duration::from_secs(8),
            booked: true,
        }
    );
    assert_eq!(admission.snapshot().booked, 1);
    // A deadline the queue meets queues: (3 + 1 booked + 1) / 0.5 + 1 = 11.
    let patient = spawn_acquire(&admission, "a", due_in(11, 8));
    settle().await;
    assert_eq!(admission.snapshot().queued, 4);
    patient.abort();
    queued.into_iter().for_each(|waiter| waiter.abort());
    settle().await;
    // When the client comes back as told, its place is held for it though
    // a stranger arriving with it is shed: the booking counts as queued.
    tokio::time::advance(Duration::from_secs(6)).await;
    let _ahead: Vec<_> = (0..3)
        .map(|_| spawn_acquire(&admission, "a", Urgency::default()))
        .collect();
    settle().await;
    let stranger = admission.acquire_with("a", due_in(5, 9)).await;
    assert!(
        matches!(stranger, Err(Rejection::Shed { .. })),
        "{stranger:?}"
    );
    let retry = spawn_acquire(&admission, "a", due_in(5, 7));
    settle().await;
    assert!(!retry.is_finished(), "queued, not shed");
    assert_eq!(admission.snapshot().queued, 4);
    // Its place is ahead of the three that queued after it was booked.
    drop(running);
    let admitted = tokio::time::timeout(Duration::from_millis(1), retry).await;
    assert!(
        matches!(admitted, Ok(Ok(Ok(_)))),
        "the first place to open is the booked retry's: {admitted:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn booked_retries_keep_their_order_whenever_they_come_back() {
    let (admission, running, queued) = three_queued_behind_a_measured_drain().await;
    let early = admission.acquire_with("a", due_in(5, 7)).await;
    assert!(matches!(early, Err(Rejection::Shed { booked: true, .. })));
    let patient = spawn_acquire(&admission, "a", Urgency::default());
    settle().await;
    let late = admission.acquire_with("a", due_in(5, 8)).await;
    assert!(matches!(late, Err(Rejection::Shed { booked: true, .. })));
    queued.into_iter().for_each(|waiter| waiter.abort());
    settle().await;
    // Both due; the one booked first comes back first and queues with a
    // number after the other's place, which must not put the other ahead.
    tokio::time::advance(Duration::from_secs(13)).await;
    let early = spawn_acquire(&admission, "a", due_in(5, 7));
    settle().await;
    let late = spawn_acquire(&admission, "a", due_in(5, 8));
    settle().await;
    assert_eq!(admission.snapshot().queued, 3);
    // Admitted in the order they were booked, the patient waiter between.
    drop(running);
    let first = early.await.unwrap().unwrap();
    assert!(!patient.is_finished() && !late.is_finished());
    drop(first);
    let second = patient.await.unwrap().unwrap();
    assert!(!late.is_finished());
    drop(second);
    assert!(late.await.unwrap().is_ok());
}

#[tokio::test(start_paused = true)]
async fn booked_retries_pass_a_lowered_limit_two_at_a_time_until_their_first_token() {
    // 16 running under a limit of 16 (baseline 32; 0.8 admissions per
    // second over the window), 3 queued.
    let admission = admission(32);
    admission.set_limit(16);
    admission.set_service_time(Duration::from_secs(1));
    let mut running = acquire_now(&admission, "a", 16).await;
    let queued: Vec<_> = (0..3)
        .map(|_| spawn_acquire(&admission, "a", Urgency::default()))
        .collect();
    settle().await;
    for key in [7, 8, 9] {
        let shed = admission.acquire_with("a", due_in(5, key)).await;
        assert!(
            matches!(shed, Err(Rejection::Shed { booked: true, .. })),
            "{shed:?}"
        );
    }
    queued.into_iter().for_each(|waiter| waiter.abort());
    settle().await;
    // The governor lowers the limit to 12; the retries come back when due.
    admission.set_limit(12);
    tokio::time::advance(Duration::from_secs(8)).await;
    let mut retries: Vec<_> = [7, 8, 9]
        .into_iter()
        .map(|key| spawn_acquire(&admission, "a", due_in(5, key)))
        .collect();
    let fresh = spawn_acquire(&admission, "a", Urgency::default());
    settle().await;
    // Two retries admitted though 16 run; the third waits.
    assert_eq!(admission.snapshot().active, 18);
    assert_eq!(admission.snapshot().queued, 2);
    assert!(retries[0].is_finished() && retries[1].is_finished());
    assert!(!retries[2].is_finished());
    // A stream ending under the lowered limit opens nothing (17 > 12),
    // and the fresh request never passes the limit.
    drop(running.pop());
    settle().await;
    assert!(!retries[2].is_finished());
    assert!(!fresh.is_finished());
    // A retry past the limit has its first token: the allowance is for
    // retries awaiting theirs, so the third passes too, while that stream
    // runs on and the fresh request still waits.
    let last = retries.pop().unwrap();
    let mut first = retries.remove(0).await.unwrap().unwrap();
    first.first_token();
    settle().await;
    assert!(last.is_finished());
    assert_eq!(admission.snapshot().active, 18);
    assert!(!fresh.is_finished());
    // Its end releases one running permit, not the allowance again.
    drop(first);
    settle().await;
    assert_eq!(admission.snapshot().active, 17);
    assert!(!fresh.is_finished());
    fresh.abort();
}

#[tokio::test(start_paused = true)]
async fn a_waiter_that_waits_out_the_limit_keeps_its_place_for_when_it_is_told_to_come_back() {
    let admission = admission(1);
    let mut running = admission.acquire("i").await.unwrap();
    let keyed = |retry_key| Urgency {
        retry_key,
        ..batch()
    };
    let waited_out = spawn_acquire(&admission, "b", keyed(7));
    settle().await;
    // Interactive requests take every place that opens, one each 2 s: the
    // batch waiter waits the whole 30 s while the queue drains at 0.5/s.
    for round in 0..15 {
        let next = spawn_acquire(&admission, "i", Urgency::default());
        settle().await;
        if round == 14 {
            // Five requests that came after it are shed and booked on the
            // calendar, the last due 13 s after its wait runs out.
            for key in 100..105 {
                let shed = admission.acquire_with("i", due_in(1, key)).await;
                assert!(matches!(shed, Err(Rejection::Shed { booked: true, .. })));
            }
        }
        tokio::time::advance(Duration::from_secs(2)).await;
        drop(running);
        running = next.await.unwrap().unwrap();
    }
    let rejection = waited_out.await.unwrap().unwrap_err();
    // Nothing is ahead of it when its wait runs out: back in the least
    // time, 1 s, not behind the bookings made after it queued (16 s).
    assert_eq!(
        rejection,
        Rejection::WaitTimedOut {
            retry_after: Duration::from_secs(1),
            booked: true,
        }
    );
    assert_eq!(admission.snapshot().booked, 6);
    // Back as told, it goes ahead of a request that queued meanwhile.
    tokio::time::advance(Duration::from_secs(1)).await;
    let fresh = spawn_acquire(&admission, "b", batch());
    settle().await;
    let retry = spawn_acquire(&admission, "b", keyed(7));
    settle().await;
    assert_eq!(admission.snapshot().queued, 2);
    drop(running);
    let admitted = tokio::time::timeout(Duration::from_millis(1), retry).await;
    assert!(matches!(admitted, Ok(Ok(Ok(_)))), "{admitted:?}");
    assert!(!fresh.is_finished());
    fresh.abort();
}

#[tokio::test(start_paused = true)]
async fn a_cold_start_measures_its_drain_from_admissions_before_any_stream_ends() {
    // Four streams admitted, none ended: 4 admissions over the 20 s
    // window, 0.2 per second, 5 s for the next place to open.
    let admission = admission(4);
    let _running: Vec<_> = acquire_now(&admission, "a", 4).await;
    let rejection = admission.acquire_with("a", due_in(4, 1)).await;
    assert!(
        matches!(rejection, Err(Rejection::Shed { .. })),
        "{rejection:?}"
    );
    let patient = spawn_acquire(&admission, "a", due_in(10, 2));
    settle().await;
    assert_eq!(admission.snapshot().queued, 1, "a deadline it meets queues");
    patient.abort();
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

#[tokio::test(start_paused = true)]
async fn without_a_deadline_or_a_measured_drain_nothing_is_shed() {
    let admission = admission(1);
    let _running = admission.acquire("a").await.unwrap();
    // Nothing has drained yet: no prediction, the request queues.
    let cold = spawn_acquire(&admission, "a", due_in(1, 1));
    settle().await;
    assert_eq!(admission.snapshot().queued, 1);
    cold.abort();
}
