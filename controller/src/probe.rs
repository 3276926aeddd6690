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
    http_request(url, false, None, timeout)
}

pub fn http_post(url: &str, timeout: Duration) -> Result<(u16, String), String> {
    http_request(url, true, None, timeout)
}

/// GET (or POST) `url`, with basic auth `(user, password)` when given.
pub fn http_request(
    url: &str,
    post: bool,
    basic_auth: Option<(&str, &str)>,
    timeout: Duration,
) -> Result<(u16, String), String> {
    let agent = ureq::AgentBuilder::new().timeout(timeout).build();
    let mut req = if post {
        agent.post(url)
    } else {
        agent.get(url)
    };
    if let Some((u, p)) = basic_auth {
        req = req.set("Authorization", &basic_auth_header(u, p));
    }
    match req.call() {
        Ok(r) => {
            let code = r.status();
            Ok((code, r.into_string().unwrap_or_default()))
        }
        Err(ureq::Error::Status(code, r)) => Ok((code, r.into_string().unwrap_or_default())),
        // Never the request (it may carry the password): ureq's errors name the URL only.
        Err(e) => Err(e.to_string()),
    }
}

/// `Basic <base64(user:password)>` (RFC 7617).
pub fn basic_auth_header(user: &str, password: &str) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let raw = format!("{user}:{password}");
    let mut out = String::from("Basic ");
    for c in raw.as_bytes().chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= c.len() {
                out.push(A[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// GET `path` over HTTP/1.1 on a unix socket (Envoy's admin): status code and body.
pub fn http_get_unix(socket: &str, path: &str, timeout: Duration) -> Result<(u16, String), String> {
    let mut s = UnixStream::connect(socket).map_err(|e| format!("{socket}: {e}"))?;
    s.set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    s.set_write_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .map_err(|e| e.to_string())?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).map_err(|e| e.to_string())?;
    parse_http_response(&raw)
}

/// Status and body of a complete HTTP/1.1 response (Content-Length, chunked or until close).
pub fn parse_http_response(raw: &[u8]) -> Result<(u16, String), String> {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or("incomplete HTTP response")?;
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse::<u16>().ok())
        .ok_or("no HTTP status line")?;
    let chunked = lines.any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("transfer-encoding:") && l.contains("chunked")
    });
    if !chunked {
        return Ok((status, body.to_string()));
    }
    let mut out = String::new();
    let mut rest = body;
    loop {
        let (size, after) = rest.split_once("\r\n").ok_or("truncated chunk")?;
        let n = usize::from_str_radix(size.split(';').next().unwrap_or("").trim(), 16)
            .map_err(|_| "bad chunk size")?;
        if n == 0 {
            break;
        }
        let chunk = after.get(..n).ok_or("truncated chunk")?;
        out.push_str(chunk);
        rest = after.get(n..).unwrap_or("").trim_start_matches("\r\n");
    }
    Ok((status, out))
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

/// Redis PING (after AUTH `[user] password` when given): Ok(()) on PONG.
pub fn redis_ping(
    host: &str,
    port: u16,
    auth: Option<(Option<&str>, &str)>,
    timeout: Duration,
) -> Result<(), String> {
    let password = auth.map(|(_, p)| p);
    let a = addr(host, port).ok_or("cannot resolve")?;
    let mut s = TcpStream::connect_timeout(&a, timeout).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    let mut req = Vec::new();
    match auth {
        Some((Some(u), p)) => req.extend(resp_cmd(&["AUTH", u, p])),
        Some((None, p)) => req.extend(resp_cmd(&["AUTH", p])),
        None => {}
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    #[test]
    fn basic_auth_and_http_parsing() {
        assert_eq!(
            super::basic_auth_header("Aladdin", "open sesame"),
            "Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ=="
        );
        assert_eq!(super::basic_auth_header("a", "b"), "Basic YTpi");
        let chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nLIVE\r\n1\r\n\n\r\n0\r\n\r\n";
        assert_eq!(
            super::parse_http_response(chunked).unwrap(),
            (200, "LIVE\n".to_string())
        );
        let plain = b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 9\r\n\r\nPRE_INIT\n";
        assert_eq!(
            super::parse_http_response(plain).unwrap(),
            (503, "PRE_INIT\n".to_string())
        );
    }
}
