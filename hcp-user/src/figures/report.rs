//! The report to look at (`hcp report`): one self-contained HTML file that
//! answers the rollout questions for one session. It reads offline and
//! without JavaScript: the plots are inline SVG drawn with plotters, each
//! titled with its answer, with the numbers behind it in a table under it.
//! Baseline and session keep the same colours in every plot.

use std::fmt::Write as _;

use hcp_common::hist::{bucket_high, LatencyHist};
use plotters::prelude::*;

use super::analysis::Analysis;
use crate::error::{Error, Result};
use crate::state::counters::{from_record, HistRecord};
use crate::state::history::Interval;
use crate::state::record::WindowRecord;
use crate::tracer::hist::{merge, summarize};

/// Everything the report shows.
pub struct ReportData {
    pub session: String,
    pub origin: String,
    pub analysis: Analysis,
    pub switch: WindowRecord,
    /// Origin writes in the `--baseline` period.
    pub baseline: Option<HistRecord>,
    /// The session's intervals, oldest first.
    pub history: Vec<Interval>,
}

const BASELINE: RGBColor = RGBColor(70, 100, 170);
const SESSION: RGBColor = RGBColor(225, 110, 20);
const COPY_OUT: RGBColor = RGBColor(190, 40, 60);
const GREY: RGBColor = RGBColor(120, 120, 120);
const WIDTH: u32 = 900;
const HEIGHT: u32 = 340;

/// The report as HTML.
pub fn html(data: &ReportData) -> Result<String> {
    let a = &data.analysis;
    let t0 = data.history.first().map_or(0.0, |iv| iv.start_unix);
    let mut out = String::new();
    let _ = write!(
        out,
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\n<title>hcp report: {session} of \
         {origin}</title>\n<style>{STYLE}</style></head>\n<body>\n<h1>What a snapshot of {origin} costs</h1>\n<p \
         class=\"meta\">Session {session}; snapshot taken {taken}; {n} intervals recorded over {span}.</p>\n",
        session = esc(&data.session),
        origin = esc(&data.origin),
        taken = esc(&crate::clock::format_time(t0 as u64)),
        n = data.history.len(),
        span = esc(&duration(data.history.last().map_or(0.0, |iv| iv.end_unix - t0))),
    );
    out.push_str("<h2>The answers</h2>\n<table class=\"verdicts\">\n");
    for (q, v) in [
        ("What does a snapshot do to write latency?", &a.verdicts.write_latency),
        ("How long do applications stall at the switch?", &a.verdicts.switch),
        ("How large must the store be?", &a.verdicts.store),
    ] {
        let _ = writeln!(out, "<tr><th>{}</th><td>{}</td></tr>", esc(q), esc(v));
    }
    out.push_str("</table>\n");
    distribution(&mut out, data)?;
    latency_over_time(&mut out, data, t0)?;
    copy_out(&mut out, data, t0)?;
    store_fill(&mut out, data, t0)?;
    switch_timeline(&mut out, data)?;
    intervals_table(&mut out, data, t0);
    out.push_str("</body></html>\n");
    Ok(out)
}

const STYLE: &str = "body{font-family:sans-serif;max-width:960px;margin:2em auto;color:#222}\
h1{font-size:1.5em}h2{font-size:1.15em;margin-top:2em}.meta{color:#555}\
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:.25em .6em;text-align:right}\
.verdicts th,.verdicts td{text-align:left}figure{margin:0}svg{max-width:100%;height:auto}";

/// Text for HTML.
fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

fn duration(secs: f64) -> String {
    humantime::format_duration(std::time::Duration::from_secs(secs.max(0.0) as u64)).to_string()
}

fn ms(ns: u64) -> String {
    format!("{:.3}", ns as f64 / 1e6)
}

type Drawn = std::result::Result<(), String>;

/// An axis label: whole numbers from 10 on, one decimal below.
fn tick(v: &f64) -> String {
    let text = if v.abs() >= 10.0 { format!("{v:.0}") } else { format!("{v:.1}") };
    text.strip_suffix(".0").map_or(text.clone(), str::to_string)
}

