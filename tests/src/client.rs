//! A raw HTTP/1.1 client: header names and values are bytes, so tests can send non-UTF-8 values,
//! 50 KiB headers or 200 cookies. It keeps its connection alive between requests.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use crate::{Context, Error, Result};

/// Most bytes of a message head either side reads.
pub(crate) const MAX_HEAD_BYTES: usize = 512 * 1024;
/// Most bytes of a body either side reads.
const MAX_BODY_BYTES: usize = 16 * 1024 * 1024;

/// Header (name, value) pairs as bytes, in order.
pub type Headers = Vec<(Vec<u8>, Vec<u8>)>;

/// One HTTP response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Headers in order, names lowercased.
    pub headers: Headers,
    /// Body.
    pub body: Vec<u8>,
}

impl Response {
    /// The first value of header `name` (case-insensitive), as bytes.
    pub fn header_bytes(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name.as_bytes()))
            .map(|(_, v)| v.as_slice())
    }

    /// The first value of header `name`, lossily as text.
    pub fn header(&self, name: &str) -> Option<String> {
        self.header_bytes(name)
            .map(|v| String::from_utf8_lossy(v).into_owned())
    }

    /// Every value of header `name`, lossily as text.
    pub fn header_all(&self, name: &str) -> Vec<String> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name.as_bytes()))
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
            .collect()
    }

    /// The body, lossily as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The upstream that answered (`x-upstream`), or `None` for a reply Envoy made itself.
    pub fn upstream(&self) -> Option<String> {
        self.header("x-upstream")
    }
}

/// A keep-alive HTTP/1.1 client for one address.
#[derive(Debug)]
pub struct Client {
    addr: SocketAddr,
    host: Vec<u8>,
    timeout: Duration,
    conn: Option<BufReader<TcpStream>>,
}

impl Client {
    /// A client for `addr` that sends `host: <host>` unless a request names its own.
    pub fn new(addr: SocketAddr, host: &str) -> Client {
        Client {
            addr,
            host: host.as_bytes().to_vec(),
            timeout: Duration::from_secs(15),
            conn: None,
        }
    }

    /// Sets the read / write timeout of later connections.
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
        self.conn = None;
    }

    /// `GET path` with `headers`.
    pub fn get(&mut self, path: &str, headers: &[(&[u8], &[u8])]) -> Result<Response> {
        self.request("GET", path, headers, b"")
    }

    /// Sends one request and reads its response. A `host` header among `headers` replaces the
    /// default one. A reused connection that turns out closed is replaced once.
    pub fn request(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&[u8], &[u8])],
        body: &[u8],
    ) -> Result<Response> {
        let request = self.encode(method, path, headers, body);
        let reused = self.conn.is_some();
        match self.exchange(&request, method) {
            Ok(response) => Ok(response),
            Err(Attempt::Stale(_)) if reused => {
                self.conn = None;
                self.exchange(&request, method).map_err(Attempt::into_error)
            }
            Err(attempt) => Err(attempt.into_error()),
        }
    }

    fn encode(&self, method: &str, path: &str, headers: &[(&[u8], &[u8])], body: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(256 + body.len());
        out.extend_from_slice(format!("{method} {path} HTTP/1.1\r\n").as_bytes());
        if !headers
            .iter()
            .any(|(name, _)| name.eq_ignore_ascii_case(b"host"))
        {
            out.extend_from_slice(b"host: ");
            out.extend_from_slice(&self.host);
            out.extend_from_slice(b"\r\n");
        }
        for (name, value) in headers {
            out.extend_from_slice(name);
            out.extend_from_slice(b": ");
            out.extend_from_slice(value);
            out.extend_from_slice(b"\r\n");
        }
        if !body.is_empty() || method == "POST" || method == "PUT" {
            out.extend_from_slice(format!("content-length: {}\r\n", body.len()).as_bytes());
        }
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(body);
        out
    }

    fn exchange(&mut self, request: &[u8], method: &str) -> std::result::Result<Response, Attempt> {
        let conn = match self.conn.take() {
            Some(conn) => conn,
            None => {
                let stream = TcpStream::connect_timeout(&self.addr, self.timeout)
                    .context(|| format!("connecting to {}", self.addr))
                    .map_err(Attempt::Failed)?;
                stream
                    .set_read_timeout(Some(self.timeout))
                    .and_then(|()| stream.set_write_timeout(Some(self.timeout)))
                    .and_then(|()| stream.set_nodelay(true))
                    .map_err(|e| Attempt::Failed(e.into()))?;
                BufReader::new(stream)
            }
        };
        let mut conn = conn;
        if let Err(e) = conn.get_mut().write_all(request) {
            return Err(Attempt::Stale(e.into()));
        }
        let head = match read_head(&mut conn) {
            Ok(Some(head)) => head,
            Ok(None) => {
                return Err(Attempt::Stale(Error(
                    "connection closed before a response".into(),
                )))
            }
            Err(e) => return Err(Attempt::Failed(e)),
        };
        let (status, headers) = parse_response_head(&head).map_err(Attempt::Failed)?;
        let framing = if method == "HEAD" || status == 204 || status == 304 || status < 200 {
            Framing::Length(0)
        } else {
            framing(&headers, true).map_err(Attempt::Failed)?
        };
        let body = read_body(&mut conn, framing).map_err(Attempt::Failed)?;
        let close = framing == Framing::UntilClose
            || headers
                .iter()
                .any(|(n, v)| n.as_slice() == b"connection" && v.eq_ignore_ascii_case(b"close"));
        if !close {
            self.conn = Some(conn);
        }
        Ok(Response {
            status,
            headers,
            body,
        })
    }
}

