//! Per-tenant limits on a real server: a tenant over its
//! `tokens_per_minute` gets 429 with `Retry-After` and an OpenAI-style body,
//! counted as a rejection, while another tenant is served as before; and a
//! tenant-scoped policy rule throttles its tenant at run time. With shared
//! quotas (`admission.shared_quota`) and Redis unreachable, the configured
//! fail mode holds: `reject` answers 503, `local` counts on the node's own
//! buckets; the metric names the mode. (Shared quotas with a live Redis
//! are tested across three nodes by tests/cluster/run.py.)

mod common;

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sluice_core::config::{QuotaFailMode, RuntimeConfig, SharedQuotaConfig, TenantConfig};
use sluice_core::policy::{Action, Comparison, Indicator, Rule, Scope};

const TINY_RATE: u32 = 30;
const MAX_TOKENS: u64 = 24;

fn tenant(name: &str, key: &str, tokens_per_minute: Option<u32>) -> TenantConfig {
    TenantConfig {
        name: name.to_owned(),
        api_keys: vec![key.to_owned()],
        weight: 1.0,
        max_concurrent: None,
        tokens_per_minute,
        priority: Default::default(),
    }
}

async fn complete(base: &str, key: &str) -> reqwest::Response {
    common::client()
        .post(format!("{base}/v1/completions"))
        .bearer_auth(key)
        .json(&json!({
            "model": "SmolLM2-135M-Instruct.Q4_1",
            "prompt": "Hi",
            "max_tokens": MAX_TOKENS,
            "temperature": 0,
            "ignore_eos": true,
        }))
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn a_tenant_over_its_token_rate_gets_429_and_another_tenant_does_not() {
    let mut config = common::test_config();
    config.engine.max_sequences = 4;
    config.governor.max_streams = 4;
    config.admission.tenants = vec![
        tenant("tiny", "sk-tiny", Some(TINY_RATE)),
        tenant("roomy", "sk-roomy", None),
    ];
    let base = common::spawn_server(config);

    // The first request fits the bucket: prompt + max_tokens are reserved,
    // and it uses all of max_tokens (ignore_eos), so nothing comes back.
    let first = complete(&base, "sk-tiny").await;
    assert_eq!(first.status(), 200);
    let usage = first.json::<Value>().await.unwrap()["usage"].clone();
    let prompt_tokens = usage["prompt_tokens"].as_u64().unwrap();
    assert_eq!(usage["completion_tokens"], MAX_TOKENS);
    let charge = prompt_tokens + MAX_TOKENS;
    // Two charges exceed the bucket by far more than it refills (half a
    // token per second) while the first request runs.
    assert!(
        charge <= u64::from(TINY_RATE) && 2 * charge >= u64::from(TINY_RATE) + 16,
        "the test needs one request to fit the bucket and two not to: charge {charge}"
    );

    let second = complete(&base, "sk-tiny").await;
    assert_eq!(second.status(), 429);
    let retry_after: u64 = second.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    // At 30 tokens/min the missing tokens take seconds to refill, and never
    // more than the minute a full bucket takes.
    assert!((1..=60).contains(&retry_after), "Retry-After {retry_after}");
    let error = second.json::<Value>().await.unwrap()["error"].clone();
    assert_eq!(error["type"], "rate_limit_exceeded", "{error}");
    assert_eq!(error["code"], "tenant_tokens_per_minute", "{error}");
    assert_eq!(error["param"], Value::Null, "{error}");
    let message = error["message"].as_str().unwrap();
    assert!(
        message.contains("'tiny'") && message.contains(&format!("{TINY_RATE} tokens per minute")),
        "{message}"
    );

    let other = complete(&base, "sk-roomy").await;
    assert_eq!(other.status(), 200, "another tenant is not throttled");

    let metrics = common::metrics_text_at(&base).await;
    assert!(
        metrics.contains(r#"sluice:request_rejected_total{reason="tenant_tokens_per_minute"} 1"#),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_tenant_rule_throttles_its_tenant_at_run_time() {
    const ADMIN_KEY: &str = "throttle-admin-key-0123456789";
    let mut config = common::test_config();
    config.engine.max_sequences = 4;
    config.governor.max_streams = 4;
    config.server.admin_api_key = Some(ADMIN_KEY.to_owned());
    config.qos.evaluation_interval_ms = 100;
    config.admission.tenants = vec![
        tenant("tiny", "sk-tiny", None),
        tenant("roomy", "sk-roomy", None),
    ];
    // An idle tenant's window has 0 output tokens/s: the condition holds.
    config.qos.policy.rules = vec![Rule {
        name: "tiny-idle".into(),
        indicator: Indicator::OutputTokensPerSecond,
        scope: Scope::Tenant("tiny".into()),
        comparison: Comparison::Below,
        threshold: 1.0,
        sustained_windows: 2,
        action: Action::ThrottleTenant {
            tenant: "tiny".into(),
            max_concurrent: 1,
        },
        cooldown_ms: 60_000,
    }];
    let base = common::spawn_server(config);
    let deadline = Instant::now() + Duration::from_secs(30);
    let actions = loop {
        let state: Value = common::client()
            .get(format!("{base}/admin/state"))
            .bearer_auth(ADMIN_KEY)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let actions = state["policy"]["recent_actions"]
            .as_array()
            .unwrap()
            .clone();
        if !actions.is_empty() {
            break actions;
        }
        assert!(Instant::now() < deadline, "the rule never fired");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(actions[0]["rule"], "tiny-idle", "{actions:?}");
    assert_eq!(actions[0]["action"], "throttle_tenant", "{actions:?}");
    let evidence = actions[0]["evidence"].as_str().unwrap();
    assert!(
        evidence.contains("(tenant:tiny)")
            && evidence.contains("tenant tiny max_concurrent unlimited -> 1"),
        "{evidence}"
    );
    let metrics = common::metrics_text_at(&base).await;
    assert!(
        metrics.contains(
            r#"sluice:policy_actions_total{action="throttle_tenant",reason="tiny-idle"} 1"#
        ),
        "{metrics}"
    );
}

/// A server whose tenant `rated` has a token rate kept in a Redis that is
/// not there (a port just closed), failing as `mode` says.
fn server_with_unreachable_quota_store(mode: QuotaFailMode) -> String {
    let closed_port = common::free_port();
    let mut config: RuntimeConfig = common::test_config();
    config.engine.max_sequences = 4;
    config.governor.max_streams = 4;
    config.admission.tenants = vec![
        tenant("rated", "sk-rated", Some(TINY_RATE)),
        tenant("unrated", "sk-unrated", None),
    ];
    config.admission.shared_quota = Some(SharedQuotaConfig {
        redis_url: format!("redis://127.0.0.1:{closed_port}"),
        when_unreachable: mode,
        ..SharedQuotaConfig::default()
    });
    common::spawn_server(config)
}

fn quota_mode_gauge(metrics: &str, mode: &str) -> Option<f64> {
    let prefix = format!("sluice:quota_store_mode{{mode=\"{mode}\"}} ");
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(prefix.as_str()))
        .map(|value| value.trim().parse().unwrap())
}

#[tokio::test]
async fn with_the_quota_store_unreachable_reject_mode_answers_503() {
    let base = server_with_unreachable_quota_store(QuotaFailMode::Reject);

    let refused = complete(&base, "sk-rated").await;
    assert_eq!(refused.status(), 503);
    assert!(refused.headers().contains_key("retry-after"));
    let error = refused.json::<Value>().await.unwrap()["error"].clone();
    assert_eq!(error["code"], "quota_store_unavailable", "{error}");
    // A tenant without a rate has nothing to count: it is served.
    assert_eq!(complete(&base, "sk-unrated").await.status(), 200);

    let metrics = common::metrics_text_at(&base).await;
    assert_eq!(quota_mode_gauge(&metrics, "reject"), Some(1.0), "{metrics}");
    assert_eq!(quota_mode_gauge(&metrics, "shared"), Some(0.0));
}

#[tokio::test]
async fn with_the_quota_store_unreachable_local_mode_counts_on_the_node() {
    let base = server_with_unreachable_quota_store(QuotaFailMode::Local);

    // The node's own bucket takes the first charge and refuses the second,
    // as without shared quotas (the first test above).
    assert_eq!(complete(&base, "sk-rated").await.status(), 200);
    let second = complete(&base, "sk-rated").await;
    assert_eq!(second.status(), 429);
    let error = second.json::<Value>().await.unwrap()["error"].clone();
    assert_eq!(error["code"], "tenant_tokens_per_minute", "{error}");

    let metrics = common::metrics_text_at(&base).await;
    assert_eq!(quota_mode_gauge(&metrics, "local"), Some(1.0), "{metrics}");
    assert_eq!(quota_mode_gauge(&metrics, "shared"), Some(0.0));
}
