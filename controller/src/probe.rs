//! Health probes that speak each component's own protocol: TCP, HTTP, Redis PING, HAProxy's
//! runtime socket, SQL. Every probe has a short timeout and returns what it saw, never panics.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::os::unix::net::UnixStream;
use std::time::Duration;

fn addr(host: &str, port: u16) -> Option<SocketAddr> {
    (host, port).to_socket_addrs().ok()?.next()
}

pub fn tcp(host: &str, port: u16, timeout: Duration) -> bool {
    addr(host, port).is_some_and(|a| TcpStream::connect_timeout(&a, timeout).is_ok())
}

/// GET `url`; the status code and body, or why it failed.
pub fn http_get(url: &str, timeout: Duration) -> Result<(u16, String), String> {
    let agent = ureq::AgentBuilder::new().timeout(timeout).build();
    match agent.get(url).call() {
        Ok(r) => {
            let code = r.status();
            Ok((code, r.into_string().unwrap_or_default()))
        }
        Err(ureq::Error::Status(code, r)) => Ok((code, r.into_string().unwrap_or_default())),
        Err(e) => Err(e.to_string()),
    }
}

pub fn http_post(url: &str, timeout: Duration) -> Result<(u16, String), String> {
    let agent = ureq::AgentBuilder::new().timeout(timeout).build();
    match agent.post(url).call() {
        Ok(r) => {
            let code = r.status();
            Ok((code, r.into_string().unwrap_or_default()))
        }
        Err(ureq::Error::Status(code, r)) => Ok((code, r.into_string().unwrap_or_default())),
        Err(e) => Err(e.to_string()),
    }
}

/// True when GET `url` answers 2xx.
pub fn http_ok(url: &str, timeout: Duration) -> bool {
    matches!(http_get(url, timeout), Ok((c, _)) if (200..300).contains(&c))
}

/// Value of a sample `name` (no labels) in Prometheus text exposition.
pub fn metric_value(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        let mut it = l.split_whitespace();
        (it.next()? == name).then(|| it.next()?.parse().ok())?
    })
}

fn resp_cmd(args: &[&str]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend(format!("${}\r\n{a}\r\n", a.len()).into_bytes());
    }
    out
}

/// Redis PING (after AUTH when a password is given): Ok(()) on PONG.
pub fn redis_ping(
    host: &str,
    port: u16,
    password: Option<&str>,
    timeout: Duration,
) -> Result<(), String> {
    let a = addr(host, port).ok_or("cannot resolve")?;
    let mut s = TcpStream::connect_timeout(&a, timeout).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    let mut req = Vec::new();
    if let Some(p) = password {
        req.extend(resp_cmd(&["AUTH", p]));
    }
    req.extend(resp_cmd(&["PING"]));
    s.write_all(&req).map_err(|e| e.to_string())?;
    let mut buf = [0u8; 256];
    let mut got = String::new();
    let want = if password.is_some() { 2 } else { 1 };
    while got.matches("\r\n").count() < want {
        let n = s.read(&mut buf).map_err(|e| e.to_string())?;
        if n == 0 {
            break;
        }
        got.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    if got.contains("+PONG") {
        Ok(())
    } else {
        // Never echo what we sent (it holds the password); the reply is safe.
        Err(format!(
            "unexpected reply: {}",
            got.trim().lines().next().unwrap_or("")
        ))
    }
}

/// One command on HAProxy's runtime API (stats socket); returns the answer.
pub fn haproxy_cmd(socket: &str, cmd: &str, timeout: Duration) -> Result<String, String> {
    let mut s = UnixStream::connect(socket).map_err(|e| format!("{socket}: {e}"))?;
    s.set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    s.write_all(format!("{cmd}\n").as_bytes())
        .map_err(|e| e.to_string())?;
    let mut out = String::new();
    s.read_to_string(&mut out).map_err(|e| e.to_string())?;
    Ok(out)
}

/// `show stat` as (proxy, server, status) rows.
pub fn haproxy_servers(socket: &str) -> Result<Vec<(String, String, String)>, String> {
    haproxy_stat_rows(&haproxy_cmd(socket, "show stat", Duration::from_secs(2))?)
}

/// Parses the CSV answer of `show stat` into (proxy, server, status) rows.
pub fn haproxy_stat_rows(text: &str) -> Result<Vec<(String, String, String)>, String> {
    let mut lines = text.lines();
    let header = lines.next().ok_or("empty answer")?;
    let cols: Vec<&str> = header.trim_start_matches("# ").split(',').collect();
    let status_i = cols
        .iter()
        .position(|c| *c == "status")
        .ok_or("no status column")?;
    Ok(lines
        .filter(|l| !l.is_empty())
        .filter_map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            Some((
                f.first()?.to_string(),
                f.get(1)?.to_string(),
                f.get(status_i)?.to_string(),
            ))
        })
        .collect())
}

/// The worker pid HAProxy reports (`show info`), to verify a reload replaced the worker.
pub fn haproxy_worker_pid(socket: &str) -> Option<u32> {
    haproxy_info_pid(&haproxy_cmd(socket, "show info", Duration::from_secs(2)).ok()?)
}

/// The `Pid:` line of a `show info` answer.
pub fn haproxy_info_pid(text: &str) -> Option<u32> {
    text.lines()
        .find_map(|l| l.strip_prefix("Pid: ").and_then(|p| p.trim().parse().ok()))
}
