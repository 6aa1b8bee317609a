//! The plots of `BENCHMARKS.md`, drawn as SVG files.

use std::path::Path;
use std::time::Duration;

use plotters::prelude::*;

use crate::error::BenchError;
use crate::goodput::{self, Run};
use crate::pools::Kind;
use crate::storm::{self, StormRun};

/// Width of one bucket of the goodput timeline.
const GOODPUT_BUCKET: Duration = Duration::from_millis(100);

const PALETTE: [RGBColor; 5] = [
    RGBColor(0, 114, 178),
    RGBColor(213, 94, 0),
    RGBColor(0, 158, 115),
    RGBColor(204, 121, 167),
    RGBColor(86, 180, 233),
];

fn plot_error(path: &Path, err: impl std::fmt::Display) -> BenchError {
    BenchError::Plot {
        path: path.display().to_string(),
        message: err.to_string(),
    }
}

/// A series: its name and its points.
type Series = (String, Vec<(f64, f64)>);

/// A series with gaps: `None` where it has no value.
type GappedSeries = (String, Vec<Option<(f64, f64)>>);

/// Draws `goodput_faults.svg` in `dir`: for the first faulty run of each contender
/// without an application retry, the 99th-percentile latency and the failed requests
/// per 100 ms, with the crashes marked.
///
/// # Errors
/// When the directory or the file cannot be written.
pub fn goodput(dir: &Path, runs: &[Run]) -> Result<(), BenchError> {
    std::fs::create_dir_all(dir)?;
    let path = dir.join("goodput_faults.svg");
    let chosen: Vec<&Run> = goodput::CONTENDERS
        .iter()
        .filter(|c| c.attempts == 1)
        .filter_map(|c| runs.iter().find(|r| r.faults && r.contender == *c))
        .collect();
    let Some(first) = chosen.first() else {
        return Ok(());
    };
    let crashes: Vec<f64> = first.crashes.iter().map(Duration::as_secs_f64).collect();
    let span = chosen
        .iter()
        .map(|r| r.elapsed.as_secs_f64())
        .fold(0.0, f64::max)
        .max(0.1);
    let mut latency: Vec<GappedSeries> = Vec::new();
    let mut failures: Vec<Series> = Vec::new();
    for run in &chosen {
        let n = (span / GOODPUT_BUCKET.as_secs_f64()).ceil() as usize + 1;
        let mut buckets: Vec<Vec<f64>> = vec![Vec::new(); n];
        let mut failed = vec![0u64; n];
        for sample in &run.samples {
            let i = (sample.at.as_secs_f64() / GOODPUT_BUCKET.as_secs_f64()) as usize;
            if sample.ok {
                if let Some(bucket) = buckets.get_mut(i) {
                    bucket.push(sample.latency.as_secs_f64() * 1e3);
                }
            } else if let Some(count) = failed.get_mut(i) {
                *count += 1;
            }
        }
        let width = GOODPUT_BUCKET.as_secs_f64();
        // Lulls carry no requests: leave a gap there instead of a line across.
        let p99 = buckets
            .iter_mut()
            .enumerate()
            .map(|(i, b)| {
                (!b.is_empty()).then(|| (i as f64 * width, crate::stats::percentile(b, 0.99)))
            })
            .collect();
        let fails = failed
            .iter()
            .enumerate()
            .map(|(i, c)| (i as f64 * width, *c as f64))
            .collect();
        latency.push((run.contender.label(), p99));
        failures.push((run.contender.label(), fails));
    }
    let mut lulls = Vec::new();
    let mut start = goodput::ACTIVE.as_secs_f64();
    while start < span {
        lulls.push((
            start,
            (start + (goodput::PERIOD - goodput::ACTIVE).as_secs_f64()).min(span),
        ));
        start += goodput::PERIOD.as_secs_f64();
    }
    let root = SVGBackend::new(&path, (1000, 720)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| plot_error(&path, e))?;
    let (upper, lower) = root.split_vertically(430);
    let max_latency = latency
        .iter()
        .flat_map(|(_, points)| points.iter().flatten().map(|p| p.1))
        .fold(1.0, f64::max);
    let mut chart = ChartBuilder::on(&upper)
        .caption(
            "Goodput under faults: p99 latency per 100 ms (crashes dashed, lulls shaded)",
            ("sans-serif", 20),
        )
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(64)
        .build_cartesian_2d(0.0..span, (0.01..max_latency * 2.0).log_scale())
        .map_err(|e| plot_error(&path, e))?;
    chart
        .configure_mesh()
        .light_line_style(BLACK.mix(0.03))
        .x_desc("time (s)")
        .y_desc("p99 latency (ms)")
        .draw()
        .map_err(|e| plot_error(&path, e))?;
    draw_bands(&mut chart, &lulls, 0.01, max_latency * 2.0).map_err(|e| plot_error(&path, e))?;
    draw_marks(&mut chart, &crashes, 0.01, max_latency * 2.0).map_err(|e| plot_error(&path, e))?;
    draw_gapped(&mut chart, &latency).map_err(|e| plot_error(&path, e))?;
    let max_failed = failures
        .iter()
        .flat_map(|(_, points)| points.iter().map(|p| p.1))
        .fold(1.0, f64::max);
    let mut chart = ChartBuilder::on(&lower)
        .caption("failed requests per 100 ms", ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(64)
        .build_cartesian_2d(0.0..span, 0.0..max_failed * 1.1)
        .map_err(|e| plot_error(&path, e))?;
    chart
        .configure_mesh()
        .light_line_style(BLACK.mix(0.03))
        .x_desc("time (s)")
        .y_desc("failed")
        .draw()
        .map_err(|e| plot_error(&path, e))?;
    draw_bands(&mut chart, &lulls, 0.0, max_failed * 1.1).map_err(|e| plot_error(&path, e))?;
    draw_marks(&mut chart, &crashes, 0.0, max_failed * 1.1).map_err(|e| plot_error(&path, e))?;
    draw_lines(&mut chart, &failures).map_err(|e| plot_error(&path, e))?;
    root.present().map_err(|e| plot_error(&path, e))?;
    Ok(())
}

/// Draws `storm_connects.svg` in `dir`: connect attempts per 100 ms of every pool
/// kind, from 1 s before the upstream went down; the outage is shaded.
///
/// # Errors
/// When the directory or the file cannot be written.
pub fn storm(dir: &Path, runs: &[StormRun], after: Duration) -> Result<(), BenchError> {
    std::fs::create_dir_all(dir)?;
    let path = dir.join("storm_connects.svg");
    let Some(first) = runs.first() else {
        return Ok(());
    };
    let down = first.down_for.as_secs_f64();
    let from = -1.0;
    let until = down + after.as_secs_f64();
    let width = storm::BUCKET.as_secs_f64();
    let series: Vec<Series> = runs
        .iter()
        .map(|run| {
            let n = ((until - from) / width).ceil() as usize;
            let mut counts = vec![0u64; n];
            for at in &run.attempts {
                let i = ((at - from) / width).floor();
                if i >= 0.0
                    && let Some(count) = counts.get_mut(i as usize)
                {
                    *count += 1;
                }
            }
            let points = counts
                .iter()
                .enumerate()
                .map(|(i, c)| (from + i as f64 * width, *c as f64))
                .collect();
            (kind_label(run.kind), points)
        })
        .collect();
    let max = series
        .iter()
        .flat_map(|(_, points)| points.iter().map(|p| p.1))
        .fold(1.0, f64::max);
    let root = SVGBackend::new(&path, (1000, 480)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| plot_error(&path, e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "Reconnect storm: connect attempts per 100 ms (upstream down: shaded)",
            ("sans-serif", 20),
        )
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(64)
        .build_cartesian_2d(from..until, (0.5..max * 2.0).log_scale())
        .map_err(|e| plot_error(&path, e))?;
    chart
        .configure_mesh()
        .light_line_style(BLACK.mix(0.03))
        .x_desc("time since the upstream went down (s)")
        .y_desc("connect attempts / 100 ms")
        .draw()
        .map_err(|e| plot_error(&path, e))?;
    draw_bands(&mut chart, &[(0.0, down)], 0.5, max * 2.0).map_err(|e| plot_error(&path, e))?;
    // A log axis has no zero: empty buckets sit on its floor.
    let floored: Vec<Series> = series
        .into_iter()
        .map(|(name, points)| {
            (
                name,
                points.into_iter().map(|(x, y)| (x, y.max(0.5))).collect(),
            )
        })
        .collect();
    draw_lines(&mut chart, &floored).map_err(|e| plot_error(&path, e))?;
    root.present().map_err(|e| plot_error(&path, e))?;
    Ok(())
}

fn kind_label(kind: Kind) -> String {
    kind.label().to_owned()
}

type Chart<'a, Y> =
    ChartContext<'a, SVGBackend<'a>, Cartesian2d<plotters::coord::types::RangedCoordf64, Y>>;

fn draw_lines<'a, Y>(
    chart: &mut Chart<'a, Y>,
    series: &[Series],
) -> Result<(), DrawingAreaErrorKind<std::io::Error>>
where
    Y: Ranged<ValueType = f64>,
{
    for (index, (name, points)) in series.iter().enumerate() {
        let color = PALETTE[index % PALETTE.len()];
        chart
            .draw_series(LineSeries::new(
                points.iter().copied(),
                color.stroke_width(2),
            ))?
            .label(name.as_str())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
    }
    draw_legend(chart)
}

/// The legend of the series drawn so far, in the upper right corner.
fn draw_legend<'a, Y>(chart: &mut Chart<'a, Y>) -> Result<(), DrawingAreaErrorKind<std::io::Error>>
where
    Y: Ranged<ValueType = f64>,
{
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
}

