//! The admission limit controller: a PID on the normalised latency error that
//! sets how many streams may run at once.
//!
//! Error: `e = (measured - target) / target` for TTFT p95 and inter-token
//! p95, the worse of the two, clamped to `[-1, MAX_ERROR]`. Positive means
//! too slow. The controller's output is *pressure* `u` in `[0, 1]`; the limit
//! is `max_streams - u * (max_streams - min_streams)`, so with no pressure
//! the limit sits at its baseline, `max_streams`.
//!
//! Why this shape:
//! - Normalising makes the gains independent of the targets' units and
//!   sizes: a PID on raw milliseconds saturates at once and acts as an on/off
//!   switch.
//! - The derivative acts on the measurement, not on the error, so changing a
//!   target at run time does not kick the output.
//! - Anti-windup: the integral is clamped so `ki * integral` stays in
//!   `[0, 1]` and grows only up to the point where the output saturates —
//!   full pressure, or the pressure that puts the limit one step below the
//!   running streams (below); after load drops it drains within seconds.
//! - The PID sees the error through a first-order filter (`ERROR_SMOOTHING`),
//!   the limit moves at most `max_step` streams per tick and ignores changes
//!   under `HYSTERESIS` streams: noisy windows do not make it chatter.
//! - Raising the limit while requests wait admits them at once, and their
//!   TTFT is only measured seconds later, after their prefill. So with a
//!   queue the limit rises by at most one stream per tick, and not at all
//!   while more than `max_step` admitted streams still await their first
//!   token: the controller waits to see the effect of its last increase
//!   (as TCP's congestion window grows only on acknowledged data). With no
//!   queue, raising the limit admits nobody, so it returns to baseline at
//!   full speed.
//! - With nothing queued and fresh measurements missing, the error is -1:
//!   an idle server relaxes to its baseline.
//!
//! The governor's second knob is the engine's per-step token budget
//! ([`BudgetController`]): the tokens one step may process, decodes first,
//! prefill chunks with the rest. It is what trades TTFT against inter-token
//! gaps: a step with more prefill finishes prompts sooner and makes every
//! running stream wait longer for its next token, since each stream gets one
//! token per step. So it is set from the engine's own step times, not from
//! the inter-token window: while admitted streams await their first token,
//! the budget goes to the size whose step would take a set fraction
//! ([`STEP_TIME_TARGET`]) of the inter-token target at the tokens per second
//! the engine just measured; without a backlog it returns to its baseline.
//! The step time is known the moment a step ends, where a windowed p95 lags
//! by seconds (and made an earlier, window-driven version overshoot). While
//! the budget can still rise, TTFT does not lower the admission limit: a
//! late first token is then answered with more prefill per step, not with
//! fewer streams (fewer streams only move the wait into the admission
//! queue).
//!
//! A lower limit evicts no running stream, so with more streams running than
//! the limit its effect shows only as they finish. The limit therefore never
//! falls more than `max_step` below the streams running, and the output
//! saturates there (anti-windup above): a cold burst the controller cannot
//! help makes it shed load as streams end, not slam to its floor.

use serde::{Deserialize, Serialize};

/// Largest normalised error fed to the PID: a 4× miss is "very late"; larger
/// misses must not wind the integral further.
pub const MAX_ERROR: f64 = 3.0;

/// Weight of the newest error in the filtered error the PID acts on: a time
/// constant of about three ticks.
pub const ERROR_SMOOTHING: f64 = 0.3;

/// Wanted limit changes smaller than this are ignored.
pub const HYSTERESIS: i64 = 3;

/// The share of the TTFT SLO the admission limit aims to leave to the
/// engine (admission to first token); the rest is the queue's, which
/// deadline shedding keeps within it.
pub const SERVICE_SHARE: f64 = 0.5;

/// The fewest admitted prompts the engine may hold awaiting their first
/// token: enough that a step always has prompt tokens to fill its budget.
pub const MIN_PROMPT_BACKLOG: usize = 2;

