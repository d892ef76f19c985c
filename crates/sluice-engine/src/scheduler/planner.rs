//! The step planner: what one engine step does, decided from plain data.
//! Which running streams decode and which sit out for other tenants'
//! prompts, which prompt chunks and KV-prep chunks are prefilled, under
//! which token budget. It runs once per step, after admission and before
//! the executor turns the plan into a llama.cpp batch. Pure: no llama.cpp,
//! no engine state, so its fairness rules are unit-tested here.
//!
//! The rules, while a prompt of a tenant below its equal share of the
//! engine's sequences waits: the decodes of tenants above their share sit
//! out the step (at most [`MAX_STEPS_SITTING_OUT`] in a row), their places
//! go to the prompts they made way for, and only below-share prompts are
//! prefilled in it. The step is then short and mostly those prompts, so a
//! light tenant's first token waits neither for a flood's decodes nor for
//! its prefill, and a flood's streams lose steps only then. Prompts of
//! tenants with the fewest sequences are prefilled first. While more than
//! one tenant, or both classes, have sequences (this step or the last),
//! the step budget is capped at `engine.mixed_step_token_budget`: a step
//! cannot be cut short, so its length is what another tenant's (or an
//! interactive) new prompt waits.
//!
//! Batch sequences yield to interactive ones: while an interactive sequence
//! is in the engine, batch work (decodes, those that sat out longest
//! first, then prompt chunks, without the prefill floor) takes only what
//! interactive decodes leave of the budget, at most
//! `engine.batch_step_token_budget` tokens, and none while an interactive
//! prompt is ready; no batch decode sits out more than
//! [`MAX_BATCH_STEPS_SITTING_OUT`] steps in a row. A step cannot be cut
//! short, so batch work in it is what an interactive prompt arriving waits
//! for, and a prompt's prefill steps carry no batch work beside it. The
//! caps bound batch work, not the interactive work itself: a step grows to
//! the interactive decodes and prompt tokens ready, within what the
//! governor asks. With no interactive work, batch runs as any other.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::Arc;

/// Most steps in a row a stream's decode sits out for the prompts of
/// tenants below their share: two lets prompts a little over one step
/// through without the flood's decodes, and still bounds a flood stream's
/// gap to three steps.
pub(super) const MAX_STEPS_SITTING_OUT: u8 = 2;

/// Most steps in a row a batch decode sits out for interactive work: it
/// yields first, but never stops.
pub(super) const MAX_BATCH_STEPS_SITTING_OUT: u8 = 8;

/// Everything the planner looks at for one step.
#[derive(Debug, Default)]
pub(super) struct StepInput {
    /// Every sequence in the engine, in slot order.
    pub slots: Vec<SlotInput>,
    pub budget: Budget,
    /// Whether the last step's sequences belonged to more than one tenant
    /// or to both classes.
    pub mixed_last_step: bool,
    pub preps: PrepInput,
}

/// One sequence in the engine.
#[derive(Debug, Clone)]
pub(super) struct SlotInput {
    pub slot: usize,
    pub tenant: Arc<str>,
    /// Order of admission: among a tenant's prompts the earliest goes first.
    pub admission_order: u64,
    /// A batch-class sequence (yields to interactive ones).
    pub batch: bool,
    pub phase: Phase,
    /// Steps in a row its decode sat out.
    pub steps_sat_out: u8,
}

/// What a step may do with a sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Phase {
    /// Its client has not taken its events: it neither decodes nor sits out.
    Parked,
    /// It has a sampled token whose KV is still to compute.
    Decoding,
    /// Prompt tokens `prefilled..prompt_len` are still to prefill; none
    /// while `awaiting_copy` (it waits to copy them from another sequence).
    Prefilling {
        prefilled: usize,
        prompt_len: usize,
        awaiting_copy: bool,
    },
    /// Nothing to compute (its client left after its last token).
    Idle,
}

/// The step's token budgets, as configured and as the governor asks.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Budget {
    /// Tokens per step the governor asks for.
    pub requested: u32,
    /// The floor of the step budget, and the least prefill per step so
    /// prefill progresses even when decodes fill the budget.
    pub min_prefill_chunk: u32,
    /// The most tokens per step the batch was sized for, beside one decode
    /// per sequence.
    pub ceiling: u32,
    /// The step budget's cap while more than one tenant has sequences; 0:
    /// no cap.
    pub mixed_step_cap: u32,
    /// Most batch tokens per step beside interactive work; 0: no cap.
    pub batch_step_cap: u32,
    /// Most KV-prep tokens per step.
    pub prep_tokens_per_step: u32,
}

