//! Stream time: how far the selector has read into each partition, by the
//! timestamps of the Kafka messages, so that trace completion runs as fast
//! as a backlog is read and, on live traffic, as the wall clock.
//!
//! Each partition's clock is the newest message timestamp read from it. A
//! timestamp ahead of the wall clock (a producer whose clock runs fast) is
//! clamped to the moment the message was read on a live partition; on a
//! partition that lags (a backlog), it does not move the clock at all, so
//! one bad timestamp cannot decide every open trace of that partition. A
//! partition that has delivered nothing for [`IDLE_AFTER`] while the
//! consumer is not paused, *and* that librdkafka's statistics report read
//! to its end (consumer lag 0, measured after the last delivery), has
//! nothing left to read: it is *idle*, and its clock is the wall clock, as
//! Flink's source idleness does. Silence alone is not enough: during a
//! backlog the selector itself can stop reading for seconds (a full shard
//! channel, a stalled Redis, a slow dead-letter send), and jumping to the
//! wall clock then would decide every open trace of the backlog at once.
//! Silence alone makes a partition idle only after [`IDLE_WITH_LAG_AFTER`],
//! or while it has delivered nothing and its lag is unknown (an empty
//! partition before the first statistics). A partition whose newest timestamp is within
//! [`LIVE_WITHIN`] of the wall clock is live, and runs on the wall clock too:
//! its messages come as they are produced, and the broker's fetch batching
//! (up to `fetch.wait.max.ms`) must not hold the watermark back by that much
//! on live traffic. The watermark is the minimum over the
//! assigned partitions, so a trace whose spans are spread over partitions is
//! complete only when every partition has passed it. It counts what the
//! workers have taken, not what the consumer has read: a partition whose
//! messages are still in the workers' channels counts only up to the oldest
//! of them, and is not idle.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::model::Lease;

/// How long a partition may deliver nothing before it counts as idle.
pub const IDLE_AFTER: Duration = Duration::from_secs(1);
/// How long a partition may deliver nothing, while not paused, before it
/// counts as idle whatever its reported lag: a lag that never reaches 0 on a
/// quiet partition (a transactional producer's last control record, a
/// broker whose high watermark runs one ahead) must not hold its open
/// traces forever. Longer than any stall of the selector's own (a Redis
/// call's timeout, a dead-letter send).
pub const IDLE_WITH_LAG_AFTER: Duration = Duration::from_secs(15);
/// How close to the wall clock a partition's newest timestamp makes it live.
pub const LIVE_WITHIN: Duration = Duration::from_secs(1);

#[derive(Debug)]
struct PartitionClock {
    epoch: u32,
    /// The newest (clamped) message timestamp, in Unix milliseconds.
    newest_ms: Option<i64>,
    /// When the partition last delivered a message, or was assigned.
    last_delivery: Instant,
    /// The consumer lag librdkafka's statistics last reported, and when.
    lag: Option<(i64, Instant)>,
}

impl PartitionClock {
    /// A lease's clock, before its first message.
    fn start(epoch: u32, now: Instant) -> Self {
        Self {
            epoch,
            newest_ms: None,
            last_delivery: now,
            lag: None,
        }
    }
}

#[derive(Debug, Default)]
struct State {
    partitions: HashMap<i32, PartitionClock>,
    /// While the consumer is paused no partition delivers, and none of them
    /// is idle for that: their clocks stand still.
    paused_since: Option<Instant>,
}

/// Shared by the consumer, which moves the clocks, and the deciding workers,
/// which read the watermark.
#[derive(Debug, Default)]
pub struct StreamClock {
    state: Mutex<State>,
}

