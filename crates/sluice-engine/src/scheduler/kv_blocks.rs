//! The ledger behind KV-cache events (`crate::kv_events`): after every
//! round it compares what each slot's KV cells hold (a running sequence's
//! tokens, else the slot's cached prefix) with what was last published for
//! that slot, so no path that changes cells (prefill, decode, reuse, copy,
//! truncation, eviction, a KV prep) goes unreported. A block several slots
//! hold is stored once and removed when the last one drops it.

use std::collections::HashMap;
use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use super::Pool;
use crate::kv_events::{KV_EVENT_BLOCK_TOKENS, KvBlockEvent, KvEventSender};

pub(super) struct BlockLedger {
    /// Per pool, per slot: the full blocks last published for it.
    published: Vec<Vec<SlotBlocks>>,
    /// How many slots hold each published block.
    holders: HashMap<u64, u32>,
    sender: KvEventSender,
}

#[derive(Default)]
struct SlotBlocks {
    namespace: Arc<str>,
    /// The tokens of `hashes`' blocks.
    tokens: Vec<i32>,
    hashes: Vec<u64>,
}

impl BlockLedger {
    pub(super) fn new(pools: &[Pool], sender: KvEventSender) -> Self {
        Self {
            published: pools
                .iter()
                .map(|pool| {
                    (0..pool.slots.len())
                        .map(|_| SlotBlocks::default())
                        .collect()
                })
                .collect(),
            holders: HashMap::new(),
            sender,
        }
    }

    /// Publishes what changed in `pools` since the last call.
    pub(super) fn publish(&mut self, pools: &[Pool]) {
        let mut events = Vec::new();
        for (index, pool) in pools.iter().enumerate() {
            for slot in 0..pool.slots.len() {
                let (namespace, tokens) = pool.kv_content(slot);
                self.reconcile(index, slot, namespace, tokens, &mut events);
            }
        }
        if !events.is_empty() {
            // The server's publisher gone (shutting down): nothing to tell.
            let _ = self.sender.send(events);
        }
    }

    fn reconcile(
        &mut self,
        pool: usize,
        slot: usize,
        namespace: &Arc<str>,
        tokens: &[i32],
        events: &mut Vec<KvBlockEvent>,
    ) {
        let published = &mut self.published[pool][slot];
        let kept = if *published.namespace == **namespace {
            common_prefix(&published.tokens, tokens) / KV_EVENT_BLOCK_TOKENS
        } else {
            0
        };
        let mut removed = Vec::new();
        for hash in published.hashes.drain(kept..) {
            if let Some(count) = self.holders.get_mut(&hash) {
                *count -= 1;
                if *count == 0 {
                    self.holders.remove(&hash);
                    removed.push(hash);
                }
            }
        }
        published.tokens.truncate(kept * KV_EVENT_BLOCK_TOKENS);
        if !removed.is_empty() {
            events.push(KvBlockEvent::Removed {
                block_hashes: removed,
            });
        }
        published.namespace = Arc::clone(namespace);
        // New full blocks, grouped in runs of blocks no other slot holds.
        let mut run: Option<KvBlockEvent> = None;
        for block in tokens
            .chunks_exact(KV_EVENT_BLOCK_TOKENS)
            .skip(published.hashes.len())
        {
            let parent = published.hashes.last().copied();
            let hash = block_hash(parent, namespace, block);
            published.hashes.push(hash);
            published.tokens.extend_from_slice(block);
            let holders = self.holders.entry(hash).or_insert(0);
            *holders += 1;
            if *holders > 1 {
                events.extend(run.take());
                continue;
            }
            match &mut run {
                Some(KvBlockEvent::Stored {
                    block_hashes,
                    token_ids,
                    ..
                }) => {
                    block_hashes.push(hash);
                    token_ids.extend_from_slice(block);
                }
                _ => {
                    run = Some(KvBlockEvent::Stored {
                        block_hashes: vec![hash],
                        parent,
                        token_ids: block.to_vec(),
                    });
                }
            }
        }
        events.extend(run);
    }
}

/// SipHash with fixed keys: stable for the life of the process, which is
/// all a subscriber keys on (it hashes prompts itself from the token ids).
fn block_hash(parent: Option<u64>, namespace: &str, block: &[i32]) -> u64 {
    let mut hasher = DefaultHasher::new();
    match parent {
        Some(parent) => parent.hash(&mut hasher),
        None => namespace.hash(&mut hasher),
    }
    block.hash(&mut hasher);
    hasher.finish()
}