fn draw_marks<'a, Y>(
    chart: &mut Chart<'a, Y>,
    at: &[f64],
    low: f64,
    high: f64,
) -> Result<(), DrawingAreaErrorKind<std::io::Error>>
where
    Y: Ranged<ValueType = f64>,
{
    for x in at {
        chart.draw_series(DashedLineSeries::new(
            [(*x, low), (*x, high)],
            6,
            4,
            BLACK.mix(0.5).stroke_width(1),
        ))?;
    }
    Ok(())
}

/// Draws each run of consecutive points of each series as one line.
fn draw_gapped<'a, Y>(
    chart: &mut Chart<'a, Y>,
    series: &[GappedSeries],
) -> Result<(), DrawingAreaErrorKind<std::io::Error>>
where
    Y: Ranged<ValueType = f64>,
{
    for (index, (name, points)) in series.iter().enumerate() {
        let color = PALETTE[index % PALETTE.len()];
        let mut segments: Vec<Vec<(f64, f64)>> = vec![Vec::new()];
        for point in points {
            match (point, segments.last_mut()) {
                (Some(point), Some(segment)) => segment.push(*point),
                (None, Some(segment)) if !segment.is_empty() => segments.push(Vec::new()),
                _ => {}
            }
        }
        for (n, segment) in segments.into_iter().filter(|s| !s.is_empty()).enumerate() {
            let drawn = chart.draw_series(LineSeries::new(segment, color.stroke_width(2)))?;
            if n == 0 {
                drawn.label(name.as_str()).legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
                });
            }
        }
    }
    draw_legend(chart)
}

