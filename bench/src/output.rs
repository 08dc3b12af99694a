//! Result files (`--out DIR`): each run's figures as pretty-printed JSON, as Markdown
//! tables beside its conditions, and as SVG charts (latency CDFs, figures against N).
//!
//! Files are named `<stem>.json`, `<stem>.md` and `<stem>-<chart>.svg`, the stem being the
//! subcommand and the run's start (`fanout-20261122T031500Z`); a stem already used in the
//! directory gets `-2`, `-3`, ... so no earlier result is overwritten.
//!
//! Charts are drawn by plotters' SVG backend without its font features: text is laid out
//! with fixed metrics and rendered by whatever views the SVG, so neither building nor
//! running needs fontconfig, freetype or a font file.
//!
//! Must never: write a JSON file that does not parse, or a chart without axes, tick
//! labels, axis titles, a legend and a title.

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};

use hdrhistogram::Histogram;
use plotters::coord::Shift;
use plotters::prelude::*;

use crate::conditions::Conditions;

/// Chart size, pixels.
const CHART_SIZE: (u32, u32) = (900, 560);
/// Series drawn with a marker on every point when they have at most this many.
const MARKED_POINTS_MAX: usize = 40;
/// Quantile steps per halving of the distance to 100 % in a latency CDF.
const CDF_TICKS_PER_HALF: u32 = 8;

/// `value` as one line of JSON and a newline: every `--json` report is a
/// `#[derive(serde::Serialize)]` struct written through here.
pub fn to_json_line(value: &impl serde::Serialize) -> String {
    let mut line = serde_json::to_string(value).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"));
    line.push('\n');
    line
}

/// Appends the list of files written to a text report, or prints it to stderr when the
/// report is JSON (stdout then holds one JSON document).
///
/// # Errors
/// Whatever `write` returned.
pub fn write_out(
    json: bool,
    text: &mut String,
    write: impl FnOnce() -> Result<Vec<PathBuf>, String>,
) -> Result<(), String> {
    let listing = written_text(&write()?);
    if json {
        eprint!("{listing}");
    } else {
        text.push_str(&listing);
    }
    Ok(())
}

/// Latency percentiles of a histogram of microseconds, as text.
pub fn percentiles(h: &Histogram<u64>) -> String {
    format!(
        "p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        h.value_at_quantile(0.5) as f64 / 1000.0,
        h.value_at_quantile(0.99) as f64 / 1000.0,
        h.max() as f64 / 1000.0
    )
}

/// A directory results are written into, each file named `<stem>.<ext>` or
/// `<stem>-<chart>.svg`.
#[derive(Debug, Clone)]
pub struct OutDir {
    dir: PathBuf,
    stem: String,
}

impl OutDir {
    /// Creates `dir` if needed. `stem` is e.g. `hold-20261122T031500Z` (see
    /// [`OutDir::stem`]); when `<stem>.json` or `<stem>.md` exists already, `-2`, `-3`, ...
    /// is appended.
    ///
    /// # Errors
    /// If the directory cannot be created.
    pub fn create(dir: &Path, stem: String) -> Result<OutDir, String> {
        fs::create_dir_all(dir).map_err(|e| format!("--out {}: {e}", dir.display()))?;
        let taken = |s: &str| dir.join(format!("{s}.json")).exists() || dir.join(format!("{s}.md")).exists();
        let mut unique = stem.clone();
        let mut n = 1;
        while taken(&unique) {
            n += 1;
            unique = format!("{stem}-{n}");
        }
        Ok(OutDir {
            dir: dir.to_path_buf(),
            stem: unique,
        })
    }

    /// `<subcommand>-<start date as YYYYMMDDTHHMMSSZ>`.
    pub fn stem(subcommand: &str, conditions: &Conditions) -> String {
        let date: String = conditions
            .date
            .chars()
            .filter(|c| !matches!(c, '-' | ':'))
            .collect();
        format!("{subcommand}-{date}")
    }

    /// Writes `<stem>.json`, pretty-printed.
    ///
    /// # Errors
    /// If `json` is not one valid JSON value, or the file cannot be written.
    pub fn write_json(&self, json: &str) -> Result<PathBuf, String> {
        let value: serde_json::Value =
            serde_json::from_str(json).map_err(|e| format!("the result is not valid JSON ({e}): {json}"))?;
        let mut text = serde_json::to_string_pretty(&value).map_err(|e| e.to_string())?;
        text.push('\n');
        self.write(&format!("{}.json", self.stem), &text)
    }

