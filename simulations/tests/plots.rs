//! Plots and scenario grids: `plot` writes decodable PNGs with or without a font, and `compare`
//! expands a grid file into the right scenario variants, refuses unknown paths and ill-typed
//! values before running anything, and runs a small grid into its table, CSV and chart.

use std::path::{Path, PathBuf};

use medmesh_protocol::aggregate::Rule;
use medmesh_simulations::compare::{self, Grid, GridError};
use medmesh_simulations::plot::{self, AccuracyAxis, Chart, Font, Scale, Series};
use medmesh_simulations::scenario::{AttackKind, Scenario, Split};

const SCENARIOS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/scenarios");
const SCHEMA: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../data/heart-disease/schema.toml"
);
/// The first line colour of `plot`'s palette.
const FIRST_COLOR: [u8; 3] = [31, 119, 180];

/// A decoded RGB image.
struct Image {
    width: u32,
    height: u32,
    rgb: Vec<u8>,
}

impl Image {
    fn read(path: &Path) -> Image {
        let bytes = std::fs::read(path).expect("png written");
        assert_eq!(
            &bytes[..8],
            b"\x89PNG\r\n\x1a\n",
            "{} has a PNG signature",
            path.display()
        );
        let mut reader = png::Decoder::new(std::io::Cursor::new(bytes))
            .read_info()
            .expect("png header decodes");
        let mut buf = vec![0; reader.output_buffer_size()];
        let frame = reader.next_frame(&mut buf).expect("png data decodes");
        assert_eq!(frame.color_type, png::ColorType::Rgb, "plots are RGB");
        buf.truncate(frame.buffer_size());
        Image {
            width: frame.width,
            height: frame.height,
            rgb: buf,
        }
    }

    fn pixels(&self, rows: std::ops::Range<u32>) -> impl Iterator<Item = &[u8]> {
        let stride = self.width as usize * 3;
        self.rgb[rows.start as usize * stride..rows.end as usize * stride].chunks_exact(3)
    }

    /// Pixels of exactly this colour.
    fn count(&self, color: [u8; 3]) -> usize {
        self.pixels(0..self.height).filter(|p| *p == color).count()
    }

    /// Nearly black pixels in the top `rows` rows, where the title is.
    fn dark_on_top(&self, rows: u32) -> usize {
        self.pixels(0..rows)
            .filter(|p| p.iter().all(|c| *c < 100))
            .count()
    }
}

fn sample_chart() -> Chart {
    let mut chart = Chart::new("a title", "round", "accuracy");
    chart.size = (640, 400);
    chart.series = vec![
        Series {
            name: "rising".into(),
            points: (0..20).map(|i| (i as f64, 0.5 + 0.02 * i as f64)).collect(),
        },
        Series {
            name: "falling, with a gap".into(),
            points: vec![(0.0, 0.9), (5.0, f64::NAN), (10.0, 0.6), (19.0, 0.4)],
        },
    ];
    chart
}

#[test]
fn a_chart_without_a_font_is_written_without_text() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("no-font.png");
    sample_chart()
        .draw(&path, None)
        .expect("drawn without a font");
    let image = Image::read(&path);
    assert_eq!((image.width, image.height), (640, 400));
    assert!(image.count(FIRST_COLOR) > 100, "the first line is drawn");
    assert_eq!(image.dark_on_top(14), 0, "no title without a font");
}

#[test]
fn a_chart_with_the_system_font_has_a_title() {
    let font = Font::system().expect("a system font (scripts/setup installs fonts-dejavu-core)");
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("font.png");
    sample_chart().draw(&path, Some(&font)).expect("drawn");
    let image = Image::read(&path);
    assert_eq!((image.width, image.height), (640, 400));
    assert!(image.count(FIRST_COLOR) > 100, "the first line is drawn");
    assert!(image.dark_on_top(50) > 20, "the title is drawn");
}

#[test]
fn thirty_lines_get_a_legend_below_the_plot_and_a_taller_image() {
    let font = Font::system().expect("a system font (scripts/setup installs fonts-dejavu-core)");
    let dir = tempfile::tempdir().expect("tempdir");
    let mut chart = Chart::new("many variants", "round", "accuracy");
    chart.series = (0..30)
        .map(|i| Series {
            name: format!("rule=trimmed_mean trim={i}, attackers=0.{i}"),
            points: (1..=5)
                .map(|r| (r as f64, 0.5 + 0.01 * (i + r) as f64))
                .collect(),
        })
        .collect();
    chart
        .draw(&dir.path().join("many.png"), Some(&font))
        .expect("drawn");
    let image = Image::read(&dir.path().join("many.png"));
    assert_eq!(image.width, 960);
    assert!(image.height > 560, "rows of legend below: {}", image.height);
    // Text below the chart's own 560 rows: the legend.
    let below = image
        .pixels(560..image.height)
        .filter(|p| p.iter().all(|c| *c < 100))
        .count();
    assert!(
        below > 200,
        "legend text below the plot: {below} dark pixels"
    );
    // Without a font there is no legend, and no extra height.
    chart
        .draw(&dir.path().join("plain.png"), None)
        .expect("drawn");
    let plain = Image::read(&dir.path().join("plain.png"));
    assert_eq!((plain.width, plain.height), (960, 560));
}

