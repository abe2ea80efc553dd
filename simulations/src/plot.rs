//! Line charts as PNG files: named series of `(x, y)` points on a linear or logarithmic y axis,
//! with a title, axis labels and a legend — and the two standard charts of a scenario run,
//! `accuracy.png` and `consensus.png`, drawn from its `rounds.csv`.
//!
//! `plotters` draws the grid, the lines and the markers; text is rasterized here with `ab_glyph`
//! from a TrueType/OpenType font read at run time ([`Font::system`]: the file named by
//! `MEDMESH_FONT`, else a known sans-serif font under [`Font::SEARCH_DIRS`]). No font is shipped
//! in the repository, and `plotters` is never asked to draw text (it has no font here). A chart
//! drawn without a font has its lines, grid and frame but no text: a missing font must never fail
//! a run, only cost it its labels.

use std::collections::BTreeMap;
use std::fmt::Display;
use std::path::{Path, PathBuf};

use ab_glyph::{Font as _, FontArc, PxScale, ScaleFont as _, point};
use plotters::coord::Shift;
use plotters::coord::ranged1d::{AsRangedCoord, BoldPoints, Ranged, ValueFormatter};
use plotters::element::DashedPathElement;
use plotters::prelude::*;
use serde::Deserialize;

/// Plotting errors.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A font file could not be read.
    #[error("cannot read font {path}: {source}")]
    FontRead {
        /// The font file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A file is not a font this renderer understands.
    #[error("{path} is not a TrueType/OpenType font")]
    FontInvalid {
        /// The file.
        path: PathBuf,
    },
    /// No usable font on this system.
    #[error(
        "no font found: set {env} to a .ttf file, or install one (Debian: fonts-dejavu-core) \
         under {dirs}",
        env = Font::ENV,
        dirs = Font::SEARCH_DIRS.join(", ")
    )]
    NoFont,
    /// Drawing or encoding the image failed.
    #[error("cannot draw {path}: {message}")]
    Draw {
        /// The image being written.
        path: PathBuf,
        /// What the drawing library said.
        message: String,
    },
    /// A run's `rounds.csv` could not be read.
    #[error("cannot read {path}: {source}")]
    Rounds {
        /// The file.
        path: PathBuf,
        /// Why.
        source: csv::Error,
    },
}

/// A TrueType/OpenType font for chart text.
#[derive(Clone)]
pub struct Font {
    face: FontArc,
}

impl std::fmt::Debug for Font {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Font").finish_non_exhaustive()
    }
}

