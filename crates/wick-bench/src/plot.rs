//! Plots as hand-written SVG (no plotting dependency): latency CDFs for one run; for a
//! sweep, output throughput, TTFT and TPOT against the load, plus TTFT CDFs per point.
//! A `.png` path is rendered from the SVG by `rsvg-convert` when it is installed.
//!
//! Invariants: every number written is finite (empty or degenerate series still give a
//! valid document); text is XML-escaped.

use std::fmt::Write as _;
use std::path::Path;

use crate::error::{BenchError, Context, Result};

use crate::report::{Report, SweepReport};
use crate::stats::cdf_points;

const COLORS: [&str; 8] = [
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf",
];
const PANEL_W: f64 = 460.0;
const PANEL_H: f64 = 300.0;

/// One line of a panel.
pub struct Series {
    /// Legend text.
    pub name: String,
    /// Points in data coordinates.
    pub points: Vec<(f64, f64)>,
}

/// One chart.
pub struct Panel {
    /// Title.
    pub title: String,
    /// X axis label.
    pub x_label: String,
    /// Y axis label.
    pub y_label: String,
    /// Logarithmic x axis.
    pub log_x: bool,
    /// Lines.
    pub series: Vec<Series>,
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// About five round tick values covering `lo..=hi`.
pub fn ticks(lo: f64, hi: f64) -> Vec<f64> {
    let span = (hi - lo).abs();
    if !span.is_finite() || span == 0.0 {
        return vec![lo];
    }
    let raw = span / 5.0;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 2.5, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| span / s <= 6.0)
        .unwrap_or(10.0 * mag);
    let mut t = (lo / step).ceil() * step;
    let mut out = Vec::new();
    while t <= hi + step * 1e-9 {
        out.push(if t.abs() < step * 1e-9 { 0.0 } else { t });
        t += step;
    }
    out
}

fn fmt_num(v: f64) -> String {
    if v.abs() >= 1000.0 || v == v.trunc() {
        format!("{v:.0}")
    } else if v.abs() >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// Draws `panel` with its top-left corner at (`ox`, `oy`).
fn draw_panel(svg: &mut String, panel: &Panel, ox: f64, oy: f64) {
    let (l, r, t, b) = (62.0, 16.0, 30.0, 46.0);
    let (w, h) = (PANEL_W - l - r, PANEL_H - t - b);
    let pts = || panel.series.iter().flat_map(|s| s.points.iter());
    let fx = |x: f64| if panel.log_x { x.max(1e-9).log2() } else { x };
    let finite = |v: f64| v.is_finite();
    let xs: Vec<f64> = pts().map(|p| fx(p.0)).filter(|v| finite(*v)).collect();
    let ys: Vec<f64> = pts().map(|p| p.1).filter(|v| finite(*v)).collect();
    let (mut x0, mut x1) = xs
        .iter()
        .fold((f64::MAX, f64::MIN), |a, &v| (a.0.min(v), a.1.max(v)));
    let mut y1 = ys.iter().fold(0.0f64, |a, &v| a.max(v));
    if xs.is_empty() {
        (x0, x1) = (0.0, 1.0);
    }
    if x1 <= x0 {
        x1 = x0 + 1.0;
    }
    if y1 <= 0.0 {
        y1 = 1.0;
    }
    y1 *= 1.05;
    let sx = |x: f64| ox + l + (fx(x) - x0) / (x1 - x0) * w;
    let sy = |y: f64| oy + t + h - (y / y1) * h;
    let _ = writeln!(
        svg,
        r#"<text x="{:.1}" y="{:.1}" font-size="14" font-weight="bold">{}</text>"#,
        ox + l,
        oy + 18.0,
        esc(&panel.title)
    );
    let _ = writeln!(
        svg,
        r##"<rect x="{:.1}" y="{:.1}" width="{w:.1}" height="{h:.1}" fill="none" stroke="#888"/>"##,
        ox + l,
        oy + t
    );
    for ty in ticks(0.0, y1) {
        let y = sy(ty);
        let _ = writeln!(
            svg,
            r##"<line x1="{:.1}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#eee"/><text x="{:.1}" y="{:.1}" font-size="11" text-anchor="end">{}</text>"##,
            ox + l,
            ox + l + w,
            ox + l - 4.0,
            y + 4.0,
            fmt_num(ty)
        );
    }
    let xticks: Vec<f64> = if panel.log_x {
        let mut v: Vec<f64> = pts()
            .map(|p| p.0)
            .filter(|v| finite(*v) && *v > 0.0)
            .collect();
        v.sort_by(f64::total_cmp);
        v.dedup();
        v
    } else {
        ticks(x0, x1)
    };
    for tx in xticks {
        let x = sx(tx);
        let _ = writeln!(
            svg,
            r##"<line x1="{x:.1}" y1="{:.1}" x2="{x:.1}" y2="{:.1}" stroke="#eee"/><text x="{x:.1}" y="{:.1}" font-size="11" text-anchor="middle">{}</text>"##,
            oy + t,
            oy + t + h,
            oy + t + h + 14.0,
            fmt_num(tx)
        );
    }
    let _ = writeln!(
        svg,
        r#"<text x="{:.1}" y="{:.1}" font-size="12" text-anchor="middle">{}</text>"#,
        ox + l + w / 2.0,
        oy + PANEL_H - 10.0,
        esc(&panel.x_label)
    );
    let _ = writeln!(
        svg,
        r#"<text x="{:.1}" y="{:.1}" font-size="12" text-anchor="middle" transform="rotate(-90 {:.1} {:.1})">{}</text>"#,
        ox + 14.0,
        oy + t + h / 2.0,
        ox + 14.0,
        oy + t + h / 2.0,
        esc(&panel.y_label)
    );
    for (i, s) in panel.series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let path: Vec<String> = s
            .points
            .iter()
            .filter(|p| finite(fx(p.0)) && finite(p.1))
            .map(|&(x, y)| format!("{:.1},{:.1}", sx(x), sy(y)))
            .collect();
        if !path.is_empty() {
            let _ = writeln!(
                svg,
                r#"<polyline fill="none" stroke="{color}" stroke-width="2" points="{}"/>"#,
                path.join(" ")
            );
            if s.points.len() <= 16 {
                for p in &path {
                    let (x, y) = p.split_once(',').unwrap_or(("0", "0"));
                    let _ = writeln!(svg, r#"<circle cx="{x}" cy="{y}" r="3" fill="{color}"/>"#);
                }
            }
        }
    }
    // The legend sits in the top margin, right-aligned, clear of the lines.
    let entry_w = |s: &Series| 22.0 + 6.5 * s.name.chars().count() as f64;
    let mut lx = ox + l + w - panel.series.iter().map(entry_w).sum::<f64>();
    let ly = oy + 18.0;
    for (i, s) in panel.series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let _ = writeln!(
            svg,
            r#"<rect x="{lx:.1}" y="{:.1}" width="12" height="4" fill="{color}"/><text x="{:.1}" y="{ly:.1}" font-size="11">{}</text>"#,
            ly - 5.0,
            lx + 16.0,
            esc(&s.name)
        );
        lx += entry_w(s);
    }
}

