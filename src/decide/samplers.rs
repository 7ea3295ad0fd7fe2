//! The stateful samplers behind `rate_limit` and `dynamic` policies. Each is
//! shared by every worker of an instance (limits hold per instance, as in
//! the OpenTelemetry Collector and Refinery), and every answer carries the
//! sample rate the kept trace stands for, so `sum(sample_rate)` stays an
//! honest estimate of the traffic before sampling.
//!
//! Both take the time as an argument, so tests drive them on a fake clock.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use rustc_hash::FxHashMap;

/// The key that traces share once `max_keys` distinct keys are tracked.
pub const OTHER_KEY: &str = "other";

/// Whether a call may change the sampler's state: `Peek` answers what would
/// happen, for `POST /admin/sampling/explain`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Decide,
    Peek,
}

/// What a sampler said about one trace.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Verdict {
    pub keep: bool,
    /// The probability the trace had of being kept, inverted: how many
    /// traces a kept one stands for.
    pub sample_rate: f64,
}

/// The hash bound under which a trace is kept at probability `p`.
pub fn bound(p: f64) -> u64 {
    if p >= 1.0 {
        u64::MAX
    } else if p <= 0.0 {
        0
    } else {
        (p * u64::MAX as f64) as u64
    }
}

/// Keeps at most `traces_per_sec` per key, with honest sample rates.
///
/// Each key has a token bucket (capacity one second of traffic) as the hard
/// limit, and keeps a trace with probability `limit / arrival rate`, the
/// arrival rate being the larger of the last seconds' moving average and
/// what this second has seen so far. The probability is fixed before the
/// trace's hash is compared, so a kept trace stands for exactly 1/p traces
/// (Horvitz–Thompson); only while the bucket itself cuts (a burst the
/// average has not caught up with) do the counts run low.
pub struct RateLimiter {
    limit: f64,
    max_keys: usize,
    keys: Mutex<FxHashMap<String, Bucket>>,
}

#[derive(Clone, Copy)]
struct Bucket {
    tokens: f64,
    refilled: Instant,
    second_start: Instant,
    seen_this_second: u64,
    /// Arrivals per second, a moving average over past seconds.
    rate: f64,
    last_used: Instant,
}

/// Keys unused this long are forgotten.
const IDLE_KEY: Duration = Duration::from_secs(300);

impl RateLimiter {
    pub fn new(traces_per_sec: f64, max_keys: usize) -> Self {
        Self {
            limit: traces_per_sec,
            max_keys,
            keys: Mutex::new(FxHashMap::default()),
        }
    }

    pub fn decide(&self, key: &str, hash: u64, now: Instant, mode: Mode) -> Verdict {
        let mut keys = self.keys.lock();
        let limit = self.limit;
        let fresh = || Bucket {
            tokens: limit,
            refilled: now,
            second_start: now,
            seen_this_second: 0,
            rate: 0.0,
            last_used: now,
        };
        if mode == Mode::Peek {
            let key = admitted(&keys, key, self.max_keys);
            let mut b = keys.get(key).copied().unwrap_or_else(fresh);
            b.advance(limit, now);
            b.seen_this_second += 1;
            return b.verdict(limit, hash);
        }
        if !keys.contains_key(key) && keys.len() >= self.max_keys {
            keys.retain(|_, b| now.duration_since(b.last_used) <= IDLE_KEY);
        }
        let key = admitted(&keys, key, self.max_keys);
        let b = match keys.get_mut(key) {
            Some(b) => b,
            None => keys.entry(key.to_string()).or_insert_with(fresh),
        };
        b.advance(limit, now);
        b.seen_this_second += 1;
        b.last_used = now;
        let v = b.verdict(limit, hash);
        if v.keep {
            b.tokens -= 1.0;
        }
        v
    }
}