/// The KV preps: those holding a slot and those queued for one.
#[derive(Debug, Default)]
pub(super) struct PrepInput {
    /// Preps holding a slot, finished ones included.
    pub running: Vec<RunningPrep>,
    /// Target lengths of the preps waiting for a slot, oldest first.
    pub queued: Vec<usize>,
    /// Free slots not pinned to a prep.
    pub unpinned_free_slots: usize,
    /// Whether requests wait for a sequence: a new prep takes no slot then.
    pub requests_waiting: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct RunningPrep {
    pub slot: usize,
    /// Start order: the oldest prep prefills first, as admission is FIFO.
    pub started: u64,
    pub prefilled: usize,
    pub target_len: usize,
}

/// What one step does, in batch order: decodes, prompt chunks, prep chunks.
#[derive(Debug, Default)]
pub(super) struct StepPlan {
    /// The step's token budget, the mixed-tenant cap applied.
    pub budget: u32,
    /// Whether this step's sequences belong to more than one tenant or
    /// to both classes (the next step's `mixed_last_step`).
    pub mixed: bool,
    /// Slots whose sampled token is decoded, in slot order.
    pub decodes: Vec<usize>,
    /// Decoding slots that sit out this step for below-share prompts.
    pub sitting_out: Vec<usize>,
    /// Batch decoding slots that sit out this step for interactive work.
    pub batch_sitting_out: Vec<usize>,
    pub prefills: Vec<PrefillChunk>,
    pub preps: Vec<PrepChunk>,
    /// Scratch, kept to reuse its allocations.
    prompts: Vec<Prompt>,
    /// Batch decodes beside interactive work: (steps sat out, longest
    /// first; slot).
    batch_decodes: Vec<(std::cmp::Reverse<u8>, usize)>,
    /// Batch tokens this step may still take beside interactive work.
    batch_room: usize,
    running_preps: Vec<RunningPrep>,
}

/// Prompt tokens of one sequence prefilled this step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct PrefillChunk {
    pub slot: usize,
    pub tokens: Range<usize>,
}

/// Target tokens of one KV prep prefilled this step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct PrepChunk {
    pub prep: PrepSlot,
    pub tokens: Range<usize>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum PrepSlot {
    /// The prep holding this slot.
    Running(usize),
    /// The oldest queued prep, in a free slot the executor picks.
    Next,
}

/// A prompt ready to prefill, with what orders it.
#[derive(Debug)]
struct Prompt {
    batch: bool,
    /// Its tenant's sequences in the engine: fewest first.
    tenant_sequences: usize,
    admission_order: u64,
    slot: usize,
    below_share: bool,
    prefilled: usize,
    prompt_len: usize,
}

impl StepPlan {
    /// Batch-class decodes the step runs beside interactive work.
    pub(super) fn batch_decodes_run(&self) -> usize {
        self.batch_decodes.len() - self.batch_sitting_out.len()
    }

    /// Prompt tokens the step prefills.
    pub(super) fn prefill_tokens(&self) -> usize {
        self.prefills.iter().map(|chunk| chunk.tokens.len()).sum()
    }

    /// Tokens the step puts in the batch.
    pub(super) fn tokens(&self) -> usize {
        let preps = self.preps.iter().map(|chunk| chunk.tokens.len());
        self.decodes.len() + self.prefill_tokens() + preps.sum::<usize>()
    }

    fn clear(&mut self) {
        self.decodes.clear();
        self.sitting_out.clear();
        self.batch_sitting_out.clear();
        self.prefills.clear();
        self.preps.clear();
        self.prompts.clear();
        self.batch_decodes.clear();
        self.batch_room = 0;
        self.running_preps.clear();
    }
}

/// Plans one step into `plan` (cleared first; its allocations are reused).
pub(super) fn plan_step(input: &StepInput, plan: &mut StepPlan) {
    plan.clear();
    // Batch yields only to interactive work in the engine. One pass over
    // the slots: this runs every step.
    let (mut interactive_work, mut batch_work) = (false, false);
    for slot in input.slots.iter().filter(|slot| slot.phase != Phase::Idle) {
        if slot.batch {
            batch_work = true;
        } else {
            interactive_work = true;
        }
    }
    let several_tenants = has_several_tenants(&input.slots);
    plan.mixed = several_tenants || (interactive_work && batch_work);
    plan.budget = step_budget(&input.budget, plan.mixed || input.mixed_last_step);
    if !several_tenants && interactive_work {
        plan.budget = plan
            .budget
            .max(interactive_step(input).min(uncapped(&input.budget)));
    }
    // Shares are counted only when a prompt waits (an empty map does not
    // allocate), so decode-only steps pay nothing.
    let prompts_wait = input.slots.iter().any(|slot| ready_prompt(slot).is_some());
    let shares = if prompts_wait {
        TenantShares::count(input.slots.iter().map(|slot| &*slot.tenant))
    } else {
        TenantShares::default()
    };
    plan_decodes(input, &shares, interactive_work, plan);
    plan_prefills(input, &shares, interactive_work, plan);
    plan_preps(input, plan);
}

