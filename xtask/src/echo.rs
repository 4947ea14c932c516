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

    /// Sends nothing and waits until the read of each open connection ends
    /// (the peer closed or reset it) or `within` passes. For each connection
    /// (index into `conns`) that ended: how long after `from`, and why. An
    /// idle push client learns of a dead server this way only if something
    /// reaches it. Marks them ended.
    pub fn await_idle(
        &mut self,
        from: Instant,
        within: Duration,
    ) -> Vec<(usize, Duration, String)> {
        let (events, outcomes) = std::sync::mpsc::channel();
        let mut waiting = 0;
        for (i, conn) in self
            .conns
            .iter()
            .enumerate()
            .filter(|(_, c)| c.ended.is_none())
        {
            let Ok(mut stream) = conn.stream.get_ref().try_clone() else {
                continue;
            };
            let _ = stream.set_read_timeout(Some(within));
            let events = events.clone();
            waiting += 1;
            std::thread::spawn(move || {
                let mut buf = [0u8; 64];
                let why = match stream.read(&mut buf) {
                    Ok(0) => Some("UnexpectedEof: closed".to_string()),
                    Ok(_) => Some("data while idle".to_string()),
                    Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => None,
                    Err(err) if err.kind() == std::io::ErrorKind::TimedOut => None,
                    Err(err) => Some(format!("{:?}: {err}", err.kind())),
                };
                let _ = events.send((i, why, Instant::now()));
            });
        }
        drop(events);
        let mut ended = Vec::new();
        for _ in 0..waiting {
            let Ok((i, why, at)) = outcomes.recv_timeout(within + Duration::from_secs(1)) else {
                break;
            };
            if let Some(why) = why {
                self.conns[i].ended = Some(why.clone());
                self.conns[i].ended_at = Some(at);
                ended.push((i, at.saturating_duration_since(from), why));
            }
        }
        ended.sort_by_key(|(_, after, _)| *after);
        ended
    }

    /// Forgets the connections that ended.
    pub fn forget_ended(&mut self) {
        self.conns.retain(|c| c.ended.is_none());
    }
}