/// Prompts admitted ahead of their prefill that the engine turns into
/// first tokens within `service` seconds at `first_tokens_per_second`, the
/// rate it did so lately (Little's law), at least [`MIN_PROMPT_BACKLOG`].
pub fn prompt_backlog(service: Option<f64>, first_tokens_per_second: Option<f64>) -> usize {
    match (service, first_tokens_per_second) {
        (Some(service), Some(rate)) if rate > 0.0 => {
            ((service * rate).ceil() as usize).max(MIN_PROMPT_BACKLOG)
        }
        _ => MIN_PROMPT_BACKLOG,
    }
}

/// The inter-token target the step budget aims under when the SLO names
/// none.
pub const DEFAULT_ITL_TARGET: f64 = 1.5;

/// What the governor aims for, from the SLO (`qos.slo`): one source of
/// truth for the operator's targets, the evaluator's and the governor's.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Targets {
    /// Windowed TTFT p95 from admission, seconds: the SLO's TTFT p95 times
    /// [`SERVICE_SHARE`].
    pub service_ttft_p95: Option<f64>,
    /// Windowed inter-token gap p95, seconds.
    pub itl_p95: Option<f64>,
}

impl Targets {
    /// From the SLO's TTFT p95 and inter-token p95, in seconds.
    pub fn from_slo(ttft_p95: Option<f64>, itl_p95: Option<f64>) -> Self {
        Self {
            service_ttft_p95: ttft_p95.map(|ttft| ttft * SERVICE_SHARE),
            itl_p95,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GovernorConfig {
    /// Adaptive limits on (true) or a fixed limit of `max_streams` (false).
    /// Its targets are the SLO's (`qos.slo`).
    pub enabled: bool,
    /// Controller period.
    pub tick_ms: u64,
    /// The limit never goes below this.
    pub min_streams: u32,
    /// The baseline: the limit with no latency pressure.
    pub max_streams: u32,
    /// Latency samples older than this leave the window.
    pub window_ms: u64,
    pub kp: f64,
    pub ki: f64,
    pub kd: f64,
    /// Most streams the limit moves in one tick.
    pub max_step: u32,
    /// The governor sets the engine's step token budget between
    /// `engine.step_token_budget` and `engine.max_step_token_budget`, even
    /// with the adaptive limit off (false: the budget stays at its base).
    /// Off by default: at 75 streams it barely moved TTFT (Little's law,
    /// docs/architecture.md), and a longer step is what every new prompt
    /// waits behind.
    pub adapt_step_budget: bool,
}

impl Default for GovernorConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            tick_ms: 250,
            min_streams: 4,
            max_streams: 128,
            window_ms: 4000,
            kp: 0.25,
            ki: 0.2,
            kd: 0.05,
            max_step: 4,
            adapt_step_budget: false,
        }
    }
}

/// What the controller sees each tick.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Signals {
    /// Windowed TTFT p95 in seconds; None when no request started lately.
    pub ttft_p95: Option<f64>,
    /// Windowed inter-token gap p95 in seconds.
    pub itl_p95: Option<f64>,
    /// Requests waiting for admission.
    pub queue_depth: usize,
    /// Admitted streams that have not produced their first token yet.
    pub awaiting_first_token: usize,
    /// Streams holding an admission permit.
    pub active: usize,
    /// Prompts the engine turned into first tokens per second lately;
    /// None until measured.
    pub first_tokens_per_second: Option<f64>,
    /// The engine steps that ended since the last tick; None if none did.
    pub steps: Option<StepSample>,
}

/// The engine steps of one tick, from the engine's own clock.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepSample {
    /// Mean wall time of a step: what every running stream waits per token.
    pub seconds: f64,
    /// Tokens (decodes and prefill) processed per second of stepping.
    pub tokens_per_second: f64,
}

/// One tick's inputs, terms and output, exported as gauges.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize)]
pub struct Decision {
    pub error: f64,
    pub p: f64,
    pub i: f64,
    pub d: f64,
    pub pressure: f64,
    pub limit: u32,
    /// The engine's step token budget.
    pub step_budget: u32,
}

#[derive(Debug, Clone)]
pub struct LimitController {
    config: GovernorConfig,
    targets: Targets,
    integral: f64,
    filtered_error: Option<f64>,
    limit: u32,
}

impl LimitController {
    pub fn new(config: GovernorConfig, targets: Targets) -> Self {
        let limit = config.max_streams;
        Self {
            config,
            targets,
            integral: 0.0,
            filtered_error: None,
            limit,
        }
    }

