//! `fleet list tasks|actors|objects|nodes|jobs|workers`: the head's state as a
//! table or as JSON, filtered by state, function, node, with a limit.

use fleet::proto;
use fleet::{Error, Result};

/// What to list and how.
#[derive(Clone, Debug, Default)]
pub struct ListOptions {
    /// tasks, actors, objects, nodes, jobs or workers.
    pub kind: String,
    /// Only rows in this state (e.g. running, finished, alive).
    pub state: Option<String>,
    /// Only rows whose function (or actor class) contains this.
    pub function: Option<String>,
    /// Only rows on this node.
    pub node: Option<String>,
    /// At most this many rows (default 100).
    pub limit: Option<u32>,
    /// JSON instead of a table.
    pub json: bool,
}

/// Asks the head for the rows and formats them.
pub fn list(
    address: Option<&str>,
    token_file: Option<std::path::PathBuf>,
    opts: &ListOptions,
) -> Result<String> {
    let (address, token) = super::target(address, token_file.as_deref())?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::Startup(e.to_string()))?;
    let reply = rt.block_on(async {
        let mut client =
            proto::head_client::HeadClient::new(fleet::daemon::channel(&address).await?)
                .max_decoding_message_size(fleet::daemon::MAX_MESSAGE);
        client
            .list(proto::ListRequest {
                token,
                kind: opts.kind.clone(),
                state: opts.state.clone().unwrap_or_default(),
                function: opts.function.clone().unwrap_or_default(),
                node: opts.node.clone().unwrap_or_default(),
                limit: opts.limit.unwrap_or(0),
            })
            .await
            .map(|r| r.into_inner())
            .map_err(|s| Error::Connection(s.message().to_string()))
    })?;
    if opts.json {
        return Ok(format!("{}\n", reply.json));
    }
    let rows: Vec<serde_json::Map<String, serde_json::Value>> =
        serde_json::from_str(&reply.json).map_err(|e| Error::Codec(e.to_string()))?;
    Ok(table(&rows, reply.total as usize))
}

/// A column's header: its name in capitals; times (`*_millis`, since the
/// Unix epoch) say they are UTC.
fn header(column: &str) -> String {
    match column.strip_suffix("_millis") {
        Some(name) => format!("{} (UTC)", name.to_uppercase()),
        None => column.to_uppercase(),
    }
}

fn cell(column: &str, v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::Number(n) if column.ends_with("_millis") => {
            n.as_u64().map_or_else(|| n.to_string(), super::job::utc)
        }
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Null => "-".into(),
        other => other.to_string(),
    }
}

/// Rows as aligned columns, with a line saying how many there are.
fn table(rows: &[serde_json::Map<String, serde_json::Value>], total: usize) -> String {
    let Some(first) = rows.first() else {
        return format!("0 of {total} rows\n");
    };
    // The id first, then the rest by name.
    let mut columns: Vec<&String> = first.keys().collect();
    columns.sort_by_key(|c| (c.as_str() != "id", c.as_str()));
    let widths: Vec<usize> = columns
        .iter()
        .map(|c| {
            rows.iter()
                .map(|r| r.get(*c).map_or(1, |v| cell(c, v).len()))
                .max()
                .unwrap_or(0)
                .max(header(c).len())
        })
        .collect();
    let line = |cells: Vec<String>| {
        let mut out: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        if let Some(last) = out.last_mut() {
            *last = last.trim_end().to_string();
        }
        out.join("  ") + "\n"
    };
    let mut out = line(columns.iter().map(|c| header(c)).collect());
    for r in rows {
        out += &line(
            columns
                .iter()
                .map(|c| r.get(*c).map_or("-".into(), |v| cell(c, v)))
                .collect(),
        );
    }
    out += &format!("{} of {total} rows\n", rows.len());
    out
}