#[test]
fn log_charts_skip_non_positive_values_and_empty_charts_still_draw() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut chart = Chart::new("consensus", "round", "distance");
    chart.y_scale = Scale::Log;
    chart.series = vec![Series {
        name: "reaches zero".into(),
        points: vec![
            (1.0, 1.0),
            (2.0, 1e-3),
            (3.0, 1e-7),
            (4.0, 0.0),
            (5.0, -1.0),
        ],
    }];
    chart.draw(&dir.path().join("log.png"), None).expect("log");
    let image = Image::read(&dir.path().join("log.png"));
    assert!(image.count(FIRST_COLOR) > 50, "the positive part is drawn");

    let empty = Chart::new("nothing yet", "round", "accuracy");
    empty
        .draw(&dir.path().join("empty.png"), None)
        .expect("empty");
    let image = Image::read(&dir.path().join("empty.png"));
    assert_eq!((image.width, image.height), (960, 560));
    assert_eq!(image.count(FIRST_COLOR), 0, "no lines");
}

#[test]
fn run_plots_draw_one_line_per_seed_from_rounds_csv() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut csv = String::from(
        "seed,round,virtual_seconds,mean_accuracy,min_accuracy,consensus_distance,messages,bytes,rejections\n",
    );
    for seed in [1u64, 2] {
        for round in 1i32..=5 {
            let accuracy = 0.5 + 0.05 * f64::from(round) + 0.01 * seed as f64;
            let distance = 10f64.powi(-round) * (4 * seed) as f64;
            csv += &format!("{seed},{round},1.0,{accuracy},{accuracy},{distance},10,100,0\n");
        }
    }
    std::fs::write(dir.path().join("rounds.csv"), csv).expect("csv");
    let paths = plot::write_run_plots(dir.path(), "test", None, AccuracyAxis::Fit).expect("plots");
    assert_eq!(
        paths,
        [
            dir.path().join("accuracy.png"),
            dir.path().join("consensus.png")
        ]
    );
    for path in &paths {
        let image = Image::read(path);
        assert_eq!((image.width, image.height), (960, 560));
        assert!(image.count(FIRST_COLOR) > 50, "seed 1's line in {path:?}");
        assert!(
            image.count([255, 127, 14]) > 50,
            "seed 2's line in {path:?}"
        );
    }
    let missing = plot::write_run_plots(
        &dir.path().join("nowhere"),
        "test",
        None,
        AccuracyAxis::Full,
    );
    assert!(matches!(missing, Err(plot::Error::Rounds { .. })));
}

/// Writes `grid` as a grid file in `dir` and loads it.
fn grid(dir: &Path, grid: &str) -> Result<Vec<compare::Combination>, GridError> {
    let path = dir.join("grid.toml");
    std::fs::write(&path, grid).expect("grid file");
    Grid::load(&path)?.expand()
}

fn sign_flip() -> String {
    PathBuf::from(SCENARIOS)
        .join("sign-flip.toml")
        .display()
        .to_string()
        .replace('\\', "/")
}

fn scenario(c: &compare::Combination) -> Scenario {
    c.scenario.clone().try_into().expect("reads as a scenario")
}

#[test]
fn a_grid_expands_to_every_combination_first_axis_slowest() {
    let dir = tempfile::tempdir().expect("tempdir");
    let combinations = grid(
        dir.path(),
        &format!(
            r#"
            base = "{}"
            [[axis]]
            path = "protocol.rule"
            values = [{{ rule = "mean" }}, {{ rule = "median" }}, {{ rule = "trimmed_mean", trim = 2 }}]
            [[axis]]
            path = "attack.fraction"
            name = "attackers"
            values = [0.0, 0.25]
            [[axis]]
            path = "rounds"
            values = [7]
            "#,
            sign_flip()
        ),
    )
    .expect("expands");
    assert_eq!(combinations.len(), 6);
    let expected = [
        (Rule::Mean, 0.0),
        (Rule::Mean, 0.25),
        (Rule::Median, 0.0),
        (Rule::Median, 0.25),
        (Rule::TrimmedMean { trim: 2 }, 0.0),
        (Rule::TrimmedMean { trim: 2 }, 0.25),
    ];
    let base = Scenario::load(&Path::new(SCENARIOS).join("sign-flip.toml")).expect("base");
    for (i, (c, (rule, fraction))) in combinations.iter().zip(expected).enumerate() {
        assert_eq!(c.index, i);
        let s = scenario(c);
        assert_eq!(s.protocol.rule, rule, "combination {i}");
        assert_eq!(s.attack.fraction, fraction, "combination {i}");
        assert_eq!(s.rounds, 7, "the single-value axis applies everywhere");
        // Everything else is the base's.
        assert_eq!(s.protocol.fanout, base.protocol.fanout);
        assert_eq!(s.attack.kind, AttackKind::SignFlip);
        assert_eq!(s.data.split, Split::Iid { peers: 20 });
        let schema = s.data.schema.expect("the base has a schema");
        assert!(schema.is_absolute(), "{schema:?}");
        assert!(schema.exists(), "schema resolved against the base file");
    }
    assert_eq!(combinations[0].label(), "rule=mean, attackers=0.0");
    assert_eq!(
        combinations[5].label(),
        "rule=trimmed_mean trim=2, attackers=0.25"
    );
    assert_eq!(
        combinations[5].slug(),
        "06-rule=trimmed_mean-trim=2-attackers=0.25"
    );
}

