//! Checking and lowering a contract's `migrations`: each declared rename goes to the traffic
//! metrics or to the exposition rewrite, and its sunset date is judged against today.

use serde_saphyr::Spanned;

use super::report::Report;

use super::model::MigrationDef;
use crate::config::{Migration, MigrationKind, PluginConfig};

/// Days before a sunset from which `check` warns.
pub const WARN_DAYS: i64 = 30;

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let month = month as i64;
    let day_of_year = (153 * (if month > 2 { month - 3 } else { month + 9 }) + 2) / 5 + day as i64 - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

/// Parses `YYYY-MM-DD` into days since the Unix epoch.
pub fn parse_date(text: &str) -> Option<i64> {
    let bytes = text.as_bytes();
    if bytes.len() != 10 || bytes[4] != b'-' || bytes[7] != b'-' {
        return None;
    }
    let number = |range: std::ops::Range<usize>| -> Option<u32> {
        let part = &text[range];
        part.bytes().all(|b| b.is_ascii_digit()).then(|| part.parse().ok())?
    };
    let (year, month, day) = (number(0..4)?, number(5..7)?, number(8..10)?);
    let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
    let month_days = [31, if leap { 29 } else { 28 }, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];
    if !(1..=12).contains(&month) || day == 0 || day > month_days[month as usize - 1] {
        return None;
    }
    Some(days_from_civil(year as i64, month, day))
}

/// Today as days since the Unix epoch (UTC): `METRICPACT_TODAY=YYYY-MM-DD` overrides the clock,
/// so a CI job can ask "does this contract still pass on the release date?".
pub fn today() -> Result<i64, String> {
    if let Ok(text) = std::env::var("METRICPACT_TODAY") {
        return parse_date(&text).ok_or_else(|| format!("METRICPACT_TODAY=`{text}` is not a YYYY-MM-DD date"));
    }
    let seconds = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(|e| e.to_string())?
        .as_secs();
    Ok((seconds / 86_400) as i64)
}

/// Names the exposition rewrite is known to produce (exact rename targets, injected and renamed
/// labels, required metrics): a migration to another name is allowed, with a warning.
pub struct ExpositionNames {
    pub metrics: Vec<String>,
    pub labels: Vec<String>,
}

/// Lowers every migration into `config` (traffic ones) and `config.exposition` (app ones).
pub fn lower(defs: &[Spanned<MigrationDef>], config: &mut PluginConfig, exposition: Option<&ExpositionNames>, today: i64, report: &mut dyn Report) {
    let traffic_metrics: Vec<String> = config.traffic_metric_names().into_iter().map(str::to_string).collect();
    let traffic_labels: Vec<String> = config.labels.iter().map(|l| l.name.clone()).collect();
    for def in defs {
        let d = &def.value;
        let (kind, old) = match (&d.metric, &d.label) {
            (Some(m), None) => (MigrationKind::Metric, m),
            (None, Some(l)) => (MigrationKind::Label, l),
            _ => {
                report.error(&def.referenced, "a migration needs exactly one of `metric` or `label` (the old name)".into());
                continue;
            }
        };
        let new = &d.renamed_to;
        let what = if kind == MigrationKind::Metric { "metric" } else { "label" };
        let (current, known) = match kind {
            MigrationKind::Metric => (&traffic_metrics, exposition.map(|e| &e.metrics)),
            MigrationKind::Label => (&traffic_labels, exposition.map(|e| &e.labels)),
        };
        // A migration to a traffic name is the sidecar's; one to any other name the exposition
        // rewrite's (when there is one: else the validator says it names no traffic metric).
        let traffic = current.contains(&new.value) || known.is_none();
        if !traffic && known.is_some_and(|k| !k.contains(&new.value)) && old.value != new.value {
            report.warn(
                &new.referenced,
                format!("`{}` is not a traffic {what}, nor produced by an exact rename, an injected label or a required metric of the exposition rewrite: the old name appears only where the app's rewritten metrics have `{}`", new.value, new.value),
            );
        }
        // A sunset that is not a date still lowers the migration (as ended), so the validator
        // judges its names.
        let sunset_day = parse_date(&d.sunset.value);
        match sunset_day.map(|day| day - today) {
            None => report.error(&d.sunset.referenced, format!("sunset `{}` is not a date in the form YYYY-MM-DD", d.sunset.value)),
            Some(left) if left <= 0 => report.error(
                &d.sunset.referenced,
                format!("the migration of {what} `{}` to `{}` ended on {}: remove it (and the old name's last users)", old.value, new.value, d.sunset.value),
            ),
            Some(left) if left <= WARN_DAYS => report.warn(
                &d.sunset.referenced,
                format!("{what} `{}` stops being emitted in {left} day{} ({}): move what still queries it to `{}`", old.value, if left == 1 { "" } else { "s" }, d.sunset.value, new.value),
            ),
            Some(_) => {}
        }
        let sunset_unix = sunset_day.map_or(0, |day| (day.max(0) as u64) * 86_400);
        let migration = Migration { kind, old: old.value.clone(), new: new.value.clone(), sunset: d.sunset.value.clone(), sunset_unix };
        let list = match config.exposition.as_mut() {
            Some(spec) if !traffic => &mut spec.migrations,
            _ => &mut config.migrations,
        };
        let at = if traffic { format!("migrations[{}]", list.len()) } else { format!("exposition.migrations[{}]", list.len()) };
        report.origin(at.clone(), &def.referenced);
        report.origin(format!("{at}.old"), &old.referenced);
        report.origin(format!("{at}.new"), &new.referenced);
        list.push(migration);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_parse_to_days_since_the_epoch() {
        assert_eq!(parse_date("1970-01-01"), Some(0));
        assert_eq!(parse_date("2000-03-01"), Some(11_017));
        assert_eq!(parse_date("2026-11-23"), Some(20_780));
        assert_eq!(parse_date("2024-02-29"), Some(19_782));
        for bad in ["2023-02-29", "2026-13-01", "2026-00-10", "2026-1-01", "26-11-23", "2026/11/23", "2026-11-23T00", "+026-11-23"] {
            assert_eq!(parse_date(bad), None, "{bad}");
        }
    }
}
