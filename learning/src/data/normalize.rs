//! Fitting train statistics and applying them: mean imputation of missing features, and
//! standardisation as [`Normalization`] says.
//!
//! It must never fit on test rows: means and standard deviations come from train rows only and
//! are applied to train and test alike. It must never hand a learner a value that is not finite:
//! one that standardises beyond `f32` is refused with [`Error::TooLarge`]. It sees tables only,
//! never files or the schema; callers pass the path an error should name.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::error::Error;
use super::table::{Site, Table};

/// Added to the standard deviation, as FLamby does, so constant columns divide by 1e-9, not 0.
const STD_EPSILON: f64 = 1e-9;

/// How features are standardised; statistics always come from train rows only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Normalization {
    /// Each site with the mean and unbiased standard deviation of its own train rows.
    PerSite,
    /// Every site with the mean and standard deviation of all sites' train rows together
    /// (the centralised "pooled" baseline).
    Pooled,
    /// Values are left as parsed.
    None,
}

/// Fills missing features with the mean of the site's train rows.
pub(super) fn impute(site: &mut Site, path: &Path, features: &[String]) -> Result<(), Error> {
    let cols = site.train.cols;
    for c in 0..cols {
        let column = |t: &Table| {
            (0..t.rows)
                .map(move |r| t.x[r * cols + c])
                .collect::<Vec<_>>()
        };
        let (train, test) = (column(&site.train), column(&site.test));
        if !train.iter().chain(&test).any(|v| v.is_nan()) {
            continue;
        }
        let known: Vec<f64> = train
            .iter()
            .filter(|v| !v.is_nan())
            .map(|&v| f64::from(v))
            .collect();
        if known.is_empty() {
            return Err(Error::NoValues {
                path: path.to_owned(),
                site: site.name.clone(),
                column: features.get(c).cloned().unwrap_or_default(),
            });
        }
        let mean = (known.iter().sum::<f64>() / known.len() as f64) as f32;
        for t in [&mut site.train, &mut site.test] {
            for r in 0..t.rows {
                let v = &mut t.x[r * cols + c];
                if v.is_nan() {
                    *v = mean;
                }
            }
        }
    }
    Ok(())
}

/// Mean and unbiased standard deviation of every column over the rows of `tables`.
fn moments(tables: &[&Table], cols: usize) -> (usize, Vec<f64>, Vec<f64>) {
    let n: usize = tables.iter().map(|t| t.rows).sum();
    let mut mean = vec![0.0f64; cols];
    let mut var = vec![0.0f64; cols];
    if cols == 0 || n == 0 {
        return (n, mean, var);
    }
    for t in tables {
        for row in t.x.chunks_exact(cols) {
            for (m, &v) in mean.iter_mut().zip(row) {
                *m += f64::from(v);
            }
        }
    }
    for m in &mut mean {
        *m /= n as f64;
    }
    for t in tables {
        for row in t.x.chunks_exact(cols) {
            for ((s, m), &v) in var.iter_mut().zip(&mean).zip(row) {
                let d = f64::from(v) - m;
                *s += d * d;
            }
        }
    }
    let std = var
        .iter()
        .map(|s| {
            if n > 1 {
                (s / (n - 1) as f64).sqrt()
            } else {
                0.0
            }
        })
        .collect();
    (n, mean, std)
}

/// Standardizes every value of `table` with train statistics. Returns the column of the first
/// value that leaves the `f32` range, which only a test value far outside a train column of
/// (almost) no spread can do.
fn standardize(table: &mut Table, mean: &[f64], std: &[f64]) -> Option<usize> {
    if table.cols == 0 {
        return None;
    }
    for row in table.x.chunks_exact_mut(table.cols) {
        for ((v, m), s) in row.iter_mut().zip(mean).zip(std) {
            *v = ((f64::from(*v) - m) / (s + STD_EPSILON)) as f32;
        }
    }
    let cols = table.cols;
    table
        .x
        .iter()
        .position(|v| !v.is_finite())
        .map(|i| i % cols)
}

/// Standardizes a site's train and test rows; an infinity is refused, not handed to a learner.
fn standardize_site(
    site: &mut Site,
    mean: &[f64],
    std: &[f64],
    features: &[String],
    path: &Path,
) -> Result<(), Error> {
    for table in [&mut site.train, &mut site.test] {
        if let Some(c) = standardize(table, mean, std) {
            return Err(Error::TooLarge {
                path: path.to_owned(),
                message: format!(
                    "column `{}` of site `{}` has a value that standardizes beyond the f32 range (train mean {}, standard deviation {})",
                    features.get(c).map_or("?", String::as_str),
                    site.name,
                    mean[c],
                    std[c]
                ),
            });
        }
    }
    Ok(())
}

