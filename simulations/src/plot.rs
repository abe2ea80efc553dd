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
use serde::{Deserialize, Serialize};

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

/// The y axis of an accuracy chart (`[output] accuracy_axis`, `--accuracy-axis`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum AccuracyAxis {
    /// Fitted to the data (at least [`MIN_ACCURACY_SPAN`] tall, within 0 to 1), so that small
    /// differences between lines show.
    #[default]
    Fit,
    /// Always 0 to 1, so that charts compare at a glance.
    Full,
}

/// The shortest accuracy range a fitted axis shows (a flat line is not blown up to noise).
pub const MIN_ACCURACY_SPAN: f64 = 0.05;

/// The y range of an accuracy chart of `series` (before the chart's 5 % padding): 0 to 1 with
/// [`AccuracyAxis::Full`]; with [`AccuracyAxis::Fit`], the finite values' range widened to at
/// least [`MIN_ACCURACY_SPAN`] and kept within 0 to 1, or `None` (the chart's default) when
/// there is no value.
pub fn accuracy_range(axis: AccuracyAxis, series: &[Series]) -> Option<(f64, f64)> {
    if axis == AccuracyAxis::Full {
        return Some((0.0, 1.0));
    }
    let (lo, hi) = bounds(
        series
            .iter()
            .flat_map(|s| s.points.iter().map(|p| p.1))
            .filter(|y| y.is_finite()),
    )?;
    let missing = (MIN_ACCURACY_SPAN - (hi - lo)).max(0.0);
    let (mut lo, mut hi) = (lo - missing / 2.0, hi + missing / 2.0);
    // Shift a widened range back inside [0, 1] (accuracies never leave it).
    if lo < 0.0 {
        (lo, hi) = (0.0, hi - lo);
    }
    if hi > 1.0 {
        (lo, hi) = ((lo - (hi - 1.0)).max(0.0), 1.0);
    }
    Some((lo, hi))
}

/// Why a series draws nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Empty {
    /// It has no finite point.
    NoValues,
    /// On a log axis: finite points, none positive; `all_zero` when every one is exactly 0
    /// (a consensus distance of exactly 0: the peers hold the same model).
    NoPositive {
        /// Every finite value is exactly 0.
        all_zero: bool,
    },
}

impl Empty {
    /// Why `points` draw nothing on a `scale` axis; `None` if they draw something.
    pub fn of(points: &[(f64, f64)], scale: Scale) -> Option<Empty> {
        let finite: Vec<f64> = points
            .iter()
            .filter(|(x, y)| x.is_finite() && y.is_finite())
            .map(|p| p.1)
            .collect();
        if finite.is_empty() {
            return Some(Empty::NoValues);
        }
        if scale == Scale::Log && finite.iter().all(|y| *y <= 0.0) {
            return Some(Empty::NoPositive {
                all_zero: finite.iter().all(|y| *y == 0.0),
            });
        }
        None
    }

    /// A short reason, for a legend entry.
    pub fn short(self) -> &'static str {
        match self {
            Empty::NoValues => "no values",
            Empty::NoPositive { all_zero: true } => "all exactly 0",
            Empty::NoPositive { all_zero: false } => "no positive values",
        }
    }
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
    /// Image size in pixels (width, height); a legend of many entries adds rows below.
    pub size: (u32, u32),
    /// The lines, one legend entry each.
    pub series: Vec<Series>,
    /// The note drawn in the empty plot when every value is exactly 0 on a log axis (e.g.
    /// "no positive values: consensus reached exactly"); `None`: a generic one.
    pub zero_note: Option<String>,
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

/// Dash patterns (length and gap in pixels; `None` is solid), cycled after the colours.
const DASHES: [Option<(i32, i32)>; 4] = [None, Some((10, 6)), Some((3, 4)), Some((20, 5))];

/// How many lines get a colour and dash of their own ([`line_style`]); later ones repeat.
pub const DISTINCT_LINES: usize = COLORS.len() * DASHES.len();

/// Colour and dash (length and gap in pixels; `None` is solid) of the `i`th line: the colours
/// solid, then dashed, dotted and long-dashed; the first [`DISTINCT_LINES`] all differ.
pub fn line_style(i: usize) -> (RGBColor, Option<(i32, i32)>) {
    (
        COLORS[i % COLORS.len()],
        DASHES[(i / COLORS.len()) % DASHES.len()],
    )
}