impl Bucket {
    /// Refills the tokens and closes the seconds that have passed.
    fn advance(&mut self, limit: f64, now: Instant) {
        let since = now.saturating_duration_since(self.refilled).as_secs_f64();
        self.tokens = (self.tokens + since * limit).min(limit);
        self.refilled = now;
        let window = now
            .saturating_duration_since(self.second_start)
            .as_secs_f64();
        if window >= 1.0 {
            let observed = self.seen_this_second as f64 / window;
            self.rate = if self.rate == 0.0 {
                observed
            } else {
                0.5 * self.rate + 0.5 * observed
            };
            self.seen_this_second = 0;
            self.second_start = now;
        }
    }

    fn verdict(&self, limit: f64, hash: u64) -> Verdict {
        let arrivals = self.rate.max(self.seen_this_second as f64);
        let p = if arrivals <= limit {
            1.0
        } else {
            limit / arrivals
        };
        Verdict {
            keep: hash < bound(p) && self.tokens >= 1.0,
            sample_rate: 1.0 / p,
        }
    }
}

/// Refinery's EMA dynamic sampler: per adjustment interval it counts traces
/// per key, folds the counts into an exponential moving average, and gives
/// each key a whole-number sample rate so that rare keys are kept whole and
/// frequent ones are sampled down, the total meeting the goal rate. A key
/// not seen before the last adjustment is kept whole.
pub struct DynamicSampler {
    /// The goal as Refinery states it: keep one in `goal` on average.
    goal: f64,
    interval: Duration,
    max_keys: usize,
    state: Mutex<DynamicState>,
}

struct DynamicState {
    window_start: Option<Instant>,
    counts: FxHashMap<String, f64>,
    averages: HashMap<String, f64>,
    rates: FxHashMap<String, u64>,
}

/// Refinery's defaults: each interval weighs half, and a key whose average
/// falls below half a trace per interval is forgotten.
const EMA_WEIGHT: f64 = 0.5;
const AGE_OUT: f64 = 0.5;

impl DynamicSampler {
    pub fn new(goal_rate: f64, interval: Duration, max_keys: usize) -> Self {
        Self {
            goal: 1.0 / goal_rate,
            interval,
            max_keys,
            state: Mutex::new(DynamicState {
                window_start: None,
                counts: FxHashMap::default(),
                averages: HashMap::new(),
                rates: FxHashMap::default(),
            }),
        }
    }

    pub fn decide(&self, key: &str, hash: u64, now: Instant, mode: Mode) -> Verdict {
        let mut s = self.state.lock();
        let start = *s.window_start.get_or_insert(now);
        if mode == Mode::Decide && now.saturating_duration_since(start) >= self.interval {
            s.adjust(self.goal);
            s.window_start = Some(now);
        }
        let key = if s.counts.contains_key(key)
            || s.averages.contains_key(key)
            || s.counts.len() < self.max_keys
        {
            key
        } else {
            OTHER_KEY
        };
        let rate = s.rates.get(key).copied().unwrap_or(1).max(1);
        if mode == Mode::Decide {
            match s.counts.get_mut(key) {
                Some(n) => *n += 1.0,
                None => {
                    s.counts.insert(key.to_string(), 1.0);
                }
            }
        }
        Verdict {
            keep: hash < bound(1.0 / rate as f64),
            sample_rate: rate as f64,
        }
    }

    /// The sample rate a key has now (1 for a key not yet adjusted).
    pub fn rate_of(&self, key: &str) -> u64 {
        self.state.lock().rates.get(key).copied().unwrap_or(1)
    }
}

impl DynamicState {
    fn adjust(&mut self, goal: f64) {
        let counts = std::mem::take(&mut self.counts);
        for (key, avg) in self.averages.iter_mut() {
            let count = counts.get(key).copied().unwrap_or(0.0);
            *avg = EMA_WEIGHT * count + (1.0 - EMA_WEIGHT) * *avg;
        }
        for (key, count) in counts {
            self.averages.entry(key).or_insert(EMA_WEIGHT * count);
        }
        self.averages.retain(|_, avg| *avg >= AGE_OUT);
        self.rates = sample_rates(goal, &self.averages).into_iter().collect();
    }
}

