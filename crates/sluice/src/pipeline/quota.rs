//! Pipeline step two's first gate: a tenant's token rate, charged before the
//! request queues. With `admission.shared_quota` the buckets live in Redis,
//! one per tenant for every node behind the gateway, so N nodes grant the
//! rate once, not N times; without it each node's own buckets
//! ([`Admission`]) do. Redis's clock times the shared buckets, so the
//! nodes' clocks need not agree.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use sluice_core::admission::shed::MIN_RETRY_AFTER;
use sluice_core::admission::{Admission, Rejection, TokenCharge, TokenLedger};
use sluice_core::config::{QuotaFailMode, SharedQuotaConfig};
use tokio::time::{Instant, timeout};

use crate::telemetry::{Metrics, QuotaMode};

/// One tenant's bucket, atomically: a hash of `level` (tokens) and
/// `updated` (Redis time, seconds), refilled at ARGV[1] tokens per minute up
/// to one minute's worth, as the node-local `TokenBucket`.
/// ARGV[3] `take`: takes ARGV[2] tokens (at most a full bucket) if the
/// bucket holds them: {1, taken}; else {0, seconds until it will}.
/// ARGV[3] `settle`: takes ARGV[2] tokens unconditionally (negative: gives
/// them back, up to a full bucket): {1, ARGV[2]}.
/// The key expires once the bucket would be full again, which reads the
/// same as no key.
const BUCKET_SCRIPT: &str = r"
local now_parts = redis.call('TIME')
local now = tonumber(now_parts[1]) + tonumber(now_parts[2]) / 1000000
local capacity = tonumber(ARGV[1])
local per_second = capacity / 60
local state = redis.call('HMGET', KEYS[1], 'level', 'updated')
local level = tonumber(state[1]) or capacity
local updated = tonumber(state[2]) or now
level = math.min(capacity, level + math.max(0, now - updated) * per_second)
local amount = tonumber(ARGV[2])
if ARGV[3] == 'take' then
  amount = math.min(amount, capacity)
  if amount > level then
    return {0, tostring((amount - level) / per_second)}
  end
end
level = math.min(capacity, level - amount)
redis.call('HSET', KEYS[1], 'level', tostring(level), 'updated', tostring(now))
redis.call('EXPIRE', KEYS[1], math.ceil((capacity - level) / per_second) + 1)
return {1, tostring(amount)}
";

/// What charges a request's tokens: this node's buckets, or Redis's.
pub enum Quota {
    Local(Arc<Admission>),
    Shared(Arc<SharedQuota>),
}

impl Quota {
    pub fn new(
        admission: &Arc<Admission>,
        shared: Option<&SharedQuotaConfig>,
        metrics: &Arc<Metrics>,
    ) -> Result<Self, redis::RedisError> {
        Ok(match shared {
            None => Self::Local(Arc::clone(admission)),
            Some(config) => Self::Shared(Arc::new(SharedQuota::new(
                Arc::clone(admission),
                config,
                Arc::clone(metrics),
            )?)),
        })
    }

    /// Charges `tokens` to the tenant's rate. `None` for a tenant without
    /// one.
    pub async fn charge(
        &self,
        tenant: &str,
        tokens: u64,
    ) -> Result<Option<TokenCharge>, Rejection> {
        match self {
            Self::Local(admission) => admission.charge_tokens(tenant, tokens),
            Self::Shared(shared) => shared.charge(tenant, tokens).await,
        }
    }
}

/// Token buckets in Redis, with this node's buckets behind them for when
/// Redis cannot be reached (`when_unreachable: local`).
pub struct SharedQuota {
    admission: Arc<Admission>,
    client: redis::Client,
    /// The open connection, shared by every request (multiplexed); `None`
    /// until the first charge and after a failure.
    connection: Mutex<Option<MultiplexedConnection>>,
    script: redis::Script,
    key_prefix: String,
    timeout: Duration,
    retry: Duration,
    fail_mode: QuotaFailMode,
    /// Until when Redis counts as down: charges skip it meanwhile, so a
    /// dead Redis costs one timeout per `retry`, not one per request.
    down_until: Mutex<Option<Instant>>,
    metrics: Arc<Metrics>,
    /// Settlements run after their request, from `Drop`.
    runtime: tokio::runtime::Handle,
}

enum Take {
    Taken(u64),
    Wait(Duration),
}

impl SharedQuota {
    /// Checks the URL only: Redis need not be up yet.
    fn new(
        admission: Arc<Admission>,
        config: &SharedQuotaConfig,
        metrics: Arc<Metrics>,
    ) -> Result<Self, redis::RedisError> {
        metrics.set_quota_mode(QuotaMode::Shared);
        Ok(Self {
            admission,
            client: redis::Client::open(config.redis_url.as_str())?,
            connection: Mutex::new(None),
            script: redis::Script::new(BUCKET_SCRIPT),
            key_prefix: config.key_prefix.clone(),
            timeout: Duration::from_millis(config.timeout_ms),
            retry: Duration::from_millis(config.retry_ms),
            fail_mode: config.when_unreachable,
            down_until: Mutex::new(None),
            metrics,
            runtime: tokio::runtime::Handle::current(),
        })
    }

