//! A stream's chart as SVG: per feature its values, what the detector expected
//! and the band its normal readings kept to, anomalous readings and incidents
//! shaded; the score below, with the threshold. One renderer for the console
//! (`GET /v1/streams/{id}/chart.svg`) and `anomalyd replay --plot`, so both show
//! the same picture. Pure string building: no I/O.

use std::fmt::Write;

use crate::detector::recent::RecentPoint;
use crate::timestamp::{Micros, format_rfc3339};

const WIDTH: f64 = 960.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 16.0;
const TOP: f64 = 34.0;
const PANEL: f64 = 150.0;
const SCORE_PANEL: f64 = 96.0;
const GAP: f64 = 30.0;
/// Most features drawn (a wide stream shows the ones that moved most).
pub const MAX_PANELS: usize = 4;

/// What to draw.
pub struct Chart<'a> {
    /// Heading (a stream id or a file name).
    pub title: &'a str,
    /// The readings, oldest first.
    pub points: &'a [RecentPoint],
    /// Per feature, the band's half-width (see [`crate::detector::recent::band`]).
    pub band: &'a [Option<f64>],
    /// The score at which a reading is anomalous.
    pub threshold: f64,
    /// Feature names (`feature i` when absent).
    pub names: &'a [String],
    /// The features to draw (at most [`MAX_PANELS`]; see [`pick_features`]).
    pub features: &'a [usize],
}

/// The features worth drawing: those furthest from their expectation (in band
/// widths) at the anomalous readings, else the first ones.
pub fn pick_features(points: &[RecentPoint], band: &[Option<f64>], n: usize) -> Vec<usize> {
    let d = points.first().map_or(band.len(), |p| p.values.len());
    let mut weight = vec![0.0f64; d];
    for p in points.iter().filter(|p| p.anomaly) {
        for (f, w) in weight.iter_mut().enumerate() {
            let scale = band.get(f).copied().flatten().filter(|b| *b > 0.0).unwrap_or(1.0);
            let gap = ((p.values[f] - p.expected[f]) / scale).abs();
            if gap.is_finite() {
                *w += gap;
            }
        }
    }
    let mut order: Vec<usize> = (0..d).collect();
    order.sort_by(|&a, &b| weight[b].total_cmp(&weight[a]).then(a.cmp(&b)));
    order.truncate(n.min(MAX_PANELS));
    order.sort_unstable();
    order
}

/// Escapes text for SVG.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c if c.is_control() => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

/// Maps timestamps to x.
struct Axis {
    t0: Micros,
    span: f64,
    step: f64,
}

impl Axis {
    fn of(points: &[RecentPoint]) -> Axis {
        let t0 = points.first().map_or(0, |p| p.timestamp);
        let t1 = points.last().map_or(0, |p| p.timestamp);
        let span = (t1 - t0) as f64;
        let width = WIDTH - LEFT - RIGHT;
        let step = if points.len() > 1 {
            width / (points.len() - 1) as f64
        } else {
            width
        };
        Axis { t0, span, step }
    }

    fn x(&self, t: Micros) -> f64 {
        let width = WIDTH - LEFT - RIGHT;
        if self.span <= 0.0 {
            return LEFT + width / 2.0;
        }
        LEFT + (t - self.t0) as f64 / self.span * width
    }
}

/// Runs of consecutive points where `on` holds: (first, last) indices.
fn runs(points: &[RecentPoint], on: impl Fn(&RecentPoint) -> bool) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut start = None;
    for (i, p) in points.iter().enumerate() {
        match (on(p), start) {
            (true, None) => start = Some(i),
            (false, Some(s)) => {
                out.push((s, i - 1));
                start = None;
            }
            _ => {}
        }
    }
    if let Some(s) = start {
        out.push((s, points.len() - 1));
    }
    out
}

