//! Feature flags with canary rollout. Each optional behaviour has a flag:
//! `enabled`, a `rollout_percent` of traffic that gets it (picked by a
//! stable hash of the tenant, so a tenant's requests stay in one cohort and
//! the two cohorts can be compared) and a `kill_switch` that turns it off
//! for everyone whatever the rest says.

use std::sync::{Arc, RwLock};

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Flag {
    pub enabled: bool,
    /// Share of tenants, 0–100, in the canary cohort that gets the feature.
    pub rollout_percent: f64,
    /// Off for everyone, overriding `enabled` and the rollout.
    pub kill_switch: bool,
}

impl Default for Flag {
    fn default() -> Self {
        Self {
            enabled: true,
            rollout_percent: 100.0,
            kill_switch: false,
        }
    }
}

/// Every flag, by feature.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FlagsConfig {
    /// Requests reuse cached prompt prefixes (the engine's prefix cache).
    pub prefix_cache: Flag,
    /// Requests queued for admission get their prompt prefilled by the
    /// engine meanwhile (KV prep), when the prefix cache is on for them.
    /// Off by default: it did not help in the measurement
    /// (benchmarks/results/2026-11-28-c00dab06b566-kv-prep/).
    pub kv_prep: Flag,
    /// Deterministic requests seen before get their first tokens from the
    /// opening cache at once (`speculation:` holds its bounds). Off by default.
    pub first_token_speculation: Flag,
}

impl Default for FlagsConfig {
    fn default() -> Self {
        Self {
            prefix_cache: Flag::default(),
            kv_prep: Flag {
                enabled: false,
                ..Flag::default()
            },
            first_token_speculation: Flag {
                enabled: false,
                ..Flag::default()
            },
        }
    }
}

impl FlagsConfig {
    pub fn validate(&self) -> Result<(), String> {
        for (name, flag) in self.named() {
            if !(0.0..=100.0).contains(&flag.rollout_percent) {
                return Err(format!(
                    "flags.{name}.rollout_percent must be between 0 and 100"
                ));
            }
        }
        Ok(())
    }

    fn named(&self) -> [(&'static str, &Flag); 3] {
        [
            ("prefix_cache", &self.prefix_cache),
            ("kv_prep", &self.kv_prep),
            ("first_token_speculation", &self.first_token_speculation),
        ]
    }

    /// A flag by its config name.
    pub fn get(&self, name: &str) -> Option<&Flag> {
        self.named()
            .into_iter()
            .find_map(|(flag_name, flag)| (flag_name == name).then_some(flag))
    }

    /// A flag by its config name, to change it.
    pub fn get_mut(&mut self, name: &str) -> Option<&mut Flag> {
        match name {
            "prefix_cache" => Some(&mut self.prefix_cache),
            "kv_prep" => Some(&mut self.kv_prep),
            "first_token_speculation" => Some(&mut self.first_token_speculation),
            _ => None,
        }
    }
}

/// Which side of a rollout a request is on, as a metrics label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Cohort {
    /// Gets the feature.
    Canary,
    /// Does not: the comparison group.
    Baseline,
}

impl Cohort {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Canary => "canary",
            Self::Baseline => "baseline",
        }
    }
}

/// A flag's decision for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub on: bool,
    pub cohort: Cohort,
}

impl Flag {
    /// Whether both cohorts get traffic (on, not killed, rollout strictly
    /// between 0 and 100 %): only then can the canary be compared with its
    /// baseline.
    pub fn splits_traffic(&self) -> bool {
        self.enabled
            && !self.kill_switch
            && self.rollout_percent > 0.0
            && self.rollout_percent < 100.0
    }

    /// Whether `key` (a tenant) gets the feature. The bucket is a stable
    /// hash of flag and key, so raising the rollout only adds tenants to the
    /// canary and never moves one back.
    pub fn decide(&self, flag_name: &str, key: &str) -> Decision {
        if !self.enabled || self.kill_switch {
            return Decision {
                on: false,
                cohort: Cohort::Baseline,
            };
        }
        let bucket = stable_hash(flag_name, key) % 10_000;
        let on = (bucket as f64) < self.rollout_percent * 100.0;
        Decision {
            on,
            cohort: if on { Cohort::Canary } else { Cohort::Baseline },
        }
    }
}

/// FNV-1a over the flag name and key: stable across runs and builds (the
/// standard library's hasher is randomly seeded).
fn stable_hash(flag_name: &str, key: &str) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in flag_name.bytes().chain([0]).chain(key.bytes()) {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

/// The flags in force, replaced atomically as a whole (admin API, SIGHUP):
/// a request reads one consistent snapshot.
#[derive(Debug)]
pub struct Flags {
    current: RwLock<Arc<FlagsConfig>>,
}

impl Flags {
    pub fn new(config: FlagsConfig) -> Self {
        Self {
            current: RwLock::new(Arc::new(config)),
        }
    }

    pub fn snapshot(&self) -> Arc<FlagsConfig> {
        Arc::clone(&self.current.read().unwrap_or_else(|p| p.into_inner()))
    }

    pub fn replace(&self, config: FlagsConfig) {
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(config);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn share_on(flag: &Flag) -> f64 {
        let on = (0..10_000)
            .filter(|i| flag.decide("prefix_cache", &format!("tenant-{i}")).on)
            .count();
        on as f64 / 10_000.0
    }

    #[test]
    fn rollout_percent_sets_the_canary_share() {
        for percent in [0.0, 10.0, 50.0, 100.0] {
            let flag = Flag {
                rollout_percent: percent,
                ..Flag::default()
            };
            let share = share_on(&flag);
            assert!(
                (share - percent / 100.0).abs() < 0.02,
                "{percent}% rollout put {share} on"
            );
        }
    }

    #[test]
    fn cohorts_are_stable_and_only_grow_with_the_rollout() {
        let at = |percent: f64| Flag {
            rollout_percent: percent,
            ..Flag::default()
        };
        for i in 0..2_000 {
            let tenant = format!("tenant-{i}");
            let small = at(20.0).decide("prefix_cache", &tenant);
            assert_eq!(small, at(20.0).decide("prefix_cache", &tenant));
            if small.on {
                assert!(at(60.0).decide("prefix_cache", &tenant).on);
            }
        }
    }

    #[test]
    fn kill_switch_and_disabled_turn_it_off_for_everyone() {
        let killed = Flag {
            kill_switch: true,
            ..Flag::default()
        };
        assert_eq!(share_on(&killed), 0.0);
        let disabled = Flag {
            enabled: false,
            ..Flag::default()
        };
        assert_eq!(share_on(&disabled), 0.0);
        let decision = killed.decide("prefix_cache", "t");
        assert_eq!(decision.cohort, Cohort::Baseline);
        assert_eq!(share_on(&Flag::default()), 1.0);
    }

    #[test]
    fn validation_rejects_percentages_out_of_range() {
        let mut config = FlagsConfig::default();
        config.prefix_cache.rollout_percent = 101.0;
        assert!(config.validate().is_err());
        config.prefix_cache.rollout_percent = 100.0;
        assert!(config.validate().is_ok());
    }

    #[test]
    fn replace_swaps_the_whole_set() {
        let flags = Flags::new(FlagsConfig::default());
        let before = flags.snapshot();
        let mut next = FlagsConfig::default();
        next.prefix_cache.kill_switch = true;
        flags.replace(next.clone());
        assert_eq!(*flags.snapshot(), next);
        assert!(!before.prefix_cache.kill_switch, "old snapshots stay valid");
    }
}
