use std::collections::HashMap;

use super::*;
use crate::policy::{Breach, Indicator, Indicators, Scope};

#[test]
fn committed_runtime_yaml_states_the_defaults() {
    let text = include_str!("../../../../config/runtime.yaml");
    let parsed = RuntimeConfig::from_yaml(text, "config/runtime.yaml").unwrap();
    assert_eq!(parsed, RuntimeConfig::default());
}

#[test]
fn empty_file_means_defaults() {
    assert_eq!(
        RuntimeConfig::from_yaml("{}", "test").unwrap(),
        RuntimeConfig::default()
    );
}

#[test]
fn unknown_keys_are_rejected_with_their_name() {
    let err = RuntimeConfig::from_yaml("engine:\n  max_seqs: 4\n", "test").unwrap_err();
    assert!(err.to_string().contains("max_seqs"), "{err}");
}

#[test]
fn out_of_range_values_are_rejected() {
    let err = RuntimeConfig::from_yaml("engine:\n  step_token_budget: 0\n", "test").unwrap_err();
    assert!(err.to_string().contains("step_token_budget"), "{err}");
}

#[test]
fn hardening_knobs_reject_unusable_values() {
    let cases = [
        (
            "server:\n  limits:\n    max_connections: 0\n",
            "max_connections",
        ),
        ("server:\n  limits:\n    idle_timeout_ms: 0\n", "timeouts"),
        (
            "server:\n  limits:\n    max_header_bytes: 100\n",
            "max_header_bytes",
        ),
        (
            "server:\n  limits:\n    max_pending_requests: 4\n    max_pending_per_tenant: 8\n",
            "max_pending_per_tenant",
        ),
        ("server:\n  http2:\n    stream_window_bytes: 0\n", "window"),
        (
            "server:\n  http2:\n    keepalive_timeout_ms: 0\n",
            "keepalive_timeout_ms",
        ),
        (
            "server:\n  websocket:\n    max_message_bytes: 0\n",
            "max_message_bytes",
        ),
        (
            "server:\n  websocket:\n    send_timeout_ms: 0\n",
            "send_timeout_ms",
        ),
        ("governor:\n  kp: .nan\n", "gains"),
        ("qos:\n  slo:\n    ttft_p95_seconds: .nan\n", "qos.slo"),
        ("qos:\n  slo:\n    itl_p95_seconds: 0\n", "qos.slo"),
        (
            "engine:\n  max_step_token_budget: 1000000\n",
            "step token budgets",
        ),
        ("server:\n  require_api_key: true\n", "require_api_key"),
        (
            "server:\n  trusted_tenant_header: \"x tenant\"\n",
            "trusted_tenant_header",
        ),
        (
            "server:\n  allowed_hosts: [\"http://a.example/\"]\n",
            "allowed_hosts",
        ),
        (
            "admission:\n  tenants:\n    - {name: a, api_keys: [k1]}\n    - {name: a, api_keys: [k2]}\n",
            "used twice",
        ),
        (
            "admission:\n  tenants:\n    - {name: a, api_keys: [k1]}\n    - {name: b, api_keys: [k1]}\n",
            "another tenant",
        ),
        (
            "admission:\n  shared_quota: {redis_url: \"http://127.0.0.1:6379\"}\n",
            "redis:// URL",
        ),
        (
            "admission:\n  shared_quota: {timeout_ms: 0}\n",
            "timeout_ms and retry_ms",
        ),
    ];
    for (yaml, expected) in cases {
        let err = RuntimeConfig::from_yaml(yaml, "test").unwrap_err();
        assert!(err.to_string().contains(expected), "{yaml}: {err}");
    }
}

#[test]
fn fault_injection_needs_an_admin_key() {
    let err = RuntimeConfig::from_yaml("server:\n  fault_injection: true\n", "test").unwrap_err();
    assert!(err.to_string().contains("fault_injection"), "{err}");
    let with_key = "server:\n  fault_injection: true\n  admin_api_key: admin-key-0123456789\n";
    assert!(RuntimeConfig::from_yaml(with_key, "test").is_ok());
}

#[test]
fn webhook_urls_are_checked_at_load_time() {
    let load = |url: &str| {
        RuntimeConfig::from_yaml(
            &format!("alerts:\n  webhooks: [{{url: {url:?}}}]\n"),
            "test",
        )
    };
    for good in [
        "http://127.0.0.1:9000/hook",
        "http://alerts.internal/v1/hook?team=serving",
        "http://[::1]:8080",
        "http://relay",
    ] {
        assert!(load(good).is_ok(), "{good}: {:?}", load(good));
    }
    for (bad, says) in [
        ("https://hooks.example.com/x", "https"),
        ("ftp://host/x", "http://"),
        ("http:///path", "no host"),
        ("http://host:99999/x", "port"),
        ("http://host:0", "port"),
        ("http://user:pw@host/x", "credentials"),
        ("http://host/a b", "character"),
        ("http://[::1/x", "unclosed"),
    ] {
        let err = load(bad).unwrap_err().to_string();
        assert!(
            err.contains("alerts.webhooks[0].url") && err.contains(says),
            "{bad}: {err}"
        );
    }
}

