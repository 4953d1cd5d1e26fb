//! Figures drawn with plotters' SVG backend (no system libraries; text is left to the viewer's fonts).
//!
//! - `scan_plot_svg`: one row per conv in execution order, top to bottom, labelled with the conv's name: a
//!   box of its channels' FRG scores (quartiles, median, Tukey whiskers), every channel as a dot, the
//!   selected (to be pruned) channels as larger red dots; a legend row above the chart.
//! - `metrics_chart_svg`: Acc / ASR / RA of each stage of a defense as grouped bars.
use std::path::Path;

use plotters::coord::ranged1d::{DefaultFormatting, KeyPointHint};
use plotters::prelude::*;

use crate::error::{Error, Result};
use crate::fmp::metrics::Metrics;
use crate::fmp::select::ScanReport;

/// Colour of a selected channel's dot (the tests count dots of this colour).
pub const SELECTED: RGBColor = RGBColor(214, 39, 40);
/// Colour of the other channels' dots.
pub const KEPT: RGBColor = RGBColor(31, 119, 180);
const BOX: RGBColor = RGBColor(90, 90, 90);
const FONT: &str = "sans-serif";

fn plot_err(e: impl std::fmt::Display) -> Error {
    Error::Msg(format!("drawing the figure: {e}"))
}

/// An axis of `n` categories centred on 0, 1, ..., n-1 (ticks there only), with half a slot of room at
/// each end; values in between (a dot's jitter) map linearly.
#[derive(Clone, Debug)]
pub struct Categories(pub usize);

impl Ranged for Categories {
    type FormatOption = DefaultFormatting;
    type ValueType = f64;
    fn map(&self, v: &f64, limit: (i32, i32)) -> i32 {
        let r = self.range();
        let t = (v - r.start) / (r.end - r.start);
        (limit.0 as f64 + t * (limit.1 - limit.0) as f64).round() as i32
    }
    fn key_points<H: KeyPointHint>(&self, hint: H) -> Vec<f64> {
        if hint.weight().allow_light_points() {
            return Vec::new();
        }
        (0..self.0).map(|i| i as f64).collect()
    }
    fn range(&self) -> std::ops::Range<f64> {
        -0.6..(self.0 as f64 - 0.4)
    }
}

/// The label of category `v` (a tick value), empty off the integers.
fn category_label(labels: &[String], v: f64) -> String {
    let i = v.round();
    if (v - i).abs() > 1e-6 || i < 0.0 || i as usize >= labels.len() {
        return String::new();
    }
    labels[i as usize].clone()
}

/// Deterministic vertical jitter in [-0.28, 0.28] for channel `i` (golden-ratio sequence), so dots with
/// equal scores stay apart.
fn jitter(i: usize) -> f64 {
    let f = (i as f64 * 0.618_033_988_75).fract();
    (f - 0.5) * 0.56
}

/// The conv's row label on the y axis.
fn row_label(name: &str, channels: usize, selected: usize) -> String {
    format!("{name}  ({selected}/{channels})")
}

/// Tukey box of `v` (finite, any order): (whisker low, q1, median, q3, whisker high), the whiskers at the
/// most extreme values within 1.5 IQR of the box.
pub fn tukey_box(v: &[f32]) -> Option<[f32; 5]> {
    let mut s: Vec<f32> = v.iter().copied().filter(|x| x.is_finite()).collect();
    if s.is_empty() {
        return None;
    }
    s.sort_by(|a, b| a.total_cmp(b));
    let q = |p: f32| {
        let pos = p * (s.len() - 1) as f32;
        let (i, f) = (pos.floor() as usize, pos.fract());
        s[i] + f * (s[(i + 1).min(s.len() - 1)] - s[i])
    };
    let (q1, q2, q3) = (q(0.25), q(0.5), q(0.75));
    let iqr = q3 - q1;
    let lo = s
        .iter()
        .copied()
        .find(|&x| x >= q1 - 1.5 * iqr)
        .unwrap_or(q1);
    let hi = s
        .iter()
        .rev()
        .copied()
        .find(|&x| x <= q3 + 1.5 * iqr)
        .unwrap_or(q3);
    Some([lo, q1, q2, q3, hi])
}

/// A legend marker.
enum Marker {
    Dot(RGBColor, u32),
    Box,
}

/// A legend row above a chart: (marker, text) pairs left to right.
fn legend_row<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    items: &[(Marker, &str)],
) -> Result<()> {
    let mut x = 16;
    let style = (FONT, 14).into_font().color(&BLACK);
    for (marker, text) in items {
        let c = (x + 6, 12);
        match marker {
            Marker::Dot(colour, r) => area.draw(&Circle::new(c, *r, colour.filled())),
            Marker::Box => area.draw(&Rectangle::new(
                [(c.0 - 8, c.1 - 6), (c.0 + 8, c.1 + 6)],
                BOX.stroke_width(1),
            )),
        }
        .map_err(plot_err)?;
        area.draw(&Text::new(text.to_string(), (x + 18, 5), style.clone()))
            .map_err(plot_err)?;
        let (w, _) = area.estimate_text_size(text, &style).map_err(plot_err)?;
        x += 18 + w as i32 + 28;
    }
    Ok(())
}