impl Font {
    /// Environment variable naming the font file to use instead of searching.
    pub const ENV: &'static str = "MEDMESH_FONT";
    /// Folders searched (recursively) for a font when [`Font::ENV`] is unset; `~/...` is the
    /// home folder.
    pub const SEARCH_DIRS: &'static [&'static str] = &[
        "/usr/share/fonts",
        "/usr/local/share/fonts",
        "~/.local/share/fonts",
        "~/.fonts",
        "/System/Library/Fonts",
        "/Library/Fonts",
    ];
    /// Font files looked for under [`Font::SEARCH_DIRS`], best first.
    pub const NAMES: &'static [&'static str] = &[
        "DejaVuSans.ttf",
        "LiberationSans-Regular.ttf",
        "NotoSans-Regular.ttf",
        "FreeSans.ttf",
        "Arial.ttf",
    ];

    /// Reads a TrueType/OpenType font file.
    pub fn load(path: &Path) -> Result<Self, Error> {
        let bytes = std::fs::read(path).map_err(|source| Error::FontRead {
            path: path.to_owned(),
            source,
        })?;
        let face = FontArc::try_from_vec(bytes).map_err(|_| Error::FontInvalid {
            path: path.to_owned(),
        })?;
        Ok(Self { face })
    }

    /// The font named by [`Font::ENV`] if set, else the best of [`Font::NAMES`] found under
    /// [`Font::SEARCH_DIRS`].
    pub fn system() -> Result<Self, Error> {
        if let Some(path) = std::env::var_os(Self::ENV).filter(|p| !p.is_empty()) {
            return Self::load(Path::new(&path));
        }
        let home = std::env::var_os("HOME").map(PathBuf::from);
        let mut found: Vec<(usize, PathBuf)> = Vec::new();
        for dir in Self::SEARCH_DIRS {
            let dir = match (dir.strip_prefix("~/"), &home) {
                (Some(rest), Some(home)) => home.join(rest),
                (Some(_), None) => continue,
                (None, _) => PathBuf::from(dir),
            };
            find_fonts(&dir, 6, &mut found);
        }
        found.sort();
        // A damaged candidate is skipped for the next one.
        found
            .iter()
            .find_map(|(_, path)| Self::load(path).ok())
            .ok_or(Error::NoFont)
    }

    /// Width of `text` at `size` pixels.
    fn width(&self, text: &str, size: f32) -> f32 {
        self.layout(text, size).1
    }

    /// Glyphs of `text` positioned on a line whose top is y = 0, and the line's width and height.
    fn layout(&self, text: &str, size: f32) -> (Vec<ab_glyph::Glyph>, f32, f32) {
        let scaled = self.face.as_scaled(PxScale::from(size));
        let mut glyphs = Vec::with_capacity(text.len());
        let mut caret = 0.0;
        let mut previous = None;
        for c in text.chars() {
            let id = scaled.glyph_id(c);
            if let Some(previous) = previous {
                caret += scaled.kern(previous, id);
            }
            glyphs.push(id.with_scale_and_position(size, point(caret, scaled.ascent())));
            caret += scaled.h_advance(id);
            previous = Some(id);
        }
        (glyphs, caret, scaled.ascent() - scaled.descent())
    }

    /// Draws `text` on `area` with the point `anchor` of its box (fractions of its width and
    /// height from its top left) at `at`; `vertical` turns it a quarter counter-clockwise.
    fn draw<DB: DrawingBackend>(
        &self,
        area: &DrawingArea<DB, Shift>,
        text: &str,
        size: f32,
        at: (i32, i32),
        anchor: (f32, f32),
        vertical: bool,
    ) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
        let (glyphs, width, height) = self.layout(text, size);
        // Whole pixels: a fractional offset rounded per pixel would tear rows around zero.
        let dx = (anchor.0 * width).round() as i32;
        let dy = (anchor.1 * height).round() as i32;
        let mut ink = Vec::new();
        for glyph in glyphs {
            if let Some(outline) = self.face.outline_glyph(glyph) {
                let bounds = outline.px_bounds();
                outline.draw(|gx, gy, coverage| {
                    let x = bounds.min.x as i32 + gx as i32 - dx;
                    let y = bounds.min.y as i32 + gy as i32 - dy;
                    let pixel = if vertical {
                        (at.0 + y, at.1 - x)
                    } else {
                        (at.0 + x, at.1 + y)
                    };
                    ink.push((pixel, coverage));
                });
            }
        }
        for (pixel, coverage) in ink {
            if coverage > 0.0 {
                area.draw_pixel(pixel, &BLACK.mix(f64::from(coverage.min(1.0))))?;
            }
        }
        Ok(())
    }
}

/// Collects `(rank in Font::NAMES, path)` of known font files under `dir`.
fn find_fonts(dir: &Path, depth: usize, found: &mut Vec<(usize, PathBuf)>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let Ok(kind) = entry.file_type() else {
            continue;
        };
        if kind.is_dir() && depth > 0 {
            find_fonts(&path, depth - 1, found);
        } else if let Some(rank) = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| Font::NAMES.iter().position(|k| *k == n))
        {
            found.push((rank, path));
        }
    }
}

/// One line of a chart.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    /// Legend entry.
    pub name: String,
    /// Points in drawing order; non-finite ones (and non-positive `y` on a log axis) are skipped.
    pub points: Vec<(f64, f64)>,
}

/// Scale of the y axis.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Scale {
    /// Linear.
    #[default]
    Linear,
    /// Base-10 logarithmic: only positive values are drawn.
    Log,
}

/// A line chart.
#[derive(Debug, Clone, PartialEq)]
pub struct Chart {
    /// Title above the chart.
    pub title: String,
    /// Label of the x axis.
    pub x_label: String,
    /// Label of the y axis.
    pub y_label: String,
    /// Scale of the y axis.
    pub y_scale: Scale,
    /// Fixed y range; `None` fits the data.
    pub y_range: Option<(f64, f64)>,
    /// Image size in pixels (width, height).
    pub size: (u32, u32),
    /// The lines, one legend entry each.
    pub series: Vec<Series>,
}