/// How one exchange failed: on a stale keep-alive connection (retry on a fresh one) or otherwise.
enum Attempt {
    Stale(Error),
    Failed(Error),
}

impl Attempt {
    fn into_error(self) -> Error {
        match self {
            Attempt::Stale(e) | Attempt::Failed(e) => e,
        }
    }
}

/// How a message body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Framing {
    Length(usize),
    Chunked,
    UntilClose,
}

/// Reads a message head up to and including the blank line. `None`: the peer closed the
/// connection before sending a byte.
pub(crate) fn read_head(conn: &mut BufReader<TcpStream>) -> Result<Option<Vec<u8>>> {
    let mut head = Vec::with_capacity(1024);
    loop {
        let start = head.len();
        let n = conn
            .by_ref()
            .take((MAX_HEAD_BYTES - head.len()) as u64 + 1)
            .read_until(b'\n', &mut head)?;
        if n == 0 {
            return if head.is_empty() {
                Ok(None)
            } else {
                Err("connection closed inside a message head".into())
            };
        }
        if head.len() > MAX_HEAD_BYTES {
            return Err(format!("message head longer than {MAX_HEAD_BYTES} bytes").into());
        }
        let line = &head[start..];
        if line == b"\r\n" || line == b"\n" {
            if start == 0 {
                // Tolerate a stray blank line between messages.
                head.clear();
                continue;
            }
            return Ok(Some(head));
        }
    }
}

/// Splits a head into its first line and its headers (names lowercased).
pub(crate) fn split_head(head: &[u8]) -> Result<(&[u8], Headers)> {
    let mut lines = head
        .split(|&b| b == b'\n')
        .map(|line| line.strip_suffix(b"\r").unwrap_or(line));
    let first = lines.next().ok_or("empty message head")?;
    let mut headers = Vec::new();
    for line in lines {
        if line.is_empty() {
            continue;
        }
        let colon = line
            .iter()
            .position(|&b| b == b':')
            .ok_or_else(|| format!("header line without ':': {}", String::from_utf8_lossy(line)))?;
        headers.push((
            line[..colon].to_ascii_lowercase(),
            line[colon + 1..].trim_ascii().to_vec(),
        ));
    }
    Ok((first, headers))
}

fn parse_response_head(head: &[u8]) -> Result<(u16, Headers)> {
    let (status_line, headers) = split_head(head)?;
    let mut parts = status_line.splitn(3, |&b| b == b' ');
    let version = parts.next().unwrap_or_default();
    if !version.starts_with(b"HTTP/1.") {
        return Err(format!(
            "not an HTTP/1 status line: {}",
            String::from_utf8_lossy(status_line)
        )
        .into());
    }
    let status = parts
        .next()
        .and_then(|code| std::str::from_utf8(code).ok())
        .and_then(|code| code.parse::<u16>().ok())
        .ok_or_else(|| format!("bad status line: {}", String::from_utf8_lossy(status_line)))?;
    Ok((status, headers))
}

/// The body framing of a message with `headers`; a request without length has no body.
pub(crate) fn framing(headers: &[(Vec<u8>, Vec<u8>)], response: bool) -> Result<Framing> {
    let mut framing = if response {
        Framing::UntilClose
    } else {
        Framing::Length(0)
    };
    for (name, value) in headers {
        if name.as_slice() == b"transfer-encoding" {
            if value
                .split(|&b| b == b',')
                .any(|coding| coding.trim_ascii().eq_ignore_ascii_case(b"chunked"))
            {
                return Ok(Framing::Chunked);
            }
        } else if name.as_slice() == b"content-length" {
            let length = std::str::from_utf8(value)
                .ok()
                .and_then(|v| v.trim().parse::<usize>().ok())
                .ok_or_else(|| format!("bad content-length: {}", String::from_utf8_lossy(value)))?;
            framing = Framing::Length(length);
        }
    }
    Ok(framing)
}

/// Reads a body with the given framing.
pub(crate) fn read_body(conn: &mut BufReader<TcpStream>, framing: Framing) -> Result<Vec<u8>> {
    match framing {
        Framing::Length(length) => {
            if length > MAX_BODY_BYTES {
                return Err(format!("body of {length} bytes is too large").into());
            }
            let mut body = vec![0; length];
            conn.read_exact(&mut body)?;
            Ok(body)
        }
        Framing::UntilClose => {
            let mut body = Vec::new();
            conn.by_ref()
                .take(MAX_BODY_BYTES as u64)
                .read_to_end(&mut body)?;
            Ok(body)
        }
        Framing::Chunked => {
            let mut body = Vec::new();
            loop {
                let mut line = Vec::new();
                conn.read_until(b'\n', &mut line)?;
                let size_text = String::from_utf8_lossy(&line);
                let size_text = size_text.split(';').next().unwrap_or_default().trim();
                let size = usize::from_str_radix(size_text, 16)
                    .map_err(|_| Error(format!("bad chunk size line: {size_text:?}")))?;
                if size == 0 {
                    // Trailers, then the blank line.
                    loop {
                        line.clear();
                        if conn.read_until(b'\n', &mut line)? == 0 || line.trim_ascii().is_empty() {
                            return Ok(body);
                        }
                    }
                }
                if body.len() + size > MAX_BODY_BYTES {
                    return Err("chunked body too large".into());
                }
                let start = body.len();
                body.resize(start + size, 0);
                conn.read_exact(&mut body[start..])?;
                let mut crlf = [0u8; 2];
                conn.read_exact(&mut crlf)?;
            }
        }
    }
}