    async fn charge(
        self: &Arc<Self>,
        tenant: &str,
        tokens: u64,
    ) -> Result<Option<TokenCharge>, Rejection> {
        let Some(tokens_per_minute) = self.admission.tokens_per_minute(tenant) else {
            return Ok(None);
        };
        if !self.is_down() {
            match timeout(self.timeout, self.take(tenant, tokens_per_minute, tokens)).await {
                Ok(Ok(Take::Taken(charged))) => {
                    self.metrics.set_quota_mode(QuotaMode::Shared);
                    return Ok(Some(TokenCharge::new(
                        Arc::clone(self) as Arc<dyn TokenLedger>,
                        tenant.to_owned(),
                        charged,
                    )));
                }
                Ok(Ok(Take::Wait(wait))) => {
                    self.metrics.set_quota_mode(QuotaMode::Shared);
                    return Err(Rejection::TokenRateExceeded {
                        retry_after: Duration::from_secs(wait.as_secs_f64().ceil() as u64)
                            .max(MIN_RETRY_AFTER),
                        tokens_per_minute,
                    });
                }
                Ok(Err(error)) => self.mark_down(&error.to_string()),
                Err(_) => self.mark_down("no answer within admission.shared_quota.timeout_ms"),
            }
        }
        match self.fail_mode {
            QuotaFailMode::Local => self.admission.charge_tokens(tenant, tokens),
            QuotaFailMode::Reject => Err(Rejection::QuotaStoreUnavailable {
                retry_after: self.retry.max(MIN_RETRY_AFTER),
            }),
        }
    }

    async fn take(
        &self,
        tenant: &str,
        tokens_per_minute: u32,
        tokens: u64,
    ) -> redis::RedisResult<Take> {
        let mut connection = self.connection().await?;
        let (taken, value): (i64, String) = self
            .script
            .key(self.key(tenant))
            .arg(tokens_per_minute)
            .arg(tokens)
            .arg("take")
            .invoke_async(&mut connection)
            .await?;
        let value: f64 = value.parse().unwrap_or(0.0);
        Ok(if taken == 1 {
            Take::Taken(value as u64)
        } else {
            Take::Wait(Duration::from_secs_f64(value.max(0.0)))
        })
    }

    async fn connection(&self) -> redis::RedisResult<MultiplexedConnection> {
        if let Some(connection) = lock(&self.connection).clone() {
            return Ok(connection);
        }
        let connection = self.client.get_multiplexed_async_connection().await?;
        *lock(&self.connection) = Some(connection.clone());
        Ok(connection)
    }

    fn key(&self, tenant: &str) -> String {
        format!("{}:tokens:{tenant}", self.key_prefix)
    }

    fn is_down(&self) -> bool {
        let mut down_until = lock(&self.down_until);
        match *down_until {
            Some(until) if Instant::now() < until => true,
            Some(_) => {
                *down_until = None;
                false
            }
            None => false,
        }
    }

    fn mark_down(&self, why: &str) {
        *lock(&self.connection) = None;
        *lock(&self.down_until) = Some(Instant::now() + self.retry);
        let mode = match self.fail_mode {
            QuotaFailMode::Local => QuotaMode::Local,
            QuotaFailMode::Reject => QuotaMode::Reject,
        };
        self.metrics.set_quota_mode(mode);
        tracing::warn!(
            error = why,
            retry_ms = self.retry.as_millis() as u64,
            "shared quota store unreachable; counting {}",
            match mode {
                QuotaMode::Local => "on this node's buckets",
                _ => "nothing: requests with a token rate get 503",
            }
        );
    }
}

impl TokenLedger for SharedQuota {
    /// Runs after the request, on the runtime: nothing waits for it. A
    /// settlement lost to a Redis failure leaves the charge as taken: off
    /// by at most one request's charge.
    fn settle(&self, tenant: &str, charged: u64, used: u64) {
        if charged == used {
            return;
        }
        let Some(tokens_per_minute) = self.admission.tokens_per_minute(tenant) else {
            return;
        };
        let Some(mut connection) = lock(&self.connection).clone() else {
            return;
        };
        let invocation_key = self.key(tenant);
        let script = self.script.clone();
        let limit = self.timeout;
        let amount = used as i64 - charged as i64;
        self.runtime.spawn(async move {
            let settled = timeout(
                limit,
                script
                    .key(invocation_key)
                    .arg(tokens_per_minute)
                    .arg(amount)
                    .arg("settle")
                    .invoke_async::<(i64, String)>(&mut connection),
            )
            .await;
            if !matches!(settled, Ok(Ok(_))) {
                tracing::debug!("shared quota settlement lost");
            }
        });
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