/// Line colours, cycled: distinguishable, and readable on white.
const COLORS: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

/// Colour and dash (length and gap in pixels; `None` is solid) of the `i`th line: the colours
/// first, then again dashed, then dotted.
fn line_style(i: usize) -> (RGBColor, Option<(i32, i32)>) {
    let dash = match (i / COLORS.len()) % 3 {
        0 => None,
        1 => Some((10, 6)),
        _ => Some((3, 4)),
    };
    (COLORS[i % COLORS.len()], dash)
}

/// Most ticks (and bold grid lines) per axis.
const TICKS: usize = 10;
/// Text sizes in pixels.
const TITLE_PX: f32 = 22.0;
const DESC_PX: f32 = 16.0;
const TICK_PX: f32 = 14.0;
const LEGEND_PX: f32 = 15.0;

impl Chart {
    /// An empty linear chart of 960 × 560 pixels.
    pub fn new(
        title: impl Into<String>,
        x_label: impl Into<String>,
        y_label: impl Into<String>,
    ) -> Self {
        Self {
            title: title.into(),
            x_label: x_label.into(),
            y_label: y_label.into(),
            y_scale: Scale::Linear,
            y_range: None,
            size: (960, 560),
            series: Vec::new(),
        }
    }

    /// Writes the chart as a PNG file; without a font, the chart has no text.
    pub fn draw(&self, path: &Path, font: Option<&Font>) -> Result<(), Error> {
        let fail = |e: &dyn Display| Error::Draw {
            path: path.to_owned(),
            message: e.to_string(),
        };
        if self.size.0 < 160 || self.size.1 < 120 {
            return Err(fail(&format!("image size {:?} is too small", self.size)));
        }
        let log = self.y_scale == Scale::Log;
        let series: Vec<Vec<(f64, f64)>> = self
            .series
            .iter()
            .map(|s| {
                s.points
                    .iter()
                    .copied()
                    .filter(|(x, y)| x.is_finite() && y.is_finite() && (!log || *y > 0.0))
                    .collect()
            })
            .collect();
        let xs = bounds(series.iter().flatten().map(|p| p.0));
        let x_range = pad(xs.unwrap_or((0.0, 1.0)), 0.02);
        let ys = self
            .y_range
            .or_else(|| bounds(series.iter().flatten().map(|p| p.1)));
        let root = BitMapBackend::new(path, self.size).into_drawing_area();
        root.fill(&WHITE).map_err(|e| fail(&e))?;
        if log {
            let (lo, hi) = ys
                .filter(|(lo, hi)| *lo > 0.0 && *hi > 0.0)
                .unwrap_or((0.1, 1.0));
            // Whole decades, a hair wider so that rounding keeps both end ticks.
            let lo = 10f64.powf(lo.log10().floor()) * (1.0 - 1e-9);
            let hi = 10f64.powf(hi.log10().ceil()).max(lo * 10.0) * (1.0 + 1e-9);
            self.render(&root, &series, font, x_range, (lo..hi).log_scale())
                .map_err(|e| fail(&e))?;
        } else {
            let (lo, hi) = pad(ys.unwrap_or((0.0, 1.0)), 0.05);
            self.render(&root, &series, font, x_range, lo..hi)
                .map_err(|e| fail(&e))?;
        }
        root.present().map_err(|e| fail(&e))
    }