/// Standardizes every site as `normalization` says. Errors about a site's own statistics name
/// `paths[i]`, its file; errors about pooled statistics name `schema`.
pub(super) fn apply(
    schema: &Path,
    paths: &[&Path],
    sites: &mut [Site],
    features: &[String],
    normalization: Normalization,
) -> Result<(), Error> {
    match normalization {
        Normalization::None => {}
        Normalization::PerSite => {
            for (site, path) in sites.iter_mut().zip(paths) {
                let (n, mean, std) = moments(&[&site.train], site.train.cols);
                if n < 2 {
                    return Err(Error::TooFewRows {
                        path: path.to_path_buf(),
                        site: site.name.clone(),
                        rows: n,
                    });
                }
                standardize_site(site, &mean, &std, features, path)?;
            }
        }
        Normalization::Pooled => {
            let cols = sites.first().map_or(0, |s| s.train.cols);
            let trains: Vec<&Table> = sites.iter().map(|s| &s.train).collect();
            let (n, mean, std) = moments(&trains, cols);
            if n < 2 {
                return Err(Error::TooFewRows {
                    path: schema.to_owned(),
                    site: "all sites".to_owned(),
                    rows: n,
                });
            }
            for site in sites.iter_mut() {
                standardize_site(site, &mean, &std, features, schema)?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::fixture::{Fixture, TOY, column, heart, mean_std, says};

    #[test]
    fn heart_disease_per_site_normalization_is_fitted_on_each_sites_train_rows() {
        let raw = heart(Normalization::None);
        let data = heart(Normalization::PerSite);
        for (site, raw_site) in data.sites.iter().zip(&raw.sites) {
            for c in 0..13 {
                let values = column(&site.train, c);
                let (_, raw_std) = mean_std(&column(&raw_site.train, c));
                if raw_std == 0.0 {
                    assert!(values.iter().all(|&v| v == 0.0), "{} {c}", site.name);
                    continue;
                }
                let (mean, std) = mean_std(&values);
                assert!(mean.abs() < 1e-5, "{} column {c}: mean {mean}", site.name);
                assert!(
                    (std - 1.0).abs() < 1e-5,
                    "{} column {c}: std {std}",
                    site.name
                );
            }
        }
        // Switzerland's chol (all 0) is the documented zero-variance column, in test rows too.
        let swiss = data.site("switzerland").expect("switzerland");
        assert!(column(&swiss.test, 3).iter().all(|&v| v == 0.0));
        // The first test row of each site, computed independently in Python from the raw files.
        let reference: [(&str, [f32; 13]); 2] = [
            (
                "cleveland",
                [
                    0.199479, 0.678902, -0.702358, -0.258218, -0.411984, 1.236515, -0.67103,
                    -0.227145, 2.51761, -0.63975, -0.972729, -0.100505, -1.002509,
                ],
            ),
            (
                "switzerland",
                [
                    -1.171507, 0.327731, -1.022433, 0.0, -0.327731, -0.053849, 0.859777, 1.345557,
                    -0.182574, -0.327731, 0.38564, -0.542405, -0.182574,
                ],
            ),
        ];
        for (name, row) in reference {
            let site = data.site(name).expect("site");
            for (got, want) in site.test.row(0).iter().zip(row) {
                assert!((got - want).abs() < 1e-4, "{name}: {got} vs {want}");
            }
        }
    }

    #[test]
    fn heart_disease_pooled_normalization_uses_all_train_rows() {
        let pooled = heart(Normalization::Pooled);
        let local = heart(Normalization::PerSite);
        assert_ne!(pooled, local);
        let train = pooled.pooled_train();
        for c in 0..13 {
            let (mean, std) = mean_std(&column(&train, c));
            assert!(mean.abs() < 1e-5 && (std - 1.0).abs() < 1e-5, "column {c}");
        }
        let want = [
            0.31658, 0.565679, -0.685225, 0.172558, -0.41999, 1.483907, -0.793457, -0.127051,
            2.000514, -0.524427, -1.049583, -0.4166, -0.562513,
        ];
        let first = pooled.sites[0].test.row(0);
        for (got, want) in first.iter().zip(want) {
            assert!((got - want).abs() < 1e-4, "{got} vs {want}");
        }
        // Same rows and labels, only the scaling differs.
        for (p, l) in pooled.sites.iter().zip(&local.sites) {
            assert_eq!(
                (p.train.y.clone(), p.test.y.clone()),
                (l.train.y.clone(), l.test.y.clone())
            );
        }
    }

    #[test]
    fn drop_row_versus_impute_mean() {
        // id, chol, cp, y; lines 2 and 4 miss chol, line 5 misses cp, line 6 misses its label.
        let rows = "1,10,1,0\n2,?,2,1\n3,30,3,0\n4,,1,1\n5,50,?,0\n6,60,1,?\n";
        let schema = TOY
            .replace(
                "[\"age\", \"chol\", \"cp\", \"y\"]",
                "[\"id\", \"chol\", \"cp\", \"y\"]",
            )
            .replace(
                "fraction = 0.5\nseed = 7",
                "file = \"split.csv\"\nline_column = \"line\"\nsplit_column = \"part\"",
            );
        let f = Fixture::new(
            &schema,
            &[
                ("a.csv", rows),
                ("split.csv", "line,part\n1,train\n3,train\n"),
            ],
        );
        let dropped = f.load().expect("drop_row loads");
        let site = &dropped.sites[0];
        assert_eq!((site.train.rows, site.test.rows), (2, 0));
        assert_eq!(column(&site.train, 0), [1.0, 3.0]);

        let f = Fixture::new(
            &schema.replace("drop_row", "impute_mean"),
            &[
                ("a.csv", rows),
                (
                    "split.csv",
                    "line,part\n1,train\n2,train\n3,train\n4,test\n5,test\n",
                ),
            ],
        );
        let imputed = f.load().expect("impute_mean loads");
        let site = &imputed.sites[0];
        assert_eq!(
            (site.train.rows, site.test.rows),
            (3, 2),
            "line 6 has no label"
        );
        // chol: mean of the train values 10 and 30; cp=2, cp=3: means over train rows.
        assert_eq!(site.train.row(1), [2.0, 20.0, 1.0, 0.0]);
        assert_eq!(site.test.row(0), [4.0, 20.0, 0.0, 0.0]);
        let third = 1.0f32 / 3.0;
        assert_eq!(site.test.row(1), [5.0, 50.0, third, third]);

        // A dropped row that the split file still lists is an error naming it.
        let f = Fixture::new(
            &schema,
            &[
                ("a.csv", rows),
                ("split.csv", "line,part\n1,train\n2,train\n3,train\n"),
            ],
        );
        let e = f.error();
        assert!(matches!(e, Error::Split { line: 3, .. }), "{e:?}");
        says(&e, &["split.csv line 3", "column `part`", "line 2"]);
    }

    #[test]
    fn impute_needs_a_train_value() {
        let schema = TOY.replace("drop_row", "impute_mean").replace(
            "fraction = 0.5\nseed = 7",
            "file = \"split.csv\"\nline_column = \"line\"\nsplit_column = \"part\"",
        );
        let f = Fixture::new(
            &schema,
            &[
                ("a.csv", "30,?,1,0\n40,210,2,1\n"),
                ("split.csv", "line,part\n1,train\n2,test\n"),
            ],
        );
        let e = f.error();
        assert!(matches!(e, Error::NoValues { .. }), "{e:?}");
        says(&e, &["a.csv", "column `chol`", "site `a`"]);
    }

    #[test]
    fn too_few_train_rows_to_normalize() {
        let schema = TOY.replace("normalization = \"none\"", "normalization = \"per_site\"");
        let e = Fixture::new(
            &schema,
            &[("a.csv", "30,200,1,0\n40,210,2,1\n50,220,3,0\n")],
        )
        .error();
        assert!(matches!(e, Error::TooFewRows { rows: 1, .. }), "{e:?}");
        says(&e, &["a.csv", "site `a` has 1 train rows"]);
    }

    /// The `dataset` fuzz target's input (`fuzz/README.md`), split into its files: both train
    /// rows have `v = 0`, so the test row's `1e30` standardized to `1e39`, an infinity as `f32`,
    /// which the target's finiteness check caught.
    #[test]
    fn a_value_that_standardizes_beyond_f32_is_refused() {
        const SCHEMA: &str = "name = \"x\"\nnormalization = \"per_site\"\n[label]\ncolumn = \"y\"\n\
            [split]\nfile = \"split.csv\"\nline_column = \"line\"\nsplit_column = \"part\"\n\
            [[sites]]\nname = \"a\"\nfile = \"a.csv\"\n";
        let split = ("split.csv", "line,part\n2,train\n3,train\n4,test\n");
        let e = Fixture::new(SCHEMA, &[("a.csv", "v,y\n0,0\n0,1\n1e30,0\n"), split]).error();
        assert!(matches!(e, Error::TooLarge { .. }), "{e:?}");
        says(
            &e,
            &["a.csv", "column `v` of site `a`", "beyond the f32 range"],
        );
        // Pooled, it is refused too (naming the schema); a value that stays in range loads.
        let pooled = SCHEMA.replace("per_site", "pooled");
        let e = Fixture::new(&pooled, &[("a.csv", "v,y\n0,0\n0,1\n1e30,0\n"), split]).error();
        says(
            &e,
            &[
                "schema.toml",
                "column `v` of site `a`",
                "beyond the f32 range",
            ],
        );
        let fine = Fixture::new(SCHEMA, &[("a.csv", "v,y\n0,0\n0,1\n1e20,0\n"), split]);
        let data = fine.load().expect("1e20 / 1e-9 fits in f32");
        assert!((data.sites[0].test.x[0] / 1e29 - 1.0).abs() < 1e-6);
    }
}