impl StreamClock {
    /// Records a message read under `lease` with timestamp `ts_ms` (None when
    /// the message has none), read at wall time `now_ms`. Returns the stream
    /// time the message is seen at: its partition's clock after the message.
    pub fn observe(&self, lease: Lease, ts_ms: Option<i64>, now_ms: i64) -> i64 {
        let now = Instant::now();
        let mut state = self.state.lock();
        let neighbours = state
            .partitions
            .iter()
            .filter(|(p, _)| **p != lease.partition)
            .filter_map(|(_, c)| c.newest_ms)
            .max();
        let clock = state
            .partitions
            .entry(lease.partition)
            .or_insert_with(|| PartitionClock::start(lease.epoch, now));
        if clock.epoch != lease.epoch {
            *clock = PartitionClock::start(lease.epoch, now);
        }
        clock.last_delivery = now;
        let ts = match ts_ms.filter(|t| *t > 0) {
            None => now_ms,
            Some(t) if t <= now_ms => t,
            // From the future: the read time on a live partition; on one
            // that lags, no later than where it or its neighbours are.
            Some(_) => {
                let live_since = now_ms - LIVE_WITHIN.as_millis() as i64;
                match clock.newest_ms {
                    Some(n) if n < live_since => n,
                    None => neighbours.filter(|n| *n < live_since).unwrap_or(now_ms),
                    Some(_) => now_ms,
                }
            }
        };
        let newest = clock.newest_ms.map_or(ts, |n| n.max(ts));
        clock.newest_ms = Some(newest);
        newest
    }

    /// Starts the clocks of newly assigned partitions: until they deliver,
    /// or turn idle, they hold the watermark back.
    pub fn assign(&self, leases: &[Lease]) {
        let now = Instant::now();
        let mut state = self.state.lock();
        for lease in leases {
            state
                .partitions
                .insert(lease.partition, PartitionClock::start(lease.epoch, now));
        }
    }

    /// Forgets revoked partitions.
    pub fn revoke(&self, partitions: &[i32]) {
        let mut state = self.state.lock();
        for p in partitions {
            state.partitions.remove(p);
        }
    }

    /// The consumer lag of `partition` as librdkafka's statistics report
    /// it (`consumer_lag`: the high watermark less the next offset the
    /// application reads); negative when unknown.
    pub fn report_lag(&self, partition: i32, lag: i64) {
        let mut state = self.state.lock();
        if let Some(clock) = state.partitions.get_mut(&partition) {
            clock.lag = (lag >= 0).then(|| (lag, Instant::now()));
        }
    }

    /// The consumer paused (true) or resumed (false) its partitions. Time
    /// spent paused does not count towards idleness.
    pub fn set_paused(&self, paused: bool) {
        let mut state = self.state.lock();
        match (paused, state.paused_since) {
            (true, None) => state.paused_since = Some(Instant::now()),
            (false, Some(since)) => {
                let pause = since.elapsed();
                for clock in state.partitions.values_mut() {
                    clock.last_delivery += pause;
                }
                state.paused_since = None;
            }
            _ => {}
        }
    }