/// dynsampler-go's `calculateSampleRates`: each key's share of the goal is
/// proportional to the log of its count; what a rare key does not use is
/// passed on to the keys after it, which go in a fixed order.
pub fn sample_rates(goal: f64, counts: &HashMap<String, f64>) -> HashMap<String, u64> {
    let mut keys: Vec<&String> = counts.keys().collect();
    keys.sort();
    let sum: f64 = counts.values().sum();
    let goal_count = sum / goal;
    let log_sum: f64 = counts.values().map(|c| c.max(1.0).log10()).sum();
    let goal_ratio = goal_count / log_sum;
    let mut rates = HashMap::with_capacity(keys.len());
    let mut remaining = keys.len() as f64;
    let mut extra = 0.0;
    for key in keys {
        let count = counts[key].max(1.0);
        let mut goal_for_key = (count.log10() * goal_ratio).max(1.0);
        if !goal_for_key.is_finite() {
            goal_for_key = count;
        }
        let extra_for_key = extra / remaining;
        goal_for_key += extra_for_key;
        extra -= extra_for_key;
        remaining -= 1.0;
        let rate = if count <= goal_for_key {
            1
        } else {
            (count / goal_for_key).ceil().max(1.0) as u64
        };
        extra += goal_for_key - count / rate as f64;
        rates.insert(key.clone(), rate);
    }
    rates
}

