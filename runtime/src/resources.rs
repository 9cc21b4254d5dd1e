//! Resources beyond CPUs: what a node offers (`fleet start --resources
//! gpu=2,license=1`, [`Config::resources`](crate::Config::resources)) and
//! what a task or actor reserves while it runs (`#[remote(resources(gpu =
//! 1.0), memory = "2GiB")]`, [`TaskOptions::resource`](crate::TaskOptions::resource)).
//!
//! `memory` is a resource too, counted in bytes; a node's capacity of it is
//! its machine's RAM unless it declares another amount. Amounts are plain
//! numbers: the scheduler only adds and compares them, it does not limit
//! what a task really uses (as in Ray).

use crate::proto;

/// The name of the memory resource (bytes).
pub const MEMORY: &str = "memory";

/// What is wrong with a resource given by a user; the message names the
/// flag or field and the form expected.
#[derive(Debug, thiserror::Error)]
#[error("{source_name}: {message}; expected NAME=AMOUNT[,NAME=AMOUNT...] with a non-negative number, e.g. `gpu=2,license=1` (memory takes bytes or KiB/MiB/GiB: `memory=8GiB`)")]
pub struct ResourceError {
    source_name: String,
    message: String,
}

impl ResourceError {
    fn new(source_name: &str, message: String) -> Self {
        ResourceError {
            source_name: source_name.to_string(),
            message,
        }
    }
}

/// Parses a byte count: a plain number of bytes, or a number with one of
/// the units `B`, `KiB`, `MiB`, `GiB`, `TiB` (also `KB`, `MB`, `GB`, `TB`,
/// read as powers of 1024). `None` if it is not one.
pub fn parse_bytes(text: &str) -> Option<u64> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let number: f64 = number.parse().ok()?;
    let scale: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" | "KB" | "K" => 1 << 10,
        "MiB" | "MB" | "M" => 1 << 20,
        "GiB" | "GB" | "G" => 1 << 30,
        "TiB" | "TB" | "T" => 1 << 40,
        _ => return None,
    };
    let bytes = number * scale as f64;
    (bytes.is_finite() && bytes >= 0.0 && bytes < u64::MAX as f64).then_some(bytes as u64)
}

/// Checks one name and amount given through `source_name` (a flag or a
/// field, named in the error).
pub fn check(source_name: &str, name: &str, amount: f64) -> Result<(), ResourceError> {
    let err = |m: String| Err(ResourceError::new(source_name, m));
    if name.is_empty() {
        return err("a resource has no name".into());
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '/'))
    {
        return err(format!(
            "resource name `{name}` may only have letters, digits and _ - . /"
        ));
    }
    if matches!(name, "cpu" | "CPU" | "cpus" | "num_cpus") {
        return err(format!(
            "`{name}` is not a custom resource: give CPUs with --num-cpus (Config::num_cpus, \
             num_cpus = N in #[remote])"
        ));
    }
    if !amount.is_finite() || amount < 0.0 {
        return err(format!(
            "`{name}` has amount {amount}, not a non-negative number"
        ));
    }
    Ok(())
}

/// Parses a `--resources` value such as `gpu=2,license=1,memory=8GiB`.
/// `source_name` names the flag in errors. A name given twice is an error.
pub fn parse_list(source_name: &str, text: &str) -> Result<Vec<(String, f64)>, ResourceError> {
    let mut out: Vec<(String, f64)> = Vec::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let Some((name, value)) = part.split_once('=') else {
            return Err(ResourceError::new(
                source_name,
                format!("`{part}` has no `=`"),
            ));
        };
        let (name, value) = (name.trim(), value.trim());
        let amount = if name == MEMORY {
            parse_bytes(value).map(|b| b as f64)
        } else {
            value.parse::<f64>().ok()
        };
        let Some(amount) = amount else {
            return Err(ResourceError::new(
                source_name,
                format!("`{value}` (for `{name}`) is not a number"),
            ));
        };
        check(source_name, name, amount)?;
        if out.iter().any(|(n, _)| n == name) {
            return Err(ResourceError::new(
                source_name,
                format!("`{name}` is given twice"),
            ));
        }
        out.push((name.to_string(), amount));
    }
    Ok(out)
}

/// Checks a whole list (as from [`Config::resources`](crate::Config::resources)).
pub(crate) fn check_list(source_name: &str, list: &[(String, f64)]) -> Result<(), ResourceError> {
    for (i, (name, amount)) in list.iter().enumerate() {
        check(source_name, name, *amount)?;
        if list[..i].iter().any(|(n, _)| n == name) {
            return Err(ResourceError::new(
                source_name,
                format!("`{name}` is given twice"),
            ));
        }
    }
    Ok(())
}

/// The wire form of a node's list.
pub(crate) fn to_proto(list: &[(String, f64)]) -> Vec<proto::Resource> {
    list.iter()
        .map(|(name, amount)| proto::Resource {
            name: name.clone(),
            amount: *amount,
        })
        .collect()
}

/// This machine's RAM in bytes (0 if /proc cannot tell): the default
/// capacity of a node's `memory` resource.
pub(crate) fn machine_memory() -> u64 {
    crate::node::memory_monitor::machine_memory().map_or(0, |(_, total)| total)
}

/// Adds `amount` of `name` to a request, replacing an earlier amount of the
/// same name (a call-site option overrides the function's default).
pub(crate) fn set(list: &mut Vec<proto::Resource>, name: &str, amount: f64) {
    match list.iter_mut().find(|r| r.name == name) {
        Some(r) => r.amount = amount,
        None => list.push(proto::Resource {
            name: name.to_string(),
            amount,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_and_units_parse() {
        assert_eq!(
            parse_list("--resources", "gpu=2, license=1,memory=1GiB").unwrap(),
            vec![
                ("gpu".to_string(), 2.0),
                ("license".to_string(), 1.0),
                ("memory".to_string(), (1u64 << 30) as f64)
            ]
        );
        assert_eq!(parse_bytes("512MiB"), Some(512 << 20));
        assert_eq!(parse_bytes("4096"), Some(4096));
        assert_eq!(parse_bytes("1.5KiB"), Some(1536));
        assert_eq!(parse_bytes("2 GiB"), Some(2 << 30));
        assert_eq!(parse_bytes("2PB"), None);
        assert_eq!(parse_bytes("-1"), None);
    }

    #[test]
    fn bad_lists_name_the_flag_and_the_form() {
        for bad in [
            "gpu=abc",
            "=1",
            "gpu=-1",
            "gpu",
            "gpu=1,gpu=2",
            "cpu=2",
            "memory=3XB",
        ] {
            let e = parse_list("--resources", bad).unwrap_err().to_string();
            assert!(e.starts_with("--resources: "), "{bad}: {e}");
            assert!(e.contains("NAME=AMOUNT"), "{bad}: {e}");
        }
    }
}