/// One plot: a section titled with its answer, the SVG, and what follows.
fn figure(
    out: &mut String,
    title: &str,
    draw: impl FnOnce(DrawingArea<SVGBackend, plotters::coord::Shift>) -> Drawn,
) -> Result<()> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (WIDTH, HEIGHT)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| Error::system(format!("drawing the report: {e}")))?;
        draw(root.clone()).map_err(|e| Error::system(format!("drawing {title}: {e}")))?;
        root.present().map_err(|e| Error::system(format!("drawing the report: {e}")))?;
    }
    let _ = write!(out, "<section>\n<h2>{}</h2>\n<figure>{svg}</figure>\n", esc(title));
    Ok(())
}

/// A named line of one colour.
type Series<'a> = (&'a str, RGBColor, Vec<(f64, f64)>);

/// Points of the cumulative distribution of `h`: (latency µs, % at or below).
fn cdf(h: &LatencyHist) -> Vec<(f64, f64)> {
    let mut seen = 0u64;
    h.buckets
        .iter()
        .enumerate()
        .filter(|(_, c)| **c > 0)
        .map(|(i, c)| {
            seen += c;
            let high = bucket_high(i).min(h.max_ns.max(1));
            (high as f64 / 1e3, seen as f64 * 100.0 / h.count.max(1) as f64)
        })
        .collect()
}

fn distribution(out: &mut String, data: &ReportData) -> Result<()> {
    let during = merge(data.history.iter().map(|iv| from_record(&iv.app_writes.latency)));
    let baseline = data.baseline.as_ref().map(from_record).filter(|h| h.count > 0);
    let title = match &data.analysis.write_latency.ratio {
        Some(r) => format!("Write latency under the snapshot: p99 {:.1}x the baseline", r.p99),
        None => "Write latency under the snapshot (no baseline measured)".to_string(),
    };
    let series: Vec<Series> =
        [("baseline", BASELINE, baseline.as_ref()), ("during the snapshot", SESSION, Some(&during))]
            .into_iter()
            .filter_map(|(name, colour, h)| Some((name, colour, cdf(h.filter(|h| h.count > 0)?))))
            .collect();
    let xs = series.iter().flat_map(|(_, _, p)| p.iter().map(|(x, _)| *x));
    let (lo, hi) = xs.fold((f64::MAX, 0f64), |(lo, hi), x| (lo.min(x), hi.max(x)));
    let (lo, hi) = if hi > 0.0 { ((lo / 1.5).max(0.1), hi * 1.5) } else { (1.0, 1e6) };
    figure(out, &title, |root| {
        let mut chart = ChartBuilder::on(&root)
            .margin(12)
            .x_label_area_size(42)
            .y_label_area_size(56)
            .build_cartesian_2d((lo..hi).log_scale(), 0f64..100f64)
            .map_err(|e| e.to_string())?;
        chart
            .configure_mesh()
            .x_label_formatter(&tick)
            .y_label_formatter(&tick)
            .x_desc("write latency, µs (log scale)")
            .y_desc("% of writes at or below")
            .draw()
            .map_err(|e| e.to_string())?;
        for (name, colour, points) in &series {
            let colour = *colour;
            chart
                .draw_series(LineSeries::new(points.iter().copied(), colour.stroke_width(2)))
                .map_err(|e| e.to_string())?
                .label(*name)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], colour.stroke_width(2)));
        }
        chart.configure_series_labels().background_style(WHITE).border_style(GREY).draw().map_err(|e| e.to_string())?;
        Ok(())
    })?;
    out.push_str(
        "<table><tr><th></th><th>writes</th><th>p50 ms</th><th>p99 ms</th><th>p99.9 ms</th><th>max ms</th></tr>\n",
    );
    for (name, h) in [("baseline", baseline), ("during the snapshot", Some(during))] {
        if let Some(h) = h.filter(|h| h.count > 0) {
            let s = summarize(&h);
            let _ = writeln!(
                out,
                "<tr><th>{name}</th><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                s.count,
                ms(s.p50_ns),
                ms(s.p99_ns),
                ms(s.p999_ns),
                ms(s.max_ns)
            );
        }
    }
    out.push_str("</table>\n</section>\n");
    Ok(())
}

