//! Token-rate charges: a request takes prompt + `max_tokens` from its
//! tenant's bucket before it queues, and settles against what it used when
//! it ends. The bucket is this node's ([`Admission`]) or one shared by every
//! node (the server's Redis quota); [`TokenLedger`] is what settles.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::shed::MIN_RETRY_AFTER;
use super::{Admission, Rejection};
use crate::rate::TokenBucket;

/// Where a charge is settled once its request ends.
pub trait TokenLedger: Send + Sync {
    /// Gives back `charged - used` tokens, or takes `used - charged` more
    /// as debt.
    fn settle(&self, tenant: &str, charged: u64, used: u64);
}

/// Tokens a request took from its tenant's bucket. Dropping it settles the
/// charge against the use recorded with [`TokenCharge::record_use`]: unused
/// tokens go back, tokens used beyond the charge are taken as debt. A
/// request that never ran (rejected later, engine full) records no use and
/// gets its whole charge back.
pub struct TokenCharge {
    ledger: Arc<dyn TokenLedger>,
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
    /// A charge of `charged` tokens that `ledger` has taken.
    pub fn new(ledger: Arc<dyn TokenLedger>, tenant: String, charged: u64) -> Self {
        Self {
            ledger,
            tenant,
            charged,
            used: 0,
        }
    }

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
        self.ledger.settle(&self.tenant, self.charged, self.used);
    }
}

impl Admission {
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
            Ok(charged) => Ok(Some(TokenCharge::new(
                Arc::clone(self) as Arc<dyn TokenLedger>,
                tenant.to_owned(),
                charged,
            ))),
            Err(wait) => Err(Rejection::TokenRateExceeded {
                retry_after: Duration::from_secs(wait.as_secs_f64().ceil() as u64)
                    .max(MIN_RETRY_AFTER),
                tokens_per_minute: bucket.tokens_per_minute(),
            }),
        }
    }

    /// The tenant's token rate, if it has one.
    pub fn tokens_per_minute(&self, tenant: &str) -> Option<u32> {
        self.lock()
            .buckets
            .get(tenant)
            .map(TokenBucket::tokens_per_minute)
    }
}

impl TokenLedger for Admission {
    fn settle(&self, tenant: &str, charged: u64, used: u64) {
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
}
