//! The charts to project in class, as SVG: plotters' SVG backend writes text as `<text>`
//! elements, so no font files are needed to draw them, and any browser shows them.
//!
//! `compare` draws throughput and latency; `soak` draws the server's memory and descriptors
//! over time.

use std::path::Path;

use anyhow::anyhow;
use plotters::coord::{CoordTranslate, Shift};
use plotters::prelude::*;

use crate::plans::{versions_for, Kind};
use crate::results::Results;
use crate::servers::VERSIONS;

const SIZE: (u32, u32) = (900, 520);
const FONT: &str = "sans-serif";
const COLORS: [RGBColor; 4] = [
    RGBColor(0x1f, 0x77, 0xb4),
    RGBColor(0xff, 0x7f, 0x0e),
    RGBColor(0x2c, 0xa0, 0x2c),
    RGBColor(0xd6, 0x27, 0x28),
];

/// Draws `throughput.svg`, `latency-paced.svg` and `latency-burst.svg` into `dir`, and
/// `crowd.svg` when the crowd was measured.
pub fn draw_all(dir: &Path, results: &Results) -> anyhow::Result<()> {
    if !results.crowd_plans().is_empty() {
        crowd(&dir.join("crowd.svg"), results)?;
    }
    if results.workloads.iter().all(|p| p.kind == Kind::Crowd) {
        return Ok(());
    }
    throughput(&dir.join("throughput.svg"), results)?;
    latency(
        &dir.join("latency-paced.svg"),
        results,
        Kind::Paced,
        "Latency a chatting person feels (paced chat)",
    )?;
    latency(
        &dir.join("latency-burst.svg"),
        results,
        Kind::Burst,
        "Latency under a burst",
    )
}

/// The last step of every chart: its legend, then the file.
fn finish<'a, CT: CoordTranslate>(
    root: &DrawingArea<SVGBackend<'a>, Shift>,
    chart: &mut ChartContext<'a, SVGBackend<'a>, CT>,
    path: &Path,
) -> anyhow::Result<()> {
    let err = plot_error(path);
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .label_font((FONT, 16))
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .draw()
        .map_err(&err)?;
    root.present().map_err(&err)
}

fn plot_error<E: std::fmt::Display>(path: &Path) -> impl Fn(E) -> anyhow::Error + '_ {
    move |error| anyhow!("cannot draw {}: {error}", path.display())
}

/// Deliveries per second of each version, one bar per burst workload.
fn throughput(path: &Path, results: &Results) -> anyhow::Result<()> {
    let kinds = [Kind::Burst, Kind::Scale];
    let value = |version: &str, kind| {
        results
            .summary(version, kind)
            .and_then(|s| s.deliveries_per_s)
            .map(|rate| rate / 1e6)
    };
    let highest = VERSIONS
        .iter()
        .flat_map(|v| kinds.map(|k| value(v.name, k)))
        .flatten()
        .fold(0.0, f64::max);
    let err = plot_error(path);
    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(&err)?;
    let mut chart = ChartBuilder::on(&root)
        .caption("Deliveries per second (higher is better)", (FONT, 24))
        .margin(20)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(-0.5f64..3.5f64, 0f64..(highest * 1.15).max(0.1))
        .map_err(&err)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(VERSIONS.len())
        .x_label_formatter(&|x| {
            VERSIONS
                .get(x.round() as usize)
                .map_or(String::new(), |v| v.name.to_owned())
        })
        .y_desc("million deliveries/s")
        .label_style((FONT, 16))
        .draw()
        .map_err(&err)?;

    let width = 0.8 / kinds.len() as f64;
    for (k, kind) in kinds.into_iter().enumerate() {
        let color = COLORS[k];
        let clients = results.plan(kind).map_or(0, |p| p.clients);
        let bars: Vec<(f64, f64)> = VERSIONS
            .iter()
            .enumerate()
            .filter_map(|(i, v)| Some((i as f64 - 0.4 + k as f64 * width, value(v.name, kind)?)))
            .collect();
        chart
            .draw_series(bars.iter().map(|&(left, height)| {
                Rectangle::new([(left, 0.0), (left + width * 0.95, height)], color.filled())
            }))
            .map_err(&err)?
            .label(format!("burst, {clients} clients"))
            .legend(move |(x, y)| Rectangle::new([(x, y - 6), (x + 14, y + 6)], color.filled()));
        chart
            .draw_series(bars.iter().map(|&(left, height)| {
                Text::new(
                    format!("{height:.2}"),
                    (left + width * 0.1, height + highest * 0.05),
                    (FONT, 14),
                )
            }))
            .map_err(&err)?;
    }
    finish(&root, &mut chart, path)
}

