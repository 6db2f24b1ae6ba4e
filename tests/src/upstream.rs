//! An HTTP/1.1 upstream on 127.0.0.1 that names itself in every answer, echoes the headers the
//! filter controls, and can be told at run time to fail, to be slow or to report business events.
//!
//! Every response carries `x-upstream: NAME`, `x-seen-version` (the routing header it received,
//! `-` when absent), `x-seen-force` (the force header, `-` when absent), `x-seen-count` (how many
//! routing headers arrived), and the body `NAME`.

use std::io::{BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::client::{framing, read_body, read_head, split_head};
use crate::{Context, Result};

/// Behaviour the test can change while the server runs.
#[derive(Debug, Default)]
pub struct Behaviour {
    /// Answer 503 to this many requests per 1000 (spread evenly; 1000 = every request).
    pub fail_per_mille: AtomicU32,
    /// Sleep this long before answering.
    pub delay_ms: AtomicU64,
    /// When set, the value of an `x-cohort-events` response header.
    pub events: Mutex<Option<String>>,
    /// Requests answered so far.
    pub served: AtomicU64,
    /// Requests answered with a 5xx so far.
    pub failed: AtomicU64,
}

/// A running upstream; stops on drop.
#[derive(Debug)]
pub struct Upstream {
    name: String,
    addr: SocketAddr,
    behaviour: Arc<Behaviour>,
    stop: Arc<AtomicBool>,
    accept: Option<JoinHandle<()>>,
}

/// Header names the upstream echoes back (request name, response name).
const ECHOED: [(&[u8], &str); 2] = [
    (b"x-cohort-version", "x-seen-version"),
    (b"x-cohort-force", "x-seen-force"),
];

impl Upstream {
    /// Starts `name` on a free port of 127.0.0.1.
    pub fn start(name: &str) -> Result<Upstream> {
        let listener = TcpListener::bind("127.0.0.1:0").context(|| format!("binding {name}"))?;
        let addr = listener.local_addr()?;
        let behaviour = Arc::new(Behaviour::default());
        let stop = Arc::new(AtomicBool::new(false));
        let accept = {
            let name = name.to_owned();
            let behaviour = Arc::clone(&behaviour);
            let stop = Arc::clone(&stop);
            std::thread::Builder::new()
                .name(format!("upstream-{name}"))
                .spawn(move || accept_loop(&listener, &name, &behaviour, &stop))?
        };
        Ok(Upstream {
            name: name.to_owned(),
            addr,
            behaviour,
            stop,
            accept: Some(accept),
        })
    }

    /// Its name (`stable`, `canary`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Its run-time behaviour.
    pub fn behaviour(&self) -> &Behaviour {
        &self.behaviour
    }

    /// Answers 503 to `per_mille` of 1000 requests (0: never, 1000: always).
    pub fn fail(&self, per_mille: u32) {
        self.behaviour
            .fail_per_mille
            .store(per_mille.min(1000), Ordering::SeqCst);
    }

    /// Sleeps `ms` before each answer.
    pub fn delay(&self, ms: u64) {
        self.behaviour.delay_ms.store(ms, Ordering::SeqCst);
    }

    /// Reports `events` (comma-separated names) in `x-cohort-events`, or nothing with `None`.
    pub fn events(&self, events: Option<&str>) {
        if let Ok(mut slot) = self.behaviour.events.lock() {
            *slot = events.map(str::to_owned);
        }
    }

    /// Requests answered so far.
    pub fn served(&self) -> u64 {
        self.behaviour.served.load(Ordering::SeqCst)
    }

    /// Requests answered with 503 so far.
    pub fn failed(&self) -> u64 {
        self.behaviour.failed.load(Ordering::SeqCst)
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_millis(200));
        if let Some(handle) = self.accept.take() {
            let _ = handle.join();
        }
    }
}

fn accept_loop(listener: &TcpListener, name: &str, behaviour: &Arc<Behaviour>, stop: &AtomicBool) {
    for stream in listener.incoming() {
        if stop.load(Ordering::SeqCst) {
            return;
        }
        let Ok(stream) = stream else { continue };
        let name = name.to_owned();
        let behaviour = Arc::clone(behaviour);
        // Connection threads end when Envoy closes the connection (at the latest when it exits).
        let _ = std::thread::Builder::new()
            .name(format!("upstream-{name}-conn"))
            .spawn(move || {
                let _ = serve(stream, &name, &behaviour);
            });
    }
}

/// Serves keep-alive requests on one connection until the peer closes it.
fn serve(stream: TcpStream, name: &str, behaviour: &Behaviour) -> Result<()> {
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(Duration::from_secs(120)))?;
    let mut conn = BufReader::new(stream);
    loop {
        let Some(head) = read_head(&mut conn)? else {
            return Ok(());
        };
        let (request_line, headers) = split_head(&head)?;
        let close_requested = headers
            .iter()
            .any(|(n, v)| n.as_slice() == b"connection" && v.eq_ignore_ascii_case(b"close"));
        let is_head = request_line.starts_with(b"HEAD ");
        let _body = read_body(&mut conn, framing(&headers, false)?)?;

        let delay = behaviour.delay_ms.load(Ordering::SeqCst);
        if delay > 0 {
            std::thread::sleep(Duration::from_millis(delay));
        }
        let n = behaviour.served.fetch_add(1, Ordering::SeqCst);
        let per_mille = u64::from(behaviour.fail_per_mille.load(Ordering::SeqCst));
        // Spread failures evenly: request n fails when the running share crosses an integer.
        let fail = (n + 1) * per_mille / 1000 != n * per_mille / 1000;
        let status = if fail {
            behaviour.failed.fetch_add(1, Ordering::SeqCst);
            "503 Service Unavailable"
        } else {
            "200 OK"
        };

        let mut out = Vec::with_capacity(512);
        out.extend_from_slice(format!("HTTP/1.1 {status}\r\nx-upstream: {name}\r\n").as_bytes());
        for (request_name, response_name) in ECHOED {
            let values: Vec<&[u8]> = headers
                .iter()
                .filter(|(n, _)| n.as_slice() == request_name)
                .map(|(_, v)| v.as_slice())
                .collect();
            out.extend_from_slice(response_name.as_bytes());
            out.extend_from_slice(b": ");
            if values.is_empty() {
                out.push(b'-');
            }
            for (i, value) in values.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                out.extend_from_slice(&printable(value));
            }
            out.extend_from_slice(b"\r\n");
            if request_name == b"x-cohort-version" {
                out.extend_from_slice(format!("x-seen-count: {}\r\n", values.len()).as_bytes());
            }
        }
        if let Ok(events) = behaviour.events.lock() {
            if let Some(events) = events.as_deref() {
                out.extend_from_slice(format!("x-cohort-events: {events}\r\n").as_bytes());
            }
        }
        let body = name.as_bytes();
        out.extend_from_slice(format!("content-length: {}\r\n", body.len()).as_bytes());
        if close_requested {
            out.extend_from_slice(b"connection: close\r\n");
        }
        out.extend_from_slice(b"\r\n");
        if !is_head {
            out.extend_from_slice(body);
        }
        conn.get_mut().write_all(&out)?;
        if close_requested {
            return Ok(());
        }
    }
}

/// `value` with bytes outside visible ASCII percent-encoded, safe to echo in a header.
fn printable(value: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(value.len());
    for &b in value {
        if b.is_ascii_graphic() && b != b'%' || b == b' ' {
            out.push(b);
        } else {
            out.extend_from_slice(format!("%{b:02X}").as_bytes());
        }
    }
    out
}