/// The scan plot as an SVG document (a string starting with `<svg`).
pub fn scan_plot_svg(r: &ScanReport) -> Result<String> {
    let n = r.convs.len();
    if n == 0 {
        return Err(Error::InvalidArgument(
            "the scan report has no convs to plot".into(),
        ));
    }
    let (w, h) = (1100u32, 170 + 34 * n as u32);
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (w, h)).into_drawing_area();
        root.fill(&WHITE).map_err(plot_err)?;
        let root = root
            .titled(
                &format!(
                    "FRG scan: the score of every feature map, per conv in execution order ({} maps, {} selected, p = {})",
                    r.totals.feature_maps, r.totals.selected, r.settings.params.p
                ),
                (FONT, 20),
            )
            .map_err(plot_err)?;
        let (top, body) = root.split_vertically(36);
        let legend = [
            (Marker::Dot(KEPT, 3), "feature map"),
            (
                Marker::Dot(SELECTED, 4),
                "selected for pruning (its conv's floor(C/p) lowest)",
            ),
            (Marker::Box, "quartiles, median; whiskers within 1.5 IQR"),
        ];
        legend_row(&top.margin(0, 0, 200, 0), &legend)?;
        // y: conv i sits at n-1-i so the first conv in execution order is on top
        let y_of = |i: usize| (n - 1 - i) as f64;
        // labels bottom-up, as the rows sit
        let labels: Vec<String> = r
            .convs
            .iter()
            .rev()
            .map(|c| row_label(&c.name, c.channels, c.selected.len()))
            .collect();
        let finite = || {
            r.convs
                .iter()
                .flat_map(|c| c.scores.iter().copied())
                .filter(|v| v.is_finite())
        };
        // the scores' own range (padded; at least 0.1 wide), so clustered scores stay apart
        let (mut lo, mut hi) = finite().fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), v| {
            (a.min(v), b.max(v))
        });
        if lo > hi {
            (lo, hi) = (0.0, 1.0);
        }
        let mid = 0.5 * (lo + hi);
        let half_span = (0.5 * (hi - lo)).max(0.05) * 1.06;
        let (lo, hi) = (mid - half_span, mid + half_span);
        let mut chart = ChartBuilder::on(&body)
            .margin(16)
            .margin_top(4)
            .x_label_area_size(48)
            .y_label_area_size(214)
            .build_cartesian_2d(lo..hi, Categories(n))
            .map_err(plot_err)?;
        chart
            .configure_mesh()
            .disable_y_mesh()
            .x_max_light_lines(1)
            .x_labels(11)
            .x_label_formatter(&|v| format!("{v:.2}"))
            .x_desc("FRG score: accuracy on the scan images attacked through that feature map (low = backdoor suspect)")
            .y_desc("conv (execution order)")
            .y_label_formatter(&|v| category_label(&labels, *v))
            .label_style((FONT, 13))
            .axis_desc_style((FONT, 14))
            .draw()
            .map_err(plot_err)?;

        // Tukey boxes, skipping convs with no finite score
        let half = 0.24;
        for (i, c) in r.convs.iter().enumerate() {
            let Some([wl, q1, q2, q3, wh]) = tukey_box(&c.scores) else {
                continue;
            };
            let y = y_of(i);
            let line = |pts: Vec<(f32, f64)>| PathElement::new(pts, BOX.stroke_width(1));
            chart
                .draw_series([
                    line(vec![(wl, y), (q1, y)]),
                    line(vec![(q3, y), (wh, y)]),
                    line(vec![(wl, y - half / 2.0), (wl, y + half / 2.0)]),
                    line(vec![(wh, y - half / 2.0), (wh, y + half / 2.0)]),
                    line(vec![(q2, y - half), (q2, y + half)]),
                ])
                .map_err(plot_err)?;
            chart
                .draw_series([Rectangle::new(
                    [(q1, y - half), (q3, y + half)],
                    BOX.stroke_width(1),
                )])
                .map_err(plot_err)?;
        }
        let dots = |selected: bool| {
            r.convs.iter().enumerate().flat_map(move |(i, c)| {
                let sel: std::collections::HashSet<usize> = c.selected.iter().copied().collect();
                c.scores
                    .iter()
                    .enumerate()
                    .filter(move |(ch, s)| s.is_finite() && sel.contains(ch) == selected)
                    .map(move |(ch, &s)| (s, y_of(i) + jitter(ch)))
                    .collect::<Vec<_>>()
            })
        };
        chart
            .draw_series(dots(false).map(|p| Circle::new(p, 2, KEPT.mix(0.5).filled())))
            .map_err(plot_err)?;
        chart
            .draw_series(dots(true).map(|p| Circle::new(p, 4, SELECTED.filled())))
            .map_err(plot_err)?;
        root.present().map_err(plot_err)?;
    }
    Ok(svg)
}