#[test]
fn later_axes_may_set_fields_that_an_earlier_axis_introduces() {
    let dir = tempfile::tempdir().expect("tempdir");
    let combinations = grid(
        dir.path(),
        &format!(
            r#"
            base = "{}"
            [[axis]]
            path = "data.split"
            values = [{{ kind = "dirichlet", peers = 6, alpha = 1.0 }}]
            [[axis]]
            path = "data.split.alpha"
            values = [0.1, 10.0]
            labels = ["skewed", "even"]
            "#,
            sign_flip()
        ),
    )
    .expect("expands");
    let splits: Vec<Split> = combinations
        .iter()
        .map(|c| scenario(c).data.split)
        .collect();
    assert_eq!(
        splits,
        [
            Split::Dirichlet {
                peers: 6,
                alpha: 0.1
            },
            Split::Dirichlet {
                peers: 6,
                alpha: 10.0
            }
        ]
    );
    assert_eq!(combinations[1].label(), "alpha=even");
}

#[test]
fn unknown_paths_and_ill_typed_values_are_refused_with_the_axis_named() {
    let dir = tempfile::tempdir().expect("tempdir");
    let one_axis = |path: &str, values: &str| {
        grid(
            dir.path(),
            &format!(
                "base = \"{}\"\n[[axis]]\npath = \"{path}\"\nvalues = {values}\n",
                sign_flip()
            ),
        )
        .expect_err("refused")
    };

    let err = one_axis("protocol.rulez", "[1, 2]");
    assert!(
        matches!(&err, GridError::UnknownPath { path, .. } if path == "protocol.rulez"),
        "{err}"
    );
    assert!(err.to_string().contains("rulez"), "{err}");

    // The aggregation rule's reader ignores extra keys: the round trip catches it.
    let err = one_axis("protocol.rule.trim_typo", "[1, 2]");
    assert!(matches!(&err, GridError::UnknownPath { .. }), "{err}");

    let err = one_axis("attack.fraction", "[0.1, \"high\"]");
    match &err {
        GridError::BadValue {
            path,
            value,
            reason,
        } => {
            assert_eq!(path, "attack.fraction");
            assert!(value.contains("high"), "{err}");
            assert!(reason.contains("invalid type"), "{err}");
        }
        other => panic!("expected BadValue, got {other}"),
    }

    let err = one_axis("protocol.rule", "[{ rule = \"medain\" }]");
    assert!(matches!(&err, GridError::BadValue { .. }), "{err}");

    let err = one_axis("rounds.limit", "[3]");
    assert!(
        matches!(&err, GridError::NotATable { prefix, .. } if prefix == "rounds"),
        "{err}"
    );

    let err = one_axis("rounds", "[]");
    assert!(matches!(&err, GridError::Axis { .. }), "{err}");

    let err = grid(
        dir.path(),
        &format!(
            "base = \"{}\"\n[[axis]]\npath = \"rounds\"\nvalues = [1, 2]\nlabels = [\"one\"]\n",
            sign_flip()
        ),
    )
    .expect_err("label count");
    assert!(err.to_string().contains("1 labels for 2 values"), "{err}");

    let err = grid(dir.path(), "base = \"no-such-scenario.toml\"\n").expect_err("base");
    assert!(matches!(&err, GridError::Read { .. }), "{err}");
}