/// Percentile curves (p50 to max) of each version in one workload, on a log scale.
fn latency(path: &Path, results: &Results, kind: Kind, title: &str) -> anyhow::Result<()> {
    const PERCENTILES: [&str; 5] = ["p50", "p90", "p99", "p99.9", "max"];
    let curves: Vec<(usize, Vec<f64>)> = VERSIONS
        .iter()
        .enumerate()
        .filter_map(|(i, v)| {
            let s = results.summary(v.name, kind)?;
            let points = [
                s.latency_p50_us?,
                s.latency_p90_us?,
                s.latency_p99_us?,
                s.latency_p999_us?,
                s.latency_max_us?,
            ];
            Some((i, points.iter().map(|&us| us.max(1) as f64 / 1e3).collect()))
        })
        .collect();
    let all = curves.iter().flat_map(|(_, c)| c.iter().copied());
    let lowest = all.clone().fold(f64::INFINITY, f64::min).min(1.0);
    let highest = all.fold(0.0, f64::max).max(lowest * 10.0);
    let clients = results.plan(kind).map_or(0, |p| p.clients);

    let err = plot_error(path);
    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(&err)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(format!("{title}, {clients} clients"), (FONT, 24))
        .margin(20)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(-0.2f64..4.2f64, (lowest / 2.0..highest * 2.0).log_scale())
        .map_err(&err)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(PERCENTILES.len())
        .x_label_formatter(&|x| {
            PERCENTILES
                .get(x.round() as usize)
                .map_or(String::new(), |p| (*p).to_owned())
        })
        .y_desc("latency, ms (log scale; lower is better)")
        .y_label_formatter(&|ms| format!("{ms}"))
        .label_style((FONT, 16))
        .draw()
        .map_err(&err)?;
    for (i, curve) in &curves {
        let color = COLORS[*i % COLORS.len()];
        let points: Vec<(f64, f64)> = curve
            .iter()
            .enumerate()
            .map(|(x, &y)| (x as f64, y))
            .collect();
        chart
            .draw_series(LineSeries::new(points.clone(), color.stroke_width(3)))
            .map_err(&err)?
            .label(VERSIONS[*i].name)
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 18, y)], color.stroke_width(3)));
        chart
            .draw_series(points.iter().map(|&p| Circle::new(p, 4, color.filled())))
            .map_err(&err)?;
    }
    finish(&root, &mut chart, path)
}

/// A soak's server resources over time: RSS (MB, left axis) and open descriptors (right
/// axis), from `(seconds, rss_mb, descriptors)` points, with the soak's traffic between the
/// two dashed lines at 0 and `soak_s`.
pub fn soak(
    path: &Path,
    title: &str,
    points: &[(f64, f64, f64)],
    soak_s: f64,
) -> anyhow::Result<()> {
    let first = points.iter().map(|p| p.0).fold(0.0, f64::min);
    let last = points.iter().map(|p| p.0).fold(soak_s, f64::max);
    // Room above the lines for the legend, which sits in the upper left.
    const HEADROOM: f64 = 1.6;
    let rss_top = points.iter().map(|p| p.1).fold(1.0, f64::max) * HEADROOM;
    let fds_top = points.iter().map(|p| p.2).fold(10.0, f64::max) * HEADROOM;
    let (rss_color, fds_color) = (COLORS[0], COLORS[1]);

    let err = plot_error(path);
    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(&err)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, (FONT, 24))
        .margin(20)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .right_y_label_area_size(60)
        .build_cartesian_2d(first..last, 0f64..rss_top)
        .map_err(&err)?
        .set_secondary_coord(first..last, 0f64..fds_top);
    chart
        .configure_mesh()
        .x_desc("seconds since the soak's traffic started")
        .x_label_formatter(&|s| format!("{s:.0}"))
        .y_desc("RSS, MB")
        .label_style((FONT, 16))
        .draw()
        .map_err(&err)?;
    chart
        .configure_secondary_axes()
        .y_desc("open descriptors")
        .y_label_formatter(&|fds| format!("{fds:.0}"))
        .label_style((FONT, 16))
        .draw()
        .map_err(&err)?;
    let edge = BLACK.mix(0.5).stroke_width(1);
    chart
        .draw_series(
            [0.0, soak_s]
                .map(|x| DashedLineSeries::new([(x, 0.0), (x, rss_top)], 6, 4, edge))
                .into_iter()
                .flatten(),
        )
        .map_err(&err)?
        .label("traffic starts, senders stop")
        .legend(move |(x, y)| PathElement::new([(x, y), (x + 18, y)], edge));
    chart
        .draw_series(LineSeries::new(
            points.iter().map(|p| (p.0, p.1)),
            rss_color.stroke_width(3),
        ))
        .map_err(&err)?
        .label("server RSS (MB)")
        .legend(move |(x, y)| PathElement::new([(x, y), (x + 18, y)], rss_color.stroke_width(3)));
    chart
        .draw_secondary_series(LineSeries::new(
            points.iter().map(|p| (p.0, p.2)),
            fds_color.stroke_width(3),
        ))
        .map_err(&err)?
        .label("open descriptors")
        .legend(move |(x, y)| PathElement::new([(x, y), (x + 18, y)], fds_color.stroke_width(3)));
    finish(&root, &mut chart, path)
}