/// Every unparked decode runs, but while a below-share prompt waits, the
/// decodes of above-share tenants sit out (unless they sat out the last
/// [`MAX_STEPS_SITTING_OUT`] steps); and while interactive work is in the
/// engine, batch decodes run only within the batch room ([`batch_room`]).
fn plan_decodes(
    input: &StepInput,
    shares: &TenantShares<'_>,
    interactive_work: bool,
    plan: &mut StepPlan,
) {
    let prompt_below_share = input
        .slots
        .iter()
        .any(|slot| ready_prompt(slot).is_some() && shares.is_below_share(&slot.tenant));
    for slot in &input.slots {
        if slot.phase != Phase::Decoding {
            continue;
        }
        let sits_out = prompt_below_share
            && shares.is_above_share(&slot.tenant)
            && slot.steps_sat_out < MAX_STEPS_SITTING_OUT;
        if sits_out {
            plan.sitting_out.push(slot.slot);
        } else if slot.batch && interactive_work {
            plan.batch_decodes
                .push((std::cmp::Reverse(slot.steps_sat_out), slot.slot));
        } else {
            plan.decodes.push(slot.slot);
        }
    }
    if !interactive_work {
        return;
    }
    plan.batch_room = batch_room(input, plan);
    // Longest sat out first, so every batch stream moves in turn.
    plan.batch_decodes.sort_unstable();
    for &(std::cmp::Reverse(steps_sat_out), slot) in &plan.batch_decodes {
        if plan.batch_room > 0 || steps_sat_out >= MAX_BATCH_STEPS_SITTING_OUT {
            plan.batch_room = plan.batch_room.saturating_sub(1);
            plan.decodes.push(slot);
        } else {
            plan.batch_sitting_out.push(slot);
        }
    }
    plan.decodes.sort_unstable();
}

/// Prompt chunks with what the decodes leave of the budget (at least
/// `min_prefill_chunk`), fewest-sequences tenant first, then admission
/// order. The places of decodes that sit out go to the prompts they made
/// way for, and only to those: the step is never larger than with every
/// decode in it (the batch is sized for that), two light prompts arriving
/// together are prefilled in one step, not two, and the step is no longer
/// than those prompts.
fn plan_prefills(
    input: &StepInput,
    shares: &TenantShares<'_>,
    interactive_work: bool,
    plan: &mut StepPlan,
) {
    plan.prompts.extend(input.slots.iter().filter_map(|slot| {
        let (prefilled, prompt_len) = ready_prompt(slot)?;
        Some(Prompt {
            batch: slot.batch,
            tenant_sequences: shares.sequences(&slot.tenant),
            admission_order: slot.admission_order,
            slot: slot.slot,
            below_share: shares.is_below_share(&slot.tenant),
            prefilled,
            prompt_len,
        })
    }));
    plan.prompts.sort_unstable_by_key(|prompt| {
        (
            prompt.batch,
            prompt.tenant_sequences,
            prompt.admission_order,
            prompt.slot,
        )
    });
    let sat_out = plan.sitting_out.len() as u32;
    let decodes = plan.decodes.len() as u32;
    let mut budget = (plan.budget + sat_out)
        .saturating_sub(decodes)
        .max(input.budget.min_prefill_chunk) as usize;
    for prompt in &plan.prompts {
        if budget == 0 {
            break;
        }
        if sat_out > 0 && !prompt.below_share {
            continue;
        }
        // A batch prompt beside interactive work takes only what is left
        // of the batch room (within what the decodes and the prompts
        // before it leave), not the floor.
        let batch_beside_interactive = prompt.batch && interactive_work;
        let allowance = if batch_beside_interactive {
            plan.batch_room
        } else {
            budget
        };
        if allowance == 0 {
            continue;
        }
        let end = (prompt.prefilled + allowance).min(prompt.prompt_len);
        plan.prefills.push(PrefillChunk {
            slot: prompt.slot,
            tokens: prompt.prefilled..end,
        });
        budget -= end - prompt.prefilled;
        if batch_beside_interactive {
            plan.batch_room -= end - prompt.prefilled;
        }
    }
}

/// What the step leaves of its budget, at most `prep_tokens_per_step`, goes
/// to KV preps: those holding a slot first, oldest first, then new ones
/// while no request waits for a slot and another free slot stays for the
/// next request. The step thus never grows past a normal step, and running
/// streams lose nothing.
fn plan_preps(input: &StepInput, plan: &mut StepPlan) {
    let spare = (plan.budget as usize).saturating_sub(plan.tokens());
    let mut budget = spare.min(input.budget.prep_tokens_per_step as usize);
    let preps = &input.preps;
    plan.running_preps.extend(
        preps
            .running
            .iter()
            .filter(|prep| prep.prefilled < prep.target_len),
    );
    plan.running_preps
        .sort_unstable_by_key(|prep| (prep.started, prep.slot));
    let mut running = plan.running_preps.iter();
    let mut queued = preps.queued.iter();
    let mut unpinned_free = preps.unpinned_free_slots;
    while budget > 0 {
        let (prep, start, target_len) = if let Some(running) = running.next() {
            let slot = PrepSlot::Running(running.slot);
            (slot, running.prefilled, running.target_len)
        } else if !preps.requests_waiting
            && unpinned_free >= 2
            && let Some(&target_len) = queued.next()
        {
            unpinned_free -= 1;
            (PrepSlot::Next, 0, target_len)
        } else {
            break;
        };
        let end = (start + budget).min(target_len);
        plan.preps.push(PrepChunk {
            prep,
            tokens: start..end,
        });
        budget -= end - start;
    }
}