    pub fn limit(&self) -> u32 {
        self.limit
    }

    pub fn config(&self) -> &GovernorConfig {
        &self.config
    }

    /// Normalised error: the worse of TTFT and ITL against their targets.
    fn error(&self, signals: &Signals) -> f64 {
        let normalised = |measured: Option<f64>, target: Option<f64>| {
            let target = target.filter(|target| *target > 0.0)?;
            measured.map(|m| (m - target) / target)
        };
        let ttft = normalised(signals.ttft_p95, self.targets.service_ttft_p95);
        let itl = normalised(signals.itl_p95, self.targets.itl_p95);
        match (ttft, itl) {
            (None, None) => -1.0,
            (a, b) => a.into_iter().chain(b).fold(f64::MIN, f64::max),
        }
        .clamp(-1.0, MAX_ERROR)
    }

    /// Advances the controller by `dt` seconds and returns its decision.
    pub fn tick(&mut self, signals: &Signals, dt: f64) -> Decision {
        let config = &self.config;
        let error = if signals.queue_depth == 0 && signals.ttft_p95.is_none() {
            -1.0
        } else {
            self.error(signals)
        };
        let (filtered, derivative) = match self.filtered_error {
            Some(last) if dt > 0.0 => {
                let filtered = last + ERROR_SMOOTHING * (error - last);
                (filtered, (filtered - last) / dt)
            }
            _ => (error, 0.0),
        };
        self.filtered_error = Some(filtered);
        let p = config.kp * filtered;
        let d = config.kd * derivative;
        let span = f64::from(config.max_streams - config.min_streams);
        let step_down = i64::from(config.max_step);
        // A limit below the running streams bites only as they end, so it
        // never goes more than one step below them; the pressure that puts
        // it there is where the output saturates.
        let floor = (signals.active as i64 - step_down)
            .clamp(i64::from(config.min_streams), i64::from(config.max_streams));
        let saturation = if span > 0.0 {
            (f64::from(config.max_streams) - floor as f64) / span
        } else {
            1.0
        };
        let integral_max = if config.ki > 0.0 {
            1.0 / config.ki
        } else {
            0.0
        };
        let mut integral = (self.integral + filtered * dt).clamp(0.0, integral_max);
        if filtered > 0.0 && config.ki > 0.0 && p + config.ki * integral + d > saturation {
            // Anti-windup: integrate up to the point where the output
            // saturates, never beyond it.
            let at_saturation = ((saturation - p - d) / config.ki).clamp(0.0, integral_max);
            integral = integral.min(self.integral.max(at_saturation));
        }
        self.integral = integral;
        let i = config.ki * self.integral;
        let pressure = (p + i + d).clamp(0.0, saturation);
        let wanted = (f64::from(config.max_streams) - pressure * span).round() as i64;
        let step_up = if signals.queue_depth == 0 {
            step_down
        } else if signals.awaiting_first_token > config.max_step as usize {
            0
        } else {
            1
        };
        let current = i64::from(self.limit);
        let at_bound =
            wanted == i64::from(config.max_streams) || wanted == i64::from(config.min_streams);
        let wanted = if (wanted - current).abs() < HYSTERESIS && !at_bound {
            current
        } else {
            wanted
        };
        let next = wanted
            .clamp(current - step_down, current + step_up)
            .max(floor.min(current))
            .clamp(i64::from(config.min_streams), i64::from(config.max_streams));
        self.limit = next as u32;
        Decision {
            error,
            p,
            i,
            d,
            pressure,
            limit: self.limit,
            step_budget: 0,
        }
    }
}

/// The step time the budget aims for while prompts wait, as a fraction of
/// the inter-token p95 target: the rest is room for the steps that run
/// longer than the mean (a prompt's last chunk, sampling many streams).
pub const STEP_TIME_TARGET: f64 = 0.75;

/// Growth per tick at most, toward the budget that fits the step time
/// target: ×1.25 goes from 128 to 512 tokens in about 1.5 s at the default
/// tick, and each step measured on the way corrects the estimate.
pub const BUDGET_GROWTH: f64 = 1.25;