/// A path through (x, y) points, broken where y is not finite; long series are
/// thinned to each pixel column's first, lowest, highest and last point.
fn path(xy: impl Iterator<Item = (f64, f64)>) -> String {
    let mut d = String::new();
    let mut pen_down = false;
    let mut column: Option<(i64, Vec<(f64, f64)>)> = None;
    let flush = |d: &mut String, pts: &[(f64, f64)], pen_down: &mut bool| {
        let (lo, hi) = pts.iter().fold((pts[0], pts[0]), |(lo, hi), &p| {
            (if p.1 < lo.1 { p } else { lo }, if p.1 > hi.1 { p } else { hi })
        });
        let mut keep = vec![pts[0], lo, hi, pts[pts.len() - 1]];
        keep.dedup();
        for (x, y) in keep {
            let _ = write!(d, "{}{x:.1},{y:.1}", if *pen_down { "L" } else { "M" });
            *pen_down = true;
        }
    };
    for (x, y) in xy {
        if !y.is_finite() {
            if let Some((_, pts)) = column.take() {
                flush(&mut d, &pts, &mut pen_down);
            }
            pen_down = false;
            continue;
        }
        let px = x.round() as i64;
        match &mut column {
            Some((c, pts)) if *c == px => pts.push((x, y)),
            _ => {
                if let Some((_, pts)) = column.replace((px, vec![(x, y)])) {
                    flush(&mut d, &pts, &mut pen_down);
                }
            }
        }
    }
    if let Some((_, pts)) = column {
        flush(&mut d, &pts, &mut pen_down);
    }
    d
}

/// A number for an axis label.
fn label(v: f64) -> String {
    let a = v.abs();
    if a != 0.0 && !(1e-3..1e6).contains(&a) {
        format!("{v:.3e}")
    } else {
        let s = format!("{v:.4}");
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    }
}

/// Axis labels: each value at its height, left of the panel.
fn ticks(svg: &mut String, at: &[(f64, f64)]) {
    for &(v, y) in at {
        let _ = write!(
            svg,
            r#"<text class="tick" x="{:.1}" y="{y:.1}">{}</text>"#,
            LEFT - 4.0,
            label(v)
        );
    }
}

