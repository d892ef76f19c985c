//! The prefix cache: a free slot's KV cells keep what its last stream (or a
//! KV prep) left there, so an admitted request takes the free slot holding
//! the longest prefix of its prompt and prefills only the rest, or copies
//! the prefix from a running sequence. Sits between admission and the first
//! prefill step; it also evicts (clears) slots, least recently used first.
//! KV is shared only within one cache namespace (the tenant and its
//! `cache_salt`): no request reuses another tenant's prompt, and so its
//! `cached_tokens` reveal nothing about other tenants' prompts.

use std::cmp::Reverse;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::kv_prep::Prep;
use super::{EngineFault, Pool};

/// Shorter cached prefixes are not worth keeping a slot's other tokens for:
/// a slot matching less is treated as no match.
pub(super) const MIN_PREFIX_REUSE: usize = 16;

/// The first `len` prompt tokens of the sequence admitted `admission_order`th,
/// in `slot`.
#[derive(Clone, Copy)]
pub(super) struct PrefixSource {
    pub slot: usize,
    pub admission_order: u64,
    pub len: usize,
}

/// What a free slot's KV cells still hold, for the prefix cache.
#[derive(Default)]
pub(super) struct CachedPrefix {
    /// The tokens at positions `0..len` of the slot's KV; empty when the
    /// slot is in use or its KV was cleared.
    pub tokens: Vec<i32>,
    /// The cache namespace of the stream or prep that left `tokens`.
    pub namespace: Arc<str>,
    /// When the slot was last freed (a counter), for least-recently-used
    /// eviction.
    pub freed_at: u64,
    /// The KV prep this slot is pinned to: `tokens` is a prefix of its
    /// target, and only the prep's own request takes the slot (other
    /// requests evict it only when no other slot is free).
    pub prep: Option<Prep>,
}

/// A slot given to an admitted request: the prompt tokens its KV already
/// holds, and the running sequence's prefix it is to copy, if any.
pub(super) struct TakenSlot {
    pub slot: usize,
    pub kv_tokens: Vec<i32>,
    pub copy_from: Option<PrefixSource>,
}

impl TakenSlot {
    fn empty(slot: usize) -> Self {
        Self {
            slot,
            kv_tokens: Vec::new(),
            copy_from: None,
        }
    }
}

impl Pool {
    /// Picks a free slot for `prompt` and readies its KV: the slot with the
    /// longest cached prefix of the prompt keeps that prefix, else the least
    /// recently used free slot is cleared, and it may wait to copy a running
    /// sequence's prefix. None when no slot is free. Only free slots are
    /// taken: the KV of a running stream is never evicted or truncated. A
    /// slot pinned to a KV prep is a match only for the prep's request
    /// (`prep`). Only KV of `namespace` is reused or copied.
    pub(super) fn take_slot(
        &mut self,
        prompt: &[i32],
        namespace: &str,
        use_prefix_cache: bool,
        prep: Option<u64>,
    ) -> Result<Option<TakenSlot>, EngineFault> {
        let mut free = (0..self.slots.len()).filter(|&slot| self.slots[slot].is_none());
        if !self.config.prefix_cache {
            // Freed slots were cleared, so any one starts empty.
            return Ok(free.next().map(TakenSlot::empty));
        }
        if !use_prefix_cache {
            return Ok(self.evict_least_recently_used()?.map(TakenSlot::empty));
        }
        // At least one prompt token is decoded, for the logits of the first
        // sampled token.
        let usable = prompt.len().saturating_sub(1);
        let own_prep = |cached: &CachedPrefix| {
            cached
                .prep
                .as_ref()
                .is_some_and(|pinned| Some(pinned.id) == prep)
        };
        // Longest usable match first, then the request's own prep; among
        // equal matches the least recently used, whose other tokens are the
        // least likely to be asked for again.
        let best = free
            .filter(|&slot| self.cached[slot].prep.is_none() || own_prep(&self.cached[slot]))
            .map(|slot| {
                let common = self.cached[slot].reusable(namespace, prompt);
                (slot, common.min(usable))
            })
            .max_by_key(|&(slot, reuse)| {
                let cached = &self.cached[slot];
                (reuse, own_prep(cached), Reverse(cached.freed_at))
            });
        self.stats
            .prefix_cache_queries_total
            .fetch_add(1, Ordering::Relaxed);
        self.stats
            .prefix_cache_query_tokens_total
            .fetch_add(prompt.len() as u64, Ordering::Relaxed);
        let reuse = best.map_or(0, |(_, reuse)| reuse);
        // A copy moves a whole KV stream; it must save more than reuse does.
        let copy_from = self
            .busy_prefix(prompt, namespace)
            .map(|source| PrefixSource {
                len: source.len.min(usable),
                ..source
            })
            .filter(|source| source.len >= reuse + MIN_PREFIX_REUSE);
        if let Some((slot, reuse)) = best
            && copy_from.is_none()
            && reuse >= MIN_PREFIX_REUSE
            && self.truncate_kv(slot, reuse)?
        {
            return Ok(Some(self.reuse_cached(slot, reuse)));
        }
        let slot = self.evict_least_recently_used()?;
        Ok(slot.map(|slot| TakenSlot {
            copy_from,
            ..TakenSlot::empty(slot)
        }))
    }

