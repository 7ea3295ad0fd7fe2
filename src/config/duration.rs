//! Durations in the config. A key names its unit (`_secs`, `_ms`) and takes
//! a number in that unit, as it always has, or a string with units such as
//! `"90s"`, `"5m"` or `"1h 30m"` (humantime). Either way the selector gets a
//! [`Duration`], so no stage converts seconds by hand.

use std::fmt;
use std::marker::PhantomData;
use std::time::Duration;

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;

/// The unit a bare number is read in.
pub trait Unit: Copy {
    const SECONDS: f64;
    const NAME: &'static str;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Secs;

impl Unit for Secs {
    const SECONDS: f64 = 1.0;
    const NAME: &'static str = "seconds";
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Millis;

impl Unit for Millis {
    const SECONDS: f64 = 0.001;
    const NAME: &'static str = "milliseconds";
}

/// A duration read from a number of `U` or from a humantime string.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ConfigDuration<U: Unit> {
    duration: Duration,
    unit: PhantomData<U>,
}

/// A `_secs` key.
pub type Seconds = ConfigDuration<Secs>;
/// A `_ms` key.
pub type Milliseconds = ConfigDuration<Millis>;

/// Ten years: anything longer is a mistake, and far longer would overflow.
const LIMIT: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

impl<U: Unit> ConfigDuration<U> {
    pub fn new(duration: Duration) -> Self {
        Self {
            duration,
            unit: PhantomData,
        }
    }

    pub fn duration(self) -> Duration {
        self.duration
    }

    /// The value in the key's unit.
    pub fn get(self) -> f64 {
        self.duration.as_secs_f64() / U::SECONDS
    }

    fn from_number<E: de::Error>(n: f64) -> Result<Self, E> {
        let secs = n * U::SECONDS;
        if !(secs.is_finite() && secs >= 0.0 && secs <= LIMIT.as_secs_f64()) {
            return Err(E::custom(format!(
                "{n} is not a duration: expected zero or more {}, at most ten years",
                U::NAME
            )));
        }
        Ok(Self::new(Duration::from_secs_f64(secs)))
    }

    fn from_text<E: de::Error>(s: &str) -> Result<Self, E> {
        if let Ok(n) = s.trim().parse::<f64>() {
            return Self::from_number(n);
        }
        match humantime::parse_duration(s) {
            Ok(d) if d <= LIMIT => Ok(Self::new(d)),
            Ok(_) => Err(E::custom(format!("`{s}` is longer than ten years"))),
            Err(e) => Err(E::custom(format!(
                "`{s}` is not a duration ({e}): write a number of {} or a string like \"90s\" or \"5m\"",
                U::NAME
            ))),
        }
    }
}

/// Compares in the key's unit, so `inactivity_timeout_secs == 60.0` reads
/// as it is written.
impl<U: Unit> PartialEq<f64> for ConfigDuration<U> {
    fn eq(&self, other: &f64) -> bool {
        self.get() == *other
    }
}

impl<U: Unit> fmt::Debug for ConfigDuration<U> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", humantime::format_duration(self.duration))
    }
}

/// As a number in the key's unit, which reads back as the same duration.
impl<U: Unit> serde::Serialize for ConfigDuration<U> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(self.get())
    }
}

impl<'de, U: Unit> Deserialize<'de> for ConfigDuration<U> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<U>(PhantomData<U>);
        impl<U: Unit> Visitor<'_> for V<U> {
            type Value = ConfigDuration<U>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(
                    f,
                    "a number of {} or a duration string like \"90s\"",
                    U::NAME
                )
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
                ConfigDuration::from_number(v)
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
                ConfigDuration::from_number(v as f64)
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
                ConfigDuration::from_number(v as f64)
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                ConfigDuration::from_text(v)
            }
        }
        d.deserialize_any(V(PhantomData))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(v: serde_json::Value) -> Result<Seconds, serde_json::Error> {
        serde_json::from_value(v)
    }

    #[test]
    fn numbers_are_read_in_the_keys_unit() {
        assert_eq!(
            secs(serde_json::json!(60)).expect("int").duration(),
            Duration::from_secs(60)
        );
        assert_eq!(
            secs(serde_json::json!(0.5)).expect("float").duration(),
            Duration::from_millis(500)
        );
        let ms: Milliseconds = serde_json::from_value(serde_json::json!(1500)).expect("ms");
        assert_eq!(ms.duration(), Duration::from_millis(1500));
        assert_eq!(ms, 1500.0);
        // Environment variables arrive as strings.
        assert_eq!(
            secs(serde_json::json!("30")).expect("text").duration(),
            Duration::from_secs(30)
        );
    }

    #[test]
    fn strings_with_units_are_humantime() {
        assert_eq!(
            secs(serde_json::json!("90s")).expect("90s").duration(),
            Duration::from_secs(90)
        );
        assert_eq!(
            secs(serde_json::json!("1h 30m")).expect("1h30").duration(),
            Duration::from_secs(5400)
        );
        let ms: Milliseconds = serde_json::from_value(serde_json::json!("2s")).expect("2s");
        assert_eq!(ms, 2000.0);
    }

    #[test]
    fn nonsense_is_refused_with_a_reason() {
        for bad in [
            serde_json::json!(-1),
            serde_json::json!(1e300),
            serde_json::json!("abc"),
            serde_json::json!("20 years"),
        ] {
            let err = secs(bad.clone()).expect_err("refused").to_string();
            assert!(
                err.contains("duration") || err.contains("ten years"),
                "{bad}: {err}"
            );
        }
    }
}
