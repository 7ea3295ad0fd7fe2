//! Where the second read of one partition stands: the offsets kept traces
//! still need from it, where its consumer delivers next, and how far back a
//! new consumer must start. Pure bookkeeping, no I/O, so the reader's
//! choices (decode, skip, start a consumer elsewhere, give up) are tested
//! without a broker.

use std::collections::{BTreeSet, VecDeque};
use std::time::{Duration, Instant};

/// From how many unneeded messages before the next needed one a new
/// consumer, assigned there, is cheaper than reading through them. Reading
/// through costs only bytes (skipped messages are not decoded); a new
/// consumer costs a connection and a fetch round trip.
pub const MAX_READ_THROUGH: i64 = 512;

/// A rewind past which a needed message that never comes counts as gone.
const MAX_REWIND: i64 = 1 << 21;

/// A moment on both clocks the read waits by: wall time, and the stream
/// time the workers decide by, where known.
#[derive(Debug, Clone, Copy)]
pub struct Moment {
    pub wall: Instant,
    pub stream_ms: Option<i64>,
}

impl Moment {
    /// Whether `delay` has passed since `self` on either clock. On a
    /// backlog stream time runs far ahead of the wall: the traces the wait
    /// is for are decided within the delay of stream time, however little
    /// wall time that takes. Live, the two run together.
    fn ripe(self, now: Moment, delay: Duration) -> bool {
        let stream = match (self.stream_ms, now.stream_ms) {
            (Some(at), Some(now)) => now.saturating_sub(at) >= delay.as_millis() as i64,
            _ => false,
        };
        stream || self.wall + delay <= now.wall
    }
}

/// One partition's read.
#[derive(Debug)]
pub struct Cursor {
    /// Needed offsets not read yet. Kept traces are decided roughly in the
    /// order of their messages, so most come at or after `position`, and
    /// the consumer reads on without a new start.
    needed: BTreeSet<i64>,
    /// Needed offsets not ripe yet, in the order they came.
    arrivals: VecDeque<(Moment, i64)>,
    /// The highest needed offset that came at least `buffer.reread_delay_ms`
    /// ago, of wall or stream time: the read goes this far. A trace decided
    /// a moment later may need a message before the newest ones (its first
    /// spans came earlier); waiting lets it ask before the read has passed
    /// that message, so the consumer rarely has to go back.
    ripe: i64,
    /// The offset the running consumer delivers next; `None` when there is
    /// none, or it must not be read on (it passed a needed message).
    position: Option<i64>,
    /// How far before the next needed offset a new consumer starts: a
    /// broker may serve a fetch from the first record batch that begins at
    /// or after the offset asked for rather than the one holding it (Tansu
    /// does), which passes over a message in the middle of a batch. Grows
    /// eightfold each time that happens, and halves each time a start
    /// reaches its offset.
    rewind: i64,
    /// The needed offset the running consumer was started for, until it
    /// is delivered.
    aim: Option<i64>,
    /// The partition's low watermark, where known: nothing below is asked.
    low: i64,
}

/// What a delivered message is to the read.
#[derive(Debug, PartialEq, Eq)]
pub struct Delivered {
    /// Needed: decode it and give out its spans.
    pub decode: bool,
    /// It came after a needed offset that was not delivered: the consumer
    /// must start again further back.
    pub passed: bool,
}

impl Default for Cursor {
    fn default() -> Self {
        Self {
            needed: BTreeSet::new(),
            arrivals: VecDeque::new(),
            ripe: -1,
            position: None,
            rewind: 0,
            aim: None,
            low: 0,
        }
    }
}

impl Cursor {
    /// Records a needed offset, asked for at `at`. Returns false when it
    /// is below the known low watermark: gone from the topic.
    pub fn need(&mut self, offset: i64, at: Moment) -> bool {
        if offset < self.low {
            return false;
        }
        self.needed.insert(offset);
        self.arrivals.push_back((at, offset));
        true
    }

    /// Lets the read go as far as the needed offsets that came `delay`
    /// before `now`, of wall or stream time. Returns when the next one
    /// ripens by the wall clock, if any is waiting (stream time may ripen
    /// it sooner).
    pub fn ripen(&mut self, now: Moment, delay: Duration) -> Option<Instant> {
        while let Some(&(at, offset)) = self.arrivals.front() {
            if !at.ripe(now, delay) {
                return Some(at.wall + delay);
            }
            self.ripe = self.ripe.max(offset);
            self.arrivals.pop_front();
        }
        None
    }

    /// Whether the next need to ripen may ripen by stream time: the reader
    /// then looks at stream time again before its wall time comes.
    pub fn waits_on_stream(&self) -> bool {
        self.arrivals
            .front()
            .is_some_and(|(at, _)| at.stream_ms.is_some())
    }

    /// Nothing needed, or nothing needed is ripe.
    pub fn is_idle(&self) -> bool {
        self.next_needed().is_none_or(|next| next > self.ripe)
    }

