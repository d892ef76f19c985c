//! Thousands of random interleavings of acquire / release / abandon /
//! limit changes / time: no permit is leaked or released twice, and the
//! active count always equals the permits really held.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use proptest::prelude::*;
use sluice_core::admission::{Admission, AdmissionLimits, Permit};
use tokio::task::JoinHandle;

#[derive(Debug, Clone)]
enum Op {
    Acquire(usize),
    Release(usize),
    Abandon(usize),
    SetLimit(u32),
    Advance(u64),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0usize..3).prop_map(Op::Acquire),
        3 => any::<usize>().prop_map(Op::Release),
        1 => any::<usize>().prop_map(Op::Abandon),
        1 => (0u32..6).prop_map(Op::SetLimit),
        1 => (0u64..20_000).prop_map(Op::Advance),
    ]
}

const TENANTS: [&str; 3] = ["a", "b", "c"];

async fn settle() {
    for _ in 0..8 {
        tokio::task::yield_now().await;
    }
}

fn check(ops: Vec<Op>) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    runtime.block_on(async move {
        let admission = Admission::new(
            2,
            AdmissionLimits {
                max_queue: 6,
                max_wait: Duration::from_secs(10),
                interactive_reserve: 0,
            },
            HashMap::new(),
        );
        let mut held: Vec<Permit> = Vec::new();
        let mut waiting: Vec<JoinHandle<Option<Permit>>> = Vec::new();
        let mut limit = 2;
        for op in ops {
            match op {
                Op::Acquire(tenant) => {
                    let admission = Arc::clone(&admission);
                    waiting.push(tokio::spawn(async move {
                        admission.acquire(TENANTS[tenant]).await.ok()
                    }));
                }
                Op::Release(k) if !held.is_empty() => {
                    let index = k % held.len();
                    drop(held.swap_remove(index));
                }
                Op::Abandon(k) if !waiting.is_empty() => {
                    let index = k % waiting.len();
                    waiting.swap_remove(index).abort();
                }
                Op::SetLimit(new_limit) => {
                    limit = new_limit;
                    admission.set_limit(new_limit);
                }
                Op::Advance(ms) => tokio::time::advance(Duration::from_millis(ms)).await,
                Op::Release(_) | Op::Abandon(_) => {}
            }
            settle().await;
            let mut still_waiting = Vec::new();
            for task in waiting.drain(..) {
                if task.is_finished() {
                    if let Ok(Some(permit)) = task.await {
                        held.push(permit);
                    }
                } else {
                    still_waiting.push(task);
                }
            }
            waiting = still_waiting;
            let snapshot = admission.snapshot();
            assert_eq!(
                snapshot.active as usize,
                held.len(),
                "active equals permits held"
            );
            assert_eq!(snapshot.queued, waiting.len(), "queued equals waiters");
            if snapshot.queued > 0 {
                assert!(
                    snapshot.active >= limit,
                    "no idle capacity while requests wait"
                );
            }
        }
        for task in waiting {
            task.abort();
        }
        settle().await;
        drop(held);
        let snapshot = admission.snapshot();
        assert_eq!(
            (snapshot.active, snapshot.queued),
            (0, 0),
            "everything released"
        );
    });
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]
    #[test]
    fn permits_are_never_leaked_or_double_released(ops in proptest::collection::vec(op(), 1..60)) {
        check(ops);
    }
}
