//! Shedding on a paused clock: deadlines, bookings and their calendar.

use super::*;

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
async fn the_calendar_books_at_the_pace_streams_end_and_only_bookings_due_first_go_ahead() {
    let (admission, running, queued) = three_queued_behind_a_measured_drain().await;
    // Five refusals: the first due when the three queued have drained
    // (3 / 0.5 = 6 s), each next one 1 / (0.9 x 0.45) = 2.47 s later: nine
    // streams ended over the last 20 s, 0.45 per second, of which the
    // calendar books 0.9 (at the admissions' 0.5: 6, 8, 10, 12, 14).
    let mut advice = Vec::new();
    for key in 10..15 {
        match admission.acquire_with("a", due_in(5, key)).await {
            Err(Rejection::Shed {
                retry_after,
                booked: true,
                ..
            }) => advice.push(retry_after.as_secs()),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(advice, [6, 9, 11, 14, 16]);
    queued.into_iter().for_each(|waiter| waiter.abort());
    settle().await;
    // With 8 s of room (9 s deadline, 1 s of service), one booking falls
    // due before its first token must come: (1 + 1) / 0.5 = 4 s, it
    // queues. The four due later take places after it; counted ahead
    // too, (5 + 1) / 0.5 = 12 s would turn it away.
    let patient = spawn_acquire(&admission, "a", due_in(9, 20));
    settle().await;
    assert_eq!(admission.snapshot().queued, 1);
    assert!(!patient.is_finished());
    patient.abort();
    drop(running);
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