/// How many sizes the crowd chart's log axis labels: more crowd the labels into each other.
const CROWD_X_LABELS: usize = 6;

/// Server CPU per delivery against the crowd's size, both on log scales: one line per version
/// and poller. poll's lines climb with the silent clients; epoll's stay flat.
fn crowd(path: &Path, results: &Results) -> anyhow::Result<()> {
    let lineup = versions_for(Kind::Crowd);
    let curves: Vec<(usize, Vec<(f64, f64)>)> = lineup
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let points = results
                .crowd_plans()
                .iter()
                .filter_map(|plan| {
                    let ns = results.crowd(v.name, plan.clients)?.cpu_ns_per_delivery?;
                    Some((plan.clients as f64, ns.max(1.0) / 1e3))
                })
                .collect();
            (i, points)
        })
        .collect();
    let all = curves.iter().flat_map(|(_, c)| c.iter().copied());
    let (x_low, x_high) = all
        .clone()
        .fold((f64::INFINITY, 1.0f64), |(lo, hi), (x, _)| {
            (lo.min(x), hi.max(x))
        });
    let (y_low, y_high) = all.fold((f64::INFINITY, 0.0f64), |(lo, hi), (_, y)| {
        (lo.min(y), hi.max(y))
    });
    let x_low = if x_low.is_finite() { x_low } else { 1.0 };
    let y_low = if y_low.is_finite() { y_low } else { 0.1 };

    let err = plot_error(path);
    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(&err)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "Server CPU per delivery, 10 clients talking among N (lower is better)",
            (FONT, 22),
        )
        .margin(20)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(
            (x_low / 1.5..x_high * 1.5).log_scale(),
            (y_low / 2.0..y_high * 8.0).log_scale(),
        )
        .map_err(&err)?;
    chart
        .configure_mesh()
        .light_line_style(WHITE)
        .x_labels(CROWD_X_LABELS)
        .x_desc("clients connected (log scale)")
        .x_label_formatter(&|n| format!("{n:.0}"))
        .y_desc("µs of server CPU per delivery (log scale)")
        .y_label_formatter(&|us| format!("{us}"))
        .label_style((FONT, 16))
        .draw()
        .map_err(&err)?;
    for (i, points) in &curves {
        let version = lineup[*i];
        // A poller's two lines share a colour: poll solid, epoll dashed.
        let color = COLORS[match version.binary {
            "v2-select" => 0,
            "v3-broadcast" => 1,
            _ => 2,
        }];
        let epoll = !version.variant.is_empty();
        let style = color.stroke_width(3);
        let label = match version.binary {
            "v4-async" => "v4-async (tokio: epoll)".to_owned(),
            binary if epoll => format!("{binary} epoll"),
            binary => format!("{binary} poll"),
        };
        let series = if epoll {
            chart.draw_series(DashedLineSeries::new(points.clone(), 8, 6, style))
        } else {
            chart.draw_series(LineSeries::new(points.clone(), style))
        }
        .map_err(&err)?;
        // The legend draws epoll's line broken in two, like the dashes.
        let gap = if epoll { 4 } else { 0 };
        series.label(label).legend(move |(x, y)| {
            EmptyElement::at((x, y))
                + PathElement::new([(0, 0), (9 - gap, 0)], color.stroke_width(3))
                + PathElement::new([(9 + gap, 0), (18, 0)], color.stroke_width(3))
        });
        chart
            .draw_series(points.iter().map(|&p| Circle::new(p, 4, color.filled())))
            .map_err(&err)?;
    }
    finish(&root, &mut chart, path)
}