    /// Takes the first `reuse` cached tokens of a free slot whose KV was cut
    /// there; a prep pinned to it is used up.
    fn reuse_cached(&mut self, slot: usize, reuse: usize) -> TakenSlot {
        if self.cached[slot].prep.take().is_some() {
            self.stats
                .kv_prep_used_total
                .fetch_add(1, Ordering::Relaxed);
        }
        let mut tokens = std::mem::take(&mut self.cached[slot].tokens);
        tokens.truncate(reuse);
        self.stats
            .prefix_cache_hits_total
            .fetch_add(1, Ordering::Relaxed);
        self.stats
            .prefix_cache_hit_tokens_total
            .fetch_add(reuse as u64, Ordering::Relaxed);
        TakenSlot {
            kv_tokens: tokens,
            ..TakenSlot::empty(slot)
        }
    }

    /// An empty free slot if there is one, else the free slot whose cached
    /// prefix was used least recently, cleared; None when no slot is free. A
    /// slot pinned to a KV prep goes last: a real request never waits for a
    /// prep.
    pub(super) fn evict_least_recently_used(&mut self) -> Result<Option<usize>, EngineFault> {
        let victim = (0..self.slots.len())
            .filter(|&slot| self.slots[slot].is_none())
            .min_by_key(|&slot| {
                let cached = &self.cached[slot];
                (
                    cached.prep.is_some(),
                    !cached.tokens.is_empty(),
                    cached.freed_at,
                )
            });
        let Some(victim) = victim else {
            return Ok(None);
        };
        if self.cached[victim].prep.take().is_some() {
            self.stats
                .kv_prep_cancelled_total
                .fetch_add(1, Ordering::Relaxed);
        }
        if !self.cached[victim].tokens.is_empty() {
            self.stats
                .prefix_cache_evictions_total
                .fetch_add(1, Ordering::Relaxed);
        }
        self.clear_kv(victim)?;
        Ok(Some(victim))
    }

    /// The running sequence whose prompt shares the longest prefix with
    /// `prompt`, if that prefix is worth copying; but one whose KV holds
    /// its shared prefix already when that is nearly as long. Many share a
    /// chat template's opening, and one still prefilling it may be another
    /// tenant's, prefilled after this one (tenant-fair order): waiting for
    /// it costs at least a step.
    fn busy_prefix(&self, prompt: &[i32], namespace: &str) -> Option<PrefixSource> {
        let mut longest: Option<PrefixSource> = None;
        let mut longest_held: Option<PrefixSource> = None;
        for (slot, seq) in self.slots.iter().enumerate() {
            let Some(seq) = seq
                .as_ref()
                .filter(|seq| *seq.cache_namespace == *namespace)
            else {
                continue;
            };
            let source = PrefixSource {
                slot,
                admission_order: seq.admission_order,
                len: common_prefix(&seq.prompt, prompt),
            };
            if longest.is_none_or(|best| source.len > best.len) {
                longest = Some(source);
            }
            let held = seq.kv_tokens.len() >= source.len;
            if held && longest_held.is_none_or(|best| source.len > best.len) {
                longest_held = Some(source);
            }
        }
        match (longest_held, longest) {
            (Some(held), Some(longest)) if longest.len < held.len + MIN_PREFIX_REUSE => Some(held),
            (_, longest) => longest,
        }
        .filter(|source| source.len >= MIN_PREFIX_REUSE)
    }