    /// Whether any needed offset is waiting, ripe or not.
    pub fn is_empty(&self) -> bool {
        self.needed.is_empty()
    }

    pub fn next_needed(&self) -> Option<i64> {
        self.needed.first().copied()
    }

    /// Where a new consumer must start, when the running one (if any)
    /// cannot serve the next needed offset, ripe: it is behind the
    /// consumer, or more than [`MAX_READ_THROUGH`] ahead of it.
    ///
    /// A new consumer starts the rewind before the next needed offset, so
    /// reading through that much is what a start would cost anyway: it
    /// counts towards the gap, or a start that rewound further than
    /// [`MAX_READ_THROUGH`] would be replaced after its first message, and
    /// so on for ever.
    pub fn restart_at(&self) -> Option<i64> {
        let next = self.next_needed().filter(|n| *n <= self.ripe)?;
        match self.position {
            Some(p) if p <= next && next - p <= MAX_READ_THROUGH + self.rewind => None,
            _ => Some((next - self.rewind).max(self.low).min(next)),
        }
    }

    /// A consumer was started at `offset`, for the next needed offset.
    pub fn started(&mut self, offset: i64) {
        self.position = Some(offset);
        self.aim = self.next_needed();
    }

    /// The consumer was closed.
    pub fn stopped(&mut self) {
        self.position = None;
    }

    pub fn is_reading(&self) -> bool {
        self.position.is_some()
    }

    /// Takes in a delivered message. One below the position (prefetched
    /// before a new start) is skipped and moves nothing.
    pub fn on_message(&mut self, offset: i64) -> Delivered {
        if self.position.is_some_and(|p| offset < p) {
            return Delivered {
                decode: false,
                passed: false,
            };
        }
        let passed = self.next_needed().is_some_and(|next| next < offset);
        let decode = self.needed.remove(&offset);
        self.position = Some(offset + 1);
        if !passed && self.aim.is_some_and(|aim| aim <= offset) {
            // The start reached what it was for: the rewind was enough,
            // perhaps more than enough. Halving it lets one large record
            // batch's rewind fade rather than cost every later start.
            self.aim = None;
            self.rewind /= 2;
        }
        Delivered { decode, passed }
    }

    /// The consumer came past the next needed offset without delivering
    /// it, or a new one delivered nothing: the next start is further back.
    /// Returns the needed offsets given up as gone (after the widest
    /// rewind).
    pub fn passed(&mut self) -> Vec<i64> {
        self.position = None;
        self.aim = None;
        self.rewind = (self.rewind * 8).max(8);
        if self.rewind <= MAX_REWIND {
            return Vec::new();
        }
        self.rewind = 0;
        match self.next_needed() {
            Some(next) => self.gone_below(next + 1),
            None => Vec::new(),
        }
    }

    /// Records the partition's low watermark and gives up on the needed
    /// offsets below it; returns them.
    pub fn set_low(&mut self, low: i64) -> Vec<i64> {
        self.low = low;
        self.gone_below(low)
    }

