//! What admission knows of a request beside its tenant: its class and its
//! first-token deadline.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// A request's priority class.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Priority {
    /// Someone waits for it: admitted first, never behind batch work.
    #[default]
    Interactive,
    /// Fills idle capacity and yields first.
    Batch,
}

impl Priority {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Interactive => "interactive",
            Self::Batch => "batch",
        }
    }

    pub(super) fn index(self) -> usize {
        self as usize
    }
}

/// What admission knows of one request beside its tenant.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Urgency {
    pub priority: Priority,
    /// Longest it may wait for its first token; None: no deadline.
    pub deadline: Option<Duration>,
    /// Identifies a retry of this request (tenant and content), to give it
    /// the place its `Retry-After` booked.
    pub retry_key: u64,
}
