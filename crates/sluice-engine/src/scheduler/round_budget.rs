//! The round's token budget across the pools (see `Scheduler::step`): each
//! pool's step is charged in the budget's unit, a short-chat token; a long
//! pool's tokens cost more the deeper its sequences are, since their
//! attention runs over thousands of cells. A long pool's decodes and
//! prefill floor (in budget units), never cut, are reserved before the
//! short pool plans, and what long pools take beyond the budget all the
//! same is carried to the next round. Beside short work, long pools step
//! on a share of the engine ([`LongShare`]). Plain arithmetic, applied by
//! `mod.rs` and `pool.rs`.

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

/// Budget units long pools earn per unit the short pool's step takes,
/// while short work runs. Issue #14 asks short chats' TTFT p95 within 1.5x
/// of the same load alone; in a saturated closed loop TTFT grows as the
/// short pool's share of the engine shrinks, and the tail more. With 0.3
/// short chats kept ~75 % of the engine and four rag-mix runs put the ratio
/// at 1.34-1.62x, with 0.2 at 1.51x (benchmarks/results/*-rag-mix of
/// 2026-12-07): at the target's edge. 0.15 keeps ~86 % (the long pools'
/// prefill floor is reserved out of the short step as well).
const LONG_SHARE_PER_SHORT_UNIT: f64 = 0.15;

/// A long pool with work steps at least this often whatever its share,
/// so its streams' gaps stay bounded (a round is one step of each pool).
pub(super) const LONG_POOL_MAX_WAIT: std::time::Duration = std::time::Duration::from_millis(500);

/// Long pools' share of the engine while short work runs. Without it, a
/// long pool took whatever the short pool left of each round: rounds that
/// short decodes alone keep short ran at the full budget, deep tokens at
/// that, and short chats lost ~60 % of their output beside four documents
/// (benchmarks/results/2026-12-04-2dc7fabb48d5-rag-mix). Long pools earn
/// credit as the short pool spends, and step when it covers what their
/// step takes whatever the budget, or when they have waited
/// [`LONG_POOL_MAX_WAIT`]. With no short work they take the whole round.
#[derive(Debug, Default)]
pub(super) struct LongShare {
    /// Budget units long pools may still take; below 0 after a step they
    /// were owed by the wait bound.
    credit: f64,
}

impl LongShare {
    /// Whether a long pool whose step takes at least `reserve` units steps
    /// this round beside short work (`overdue`: it has waited its bound).
    pub(super) fn may_step(&self, reserve: u32, overdue: bool) -> bool {
        overdue || self.credit >= f64::from(reserve.max(1))
    }

    /// The most units a long pool's step may take beside short work: its
    /// credit, and never less than what the step takes whatever the budget.
    pub(super) fn allowance(&self, reserve: u32) -> u32 {
        (self.credit.max(0.0) as u32).max(reserve)
    }

    /// A long pool's step beside short work took `cost` units.
    pub(super) fn spend(&mut self, cost: u32) {
        self.credit -= f64::from(cost);
    }

    /// The round's short step took `short_cost` units (0: no short work,
    /// and the long pools took what they wanted). Credit stays within one
    /// round's `budget`, so a lull banks no burst.
    pub(super) fn earn(&mut self, short_cost: u32, budget: u32) {
        if short_cost == 0 {
            self.credit = 0.0;
            return;
        }
        let earned = self.credit + f64::from(short_cost) * LONG_SHARE_PER_SHORT_UNIT;
        self.credit = earned.min(f64::from(budget));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn beside_short_work_long_pools_take_their_share() {
        let mut share = LongShare::default();
        let (mut short, mut long) = (0, 0);
        for _ in 0..100 {
            // A long step takes 40 units however deep; short steps 100.
            if share.may_step(40, false) {
                let cost = share.allowance(40).max(40);
                share.spend(cost);
                long += cost;
            }
            short += 100;
            share.earn(100, 128);
        }
        let taken = f64::from(long) / f64::from(short);
        assert!(
            (0.8 * LONG_SHARE_PER_SHORT_UNIT..=LONG_SHARE_PER_SHORT_UNIT).contains(&taken),
            "long took {taken} per short unit"
        );
    }

    #[test]
    fn an_overdue_long_pool_steps_on_credit_it_does_not_have() {
        let mut share = LongShare::default();
        assert!(!share.may_step(40, false));
        assert!(share.may_step(40, true));
        assert_eq!(share.allowance(40), 40);
        share.spend(40);
        // It repays the step before stepping on credit again.
        share.earn(100, 128);
        assert!(!share.may_step(1, false));
    }

    #[test]
    fn credit_stays_within_a_round_and_lapses_without_short_work() {
        let mut share = LongShare::default();
        for _ in 0..50 {
            share.earn(128, 128);
        }
        assert_eq!(share.allowance(0), 128);
        share.earn(0, 128);
        assert!(!share.may_step(0, false));
    }

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