/// The step budget: what the governor asks, within the floor and the
/// ceiling, capped while tenants mix.
fn step_budget(budget: &Budget, mixed: bool) -> u32 {
    let clamped = uncapped(budget);
    if mixed && budget.mixed_step_cap > 0 {
        clamped.min(budget.mixed_step_cap)
    } else {
        clamped
    }
}

/// What the governor asks, within the floor and the ceiling.
fn uncapped(budget: &Budget) -> u32 {
    // Not `clamp`, which panics should the floor exceed the ceiling.
    budget
        .requested
        .min(budget.ceiling)
        .max(budget.min_prefill_chunk)
}

/// Interactive decodes and the interactive prompt tokens ready: the step
/// an interactive prompt needs. The cap for mixed classes bounds what a new
/// interactive prompt waits for batch work; a step that prefills an
/// interactive prompt holds batch work only within the cap, and a prompt
/// arriving meanwhile would wait for this one's prefill anyway (prompts go
/// in admission order). Capped too, a ~150-token prompt beside a batch
/// flood took 2-3 steps where alone it takes 1-2: TTFT 2.1x alone
/// (benchmarks/results/2026-12-06-34bec31c9028-priority).
fn interactive_step(input: &StepInput) -> u32 {
    let tokens: usize = input
        .slots
        .iter()
        .filter(|slot| !slot.batch)
        .map(|slot| match slot.phase {
            Phase::Decoding => 1,
            _ => ready_prompt(slot).map_or(0, |(prefilled, len)| len - prefilled),
        })
        .sum();
    u32::try_from(tokens).unwrap_or(u32::MAX)
}

/// Batch tokens a step may take beside interactive work: none while an
/// interactive prompt is ready (its prefill steps are then as short as
/// alone: a 2-step prompt beside ~40 batch decodes took 1.2-1.6 s against
/// ~0.9 s alone, benchmarks/results/2026-12-06-ccd0c05c9b31-priority),
/// otherwise what interactive decodes leave of the budget, at most the
/// batch cap.
fn batch_room(input: &StepInput, plan: &StepPlan) -> usize {
    let interactive_prompt_ready = input
        .slots
        .iter()
        .any(|slot| !slot.batch && ready_prompt(slot).is_some());
    if interactive_prompt_ready {
        return 0;
    }
    let room = (plan.budget as usize).saturating_sub(plan.decodes.len());
    match input.budget.batch_step_cap {
        0 => room,
        cap => room.min(cap as usize),
    }
}

fn has_several_tenants(slots: &[SlotInput]) -> bool {
    let mut tenants = slots.iter().map(|slot| &*slot.tenant);
    tenants
        .next()
        .is_some_and(|first| tenants.any(|tenant| tenant != first))
}

/// `(prefilled, prompt_len)` of a prompt this step may prefill.
fn ready_prompt(slot: &SlotInput) -> Option<(usize, usize)> {
    match slot.phase {
        Phase::Prefilling {
            prefilled,
            prompt_len,
            awaiting_copy: false,
        } if prefilled < prompt_len => Some((prefilled, prompt_len)),
        _ => None,
    }
}

/// How many of the engine's sequences each tenant holds, to judge who is
/// below or above an equal share (the engine knows no weights: admission
/// already applied them when it let the streams in).
#[derive(Default)]
struct TenantShares<'a> {
    sequences: HashMap<&'a str, usize>,
    total: usize,
}

impl<'a> TenantShares<'a> {
    fn count(tenants: impl Iterator<Item = &'a str>) -> Self {
        let mut shares = Self::default();
        for tenant in tenants {
            *shares.sequences.entry(tenant).or_insert(0) += 1;
            shares.total += 1;
        }
        shares
    }

    fn sequences(&self, tenant: &str) -> usize {
        self.sequences.get(tenant).copied().unwrap_or(0)
    }

    fn is_below_share(&self, tenant: &str) -> bool {
        self.sequences(tenant) * self.sequences.len() < self.total
    }

