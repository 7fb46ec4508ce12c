//! A dependency-free SVG chart writer: lines with markers (or lone markers, a scatter) for
//! a few series, with axes, readable tick labels and a legend, in one self-contained file.
//!
//! Points that cannot be drawn (NaN, infinite, beyond [`VALUE_ABS_MAX`], or not positive on
//! a logarithmic x axis) are left out rather than poisoning the scale; an empty chart still
//! has axes and says "no data". The output never contains "NaN" or "inf".

use std::fmt::Write as _;

/// Width of the whole picture, in SVG user units (pixels).
pub const WIDTH: f64 = 820.0;
/// Height of the whole picture.
pub const HEIGHT: f64 = 480.0;
/// Space left of the plot for the y tick labels and the y axis label.
const MARGIN_LEFT: f64 = 80.0;
/// Space right of the plot for the legend.
const MARGIN_RIGHT: f64 = 190.0;
/// Space above the plot for the title.
const MARGIN_TOP: f64 = 44.0;
/// Space below the plot for the x tick labels and the x axis label.
const MARGIN_BOTTOM: f64 = 58.0;
/// How many ticks a linear axis aims for; the nice step makes it 4 to 10.
const TICKS_TARGET: usize = 6;
/// Most decades labelled on a logarithmic axis; more are thinned to every n-th.
const LOG_TICKS_MAX: usize = 10;
/// Most decimals a tick label shows; smaller values read as 0.
const DECIMALS_MAX: usize = 12;
/// Largest magnitude drawn: beyond it a range could overflow to infinity.
pub const VALUE_ABS_MAX: f64 = 1e100;
/// Distinct colours (Tableau 10); the eleventh series reuses the first.
const PALETTE: [&str; 10] = [
    "#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7", "#9c755f", "#bab0ac",
];

/// A chart: what it shows and its series.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Chart {
    /// Title, above the plot.
    pub title: String,
    /// Label of the x axis, with its unit.
    pub x_label: String,
    /// Label of the y axis, with its unit.
    pub y_label: String,
    /// The series, drawn in order, each in its own colour.
    pub series: Vec<Series>,
    /// Whether the x axis is logarithmic (batch sizes, offered rates across decades).
    pub log_x: bool,
}

/// One named series of (x, y) points. Points are joined in increasing x.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Series {
    /// Name shown in the legend.
    pub name: String,
    /// The points.
    pub points: Vec<(f64, f64)>,
}

/// One axis: the data range it covers, its ticks, and whether it is logarithmic.
struct Axis {
    low: f64,
    high: f64,
    ticks: Vec<f64>,
    log: bool,
}

impl Axis {
    /// A linear axis covering `low..=high`, widened to nice tick bounds.
    fn linear(low: f64, high: f64) -> Axis {
        let (low, high) = if high > low { (low, high) } else { (low - 1.0, high + 1.0) };
        let step = nice_step((high - low) / (TICKS_TARGET - 1) as f64);
        let first = (low / step).floor() * step;
        let last = (high / step).ceil() * step;
        let count = ((last - first) / step).round() as usize;
        let ticks = (0..=count).map(|index| snap(first + index as f64 * step, step)).collect();
        Axis {
            low: first,
            high: last,
            ticks,
            log: false,
        }
    }

    /// A logarithmic axis covering `low..=high` (both positive), widened to whole decades.
    fn logarithmic(low: f64, high: f64) -> Axis {
        let mut first = low.log10().floor() as i32;
        let mut last = high.log10().ceil() as i32;
        if last <= first {
            first -= 1;
            last += 1;
        }
        let decades = usize::try_from(last - first).unwrap_or(1);
        let every = decades.div_ceil(LOG_TICKS_MAX).max(1);
        let ticks = (first..=last).step_by(every).map(|exponent| 10f64.powi(exponent)).collect();
        Axis {
            low: 10f64.powi(first),
            high: 10f64.powi(last),
            ticks,
            log: true,
        }
    }