/// Write the scan plot to `path` (temporary file, then rename).
pub fn write_scan_plot(r: &ScanReport, path: &Path) -> Result<()> {
    let svg = scan_plot_svg(r)?;
    crate::fmp::write_atomic(path, svg.as_bytes())
}

/// Acc / ASR / RA (in %) of each `(stage, metrics)` as grouped bars; ASR/RA only where measured.
pub fn metrics_chart_svg(rows: &[(String, Metrics)]) -> Result<String> {
    if rows.is_empty() {
        return Err(Error::InvalidArgument("no metrics to plot".into()));
    }
    type Series = (&'static str, RGBColor, fn(&Metrics) -> Option<f64>);
    let series: [Series; 3] = [
        ("Acc", RGBColor(44, 160, 44), |m| Some(m.acc)),
        ("ASR", SELECTED, |m| m.asr),
        ("RA", KEPT, |m| m.ra),
    ];
    let k = rows.len();
    let (w, h) = (760u32, 420u32);
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (w, h)).into_drawing_area();
        root.fill(&WHITE).map_err(plot_err)?;
        let names: Vec<String> = rows.iter().map(|(s, _)| s.clone()).collect();
        let mut chart = ChartBuilder::on(&root)
            .caption("Acc / ASR / RA at each stage (%)", (FONT, 20))
            .margin(16)
            .x_label_area_size(40)
            .y_label_area_size(56)
            .build_cartesian_2d(Categories(k), 0f64..125f64)
            .map_err(plot_err)?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .y_desc("%")
            .y_labels(14)
            // the room above 100 is the legend's
            .y_label_formatter(&|v| {
                if *v <= 100.0 {
                    format!("{v:.0}")
                } else {
                    String::new()
                }
            })
            .x_label_formatter(&|v| category_label(&names, *v))
            .label_style((FONT, 14))
            .draw()
            .map_err(plot_err)?;
        let bw = 0.8 / series.len() as f64;
        for (j, (name, colour, get)) in series.iter().enumerate() {
            let bars: Vec<(f64, f64)> = rows
                .iter()
                .enumerate()
                .filter_map(|(i, (_, m))| get(m).map(|v| (i as f64, 100.0 * v)))
                .collect();
            if bars.is_empty() {
                continue;
            }
            let x0 = |i: f64| i - 0.4 + j as f64 * bw;
            chart
                .draw_series(bars.iter().map(|&(i, v)| {
                    Rectangle::new([(x0(i), 0.0), (x0(i) + bw * 0.92, v)], colour.filled())
                }))
                .map_err(plot_err)?
                .label(*name)
                .legend(move |(x, y)| {
                    Rectangle::new([(x, y - 5), (x + 14, y + 5)], colour.filled())
                });
            chart
                .draw_series(bars.iter().map(|&(i, v)| {
                    Text::new(
                        format!("{v:.1}"),
                        (x0(i) + bw * 0.1, v + 4.0),
                        (FONT, 12).into_font().color(&BLACK),
                    )
                }))
                .map_err(plot_err)?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.9))
            .border_style(BLACK.mix(0.3))
            .label_font((FONT, 13))
            .draw()
            .map_err(plot_err)?;
        root.present().map_err(plot_err)?;
    }
    Ok(svg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tukey_box_whiskers_stop_at_data_within_the_fences() {
        // q1 = 2, median 3, q3 = 4 (IQR 2, fences -1 and 7): 100 is an outlier, 0 is not
        let v = [0.0, 2.0, 2.0, 3.0, 3.0, 4.0, 4.0, 100.0, f32::NAN];
        assert_eq!(tukey_box(&v), Some([0.0, 2.0, 3.0, 4.0, 4.0]));
        assert_eq!(tukey_box(&[f32::NAN]), None);
        assert_eq!(tukey_box(&[0.5]), Some([0.5; 5]));
    }

    #[test]
    fn jitter_stays_inside_the_row() {
        for i in 0..10_000 {
            assert!(jitter(i).abs() <= 0.28, "{i}");
        }
    }

    #[test]
    fn categories_tick_at_their_centres() {
        let r = Categories(4);
        use plotters::coord::ranged1d::{BoldPoints, LightPoints};
        assert_eq!(r.key_points(BoldPoints(2)), vec![0.0, 1.0, 2.0, 3.0]);
        assert!(r.key_points(LightPoints::new(2, 10)).is_empty());
        assert_eq!(r.map(&-0.6, (0, 100)), 0);
        assert_eq!(r.map(&3.6, (0, 100)), 100);
        let l: Vec<String> = ["a", "b"].iter().map(|s| s.to_string()).collect();
        assert_eq!(category_label(&l, 1.0), "b");
        assert_eq!(category_label(&l, 0.5), "");
        assert_eq!(category_label(&l, 2.0), "");
    }
}