#[test]
fn a_small_grid_runs_into_a_table_a_csv_and_a_chart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let base = dir.path().join("tiny.toml");
    std::fs::write(
        &base,
        format!(
            r#"
            name = "tiny"
            seeds = [7, 8]
            rounds = 2
            [data]
            schema = "{}"
            split = {{ kind = "iid", peers = 4 }}
            [training]
            local_steps = 5
            [protocol]
            fanout = 3
            [attack]
            kind = "sign_flip"
            fraction = 0.0
            "#,
            SCHEMA.replace('\\', "/")
        ),
    )
    .expect("base");
    std::fs::write(
        dir.path().join("grid.toml"),
        r#"
        base = "tiny.toml"
        [[axis]]
        path = "protocol.rule"
        values = [{ rule = "mean" }, { rule = "median" }]
        labels = ["mean", "median"]
        [[axis]]
        path = "attack.fraction"
        values = [0.0, 0.25]
        "#,
    )
    .expect("grid");
    let grid = Grid::load(&dir.path().join("grid.toml")).expect("grid loads");
    let out = dir.path().join("out");
    let mut lines = Vec::new();
    let outcomes =
        compare::run(&grid, &out, None, |line| lines.push(line.to_owned())).expect("runs");
    assert_eq!(outcomes.len(), 4);
    assert_eq!(lines.len(), 4, "a progress line per combination: {lines:?}");
    assert!(
        lines[3].starts_with("[4/4] rule=median, fraction=0.25"),
        "{lines:?}"
    );
    for o in &outcomes {
        assert!((0.0..=1.0).contains(&o.mean_accuracy), "{o:?}");
        assert!(o.worst_peer_accuracy <= o.worst_seed_accuracy, "{o:?}");
        assert!(o.worst_seed_accuracy <= o.mean_accuracy, "{o:?}");
        // Two seeds: a spread of the final and of the last-5 accuracy.
        assert!(o.std_accuracy.is_some_and(|s| s >= 0.0), "{o:?}");
        assert!(o.std_last5_accuracy.is_some_and(|s| s >= 0.0), "{o:?}");
        assert_eq!(o.curve.len(), 2, "two rounds: {o:?}");
        let run = out.join(&o.run);
        for file in [
            "scenario.toml",
            "rounds.csv",
            "summary.json",
            "accuracy.png",
        ] {
            assert!(run.join(file).is_file(), "{}/{file}", o.run);
        }
        // The written scenario replays as a plain scenario.
        let replay = Scenario::load(&run.join("scenario.toml")).expect("replayable");
        assert_eq!(replay.rounds, 2);
    }

    let csv = std::fs::read_to_string(out.join("compare.csv")).expect("csv");
    let rows: Vec<&str> = csv.lines().collect();
    assert_eq!(rows.len(), 1 + 4, "{csv}");
    assert_eq!(
        rows[0],
        "combination,rule,fraction,final_accuracy_mean,final_accuracy_std,last5_accuracy_mean,\
         last5_accuracy_std,final_accuracy_worst_seed,final_accuracy_worst_peer,\
         consensus_distance,rejections,wall_seconds,final_c_index_mean,final_c_index_std,run"
    );
    // A classifier's grid leaves the C-index columns empty.
    for row in &rows[1..] {
        let fields: Vec<&str> = row.split(',').collect();
        assert_eq!(fields.len(), 15, "{row}");
        assert_eq!((fields[12], fields[13]), ("", ""), "{row}");
    }
    assert!(rows[1].starts_with("1,mean,0.0,"), "{csv}");
    assert!(rows[4].starts_with("4,median,0.25,"), "{csv}");

    let md = std::fs::read_to_string(out.join("compare.md")).expect("md");
    let table: Vec<&str> = md.lines().filter(|l| l.starts_with('|')).collect();
    assert_eq!(
        table.len(),
        2 + 4,
        "header, rule and a row per combination:\n{md}"
    );
    assert!(
        table[0].contains(
            "| rule | fraction | final accuracy | last-5 accuracy | worst seed | worst peer |"
        ),
        "{md}"
    );
    assert!(table[5].starts_with("| 4 | median | 0.25 |"), "{md}");
    assert!(
        table[5].contains(" ± "),
        "mean ± std over the two seeds: {md}"
    );
    assert!(
        md.contains("lowest over seeds of the final mean honest accuracy"),
        "the columns are explained: {md}"
    );

    let image = Image::read(&out.join("compare.png"));
    assert_eq!((image.width, image.height), (960, 560));
    assert!(
        image.count(FIRST_COLOR) > 20,
        "the first combination's line"
    );
}

#[test]
fn the_example_grid_expands() {
    let grid = Grid::load(&Path::new(SCENARIOS).join("compare-rules.toml")).expect("loads");
    let combinations = grid.expand().expect("expands");
    assert_eq!(
        combinations.len(),
        12,
        "four rules × three attack fractions"
    );
    let rules: Vec<Rule> = combinations
        .iter()
        .map(|c| scenario(c).protocol.rule)
        .collect();
    assert!(rules.contains(&Rule::Mean) && rules.contains(&Rule::Median));
}
