//! First-token speculation: the opening tokens of answers to deterministic
//! requests (greedy, or a fixed seed), keyed by the exact prompt and
//! parameters. A request that matches gets those tokens at once and the
//! engine continues from the prompt *plus* them, so everything sent is kept:
//! the rest is the model's own continuation of what the client already has
//! (batched numerics differ from solo runs, so "verify and retract" could
//! not work). Bounded in entries, bytes and age; least recently used first
//! out.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SpeculationConfig {
    /// Tokens of a cached answer sent before the engine continues.
    pub first_tokens: usize,
    /// Entries older than this are not served.
    pub ttl_ms: u64,
    pub max_entries: usize,
    /// Bound on keys plus cached text and token ids, in bytes.
    pub max_bytes: usize,
}

impl Default for SpeculationConfig {
    fn default() -> Self {
        Self {
            first_tokens: 8,
            ttl_ms: 10 * 60 * 1000,
            max_entries: 4096,
            max_bytes: 16 * 1024 * 1024,
        }
    }
}

/// The opening of a cached answer: its text pieces as streamed, each with
/// the token ids behind it, and whether the answer ended there.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CachedOpening {
    pub pieces: Vec<(String, Vec<i32>)>,
    /// The whole answer (it stopped within `first_tokens` pieces).
    pub complete: bool,
}

impl CachedOpening {
    fn bytes(&self) -> usize {
        self.pieces
            .iter()
            .map(|(text, ids)| text.len() + ids.len() * 4)
            .sum()
    }

    pub fn token_count(&self) -> usize {
        self.pieces.iter().map(|(_, ids)| ids.len()).sum()
    }
}

struct Entry {
    opening: CachedOpening,
    stored_at: Instant,
    last_used: u64,
}

/// What the cache holds, for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CacheUsage {
    pub entries: usize,
    pub bytes: usize,
}

pub struct OpeningCache {
    config: SpeculationConfig,
    entries: HashMap<Vec<u8>, Entry>,
    /// (key, use stamp) in use order; stale stamps are skipped on eviction.
    order: VecDeque<(Vec<u8>, u64)>,
    bytes: usize,
    clock: u64,
}

impl OpeningCache {
    pub fn new(config: SpeculationConfig) -> Self {
        Self {
            config,
            entries: HashMap::new(),
            order: VecDeque::new(),
            bytes: 0,
            clock: 0,
        }
    }

    pub fn first_tokens(&self) -> usize {
        self.config.first_tokens
    }

    pub fn usage(&self) -> CacheUsage {
        CacheUsage {
            entries: self.entries.len(),
            bytes: self.bytes,
        }
    }

    /// The cached opening for `key`, if fresh.
    pub fn get(&mut self, key: &[u8], now: Instant) -> Option<CachedOpening> {
        let ttl = Duration::from_millis(self.config.ttl_ms);
        let fresh = self
            .entries
            .get(key)
            .is_some_and(|entry| now.duration_since(entry.stored_at) <= ttl);
        if !fresh {
            self.remove(key);
            return None;
        }
        self.clock += 1;
        let stamp = self.clock;
        let entry = self.entries.get_mut(key)?;
        entry.last_used = stamp;
        let opening = entry.opening.clone();
        self.order.push_back((key.to_vec(), stamp));
        self.compact_order();
        Some(opening)
    }

    /// Stores an opening, evicting the least recently used entries to stay
    /// within bounds. An opening larger than the whole budget is not kept.
    pub fn insert(&mut self, key: Vec<u8>, opening: CachedOpening, now: Instant) {
        let size = key.len() + opening.bytes();
        if size > self.config.max_bytes || self.config.max_entries == 0 {
            return;
        }
        self.remove(&key);
        while self.entries.len() >= self.config.max_entries
            || self.bytes + size > self.config.max_bytes
        {
            let Some((oldest, stamp)) = self.order.pop_front() else {
                break;
            };
            if self
                .entries
                .get(&oldest)
                .is_some_and(|entry| entry.last_used == stamp)
            {
                self.remove(&oldest);
            }
        }
        self.clock += 1;
        self.bytes += size;
        self.order.push_back((key.clone(), self.clock));
        self.entries.insert(
            key,
            Entry {
                opening,
                stored_at: now,
                last_used: self.clock,
            },
        );
    }

    fn remove(&mut self, key: &[u8]) {
        if let Some(entry) = self.entries.remove(key) {
            self.bytes -= key.len() + entry.opening.bytes();
        }
    }

    /// Drops stale use stamps once they outnumber live entries, so the
    /// order queue stays proportional to the cache.
    fn compact_order(&mut self) {
        if self.order.len() > 2 * self.entries.len() + 16 {
            let entries = &self.entries;
            self.order.retain(|(key, stamp)| {
                entries
                    .get(key)
                    .is_some_and(|entry| entry.last_used == *stamp)
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opening(text: &str) -> CachedOpening {
        CachedOpening {
            pieces: vec![(text.to_owned(), vec![1, 2])],
            complete: false,
        }
    }

    fn cache(max_entries: usize, max_bytes: usize) -> OpeningCache {
        OpeningCache::new(SpeculationConfig {
            first_tokens: 2,
            ttl_ms: 1000,
            max_entries,
            max_bytes,
        })
    }

    #[test]
    fn hits_only_the_exact_key_while_fresh() {
        let now = Instant::now();
        let mut cache = cache(8, 1 << 20);
        cache.insert(b"k1".to_vec(), opening("Hello"), now);
        assert_eq!(cache.get(b"k1", now), Some(opening("Hello")));
        assert_eq!(cache.get(b"k2", now), None);
        assert_eq!(cache.get(b"k1", now + Duration::from_millis(1001)), None);
        assert_eq!(
            cache.usage(),
            CacheUsage::default(),
            "expired entries leave"
        );
    }

    #[test]
    fn evicts_least_recently_used_to_stay_within_entries() {
        let now = Instant::now();
        let mut cache = cache(2, 1 << 20);
        cache.insert(b"a".to_vec(), opening("A"), now);
        cache.insert(b"b".to_vec(), opening("B"), now);
        assert!(cache.get(b"a", now).is_some());
        cache.insert(b"c".to_vec(), opening("C"), now);
        assert!(cache.get(b"b", now).is_none(), "b was least recently used");
        assert!(cache.get(b"a", now).is_some());
        assert!(cache.get(b"c", now).is_some());
        assert_eq!(cache.usage().entries, 2);
    }

    #[test]
    fn byte_bound_holds_and_oversized_entries_are_refused() {
        let now = Instant::now();
        let mut cache = cache(100, 64);
        for i in 0..50u8 {
            cache.insert(vec![i], opening("0123456789"), now);
            assert!(cache.usage().bytes <= 64);
        }
        cache.insert(b"big".to_vec(), opening(&"x".repeat(100)), now);
        assert!(cache.get(b"big", now).is_none());
        assert!(cache.usage().bytes <= 64);
    }

    #[test]
    fn order_queue_stays_bounded_under_repeated_hits() {
        let now = Instant::now();
        let mut cache = cache(4, 1 << 20);
        cache.insert(b"a".to_vec(), opening("A"), now);
        for _ in 0..10_000 {
            cache.get(b"a", now);
        }
        assert!(cache.order.len() <= 2 * cache.entries.len() + 17);
    }
}