/// A fitting budget within this fraction of the current one changes
/// nothing: step times vary by a few percent from step to step.
pub const BUDGET_DEADBAND: f64 = 0.1;

/// Sets the engine's per-step token budget from the prefill backlog and the
/// engine's measured step times (see the module docs).
#[derive(Debug, Clone)]
pub struct BudgetController {
    base: u32,
    ceiling: u32,
    itl_target: f64,
    budget: u32,
    /// The budget whose step would take the target time, at the rate of
    /// the last steps measured.
    fitting: Option<f64>,
}

impl BudgetController {
    /// `base`: the budget without a backlog; `ceiling`: the most it may
    /// grow to; `itl_target`: the inter-token p95 it must not push past,
    /// seconds.
    pub fn new(base: u32, ceiling: u32, itl_target: f64) -> Self {
        Self {
            base,
            ceiling: ceiling.max(base),
            itl_target,
            budget: base,
            fitting: None,
        }
    }

    pub fn budget(&self) -> u32 {
        self.budget
    }

    /// Whether the budget may still rise: below its ceiling, and the last
    /// steps measured (if any) leave room for a larger one.
    pub fn can_rise(&self) -> bool {
        self.budget < self.ceiling
            && self
                .fitting
                .is_none_or(|fitting| fitting > f64::from(self.budget) * (1.0 + BUDGET_DEADBAND))
    }

    /// One tick: `steps` are the engine steps that ended since the last
    /// one; `awaiting_first_token` admitted streams have not finished their
    /// prefill.
    pub fn tick(&mut self, steps: Option<StepSample>, awaiting_first_token: usize) -> u32 {
        let budget = f64::from(self.budget);
        let over_target = steps.is_some_and(|steps| steps.seconds > self.itl_target);
        if let Some(steps) = steps {
            self.fitting = Some(steps.tokens_per_second * STEP_TIME_TARGET * self.itl_target);
        }
        let next = match self.fitting {
            // Nothing to prefill: back to the base within a few ticks.
            _ if awaiting_first_token == 0 => budget / 2.0,
            // Steps too long: down to the fitting budget at once.
            Some(fitting) if over_target => fitting.min(budget),
            Some(fitting) if fitting > budget * (1.0 + BUDGET_DEADBAND) => {
                fitting.min(budget * BUDGET_GROWTH)
            }
            Some(fitting) if fitting < budget * (1.0 - BUDGET_DEADBAND) => fitting,
            // Within the deadband, or nothing measured yet: hold.
            _ => budget,
        };
        self.budget = (next.round() as u32).clamp(self.base, self.ceiling);
        self.budget
    }
}

/// Both knobs, ticked together (see the module docs for how they interact).
#[derive(Debug, Clone)]
pub struct Governor {
    limit: LimitController,
    budget: BudgetController,
}

impl Governor {
    /// `base_budget` and `budget_ceiling` come from the engine config.
    pub fn new(
        config: GovernorConfig,
        targets: Targets,
        base_budget: u32,
        budget_ceiling: u32,
    ) -> Self {
        let ceiling = if config.adapt_step_budget {
            budget_ceiling
        } else {
            base_budget
        };
        let itl_target = targets.itl_p95.unwrap_or(DEFAULT_ITL_TARGET);
        let budget = BudgetController::new(base_budget, ceiling, itl_target);
        Self {
            limit: LimitController::new(config, targets),
            budget,
        }
    }

    pub fn limit(&self) -> u32 {
        self.limit.limit()
    }

    pub fn budget(&self) -> u32 {
        self.budget.budget()
    }