/// (seconds since the snapshot, p50 ms, p99 ms) of each interval with writes.
fn latency_points(data: &ReportData, t0: f64) -> Vec<(f64, f64, f64)> {
    data.history
        .iter()
        .filter(|iv| iv.app_writes.latency.count > 0)
        .map(|iv| {
            let s = summarize(&from_record(&iv.app_writes.latency));
            ((iv.start_unix + iv.end_unix) / 2.0 - t0, s.p50_ns as f64 / 1e6, s.p99_ns as f64 / 1e6)
        })
        .collect()
}

fn latency_over_time(out: &mut String, data: &ReportData, t0: f64) -> Result<()> {
    let points = latency_points(data, t0);
    let base_p99 = data.analysis.write_latency.baseline.as_ref().map(|b| b.p99_ns as f64 / 1e6);
    let title = match &data.analysis.write_latency.worst_interval {
        Some(w) => format!(
            "Write latency over time: the worst interval's p99 was {} ms, {:.0} s after the snapshot",
            ms(w.latency.p99_ns),
            w.start_unix - t0
        ),
        None => "Write latency over time".to_string(),
    };
    let end = data.history.last().map_or(1.0, |iv| iv.end_unix - t0).max(1.0);
    let ys = points.iter().flat_map(|p| [p.1, p.2]).chain(base_p99);
    let (lo, hi) = ys.fold((f64::MAX, 0f64), |(lo, hi), y| (lo.min(y), hi.max(y)));
    let (lo, hi) = if hi > 0.0 { ((lo / 1.5).max(1e-3), hi * 1.5) } else { (0.01, 10.0) };
    figure(out, &title, |root| {
        let mut chart = ChartBuilder::on(&root)
            .margin(12)
            .x_label_area_size(42)
            .y_label_area_size(56)
            .build_cartesian_2d(0f64..end, (lo..hi).log_scale())
            .map_err(|e| e.to_string())?;
        chart
            .configure_mesh()
            .x_label_formatter(&tick)
            .y_label_formatter(&tick)
            .x_desc("seconds since the snapshot")
            .y_desc("write latency, ms (log scale)")
            .draw()
            .map_err(|e| e.to_string())?;
        if let Some(b) = base_p99 {
            chart
                .draw_series(DashedLineSeries::new([(0.0, b), (end, b)], 6, 4, BASELINE.stroke_width(2)))
                .map_err(|e| e.to_string())?
                .label("baseline p99")
                .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BASELINE.stroke_width(2)));
        }
        for (name, pick, width) in [("p99", 2usize, 2u32), ("p50", 1, 1)] {
            let line = points.iter().map(move |p| (p.0, if pick == 2 { p.2 } else { p.1 }));
            chart
                .draw_series(LineSeries::new(line, SESSION.stroke_width(width)))
                .map_err(|e| e.to_string())?
                .label(name)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], SESSION.stroke_width(width)));
        }
        chart.configure_series_labels().background_style(WHITE).border_style(GREY).draw().map_err(|e| e.to_string())?;
        Ok(())
    })?;
    out.push_str("</section>\n");
    Ok(())
}

const MIB: f64 = 1048576.0;