    /// Starts the copies whose source now holds the prefix. A source admitted
    /// earlier prefills first, so waiting for it is never slower than
    /// prefilling the prefix again. llama.cpp copies the cell metadata now
    /// and the buffer at the start of the next decode, before that decode
    /// writes any cell, so the data matches the metadata whatever the source
    /// slot does next.
    pub(super) fn copy_prefixes(&mut self) -> Result<(), EngineFault> {
        for slot in 0..self.slots.len() {
            let Some(seq) = self.slots[slot].as_ref() else {
                continue;
            };
            let Some(source) = seq.copy_from else {
                continue;
            };
            let held = match &self.slots[source.slot] {
                Some(from) if from.admission_order == source.admission_order => {
                    if from.kv_tokens.len() < source.len {
                        continue;
                    }
                    source.len
                }
                // The source ended (a one-token answer, a client gone): its
                // KV may still be cached in its free slot.
                None => self.cached[source.slot].reusable(&seq.cache_namespace, &seq.prompt),
                Some(_) => 0,
            };
            // Otherwise this sequence prefills the prefix itself.
            let copied = held >= source.len && self.copy_kv(source.slot, slot, source.len)?;
            let Some(seq) = self.slots[slot].as_mut() else {
                continue;
            };
            seq.copy_from = None;
            if copied {
                seq.kv_tokens = seq.prompt[..source.len].to_vec();
                seq.prefilled = source.len;
                seq.reused = source.len;
                self.stats
                    .prefix_cache_hits_total
                    .fetch_add(1, Ordering::Relaxed);
                self.stats
                    .prefix_cache_hit_tokens_total
                    .fetch_add(source.len as u64, Ordering::Relaxed);
            }
        }
        Ok(())
    }

    /// Replaces `to`'s KV by the first `len` positions of `from`'s; false
    /// (with `to` cleared) when the cache cannot cut the copy there.
    fn copy_kv(&mut self, from: usize, to: usize, len: usize) -> Result<bool, EngineFault> {
        // A whole-sequence copy has no positions to convert, the only way
        // it can fail; were it to, `to` prefills the prefix itself.
        if self
            .ctx
            .kv_cache_seq_cp(from as i32, to as i32, None, None)
            .is_err()
        {
            self.clear_kv(to)?;
            return Ok(false);
        }
        self.truncate_kv(to, len)
    }

    /// Drops a free slot's KV from position `keep` on; false when the cache
    /// cannot keep that prefix (the slot is then cleared).
    pub(super) fn truncate_kv(&mut self, slot: usize, keep: usize) -> Result<bool, EngineFault> {
        let seq_id = slot as i32;
        // Recurrent state cannot be cut at a position, and a sliding-window
        // cache may have pruned the prefix's early positions already.
        let kept = self
            .ctx
            .kv_cache_seq_rm(seq_id, Some(keep as u32), None)
            .is_ok()
            && self.ctx.kv_cache_seq_pos_min(seq_id) == 0;
        if !kept {
            self.clear_kv(slot)?;
        }
        Ok(kept)
    }

    /// Empties a slot's KV cells. Failing leaves what the slot holds unknown,
    /// which the next stream in it would read: the engine stops instead.
    pub(super) fn clear_kv(&mut self, slot: usize) -> Result<(), EngineFault> {
        self.ctx
            .clear_kv_cache_seq(Some(slot as u32), None, None)
            .map_err(|err| EngineFault(format!("clearing the KV cells of slot {slot}: {err}")))?;
        self.cached[slot].tokens.clear();
        Ok(())
    }
}

impl CachedPrefix {
    /// How many leading tokens of `prompt` a request of `namespace` may
    /// reuse from this slot: none from another namespace's KV.
    fn reusable(&self, namespace: &str, prompt: &[i32]) -> usize {
        if *self.namespace == *namespace {
            common_prefix(&self.tokens, prompt)
        } else {
            0
        }
    }
}

pub(super) fn common_prefix(a: &[i32], b: &[i32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cached(namespace: &str, tokens: &[i32]) -> CachedPrefix {
        CachedPrefix {
            tokens: tokens.to_vec(),
            namespace: Arc::from(namespace),
            ..CachedPrefix::default()
        }
    }

    #[test]
    fn a_cached_prefix_is_reusable_only_within_its_namespace() {
        let prompt: Vec<i32> = (0..40).collect();
        let slot = cached("tenant-a", &prompt[..32]);
        assert_eq!(slot.reusable("tenant-a", &prompt), 32);
        assert_eq!(slot.reusable("tenant-b", &prompt), 0);
        assert_eq!(slot.reusable("", &prompt), 0);
    }
}
