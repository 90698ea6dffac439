//! CronJob schedules and time zones, checked the way Kubernetes checks them: the standard
//! five-field syntax of `robfig/cron` (with month and weekday names, `?`, and the `@hourly`
//! family), and IANA time zone names.
//!
//! Parsing is croner's. croner also understands Quartz extensions (`L`, `W`, `#`, seconds and
//! years) that Kubernetes refuses, so those are rejected before croner sees the text: a
//! schedule valid here must be valid in a Kubernetes cluster too.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};

use crate::error::{Error, Result};

const NAMES: [&str; 19] = [
    "JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC", "SUN",
    "MON", "TUE", "WED", "THU", "FRI", "SAT",
];

const DESCRIPTORS: [&str; 7] = [
    "@yearly",
    "@annually",
    "@monthly",
    "@weekly",
    "@daily",
    "@midnight",
    "@hourly",
];

fn fail(schedule: &str, reason: impl Into<String>) -> Error {
    Error::Schedule {
        schedule: schedule.to_string(),
        reason: reason.into(),
    }
}

/// Checks a CronJob `schedule`. Results are memoised: a repository repeats the same few
/// schedules, and croner's parse is the most expensive single check of a CronJob.
pub fn validate_schedule(schedule: &str) -> Result<()> {
    static SEEN: OnceLock<Mutex<HashMap<String, Option<String>>>> = OnceLock::new();
    let cache = SEEN.get_or_init(Default::default);
    if let Ok(map) = cache.lock()
        && let Some(answer) = map.get(schedule)
    {
        return match answer {
            None => Ok(()),
            Some(reason) => Err(fail(schedule, reason.clone())),
        };
    }
    let answer = check_schedule(schedule);
    if let Ok(mut map) = cache.lock() {
        // Bounded, so hostile input cannot grow it without limit.
        if map.len() < 4096 {
            let reason = answer.as_ref().err().map(|e| match e {
                Error::Schedule { reason, .. } => reason.clone(),
                other => other.to_string(),
            });
            map.insert(schedule.to_string(), reason);
        }
    }
    answer
}

fn check_schedule(schedule: &str) -> Result<()> {
    let s = schedule.trim();
    if s.is_empty() {
        return Err(fail(schedule, "a schedule is required"));
    }
    if s.starts_with("TZ=") || s.starts_with("CRON_TZ=") {
        return Err(fail(
            schedule,
            "TZ and CRON_TZ are not supported in the schedule; use the timeZone field",
        ));
    }
    if let Some(rest) = s.strip_prefix('@') {
        if DESCRIPTORS.contains(&s) {
            return Ok(());
        }
        if let Some(d) = rest.strip_prefix("every ") {
            return validate_duration(d.trim()).map_err(|r| fail(schedule, r));
        }
        return Err(fail(
            schedule,
            format!(
                "unknown descriptor; expected one of {} or @every <duration>",
                DESCRIPTORS.join(", ")
            ),
        ));
    }
    let fields: Vec<&str> = s.split_whitespace().collect();
    if fields.len() != 5 {
        return Err(fail(
            schedule,
            format!(
                "expected exactly 5 fields (minute hour day-of-month month day-of-week), found {}",
                fields.len()
            ),
        ));
    }
    for field in &fields {
        let mut upper = field.to_ascii_uppercase();
        for name in NAMES {
            upper = upper.replace(name, "0");
        }
        if let Some(c) = upper
            .chars()
            .find(|c| !(c.is_ascii_digit() || "*/,-?".contains(*c)))
        {
            return Err(fail(
                schedule,
                format!("unsupported character {c:?} in field {field:?}"),
            ));
        }
    }
    // `*` in day-of-month with a restricted day-of-week (and the reverse) means "either" in
    // standard cron, which is croner's behaviour with dom_and_dow off.
    let parser = CronParser::builder()
        .seconds(Seconds::Disallowed)
        .year(Year::Disallowed)
        .build();
    let parsed: std::result::Result<Cron, _> = parser.parse(s);
    parsed
        .map(|_| ())
        .map_err(|e| fail(schedule, e.to_string()))
}

/// `@every` takes a Go duration: one or more `<number><unit>` with units ns, us, ms, s, m, h.
fn validate_duration(d: &str) -> std::result::Result<(), String> {
    let bad = || format!("{d:?} is not a duration such as 90s, 5m or 1h30m");
    let mut rest = d;
    if rest.is_empty() {
        return Err(bad());
    }
    while !rest.is_empty() {
        let n = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(bad)?;
        if n == 0 {
            return Err(bad());
        }
        rest = &rest[n..];
        let unit = ["ns", "us", "µs", "ms", "s", "m", "h"]
            .into_iter()
            .find(|u| rest.starts_with(u))
            .ok_or_else(bad)?;
        rest = &rest[unit.len()..];
    }
    Ok(())
}

/// Checks a CronJob `timeZone` against the IANA database, as Kubernetes does with Go's
/// `time.LoadLocation`. The database is compiled in, so the answer does not depend on the
/// machine's `/usr/share/zoneinfo`.
pub fn validate_time_zone(tz: &str) -> Result<()> {
    if tz.trim() != tz || tz.is_empty() {
        return Err(fail(
            tz,
            "time zone must not be empty or padded with spaces",
        ));
    }
    // Go refuses "Local": the controller's own zone would make the schedule depend on
    // where it runs.
    if tz == "Local" {
        return Err(fail(
            tz,
            "\"Local\" is not allowed; use an IANA name such as Europe/Paris",
        ));
    }
    tz.parse::<chrono_tz::Tz>().map(|_| ()).map_err(|_| {
        fail(
            tz,
            "unknown time zone: expected an IANA name such as Etc/UTC or America/New_York",
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn standard_schedules() {
        for ok in [
            "*/5 * * * *",
            "0 3 * * 1-5",
            "30 2 1,15 * *",
            "0 0 * JAN-MAR MON",
            "0 0 ? * sun",
            "@hourly",
            "@midnight",
            "@every 1h30m",
            "59 23 31 12 6",
        ] {
            assert!(
                validate_schedule(ok).is_ok(),
                "{ok:?}: {:?}",
                validate_schedule(ok)
            );
        }
    }

    #[test]
    fn refused_schedules() {
        for bad in [
            "",
            "* * * *",
            "0 * * * * *",
            "60 * * * *",
            "0 24 * * *",
            "0 0 32 * *",
            "0 0 L * *",
            "0 0 * * 5#3",
            "0 0 15W * *",
            "@fortnightly",
            "@every",
            "@every 5x",
            "TZ=UTC 0 0 * * *",
            "a b c d e",
        ] {
            assert!(validate_schedule(bad).is_err(), "{bad:?} should fail");
        }
    }

    #[test]
    fn time_zones() {
        assert!(validate_time_zone("Etc/UTC").is_ok());
        assert!(validate_time_zone("Europe/Paris").is_ok());
        assert!(validate_time_zone("Mars/Olympus").is_err());
        assert!(validate_time_zone("Local").is_err());
        assert!(validate_time_zone(" UTC").is_err());
    }
}