/// Most ticks (and bold grid lines) per axis.
const TICKS: usize = 10;
/// Text sizes in pixels.
const TITLE_PX: f32 = 22.0;
const DESC_PX: f32 = 16.0;
const TICK_PX: f32 = 14.0;
const LEGEND_PX: f32 = 15.0;
/// Legend text size below the plot (many entries).
const LEGEND_SMALL_PX: f32 = 13.0;
/// Up to this many entries the legend is one column beside the plot; more go below it.
pub const SIDE_LEGEND_MAX: usize = 12;
/// Most legend columns below the plot.
const LEGEND_COLUMNS_MAX: usize = 4;
/// Space of a legend entry besides its text: the line sample and gaps, pixels.
const LEGEND_SAMPLE: u32 = 48;

/// Where and how the legend goes (see [`legend_layout`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LegendLayout {
    /// Below the plot (many entries) rather than beside it.
    pub below: bool,
    /// Columns of entries (filled top to bottom, then left to right).
    pub columns: usize,
    /// Rows of entries.
    pub rows: usize,
    /// Width of a column, pixels (its text is cut to fit with "…").
    pub column_width: u32,
    /// Height of a row, pixels.
    pub row_height: u32,
    /// Text size, pixels.
    pub text_px: f32,
    /// Width taken from the plot on its right (beside), pixels.
    pub side_width: u32,
    /// Height added below the chart (below), pixels.
    pub extra_height: u32,
}

impl LegendLayout {
    /// The top left corner of entry `k`'s cell in an image `width` wide whose chart is
    /// `height` tall, beside or below a plot whose top is `plot_top`.
    pub fn cell(&self, k: usize, (width, height): (u32, u32), plot_top: i32) -> (i32, i32) {
        let (column, row) = (k / self.rows.max(1), k % self.rows.max(1));
        if self.below {
            (
                LEGEND_MARGIN as i32 + (column as u32 * self.column_width) as i32,
                height as i32 + 8 + (row as u32 * self.row_height) as i32,
            )
        } else {
            (
                (width - self.side_width) as i32,
                plot_top + (row as u32 * self.row_height) as i32,
            )
        }
    }
}

/// Margin of a legend below the plot, pixels.
const LEGEND_MARGIN: u32 = 20;