    /// Where `value` falls between the ends of the axis, 0 at `low` and 1 at `high`.
    fn fraction(&self, value: f64) -> f64 {
        if self.log {
            (value.log10() - self.low.log10()) / (self.high.log10() - self.low.log10())
        } else {
            (value - self.low) / (self.high - self.low)
        }
    }
}

/// The smallest of 1, 2, 2.5 and 5 times a power of ten that is at least `rough`.
fn nice_step(rough: f64) -> f64 {
    if !(rough.is_finite() && rough > 0.0) {
        return 1.0;
    }
    let magnitude = 10f64.powf(rough.log10().floor());
    let normalized = rough / magnitude;
    let nice = [1.0, 2.0, 2.5, 5.0, 10.0]
        .into_iter()
        .find(|candidate| *candidate >= normalized - 1e-9)
        .unwrap_or(10.0);
    nice * magnitude
}

/// Removes the floating-point dust of `first + index * step` (0.30000000000000004).
fn snap(value: f64, step: f64) -> f64 {
    let rounded = (value / step).round() * step;
    if rounded.abs() < step * 1e-9 { 0.0 } else { rounded }
}

/// A number as a person reads it on an axis: `0`, `0.25`, `750`, `2500`, `12k`, `1.5M`.
pub fn format_number(value: f64) -> String {
    if !value.is_finite() {
        return "?".to_owned();
    }
    let magnitude = value.abs();
    let (scaled, suffix) = if magnitude >= 1e9 {
        (value / 1e9, "G")
    } else if magnitude >= 1e6 {
        (value / 1e6, "M")
    } else if magnitude >= 1e4 {
        (value / 1e3, "k")
    } else {
        (value, "")
    };
    let size = scaled.abs();
    let decimals = if size == 0.0 || size >= 100.0 {
        0
    } else if size >= 10.0 {
        1
    } else if size >= 1.0 {
        2
    } else {
        // Enough decimals for three significant digits of a small number, within reason.
        ((-size.log10().floor()) as usize + 2).min(DECIMALS_MAX)
    };
    let mut text = format!("{scaled:.decimals$}");
    if text.contains('.') {
        text = text.trim_end_matches('0').trim_end_matches('.').to_owned();
    }
    if text == "-0" {
        text = "0".to_owned();
    }
    text.push_str(suffix);
    text
}

/// Text safe inside an SVG element or attribute.
fn escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for character in text.chars() {
        match character {
            '&' => escaped.push_str("&amp;"),
            '<' => escaped.push_str("&lt;"),
            '>' => escaped.push_str("&gt;"),
            '"' => escaped.push_str("&quot;"),
            '\'' => escaped.push_str("&apos;"),
            other => escaped.push(other),
        }
    }
    escaped
}

/// Whether a point can be drawn on this chart (NaN fails both comparisons).
fn drawable(chart: &Chart, (x, y): (f64, f64)) -> bool {
    x.abs() <= VALUE_ABS_MAX && y.abs() <= VALUE_ABS_MAX && (!chart.log_x || x > 0.0)
}

/// Renders the chart as a self-contained SVG document.
pub fn render(chart: &Chart) -> String {
    let plotted = plottable(chart);
    let has_data = plotted.iter().flatten().next().is_some();
    let frame = Frame::fitted(chart, &plotted);
    let mut svg = String::with_capacity(4096);
    // Writing to a String cannot fail; the writers ignore the results for that reason.
    write_header(&mut svg, chart, &frame);
    write_grid(&mut svg, &frame);
    write_axes(&mut svg, chart, &frame, has_data);
    // Series, then the legend.
    for (index, (series, points)) in chart.series.iter().zip(&plotted).enumerate() {
        let colour = PALETTE[index % PALETTE.len()];
        write_series(&mut svg, &frame, series, points, colour);
        write_legend_entry(&mut svg, &frame, index, series, points, colour);
    }
    svg.push_str("</svg>\n");
    svg
}