/// Shades the spans `(from, to)` over the whole height.
fn draw_bands<'a, Y>(
    chart: &mut Chart<'a, Y>,
    spans: &[(f64, f64)],
    low: f64,
    high: f64,
) -> Result<(), DrawingAreaErrorKind<std::io::Error>>
where
    Y: Ranged<ValueType = f64>,
{
    chart.draw_series(
        spans.iter().map(|(from, to)| {
            Rectangle::new([(*from, low), (*to, high)], BLACK.mix(0.07).filled())
        }),
    )?;
    Ok(())
}

/// Draws `http_race.svg` in `dir`: the share of requests each HTTP client failed in
/// each race case of the `http` scenario, side by side.
///
/// # Errors
/// When the directory or the file cannot be written.
pub fn http(dir: &Path, records: &[crate::report::Record]) -> Result<(), BenchError> {
    std::fs::create_dir_all(dir)?;
    let path = dir.join("http_race.svg");
    let clients = crate::http::Contender::ALL.map(crate::http::Contender::label);
    let failed = |case: &str, client: &str| {
        records
            .iter()
            .find(|r| {
                r.scenario == "http"
                    && r.case == case
                    && r.pool == client
                    && r.metric == "failed_pct"
            })
            .map(|r| r.value)
    };
    let cases: Vec<&str> = crate::http::RACE_CASES
        .iter()
        .map(|c| c.0)
        .filter(|case| clients.iter().any(|client| failed(case, client).is_some()))
        .collect();
    if cases.is_empty() {
        return Ok(());
    }
    let top = cases
        .iter()
        .flat_map(|case| clients.iter().filter_map(|client| failed(case, client)))
        .fold(1.0, f64::max)
        * 1.2;
    let root = SVGBackend::new(&path, (1000, 480)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| plot_error(&path, e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "HTTP keep-alive race: requests failed (%), 32 clients, pauses around the close",
            ("sans-serif", 20),
        )
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(64)
        .build_cartesian_2d(-0.5..cases.len() as f64 - 0.5, 0.0..top)
        .map_err(|e| plot_error(&path, e))?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .light_line_style(BLACK.mix(0.03))
        .x_labels(cases.len())
        .x_label_formatter(&|x| {
            let i = x.round();
            if (x - i).abs() > 0.01 || i < 0.0 {
                return String::new();
            }
            cases
                .get(i as usize)
                .map(|c| (*c).to_owned())
                .unwrap_or_default()
        })
        .y_desc("failed (%)")
        .draw()
        .map_err(|e| plot_error(&path, e))?;
    let width = 0.8 / clients.len() as f64;
    for (k, client) in clients.iter().enumerate() {
        let color = PALETTE[k % PALETTE.len()];
        let bars = cases.iter().enumerate().filter_map(|(i, case)| {
            let x0 = i as f64 - 0.4 + k as f64 * width;
            failed(case, client)
                .map(|value| Rectangle::new([(x0, 0.0), (x0 + width * 0.9, value)], color.filled()))
        });
        chart
            .draw_series(bars)
            .map_err(|e| plot_error(&path, e))?
            .label(*client)
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], color.filled()));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperLeft)
        .draw()
        .map_err(|e| plot_error(&path, e))?;
    root.present().map_err(|e| plot_error(&path, e))?;
    Ok(())
}