#[test]
fn alert_delivery_limits_are_checked() {
    for (yaml, names) in [
        ("alerts:\n  timeout_ms: 0\n", "timeout_ms"),
        ("alerts:\n  queue_capacity: 0\n", "queue_capacity"),
        (
            "alerts:\n  initial_backoff_ms: 20000\n  max_backoff_ms: 1000\n",
            "initial_backoff_ms",
        ),
        (
            "alerts:\n  webhooks: [{url: 'http://h', bearer_token: ''}]\n",
            "bearer_token",
        ),
    ] {
        let err = RuntimeConfig::from_yaml(yaml, "test")
            .unwrap_err()
            .to_string();
        assert!(err.contains(names), "{yaml}: {err}");
    }
}

#[test]
fn park_limit_is_off_or_long_enough_to_outlast_a_step() {
    let parse =
        |ms: u64| RuntimeConfig::from_yaml(&format!("engine:\n  max_park_ms: {ms}\n"), "test");
    let err = parse(MIN_PARK_MS - 1).unwrap_err();
    assert!(err.to_string().contains("max_park_ms"), "{err}");
    assert_eq!(parse(0).unwrap().engine.max_park_ms, 0);
    assert_eq!(parse(MIN_PARK_MS).unwrap().engine.max_park_ms, MIN_PARK_MS);
}

#[test]
fn step_stall_timeout_is_off_or_longer_than_a_slow_step() {
    let parse = |ms: u64| {
        RuntimeConfig::from_yaml(&format!("engine:\n  step_stall_timeout_ms: {ms}\n"), "test")
    };
    let err = parse(MIN_STEP_STALL_TIMEOUT_MS - 1).unwrap_err();
    assert!(err.to_string().contains("step_stall_timeout_ms"), "{err}");
    assert_eq!(parse(0).unwrap().engine.step_stall_timeout_ms, 0);
    assert_eq!(
        parse(MIN_STEP_STALL_TIMEOUT_MS)
            .unwrap()
            .engine
            .step_stall_timeout_ms,
        MIN_STEP_STALL_TIMEOUT_MS
    );
}

#[test]
fn mixed_tenant_step_cap_is_off_or_at_least_a_prefill_chunk() {
    let parse = |cap: u32| {
        RuntimeConfig::from_yaml(
            &format!("engine:\n  mixed_step_token_budget: {cap}\n"),
            "test",
        )
    };
    assert!(parse(0).is_ok(), "0 turns the cap off");
    assert!(parse(16).is_ok());
    let err = parse(8).unwrap_err();
    assert!(err.to_string().contains("mixed_step_token_budget"), "{err}");
}

#[test]
fn rules_must_name_existing_tenants_and_flags() {
    let with_rule = |rule: &str| {
        RuntimeConfig::from_yaml(
            &format!(
                "admission:\n  tenants: [{{name: acme, tokens_per_minute: 600}}]\n\
                 qos:\n  policy:\n    rules: [{rule}]\n"
            ),
            "test",
        )
    };
    let rule = |indicator: &str, scope: &str, action: &str| {
        format!(
            "{{name: r, indicator: {indicator}, scope: {scope}, comparison: above, \
             threshold: 0.2, action: {action}}}"
        )
    };
    let throttle = |tenant: &str, max: u32| {
        format!("{{kind: throttle_tenant, tenant: {tenant}, max_concurrent: {max}}}")
    };
    for ok in [
        rule("ttft_p95_seconds", "{tenant: acme}", &throttle("acme", 2)),
        rule("error_rate", "{tenant: default}", &throttle("default", 1)),
        rule("error_rate", "global", "{kind: rollback}"),
        rule(
            "canary_ttft_regression",
            "{flag: prefix_cache}",
            "{kind: disable_flag, flag: prefix_cache}",
        ),
    ] {
        assert!(with_rule(&ok).is_ok(), "{ok}: {:?}", with_rule(&ok));
    }
    for (bad, says) in [
        (
            rule("ttft_p95_seconds", "{tenant: nobody}", "{kind: rollback}"),
            "no tenant 'nobody'",
        ),
        (
            rule("canary_ttft_regression", "global", "{kind: rollback}"),
            "needs scope",
        ),
        (
            rule(
                "canary_itl_regression",
                "{flag: warp_drive}",
                "{kind: rollback}",
            ),
            "no flag 'warp_drive'",
        ),
        (
            rule("error_rate", "{flag: kv_prep}", "{kind: rollback}"),
            "not a canary indicator",
        ),
        (
            rule("error_rate", "global", &throttle("ghost", 1)),
            "no tenant 'ghost'",
        ),
        (
            rule("error_rate", "global", &throttle("acme", 0)),
            "at least 1",
        ),
    ] {
        let err = with_rule(&bad).unwrap_err().to_string();
        assert!(
            err.contains(says) && err.contains("rules 'r'"),
            "{bad}: {err}"
        );
    }
    let err = RuntimeConfig::from_yaml(
        "admission:\n  tenants: [{name: acme, tokens_per_minute: 0}]\n",
        "test",
    )
    .unwrap_err();
    assert!(err.to_string().contains("tokens_per_minute"), "{err}");
}