    /// Writes `<stem>.md`.
    ///
    /// # Errors
    /// If the file cannot be written.
    pub fn write_markdown(&self, markdown: &str) -> Result<PathBuf, String> {
        self.write(&format!("{}.md", self.stem), markdown)
    }

    /// Writes `<stem>-<name>.svg`.
    ///
    /// # Errors
    /// If the chart has nothing to draw or the file cannot be written.
    pub fn write_chart(&self, name: &str, chart: &Chart) -> Result<PathBuf, String> {
        let svg = chart.to_svg()?;
        self.write(&format!("{}-{name}.svg", self.stem), &svg)
    }

    fn write(&self, name: &str, text: &str) -> Result<PathBuf, String> {
        let path = self.dir.join(name);
        fs::write(&path, text).map_err(|e| format!("write {}: {e}", path.display()))?;
        Ok(path)
    }
}

/// A line chart: one line per series, a legend naming them.
#[derive(Debug, Clone, PartialEq)]
pub struct Chart {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    /// A logarithmic x axis (points with x <= 0 are left out).
    pub x_log: bool,
    pub series: Vec<Series>,
}

/// One labelled line of a chart.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    pub label: String,
    pub points: Vec<(f64, f64)>,
}

impl Chart {
    /// The chart as an SVG document.
    ///
    /// # Errors
    /// If no series has a point to draw (none finite, or none positive on a log axis).
    pub fn to_svg(&self) -> Result<String, String> {
        let series = self.drawable();
        let ((x_lo, x_hi), (y_lo, y_hi)) =
            bounds(&series, self.x_log).ok_or_else(|| format!("chart {:?}: no point to draw", self.title))?;
        let mut svg = String::new();
        {
            let root = SVGBackend::with_string(&mut svg, CHART_SIZE).into_drawing_area();
            let drawn = if self.x_log {
                self.draw(&root, &series, (x_lo..x_hi).log_scale(), y_lo..y_hi)
            } else {
                self.draw(&root, &series, x_lo..x_hi, y_lo..y_hi)
            };
            drawn.map_err(|e| format!("chart {:?}: {e}", self.title))?;
            root.present()
                .map_err(|e| format!("chart {:?}: {e}", self.title))?;
        }
        Ok(svg)
    }

    /// The series with only the points the axes can show.
    fn drawable(&self) -> Vec<Series> {
        self.series
            .iter()
            .map(|s| Series {
                label: s.label.clone(),
                points: s
                    .points
                    .iter()
                    .copied()
                    .filter(|(x, y)| x.is_finite() && y.is_finite() && (!self.x_log || *x > 0.0))
                    .collect(),
            })
            .collect()
    }