/// Draws one feature's panel at `top`.
fn feature_panel(svg: &mut String, c: &Chart<'_>, axis: &Axis, f: usize, top: f64) {
    let pts = c.points;
    let half = c.band.get(f).copied().flatten();
    let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
    for p in pts {
        let e = p.expected[f];
        let h = half.unwrap_or(0.0);
        for v in [p.values[f], e - h, e + h] {
            if v.is_finite() {
                lo = lo.min(v);
                hi = hi.max(v);
            }
        }
    }
    if !lo.is_finite() {
        (lo, hi) = (0.0, 1.0);
    }
    if hi - lo < 1e-12 {
        (lo, hi) = (lo - 0.5, hi + 0.5);
    }
    let pad = (hi - lo) * 0.06;
    let (lo, hi) = (lo - pad, hi + pad);
    let y = |v: f64| top + PANEL - (v - lo) / (hi - lo) * PANEL;
    let name = c.names.get(f).cloned().unwrap_or_else(|| format!("feature {f}"));
    let _ = write!(
        svg,
        r#"<g class="feature" data-feature="{f}"><rect class="frame" x="{LEFT}" y="{top}" width="{:.1}" height="{PANEL}"/>"#,
        WIDTH - LEFT - RIGHT
    );
    let _ = write!(
        svg,
        r#"<text class="name" x="{LEFT}" y="{:.1}">{}</text>"#,
        top - 6.0,
        escape(&name)
    );
    if let Some(h) = half {
        let upper = pts.iter().map(|p| (axis.x(p.timestamp), y(p.expected[f] + h)));
        let lower = pts.iter().rev().map(|p| (axis.x(p.timestamp), y(p.expected[f] - h)));
        let d = path(upper.chain(lower));
        let _ = write!(svg, r#"<path class="band" d="{d}Z"/>"#);
    }
    let expected = path(pts.iter().map(|p| (axis.x(p.timestamp), y(p.expected[f]))));
    let values = path(pts.iter().map(|p| (axis.x(p.timestamp), y(p.values[f]))));
    let _ = write!(
        svg,
        r#"<path class="expected" d="{expected}"/><path class="value" d="{values}"/>"#
    );
    ticks(svg, &[(hi, top + 10.0), (lo, top + PANEL - 2.0)]);
    svg.push_str("</g>");
}

/// Draws the score panel at `top`.
fn score_panel(svg: &mut String, c: &Chart<'_>, axis: &Axis, top: f64) {
    let y = |v: f64| top + SCORE_PANEL - v * SCORE_PANEL;
    let _ = write!(
        svg,
        r#"<g class="score"><rect class="frame" x="{LEFT}" y="{top}" width="{:.1}" height="{SCORE_PANEL}"/>"#,
        WIDTH - LEFT - RIGHT
    );
    let _ = write!(
        svg,
        r#"<text class="name" x="{LEFT}" y="{:.1}">score</text>"#,
        top - 6.0
    );
    let t = y(c.threshold.clamp(0.0, 1.0));
    let _ = write!(
        svg,
        r#"<line class="threshold" x1="{LEFT}" x2="{:.1}" y1="{t:.1}" y2="{t:.1}"/>"#,
        WIDTH - RIGHT
    );
    let d = path(
        c.points
            .iter()
            .map(|p| (axis.x(p.timestamp), p.score.map_or(f64::NAN, y))),
    );
    let _ = write!(svg, r#"<path class="scoreline" d="{d}"/>"#);
    ticks(
        svg,
        &[
            (1.0, top + 10.0),
            (c.threshold, t + 4.0),
            (0.0, top + SCORE_PANEL - 2.0),
        ],
    );
    svg.push_str("</g>");
}

/// Shades runs of points where `on` holds, from `top` to `bottom`.
fn shade(
    svg: &mut String,
    c: &Chart<'_>,
    axis: &Axis,
    class: &str,
    top: f64,
    bottom: f64,
    on: fn(&RecentPoint) -> bool,
) {
    for (a, b) in runs(c.points, on) {
        let x0 = (axis.x(c.points[a].timestamp) - axis.step / 2.0).max(LEFT);
        let x1 = (axis.x(c.points[b].timestamp) + axis.step / 2.0).min(WIDTH - RIGHT);
        let _ = write!(
            svg,
            r#"<rect class="{class}" x="{x0:.1}" y="{top:.1}" width="{:.1}" height="{:.1}" data-from="{}" data-to="{}"><title>{class}: {} to {}</title></rect>"#,
            (x1 - x0).max(1.0),
            bottom - top,
            c.points[a].timestamp,
            c.points[b].timestamp,
            format_rfc3339(c.points[a].timestamp),
            format_rfc3339(c.points[b].timestamp),
        );
    }
}

const STYLE: &str = "text{font:11px sans-serif;fill:#333}.title{font-size:14px;font-weight:bold}\
.tick{text-anchor:end;fill:#666}.frame{fill:#fff;stroke:#ccc}.band{fill:#9ecae1;fill-opacity:.35;stroke:none}\
.expected{fill:none;stroke:#3182bd;stroke-dasharray:4 3}.value{fill:none;stroke:#222;stroke-width:1.2}\
.scoreline{fill:none;stroke:#6a51a3;stroke-width:1.2}.threshold{stroke:#e6550d;stroke-dasharray:5 3}\
.incident{fill:#fdae6b;fill-opacity:.25}.anomaly{fill:#de2d26;fill-opacity:.28}.history{fill:#bbb;fill-opacity:.25}\
.empty{fill:#888;font-size:13px}";

/// The chart as an SVG document.
pub fn render(c: &Chart<'_>) -> String {
    let panels = c.features.len();
    let score_top = TOP + GAP + panels as f64 * (PANEL + GAP);
    let height = score_top + SCORE_PANEL + 34.0;
    let mut svg = String::with_capacity(8192 + c.points.len() * 40 * (panels + 1));
    let _ = write!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" class="anomalyd-chart" width="{WIDTH}" height="{height:.0}" viewBox="0 0 {WIDTH} {height:.0}"><style>{STYLE}</style>"#
    );
    let _ = write!(
        svg,
        r#"<text class="title" x="{LEFT}" y="20">{}</text>"#,
        escape(c.title)
    );
    if c.points.is_empty() {
        let _ = write!(
            svg,
            r#"<text class="empty" x="{LEFT}" y="{:.0}">no readings yet</text></svg>"#,
            TOP + 30.0
        );
        return svg;
    }
    let axis = Axis::of(c.points);
    let bottom = score_top + SCORE_PANEL;
    for (i, &f) in c.features.iter().enumerate() {
        feature_panel(&mut svg, c, &axis, f, TOP + GAP + i as f64 * (PANEL + GAP));
    }
    score_panel(&mut svg, c, &axis, score_top);
    shade(&mut svg, c, &axis, "history", TOP + GAP, bottom, |p| p.history);
    shade(&mut svg, c, &axis, "incident", TOP + GAP, bottom, |p| p.incident);
    shade(&mut svg, c, &axis, "anomaly", TOP + GAP, bottom, |p| p.anomaly);
    let first = c.points[0].timestamp;
    let last = c.points[c.points.len() - 1].timestamp;
    let _ = write!(
        svg,
        r#"<text class="time" x="{LEFT}" y="{:.0}">{}</text><text class="time" x="{:.0}" y="{:.0}" text-anchor="end">{}</text>"#,
        bottom + 18.0,
        format_rfc3339(first),
        WIDTH - RIGHT,
        bottom + 18.0,
        format_rfc3339(last)
    );
    svg.push_str("</svg>");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(t: i64, v: f64, anomaly: bool) -> RecentPoint {
        RecentPoint {
            timestamp: t * 1_000_000,
            score: (t > 0).then_some(if anomaly { 0.9 } else { 0.1 }),
            anomaly,
            incident: anomaly,
            history: false,
            values: vec![v, 1.0],
            expected: vec![0.0, 1.0],
        }
    }

    #[test]
    fn the_chart_shades_each_anomalous_stretch_once_and_escapes_names() {
        let points: Vec<RecentPoint> = (0..50)
            .map(|t| point(t, if (20..25).contains(&t) { 9.0 } else { 0.1 }, (20..25).contains(&t)))
            .collect();
        let band = crate::detector::recent::band(&points);
        assert_eq!(pick_features(&points, &band, 1), vec![0]);
        let names = vec!["<cpu>".to_string()];
        let svg = render(&Chart {
            title: "a&b",
            points: &points,
            band: &band,
            threshold: 0.5,
            names: &names,
            features: &[0, 1],
        });
        assert_eq!(svg.matches(r#"<rect class="anomaly""#).count(), 1, "{svg}");
        assert_eq!(svg.matches(r#"<rect class="incident""#).count(), 1);
        assert!(svg.contains(r#"data-from="20000000" data-to="24000000""#));
        assert!(svg.contains("a&amp;b") && svg.contains("&lt;cpu&gt;") && svg.contains("feature 1"));
        assert_eq!(svg.matches(r#"class="feature""#).count(), 2);
        // The first reading was not judged: the score line starts at the second.
        assert!(svg.contains(r#"<path class="scoreline" d="M"#));
    }

    #[test]
    fn a_long_series_is_thinned_to_the_pixel_columns_and_keeps_its_peaks() {
        let d = path((0..100_000).map(|i| {
            (
                70.0 + i as f64 * 0.008,
                if i == 50_000 { -5.0 } else { (i % 10) as f64 },
            )
        }));
        assert!(
            d.matches(['M', 'L']).count() < 4 * 801,
            "{} points",
            d.matches(['M', 'L']).count()
        );
        assert!(d.contains(",-5.0"), "the one low point survives the thinning");
        assert_eq!(
            path([(1.0, 1.0), (2.0, f64::NAN), (3.0, 2.0)].into_iter()),
            "M1.0,1.0M3.0,2.0"
        );
    }
}