/// An SVG document of `panels` laid out two per row under `title`.
pub fn render(title: &str, panels: &[Panel]) -> String {
    let cols = 2usize;
    let rows = panels.len().div_ceil(cols).max(1);
    let (w, h) = (PANEL_W * cols as f64, PANEL_H * rows as f64 + 34.0);
    let mut svg = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="sans-serif">
<rect width="100%" height="100%" fill="white"/>
<text x="12" y="22" font-size="15">{}</text>
"#,
        esc(title)
    );
    for (i, p) in panels.iter().enumerate() {
        let (c, r) = (i % cols, i / cols);
        draw_panel(&mut svg, p, c as f64 * PANEL_W, 34.0 + r as f64 * PANEL_H);
    }
    svg.push_str("</svg>\n");
    svg
}

fn cdf_panel(title: &str, series: Vec<Series>) -> Panel {
    Panel {
        title: format!("{title} CDF"),
        x_label: format!("{title} (ms)"),
        y_label: "fraction of requests".into(),
        log_x: false,
        series,
    }
}

fn ms(v: impl Iterator<Item = f64>) -> Vec<f64> {
    v.map(|s| s * 1e3).collect()
}

/// Latency CDFs (TTFT, TPOT, ITL, E2E) of one run.
pub fn report_svg(r: &Report) -> String {
    let ok = || r.records.iter().filter(|x| x.is_ok());
    let one = |name: &str, v: Vec<f64>| {
        cdf_panel(
            name,
            vec![Series {
                name: r.load.label(),
                points: cdf_points(&v, 400),
            }],
        )
    };
    let panels = vec![
        one("TTFT", ms(ok().filter_map(|x| x.ttft_s))),
        one("TPOT", ms(ok().filter_map(|x| x.tpot_s()))),
        one("ITL", ms(ok().flat_map(|x| x.itl_s.iter().copied()))),
        one("E2E latency", ms(ok().map(|x| x.e2e_s))),
    ];
    let title = format!(
        "wick bench: {} at {} ({} ok, {} failed)",
        r.model,
        r.load.label(),
        r.ok,
        r.failed
    );
    render(&title, &panels)
}

