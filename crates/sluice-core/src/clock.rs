//! Wall-clock time for what leaves the process (OpenAI `created` fields,
//! alert timestamps); everything that measures uses `Instant`.

use std::time::{SystemTime, UNIX_EPOCH};

/// Seconds since the Unix epoch; 0 on a clock set before it.
pub fn unix_seconds() -> u64 {
    unix_millis() / 1000
}

/// Milliseconds since the Unix epoch; 0 on a clock set before it.
pub fn unix_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_millis() as u64)
}
