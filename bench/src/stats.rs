//! Percentiles of measured durations.

use std::time::Duration;

pub struct Summary {
    pub median: Duration,
    pub p99: Duration,
    pub mean: Duration,
}

pub fn summarize(mut samples: Vec<Duration>) -> Summary {
    assert!(!samples.is_empty(), "no samples");
    samples.sort();
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
    let total: Duration = samples.iter().sum();
    Summary { median: at(0.5), p99: at(0.99), mean: total / samples.len() as u32 }
}

pub fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles() {
        let s = summarize((1..=100).map(Duration::from_micros).collect());
        assert_eq!(s.median, Duration::from_micros(51));
        assert_eq!(s.p99, Duration::from_micros(99));
        assert_eq!(s.mean, Duration::from_nanos(50_500));
    }
}