    fn render<'a, Y>(
        &self,
        root: &DrawingArea<BitMapBackend<'a>, Shift>,
        series: &[Vec<(f64, f64)>],
        font: Option<&Font>,
        (x0, x1): (f64, f64),
        y: Y,
    ) -> Result<(), DrawingAreaErrorKind<<BitMapBackend<'a> as DrawingBackend>::ErrorType>>
    where
        Y: AsRangedCoord<Value = f64>,
        Y::CoordDescType: Ranged<ValueType = f64> + ValueFormatter<f64>,
    {
        let (width, _) = self.size;
        let legend_width = match font {
            Some(font) if !self.series.is_empty() => {
                let widest = self
                    .series
                    .iter()
                    .map(|s| font.width(&s.name, LEGEND_PX))
                    .fold(0.0, f32::max);
                (widest.ceil() as u32 + 56).min(width * 2 / 5)
            }
            _ => 0,
        };
        let (plot_area, _) = root.split_horizontally(width - legend_width);
        let mut builder = ChartBuilder::on(&plot_area);
        if font.is_some() {
            builder
                .margin_top(48)
                .margin_bottom(60)
                .margin_left(92)
                .margin_right(20);
        } else {
            builder.margin(16);
        }
        let mut chart = builder.build_cartesian_2d(x0..x1, y)?;
        // No label areas: `plotters` draws no text, so it needs no font.
        chart
            .configure_mesh()
            .x_labels(TICKS)
            .y_labels(TICKS)
            .light_line_style(BLACK.mix(0.04))
            .bold_line_style(BLACK.mix(0.12))
            .draw()?;
        for (i, points) in series.iter().enumerate() {
            let (color, dash) = line_style(i);
            let style = color.stroke_width(2);
            match dash {
                None => chart.draw_series([PathElement::new(points.clone(), style)])?,
                Some((len, gap)) => chart.draw_series([DashedPathElement::new(
                    points.iter().copied(),
                    len,
                    gap,
                    style,
                )])?,
            };
            // Markers keep short series and single points visible.
            if points.len() <= 60 {
                chart.draw_series(points.iter().map(|p| Circle::new(*p, 3, color.filled())))?;
            }
        }
        let (px, py) = chart.plotting_area().get_pixel_range();
        root.draw(&Rectangle::new(
            [(px.start, py.start), (px.end, py.end)],
            BLACK.mix(0.6).stroke_width(1),
        ))?;
        let Some(font) = font else {
            return Ok(());
        };
        let spec = chart.as_coord_spec();
        let x_origin = spec.x_spec().range().start;
        let y_origin = spec.y_spec().range().start;
        let log = self.y_scale == Scale::Log;
        for x in spec.x_spec().key_points(BoldPoints(TICKS)) {
            let (sx, _) = chart.backend_coord(&(x, y_origin));
            root.draw(&PathElement::new([(sx, py.end), (sx, py.end + 5)], BLACK))?;
            font.draw(
                root,
                &tick(x, false),
                TICK_PX,
                (sx, py.end + 8),
                (0.5, 0.0),
                false,
            )?;
        }
        for y in spec.y_spec().key_points(BoldPoints(TICKS)) {
            let (_, sy) = chart.backend_coord(&(x_origin, y));
            root.draw(&PathElement::new(
                [(px.start - 5, sy), (px.start, sy)],
                BLACK,
            ))?;
            font.draw(
                root,
                &tick(y, log),
                TICK_PX,
                (px.start - 8, sy),
                (1.0, 0.5),
                false,
            )?;
        }
        let mid_x = (px.start + px.end) / 2;
        let mid_y = (py.start + py.end) / 2;
        font.draw(root, &self.title, TITLE_PX, (mid_x, 12), (0.5, 0.0), false)?;
        font.draw(
            root,
            &self.x_label,
            DESC_PX,
            (mid_x, py.end + 32),
            (0.5, 0.0),
            false,
        )?;
        font.draw(root, &self.y_label, DESC_PX, (14, mid_y), (0.5, 0.0), true)?;
        let left = (width - legend_width) as i32;
        for (i, s) in self.series.iter().enumerate() {
            let (color, dash) = line_style(i);
            let y = py.start + 10 + 24 * i as i32;
            let sample = [(left + 6, y), (left + 34, y)];
            match dash {
                None => root.draw(&PathElement::new(sample, color.stroke_width(3)))?,
                Some((len, gap)) => root.draw(&DashedPathElement::new(
                    sample,
                    len,
                    gap,
                    color.stroke_width(3),
                ))?,
            }
            font.draw(root, &s.name, LEGEND_PX, (left + 42, y), (0.0, 0.5), false)?;
        }
        Ok(())
    }
}

/// Smallest and largest of the values, if any.
fn bounds(values: impl Iterator<Item = f64>) -> Option<(f64, f64)> {
    values.fold(None, |acc, v| match acc {
        None => Some((v, v)),
        Some((lo, hi)) => Some((lo.min(v), hi.max(v))),
    })
}

