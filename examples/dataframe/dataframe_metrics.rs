//! Seed 000: error metrics of a regression model's results, computed per
//! OID on four parts of a polars DataFrame in parallel.
//!
//! The table (OID, actual, prediction) is split by its unique OIDs into four
//! parts (`np.array_split` of the sorted OIDs, then `isin`), each part goes
//! to a remote `calculate_metrics`, and the four metric tables are merged
//! with a vertical concat. The merged table must equal `calculate_metrics`
//! of the whole table in this process.
//!
//! DataFrames travel as [`Part`], plain column vectors, and are rebuilt
//! inside the tasks.

use std::collections::HashSet;

use anyhow::ensure;
use polars::prelude::*;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use rand_distr::StandardNormal;
use serde::{Deserialize, Serialize};

/// Rows of the generated table.
const ROWS: usize = 200_000;
/// Number of distinct OIDs.
const OIDS: i64 = 1_000;
/// Parts the table is split into.
const PARTS: usize = 4;

/// The input table's columns, as shipped to a task.
#[derive(Serialize, Deserialize, Debug, Clone)]
struct Part {
    oid: Vec<i64>,
    actual: Vec<f64>,
    prediction: Vec<f64>,
}

/// A metrics table's columns, as returned by a task.
#[derive(Serialize, Deserialize, Debug, Clone)]
struct Metrics {
    oid: Vec<i64>,
    n: Vec<u32>,
    bias: Vec<f64>,
    mae: Vec<f64>,
    rmse: Vec<f64>,
}

impl Part {
    fn from_df(df: &DataFrame) -> PolarsResult<Part> {
        Ok(Part {
            oid: df.column("OID")?.i64()?.into_no_null_iter().collect(),
            actual: df.column("actual")?.f64()?.into_no_null_iter().collect(),
            prediction: df
                .column("prediction")?
                .f64()?
                .into_no_null_iter()
                .collect(),
        })
    }

    fn into_df(self) -> PolarsResult<DataFrame> {
        df!("OID" => self.oid, "actual" => self.actual, "prediction" => self.prediction)
    }
}

impl Metrics {
    fn from_df(df: &DataFrame) -> PolarsResult<Metrics> {
        let f64s = |name: &str| -> PolarsResult<Vec<f64>> {
            Ok(df.column(name)?.f64()?.into_no_null_iter().collect())
        };
        Ok(Metrics {
            oid: df.column("OID")?.i64()?.into_no_null_iter().collect(),
            n: df.column("n")?.u32()?.into_no_null_iter().collect(),
            bias: f64s("bias")?,
            mae: f64s("mae")?,
            rmse: f64s("rmse")?,
        })
    }

    fn into_df(self) -> PolarsResult<DataFrame> {
        df!(
            "OID" => self.oid,
            "n" => self.n,
            "bias" => self.bias,
            "mae" => self.mae,
            "rmse" => self.rmse,
        )
    }
}

/// Stands in for the database query: a model's predictions of `ROWS`
/// observations of `OIDS` objects, each object with its own scale, bias and
/// noise.
fn retrieve_data() -> PolarsResult<DataFrame> {
    let mut rng = SmallRng::seed_from_u64(0);
    let params: Vec<(f64, f64, f64)> = (0..OIDS)
        .map(|_| {
            (
                rng.random_range(1.0..100.0),
                rng.random_range(-1.0..1.0),
                rng.random_range(0.1..5.0),
            )
        })
        .collect();
    let mut oid = Vec::with_capacity(ROWS);
    let mut actual = Vec::with_capacity(ROWS);
    let mut prediction = Vec::with_capacity(ROWS);
    for _ in 0..ROWS {
        let o = rng.random_range(0..OIDS);
        let (scale, bias, noise) = params[o as usize];
        let a = scale * rng.random::<f64>();
        let e: f64 = rng.sample(StandardNormal);
        oid.push(10_000 + o);
        actual.push(a);
        prediction.push(a + bias + noise * e);
    }
    df!("OID" => oid, "actual" => actual, "prediction" => prediction)
}

