//! A plain HTTP/1.1 GET over a TCP socket, for the dashboard's `/metrics`
//! and `/healthz` and the node agents' `/healthz`: no HTTP client crate is
//! needed for that.

use std::io::{Read, Write};

use super::GENEROUS;

/// `GET path` from `base` (`http://host:port` or `host:port`): the status
/// code and the body, or the connection error.
pub(crate) fn get(base: &str, path: &str) -> std::io::Result<(u16, String)> {
    get_with(base, path, &[])
}

/// [`get`] with more request headers (`("Accept", "…")`).
pub(crate) fn get_with(
    base: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> std::io::Result<(u16, String)> {
    let host = base.trim_start_matches("http://").trim_end_matches('/');
    let mut s = std::net::TcpStream::connect(host)?;
    s.set_read_timeout(Some(GENEROUS))?;
    let extra: String = headers
        .iter()
        .map(|(k, v)| format!("{k}: {v}\r\n"))
        .collect();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\n{extra}Connection: close\r\n\r\n"
    )?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("GET {path}: not an HTTP response: {text:.300}"));
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    Ok((status, body.to_string()))
}

/// `GET path` that must answer 200: the body.
pub(crate) fn get_ok(base: &str, path: &str) -> String {
    match get(base, path) {
        Ok((200, body)) => body,
        Ok((status, body)) => panic!("GET {base}{path}: {status} {body:.300}"),
        Err(e) => panic!("GET {base}{path}: {e}"),
    }
}
