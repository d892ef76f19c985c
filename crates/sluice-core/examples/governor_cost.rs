//! What the governor costs: CPU time per controller tick and per admission
//! (acquire + release of a permit, with and without waiters), and per shed
//! request.
//!
//! Run: cargo run --release -p sluice-core --example governor_cost

use std::collections::HashMap;
use std::hint::black_box;
use std::time::{Duration, Instant};

use sluice_core::admission::{Admission, AdmissionLimits, Urgency};
use sluice_core::governor::{GovernorConfig, LimitController, Signals, Targets};
use sluice_core::window::LatencyWindow;

const TICKS: u32 = 1_000_000;
const ADMISSIONS: u32 = 200_000;

fn per_op(elapsed: Duration, ops: u32) -> f64 {
    elapsed.as_secs_f64() * 1e9 / f64::from(ops)
}

fn main() {
    let mut controller = LimitController::new(
        GovernorConfig::default(),
        Targets::from_slo(Some(10.0), Some(2.0)),
    );
    let started = Instant::now();
    for i in 0..TICKS {
        let signals = Signals {
            ttft_p95: Some(2.0 + f64::from(i % 7) * 0.3),
            itl_p95: Some(0.4),
            queue_depth: (i % 5) as usize,
            awaiting_first_token: (i % 3) as usize,
            active: 32,
            first_tokens_per_second: Some(0.7),
            steps: None,
        };
        black_box(controller.tick(black_box(&signals), 0.25));
    }
    println!(
        "controller tick: {:.0} ns",
        per_op(started.elapsed(), TICKS)
    );

    // A tick also reads two p95s from windows holding a busy 4 s: 32 streams
    // at ~4 tokens/s each is ~500 gap samples, plus ~40 TTFT samples.
    let now = Instant::now();
    let mut itl = LatencyWindow::new(Duration::from_secs(4), 4096);
    let mut ttft = LatencyWindow::new(Duration::from_secs(4), 4096);
    for i in 0..500 {
        itl.record(now, f64::from(i % 50) * 0.01);
    }
    for i in 0..40 {
        ttft.record(now, f64::from(i) * 0.05);
    }
    let reads = 10_000;
    let started = Instant::now();
    for _ in 0..reads {
        black_box(itl.quantile(now, 0.95));
        black_box(ttft.quantile(now, 0.95));
    }
    println!(
        "window p95 reads per tick (540 samples): {:.0} ns",
        per_op(started.elapsed(), reads)
    );

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let limits = AdmissionLimits {
            max_queue: 1024,
            max_wait: Duration::from_secs(60),
            interactive_reserve: 0,
        };
        let admission = Admission::new(64, limits.clone(), HashMap::new());
        let started = Instant::now();
        for _ in 0..ADMISSIONS {
            drop(black_box(admission.acquire("default").await.expect("free permit")));
        }
        println!(
            "admission, free permit (acquire + release): {:.0} ns",
            per_op(started.elapsed(), ADMISSIONS)
        );

        // Full server: each release hands its permit to a queued waiter of
        // one of 4 tenants.
        let admission = Admission::new(1, limits, HashMap::new());
        let tenants = ["a", "b", "c", "d"];
        let mut held = Some(admission.acquire("a").await.expect("first permit"));
        let started = Instant::now();
        for i in 0..ADMISSIONS {
            let waiter = {
                let admission = admission.clone();
                let tenant = tenants[i as usize % tenants.len()];
                tokio::spawn(async move { admission.acquire(tenant).await })
            };
            tokio::task::yield_now().await;
            drop(held.take());
            held = Some(waiter.await.expect("task").expect("granted"));
        }
        println!(
            "admission through the queue (enqueue + fair dispatch + release, incl. a task spawn): {:.0} ns",
            per_op(started.elapsed(), ADMISSIONS)
        );

        // Overload: the permit is held, the drain rate measured above, and
        // every arrival misses its deadline and is shed with a booking;
        // past 1,024 the book is full (the worst case of its linear scans).
        let started = Instant::now();
        for i in 0..ADMISSIONS {
            let urgency = Urgency {
                deadline: Some(Duration::from_nanos(1)),
                retry_key: u64::from(i),
                ..Urgency::default()
            };
            let shed = admission.acquire_with("a", urgency).await;
            black_box(shed.expect_err("shed"));
        }
        println!(
            "shed decision with 1,024 bookings held: {:.0} ns",
            per_op(started.elapsed(), ADMISSIONS)
        );
    });
}