    /// The watermark at wall time `now_ms`: the minimum of the partition
    /// clocks, or `now_ms` when no partition is assigned. `None` while a
    /// partition has neither delivered nor turned idle yet.
    ///
    /// `in_flight` names the partitions with messages read whose spans
    /// have not reached a trace buffer, each with the stream time the
    /// oldest of them was read at ([`super::OffsetTracker::in_flight`]).
    /// Such a partition counts only that far, and is never idle: with the
    /// workers behind the consumer (a stalled Redis), its clock would
    /// otherwise decide open traces whose next spans, already read, are
    /// still on their way to them.
    pub fn watermark(&self, now_ms: i64, in_flight: &[(i32, i64)]) -> Option<i64> {
        let state = self.state.lock();
        // Silence while paused does not count: measure up to the pause.
        let until = state.paused_since.unwrap_or_else(Instant::now);
        let mut min = now_ms;
        for (partition, clock) in &state.partitions {
            let oldest_in_flight = in_flight
                .iter()
                .find(|(p, _)| p == partition)
                .map(|(_, seen_ms)| *seen_ms);
            let silence = until.saturating_duration_since(clock.last_delivery);
            let silent = silence >= IDLE_AFTER && oldest_in_flight.is_none();
            let read_to_end = silence >= IDLE_WITH_LAG_AFTER
                || match clock.lag {
                    // Unknown: only a partition that has delivered nothing
                    // may be taken for empty on silence alone.
                    None => clock.newest_ms.is_none(),
                    Some((lag, at)) => lag == 0 && at > clock.last_delivery,
                };
            let idle = silent && read_to_end;
            let live_since = now_ms - LIVE_WITHIN.as_millis() as i64;
            let at = match (idle, clock.newest_ms) {
                (true, _) => now_ms,
                (false, Some(newest)) if newest >= live_since => now_ms,
                (false, Some(newest)) => newest,
                (false, None) => return None,
            };
            let at = oldest_in_flight.map_or(at, |oldest| at.min(oldest));
            min = min.min(at);
        }
        Some(min)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(partition: i32) -> Lease {
        Lease {
            partition,
            epoch: 1,
        }
    }

    #[test]
    fn the_watermark_is_the_slowest_partition() {
        let c = StreamClock::default();
        c.assign(&[lease(0), lease(1)]);
        assert_eq!(
            c.watermark(10_000, &[]),
            None,
            "partition 1 has not delivered yet"
        );
        assert_eq!(c.observe(lease(0), Some(5_000), 10_000), 5_000);
        assert_eq!(c.observe(lease(1), Some(2_000), 10_000), 2_000);
        assert_eq!(c.watermark(10_000, &[]), Some(2_000));
        // Clocks never go back; a later, older timestamp is seen at the clock.
        assert_eq!(c.observe(lease(1), Some(1_000), 10_000), 2_000);
        assert_eq!(c.observe(lease(1), Some(7_000), 10_000), 7_000);
        assert_eq!(c.watermark(10_000, &[]), Some(5_000));
    }

    #[test]
    fn a_partition_close_to_the_wall_clock_is_live() {
        let c = StreamClock::default();
        c.assign(&[lease(0), lease(1)]);
        c.observe(lease(0), Some(9_500), 10_000);
        c.observe(lease(1), Some(9_200), 10_000);
        assert_eq!(
            c.watermark(10_000, &[]),
            Some(10_000),
            "both within a second of the wall clock"
        );
        assert_eq!(
            c.watermark(10_400, &[]),
            Some(9_200),
            "partition 1 is 1.2 s behind now"
        );
    }

    #[test]
    fn timestamps_from_the_future_are_clamped_to_the_read_time() {
        let c = StreamClock::default();
        assert_eq!(c.observe(lease(0), Some(99_000), 10_000), 10_000);
        assert_eq!(
            c.observe(lease(0), None, 11_000),
            11_000,
            "no timestamp: the read time"
        );
    }

    #[test]
    fn a_timestamp_from_the_future_does_not_move_a_lagging_partition() {
        let c = StreamClock::default();
        c.assign(&[lease(0), lease(1)]);
        // A backlog: both partitions an hour behind the wall clock.
        let now = 3_600_000 + 10_000;
        assert_eq!(c.observe(lease(0), Some(10_000), now), 10_000);
        assert_eq!(
            c.observe(lease(0), Some(now + 60_000), now),
            10_000,
            "stays where it was"
        );
        // A partition's first message from the future starts no later than its neighbours.
        assert_eq!(c.observe(lease(1), Some(now + 60_000), now), 10_000);
        assert_eq!(c.watermark(now, &[]), Some(10_000));
        assert_eq!(
            c.observe(lease(0), Some(12_000), now),
            12_000,
            "a sane timestamp moves it on"
        );
    }

    #[test]
    fn a_lag_that_never_reaches_zero_yields_to_long_silence() {
        let c = StreamClock::default();
        c.assign(&[lease(0)]);
        c.observe(lease(0), Some(5_000), 100_000);
        // One control record past the last data record: a lag of 1 forever.
        c.report_lag(0, 1);
        std::thread::sleep(IDLE_AFTER + Duration::from_millis(50));
        assert_eq!(c.watermark(100_000, &[]), Some(5_000), "held at first");
        quiet_for_longer_than_a_stall(&c, 0);
        assert_eq!(
            c.watermark(100_000, &[]),
            Some(100_000),
            "quiet for longer than any stall of ours: idle"
        );
    }

    /// Moves partition `p`'s last delivery back by [`IDLE_WITH_LAG_AFTER`].
    fn quiet_for_longer_than_a_stall(c: &StreamClock, p: i32) {
        let mut state = c.state.lock();
        let clock = state.partitions.get_mut(&p).expect("assigned");
        clock.last_delivery -= IDLE_WITH_LAG_AFTER;
    }

    #[test]
    fn the_watermark_waits_for_messages_still_on_their_way_to_the_workers() {
        let c = StreamClock::default();
        c.assign(&[lease(0), lease(1)]);
        // The consumer read both partitions to 60 s while the workers,
        // stalled, have not yet taken what partition 0 delivered from 20 s on.
        c.observe(lease(0), Some(60_000), 100_000);
        c.observe(lease(1), Some(60_000), 100_000);
        assert_eq!(c.watermark(100_000, &[]), Some(60_000));
        assert_eq!(
            c.watermark(100_000, &[(0, 20_000), (1, 59_000)]),
            Some(20_000),
            "a trace of partition 0 last seen at 0 s is not 30 s idle yet"
        );
    }

    #[test]
    fn a_partition_read_to_its_end_is_not_idle_while_its_spans_are_on_their_way() {
        let c = StreamClock::default();
        c.assign(&[lease(0)]);
        c.observe(lease(0), Some(5_000), 100_000);
        // Read to its end, but the workers are behind (a stalled Redis):
        // their channels still hold the partition's last spans.
        c.report_lag(0, 0);
        std::thread::sleep(IDLE_AFTER + Duration::from_millis(50));
        assert_eq!(
            c.watermark(100_000, &[(0, 5_000)]),
            Some(5_000),
            "its last spans have not reached a trace buffer: not idle"
        );
        quiet_for_longer_than_a_stall(&c, 0);
        assert_eq!(
            c.watermark(100_000, &[(0, 5_000)]),
            Some(5_000),
            "however long"
        );
        assert_eq!(
            c.watermark(100_000, &[]),
            Some(100_000),
            "once they have: idle"
        );
    }

    #[test]
    fn silence_with_messages_left_to_read_is_not_idleness() {
        let c = StreamClock::default();
        c.assign(&[lease(0)]);
        c.observe(lease(0), Some(5_000), 100_000);
        // The selector stopped reading (a stalled stage) with a backlog left.
        c.report_lag(0, 4_000);
        std::thread::sleep(IDLE_AFTER + Duration::from_millis(50));
        assert_eq!(
            c.watermark(100_000, &[]),
            Some(5_000),
            "silent, but 4,000 messages behind: not idle"
        );
        c.report_lag(0, 0);
        assert_eq!(
            c.watermark(100_000, &[]),
            Some(100_000),
            "read to its end: idle"
        );
        // A lag of zero measured before the last delivery says nothing.
        c.observe(lease(0), Some(6_000), 100_000);
        std::thread::sleep(IDLE_AFTER + Duration::from_millis(50));
        assert_eq!(c.watermark(100_000, &[]), Some(6_000));
        c.report_lag(0, -1);
        assert_eq!(
            c.watermark(100_000, &[]),
            Some(6_000),
            "unknown lag after deliveries: silence alone is not enough"
        );
    }

    #[test]
    fn only_a_partition_that_delivered_nothing_is_idle_on_silence_with_an_unknown_lag() {
        let c = StreamClock::default();
        c.assign(&[lease(0), lease(1)]);
        // Partition 0 delivers; partition 1 waits behind it (or is empty),
        // and no statistics have come yet.
        c.observe(lease(0), Some(5_000), 100_000);
        std::thread::sleep(IDLE_AFTER + Duration::from_millis(50));
        assert_eq!(
            c.watermark(100_000, &[]),
            Some(5_000),
            "a selector stalled mid-backlog: partition 0 is not idle, partition 1 is"
        );
        c.report_lag(0, 0);
        assert_eq!(c.watermark(100_000, &[]), Some(100_000));
    }

    #[test]
    fn an_idle_partition_runs_on_the_wall_clock_unless_paused() {
        let c = StreamClock::default();
        c.assign(&[lease(0), lease(1)]);
        c.observe(lease(0), Some(5_000), 10_000);
        c.set_paused(true);
        std::thread::sleep(IDLE_AFTER + Duration::from_millis(50));
        assert_eq!(
            c.watermark(20_000, &[]),
            None,
            "paused: partition 1 is not idle, only held back"
        );
        c.set_paused(false);
        assert_eq!(
            c.watermark(20_000, &[]),
            None,
            "the pause does not count towards idleness"
        );
        std::thread::sleep(IDLE_AFTER + Duration::from_millis(50));
        c.report_lag(0, 0);
        assert_eq!(
            c.watermark(20_000, &[]),
            Some(20_000),
            "both partitions are idle now"
        );
        c.revoke(&[0, 1]);
        assert_eq!(c.watermark(30_000, &[]), Some(30_000));
    }
}
