//! Line charts written as SVG and PNG with plotters. Text is drawn with DejaVu Sans
//! from the system (Debian's `fonts-dejavu-core`); without it no chart is drawn and the
//! caller says so.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use anyhow::Context;
use plotters::coord::Shift;
use plotters::prelude::*;

const FONT_PATHS: [&str; 3] = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
];

const COLORS: [RGBColor; 6] = [BLUE, RED, GREEN, MAGENTA, CYAN, BLACK];

/// One line of a chart.
pub(crate) struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

fn ensure_font() -> anyhow::Result<()> {
    static REGISTERED: OnceLock<Result<(), String>> = OnceLock::new();
    REGISTERED
        .get_or_init(|| {
            let path = FONT_PATHS
                .iter()
                .find(|p| Path::new(p).exists())
                .ok_or("DejaVuSans.ttf not found (apt-get install fonts-dejavu-core)")?;
            let bytes = std::fs::read(path).map_err(|e| format!("reading {path}: {e}"))?;
            // plotters keeps registered fonts for the life of the process.
            let font: &'static [u8] = Box::leak(bytes.into_boxed_slice());
            plotters::style::register_font("sans-serif", FontStyle::Normal, font)
                .map_err(|_| format!("{path} is not a usable font"))
        })
        .clone()
        .map_err(anyhow::Error::msg)
}

/// Writes `<stem>.svg` and `<stem>.png`; returns their paths.
pub(crate) fn line_chart(
    stem: &Path,
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[Series],
) -> anyhow::Result<Vec<PathBuf>> {
    ensure_font()?;
    let svg = stem.with_extension("svg");
    let png = stem.with_extension("png");
    {
        let root = SVGBackend::new(&svg, (900, 520)).into_drawing_area();
        draw(&root, title, x_label, y_label, series)
            .with_context(|| format!("drawing {}", svg.display()))?;
        root.present()
            .with_context(|| format!("writing {}", svg.display()))?;
    }
    {
        let root = BitMapBackend::new(&png, (900, 520)).into_drawing_area();
        draw(&root, title, x_label, y_label, series)
            .with_context(|| format!("drawing {}", png.display()))?;
        root.present()
            .with_context(|| format!("writing {}", png.display()))?;
    }
    Ok(vec![svg, png])
}

fn draw<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[Series],
) -> anyhow::Result<()>
where
    DB::ErrorType: 'static,
{
    let err = |e: DrawingAreaErrorKind<DB::ErrorType>| anyhow::anyhow!("{e:?}");
    root.fill(&WHITE).map_err(err)?;
    let all = series.iter().flat_map(|s| s.points.iter());
    let (mut x0, mut x1, mut y1) = (f64::MAX, f64::MIN, 0f64);
    for &(x, y) in all {
        x0 = x0.min(x);
        x1 = x1.max(x);
        y1 = y1.max(y);
    }
    if x0 >= x1 {
        (x0, x1) = (x0.min(0.0), x0.max(0.0) + 1.0);
    }
    let y1 = if y1 <= 0.0 { 1.0 } else { y1 * 1.08 };
    let mut chart = ChartBuilder::on(root)
        .caption(title, ("sans-serif", 22))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(65)
        .build_cartesian_2d(x0..x1, 0f64..y1)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc(x_label)
        .y_desc(y_label)
        .label_style(("sans-serif", 14))
        .draw()
        .map_err(err)?;
    for (i, s) in series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        chart
            .draw_series(LineSeries::new(
                s.points.iter().copied(),
                color.stroke_width(2),
            ))
            .map_err(err)?
            .label(s.name.as_str())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
        chart
            .draw_series(s.points.iter().map(|&p| Circle::new(p, 3, color.filled())))
            .map_err(err)?;
    }
    chart
        .configure_series_labels()
        .label_font(("sans-serif", 14))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(err)?;
    Ok(())
}

/// [`line_chart`], reporting what it wrote, or why it wrote nothing, instead of failing
/// the command that wanted the chart.
pub(crate) fn line_chart_or_note(
    stem: &Path,
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[Series],
) {
    match line_chart(stem, title, x_label, y_label, series) {
        Ok(files) => {
            let names: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
            println!("wrote {}", names.join(", "));
        }
        Err(e) => eprintln!("note: no chart: {e:#}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_svg_and_png() {
        if ensure_font().is_err() {
            // The machine has no DejaVu font: the function must say so, not panic.
            let err = line_chart(Path::new("/nonexistent/x"), "t", "x", "y", &[]).unwrap_err();
            assert!(err.to_string().contains("fonts-dejavu-core"));
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let series = [Series {
            name: "hit rate".into(),
            points: vec![(1.0, 0.2), (2.0, 0.5), (4.0, 0.8)],
        }];
        let files = line_chart(
            &dir.path().join("chart"),
            "Hit rate",
            "GiB",
            "share",
            &series,
        )
        .unwrap();
        let svg = std::fs::read_to_string(&files[0]).unwrap();
        assert!(svg.starts_with("<svg") && svg.contains("Hit rate"));
        let png = std::fs::read(&files[1]).unwrap();
        assert_eq!(&png[1..4], b"PNG");
        assert!(png.len() > 5000, "a drawn chart, not an empty image");
    }
}
