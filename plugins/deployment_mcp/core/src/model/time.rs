//! [`Timestamp`]: an instant in UTC, shown one way everywhere (RFC 3339 with milliseconds).

use std::{fmt, str::FromStr, time::SystemTime};

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use time::{format_description::well_known::Rfc3339, OffsetDateTime, UtcOffset};

/// An instant, in UTC to the millisecond: `2026-01-31T12:00:00.123Z` in records, answers,
/// events and log lines. Reading accepts any RFC 3339 time and keeps it in UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(OffsetDateTime);

/// `2026-01-31T12:00:00.123Z`: RFC 3339 in UTC with milliseconds, the one way times are shown.
const RFC3339_MILLIS: &[time::format_description::FormatItem<'static>] = time::macros::format_description!(
    "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
);

/// `2026-01-31T12:00:00Z`, for people (the CLI's tables).
const RFC3339_SECONDS: &[time::format_description::FormatItem<'static>] =
    time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]Z");

impl Timestamp {
    /// This host's clock, now.
    pub fn now() -> Timestamp {
        Timestamp::from(SystemTime::now())
    }

    /// `ms` milliseconds after the Unix epoch (a time past year 9999 shows as the epoch).
    pub fn from_unix_ms(ms: u64) -> Timestamp {
        let nanos = i128::from(ms) * 1_000_000;
        Timestamp(
            OffsetDateTime::from_unix_timestamp_nanos(nanos).unwrap_or(OffsetDateTime::UNIX_EPOCH),
        )
    }

    /// The time to the second, for people: `2026-01-31T12:00:00Z`.
    pub fn to_second_string(self) -> String {
        self.0.format(RFC3339_SECONDS).unwrap_or_default()
    }

    /// Milliseconds since the Unix epoch (0 for an earlier time).
    pub fn unix_ms(self) -> u64 {
        u64::try_from(self.0.unix_timestamp_nanos() / 1_000_000).unwrap_or(0)
    }
}

impl From<SystemTime> for Timestamp {
    fn from(time: SystemTime) -> Timestamp {
        // A time before 1970 cannot come from this host's clock in a sane state; it shows as
        // 1970. Sub-millisecond parts are dropped, so a time reads back as it was written.
        let ms = time
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|since| u64::try_from(since.as_millis()).unwrap_or(u64::MAX))
            .unwrap_or(0);
        Timestamp::from_unix_ms(ms)
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = self.0.format(RFC3339_MILLIS).map_err(|_| fmt::Error)?;
        f.write_str(&text)
    }
}

/// A text that is not an RFC 3339 time.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("expected an RFC 3339 time such as 2026-01-31T12:00:00.123Z, got {0:?}")]
pub struct BadTimestamp(String);

impl FromStr for Timestamp {
    type Err = BadTimestamp;

    fn from_str(text: &str) -> Result<Timestamp, BadTimestamp> {
        let parsed = OffsetDateTime::parse(text, &Rfc3339)
            .map_err(|_| BadTimestamp(text.chars().take(64).collect()))?;
        let utc = parsed.to_offset(UtcOffset::UTC);
        // Kept to the millisecond, like every time this core writes.
        Ok(Timestamp::from_unix_ms(
            u64::try_from(utc.unix_timestamp_nanos() / 1_000_000).unwrap_or(0),
        ))
    }
}

impl utoipa::PartialSchema for Timestamp {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::{schema, KnownFormat, ObjectBuilder, SchemaFormat};
        ObjectBuilder::new()
            .schema_type(schema::Type::String)
            .format(Some(SchemaFormat::KnownFormat(KnownFormat::DateTime)))
            .description(Some("RFC 3339 time in UTC with milliseconds"))
            .examples(["2026-01-31T12:00:00.123Z"])
            .into()
    }
}

impl utoipa::ToSchema for Timestamp {}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Timestamp, D::Error> {
        let text = std::borrow::Cow::<str>::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shown_as_rfc3339_utc_with_milliseconds() {
        let time =
            SystemTime::UNIX_EPOCH + std::time::Duration::from_nanos(1_795_000_000_123_456_789);
        assert_eq!(
            Timestamp::from(time).to_string(),
            "2026-11-18T11:06:40.123Z"
        );
        assert_eq!(
            Timestamp::from(time).to_second_string(),
            "2026-11-18T11:06:40Z"
        );
        assert_eq!(
            Timestamp::from(SystemTime::UNIX_EPOCH).to_string(),
            "1970-01-01T00:00:00.000Z"
        );
        let before = SystemTime::UNIX_EPOCH - std::time::Duration::from_secs(5);
        assert_eq!(Timestamp::from(before), Timestamp::from_unix_ms(0));
    }

    #[test]
    fn reads_back_what_it_writes_and_any_offset() {
        let time = Timestamp::from_unix_ms(1_795_000_000_123);
        let json = serde_json::to_string(&time).unwrap();
        assert_eq!(json, "\"2026-11-18T11:06:40.123Z\"");
        assert_eq!(serde_json::from_str::<Timestamp>(&json).unwrap(), time);
        let shifted: Timestamp = "2026-11-18T12:06:40.123+01:00".parse().unwrap();
        assert_eq!(shifted, time);
        assert_eq!(shifted.unix_ms(), 1_795_000_000_123);
        let error = serde_json::from_str::<Timestamp>("\"yesterday\"").unwrap_err();
        assert!(error.to_string().contains("RFC 3339"), "{error}");
    }

    #[test]
    fn ordered_in_time() {
        assert!(Timestamp::from_unix_ms(1) < Timestamp::from_unix_ms(2));
    }
}
