//! The round's token budget across the pools (see `Scheduler::step`): each
//! pool's step is charged in the budget's unit, a short-chat token; a long
//! pool's tokens cost more the deeper its sequences are, since their
//! attention runs over thousands of cells. A long pool's decodes and
//! prefill floor (in budget units), never cut, are reserved before the
//! short pool plans, and what long pools take beyond the budget all the
//! same is carried to the next round. Plain arithmetic, applied by `mod.rs` and `pool.rs`.

/// What one token of a pool's step costs in budget units: 1 in the short
/// pool (`attention_depth` None), whose budget is calibrated on its own
/// tokens; `1 + deepest / attention_depth` in a long pool while any stream
/// decodes. While none does, the round only prefills: no stream's gap is
/// at stake, and long chunks are the cheapest per token, so 1.
pub(super) fn token_cost(
    deepest: usize,
    attention_depth: Option<u32>,
    streams_decoding: bool,
) -> f64 {
    match attention_depth {
        Some(depth) if streams_decoding => 1.0 + deepest as f64 / f64::from(depth.max(1)),
        _ => 1.0,
    }
}

/// The tokens a pool's planner may plan: what the round has left, in the
/// pool's own tokens.
pub(super) fn pool_budget(round_budget: u32, spent: u32, token_cost: f64) -> u32 {
    (f64::from(round_budget.saturating_sub(spent)) / token_cost) as u32
}

/// Budget units `tokens` of a pool's step take.
pub(super) fn charge(tokens: usize, token_cost: f64) -> u32 {
    (tokens as f64 * token_cost).ceil() as u32
}

/// The least prefill a pool's step plans, in its tokens: the prefill floor
/// is in budget units, so deep in a document it is a few tokens. Short
/// chats come first: a long pool's prompt progresses by the floor while
/// short work fills the budget, and takes whatever short work leaves.
pub(super) fn prefill_floor(min_prefill_chunk: u32, token_cost: f64) -> u32 {
    ((f64::from(min_prefill_chunk) / token_cost) as u32).max(1)
}

/// Budget units a long pool's next step takes whatever the budget, which
/// the round reserves before the short pool plans: a token per decoding
/// sequence at the pool's depth and, while a prompt is prefilling or waits
/// for a sequence, the prefill floor.
pub(super) fn reserve(
    decodes: usize,
    prefilling: bool,
    min_prefill_chunk: u32,
    token_cost: f64,
) -> u32 {
    let floor = if prefilling {
        prefill_floor(min_prefill_chunk, token_cost) as usize
    } else {
        0
    };
    charge(decodes + floor, token_cost)
}

/// What the next round starts with spent: the round's excess over its
/// budget, up to what long pools took. The short pool alone is never
/// carried over, so with no long work a round is what a step was before
/// pools.
pub(super) fn overdraft(charged: u32, long_charged: u32, round_budget: u32) -> u32 {
    charged.saturating_sub(round_budget).min(long_charged)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_pool_tokens_cost_one_at_any_depth() {
        assert_eq!(token_cost(0, None, true), 1.0);
        assert_eq!(token_cost(1_000, None, true), 1.0);
        assert_eq!(pool_budget(128, 28, token_cost(900, None, true)), 100);
        assert_eq!(charge(100, token_cost(900, None, true)), 100);
    }

    #[test]
    fn a_long_pools_budget_shrinks_with_its_depth() {
        let depth = Some(2_000);
        assert_eq!(pool_budget(128, 0, token_cost(0, depth, true)), 128);
        assert_eq!(pool_budget(128, 0, token_cost(2_000, depth, true)), 64);
        assert_eq!(pool_budget(128, 100, token_cost(2_000, depth, true)), 14);
        assert_eq!(pool_budget(128, 140, token_cost(4_000, depth, true)), 0);
        // Its 16-token floor at depth 4,000 takes 48 units.
        assert_eq!(charge(16, token_cost(4_000, depth, true)), 48);
    }

    #[test]
    fn a_long_pool_prefills_at_full_budget_while_no_stream_decodes() {
        let cost = token_cost(4_000, Some(2_000), false);
        assert_eq!(pool_budget(128, 0, cost), 128);
        assert_eq!(reserve(0, true, 16, cost), 16);
    }

    #[test]
    fn a_long_pool_reserves_its_decodes_and_prefill_floor_at_depth() {
        let cost = token_cost(4_000, Some(2_000), true);
        assert_eq!(reserve(4, false, 16, cost), 12);
        // The floor is 16 budget units: 5 tokens at three units each.
        assert_eq!(prefill_floor(16, cost), 5);
        assert_eq!(reserve(4, true, 16, cost), 27);
        assert_eq!(reserve(0, false, 16, cost), 0);
        // Never below one token, however deep.
        assert_eq!(prefill_floor(16, token_cost(100_000, Some(100), true)), 1);
    }

    #[test]
    fn only_long_pools_overdraw_into_the_next_round() {
        // The short pool's decodes past the budget are not carried.
        assert_eq!(overdraft(150, 0, 128), 0);
        // A long pool's floor past the budget is, up to what it took.
        assert_eq!(overdraft(176, 48, 128), 48);
        assert_eq!(overdraft(150, 48, 128), 22);
        assert_eq!(overdraft(100, 48, 128), 0);
    }
}