/// The legend of `entries` lines whose widest label is `widest` pixels at the side legend's
/// text size, for a chart of `size`: up to [`SIDE_LEGEND_MAX`] entries, one column beside the
/// plot (at most 2/5 of the width) as before; more, in up to 4 columns below the plot, the
/// image growing by their rows, so that every entry keeps a readable row of its own.
pub fn legend_layout(entries: usize, widest: f32, size: (u32, u32)) -> LegendLayout {
    let (width, _) = size;
    if entries <= SIDE_LEGEND_MAX {
        let side_width = if entries == 0 {
            0
        } else {
            (widest.ceil().max(0.0) as u32 + 56).min(width * 2 / 5)
        };
        return LegendLayout {
            below: false,
            columns: usize::from(entries > 0),
            rows: entries,
            column_width: side_width,
            row_height: 24,
            text_px: LEGEND_PX,
            side_width,
            extra_height: 0,
        };
    }
    let usable = width.saturating_sub(2 * LEGEND_MARGIN).max(1);
    let text = (widest * LEGEND_SMALL_PX / LEGEND_PX).ceil().max(0.0) as u32;
    let columns = ((usable / (text + LEGEND_SAMPLE).max(1)) as usize).clamp(1, LEGEND_COLUMNS_MAX);
    let rows = entries.div_ceil(columns);
    let row_height = 20;
    LegendLayout {
        below: true,
        columns,
        rows,
        column_width: usable / columns as u32,
        row_height,
        text_px: LEGEND_SMALL_PX,
        side_width: 0,
        extra_height: rows as u32 * row_height + 16,
    }
}

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
            zero_note: None,
        }
    }

    /// The note drawn in the plot when no series draws anything, `None` when one does: with
    /// values all exactly 0 on a log axis, [`Chart::zero_note`] (or a generic one); else why.
    pub fn note(&self) -> Option<String> {
        let reasons: Vec<Option<Empty>> = self
            .series
            .iter()
            .map(|s| Empty::of(&s.points, self.y_scale))
            .collect();
        if reasons.iter().any(Option::is_none) {
            return None;
        }
        let reasons: Vec<Empty> = reasons.into_iter().flatten().collect();
        let zero = Empty::NoPositive { all_zero: true };
        if !reasons.is_empty()
            && reasons.iter().all(|r| *r == zero || *r == Empty::NoValues)
            && reasons.contains(&zero)
        {
            return Some(self.zero_note.clone().unwrap_or_else(|| {
                "no positive values: every value is exactly 0 (not drawn on a log axis)".into()
            }));
        }
        if reasons
            .iter()
            .any(|r| matches!(r, Empty::NoPositive { .. }))
        {
            return Some("no positive values to draw on a log axis".into());
        }
        Some("no values to draw".into())
    }

    /// The legend entry of series `i`: its name, and why it draws nothing when it does not
    /// (while others do; an empty chart says so in [`Chart::note`]).
    pub fn legend_label(&self, i: usize) -> String {
        let Some(series) = self.series.get(i) else {
            return String::new();
        };
        match Empty::of(&series.points, self.y_scale) {
            Some(reason) if self.note().is_none() => {
                format!("{} (not drawn: {})", series.name, reason.short())
            }
            _ => series.name.clone(),
        }
    }

    /// The legend's layout with `font` (none without a font: no text, no legend).
    fn legend(&self, font: Option<&Font>) -> LegendLayout {
        let widest = match font {
            Some(font) => (0..self.series.len())
                .map(|i| font.width(&self.legend_label(i), LEGEND_PX))
                .fold(0.0, f32::max),
            None => 0.0,
        };
        let entries = if font.is_some() { self.series.len() } else { 0 };
        legend_layout(entries, widest, self.size)
    }

    /// Writes the chart as a PNG file; without a font, the chart has no text (and no legend).
    /// A legend of more than [`SIDE_LEGEND_MAX`] entries makes the image taller.
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
        // The x axis spans every finite point, drawn or not (a consensus of exactly 0 still
        // shows its rounds).
        let xs = bounds(
            self.series
                .iter()
                .flat_map(|s| &s.points)
                .filter(|(x, y)| x.is_finite() && y.is_finite())
                .map(|p| p.0),
        );
        let x_range = pad(xs.unwrap_or((0.0, 1.0)), 0.02);
        let ys = self
            .y_range
            .or_else(|| bounds(series.iter().flatten().map(|p| p.1)));
        let legend = self.legend(font);
        let size = (self.size.0, self.size.1 + legend.extra_height);
        let root = BitMapBackend::new(path, size).into_drawing_area();
        root.fill(&WHITE).map_err(|e| fail(&e))?;
        if log {
            let (lo, hi) = ys
                .filter(|(lo, hi)| *lo > 0.0 && *hi > 0.0)
                .unwrap_or((0.1, 1.0));
            // Whole decades, a hair wider so that rounding keeps both end ticks.
            let lo = 10f64.powf(lo.log10().floor()) * (1.0 - 1e-9);
            let hi = 10f64.powf(hi.log10().ceil()).max(lo * 10.0) * (1.0 + 1e-9);
            self.render(&root, &series, font, &legend, x_range, (lo..hi).log_scale())
                .map_err(|e| fail(&e))?;
        } else {
            let (lo, hi) = pad(ys.unwrap_or((0.0, 1.0)), 0.05);
            self.render(&root, &series, font, &legend, x_range, lo..hi)
                .map_err(|e| fail(&e))?;
        }
        root.present().map_err(|e| fail(&e))
    }

    fn render<'a, Y>(
        &self,
        root: &DrawingArea<BitMapBackend<'a>, Shift>,
        series: &[Vec<(f64, f64)>],
        font: Option<&Font>,
        legend: &LegendLayout,
        (x0, x1): (f64, f64),
        y: Y,
    ) -> Result<(), DrawingAreaErrorKind<<BitMapBackend<'a> as DrawingBackend>::ErrorType>>
    where
        Y: AsRangedCoord<Value = f64>,
        Y::CoordDescType: Ranged<ValueType = f64> + ValueFormatter<f64>,
    {
        let (width, height) = self.size;
        let (chart_area, _) = root.split_vertically(height);
        let (plot_area, _) = chart_area.split_horizontally(width - legend.side_width);
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
        if let Some(note) = self.note() {
            let note = fit(font, &note, DESC_PX, (px.end - px.start - 16).max(0) as f32);
            font.draw(root, &note, DESC_PX, (mid_x, mid_y), (0.5, 0.5), false)?;
        }
        for i in 0..self.series.len() {
            let (color, dash) = line_style(i);
            let (left, top) = legend.cell(i, self.size, py.start);
            let y = top + legend.row_height as i32 / 2;
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
            let room = legend.column_width.saturating_sub(LEGEND_SAMPLE) as f32;
            let label = fit(font, &self.legend_label(i), legend.text_px, room);
            font.draw(
                root,
                &label,
                legend.text_px,
                (left + 42, y),
                (0.0, 0.5),
                false,
            )?;
        }
        Ok(())
    }
}