    fn gone_below(&mut self, low: i64) -> Vec<i64> {
        let kept = self.needed.split_off(&low);
        std::mem::replace(&mut self.needed, kept)
            .into_iter()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A moment of wall time only.
    fn wall(at: Instant) -> Moment {
        Moment {
            wall: at,
            stream_ms: None,
        }
    }

    /// Needs `offsets`, ripe at once.
    fn need(c: &mut Cursor, offsets: &[i64]) {
        let now = wall(Instant::now());
        for o in offsets {
            assert!(c.need(*o, now));
        }
        c.ripen(now, Duration::ZERO);
    }

    #[test]
    fn the_read_waits_for_needs_to_ripen_and_then_goes_as_far_as_the_newest_ripe() {
        let t0 = Instant::now();
        let delay = Duration::from_secs(1);
        let mut c = Cursor::default();
        c.need(200, wall(t0));
        assert_eq!(c.ripen(wall(t0), delay), Some(t0 + delay));
        assert!(c.is_idle() && !c.is_empty());
        assert_eq!(c.restart_at(), None, "not ripe");
        let t1 = t0 + Duration::from_millis(500);
        c.need(150, wall(t1));
        c.need(300, wall(t1));
        assert_eq!(c.ripen(wall(t0 + delay), delay), Some(t1 + delay));
        assert_eq!(c.restart_at(), Some(150), "a later need below the ripe one");
        c.started(150);
        assert!(c.on_message(150).decode);
        assert!(c.on_message(200).decode);
        assert!(c.is_idle(), "300 is not ripe yet");
        assert_eq!(c.ripen(wall(t1 + delay), delay), None);
        assert_eq!(c.restart_at(), None, "read on to 300");
    }

    #[test]
    fn a_need_ripens_by_stream_time_when_stream_time_runs_ahead_of_the_wall() {
        let t0 = Instant::now();
        let delay = Duration::from_secs(5);
        let at = |wall: Instant, stream_ms: i64| Moment {
            wall,
            stream_ms: Some(stream_ms),
        };
        let mut c = Cursor::default();
        c.need(100, at(t0, 60_000));
        c.need(200, at(t0, 62_000));
        assert!(c.waits_on_stream());
        // A backlog: 50 ms of wall time carry stream time 5 s on.
        let t1 = t0 + Duration::from_millis(50);
        assert_eq!(c.ripen(at(t1, 64_999), delay), Some(t0 + delay));
        assert_eq!(c.restart_at(), None, "not ripe on either clock");
        assert_eq!(c.ripen(at(t1, 65_000), delay), Some(t0 + delay));
        assert_eq!(c.restart_at(), Some(100), "ripe by stream time");
        assert!(c.waits_on_stream(), "200 waits on");
        // Stream time standing still (no traffic): the wall clock ripens it.
        assert_eq!(c.ripen(at(t0 + delay, 65_000), delay), None);
        assert!(!c.waits_on_stream());
        c.started(100);
        assert!(c.on_message(100).decode);
        assert!(!c.is_idle(), "200 is ripe");
        // Without stream time, only the wall clock counts.
        c.need(300, wall(t1));
        assert!(!c.waits_on_stream());
        assert_eq!(c.ripen(at(t1, 1_000_000), delay), Some(t1 + delay));
    }

    #[test]
    fn reads_on_through_short_gaps_and_starts_again_for_long_ones_or_behind() {
        let mut c = Cursor::default();
        assert_eq!(c.restart_at(), None, "nothing needed");
        need(&mut c, &[100]);
        assert_eq!(c.restart_at(), Some(100), "no consumer yet");
        c.started(100);
        assert_eq!(c.restart_at(), None);
        let d = c.on_message(100);
        assert!(d.decode && !d.passed);
        assert!(c.is_idle());
        need(&mut c, &[100 + 1 + MAX_READ_THROUGH]);
        assert_eq!(c.restart_at(), None, "read through");
        need(&mut c, &[5_000, 50]);
        assert_eq!(c.restart_at(), Some(50), "behind the consumer");
        c.started(50);
        assert!(c.on_message(50).decode);
        assert_eq!(c.restart_at(), Some(613), "562 ahead of the consumer");
        c.started(613);
        assert!(c.on_message(613).decode);
        assert_eq!(c.restart_at(), Some(5_000), "far ahead");
        c.started(5_000);
        for o in 5_000..5_003 {
            need(&mut c, &[o + 1]);
            assert!(c.on_message(o).decode, "one after the other");
        }
        assert_eq!(c.next_needed(), Some(5_003));
    }

    #[test]
    fn a_passed_offset_rewinds_the_next_start_and_is_given_up_at_last() {
        let mut c = Cursor::default();
        need(&mut c, &[100, 5_000_000]);
        c.started(100);
        let d = c.on_message(104);
        assert!(d.passed && !d.decode);
        assert_eq!(c.passed(), Vec::<i64>::new());
        assert!(!c.is_reading());
        assert_eq!(c.restart_at(), Some(92), "eight back");
        c.started(92);
        assert!(!c.on_message(91).decode, "below the start: skipped");
        assert!(c.is_reading(), "and the consumer reads on");
        assert_eq!(c.passed(), Vec::<i64>::new());
        assert_eq!(c.restart_at(), Some(36));
        assert_eq!(c.set_low(50), Vec::<i64>::new());
        assert_eq!(c.restart_at(), Some(50), "not below the low watermark");
        let mut gone = Vec::new();
        for _ in 0..10 {
            gone.extend(c.passed());
        }
        assert_eq!(gone, vec![100], "offset 100 never came");
        assert_eq!(c.next_needed(), Some(5_000_000));
    }

    #[test]
    fn a_start_rewound_past_the_read_through_limit_reads_on_to_its_offset() {
        let mut c = Cursor::default();
        need(&mut c, &[10_000]);
        c.started(10_000);
        assert!(c.on_message(10_500).passed);
        for _ in 0..4 {
            c.passed();
        }
        let at = c.restart_at().expect("a start further back");
        assert_eq!(at, 10_000 - 4_096);
        c.started(at);
        assert!(!c.on_message(at).decode);
        assert_eq!(
            c.restart_at(),
            None,
            "4,095 before the offset it was started for: read on, not start again"
        );
        for o in at + 1..10_000 {
            assert!(!c.on_message(o).decode);
        }
        assert!(c.on_message(10_000).decode);
        need(&mut c, &[20_000]);
        assert_eq!(c.restart_at(), Some(20_000 - 2_048), "the rewind halved");
    }

    #[test]
    fn offsets_under_the_low_watermark_are_given_up() {
        let mut c = Cursor::default();
        need(&mut c, &[10, 20, 30]);
        assert_eq!(c.set_low(25), vec![10, 20]);
        assert!(!c.need(24, wall(Instant::now())), "known gone");
        assert_eq!(c.restart_at(), Some(30));
    }
}
