//! KV-cache events for an inference gateway's prefix-aware routing: which
//! blocks of [`KV_EVENT_BLOCK_TOKENS`] tokens the engine's sequences hold,
//! as they become fully cached and as they are dropped. The engine thread
//! sends a batch per round that changed something; the server encodes and
//! publishes them (`engine.kv_events`).

use tokio::sync::mpsc::UnboundedSender;

/// Tokens per block, as `sluice:cache_config_info` reports it.
pub const KV_EVENT_BLOCK_TOKENS: usize = 16;

/// A change to the set of blocks the engine holds. A block's hash chains
/// its parent's (or, for a first block, the sequence's cache namespace)
/// with its tokens, so equal hashes mean equal prefixes of one namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KvBlockEvent {
    /// Consecutive blocks of one sequence, now held: `parent` is the hash
    /// of the block before the first (None: the first starts the prompt);
    /// `token_ids` are all their tokens, in order.
    Stored {
        block_hashes: Vec<u64>,
        parent: Option<u64>,
        token_ids: Vec<i32>,
    },
    /// Blocks no sequence holds any more.
    Removed { block_hashes: Vec<u64> },
}

/// Where the engine sends each round's events.
pub type KvEventSender = UnboundedSender<Vec<KvBlockEvent>>;
