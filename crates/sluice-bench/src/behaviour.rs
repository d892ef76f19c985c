//! How each simulated client treats its stream: reads it at once (normal),
//! reads it slowly, or hangs up part-way. Chosen per request from a seed,
//! so a chaos run is reproducible.

use std::time::Duration;

use serde::Serialize;

use crate::workload::SplitMix64;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ClientBehaviour {
    /// Reads every chunk as it arrives.
    #[default]
    Normal,
    /// Pauses this long after each read: slower than the token rate, so the
    /// server must hold the stream's output (backpressure) or park it.
    SlowReader { delay_ms: u64 },
    /// Drops the connection once this many text chunks arrived.
    Disconnect { after_chunks: u64 },
}

impl ClientBehaviour {
    /// The client reads its stream to the end as fast as it comes: whatever
    /// else ends it is the infrastructure's doing. (A slow reader may be cut
    /// by the server's slow-consumer policy; it is counted on its own.)
    pub fn well_behaved(self) -> bool {
        self == Self::Normal
    }

    /// Pause after each read, for slow readers.
    pub fn read_delay(self) -> Option<Duration> {
        match self {
            Self::SlowReader { delay_ms } => Some(Duration::from_millis(delay_ms)),
            _ => None,
        }
    }
}

/// The fractions of slow and disconnecting clients; the rest are normal.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct BehaviourMix {
    pub slow_reader_fraction: f64,
    pub slow_reader_delay_ms: u64,
    pub disconnect_fraction: f64,
    /// A disconnecting client hangs up after 1..=this many text chunks.
    pub disconnect_max_chunks: u64,
    pub seed: u64,
}

impl BehaviourMix {
    pub fn validate(&self) -> Result<(), String> {
        let fraction = |f: f64| f.is_finite() && (0.0..=1.0).contains(&f);
        if !fraction(self.slow_reader_fraction) || !fraction(self.disconnect_fraction) {
            return Err("behaviour fractions must be between 0 and 1".into());
        }
        if self.slow_reader_fraction + self.disconnect_fraction > 1.0 {
            return Err(
                "--slow-reader-fraction plus --disconnect-fraction must not exceed 1".into(),
            );
        }
        if self.slow_reader_fraction > 0.0 && self.slow_reader_delay_ms == 0 {
            return Err("--slow-reader-delay-ms must be positive".into());
        }
        if self.disconnect_fraction > 0.0 && self.disconnect_max_chunks == 0 {
            return Err("--disconnect-max-chunks must be at least 1".into());
        }
        Ok(())
    }

    /// The behaviour of request `index`: the same for the same seed,
    /// whatever order requests are sent in.
    pub fn pick(&self, index: usize) -> ClientBehaviour {
        // Its own stream of numbers, apart from the prompts' (same seed).
        let mut rng = SplitMix64::new(
            (self.seed ^ 0xC4A0_5C11_E47B_E4A7)
                .wrapping_add((index as u64).wrapping_mul(0xD1B5_4A32_D192_ED03)),
        );
        let draw = rng.next_f64();
        if draw < self.slow_reader_fraction {
            ClientBehaviour::SlowReader {
                delay_ms: self.slow_reader_delay_ms,
            }
        } else if draw < self.slow_reader_fraction + self.disconnect_fraction {
            ClientBehaviour::Disconnect {
                after_chunks: 1 + rng.next_u64() % self.disconnect_max_chunks,
            }
        } else {
            ClientBehaviour::Normal
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mix() -> BehaviourMix {
        BehaviourMix {
            slow_reader_fraction: 0.1,
            slow_reader_delay_ms: 200,
            disconnect_fraction: 0.05,
            disconnect_max_chunks: 8,
            seed: 3,
        }
    }

    #[test]
    fn behaviours_come_in_their_fractions_and_repeat_with_the_seed() {
        let picks: Vec<ClientBehaviour> = (0..10_000).map(|i| mix().pick(i)).collect();
        let slow = picks
            .iter()
            .filter(|b| matches!(b, ClientBehaviour::SlowReader { delay_ms: 200 }))
            .count();
        let cuts: Vec<u64> = picks
            .iter()
            .filter_map(|b| match b {
                ClientBehaviour::Disconnect { after_chunks } => Some(*after_chunks),
                _ => None,
            })
            .collect();
        assert!((900..=1100).contains(&slow), "{slow} slow readers");
        assert!(
            (420..=580).contains(&cuts.len()),
            "{} disconnects",
            cuts.len()
        );
        assert!(cuts.iter().all(|n| (1..=8).contains(n)));
        assert!(cuts.contains(&1) && cuts.contains(&8), "the whole range");
        assert_eq!(mix().pick(42), mix().pick(42));
        let reseeded = BehaviourMix { seed: 4, ..mix() };
        assert_ne!(
            (0..200).map(|i| mix().pick(i)).collect::<Vec<_>>(),
            (0..200).map(|i| reseeded.pick(i)).collect::<Vec<_>>()
        );
    }

    #[test]
    fn an_all_normal_mix_picks_only_normal_clients() {
        let normal = BehaviourMix {
            slow_reader_fraction: 0.0,
            disconnect_fraction: 0.0,
            ..mix()
        };
        assert!(normal.validate().is_ok());
        assert!((0..1000).all(|i| normal.pick(i) == ClientBehaviour::Normal));
    }

    #[test]
    fn bad_mixes_are_refused() {
        for bad in [
            BehaviourMix {
                slow_reader_fraction: 1.5,
                ..mix()
            },
            BehaviourMix {
                disconnect_fraction: f64::NAN,
                ..mix()
            },
            BehaviourMix {
                slow_reader_fraction: 0.6,
                disconnect_fraction: 0.5,
                ..mix()
            },
            BehaviourMix {
                slow_reader_delay_ms: 0,
                ..mix()
            },
            BehaviourMix {
                disconnect_max_chunks: 0,
                ..mix()
            },
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
        assert!(mix().validate().is_ok());
    }

    #[test]
    fn only_normal_clients_are_well_behaved() {
        assert!(ClientBehaviour::Normal.well_behaved());
        assert!(!ClientBehaviour::SlowReader { delay_ms: 1 }.well_behaved());
        assert!(!ClientBehaviour::Disconnect { after_chunks: 1 }.well_behaved());
        assert_eq!(
            ClientBehaviour::SlowReader { delay_ms: 5 }.read_delay(),
            Some(Duration::from_millis(5))
        );
        assert_eq!(ClientBehaviour::Normal.read_delay(), None);
    }
}
