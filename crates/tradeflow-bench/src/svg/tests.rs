//! Checks of the chart writer: well-formed output for every shape of data, and tick labels
//! a person can read.

use super::*;

fn series(name: &str, points: &[(f64, f64)]) -> Series {
    Series {
        name: name.to_owned(),
        points: points.to_vec(),
    }
}

fn chart(series: Vec<Series>, log_x: bool) -> Chart {
    Chart {
        title: "Throughput by batch size".to_owned(),
        x_label: "batch size (events)".to_owned(),
        y_label: "events/s".to_owned(),
        series,
        log_x,
    }
}

/// The checks every rendering must pass: one root element, balanced tags, no number that
/// is not a number.
fn assert_well_formed(svg: &str) {
    assert!(svg.starts_with("<svg "), "{svg}");
    assert!(svg.trim_end().ends_with("</svg>"), "{svg}");
    assert_eq!(svg.matches("<svg").count(), 1, "{svg}");
    for bad in ["NaN", "inf", "Infinity"] {
        assert!(!svg.contains(bad), "found {bad} in {svg}");
    }
    // Every element opened is closed, either by `/>` or by its closing tag.
    for element in ["g", "text", "title", "circle"] {
        let opened = svg.matches(&format!("<{element} ")).count() + svg.matches(&format!("<{element}>")).count();
        let self_closed = svg
            .split(&format!("<{element}"))
            .skip(1)
            .filter(|rest| rest.starts_with(' ') || rest.starts_with('>'))
            .filter(|rest| rest.split('>').next().is_some_and(|tag| tag.ends_with('/')))
            .count();
        let closed = svg.matches(&format!("</{element}>")).count();
        assert_eq!(opened, self_closed + closed, "<{element}> is unbalanced in {svg}");
    }
}

#[test]
fn a_chart_names_every_series_and_is_well_formed() {
    let svg = render(&chart(
        vec![
            series("sqlite", &[(1.0, 9_000.0), (100.0, 120_000.0), (1000.0, 310_000.0)]),
            series("postgres", &[(1.0, 800.0), (100.0, 40_000.0), (1000.0, 95_000.0)]),
        ],
        true,
    ));
    assert_well_formed(&svg);
    assert!(svg.contains("sqlite") && svg.contains("postgres"), "{svg}");
    assert!(
        svg.contains(PALETTE[0]) && svg.contains(PALETTE[1]),
        "each series has its own colour"
    );
    assert_eq!(svg.matches("<polyline").count(), 3, "two series lines and the axes");
    assert!(svg.contains(">1k<") || svg.contains(">1000<"), "log ticks are labelled: {svg}");
}

#[test]
fn empty_charts_and_series_still_render() {
    let svg = render(&chart(Vec::new(), false));
    assert_well_formed(&svg);
    assert!(svg.contains("no data"), "{svg}");

    let svg = render(&chart(vec![series("nothing yet", &[])], true));
    assert_well_formed(&svg);
    assert!(svg.contains("nothing yet (no data)"), "{svg}");
}

#[test]
fn a_single_point_gets_a_marker_and_a_usable_scale() {
    for log_x in [false, true] {
        let svg = render(&chart(vec![series("one", &[(100.0, 42.0)])], log_x));
        assert_well_formed(&svg);
        assert_eq!(svg.matches("<circle cx").count(), 2, "one marker and the legend's: {svg}");
        assert_eq!(
            svg.matches("<polyline").count(),
            1,
            "only the axes: no line through one point: {svg}"
        );
    }
    // All values equal, zero included.
    let svg = render(&chart(vec![series("flat", &[(0.0, 0.0), (0.0, 0.0)])], false));
    assert_well_formed(&svg);
}

#[test]
fn undrawable_points_are_left_out() {
    let svg = render(&chart(
        vec![series(
            "odd",
            &[
                (f64::NAN, 1.0),
                (1.0, f64::INFINITY),
                (0.0, 5.0),
                (-3.0, 2.0),
                (10.0, 7.0),
                (1e300, 1.0),
            ],
        )],
        true,
    ));
    assert_well_formed(&svg);
    assert_eq!(
        svg.matches("<circle cx").count(),
        2,
        "only (10, 7) is drawable on a log axis, plus the legend: {svg}"
    );
}

#[test]
fn text_is_escaped() {
    let mut shown = chart(vec![series("p50 <1ms> & \"fast\"", &[(1.0, 1.0), (2.0, 3.0)])], false);
    shown.title = "A & B".to_owned();
    let svg = render(&shown);
    assert_well_formed(&svg);
    assert!(svg.contains("p50 &lt;1ms&gt; &amp; &quot;fast&quot;"), "{svg}");
    assert!(svg.contains("A &amp; B"), "{svg}");
}

#[test]
fn numbers_read_as_a_person_writes_them() {
    let cases = [
        (0.0, "0"),
        (-0.0, "0"),
        (0.25, "0.25"),
        (0.005, "0.005"),
        (1.5, "1.5"),
        (750.0, "750"),
        (2500.0, "2500"),
        (12_000.0, "12k"),
        (12_345.0, "12.3k"),
        (1_500_000.0, "1.5M"),
        (2e9, "2G"),
        (-40_000.0, "-40k"),
        (f64::NAN, "?"),
    ];
    for (value, expected) in cases {
        assert_eq!(format_number(value), expected, "{value}");
    }
}

#[test]
fn linear_ticks_are_round_and_cover_the_data() {
    let axis = Axis::linear(0.0, 0.3);
    assert!(axis.low <= 0.0 && axis.high >= 0.3);
    assert!((4..=11).contains(&axis.ticks.len()), "{:?}", axis.ticks);
    let labels: Vec<String> = axis.ticks.iter().map(|tick| format_number(*tick)).collect();
    assert!(labels.iter().all(|label| label.len() <= 5), "{labels:?}");

    let axis = Axis::linear(3_127.0, 98_004.0);
    assert!(axis.ticks.iter().all(|tick| tick % 5_000.0 == 0.0), "{:?}", axis.ticks);

    let axis = Axis::logarithmic(3.0, 2_000.0);
    assert_eq!(axis.ticks, vec![1.0, 10.0, 100.0, 1_000.0, 10_000.0]);
}