/// The key to count under: itself when known or when there is room, else
/// [`OTHER_KEY`].
fn admitted<'k, B>(keys: &FxHashMap<String, B>, key: &'k str, max_keys: usize) -> &'k str {
    if keys.contains_key(key) || keys.len() < max_keys {
        key
    } else {
        OTHER_KEY
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::trace_hash;

    fn hash(n: u64) -> u64 {
        let mut id = [0u8; 16];
        id[8..].copy_from_slice(&n.to_be_bytes());
        trace_hash(&id)
    }

    /// Offers `per_sec` traces a second for `secs` seconds, evenly spaced.
    fn offer(
        r: &RateLimiter,
        key: &str,
        per_sec: u64,
        secs: u64,
        t0: Instant,
        first: u64,
    ) -> (u64, f64) {
        let (mut kept, mut weight) = (0, 0.0);
        for i in 0..per_sec * secs {
            let at = t0 + Duration::from_secs_f64(i as f64 / per_sec as f64);
            let v = r.decide(key, hash(first + i), at, Mode::Decide);
            if v.keep {
                kept += 1;
                weight += v.sample_rate;
            }
        }
        (kept, weight)
    }

    #[test]
    fn rate_limit_holds_within_ten_percent_under_ten_times_the_load() {
        let r = RateLimiter::new(100.0, 10);
        let t0 = Instant::now();
        // Warm-up second, then 60 s at ten times the limit.
        offer(&r, "k", 1000, 1, t0, 0);
        let (kept, weight) = offer(&r, "k", 1000, 60, t0 + Duration::from_secs(1), 1_000_000);
        let per_sec = kept as f64 / 60.0;
        let offered = 60_000.0;
        eprintln!("rate_limit: {per_sec:.1}/s kept at a limit of 100/s under 1000/s; sum of sample rates {weight:.0} for {offered}");
        assert!(
            (90.0..=110.0).contains(&per_sec),
            "kept {per_sec}/s at a limit of 100/s"
        );
        assert!(
            (weight - offered).abs() / offered < 0.1,
            "sum of sample rates {weight} for {offered}"
        );
    }

    #[test]
    fn rate_limit_keeps_everything_under_the_limit_and_is_per_key() {
        let r = RateLimiter::new(100.0, 10);
        let t0 = Instant::now();
        let (kept, weight) = offer(&r, "quiet", 50, 10, t0, 0);
        assert_eq!(kept, 500);
        assert_eq!(weight, 500.0);
        let (busy, _) = offer(&r, "busy", 1000, 10, t0, 10_000);
        assert!(busy <= 100 * 10 + 100, "busy key kept {busy}");
        // Peeking changes nothing.
        let before = r.decide("quiet", hash(1), t0 + Duration::from_secs(10), Mode::Peek);
        let again = r.decide("quiet", hash(1), t0 + Duration::from_secs(10), Mode::Peek);
        assert_eq!(before, again);
    }

    #[test]
    fn rate_limit_caps_its_keys() {
        let r = RateLimiter::new(1.0, 2);
        let t0 = Instant::now();
        for k in ["a", "b", "c", "d"] {
            r.decide(k, 0, t0, Mode::Decide);
        }
        let keys = r.keys.lock();
        assert_eq!(
            keys.len(),
            3,
            "two keys and `other`: {:?}",
            keys.keys().collect::<Vec<_>>()
        );
        assert!(keys.contains_key(OTHER_KEY));
    }

    #[test]
    fn refinerys_rates_keep_rare_keys_and_meet_the_goal() {
        let counts: HashMap<String, f64> = [
            ("frequent".to_string(), 9900.0),
            ("rare".to_string(), 100.0),
        ]
        .into_iter()
        .collect();
        let rates = sample_rates(10.0, &counts);
        // Keys go in sorted order: `frequent` takes its log share (666 of
        // the goal of 1,000) before `rare` can hand on what it leaves.
        assert_eq!(rates["rare"], 1);
        assert_eq!(rates["frequent"], 15);
        let kept: f64 = counts.iter().map(|(k, c)| c / rates[k] as f64).sum();
        assert!(
            (700.0..=1000.0).contains(&kept),
            "kept {kept} of 10000 at goal 1/10"
        );
    }

    #[test]
    fn dynamic_keeps_a_rare_key_at_five_times_the_rate_of_a_frequent_one() {
        let d = DynamicSampler::new(0.1, Duration::from_secs(15), 100);
        let t0 = Instant::now();
        let mut seen: HashMap<&str, (f64, f64, f64)> = HashMap::new();
        // 2,000 traces/s for 5 minutes; 1% of them carry the rare key.
        // Counted after the first two intervals, which keep everything new.
        for i in 0..600_000u64 {
            let key = if i % 100 == 0 { "rare" } else { "frequent" };
            let at = t0 + Duration::from_secs_f64(i as f64 / 2000.0);
            let v = d.decide(key, hash(i), at, Mode::Decide);
            if i < 60_000 {
                continue;
            }
            let e = seen.entry(key).or_default();
            e.0 += 1.0;
            if v.keep {
                e.1 += 1.0;
                e.2 += v.sample_rate;
            }
        }
        let kept_rate = |k: &str| seen[k].1 / seen[k].0;
        eprintln!(
            "dynamic: rare key kept {:.3}, frequent key {:.3} ({:.1}×)",
            kept_rate("rare"),
            kept_rate("frequent"),
            kept_rate("rare") / kept_rate("frequent")
        );
        assert!(
            kept_rate("rare") >= 5.0 * kept_rate("frequent"),
            "rare kept {:.3}, frequent {:.3}",
            kept_rate("rare"),
            kept_rate("frequent")
        );
        let total: f64 = seen.values().map(|e| e.0).sum();
        let kept: f64 = seen.values().map(|e| e.1).sum();
        assert!(
            kept / total < 0.15,
            "average kept {:.3} for a goal of 0.1",
            kept / total
        );
        for (k, e) in &seen {
            assert!(
                (e.2 - e.0).abs() / e.0 < 0.05,
                "{k}: sum of sample rates {} for {} traces",
                e.2,
                e.0
            );
        }
        assert_eq!(d.rate_of("rare"), 1);
        assert!(d.rate_of("frequent") > 5);
    }
}