/// Each series' drawable points, in increasing x.
fn plottable(chart: &Chart) -> Vec<Vec<(f64, f64)>> {
    chart
        .series
        .iter()
        .map(|series| {
            let mut points: Vec<(f64, f64)> = series.points.iter().copied().filter(|point| drawable(chart, *point)).collect();
            points.sort_by(|left, right| left.0.total_cmp(&right.0));
            points
        })
        .collect()
}

/// The plot area and its two axes: where a data point lands in the picture.
struct Frame {
    x_axis: Axis,
    y_axis: Axis,
    plot_width: f64,
    plot_height: f64,
}

impl Frame {
    /// Axes that cover every plotted point (or a default range when there is none).
    fn fitted(chart: &Chart, plotted: &[Vec<(f64, f64)>]) -> Frame {
        let all = || plotted.iter().flatten();
        let has_data = all().next().is_some();
        let x_axis = {
            let low = all().map(|point| point.0).fold(f64::INFINITY, f64::min);
            let high = all().map(|point| point.0).fold(f64::NEG_INFINITY, f64::max);
            match (has_data, chart.log_x) {
                (false, false) => Axis::linear(0.0, 1.0),
                (false, true) => Axis::logarithmic(1.0, 10.0),
                (true, false) => Axis::linear(low, high),
                (true, true) => Axis::logarithmic(low, high),
            }
        };
        let y_axis = {
            // Zero is always on the y axis, so heights compare honestly.
            let low = all().map(|point| point.1).fold(0.0, f64::min);
            let high = all().map(|point| point.1).fold(if has_data { 0.0 } else { 1.0 }, f64::max);
            Axis::linear(low, high)
        };
        Frame {
            x_axis,
            y_axis,
            plot_width: WIDTH - MARGIN_LEFT - MARGIN_RIGHT,
            plot_height: HEIGHT - MARGIN_TOP - MARGIN_BOTTOM,
        }
    }

    /// The picture's x coordinate of a data x.
    fn to_x(&self, x: f64) -> f64 {
        MARGIN_LEFT + self.x_axis.fraction(x) * self.plot_width
    }

    /// The picture's y coordinate of a data y (SVG's y grows downwards).
    fn to_y(&self, y: f64) -> f64 {
        MARGIN_TOP + self.plot_height - self.y_axis.fraction(y) * self.plot_height
    }

    /// The y coordinate of the x axis: the bottom of the plot.
    fn bottom(&self) -> f64 {
        MARGIN_TOP + self.plot_height
    }

    /// The x coordinate of the right edge of the plot, where the legend starts.
    fn right(&self) -> f64 {
        MARGIN_LEFT + self.plot_width
    }
}