/// `text`, cut with "…" to fit `room` pixels at `size` (whole if it fits).
fn fit(font: &Font, text: &str, size: f32, room: f32) -> String {
    if font.width(text, size) <= room {
        return text.to_owned();
    }
    let mut chars: Vec<char> = text.chars().collect();
    while !chars.is_empty() {
        chars.pop();
        let cut: String = chars.iter().collect::<String>() + "…";
        if font.width(&cut, size) <= room {
            return cut;
        }
    }
    String::new()
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

/// Writes `accuracy.png` (mean honest accuracy per round, its y axis as `axis` says) and
/// `consensus.png` (consensus distance per round, log scale; a note in place of the lines when
/// every distance is exactly 0) into `out` from its `rounds.csv`, one line per seed; returns the
/// files written.
pub fn write_run_plots(
    out: &Path,
    name: &str,
    font: Option<&Font>,
    axis: AccuracyAxis,
) -> Result<[PathBuf; 2], Error> {
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
    accuracy.series = lines(|r| r.mean_accuracy);
    accuracy.y_range = accuracy_range(axis, &accuracy.series);
    let mut consensus = Chart::new(
        format!("{name}: consensus distance"),
        "round",
        "consensus distance (log)",
    );
    consensus.y_scale = Scale::Log;
    consensus.zero_note = Some("no positive values: consensus reached exactly".into());
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
    fn the_first_forty_lines_look_different() {
        const { assert!(DISTINCT_LINES >= 40) };
        let styles: Vec<_> = (0..DISTINCT_LINES).map(line_style).collect();
        for (i, a) in styles.iter().enumerate() {
            assert!(styles[..i].iter().all(|b| b != a), "line {i} repeats");
        }
        // Neighbours in the legend never share a colour.
        for i in 1..DISTINCT_LINES {
            assert_ne!(
                line_style(i).0,
                line_style(i - 1).0,
                "lines {i} and {}",
                i - 1
            );
        }
    }

    /// Every entry of `layout` gets its own cell inside an image of `size` (plus the layout's
    /// extra height), and cells do not overlap.
    fn cells_fit(layout: &LegendLayout, entries: usize, size: (u32, u32)) {
        let total = (size.0, size.1 + layout.extra_height);
        let cells: Vec<(i32, i32)> = (0..entries).map(|k| layout.cell(k, size, 48)).collect();
        for (k, &(x, y)) in cells.iter().enumerate() {
            assert!(x >= 0 && y >= 0, "entry {k} at {x},{y}");
            assert!(
                x as u32 + layout.column_width <= total.0
                    && y as u32 + layout.row_height <= total.1,
                "entry {k} at {x},{y} leaves the {total:?} image: {layout:?}"
            );
            for (j, &(a, b)) in cells[..k].iter().enumerate() {
                let apart = (x - a).unsigned_abs() >= layout.column_width
                    || (y - b).unsigned_abs() >= layout.row_height;
                assert!(apart, "entries {j} and {k} overlap: {layout:?}");
            }
        }
    }

    #[test]
    fn a_few_entries_stay_beside_the_plot_and_many_wrap_into_columns_below() {
        let size = (960, 560);
        let few = legend_layout(4, 120.0, size);
        assert!(!few.below && few.columns == 1 && few.rows == 4, "{few:?}");
        assert_eq!(few.extra_height, 0);
        assert_eq!(few.side_width, 176);
        cells_fit(&few, 4, size);
        // A long label takes at most 2/5 of the width beside the plot.
        assert_eq!(legend_layout(3, 2000.0, size).side_width, 384);
        assert_eq!(legend_layout(0, 0.0, size).side_width, 0);

        for entries in [13, 24, 30, 48] {
            let many = legend_layout(entries, 180.0, size);
            assert!(many.below, "{entries}: {many:?}");
            assert!(many.columns > 1, "{entries} entries wrap: {many:?}");
            assert!(many.columns * many.rows >= entries);
            assert!(many.rows <= entries.div_ceil(many.columns));
            assert!(many.extra_height >= many.rows as u32 * many.row_height);
            cells_fit(&many, entries, size);
        }
        // Labels too wide for two columns get one, and still a row each.
        let wide = legend_layout(20, 5000.0, size);
        assert_eq!((wide.columns, wide.rows), (1, 20));
        cells_fit(&wide, 20, size);
    }

    fn series(points: Vec<(f64, f64)>) -> Series {
        Series {
            name: "s".into(),
            points,
        }
    }

    #[test]
    fn an_empty_chart_says_why_and_empty_series_are_marked_in_the_legend() {
        let mut chart = Chart::new("t", "x", "y");
        chart.y_scale = Scale::Log;
        chart.zero_note = Some("no positive values: consensus reached exactly".into());
        chart.series = vec![series(vec![(1.0, 0.0), (2.0, 0.0)]); 2];
        assert_eq!(
            chart.note().as_deref(),
            Some("no positive values: consensus reached exactly")
        );
        assert_eq!(chart.legend_label(0), "s", "the note explains it");
        // One seed converges exactly, the other does not: its entry says why it is missing.
        chart.series[1] = series(vec![(1.0, 1e-3), (2.0, 1e-5)]);
        assert_eq!(chart.note(), None);
        assert_eq!(chart.legend_label(0), "s (not drawn: all exactly 0)");
        assert_eq!(chart.legend_label(1), "s");
        // Negative values are not "exactly 0".
        chart.series = vec![series(vec![(1.0, -1.0), (2.0, 0.0)])];
        assert_eq!(
            chart.note().as_deref(),
            Some("no positive values to draw on a log axis")
        );
        // Nothing finite at all (an averaging-only run's accuracy), on either scale.
        chart.series = vec![series(vec![(1.0, f64::NAN)])];
        assert_eq!(chart.note().as_deref(), Some("no values to draw"));
        chart.y_scale = Scale::Linear;
        assert_eq!(chart.note().as_deref(), Some("no values to draw"));
        // Zeros draw on a linear axis.
        chart.series = vec![series(vec![(1.0, 0.0)])];
        assert_eq!(chart.note(), None);
        assert_eq!(
            Chart::new("t", "x", "y").note().as_deref(),
            Some("no values to draw")
        );
    }

    #[test]
    fn a_fitted_accuracy_axis_follows_the_data_within_zero_and_one() {
        let lines = |ys: &[f64]| vec![series(ys.iter().map(|y| (1.0, *y)).collect())];
        assert_eq!(
            accuracy_range(AccuracyAxis::Full, &lines(&[0.7, 0.72])),
            Some((0.0, 1.0))
        );
        assert_eq!(
            accuracy_range(AccuracyAxis::Fit, &lines(&[0.6, 0.8, f64::NAN])),
            Some((0.6, 0.8))
        );
        // A flat line gets the minimum span around it; near the ends, inside [0, 1].
        let (lo, hi) = accuracy_range(AccuracyAxis::Fit, &lines(&[0.75])).expect("range");
        assert!(
            (lo - 0.725).abs() < 1e-12 && (hi - 0.775).abs() < 1e-12,
            "{lo} {hi}"
        );
        let near = |range: Option<(f64, f64)>, want: (f64, f64)| {
            let (lo, hi) = range.expect("a range");
            assert!(
                (lo - want.0).abs() < 1e-12 && (hi - want.1).abs() < 1e-12,
                "{lo}..{hi} vs {want:?}"
            );
        };
        near(
            accuracy_range(AccuracyAxis::Fit, &lines(&[1.0, 0.99])),
            (0.95, 1.0),
        );
        near(
            accuracy_range(AccuracyAxis::Fit, &lines(&[0.0])),
            (0.0, MIN_ACCURACY_SPAN),
        );
        assert_eq!(accuracy_range(AccuracyAxis::Fit, &lines(&[f64::NAN])), None);
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