#[test]
fn breaches_are_checked_globally_per_tenant_and_per_canary() {
    let qos = QosConfig {
        slo: SloTargets {
            ttft_p95_seconds: Some(2.0),
            ..SloTargets::default()
        },
        ..QosConfig::default()
    };
    let mut indicators = Indicators::global(HashMap::from([(Indicator::TtftP95Seconds, 1.0)]));
    indicators.insert(
        Scope::Tenant("slow".into()),
        HashMap::from([(Indicator::TtftP95Seconds, 3.0)]),
    );
    indicators.insert(
        Scope::Tenant("fast".into()),
        HashMap::from([(Indicator::TtftP95Seconds, 0.5)]),
    );
    indicators.insert(
        Scope::Flag("prefix_cache".into()),
        HashMap::from([
            (Indicator::CanaryTtftRegression, 0.3),
            (Indicator::CanaryItlRegression, 0.1),
        ]),
    );
    indicators.insert(
        Scope::Flag("kv_prep".into()),
        HashMap::from([(Indicator::CanaryTtftRegression, -0.6)]),
    );
    assert_eq!(
        qos.breaches(&indicators),
        [
            Breach {
                scope: Scope::Tenant("slow".into()),
                indicator: Indicator::TtftP95Seconds,
                value: 3.0,
                target: 2.0
            },
            Breach {
                scope: Scope::Flag("prefix_cache".into()),
                indicator: Indicator::CanaryTtftRegression,
                value: 0.3,
                target: 0.2
            },
        ]
    );
}

#[test]
fn served_name_defaults_to_file_stem() {
    let model = ModelConfig::default();
    assert_eq!(model.served_name(), "SmolLM2-135M-Instruct.Q4_1");
}

#[test]
fn pools_are_the_short_sequences_and_a_long_pool_up_to_the_served_context() {
    // SmolLM2-135M at f16: 30 layers × 2 × 192 values × 2 bytes per cell.
    let cell = 23_040.0;
    let plenty = u64::MAX;
    let engine = EngineConfig::default();
    let pool = |sequences, context| PoolSize { sequences, context };
    assert_eq!(
        engine.pools(8192, cell, plenty),
        vec![pool(128, 1024), pool(4, 8192)]
    );
    let capped = EngineConfig {
        max_model_len: 4096,
        ..EngineConfig::default()
    };
    assert_eq!(capped.served_context(8192), 4096);
    assert_eq!(
        capped.pools(8192, cell, plenty),
        vec![pool(128, 1024), pool(4, 4096)]
    );
    // Never above what the model was trained for; a model whose context
    // fits a short sequence needs no long pool.
    assert_eq!(capped.served_context(2048), 2048);
    assert_eq!(engine.pools(512, cell, plenty), vec![pool(128, 512)]);
    let no_long = EngineConfig {
        long_sequences: 0,
        ..EngineConfig::default()
    };
    assert_eq!(no_long.pools(8192, cell, plenty), vec![pool(128, 1024)]);
}

#[test]
fn a_kv_budget_shrinks_the_pools_long_pool_first() {
    let cell = 23_040.0;
    let engine = EngineConfig::default();
    let pool = |sequences, context| PoolSize { sequences, context };
    let sequence = |context: u64| context * 23_040;
    // Room for the long pool and 40 short sequences.
    let budget = 4 * sequence(8192) + 40 * sequence(1024) + 1;
    assert_eq!(
        engine.pools(8192, cell, budget),
        vec![pool(40, 1024), pool(4, 8192)]
    );
    // Room for one long sequence and a little: the short pool keeps one.
    assert_eq!(
        engine.pools(8192, cell, sequence(8192) + 100),
        vec![pool(1, 1024), pool(1, 8192)]
    );
}