    fn draw<X>(
        &self,
        root: &DrawingArea<SVGBackend<'_>, Shift>,
        series: &[Series],
        x: X,
        y: std::ops::Range<f64>,
    ) -> Result<(), Box<dyn std::error::Error>>
    where
        X: plotters::coord::ranged1d::AsRangedCoord<Value = f64>,
        X::CoordDescType: plotters::coord::ranged1d::ValueFormatter<f64>,
    {
        root.fill(&WHITE)?;
        let mut chart = ChartBuilder::on(root)
            .caption(&self.title, ("sans-serif", 22))
            .margin(16)
            .x_label_area_size(48)
            .y_label_area_size(72)
            .build_cartesian_2d(x, y)?;
        chart
            .configure_mesh()
            .x_desc(self.x_label.as_str())
            .y_desc(self.y_label.as_str())
            .x_label_formatter(&|v| tick(*v))
            .y_label_formatter(&|v| tick(*v))
            .label_style(("sans-serif", 13))
            .axis_desc_style(("sans-serif", 15))
            .draw()?;
        for (i, s) in series.iter().enumerate() {
            let color = Palette99::pick(i).to_rgba();
            let style = color.stroke_width(2);
            chart
                .draw_series(LineSeries::new(s.points.iter().copied(), style))?
                .label(s.label.as_str())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
            if s.points.len() <= MARKED_POINTS_MAX {
                chart.draw_series(s.points.iter().map(|&p| Circle::new(p, 4, color.filled())))?;
            }
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .label_font(("sans-serif", 13))
            .draw()?;
        Ok(())
    }
}

/// A tick label: at most three decimals, no trailing zeros, millions as `M`.
fn tick(v: f64) -> String {
    let trim = |s: String| {
        if s.contains('.') {
            s.trim_end_matches('0').trim_end_matches('.').to_owned()
        } else {
            s
        }
    };
    if v.abs() >= 1e6 {
        format!("{}M", trim(format!("{:.2}", v / 1e6)))
    } else if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else {
        trim(format!("{v:.3}"))
    }
}

/// The x and y ranges that hold every point, with a margin; y starts at 0 when every
/// value is positive. `None` when there is no point.
fn bounds(series: &[Series], x_log: bool) -> Option<((f64, f64), (f64, f64))> {
    let points = series.iter().flat_map(|s| s.points.iter());
    let (mut x_lo, mut x_hi, mut y_lo, mut y_hi) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    let mut any = false;
    for &(x, y) in points {
        any = true;
        x_lo = x_lo.min(x);
        x_hi = x_hi.max(x);
        y_lo = y_lo.min(y);
        y_hi = y_hi.max(y);
    }
    if !any {
        return None;
    }
    if x_log {
        // Whole decades, so the log axis has labelled ticks.
        x_lo = 10f64.powf(x_lo.log10().floor());
        x_hi = 10f64.powf(x_hi.log10().ceil());
        if x_hi <= x_lo {
            x_hi = x_lo * 10.0;
        }
    } else {
        let pad = if x_hi > x_lo {
            (x_hi - x_lo) * 0.05
        } else {
            x_lo.abs().max(1.0) * 0.5
        };
        x_lo = if x_lo >= 0.0 && x_lo - pad < 0.0 {
            0.0
        } else {
            x_lo - pad
        };
        x_hi += pad;
    }
    let pad = if y_hi > y_lo {
        (y_hi - y_lo) * 0.05
    } else {
        y_hi.abs().max(1.0) * 0.5
    };
    y_lo = if y_lo >= 0.0 { 0.0 } else { y_lo - pad };
    y_hi += pad;
    Some(((x_lo, x_hi), (y_lo, y_hi)))
}

/// The CDF of a latency histogram of microseconds: x the latency in milliseconds, y the
/// fraction of samples at or below it (0..=1), ending at the largest sample with 1.0.
/// Empty for an empty histogram.
pub fn latency_cdf(label: &str, histogram: &Histogram<u64>) -> Series {
    let mut points: Vec<(f64, f64)> = Vec::new();
    if !histogram.is_empty() {
        for step in histogram.iter_quantiles(CDF_TICKS_PER_HALF) {
            let x = histogram.highest_equivalent(step.value_iterated_to()) as f64 / 1000.0;
            let y = step.quantile().clamp(0.0, 1.0);
            match points.last_mut() {
                // One point per distinct latency: the highest fraction reached at it.
                Some(last) if last.0 == x => last.1 = last.1.max(y),
                _ => points.push((x, y)),
            }
        }
        let max_ms = histogram.max() as f64 / 1000.0;
        match points.last_mut() {
            Some(last) if last.0 >= max_ms => last.1 = 1.0,
            _ => points.push((max_ms, 1.0)),
        }
    }
    // Rounding of the quantiles must not make the line step back.
    let mut high = 0.0f64;
    for p in &mut points {
        high = high.max(p.1);
        p.1 = high;
    }
    Series {
        label: label.to_owned(),
        points,
    }
}

/// A GitHub-flavoured Markdown table; `|` in a cell is escaped and line breaks become
/// spaces. Rows shorter than the header are padded with empty cells.
pub fn markdown_table(header: &[&str], rows: &[Vec<String>]) -> String {
    let cell = |s: &str| s.replace('|', "\\|").replace(['\r', '\n'], " ");
    let mut out = String::new();
    let _ = writeln!(
        out,
        "| {} |",
        header.iter().map(|h| cell(h)).collect::<Vec<_>>().join(" | ")
    );
    let _ = writeln!(out, "|{}", "---|".repeat(header.len()));
    for row in rows {
        let mut cells: Vec<String> = row.iter().map(|c| cell(c)).collect();
        cells.resize(header.len().max(cells.len()), String::new());
        let _ = writeln!(out, "| {} |", cells.join(" | "));
    }
    out
}

/// The conditions as a two-column Markdown table, then the command line to reproduce
/// the run in a code block.
pub fn conditions_markdown(conditions: &Conditions) -> String {
    let c = conditions;
    let code = |s: &str| format!("`{}`", s.replace('`', "'"));
    let rows = vec![
        vec!["date".to_owned(), c.date.clone()],
        vec!["kernel".to_owned(), c.kernel.clone()],
        vec!["CPU".to_owned(), c.cpu.clone()],
        vec!["CPU count".to_owned(), c.nproc.to_string()],
        vec!["ringcast-bench".to_owned(), c.version.clone()],
        vec!["commit".to_owned(), code(c.commit())],
        vec!["engine version".to_owned(), c.engine_version().to_owned()],
        vec!["command line".to_owned(), code(&c.command)],
        vec!["engine command line".to_owned(), code(&c.engine_command)],
    ];
    let mut out = markdown_table(&["condition", "value"], &rows);
    let _ = write!(out, "\nTo reproduce:\n\n```sh\n{}\n```\n", c.command);
    out
}

/// Writes one run's result files into `dir`: `<subcommand>-<date>.json` (`json`,
/// pretty-printed), `.md` (a title, `body`, the conditions and the command line) and
/// each chart that has a point to draw as `-<name>.svg`. Returns the paths written.
///
/// # Errors
/// If the directory cannot be made, `json` does not parse, or a file cannot be written.
pub fn write_result(
    dir: &Path,
    subcommand: &str,
    conditions: &Conditions,
    json: &str,
    body: &str,
    charts: &[(&str, Chart)],
) -> Result<Vec<PathBuf>, String> {
    let out = OutDir::create(dir, OutDir::stem(subcommand, conditions))?;
    let mut written = vec![out.write_json(json)?];
    let md = format!(
        "# ringcast-bench {subcommand}\n\n{body}\n## Conditions\n\n{}",
        conditions_markdown(conditions)
    );
    written.push(out.write_markdown(&md)?);
    for (name, chart) in charts {
        if chart.series.iter().any(|s| !s.points.is_empty()) {
            written.push(out.write_chart(name, chart)?);
        }
    }
    Ok(written)
}

/// A `figure | value` Markdown table of every scalar of a JSON object, nested objects
/// flattened as `outer.inner`; arrays are summarised by their length. The `conditions`
/// member is left out (it has its own table).
///
/// # Errors
/// If `json` is not a JSON object.
pub fn json_summary_table(json: &str) -> Result<String, String> {
    fn walk(prefix: &str, v: &serde_json::Value, rows: &mut Vec<Vec<String>>) {
        match v {
            serde_json::Value::Object(map) => {
                for (k, v) in map {
                    let name = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    walk(&name, v, rows);
                }
            }
            serde_json::Value::Array(items)
                if items.iter().all(|i| !i.is_object() && !i.is_array()) && items.len() <= 10 =>
            {
                let list: Vec<String> = items.iter().map(|i| i.to_string()).collect();
                rows.push(vec![prefix.to_owned(), list.join(", ")]);
            }
            serde_json::Value::Array(items) => {
                rows.push(vec![prefix.to_owned(), format!("{} items", items.len())])
            }
            serde_json::Value::String(s) => rows.push(vec![prefix.to_owned(), s.clone()]),
            other => rows.push(vec![prefix.to_owned(), other.to_string()]),
        }
    }
    let mut value: serde_json::Value = serde_json::from_str(json).map_err(|e| format!("not JSON: {e}"))?;
    let map = value.as_object_mut().ok_or("not a JSON object")?;
    map.remove("conditions");
    let mut rows = Vec::new();
    walk("", &value, &mut rows);
    Ok(markdown_table(&["figure", "value"], &rows))
}

/// Formats a float with `digits` decimals, or `n/a` when it is not finite.
pub fn fixed(value: f64, digits: usize) -> String {
    if value.is_finite() {
        format!("{value:.digits$}")
    } else {
        "n/a".to_owned()
    }
}

/// Milliseconds with two decimals of a histogram of microseconds at quantile `q`, or
/// `n/a` when it is empty.
pub fn quantile_ms(h: &Histogram<u64>, q: f64) -> String {
    if h.is_empty() {
        "n/a".to_owned()
    } else {
        format!("{:.2}", h.value_at_quantile(q) as f64 / 1000.0)
    }
}

/// p50, p90, p99, p99.9 and max of a histogram of microseconds, in milliseconds, as a
/// JSON object (`null` values when it is empty).
pub fn latency_json(h: &Histogram<u64>) -> serde_json::Value {
    let q = |q: f64| (!h.is_empty()).then(|| h.value_at_quantile(q) as f64 / 1000.0);
    serde_json::json!({
        "samples": h.len(),
        "p50_ms": q(0.5),
        "p90_ms": q(0.9),
        "p99_ms": q(0.99),
        "p999_ms": q(0.999),
        "max_ms": (!h.is_empty()).then(|| h.max() as f64 / 1000.0),
    })
}

/// The paths written, one per line, for the text report.
pub fn written_text(paths: &[PathBuf]) -> String {
    let mut out = String::new();
    for p in paths {
        let _ = writeln!(out, "  wrote {}", p.display());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Checks that every tag is closed in order (self-closing tags aside), which is what
    /// an XML parser would first reject.
    fn assert_well_formed(svg: &str) {
        let mut open: Vec<String> = Vec::new();
        let mut rest = svg;
        while let Some(at) = rest.find('<') {
            let end = rest[at..].find('>').expect("every tag ends") + at;
            let tag = &rest[at + 1..end];
            assert!(!tag.contains('<'), "a tag inside a tag: {tag}");
            if tag.starts_with('?') || tag.starts_with('!') || tag.ends_with('/') {
                // Declaration, comment or self-closing.
            } else if let Some(name) = tag.strip_prefix('/') {
                assert_eq!(
                    open.pop().as_deref(),
                    Some(name.trim()),
                    "closing tag out of order"
                );
            } else {
                open.push(tag.split_whitespace().next().expect("a tag name").to_owned());
            }
            rest = &rest[end + 1..];
        }
        assert!(open.is_empty(), "unclosed tags: {open:?}");
    }

    fn histogram(values: &[u64]) -> Histogram<u64> {
        let mut h = Histogram::new_with_bounds(1, 60_000_000, 3).expect("bounds");
        for &v in values {
            h.record(v).expect("in range");
        }
        h
    }

    fn chart(x_log: bool) -> Chart {
        let values: Vec<u64> = (1..=5000).map(|i| i * 7 % 9001 + 50).collect();
        Chart {
            title: "Latency <CDF> & more".into(),
            x_label: "latency, ms".into(),
            y_label: "fraction of events".into(),
            x_log,
            series: vec![
                latency_cdf("N=1000 \"fast\"", &histogram(&values)),
                latency_cdf("N=5000", &histogram(&[120, 130, 4000])),
            ],
        }
    }

    #[test]
    fn charts_are_well_formed_svg_with_every_label() {
        for x_log in [false, true] {
            let svg = chart(x_log).to_svg().expect("drawable");
            assert!(svg.starts_with("<svg"), "{}", &svg[..80]);
            assert_well_formed(&svg);
            for text in [
                "Latency &lt;CDF&gt; &amp; more",
                "latency, ms",
                "fraction of events",
                "N=1000 &quot;fast&quot;",
                "N=5000",
            ] {
                assert!(svg.contains(text), "{text} missing (x_log {x_log})");
            }
            assert!(svg.matches("<text").count() > 8, "tick labels missing");
            assert!(svg.contains("<polyline"), "no line drawn");
        }
    }

    #[test]
    fn a_chart_with_no_point_is_an_error() {
        let mut c = chart(true);
        c.series = vec![Series {
            label: "none".into(),
            points: vec![(0.0, 1.0), (f64::NAN, 2.0)],
        }];
        assert!(c.to_svg().is_err());
        c.x_log = false;
        assert!(c.to_svg().is_ok(), "x = 0 is drawable on a linear axis");
    }

    #[test]
    fn one_point_series_are_drawn() {
        let c = Chart {
            title: "memory".into(),
            x_label: "server".into(),
            y_label: "bytes".into(),
            x_log: false,
            series: vec![Series {
                label: "ringcast".into(),
                points: vec![(1.0, 128.0)],
            }],
        };
        let svg = c.to_svg().expect("drawable");
        assert_well_formed(&svg);
        assert!(svg.contains("<circle"));
    }

    #[test]
    fn latency_cdf_rises_to_one_at_the_largest_sample() {
        let values: Vec<u64> = (0..10_000).map(|i| 100 + (i * i) % 50_000).collect();
        let h = histogram(&values);
        let s = latency_cdf("x", &h);
        assert!(s.points.len() >= 20, "too few points: {}", s.points.len());
        for w in s.points.windows(2) {
            assert!(w[1].0 > w[0].0 && w[1].1 >= w[0].1, "not monotone: {w:?}");
        }
        let last = *s.points.last().expect("points");
        assert_eq!(last.1, 1.0);
        assert!(
            (last.0 - h.max() as f64 / 1000.0).abs() < 0.1,
            "{last:?} vs {}",
            h.max()
        );
        let at_median = s.points.iter().find(|p| p.1 >= 0.5).expect("a median");
        assert!((at_median.0 - h.value_at_quantile(0.5) as f64 / 1000.0).abs() < 0.5);
        assert!(latency_cdf("empty", &histogram(&[])).points.is_empty());
        assert_eq!(latency_cdf("one", &histogram(&[2000])).points, vec![(2.0, 1.0)]);
    }

    #[test]
    fn tick_labels_are_short() {
        assert_eq!(tick(2_000_000.0), "2M");
        assert_eq!(tick(2_250_000.0), "2.25M");
        assert_eq!(tick(200.0), "200");
        assert_eq!(tick(0.5), "0.5");
        assert_eq!(tick(1.0), "1");
        assert_eq!(tick(0.125), "0.125");
    }

    #[test]
    fn summary_tables_flatten_objects_and_skip_conditions() {
        let t = json_summary_table(r#"{"a":1,"b":{"c":"x"},"d":[1,2],"conditions":{"kernel":"6"}}"#)
            .expect("object");
        assert!(
            t.contains("| a | 1 |") && t.contains("| b.c | x |") && t.contains("| d | 1, 2 |"),
            "{t}"
        );
        assert!(!t.contains("kernel"), "{t}");
        assert!(json_summary_table("[1]").is_err());
    }

    #[test]
    fn markdown_tables_have_one_row_per_line_and_equal_columns() {
        let t = markdown_table(
            &["N", "events/s"],
            &[vec!["1000".into(), "a|b".into()], vec!["5000".into()]],
        );
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 4, "{t}");
        assert_eq!(lines[1], "|---|---|");
        assert_eq!(lines[2], "| 1000 | a\\|b |");
        assert_eq!(lines[3], "| 5000 |  |");
        for l in &lines {
            assert_eq!(l.replace("\\|", "").matches('|').count(), 3, "{l}");
        }
    }

    #[test]
    fn files_are_named_after_the_stem_and_never_overwritten() {
        let dir = std::env::temp_dir().join(format!("ringcast-bench-out-{}", std::process::id()));
        let mut c = Conditions::collect(std::process::id());
        c.date = "2026-11-22T03:15:00Z".into();
        let stem = OutDir::stem("fanout", &c);
        assert_eq!(stem, "fanout-20261122T031500Z");
        let out = OutDir::create(&dir, stem.clone()).expect("create");
        let json = out.write_json("{\"a\":[1,2],\"b\":null}").expect("valid");
        assert_eq!(json, dir.join("fanout-20261122T031500Z.json"));
        assert!(fs::read_to_string(&json)
            .expect("written")
            .contains("\n  \"a\": [\n"));
        assert!(out.write_json("{\"a\":").is_err(), "invalid JSON is refused");
        let md = out.write_markdown(&conditions_markdown(&c)).expect("md");
        let text = fs::read_to_string(md).expect("written");
        assert!(text.contains("| commit |") && text.contains("```sh\n"), "{text}");
        let svg = out.write_chart("latency-cdf", &chart(true)).expect("svg");
        assert_eq!(svg, dir.join("fanout-20261122T031500Z-latency-cdf.svg"));
        let again = OutDir::create(&dir, stem).expect("create");
        let md = again.write_markdown("# again\n").expect("md");
        assert_eq!(md, dir.join("fanout-20261122T031500Z-2.md"));
        let _ = fs::remove_dir_all(&dir);
    }
}
