//! Seed 000 as plain sequential Rust: error metrics of a regression model,
//! computed per object id (OID) over a table that is split by OID into
//! four equal parts, then merged. `port_metrics.rs` is the same program on
//! Fleet (one task per part); the diff is in docs/porting.md.

use serde::{Deserialize, Serialize};

/// One row of the table: an object, the observed value, the model's value.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Row {
    oid: u32,
    actual: f64,
    predicted: f64,
}

/// Error metrics of one object.
#[derive(Debug, Serialize, Deserialize)]
struct Metrics {
    oid: u32,
    rows: usize,
    mae: f64,
    rmse: f64,
}

/// The table (from a database or a CSV file in the seed; made up here).
fn retrieve_data() -> Vec<Row> {
    (0..40_000u32)
        .map(|i| {
            let oid = i % 97;
            let actual = f64::from(i % 1000) / 10.0;
            let predicted = actual + f64::from((i * 7919) % 201) / 100.0 - 1.0;
            Row {
                oid,
                actual,
                predicted,
            }
        })
        .collect()
}

/// Mean absolute and root mean square error per OID, by OID.
#[fleet::remote]
fn calculate_metrics(rows: Vec<Row>) -> Vec<Metrics> {
    let mut by_oid = std::collections::BTreeMap::<u32, Vec<f64>>::new();
    for r in rows {
        by_oid
            .entry(r.oid)
            .or_default()
            .push(r.predicted - r.actual);
    }
    by_oid
        .into_iter()
        .map(|(oid, errors)| {
            let n = errors.len() as f64;
            Metrics {
                oid,
                rows: errors.len(),
                mae: errors.iter().map(|e| e.abs()).sum::<f64>() / n,
                rmse: (errors.iter().map(|e| e * e).sum::<f64>() / n).sqrt(),
            }
        })
        .collect()
}

/// The rows of each of `k` near-equal groups of the OIDs (numpy's
/// `array_split` of the sorted unique OIDs).
fn split_by_oid(rows: &[Row], k: usize) -> Vec<Vec<Row>> {
    let mut oids: Vec<u32> = rows.iter().map(|r| r.oid).collect();
    oids.sort_unstable();
    oids.dedup();
    let (size, extra) = (oids.len() / k, oids.len() % k);
    let mut parts = Vec::new();
    let mut start = 0;
    for i in 0..k {
        let end = start + size + usize::from(i < extra);
        let group = &oids[start..end];
        parts.push(
            rows.iter()
                .filter(|r| group.contains(&r.oid))
                .cloned()
                .collect(),
        );
        start = end;
    }
    parts
}

fn main() -> anyhow::Result<()> {
    let df = retrieve_data();
    let parts = split_by_oid(&df, 4);
    println!("Calculating metrics");
    let metrics = fleet::get_all(&calculate_metrics::map(parts))?;
    let df_final: Vec<Metrics> = metrics.into_iter().flatten().collect();
    let worst = df_final.iter().map(|m| m.rmse).fold(0.0, f64::max);
    let rows: usize = df_final.iter().map(|m| m.rows).sum();
    println!(
        "RESULT {} objects, {rows} rows, worst rmse {worst:.6}",
        df_final.len()
    );
    println!("RESULT first {:?}", df_final.first());
    Ok(())
}