fn copy_out(out: &mut String, data: &ReportData, t0: f64) -> Result<()> {
    let c = &data.analysis.copy_out;
    let rate = |bytes: u64, iv: &Interval| if iv.seconds() > 0.0 { bytes as f64 / MIB / iv.seconds() } else { 0.0 };
    let mid = |iv: &Interval| (iv.start_unix + iv.end_unix) / 2.0 - t0;
    let copied: Vec<(f64, f64)> = data.history.iter().map(|iv| (mid(iv), rate(iv.copy_out.bytes, iv))).collect();
    let written: Vec<(f64, f64)> = data.history.iter().map(|iv| (mid(iv), rate(iv.app_writes.bytes, iv))).collect();
    let end = data.history.last().map_or(1.0, |iv| iv.end_unix - t0).max(1.0);
    let top = copied.iter().chain(&written).map(|p| p.1).fold(0.0, f64::max).max(0.1) * 1.15;
    let levelled = c.levelled_off_at_unix.map_or(String::new(), |t| format!(", levelled off after {:.0} s", t - t0));
    let title = format!(
        "Copy-out: {:.2} MiB/s on average, {:.2} MiB/s at its peak{levelled}",
        c.mean_mib_per_s, c.peak_mib_per_s
    );
    figure(out, &title, |root| {
        let mut chart = ChartBuilder::on(&root)
            .margin(12)
            .x_label_area_size(42)
            .y_label_area_size(56)
            .build_cartesian_2d(0f64..end, 0f64..top)
            .map_err(|e| e.to_string())?;
        chart
            .configure_mesh()
            .x_label_formatter(&tick)
            .y_label_formatter(&tick)
            .x_desc("seconds since the snapshot")
            .y_desc("MiB/s")
            .draw()
            .map_err(|e| e.to_string())?;
        chart
            .draw_series(AreaSeries::new(copied.iter().copied(), 0.0, COPY_OUT.mix(0.3)).border_style(COPY_OUT))
            .map_err(|e| e.to_string())?
            .label("copy-out (old data read to be copied into the store)")
            .legend(|(x, y)| Rectangle::new([(x, y - 5), (x + 20, y + 5)], COPY_OUT.mix(0.3).filled()));
        chart
            .draw_series(LineSeries::new(written.iter().copied(), SESSION.stroke_width(2)))
            .map_err(|e| e.to_string())?
            .label("application writes to the origin")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], SESSION.stroke_width(2)));
        chart.configure_series_labels().background_style(WHITE).border_style(GREY).draw().map_err(|e| e.to_string())?;
        Ok(())
    })?;
    let amp = |w: Option<f64>| w.map_or("n/a".to_string(), |w| format!("{w:.2}"));
    let _ = writeln!(
        out,
        "<table><tr><th>write amplification</th><td>{} overall</td><td>{} in the first minute</td><td>{} in the last \
         minute</td></tr></table>\n</section>",
        amp(c.write_amplification),
        amp(c.write_amplification_first_minute),
        amp(c.write_amplification_last_minute)
    );
    Ok(())
}

fn store_fill(out: &mut String, data: &ReportData, t0: f64) -> Result<()> {
    let s = &data.analysis.store;
    let used: Vec<(f64, f64)> =
        data.history.iter().filter_map(|iv| Some((iv.end_unix - t0, iv.store_used_bytes? as f64 / MIB))).collect();
    let quota = s.quota_bytes as f64 / MIB;
    let end = data.history.last().map_or(1.0, |iv| iv.end_unix - t0).max(1.0);
    // The projection to full, at the recent rate, drawn up to at most
    // twice the time recorded.
    let projection = used.last().zip(s.recent_bytes_per_s.filter(|r| *r > 0.0)).map(|(&(t, u), rate)| {
        let until = s.full_at_unix.map_or(end * 2.0, |f| f - t0).min(end * 2.0).max(t);
        vec![(t, u), (until, u + rate / MIB * (until - t))]
    });
    let x_end = projection.as_ref().map_or(end, |p| p[1].0).max(end);
    let title = match (s.time_to_full_seconds, s.recent_bytes_per_s) {
        (Some(t), Some(r)) => format!("Store: full in {} at {:.2} MiB/s", duration(t), r / MIB),
        _ => "Store: not growing at the end of the record".to_string(),
    };
    figure(out, &title, |root| {
        let mut chart = ChartBuilder::on(&root)
            .margin(12)
            .x_label_area_size(42)
            .y_label_area_size(56)
            .build_cartesian_2d(0f64..x_end, 0f64..quota.max(1.0) * 1.08)
            .map_err(|e| e.to_string())?;
        chart
            .configure_mesh()
            .x_label_formatter(&tick)
            .y_label_formatter(&tick)
            .x_desc("seconds since the snapshot")
            .y_desc("store used, MiB")
            .draw()
            .map_err(|e| e.to_string())?;
        chart
            .draw_series(DashedLineSeries::new([(0.0, quota), (x_end, quota)], 6, 4, GREY.stroke_width(2)))
            .map_err(|e| e.to_string())?
            .label("the most the store may take")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], GREY.stroke_width(2)));
        chart
            .draw_series(LineSeries::new(used.iter().copied(), SESSION.stroke_width(2)))
            .map_err(|e| e.to_string())?
            .label("used (data and metadata)")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], SESSION.stroke_width(2)));
        if let Some(p) = &projection {
            chart
                .draw_series(DashedLineSeries::new(p.iter().copied(), 6, 4, SESSION.stroke_width(2)))
                .map_err(|e| e.to_string())?
                .label("projected at the last minute's rate")
                .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], SESSION.stroke_width(1)));
        }
        chart.configure_series_labels().background_style(WHITE).border_style(GREY).draw().map_err(|e| e.to_string())?;
        Ok(())
    })?;
    let bytes = |b: Option<f64>| b.map_or("n/a".to_string(), |b| crate::size::format_bytes(b as u64));
    let _ = write!(
        out,
        "<table><tr><th>growth now (last minute)</th><td>{}/s</td></tr><tr><th>since the snapshot</th><td>{}/s</td></tr>\
         <tr><th>at the peak</th><td>{}/s</td></tr>",
        bytes(s.recent_bytes_per_s),
        bytes(s.mean_bytes_per_s),
        bytes(s.peak_bytes_per_s)
    );
    if let Some(w) = &s.window {
        let _ = write!(
            out,
            "<tr><th>a window of {} needs</th><td>{} at the mean rate, {} at the peak rate</td></tr>",
            duration(w.seconds),
            bytes(w.needed_bytes_at_mean_rate.map(|b| b as f64)),
            bytes(w.needed_bytes_at_peak_rate.map(|b| b as f64))
        );
    }
    let _ = writeln!(out, "</table>\n<p>Assumed: {}.</p>\n</section>", esc(&s.assumption));
    Ok(())
}

