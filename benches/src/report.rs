//! Results: one JSON line per measured value, ratios to steadypool, and the markdown
//! tables of `BENCHMARKS.md`.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

/// One measured value.
///
/// ```
/// use steadypool_benches::report::Record;
/// let r = Record::new("checkout", "pool8-tasks1".into(), "bb8-ping", "ns_per_checkout", 21000.0);
/// assert!(r.to_json().unwrap().starts_with("{\"scenario\":\"checkout\""));
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// `checkout`, `goodput`, `dead_peer` or `storm`.
    pub scenario: String,
    /// The variant of the scenario (pool size and tasks, faults or not, ...).
    pub case: String,
    /// The pool set-up (see [`crate::pools::Kind::label`]).
    pub pool: String,
    /// What was measured, with its unit in the name.
    pub metric: String,
    /// The value.
    pub value: f64,
    /// `value` divided by steadypool's value for the same scenario, case and metric.
    pub ratio: Option<f64>,
    /// The value is the cap the scenario waited: the event never happened.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub capped: bool,
}

impl Record {
    /// A record without a ratio (see [`fill_ratios`]).
    pub fn new(scenario: &str, case: String, pool: &str, metric: &str, value: f64) -> Record {
        Record {
            scenario: scenario.to_owned(),
            case,
            pool: pool.to_owned(),
            metric: metric.to_owned(),
            value,
            ratio: None,
            capped: false,
        }
    }

    /// Marks the value as the cap waited, not a measurement.
    #[must_use]
    pub fn capped(mut self, capped: bool) -> Record {
        self.capped = capped;
        self
    }

    /// The record as one line of JSON.
    ///
    /// # Errors
    /// When serialization fails (it does not for finite values).
    pub fn to_json(&self) -> Result<String, serde_json::Error> {
        serde_json::to_string(self)
    }
}

/// The pool every ratio is taken against.
pub const BASELINE: &str = "steadypool";

/// Sets each record's ratio to its value over steadypool's for the same scenario,
/// case and metric (none when steadypool's is missing or zero).
///
/// ```
/// use steadypool_benches::report::{fill_ratios, Record};
/// let mut rs = vec![
///     Record::new("s", "c".into(), "steadypool", "m", 2.0),
///     Record::new("s", "c".into(), "deadpool-bare", "m", 3.0),
/// ];
/// fill_ratios(&mut rs);
/// assert_eq!(rs[1].ratio, Some(1.5));
/// ```
pub fn fill_ratios(records: &mut [Record]) {
    let baseline: BTreeMap<(String, String, String), f64> = records
        .iter()
        .filter(|r| r.pool == BASELINE)
        .map(|r| {
            (
                (r.scenario.clone(), r.case.clone(), r.metric.clone()),
                r.value,
            )
        })
        .collect();
    for record in records.iter_mut() {
        let key = (
            record.scenario.clone(),
            record.case.clone(),
            record.metric.clone(),
        );
        record.ratio = baseline
            .get(&key)
            .filter(|base| **base != 0.0 && base.is_finite())
            .map(|base| record.value / base);
    }
}

fn cell(record: &Record) -> String {
    let value = if record.value.fract() == 0.0 || record.value.abs() >= 100.0 {
        format!("{:.0}", record.value)
    } else if record.value.abs() >= 1.0 {
        format!("{:.2}", record.value)
    } else {
        format!("{:.4}", record.value)
    };
    let value = if record.capped {
        format!("≥ {value} (never)")
    } else {
        value
    };
    match record.ratio {
        Some(ratio) if record.pool != BASELINE && record.capped => {
            format!("{value} (≥ {ratio:.2}x)")
        }
        Some(ratio) if record.pool != BASELINE => format!("{value} ({ratio:.2}x)"),
        _ => value,
    }
}

fn ordered<'a>(items: impl Iterator<Item = &'a str>) -> Vec<&'a str> {
    let mut seen = Vec::new();
    for item in items {
        if !seen.contains(&item) {
            seen.push(item);
        }
    }
    seen
}

/// Markdown tables of every scenario in `records`: one table per scenario and case,
/// a row per pool and a column per metric; scenarios with a single metric get one
/// table with a column per case. Each cell is the value and its ratio to steadypool.
pub fn markdown(records: &[Record]) -> String {
    let mut out = String::new();
    for scenario in ordered(records.iter().map(|r| r.scenario.as_str())) {
        let rows: Vec<&Record> = records.iter().filter(|r| r.scenario == scenario).collect();
        let metrics = ordered(rows.iter().map(|r| r.metric.as_str()));
        let cases = ordered(rows.iter().map(|r| r.case.as_str()));
        let pools = ordered(rows.iter().map(|r| r.pool.as_str()));
        let _ = writeln!(out, "### {scenario}\n");
        if metrics.len() == 1 {
            let _ = writeln!(out, "{} ({})\n", scenario, metrics[0]);
            table(&mut out, &pools, &cases, |pool, case| {
                rows.iter()
                    .find(|r| r.pool == pool && r.case == case)
                    .map(|r| cell(r))
            });
        } else {
            for case in &cases {
                let _ = writeln!(out, "case `{case}`\n");
                table(&mut out, &pools, &metrics, |pool, metric| {
                    rows.iter()
                        .find(|r| r.pool == pool && r.case == *case && r.metric == metric)
                        .map(|r| cell(r))
                });
            }
        }
    }
    out
}

fn table(
    out: &mut String,
    rows: &[&str],
    columns: &[&str],
    cell: impl Fn(&str, &str) -> Option<String>,
) {
    let _ = writeln!(out, "| pool | {} |", columns.join(" | "));
    let _ = writeln!(out, "|---|{}", "---|".repeat(columns.len()));
    for row in rows {
        let cells: Vec<String> = columns
            .iter()
            .map(|column| cell(row, column).unwrap_or_else(|| "–".to_owned()))
            .collect();
        if cells.iter().all(|c| c == "–") {
            continue;
        }
        let _ = writeln!(out, "| {row} | {} |", cells.join(" | "));
    }
    out.push('\n');
}