/// The document's opening tag, its white background and the title.
fn write_header(svg: &mut String, chart: &Chart, frame: &Frame) {
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(svg, r#"<rect x="0" y="0" width="{WIDTH}" height="{HEIGHT}" fill="white"/>"#);
    let _ = writeln!(
        svg,
        r#"<text x="{:.1}" y="26" text-anchor="middle" font-size="16" font-weight="bold">{}</text>"#,
        MARGIN_LEFT + frame.plot_width / 2.0,
        escape(&chart.title)
    );
}

/// Grid lines and tick labels of both axes.
fn write_grid(svg: &mut String, frame: &Frame) {
    let (bottom, right) = (frame.bottom(), frame.right());
    for tick in &frame.x_axis.ticks {
        let x = frame.to_x(*tick);
        let _ = writeln!(
            svg,
            r##"<line x1="{x:.1}" y1="{MARGIN_TOP:.1}" x2="{x:.1}" y2="{bottom:.1}" stroke="#e0e0e0"/>"##
        );
        let _ = writeln!(
            svg,
            r#"<text x="{x:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
            bottom + 16.0,
            format_number(*tick)
        );
    }
    for tick in &frame.y_axis.ticks {
        let y = frame.to_y(*tick);
        let _ = writeln!(
            svg,
            r##"<line x1="{MARGIN_LEFT:.1}" y1="{y:.1}" x2="{right:.1}" y2="{y:.1}" stroke="#e0e0e0"/>"##
        );
        let _ = writeln!(
            svg,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"#,
            MARGIN_LEFT - 6.0,
            y + 4.0,
            format_number(*tick)
        );
    }
}

/// The axes, their labels, and "no data" across an empty plot.
fn write_axes(svg: &mut String, chart: &Chart, frame: &Frame, has_data: bool) {
    let (bottom, right) = (frame.bottom(), frame.right());
    let _ = writeln!(
        svg,
        r#"<polyline points="{MARGIN_LEFT:.1},{MARGIN_TOP:.1} {MARGIN_LEFT:.1},{bottom:.1} {right:.1},{bottom:.1}" fill="none" stroke="black"/>"#
    );
    let _ = writeln!(
        svg,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
        MARGIN_LEFT + frame.plot_width / 2.0,
        HEIGHT - 14.0,
        escape(&chart.x_label)
    );
    let _ = writeln!(
        svg,
        r#"<text x="18" y="{0:.1}" text-anchor="middle" transform="rotate(-90 18 {0:.1})">{1}</text>"#,
        MARGIN_TOP + frame.plot_height / 2.0,
        escape(&chart.y_label)
    );
    if !has_data {
        let _ = writeln!(
            svg,
            r##"<text x="{:.1}" y="{:.1}" text-anchor="middle" fill="#888">no data</text>"##,
            MARGIN_LEFT + frame.plot_width / 2.0,
            MARGIN_TOP + frame.plot_height / 2.0
        );
    }
}

/// One series as a group: its line (when it has two points or more) and a marker per
/// point, each with the point's values as a tooltip.
fn write_series(svg: &mut String, frame: &Frame, series: &Series, points: &[(f64, f64)], colour: &str) {
    let _ = writeln!(svg, r#"<g class="series"><title>{}</title>"#, escape(&series.name));
    if points.len() > 1 {
        let path: Vec<String> = points
            .iter()
            .map(|(x, y)| format!("{:.1},{:.1}", frame.to_x(*x), frame.to_y(*y)))
            .collect();
        let _ = writeln!(
            svg,
            r#"<polyline points="{}" fill="none" stroke="{colour}" stroke-width="2"/>"#,
            path.join(" ")
        );
    }
    for (x, y) in points {
        let _ = writeln!(
            svg,
            r#"<circle cx="{:.1}" cy="{:.1}" r="3.5" fill="{colour}"><title>{}: ({}, {})</title></circle>"#,
            frame.to_x(*x),
            frame.to_y(*y),
            escape(&series.name),
            format_number(*x),
            format_number(*y)
        );
    }
    let _ = writeln!(svg, "</g>");
}

/// The legend's line for the `index`-th series: a sample of its line and marker, and its
/// name (with "(no data)" when none of its points could be drawn).
fn write_legend_entry(svg: &mut String, frame: &Frame, index: usize, series: &Series, points: &[(f64, f64)], colour: &str) {
    let legend_y = MARGIN_TOP + 10.0 + index as f64 * 20.0;
    let legend_x = frame.right() + 16.0;
    let _ = writeln!(
        svg,
        r#"<line x1="{legend_x:.1}" y1="{legend_y:.1}" x2="{:.1}" y2="{legend_y:.1}" stroke="{colour}" stroke-width="2"/>"#,
        legend_x + 22.0
    );
    let _ = writeln!(
        svg,
        r#"<circle cx="{:.1}" cy="{legend_y:.1}" r="3.5" fill="{colour}"/>"#,
        legend_x + 11.0
    );
    let suffix = if points.is_empty() { " (no data)" } else { "" };
    let _ = writeln!(
        svg,
        r#"<text x="{:.1}" y="{:.1}">{}{suffix}</text>"#,
        legend_x + 28.0,
        legend_y + 4.0,
        escape(&series.name)
    );
}

#[cfg(test)]
mod tests;