fn switch_timeline(out: &mut String, data: &ReportData) -> Result<()> {
    let w = &data.switch;
    let k = w.kernel.as_ref();
    let pick = |kernel: Option<f64>, own: Option<f64>| kernel.or(own).map(|s| s * 1e3);
    let freeze_call = pick(k.and_then(|k| k.freeze_call_seconds), w.freeze_call_seconds);
    let frozen = pick(k.and_then(|k| k.frozen_seconds), w.frozen_seconds);
    let suspended = pick(k.and_then(|k| k.suspended_seconds), w.suspended_seconds);
    let stall = k.and_then(|k| k.longest_write_stall_seconds).map(|s| s * 1e3);
    // From the freeze's start: the suspend follows the FIFREEZE call.
    let bars: Vec<(&str, f64, f64, RGBColor)> = [
        ("FIFREEZE call", Some(0.0), freeze_call, BASELINE),
        ("filesystem frozen", Some(0.0), frozen, BASELINE),
        ("origin suspended", Some(freeze_call.unwrap_or(0.0)), suspended, GREY),
        ("longest application write stall", Some(0.0), stall, SESSION),
    ]
    .into_iter()
    .filter_map(|(name, start, len, colour)| Some((name, start?, start? + len?, colour)))
    .collect();
    let title = match stall {
        Some(s) => format!("The switch: applications stalled at most {s:.0} ms"),
        None => "The switch".to_string(),
    };
    let end = bars.iter().map(|b| b.2).fold(1.0, f64::max) * 1.4;
    figure(out, &title, |root| {
        let mut chart = ChartBuilder::on(&root)
            .margin(12)
            .x_label_area_size(42)
            .y_label_area_size(20)
            .build_cartesian_2d(0f64..end, 0f64..bars.len().max(1) as f64)
            .map_err(|e| e.to_string())?;
        chart
            .configure_mesh()
            .x_label_formatter(&tick)
            .y_label_formatter(&tick)
            .disable_y_mesh()
            .y_labels(0)
            .x_desc("milliseconds from the start of FIFREEZE")
            .draw()
            .map_err(|e| e.to_string())?;
        for (i, (name, start, stop, colour)) in bars.iter().enumerate() {
            let y = (bars.len() - 1 - i) as f64;
            chart
                .draw_series([Rectangle::new([(*start, y + 0.2), (*stop, y + 0.8)], colour.filled())])
                .map_err(|e| e.to_string())?;
            chart
                .draw_series([Text::new(
                    format!("{name}: {:.1} ms", stop - start),
                    (*stop + end * 0.01, y + 0.62),
                    ("sans-serif", 14).into_font(),
                )])
                .map_err(|e| e.to_string())?;
        }
        Ok(())
    })?;
    out.push_str("<table><tr><th></th><th>ms</th></tr>\n");
    for (name, start, stop, _) in &bars {
        let _ = writeln!(out, "<tr><th>{name}</th><td>{:.3}</td></tr>", stop - start);
    }
    out.push_str("</table>\n<p>Measured in the kernel, at the ioctl and write system calls (hcp's own clock where the kernel's figures are missing).</p>\n</section>\n");
    Ok(())
}

