//! Long-lived client connections through the VIP, as a push service's
//! browsers hold them: each is opened from a client namespace, learns which
//! node answered (the [`Testbed::backend_command`] server's first line), and
//! sends a message and reads its echo every tick. What ended, and why (a reset,
//! a close), is kept per connection. The drain tests, the demo and the
//! benchmark's resets-per-move figures use it.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::testbed::{Testbed, run_in_netns};

/// One connection.
pub struct Conn {
    /// The VIP port it was opened to.
    pub port: u16,
    /// The node that answered it.
    pub node: String,
    stream: BufReader<TcpStream>,
    /// Why it ended (`ConnectionReset: ...`, `UnexpectedEof: ...`), if it did.
    pub ended: Option<String>,
    /// When it ended.
    pub ended_at: Option<Instant>,
}

impl Conn {
    /// Ended by a reset (what a node that does not know the connection sends).
    pub fn reset(&self) -> bool {
        self.ended
            .as_deref()
            .is_some_and(|why| why.starts_with("ConnectionReset"))
    }
}

/// The connections of one client namespace.
pub struct EchoClients {
    ns: String,
    vip: std::net::Ipv4Addr,
    pub conns: Vec<Conn>,
}

impl EchoClients {
    /// Connections from client `client` (1-based) of `bed`.
    pub fn new(bed: &Testbed, client: usize) -> EchoClients {
        EchoClients {
            ns: bed.client_ns(client),
            vip: bed.vip(),
            conns: Vec::new(),
        }
    }

    /// Opens `count` connections to each of `ports` of the VIP (a socket
    /// stays in the namespace it was made in, so the test thread drives them).
    /// Returns their indexes in `conns`.
    pub fn open(
        &mut self,
        ports: impl IntoIterator<Item = u16>,
        count: usize,
    ) -> Result<Vec<usize>> {
        let ports: Vec<u16> = ports.into_iter().collect();
        let vip = self.vip;
        let opened = run_in_netns(&self.ns, move || -> Result<Vec<Conn>> {
            let mut conns = Vec::new();
            for port in ports {
                for _ in 0..count {
                    let target = SocketAddr::from((vip, port));
                    let stream = TcpStream::connect_timeout(&target, Duration::from_secs(5))
                        .with_context(|| format!("connecting to {target}"))?;
                    stream.set_read_timeout(Some(Duration::from_secs(3)))?;
                    stream.set_nodelay(true)?;
                    let mut stream = BufReader::new(stream);
                    let mut node = String::new();
                    stream
                        .read_line(&mut node)
                        .with_context(|| format!("{target}: no greeting from a backend"))?;
                    conns.push(Conn {
                        port,
                        node: node.trim().to_string(),
                        stream,
                        ended: None,
                        ended_at: None,
                    });
                }
            }
            Ok(conns)
        })??;
        let first = self.conns.len();
        self.conns.extend(opened);
        Ok((first..self.conns.len()).collect())
    }

    /// One message and its echo on every open connection.
    pub fn tick(&mut self) {
        for conn in self.conns.iter_mut().filter(|c| c.ended.is_none()) {
            let outcome = conn.stream.get_mut().write_all(b"p\n").and_then(|()| {
                let mut echo = [0u8; 2];
                conn.stream.read_exact(&mut echo).map(|()| echo)
            });
            let ended = match outcome {
                Ok(echo) if &echo == b"p\n" => continue,
                Ok(other) => format!("wrong echo {other:?}"),
                Err(err) => format!("{:?}: {err}", err.kind()),
            };
            conn.ended = Some(ended);
            conn.ended_at = Some(Instant::now());
        }
    }

    /// Echoes every `every` for `time`.
    pub fn run_for(&mut self, time: Duration, every: Duration) {
        let start = Instant::now();
        while start.elapsed() < time {
            let tick = Instant::now();
            self.tick();
            std::thread::sleep(every.saturating_sub(tick.elapsed()));
        }
    }

    /// Connections that ended.
    pub fn ended(&self) -> impl Iterator<Item = &Conn> {
        self.conns.iter().filter(|c| c.ended.is_some())
    }

    pub fn open_count(&self) -> usize {
        self.conns.iter().filter(|c| c.ended.is_none()).count()
    }

    /// Forgets the connections that ended.
    pub fn forget_ended(&mut self) {
        self.conns.retain(|c| c.ended.is_none());
    }
}
