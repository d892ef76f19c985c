//! The QoS loop end to end on a real server: a rule fires on its own
//! condition (low throughput on an idle server) and carries out its action;
//! a rule without evidence (no TTFT samples) does not.

mod common;

use std::time::{Duration, Instant};

use serde_json::Value;
use sluice::app::RunningServer;
use sluice_core::policy::{Action, Comparison, Indicator, Rule, Scope};

const ADMIN_KEY: &str = "qos-admin-key-0123456789";

#[tokio::test]
async fn a_low_throughput_rule_switches_new_connections_to_http1() {
    let mut config = common::test_config();
    config.engine.max_sequences = 4;
    config.governor.max_streams = 4;
    config.server.admin_api_key = Some(ADMIN_KEY.to_owned());
    config.qos.evaluation_interval_ms = 100;
    config.qos.policy.rules = vec![
        Rule {
            name: "idle".into(),
            indicator: Indicator::OutputTokensPerSecond,
            scope: Scope::Global,
            comparison: Comparison::Below,
            threshold: 1.0,
            sustained_windows: 2,
            action: Action::Http1Only,
            cooldown_ms: 60_000,
        },
        Rule {
            name: "slow-first-token".into(),
            indicator: Indicator::TtftP95Seconds,
            scope: Scope::Global,
            comparison: Comparison::Above,
            threshold: 0.0,
            sustained_windows: 1,
            action: Action::Rollback,
            cooldown_ms: 0,
        },
    ];
    let server = RunningServer::start(&config, None).await.unwrap();
    server.engine().wait_ready().await.unwrap();
    let base = format!("http://{}", server.local_addr);
    let state = || async {
        common::client()
            .get(format!("{base}/admin/state"))
            .bearer_auth(ADMIN_KEY)
            .send()
            .await
            .unwrap()
            .json::<Value>()
            .await
            .unwrap()
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    let actions = loop {
        let state = state().await;
        let actions = state["policy"]["recent_actions"]
            .as_array()
            .unwrap()
            .clone();
        if !actions.is_empty() {
            assert_eq!(state["protocol"]["http2_enabled"], false);
            break actions;
        }
        assert!(Instant::now() < deadline, "the rule never fired");
        tokio::task::yield_now().await;
    };
    assert_eq!(actions.len(), 1, "{actions:?}");
    assert_eq!(actions[0]["rule"], "idle");
    assert_eq!(actions[0]["action"], "http1_only");
    assert!(
        actions[0]["evidence"]
            .as_str()
            .unwrap()
            .contains("OutputTokensPerSecond = 0.000"),
        "{actions:?}"
    );
    let metrics = common::metrics_text_at(&base).await;
    assert!(
        metrics.contains(r#"sluice:policy_actions_total{action="http1_only",reason="idle"} 1"#),
        "{metrics}"
    );
    server.shutdown();
    server.wait().await.unwrap();
}