/// Widens a range by `fraction` of its length on each side, and an empty one to unit length.
fn pad((lo, hi): (f64, f64), fraction: f64) -> (f64, f64) {
    if hi > lo {
        let d = (hi - lo) * fraction;
        (lo - d, hi + d)
    } else {
        (lo - 0.5, hi + 0.5)
    }
}

/// A tick label: short decimals, scientific notation on a log axis and for very small or large
/// values.
fn tick(v: f64, log: bool) -> String {
    if v == 0.0 {
        return "0".into();
    }
    if log || v.abs() < 1e-3 || v.abs() >= 1e5 {
        return format!("{v:.0e}");
    }
    let text = format!("{v:.3}");
    text.trim_end_matches('0').trim_end_matches('.').to_owned()
}

/// The columns of a scenario run's `rounds.csv` that the charts use, of a measured row.
#[derive(Debug, Clone, PartialEq)]
pub struct Round {
    /// Seed of the run.
    pub seed: u64,
    /// Round every honest peer has completed.
    pub round: u64,
    /// Mean honest accuracy (NaN where not measured: averaging-only runs).
    pub mean_accuracy: f64,
    /// Lowest honest accuracy (NaN where not measured).
    pub min_accuracy: f64,
    /// Mean distance of honest models to their average.
    pub consensus_distance: f64,
    /// Rejected messages so far.
    pub rejections: u64,
    /// Bytes between groups so far (0 in runs written before it was counted).
    pub wan_bytes: u64,
}

/// A `rounds.csv` row as written: empty cells where nothing was measured.
#[derive(Debug, Deserialize)]
struct Row {
    seed: u64,
    round: u64,
    mean_accuracy: Option<f64>,
    min_accuracy: Option<f64>,
    consensus_distance: Option<f64>,
    rejections: Option<u64>,
    wan_bytes: Option<u64>,
}

/// Reads a scenario run's `rounds.csv`: its measured rows (a round written without figures,
/// because the slowest peer skipped it or never reached it, is left out); accuracy left empty
/// (averaging-only runs) reads as NaN, which charts draw as a gap.
pub fn read_rounds(path: &Path) -> Result<Vec<Round>, Error> {
    let fail = |source| Error::Rounds {
        path: path.to_owned(),
        source,
    };
    let mut reader = csv::Reader::from_path(path).map_err(fail)?;
    let rows = reader
        .deserialize()
        .collect::<Result<Vec<Row>, _>>()
        .map_err(fail)?;
    Ok(rows
        .into_iter()
        .filter_map(|r| {
            Some(Round {
                seed: r.seed,
                round: r.round,
                mean_accuracy: r.mean_accuracy.unwrap_or(f64::NAN),
                min_accuracy: r.min_accuracy.unwrap_or(f64::NAN),
                consensus_distance: r.consensus_distance?,
                rejections: r.rejections.unwrap_or(0),
                wan_bytes: r.wan_bytes.unwrap_or(0),
            })
        })
        .collect())
}

/// Writes `accuracy.png` (mean honest accuracy per round) and `consensus.png` (consensus
/// distance per round, log scale) into `out` from its `rounds.csv`, one line per seed; returns
/// the files written.
pub fn write_run_plots(out: &Path, name: &str, font: Option<&Font>) -> Result<[PathBuf; 2], Error> {
    let rounds = read_rounds(&out.join("rounds.csv"))?;
    let mut by_seed: BTreeMap<u64, Vec<&Round>> = BTreeMap::new();
    for r in &rounds {
        by_seed.entry(r.seed).or_default().push(r);
    }
    let lines = |y: fn(&Round) -> f64| -> Vec<Series> {
        by_seed
            .iter()
            .map(|(seed, rows)| Series {
                name: format!("seed {seed}"),
                points: rows.iter().map(|r| (r.round as f64, y(r))).collect(),
            })
            .collect()
    };
    let mut accuracy = Chart::new(
        format!("{name}: mean honest accuracy"),
        "round",
        "mean honest accuracy",
    );
    accuracy.y_range = Some((0.0, 1.0));
    accuracy.series = lines(|r| r.mean_accuracy);
    let mut consensus = Chart::new(
        format!("{name}: consensus distance"),
        "round",
        "consensus distance (log)",
    );
    consensus.y_scale = Scale::Log;
    consensus.series = lines(|r| r.consensus_distance);
    let paths = [out.join("accuracy.png"), out.join("consensus.png")];
    accuracy.draw(&paths[0], font)?;
    consensus.draw(&paths[1], font)?;
    Ok(paths)
}