fn common_prefix(a: &[i32], b: &[i32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A ledger over one pool of `slots` slots, fed by hand.
    fn ledger(
        slots: usize,
    ) -> (
        BlockLedger,
        tokio::sync::mpsc::UnboundedReceiver<Vec<KvBlockEvent>>,
    ) {
        let (sender, receiver) = tokio::sync::mpsc::unbounded_channel();
        let ledger = BlockLedger {
            published: vec![(0..slots).map(|_| SlotBlocks::default()).collect()],
            holders: HashMap::new(),
            sender,
        };
        (ledger, receiver)
    }

    fn run(
        ledger: &mut BlockLedger,
        slot: usize,
        namespace: &str,
        tokens: &[i32],
    ) -> Vec<KvBlockEvent> {
        let mut events = Vec::new();
        ledger.reconcile(0, slot, &Arc::from(namespace), tokens, &mut events);
        events
    }

    fn tokens(count: usize, offset: i32) -> Vec<i32> {
        (0..count as i32).map(|i| i + offset).collect()
    }

    #[test]
    fn full_blocks_are_stored_as_they_fill_and_removed_when_cut() {
        let (mut ledger, _receiver) = ledger(1);
        let prompt = tokens(40, 0);
        let events = run(&mut ledger, 0, "t", &prompt[..20]);
        let [
            KvBlockEvent::Stored {
                block_hashes,
                parent: None,
                token_ids,
            },
        ] = events.as_slice()
        else {
            panic!("{events:?}");
        };
        assert_eq!(block_hashes.len(), 1);
        assert_eq!(token_ids, &prompt[..16]);
        let first = block_hashes[0];
        // Four more tokens complete nothing; twenty more complete block 2.
        assert!(run(&mut ledger, 0, "t", &prompt[..24]).is_empty());
        let events = run(&mut ledger, 0, "t", &prompt[..40]);
        let [
            KvBlockEvent::Stored {
                block_hashes,
                parent,
                token_ids,
            },
        ] = events.as_slice()
        else {
            panic!("{events:?}");
        };
        assert_eq!((block_hashes.len(), *parent), (1, Some(first)));
        assert_eq!(token_ids, &prompt[16..32]);
        let second = block_hashes[0];
        // Cut inside block 2: block 2 goes, block 1 stays.
        let events = run(&mut ledger, 0, "t", &prompt[..20]);
        assert_eq!(
            events,
            vec![KvBlockEvent::Removed {
                block_hashes: vec![second]
            }]
        );
        assert_eq!(
            run(&mut ledger, 0, "t", &[]),
            vec![KvBlockEvent::Removed {
                block_hashes: vec![first]
            }]
        );
    }

    #[test]
    fn a_block_two_slots_hold_is_stored_once_and_removed_with_the_last() {
        let (mut ledger, _receiver) = ledger(2);
        let shared = tokens(32, 100);
        let stored = run(&mut ledger, 0, "t", &shared);
        assert_eq!(stored.len(), 1);
        assert!(run(&mut ledger, 1, "t", &shared).is_empty(), "already held");
        assert!(
            run(&mut ledger, 0, "t", &[]).is_empty(),
            "slot 1 holds them"
        );
        let removed = run(&mut ledger, 1, "t", &[]);
        let [KvBlockEvent::Removed { block_hashes }] = removed.as_slice() else {
            panic!("{removed:?}");
        };
        assert_eq!(block_hashes.len(), 2);
    }

    #[test]
    fn the_same_tokens_in_another_namespace_are_other_blocks() {
        let (mut ledger, _receiver) = ledger(2);
        let prompt = tokens(16, 7);
        let a = run(&mut ledger, 0, "tenant-a", &prompt);
        let b = run(&mut ledger, 1, "tenant-b", &prompt);
        assert_eq!(a.len(), 1);
        assert_eq!(b.len(), 1, "not shared across namespaces");
        assert_ne!(a, b);
        // A slot reused by another namespace drops the old blocks first.
        let events = run(&mut ledger, 0, "tenant-b", &prompt);
        assert!(
            matches!(events.as_slice(), [KvBlockEvent::Removed { .. }]),
            "{events:?}"
        );
    }
}