/// Error metrics per OID (count, bias, MAE, RMSE), sorted by OID.
fn calculate_metrics(df: &DataFrame) -> PolarsResult<DataFrame> {
    let err = (df.column("prediction")?.as_materialized_series()
        - df.column("actual")?.as_materialized_series())?;
    let err = err.f64()?;
    let mut df = df.select(["OID"])?;
    df.with_column(err.clone().with_name("err".into()).into_column())?;
    df.with_column(
        err.apply_values(f64::abs)
            .with_name("abs_err".into())
            .into_column(),
    )?;
    df.with_column(
        err.apply_values(|e| e * e)
            .with_name("sq_err".into())
            .into_column(),
    )?;

    let (mut oid, mut n, mut bias, mut mae, mut rmse) = (vec![], vec![], vec![], vec![], vec![]);
    for group in df.partition_by_stable(["OID"], true)? {
        let mean = |name: &str| -> PolarsResult<f64> {
            group
                .column(name)?
                .f64()?
                .mean()
                .ok_or_else(|| polars_err!(ComputeError: "empty group"))
        };
        oid.push(group.column("OID")?.i64()?.get(0).unwrap_or_default());
        n.push(group.height() as u32);
        bias.push(mean("err")?);
        mae.push(mean("abs_err")?);
        rmse.push(mean("sq_err")?.sqrt());
    }
    let metrics = Metrics {
        oid,
        n,
        bias,
        mae,
        rmse,
    }
    .into_df()?;
    metrics.sort(["OID"], SortMultipleOptions::default())
}

/// The remote form: rebuilds the part's DataFrame and computes its metrics.
#[fleet::remote]
fn calculate_metrics_part(part: Part) -> Result<Metrics, PolarsError> {
    let df = part.into_df()?;
    let metrics = calculate_metrics(&df)?;
    Metrics::from_df(&metrics)
}

/// `np.array_split`: `n` near-equal consecutive parts, the longer ones first.
fn array_split<T: Clone>(values: &[T], n: usize) -> Vec<Vec<T>> {
    let (base, extra) = (values.len() / n, values.len() % n);
    let mut rest = values;
    (0..n)
        .map(|i| {
            let (part, tail) = rest.split_at(base + usize::from(i < extra));
            rest = tail;
            part.to_vec()
        })
        .collect()
}

fn main() -> anyhow::Result<()> {
    let df = retrieve_data()?;
    println!("Input: {} rows, {} columns", df.height(), df.width());

    // The OID column is the unique identifier: split its values into four.
    let valid_oids = df.column("OID")?.unique()?.sort(SortOptions::default())?;
    let valid_oids: Vec<i64> = valid_oids.i64()?.into_no_null_iter().collect();
    let oid_col = df.column("OID")?.i64()?;
    let parts: Vec<DataFrame> = array_split(&valid_oids, PARTS)
        .into_iter()
        .map(|oids| {
            let oids: HashSet<i64> = oids.into_iter().collect();
            let mask: BooleanChunked = oid_col
                .iter()
                .map(|o| o.map(|o| oids.contains(&o)))
                .collect();
            df.filter(&mask)
        })
        .collect::<PolarsResult<_>>()?;
    for (i, p) in parts.iter().enumerate() {
        println!("  part {}: {} rows", i + 1, p.height());
    }

    let _cluster = fleet::init()?;
    println!("Calculating metrics");
    let futures: Vec<_> = parts
        .iter()
        .map(|p| Ok(calculate_metrics_part::remote(Part::from_df(p)?)))
        .collect::<PolarsResult<_>>()?;
    let results = fleet::get_all(&futures)?;

    // Merge the results of all the tasks: pd.concat.
    let mut df_final = DataFrame::empty();
    for metrics in results {
        df_final.vstack_mut_owned(metrics.into_df()?)?;
    }
    println!("{df_final}");

    let local = calculate_metrics(&df)?;
    ensure!(
        df_final.equals(&local),
        "the merged metrics differ from the single-process result:\n{local}"
    );
    println!(
        "OK: the merged metrics of {} OIDs equal the single-process result",
        df_final.height()
    );
    Ok(())
}