    /// Advances both controllers by `dt` seconds. With the adaptive limit
    /// off the limit stays at `max_streams`.
    pub fn tick(&mut self, signals: &Signals, dt: f64) -> Decision {
        let step_budget = self
            .budget
            .tick(signals.steps, signals.awaiting_first_token);
        let budget_can_rise = signals.awaiting_first_token > 0 && self.budget.can_rise();
        if !self.limit.config().enabled {
            return Decision {
                limit: self.limit.limit(),
                step_budget,
                ..Decision::default()
            };
        }
        // A late first token with budget to spare is the budget's to fix.
        let limit_signals = Signals {
            ttft_p95: signals.ttft_p95.filter(|_| !budget_can_rise),
            ..*signals
        };
        let decision = self.limit.tick(&limit_signals, dt);
        // The prompt gate: new streams enter only as the engine turns
        // admitted prompts into first tokens. Decodes go first in a step,
        // so prompts admitted past what the engine prefills within the
        // service target wait inside it, out of reach of shedding; held
        // in admission instead, they are shed or admitted in time. What the
        // engine prefills is counted in first tokens, not admissions: as
        // an overload's decodes pile up, their share of each step leaves
        // less for prompts, and a backlog sized on the ramp's admissions
        // held ten prompts that waited 8-15 s for their prefill
        // (benchmarks/results/2026-12-06-014f7340fea6-overload, 2x load).
        let decoding = signals.active.saturating_sub(signals.awaiting_first_token);
        let backlog = prompt_backlog(
            self.limit.targets.service_ttft_p95,
            signals.first_tokens_per_second,
        );
        let gate = u32::try_from(decoding + backlog).unwrap_or(u32::MAX);
        Decision {
            step_budget,
            limit: decision.limit.min(gate),
            ..decision
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DT: f64 = 0.25;

    /// Tighter than the defaults so the scripted plant below binds.
    fn test_config() -> GovernorConfig {
        GovernorConfig {
            max_streams: 64,
            ..GovernorConfig::default()
        }
    }

    /// TTFT from admission 3 s (an SLO of 6 s), inter-token gap 1 s.
    fn test_targets() -> Targets {
        Targets::from_slo(Some(6.0), Some(1.0))
    }

    /// TTFT from admission 10 s (an SLO of 20 s), inter-token gap 1.5 s.
    fn default_targets() -> Targets {
        Targets::from_slo(Some(20.0), Some(1.5))
    }

    /// A scripted plant: TTFT p95 grows with the streams admitted (a 2-core
    /// CPU serving `demand` clients), with optional multiplicative noise.
    struct Plant {
        seconds_per_stream: f64,
        noise: f64,
        rng: u64,
    }

    impl Plant {
        fn ttft(&mut self, active: u32) -> f64 {
            self.rng = self
                .rng
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let unit = (self.rng >> 11) as f64 / (1u64 << 53) as f64;
            let factor = 1.0 + self.noise * (2.0 * unit - 1.0);
            self.seconds_per_stream * f64::from(active) * factor
        }
    }

    fn run(
        controller: &mut LimitController,
        plant: &mut Plant,
        demand: u32,
        ticks: usize,
    ) -> Vec<u32> {
        (0..ticks)
            .map(|_| {
                let active = demand.min(controller.limit());
                let signals = Signals {
                    ttft_p95: Some(plant.ttft(active)),
                    queue_depth: (demand - active) as usize,
                    active: active as usize,
                    ..Signals::default()
                };
                controller.tick(&signals, DT).limit
            })
            .collect()
    }

    fn plant(noise: f64) -> Plant {
        // 0.1 s of TTFT per running stream: the 3 s target holds 30 streams.
        Plant {
            seconds_per_stream: 0.1,
            noise,
            rng: 42,
        }
    }

    #[test]
    fn step_up_converges_into_the_band_without_big_overshoot() {
        let mut controller = LimitController::new(test_config(), test_targets());
        let limits = run(&mut controller, &mut plant(0.0), 75, 240);
        let settled = &limits[120..];
        // Equilibrium: the limit where TTFT meets its target (30 streams).
        for &limit in settled {
            assert!(
                (24..=33).contains(&limit),
                "settled limit {limit}: {settled:?}"
            );
        }
        // Overshoot below the equilibrium: never under 80 % of it.
        let lowest = *limits.iter().min().unwrap();
        assert!(
            f64::from(lowest) >= 0.8 * 30.0 - 1.0,
            "undershoot to {lowest}: {limits:?}"
        );
        // No sustained oscillation: the last 30 s move by at most one step.
        let spread = settled.iter().max().unwrap() - settled.iter().min().unwrap();
        assert!(spread <= 4, "oscillating: {settled:?}");
    }

    #[test]
    fn step_down_returns_to_baseline_within_five_seconds() {
        let mut controller = LimitController::new(test_config(), test_targets());
        run(&mut controller, &mut plant(0.0), 75, 240);
        assert!(controller.limit() < 40);
        // Load drops to 5 clients: their TTFT is far under target.
        let limits = run(&mut controller, &mut plant(0.0), 5, 20);
        assert_eq!(
            *limits.last().unwrap(),
            64,
            "back to baseline in 5 s: {limits:?}"
        );
    }

    #[test]
    fn idle_server_relaxes_to_baseline() {
        let mut controller = LimitController::new(test_config(), test_targets());
        run(&mut controller, &mut plant(0.0), 75, 200);
        for _ in 0..20 {
            controller.tick(&Signals::default(), DT);
        }
        assert_eq!(controller.limit(), 64);
    }

    #[test]
    fn noisy_measurements_do_not_make_it_chatter() {
        let mut controller = LimitController::new(test_config(), test_targets());
        let limits = run(&mut controller, &mut plant(0.3), 75, 400);
        let settled = &limits[160..];
        // Independent ±30 % noise every tick is harsher than a 4 s window,
        // whose consecutive p95s share most samples.
        let changes = settled.windows(2).filter(|w| w[0] != w[1]).count();
        assert!(
            changes < settled.len() / 3,
            "{changes} changes: {settled:?}"
        );
        let spread = settled.iter().max().unwrap() - settled.iter().min().unwrap();
        assert!(spread <= 8, "spread {spread}: {settled:?}");
    }

    #[test]
    fn limit_moves_at_most_one_step_per_tick_and_stays_in_bounds() {
        let mut controller = LimitController::new(test_config(), test_targets());
        let mut last = controller.limit();
        for tick in 0..100 {
            let ttft = if tick % 2 == 0 { 60.0 } else { 0.0 };
            let decision = controller.tick(
                &Signals {
                    ttft_p95: Some(ttft),
                    queue_depth: 10,
                    ..Signals::default()
                },
                DT,
            );
            assert!(decision.limit.abs_diff(last) <= 4);
            assert!((4..=64).contains(&decision.limit));
            last = decision.limit;
        }
    }

    #[test]
    fn with_a_queue_the_limit_rises_one_stream_at_a_time_and_waits_for_first_tokens() {
        let mut controller = LimitController::new(test_config(), test_targets());
        let overload = Signals {
            ttft_p95: Some(12.0),
            queue_depth: 50,
            ..Signals::default()
        };
        for _ in 0..40 {
            controller.tick(&overload, DT);
        }
        let floor = controller.limit();
        assert_eq!(floor, 4);
        let healthy_with_queue = Signals {
            ttft_p95: Some(0.3),
            queue_depth: 50,
            ..Signals::default()
        };
        let mut last = floor;
        for _ in 0..20 {
            let limit = controller.tick(&healthy_with_queue, DT).limit;
            assert!(limit <= last + 1, "{last} -> {limit}");
            last = limit;
        }
        assert!(last > floor, "it does rise");
        let unmeasured = Signals {
            awaiting_first_token: 5,
            ..healthy_with_queue
        };
        for _ in 0..8 {
            assert_eq!(
                controller.tick(&unmeasured, DT).limit,
                last,
                "holds while streams await a first token"
            );
        }
    }

    #[test]
    fn error_is_the_worse_signal_and_positive_when_slow() {
        let controller = LimitController::new(test_config(), test_targets());
        let slow_itl = Signals {
            ttft_p95: Some(1.5),
            itl_p95: Some(2.0),
            ..Signals::default()
        };
        assert_eq!(controller.error(&slow_itl), 1.0);
        let fast = Signals {
            ttft_p95: Some(1.5),
            itl_p95: Some(0.5),
            ..Signals::default()
        };
        assert_eq!(controller.error(&fast), -0.5);
    }

    #[test]
    fn a_limit_below_the_running_streams_falls_only_as_they_end() {
        let mut controller = LimitController::new(test_config(), test_targets());
        // A cold burst: 48 streams admitted at once, their first tokens far
        // past the target, more clients queued behind them.
        let burst = |active: usize| Signals {
            ttft_p95: Some(30.0),
            queue_depth: 20,
            active,
            ..Signals::default()
        };
        for _ in 0..40 {
            controller.tick(&burst(48), DT);
        }
        assert_eq!(controller.limit(), 44, "one step below the 48 running");
        let mut active = 48;
        while active > 12 {
            active -= 2;
            let limit = controller.tick(&burst(active), DT).limit as usize;
            assert!(limit + 4 >= active, "{limit} with {active} running");
        }
        // First tokens on time again: the integral did not wind up while the
        // limit was held, so the pressure lets go within a few seconds.
        let healthy = Signals {
            ttft_p95: Some(1.0),
            ..burst(active)
        };
        let released = (1..=20).find(|_| controller.tick(&healthy, DT).pressure == 0.0);
        assert!(released.is_some(), "pressure still on after 5 s");
    }

    /// A scripted engine: a step of `tokens` takes a fixed 50 ms plus
    /// `tokens / rate`, and every running stream gets one token per step, so
    /// the inter-token gap is the step time. The backlog fills the budget.
    fn step(budget: u32, rate: f64, noise: f64) -> StepSample {
        let seconds = (0.05 + f64::from(budget) / rate) * (1.0 + noise);
        StepSample {
            seconds,
            tokens_per_second: f64::from(budget) / seconds,
        }
    }

    #[test]
    fn budget_rises_with_a_backlog_and_settles_at_the_step_time_target() {
        // A 2 s inter-token target: steps of 1.5 s, i.e. ~247 tokens at 170
        // tokens/s after the 50 ms overhead.
        let mut budget = BudgetController::new(128, 512, 2.0);
        let budgets: Vec<u32> = (0..80)
            .map(|_| {
                let measured = step(budget.budget(), 170.0, 0.0);
                budget.tick(Some(measured), 10)
            })
            .collect();
        assert!(budgets[2] > 128, "rises: {budgets:?}");
        let settled = &budgets[10..];
        for &b in settled {
            let seconds = step(b, 170.0, 0.0).seconds;
            assert!(
                (1.3..=1.65).contains(&seconds),
                "budget {b} gives {seconds} s steps: {budgets:?}"
            );
        }
        assert_eq!(
            settled.iter().min(),
            settled.iter().max(),
            "no chatter: {settled:?}"
        );
        assert!(!budget.can_rise(), "settled: no room left");
    }

    #[test]
    fn budget_does_not_chatter_under_noise() {
        let mut budget = BudgetController::new(128, 512, 2.0);
        let mut rng = 7u64;
        let budgets: Vec<u32> = (0..400)
            .map(|_| {
                rng = rng
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let unit = (rng >> 11) as f64 / (1u64 << 53) as f64;
                let measured = step(budget.budget(), 170.0, 0.1 * (2.0 * unit - 1.0));
                budget.tick(Some(measured), 10)
            })
            .collect();
        let settled = &budgets[20..];
        for &b in settled {
            assert!(
                step(b, 170.0, 0.1).seconds <= 2.0,
                "budget {b}: {settled:?}"
            );
        }
        let changes = settled.windows(2).filter(|w| w[0] != w[1]).count();
        assert!(
            changes < settled.len() / 4,
            "{changes} changes: {settled:?}"
        );
    }

    #[test]
    fn budget_cuts_at_once_when_steps_run_long_and_returns_to_base_without_a_backlog() {
        let mut budget = BudgetController::new(128, 512, 2.0);
        // A cold burst: prompts only, prefilled fast.
        for _ in 0..20 {
            let measured = step(budget.budget(), 400.0, 0.0);
            budget.tick(Some(measured), 40);
        }
        assert_eq!(budget.budget(), 512, "cold burst: up to the ceiling");
        // The streams now decode too, and the engine slows to 150 tokens/s:
        // a 3.5 s step is over the 2 s target.
        let cut = budget.tick(Some(step(512, 150.0, 0.0)), 40);
        assert!(
            step(cut, 150.0, 0.0).seconds <= 1.6,
            "cut to fit in one tick: {cut}"
        );
        // No step ended this tick: nothing new, the budget holds.
        assert_eq!(budget.tick(None, 40), cut);
        // Load gone: back to base within a second (4 ticks).
        let ticks = (1..=20).find(|_| budget.tick(Some(step(128, 150.0, 0.0)), 0) == 128);
        assert!(ticks.is_some_and(|t| t <= 4), "took {ticks:?} ticks");
    }

    #[test]
    fn a_late_first_token_lowers_the_limit_only_when_the_budget_cannot_help() {
        let config = GovernorConfig {
            enabled: true,
            adapt_step_budget: true,
            ..test_config()
        };
        // Prompts prefilling fast: 1,000 tokens/s fits 750 tokens in the
        // 0.75 s step target, more than the ceiling.
        let late = Signals {
            ttft_p95: Some(30.0),
            itl_p95: Some(0.5),
            awaiting_first_token: 20,
            steps: Some(StepSample {
                seconds: 0.3,
                tokens_per_second: 1000.0,
            }),
            ..Signals::default()
        };
        let mut governor = Governor::new(config.clone(), test_targets(), 128, 512);
        for _ in 0..4 {
            governor.tick(&late, DT);
        }
        assert_eq!(governor.limit(), 64, "budget rising: the limit holds");
        for _ in 0..20 {
            governor.tick(&late, DT);
        }
        assert_eq!(governor.budget(), 512);
        for _ in 0..20 {
            governor.tick(&late, DT);
        }
        assert!(
            governor.limit() < 64,
            "budget at its ceiling: the limit falls"
        );

        let mut fixed = Governor::new(config, test_targets(), 128, 128);
        let decision = fixed.tick(&late, DT);
        assert_eq!(decision.step_budget, 128);
        assert!(fixed.tick(&late, DT).pressure > 0.0, "no budget to raise");
    }

    #[test]
    fn the_prompt_gate_admits_only_what_the_engine_prefills_within_the_service_target() {
        let config = GovernorConfig {
            enabled: true,
            ..test_config()
        };
        // Service target 3 s (an SLO of 6 s); 0.7 first tokens per second:
        // ceil(3 × 0.7) = 3 prompts may wait for their prefill.
        let mut governor = Governor::new(config, test_targets(), 128, 128);
        let overload = Signals {
            ttft_p95: Some(1.0),
            itl_p95: Some(0.5),
            queue_depth: 40,
            awaiting_first_token: 10,
            active: 60,
            first_tokens_per_second: Some(0.7),
            steps: None,
        };
        let decision = governor.tick(&overload, DT);
        assert_eq!(decision.limit, 50 + 3, "the 50 decoding and 3 prompts");
        // Its first tokens out, the gate opens as far at once.
        let caught_up = Signals {
            awaiting_first_token: 0,
            ..overload
        };
        assert_eq!(governor.tick(&caught_up, DT).limit, 63);
        // Unmeasured, the engine still gets a backlog to fill its steps.
        assert_eq!(prompt_backlog(Some(3.0), None), MIN_PROMPT_BACKLOG);
        assert_eq!(prompt_backlog(Some(0.1), Some(0.7)), MIN_PROMPT_BACKLOG);
    }

    #[test]
    fn with_the_adaptive_limit_off_only_the_budget_moves() {
        let adapting = GovernorConfig {
            enabled: false,
            adapt_step_budget: true,
            ..GovernorConfig::default()
        };
        let mut governor = Governor::new(adapting.clone(), default_targets(), 128, 512);
        // Steps of 5 s at 100 tokens/s: over the 1.5 s target, and the
        // budget that would fit it (~112 tokens) is under the base.
        let late = Signals {
            ttft_p95: Some(60.0),
            itl_p95: Some(5.0),
            queue_depth: 30,
            awaiting_first_token: 20,
            active: 100,
            first_tokens_per_second: None,
            steps: Some(StepSample {
                seconds: 5.0,
                tokens_per_second: 100.0,
            }),
        };
        for _ in 0..40 {
            let decision = governor.tick(&late, DT);
            assert_eq!(decision.limit, 128);
        }
        assert_eq!(governor.budget(), 128, "long steps keep it at base");
        let adapt_off = GovernorConfig {
            adapt_step_budget: false,
            ..adapting
        };
        let mut fixed = Governor::new(adapt_off, default_targets(), 128, 512);
        let cold = Signals {
            awaiting_first_token: 20,
            ..Signals::default()
        };
        assert_eq!(fixed.tick(&cold, DT).step_budget, 128);
    }
}