    fn is_above_share(&self, tenant: &str) -> bool {
        self.sequences(tenant) * self.sequences.len() > self.total
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FLOOD: &str = "flood";
    const LIGHT: &str = "light";

    /// An engine with the governor asking for `requested` tokens a step, a
    /// prefill floor of 4, no mixed-tenant or batch cap and no KV prep.
    fn engine(requested: u32) -> StepInput {
        StepInput {
            budget: Budget {
                requested,
                min_prefill_chunk: 4,
                ceiling: 512,
                mixed_step_cap: 0,
                batch_step_cap: 0,
                prep_tokens_per_step: 0,
            },
            ..StepInput::default()
        }
    }

    /// Adds a sequence in the next slot, admitted in slot order.
    fn add(input: &mut StepInput, tenant: &str, phase: Phase) -> usize {
        let slot = input.slots.len();
        input.slots.push(SlotInput {
            slot,
            tenant: Arc::from(tenant),
            admission_order: slot as u64,
            batch: false,
            phase,
            steps_sat_out: 0,
        });
        slot
    }

    fn decoding(input: &mut StepInput, tenant: &str, streams: usize) -> Vec<usize> {
        (0..streams)
            .map(|_| add(input, tenant, Phase::Decoding))
            .collect()
    }

    fn prompt(input: &mut StepInput, tenant: &str, tokens: usize) -> usize {
        let phase = Phase::Prefilling {
            prefilled: 0,
            prompt_len: tokens,
            awaiting_copy: false,
        };
        add(input, tenant, phase)
    }

    fn plan(input: &StepInput) -> StepPlan {
        let mut plan = StepPlan::default();
        plan_step(input, &mut plan);
        plan
    }

    fn chunk(slot: usize, tokens: Range<usize>) -> PrefillChunk {
        PrefillChunk { slot, tokens }
    }

    /// Marks the sequences in `slots` batch-class.
    fn as_batch(input: &mut StepInput, slots: &[usize]) {
        for &slot in slots {
            input.slots[slot].batch = true;
        }
    }

    #[test]
    fn a_batch_decode_sits_out_before_an_interactive_one() {
        // One tenant, so only the class rule is at work.
        let mut input = engine(8);
        let interactive = decoding(&mut input, LIGHT, 6);
        let batch = decoding(&mut input, LIGHT, 6);
        as_batch(&mut input, &batch);
        let first = plan(&input);
        // The 6 interactive decodes, and batch within the 2 left.
        let mut expected = interactive.clone();
        expected.extend(&batch[..2]);
        assert_eq!(first.decodes, expected);
        assert_eq!(first.batch_sitting_out, batch[2..]);
        assert!(first.sitting_out.is_empty());
        // Those that sat out go first next step.
        for &slot in &first.batch_sitting_out {
            input.slots[slot].steps_sat_out = 1;
        }
        let next = plan(&input);
        let mut expected = interactive;
        expected.extend(&batch[2..4]);
        assert_eq!(next.decodes, expected);
    }

    #[test]
    fn an_interactive_prompt_takes_the_budget_from_batch_decodes_and_batch_prompts() {
        let mut input = engine(8);
        let interactive = decoding(&mut input, LIGHT, 1);
        let batch = decoding(&mut input, LIGHT, 4);
        as_batch(&mut input, &batch);
        let batch_prompt = prompt(&mut input, LIGHT, 10);
        as_batch(&mut input, &[batch_prompt]);
        let interactive_prompt = prompt(&mut input, LIGHT, 7);
        let mixed = plan(&input);
        assert_eq!(mixed.decodes, interactive, "batch decodes wait a step");
        assert_eq!(mixed.batch_sitting_out, batch);
        assert_eq!(
            mixed.prefills,
            [chunk(interactive_prompt, 0..7)],
            "the batch prompt gets no floor beside interactive work"
        );
        // Without interactive work, batch is served as any other.
        let mut alone = engine(8);
        let batch = decoding(&mut alone, LIGHT, 4);
        let batch_prompt = prompt(&mut alone, LIGHT, 10);
        as_batch(&mut alone, &[batch.as_slice(), &[batch_prompt]].concat());
        let only_batch = plan(&alone);
        assert_eq!(only_batch.decodes, batch);
        assert_eq!(only_batch.prefills, [chunk(batch_prompt, 0..4)]);
    }

    #[test]
    fn a_batch_decode_never_sits_out_more_than_its_limit_in_a_row() {
        let mut input = engine(4);
        decoding(&mut input, LIGHT, 4);
        let batch = decoding(&mut input, LIGHT, 1);
        as_batch(&mut input, &batch);
        let mut ran_at = None;
        for step in 0..=MAX_BATCH_STEPS_SITTING_OUT {
            let plan = plan(&input);
            let seq = &mut input.slots[batch[0]];
            if plan.decodes.contains(&batch[0]) {
                ran_at = Some(step);
                break;
            }
            seq.steps_sat_out += 1;
        }
        assert_eq!(ran_at, Some(MAX_BATCH_STEPS_SITTING_OUT));
    }

    #[test]
    fn a_below_share_prompt_makes_above_share_decodes_sit_out() {
        let mut input = engine(64);
        let flood = decoding(&mut input, FLOOD, 6);
        let other = decoding(&mut input, "other", 1);
        let plan_without = plan(&input);
        assert!(plan_without.sitting_out.is_empty(), "no prompt waits");
        assert_eq!(plan_without.decodes.len(), 7);

        let light = prompt(&mut input, LIGHT, 10);
        let plan = plan(&input);
        assert_eq!(plan.sitting_out, flood, "the flood is above its share");
        assert_eq!(plan.decodes, other, "a tenant below its share decodes");
        assert_eq!(plan.prefills, [chunk(light, 0..10)]);
    }

    #[test]
    fn a_decode_sits_out_at_most_max_steps_sitting_out_in_a_row() {
        let mut input = engine(64);
        let flood = decoding(&mut input, FLOOD, 4)[0];
        // A prompt that stays below share and unfinished step after step.
        prompt(&mut input, LIGHT, 1_000);
        let mut sat_out = Vec::new();
        for _ in 0..2 * (MAX_STEPS_SITTING_OUT + 1) {
            let plan = plan(&input);
            let sits_out = plan.sitting_out.contains(&flood);
            sat_out.push(sits_out);
            // As the executor keeps count.
            let seq = &mut input.slots[flood];
            seq.steps_sat_out = if sits_out { seq.steps_sat_out + 1 } else { 0 };
        }
        let mut expected = vec![true; MAX_STEPS_SITTING_OUT as usize];
        expected.push(false);
        expected.extend(expected.clone());
        assert_eq!(sat_out, expected);
    }

    #[test]
    fn the_places_of_sit_out_decodes_go_to_the_prompts_they_made_way_for() {
        let mut input = engine(8);
        let flood = decoding(&mut input, FLOOD, 6);
        let light = prompt(&mut input, LIGHT, 20);
        let plan = plan(&input);
        assert_eq!(plan.sitting_out, flood);
        // The budget's 8 and the 6 places of the decodes that sat out.
        assert_eq!(plan.prefills, [chunk(light, 0..14)]);
        assert_eq!(plan.tokens(), 8 + flood.len(), "no larger than a full step");
    }

    #[test]
    fn a_step_whose_decodes_sit_out_prefills_only_below_share_prompts() {
        let mut input = engine(64);
        let flood = decoding(&mut input, FLOOD, 6);
        let flood_prompt = prompt(&mut input, FLOOD, 100);
        let light = prompt(&mut input, LIGHT, 5);
        let plan_out = plan(&input);
        assert_eq!(plan_out.sitting_out, flood);
        assert_eq!(plan_out.prefills, [chunk(light, 0..5)], "budget is left");

        // With nobody sitting out, the flood's prompt takes what is left.
        for &slot in &flood {
            input.slots[slot].steps_sat_out = MAX_STEPS_SITTING_OUT;
        }
        let plan_in = plan(&input);
        assert!(plan_in.sitting_out.is_empty());
        assert_eq!(
            plan_in.prefills,
            [chunk(light, 0..5), chunk(flood_prompt, 0..64 - 6 - 5)]
        );
    }

    #[test]
    fn the_mixed_tenant_cap_applies_while_tenants_mix_this_step_or_the_last() {
        let mut input = engine(128);
        input.budget.mixed_step_cap = 16;
        decoding(&mut input, FLOOD, 3);
        let alone = plan(&input);
        assert!(!alone.mixed);
        assert_eq!(alone.budget, 128, "one tenant: no cap");

        input.mixed_last_step = true;
        let after_mixed = plan(&input);
        assert!(!after_mixed.mixed);
        assert_eq!(after_mixed.budget, 16, "the last step had two tenants");

        input.mixed_last_step = false;
        let light = prompt(&mut input, LIGHT, 100);
        let mixed = plan(&input);
        assert!(mixed.mixed);
        assert_eq!(mixed.budget, 16, "two tenants now");
        // The decodes sat out: the 16 and their 3 places.
        assert_eq!(mixed.prefills, [chunk(light, 0..19)]);

        input.budget.mixed_step_cap = 0;
        assert_eq!(plan(&input).budget, 128, "a cap of 0 is no cap");
    }

    #[test]
    fn the_cap_applies_while_batch_shares_the_engine_with_interactive_work() {
        // One tenant: the cap is the class rule's.
        let mut input = engine(128);
        input.budget.mixed_step_cap = 16;
        let batch = decoding(&mut input, LIGHT, 40);
        as_batch(&mut input, &batch);
        let only_batch = plan(&input);
        assert!(!only_batch.mixed);
        assert_eq!(only_batch.decodes, batch, "batch alone: the whole budget");
        let interactive = decoding(&mut input, LIGHT, 2);
        let shared = plan(&input);
        assert!(shared.mixed);
        assert_eq!(shared.budget, 16);
        // The 2 interactive decodes and 14 batch ones: a new interactive
        // prompt waits a 16-token step, not a 42-token one.
        assert_eq!(shared.tokens(), 16);
        assert!(interactive.iter().all(|slot| shared.decodes.contains(slot)));
        assert_eq!(shared.batch_sitting_out.len(), 40 - 14);
    }

    #[test]
    fn an_interactive_prompt_beside_batch_gets_the_step_it_needs_batch_the_cap() {
        let mut input = engine(128);
        input.budget.mixed_step_cap = 16;
        let batch = decoding(&mut input, LIGHT, 40);
        as_batch(&mut input, &batch);
        let interactive = decoding(&mut input, LIGHT, 2);
        let long = prompt(&mut input, LIGHT, 100);
        let step = plan(&input);
        // The 2 decodes and the whole prompt in one step, as without batch;
        // every batch decode sits out.
        assert_eq!(step.budget, 102);
        assert_eq!(step.prefills, [chunk(long, 0..100)]);
        assert!(interactive.iter().all(|slot| step.decodes.contains(slot)));
        assert_eq!(step.batch_sitting_out.len(), 40);
        // Its last chunk: the step is the cap, but batch decodes still sit
        // out while an interactive prompt is ready, so the step that ends
        // its prefill is as short as alone.
        input.slots[long].phase = Phase::Prefilling {
            prefilled: 95,
            prompt_len: 100,
            awaiting_copy: false,
        };
        let last = plan(&input);
        assert_eq!(last.budget, 16);
        assert_eq!(last.prefills, [chunk(long, 95..100)]);
        assert_eq!(last.tokens(), 2 + 5);
        assert_eq!(last.batch_sitting_out.len(), 40);
        // Never past what the governor asks.
        input.budget.requested = 64;
        input.slots[long].phase = Phase::Prefilling {
            prefilled: 0,
            prompt_len: 100,
            awaiting_copy: false,
        };
        assert_eq!(plan(&input).budget, 64);
    }

    #[test]
    fn batch_work_beside_interactive_streams_stays_within_the_batch_cap() {
        let mut input = engine(128);
        input.budget.mixed_step_cap = 64;
        input.budget.batch_step_cap = 16;
        let batch = decoding(&mut input, LIGHT, 40);
        let batch_prompt = prompt(&mut input, LIGHT, 50);
        as_batch(&mut input, &[batch.as_slice(), &[batch_prompt]].concat());
        let only_batch = plan(&input);
        assert_eq!(only_batch.decodes, batch, "no interactive work: no cap");
        assert_eq!(only_batch.tokens(), 40 + 50);
        let interactive = decoding(&mut input, LIGHT, 2);
        let shared = plan(&input);
        // The 2 interactive decodes and 16 batch ones, where the mixed cap
        // alone would let batch take 62: an interactive prompt arriving
        // waits for a step a quarter as long.
        assert_eq!(shared.tokens(), 2 + 16);
        assert!(interactive.iter().all(|slot| shared.decodes.contains(slot)));
        assert_eq!(shared.batch_sitting_out.len(), 40 - 16);
        assert!(shared.prefills.is_empty(), "the batch prompt: no room left");
        // With the batch decodes parked, the room goes to the batch prompt.
        for &slot in &batch {
            input.slots[slot].phase = Phase::Parked;
        }
        assert_eq!(plan(&input).prefills, [chunk(batch_prompt, 0..16)]);
    }

    #[test]
    fn prompts_of_tenants_with_fewer_sequences_are_prefilled_first() {
        let mut input = engine(16);
        let flood: Vec<usize> = (0..3).map(|_| prompt(&mut input, FLOOD, 50)).collect();
        let light = prompt(&mut input, LIGHT, 10);
        let plan = plan(&input);
        assert!(plan.decodes.is_empty() && plan.sitting_out.is_empty());
        // The light prompt arrived last, yet goes first; then the flood's
        // in admission order.
        assert_eq!(plan.prefills, [chunk(light, 0..10), chunk(flood[0], 0..6)]);
    }

    #[test]
    fn a_step_stays_within_its_budget() {
        // Budgets, decodes and prompts of two tenants in many mixes; a step
        // holds at most the budget plus the places of decodes sitting out,
        // or every decode plus the prefill floor, and never more than the
        // batch was sized for.
        for requested in [4, 16, 64, 512, 4096] {
            for flood_decodes in [0, 3, 40] {
                for light_decodes in [0, 1, 5] {
                    for prompts in [0, 1, 3] {
                        let mut input = engine(requested);
                        input.budget.prep_tokens_per_step = 32;
                        input.budget.mixed_step_cap = 64;
                        input.preps.unpinned_free_slots = 3;
                        input.preps.queued = vec![100, 100];
                        decoding(&mut input, FLOOD, flood_decodes);
                        decoding(&mut input, LIGHT, light_decodes);
                        for tenant in [FLOOD, LIGHT] {
                            for _ in 0..prompts {
                                prompt(&mut input, tenant, 300);
                            }
                        }
                        let plan = plan(&input);
                        let budget = plan.budget as usize;
                        let decodes = plan.decodes.len();
                        let most = (budget + plan.sitting_out.len()).max(decodes + 4);
                        let case = (requested, flood_decodes, light_decodes, prompts);
                        assert!(plan.tokens() <= most, "{case:?}: {plan:?}");
                        let batch = 512 + input.slots.len();
                        assert!(plan.tokens() <= batch, "{case:?}: {plan:?}");
                        assert!((4..=512).contains(&budget), "{case:?}");
                    }
                }
            }
        }
    }

    #[test]
    fn prefill_gets_the_floor_when_decodes_fill_the_budget() {
        let mut input = engine(16);
        decoding(&mut input, FLOOD, 20);
        let waiting = prompt(&mut input, FLOOD, 100);
        let plan = plan(&input);
        assert_eq!(plan.decodes.len(), 20);
        assert_eq!(plan.prefills, [chunk(waiting, 0..4)]);
    }

    #[test]
    fn parked_streams_and_prompts_awaiting_a_copy_take_no_place() {
        let mut input = engine(64);
        let parked = add(&mut input, FLOOD, Phase::Parked);
        let copying = Phase::Prefilling {
            prefilled: 0,
            prompt_len: 40,
            awaiting_copy: true,
        };
        add(&mut input, LIGHT, copying);
        let resumed = Phase::Prefilling {
            prefilled: 30,
            prompt_len: 40,
            awaiting_copy: false,
        };
        let partly = add(&mut input, LIGHT, resumed);
        let plan = plan(&input);
        assert!(!plan.decodes.contains(&parked) && !plan.sitting_out.contains(&parked));
        assert_eq!(plan.prefills, [chunk(partly, 30..40)]);
    }

    #[test]
    fn preps_take_what_the_step_leaves_running_ones_first_new_ones_with_a_slot_to_spare() {
        let mut input = engine(64);
        input.budget.prep_tokens_per_step = 32;
        decoding(&mut input, FLOOD, 40);
        input.preps.running = vec![
            RunningPrep {
                slot: 8,
                started: 5,
                prefilled: 10,
                target_len: 20,
            },
            RunningPrep {
                slot: 9,
                started: 4,
                prefilled: 0,
                target_len: 8,
            },
            RunningPrep {
                slot: 7,
                started: 1,
                prefilled: 30,
                target_len: 30,
            },
        ];
        input.preps.queued = vec![50, 50];
        input.preps.unpinned_free_slots = 2;
        let chunks = |plan: &StepPlan| plan.preps.clone();
        // 24 tokens spare: the prep started first, the other, then a new one.
        let plan_one = plan(&input);
        let expected = [
            PrepChunk {
                prep: PrepSlot::Running(9),
                tokens: 0..8,
            },
            PrepChunk {
                prep: PrepSlot::Running(8),
                tokens: 10..20,
            },
            PrepChunk {
                prep: PrepSlot::Next,
                tokens: 0..6,
            },
        ];
        assert_eq!(chunks(&plan_one), expected);
        assert_eq!(plan_one.tokens(), 64);

        input.preps.requests_waiting = true;
        assert_eq!(chunks(&plan(&input)), expected[..2], "a request waits");
        input.preps.requests_waiting = false;
        input.preps.unpinned_free_slots = 1;
        assert_eq!(chunks(&plan(&input)), expected[..2], "no slot to spare");
        input.budget.prep_tokens_per_step = 4;
        assert_eq!(
            plan(&input).preps[..],
            [PrepChunk {
                prep: PrepSlot::Running(9),
                tokens: 0..4,
            }]
        );
    }

    #[test]
    fn the_step_budget_is_the_governors_within_the_floor_and_the_ceiling() {
        let budget = |requested| step_budget(&engine(requested).budget, false);
        assert_eq!(budget(100), 100);
        assert_eq!(budget(1), 4);
        assert_eq!(budget(10_000), 512);
        let mut upside_down = engine(100).budget;
        upside_down.min_prefill_chunk = 600;
        assert_eq!(step_budget(&upside_down, false), 600, "no panic");
    }

    #[test]
    fn shares_are_judged_against_an_equal_split_of_the_sequences() {
        let shares = TenantShares::count(
            std::iter::repeat_n("flood", 48).chain(std::iter::repeat_n("light", 2)),
        );
        assert!(shares.is_below_share("light") && !shares.is_above_share("light"));
        assert!(shares.is_above_share("flood") && !shares.is_below_share("flood"));
        assert_eq!(shares.sequences("light"), 2);
        assert_eq!(shares.sequences("absent"), 0);
        let alone = TenantShares::count(std::iter::repeat_n("only", 5));
        assert!(!alone.is_below_share("only") && !alone.is_above_share("only"));
        let even = TenantShares::count(["a", "b", "a", "b"].into_iter());
        assert!(!even.is_below_share("a") && !even.is_above_share("b"));
    }
}