fn intervals_table(out: &mut String, data: &ReportData, t0: f64) {
    let _ = writeln!(
        out,
        "<section><h2>Every interval</h2>\n<details><summary>{} intervals (older ones merged into coarser ones)</summary>\n\
         <table><tr><th>s since the snapshot</th><th>seconds</th><th>writes</th><th>MiB written</th><th>p50 ms</th>\
         <th>p99 ms</th><th>copy-out MiB</th><th>store used MiB</th><th>lost</th></tr>",
        data.history.len()
    );
    for iv in &data.history {
        let s = summarize(&from_record(&iv.app_writes.latency));
        let _ = writeln!(
            out,
            "<tr><td>{:.1}</td><td>{:.1}</td><td>{}</td><td>{:.2}</td><td>{}</td><td>{}</td><td>{:.2}</td><td>{}</td><td>{}</td></tr>",
            iv.start_unix - t0,
            iv.seconds(),
            iv.app_writes.count,
            iv.app_writes.bytes as f64 / MIB,
            ms(s.p50_ns),
            ms(s.p99_ns),
            iv.copy_out.bytes as f64 / MIB,
            iv.store_used_bytes.map_or("-".to_string(), |b| format!("{:.2}", b as f64 / MIB)),
            iv.lost_events
        );
    }
    out.push_str("</table></details></section>\n");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::figures::analysis::{analyze, Totals};
    use crate::state::counters::{to_record, Count};
    use crate::state::history::Timed;
    use crate::state::record::KernelWindow;
    use crate::tracer::hist::from_samples;

    #[test]
    fn every_plot_is_drawn_and_text_is_escaped() {
        let history: Vec<Interval> = (0..30u32)
            .map(|i| Interval {
                start_unix: 1_000.0 + f64::from(i),
                end_unix: 1_001.0 + f64::from(i),
                app_writes: Timed {
                    count: 8,
                    bytes: 8 << 20,
                    latency: to_record(&from_samples(&[200_000 * u64::from(1 + i % 4); 8])),
                },
                copy_out: Count { count: 256, bytes: 1 << 20 },
                store_used_bytes: Some(u64::from(i + 1) << 20),
                ..Interval::default()
            })
            .collect();
        let switch = WindowRecord {
            pre_flush: None,
            freeze_call_seconds: Some(0.04),
            frozen_seconds: Some(0.06),
            suspended_seconds: Some(0.01),
            kernel: Some(KernelWindow { longest_write_stall_seconds: Some(0.05), ..KernelWindow::default() }),
        };
        let baseline = to_record(&from_samples(&[100_000; 50]));
        let summary = summarize(&from_record(&baseline));
        let totals = Totals {
            baseline: Some(&summary),
            during: Some(&summary),
            switch: &switch,
            write_amplification: Some(2.0),
            store_used_bytes: Some(30 << 20),
            store_quota_bytes: 100 << 20,
        };
        let data = ReportData {
            session: "hcp1".into(),
            origin: "/dev/mapper/<odd&name>".into(),
            analysis: analyze(&totals, &history, Some(3600.0)),
            switch,
            baseline: Some(baseline),
            history,
        };
        let html = html(&data).unwrap();
        assert_eq!(html.matches("<svg").count(), 5);
        assert!(html.contains("/dev/mapper/&lt;odd&amp;name&gt;") && !html.contains("<odd&"), "escaped");
        assert!(html.contains("longest application write stall: 50.0 ms"), "the switch's bars are labelled");
        assert!(html.contains("a window of 1h needs"));
        assert!(!html.contains("<script"), "no JavaScript");
        assert!(!html.contains("<link") && !html.contains("src=\"http"), "nothing loaded from elsewhere");
    }
}
