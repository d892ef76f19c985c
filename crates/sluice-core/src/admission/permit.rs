//! The permit a running stream holds: admission's side of a stream's life,
//! from the grant to the first token (which settles an overdraft) to the
//! drop that releases it.

use std::sync::Arc;
use std::time::Duration;

use super::{Admission, Priority};

/// The right to run one stream. Released on drop, exactly once.
pub struct Permit {
    pub(super) admission: Arc<Admission>,
    pub(super) tenant: String,
    pub(super) class: Priority,
    /// The wait shedding predicted for it, when it could.
    pub(super) predicted_wait: Option<Duration>,
    /// Admitted past the limit as a booked retry, until its first token.
    pub(super) overdraft: bool,
}

impl std::fmt::Debug for Permit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Permit")
            .field("tenant", &self.tenant)
            .finish()
    }
}

impl Permit {
    pub fn tenant(&self) -> &str {
        &self.tenant
    }

    pub fn predicted_wait(&self) -> Option<Duration> {
        self.predicted_wait
    }

    /// Its stream has its first token: a permit taken past the limit stops
    /// counting against the overdraft allowance, which bounds retries
    /// waiting for their first token, not streams. It still counts as
    /// running, so the limit holds fresh requests back until the streams
    /// it passed have ended.
    pub fn first_token(&mut self) {
        if std::mem::take(&mut self.overdraft) {
            self.admission.settle_overdraft();
        }
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.admission
            .release(&self.tenant, self.class, self.overdraft);
    }
}
