//! Percentiles, rates and goodput over recorded requests.

use serde::Serialize;

/// Distribution summary of one measure, in the unit of its samples.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Default)]
pub struct Summary {
    pub count: usize,
    pub mean: f64,
    pub p50: f64,
    pub p90: f64,
    pub p95: f64,
    pub p99: f64,
    pub max: f64,
}

/// Linear interpolation between closest ranks (numpy's default), `q` in [0, 1].
/// `sorted` must be ascending and non-empty.
pub fn percentile(sorted: &[f64], q: f64) -> f64 {
    assert!(!sorted.is_empty(), "percentile of no samples");
    let rank = q.clamp(0.0, 1.0) * (sorted.len() - 1) as f64;
    let low = rank.floor() as usize;
    let high = rank.ceil() as usize;
    sorted[low] + (sorted[high] - sorted[low]) * (rank - low as f64)
}

impl Summary {
    pub fn of(samples: &[f64]) -> Self {
        if samples.is_empty() {
            return Self::default();
        }
        let mut sorted = samples.to_vec();
        sorted.sort_by(f64::total_cmp);
        Self {
            count: sorted.len(),
            mean: sorted.iter().sum::<f64>() / sorted.len() as f64,
            p50: percentile(&sorted, 0.50),
            p90: percentile(&sorted, 0.90),
            p95: percentile(&sorted, 0.95),
            p99: percentile(&sorted, 0.99),
            max: sorted[sorted.len() - 1],
        }
    }
}

/// Service-level objectives a request must meet to count as goodput.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize)]
pub struct Slo {
    /// Time to first token, seconds.
    pub ttft: Option<f64>,
    /// Mean inter-token gap of the request (time per output token), seconds.
    pub itl: Option<f64>,
    /// End-to-end latency, seconds.
    pub e2e: Option<f64>,
}

impl Slo {
    /// Parses `ttft=900ms,itl=200ms,e2e=30s`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut slo = Self::default();
        for part in text.split(',').filter(|part| !part.is_empty()) {
            let (key, value) = part
                .split_once('=')
                .ok_or_else(|| format!("SLO '{part}' is not key=value"))?;
            let seconds = parse_duration(value)?;
            match key.trim() {
                "ttft" => slo.ttft = Some(seconds),
                "itl" | "tpot" => slo.itl = Some(seconds),
                "e2e" => slo.e2e = Some(seconds),
                other => return Err(format!("unknown SLO '{other}' (ttft, itl, e2e)")),
            }
        }
        Ok(slo)
    }

    pub fn is_set(&self) -> bool {
        self.ttft.is_some() || self.itl.is_some() || self.e2e.is_some()
    }

    /// Whether a completed request with these measures meets every SLO set.
    pub fn met(&self, ttft: Option<f64>, mean_itl: Option<f64>, e2e: f64) -> bool {
        let within = |limit: Option<f64>, value: Option<f64>| match (limit, value) {
            (None, _) => true,
            (Some(limit), Some(value)) => value <= limit,
            (Some(_), None) => false,
        };
        within(self.ttft, ttft)
            && within(self.itl, mean_itl.or(Some(0.0)))
            && within(self.e2e, Some(e2e))
    }
}

/// Parses `250ms`, `1.5s` or a bare number of seconds.
pub fn parse_duration(text: &str) -> Result<f64, String> {
    let text = text.trim();
    let (number, scale) = if let Some(ms) = text.strip_suffix("ms") {
        (ms, 1e-3)
    } else if let Some(s) = text.strip_suffix('s') {
        (s, 1.0)
    } else {
        (text, 1.0)
    };
    number
        .trim()
        .parse::<f64>()
        .map(|value| value * scale)
        .map_err(|_| format!("'{text}' is not a duration (e.g. 900ms, 1.5s)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_interpolate_like_numpy() {
        let samples: Vec<f64> = (1..=10).map(f64::from).collect();
        assert_eq!(percentile(&samples, 0.5), 5.5);
        assert!((percentile(&samples, 0.9) - 9.1).abs() < 1e-12);
        assert!((percentile(&samples, 0.99) - 9.91).abs() < 1e-12);
        assert_eq!(percentile(&samples, 0.0), 1.0);
        assert_eq!(percentile(&samples, 1.0), 10.0);
        assert_eq!(percentile(&[4.0], 0.95), 4.0);
    }

    #[test]
    fn summary_of_known_data() {
        let summary = Summary::of(&[3.0, 1.0, 2.0, 4.0, 100.0]);
        assert_eq!(summary.count, 5);
        assert_eq!(summary.mean, 22.0);
        assert_eq!(summary.p50, 3.0);
        assert_eq!(summary.max, 100.0);
        assert!((summary.p95 - 80.8).abs() < 1e-9);
        assert_eq!(Summary::of(&[]), Summary::default());
    }

    #[test]
    fn slo_parsing_and_checks() {
        let slo = Slo::parse("ttft=900ms,itl=0.2s").unwrap();
        assert_eq!(slo.ttft, Some(0.9));
        assert_eq!(slo.itl, Some(0.2));
        assert!(slo.met(Some(0.5), Some(0.1), 10.0));
        assert!(!slo.met(Some(1.0), Some(0.1), 10.0));
        assert!(!slo.met(Some(0.5), Some(0.3), 10.0));
        assert!(
            !slo.met(None, None, 1.0),
            "no first token misses a TTFT SLO"
        );
        assert!(Slo::parse("latency=1s").is_err());
        assert!(Slo::parse("ttft=fast").is_err());
    }
}