/// Writes a chart of mean honest accuracy against the bytes sent between groups (the WAN),
/// one line per run (`(legend, folder holding its rounds.csv)`): per round, the means over
/// the run's seeds of both, so a line ends where its run ended.
pub fn write_wan_plot(
    runs: &[(String, PathBuf)],
    path: &Path,
    font: Option<&Font>,
) -> Result<(), Error> {
    let mut chart = Chart::new(
        "mean honest accuracy against bytes between groups",
        "bytes between groups (WAN), kB",
        "mean honest accuracy",
    );
    for (name, dir) in runs {
        let rounds = read_rounds(&dir.join("rounds.csv"))?;
        let mut sums: BTreeMap<u64, (f64, f64, usize)> = BTreeMap::new();
        for r in &rounds {
            let entry = sums.entry(r.round).or_default();
            entry.0 += r.wan_bytes as f64 / 1e3;
            entry.1 += r.mean_accuracy;
            entry.2 += 1;
        }
        chart.series.push(Series {
            name: name.clone(),
            points: sums
                .into_values()
                .map(|(wan, accuracy, n)| (wan / n as f64, accuracy / n as f64))
                .collect(),
        });
    }
    chart.draw(path, font)
}

/// Per round, the mean over seeds of `y`: one curve for a run of several seeds.
pub fn mean_over_seeds(rounds: &[Round], y: fn(&Round) -> f64) -> Vec<(f64, f64)> {
    let mut sums: BTreeMap<u64, (f64, usize)> = BTreeMap::new();
    for r in rounds {
        let entry = sums.entry(r.round).or_default();
        entry.0 += y(r);
        entry.1 += 1;
    }
    sums.into_iter()
        .map(|(round, (sum, n))| (round as f64, sum / n as f64))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_short() {
        assert_eq!(tick(0.0, false), "0");
        assert_eq!(tick(0.5, false), "0.5");
        assert_eq!(tick(10.0, false), "10");
        assert_eq!(tick(0.125, false), "0.125");
        assert_eq!(tick(1e-5, false), "1e-5");
        assert_eq!(tick(2e6, false), "2e6");
        assert_eq!(tick(0.010000000000000002, true), "1e-2");
    }

    #[test]
    fn empty_and_degenerate_ranges_are_widened() {
        assert_eq!(pad((3.0, 3.0), 0.1), (2.5, 3.5));
        assert_eq!(pad((0.0, 10.0), 0.1), (-1.0, 11.0));
        assert_eq!(bounds([2.0, -1.0, 5.0].into_iter()), Some((-1.0, 5.0)));
        assert_eq!(bounds(std::iter::empty()), None);
    }

    #[test]
    fn the_first_thirty_lines_look_different() {
        let styles: Vec<_> = (0..30).map(line_style).collect();
        for (i, a) in styles.iter().enumerate() {
            assert!(styles[..i].iter().all(|b| b != a), "line {i} repeats");
        }
    }

    #[test]
    fn seeds_are_averaged_per_round() {
        let row = |seed, round, acc| Round {
            seed,
            round,
            mean_accuracy: acc,
            min_accuracy: acc,
            consensus_distance: 0.0,
            rejections: 0,
            wan_bytes: 0,
        };
        let rounds = [
            row(1, 1, 0.5),
            row(1, 2, 0.7),
            row(2, 1, 0.7),
            row(2, 2, 0.9),
        ];
        let curve = mean_over_seeds(&rounds, |r| r.mean_accuracy);
        assert_eq!(curve.len(), 2);
        assert!((curve[0].1 - 0.6).abs() < 1e-12 && (curve[1].1 - 0.8).abs() < 1e-12);
    }

    #[test]
    fn a_missing_font_file_is_an_error_not_a_panic() {
        let err = Font::load(Path::new("no/such/font.ttf")).expect_err("missing");
        assert!(matches!(err, Error::FontRead { .. }), "{err}");
    }
}