/// Throughput, TTFT and TPOT against load, and TTFT CDFs per load level.
pub fn sweep_svg(s: &SweepReport) -> String {
    let Some(first) = s.points.first() else {
        return render("wick bench: empty sweep", &[]);
    };
    let closed = matches!(first.load, crate::config::LoadSpec::Closed { .. });
    let x_label = if closed {
        "concurrency"
    } else {
        "request rate (req/s)"
    };
    let xs: Vec<f64> = s.points.iter().map(|p| p.load.x_value()).collect();
    let (lo, hi) = xs
        .iter()
        .fold((f64::MAX, 0.0f64), |a, &x| (a.0.min(x), a.1.max(x)));
    let log_x = lo > 0.0 && hi / lo >= 8.0;
    let line = |name: &str, f: &dyn Fn(&Report) -> f64| Series {
        name: name.into(),
        points: s.points.iter().map(|p| (p.load.x_value(), f(p))).collect(),
    };
    let panel = |title: &str, y: &str, series| Panel {
        title: title.into(),
        x_label: x_label.into(),
        y_label: y.into(),
        log_x,
        series,
    };
    let panels = vec![
        panel(
            "Output throughput",
            "tokens/s",
            vec![line("output tok/s", &|p| p.output_throughput)],
        ),
        panel(
            "Time to first token",
            "ms",
            vec![
                line("p50", &|p| p.ttft_ms.p50),
                line("p95", &|p| p.ttft_ms.p95),
            ],
        ),
        panel(
            "Time per output token",
            "ms",
            vec![
                line("p50", &|p| p.tpot_ms.p50),
                line("p95", &|p| p.tpot_ms.p95),
            ],
        ),
        cdf_panel(
            "TTFT",
            s.points
                .iter()
                .map(|p| Series {
                    name: p.load.label(),
                    points: cdf_points(
                        &ms(p
                            .records
                            .iter()
                            .filter(|x| x.is_ok())
                            .filter_map(|x| x.ttft_s)),
                        300,
                    ),
                })
                .collect(),
        ),
    ];
    let title = format!("wick bench sweep: {} at {}", first.model, first.url);
    render(&title, &panels)
}

/// Writes `svg` to `path`: as is for `.svg`, through `rsvg-convert` for `.png`.
pub fn write(path: &Path, svg: &str) -> Result<()> {
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
    match ext.to_ascii_lowercase().as_str() {
        "png" => {
            let mut child = std::process::Command::new("rsvg-convert")
                .args(["-f", "png", "-o"])
                .arg(path)
                .stdin(std::process::Stdio::piped())
                .spawn()
                .context("PNG plots need `rsvg-convert` (librsvg2-bin); or write .svg")?;
            if let Some(mut stdin) = child.stdin.take() {
                use std::io::Write;
                stdin
                    .write_all(svg.as_bytes())
                    .context("piping the SVG to rsvg-convert")?;
            }
            let status = child.wait().context("waiting for rsvg-convert")?;
            if !status.success() {
                return Err(BenchError::Io(std::io::Error::other(format!(
                    "rsvg-convert failed ({status})"
                ))));
            }
            Ok(())
        }
        _ => std::fs::write(path, svg).with_context(|| format!("writing {}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_round_and_cover_the_range() {
        assert_eq!(ticks(0.0, 100.0), vec![0.0, 20.0, 40.0, 60.0, 80.0, 100.0]);
        let t = ticks(0.0, 0.37);
        assert!(t.len() >= 3 && t.len() <= 7, "{t:?}");
        assert_eq!(ticks(5.0, 5.0), vec![5.0]);
    }

    #[test]
    fn svg_is_well_formed_even_with_empty_and_odd_series() {
        let panels = vec![
            Panel {
                title: "a<b & c".into(),
                x_label: "x".into(),
                y_label: "y".into(),
                log_x: true,
                series: vec![Series {
                    name: "s".into(),
                    points: vec![(1.0, 2.0), (4.0, f64::NAN), (16.0, 3.0)],
                }],
            },
            cdf_panel(
                "TTFT",
                vec![Series {
                    name: "empty".into(),
                    points: vec![],
                }],
            ),
        ];
        let svg = render("t", &panels);
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert!(svg.contains("a&lt;b &amp; c"));
        assert!(!svg.contains("NaN") && !svg.contains("inf"));
        assert_eq!(svg.matches("<polyline").count(), 1);
    }
}
