//! `halod::node::Client`: a node's side of the wire protocol
//! (docs/protocol.md) as a library. It registers, heartbeats from its own
//! task, and keeps the node's role and routes up to date from the messages
//! it reads.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpStream, UdpSocket};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::protocol::{
    DecodeError, ErrorCode, GatewayMessage, HbUdp, Hello, LineError, LineReader, NodeMessage, Role,
    Route,
};
use halod_common::heartbeat::{self, Heartbeat};

/// How long `connect` waits for the gateway's answer to `hello`.
pub const WELCOME_TIMEOUT: Duration = Duration::from_secs(10);
/// How long `bye` waits for the gateway to close the connection; after a
/// `moved` with `drain_ms`, that long after the drain window ends.
pub const BYE_TIMEOUT: Duration = Duration::from_secs(5);

/// The drain window a message gives: the `drain_ms` of a `moved`, if any.
pub fn drain_of(message: &GatewayMessage) -> Option<Duration> {
    match message {
        GatewayMessage::Moved { drain_ms, .. } if *drain_ms > 0 => {
            Some(Duration::from_millis(*drain_ms))
        }
        _ => None,
    }
}

/// Who the node is and where its gateway listens.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// Gateway `nodes.listen` address, `IP:PORT` or `HOST:PORT`.
    pub gateway: String,
    pub name: String,
    /// Address the gateway sends this node's traffic to; `None`: the
    /// address this node connects from.
    pub addr: Option<Ipv4Addr>,
    pub token: Option<String>,
    /// The protocol version to say in `hello` ([`crate::protocol::VERSION`]:
    /// 2, with UDP heartbeats). A version-2 node refused with `bad_request`
    /// (a gateway that speaks version 1 only) says `hello` again with 1.
    pub version: u32,
}

/// Why the client stopped.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot connect to the gateway at {gateway}: {source}")]
    Connect {
        gateway: String,
        source: std::io::Error,
    },
    #[error("the gateway refused this node: {code}: {message}")]
    Refused {
        code: ErrorCode,
        message: String,
        /// The `error` line as received.
        line: String,
    },
    #[error("the gateway sent an invalid line: {0}")]
    Decode(#[from] DecodeError),
    #[error("reading from the gateway: {0}")]
    Line(#[from] LineError),
    #[error("the gateway closed the connection")]
    Closed,
    #[error("no answer to hello within {} s", WELCOME_TIMEOUT.as_secs())]
    NoWelcome,
    #[error("the gateway sent {0} before welcome")]
    Unexpected(String),
}

/// One message from the gateway, as parsed and as received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    pub message: GatewayMessage,
    /// The line without its newline.
    pub line: String,
}

/// A registered node connection.
#[derive(Debug)]
pub struct Client {
    reader: OwnedReadHalf,
    lines: LineReader,
    outgoing: mpsc::Sender<(NodeMessage, oneshot::Sender<std::io::Result<()>>)>,
    heartbeat: JoinHandle<()>,
    role: Role,
    heartbeat_ms: u64,
    routes: BTreeMap<Route, Vec<u16>>,
    /// The protocol version the gateway took.
    version: u32,
    /// Where heartbeats go as UDP datagrams (`None`: TCP `hb` lines).
    udp_target: Option<SocketAddr>,
}

impl Drop for Client {
    fn drop(&mut self) {
        self.heartbeat.abort();
    }
}

impl Client {
    /// Connects, says `hello` and waits for `welcome`; heartbeats start
    /// (as UDP datagrams when the `welcome` offers them). Returns the client
    /// and the `welcome` message.
    pub async fn connect(options: &ClientOptions) -> Result<(Client, Received), ClientError> {
        match Client::connect_with(options, options.version).await {
            // A gateway that speaks version 1 only refuses any other.
            Err(ClientError::Refused {
                code: ErrorCode::BadRequest,
                ..
            }) if options.version > 1 => Client::connect_with(options, 1).await,
            result => result,
        }
    }

    async fn connect_with(
        options: &ClientOptions,
        version: u32,
    ) -> Result<(Client, Received), ClientError> {
        let stream = TcpStream::connect(&options.gateway)
            .await
            .map_err(|source| ClientError::Connect {
                gateway: options.gateway.clone(),
                source,
            })?;
        let _ = stream.set_nodelay(true);
        let ends = (stream.local_addr(), stream.peer_addr());
        let (mut reader, mut writer) = stream.into_split();
        let hello = NodeMessage::Hello(Hello {
            version,
            name: options.name.clone(),
            addr: options.addr,
            token: options.token.clone(),
        });
        writer
            .write_all(hello.encode().as_bytes())
            .await
            .map_err(LineError::Io)?;
        let mut lines = LineReader::new();
        let line = tokio::time::timeout(WELCOME_TIMEOUT, lines.next_line(&mut reader))
            .await
            .map_err(|_| ClientError::NoWelcome)??
            .ok_or(ClientError::Closed)?;
        let message = GatewayMessage::decode(&line)?;
        let (role, heartbeat_ms, routes, hb_udp) = match &message {
            GatewayMessage::Welcome {
                role,
                heartbeat_ms,
                routes,
                hb_udp,
            } => (*role, *heartbeat_ms, routes, *hb_udp),
            GatewayMessage::Error { code, message } => {
                return Err(ClientError::Refused {
                    code: *code,
                    message: message.clone(),
                    line,
                });
            }
            _ => return Err(ClientError::Unexpected(line)),
        };
        let routes = routes
            .iter()
            .map(|route| (route.route, route.ports.clone()))
            .collect();
        let udp = match (hb_udp, ends) {
            (Some(hb_udp), (Ok(local), Ok(peer))) => {
                let source = options.addr.map_or(local.ip(), IpAddr::V4);
                udp_heartbeats(hb_udp, source, peer.ip()).await
            }
            _ => None,
        };
        let udp_target = udp.as_ref().and_then(|(socket, _)| socket.peer_addr().ok());
        let (outgoing, queue) = mpsc::channel(4);
        let heartbeat = tokio::spawn(send_heartbeats(
            writer,
            udp,
            Duration::from_millis(heartbeat_ms.max(1)),
            queue,
        ));
        let client = Client {
            reader,
            lines,
            outgoing,
            heartbeat,
            role,
            heartbeat_ms,
            routes,
            version,
            udp_target,
        };
        Ok((client, Received { message, line }))
    }

    /// The next message from the gateway; the node's role and routes are
    /// updated before it returns. Cancel-safe.
    pub async fn recv(&mut self) -> Result<Received, ClientError> {
        let line = self
            .lines
            .next_line(&mut self.reader)
            .await?
            .ok_or(ClientError::Closed)?;
        let message = GatewayMessage::decode(&line)?;
        match &message {
            GatewayMessage::Welcome {
                role,
                heartbeat_ms,
                routes,
                ..
            } => {
                // Not sent twice by this protocol version; accept it as a resync.
                self.role = *role;
                self.heartbeat_ms = *heartbeat_ms;
                self.routes = routes.iter().map(|r| (r.route, r.ports.clone())).collect();
            }
            GatewayMessage::Assigned { routes } => {
                self.routes
                    .extend(routes.iter().map(|r| (r.route, r.ports.clone())));
            }
            GatewayMessage::Moved { routes, .. } => {
                for route in routes {
                    self.routes.remove(&route.route);
                }
            }
            GatewayMessage::Role { role } => self.role = *role,
            // The routes were gone from this node since their `moved`.
            GatewayMessage::DrainDone { .. } => {}
            GatewayMessage::Error { code, message } => {
                return Err(ClientError::Refused {
                    code: *code,
                    message: message.clone(),
                    line,
                });
            }
        }
        Ok(Received { message, line })
    }

    /// Leaves the cluster: sends `bye` and reads what the gateway sends until
    /// it closes the connection (its `moved`; with a drain, `drain_done` when
    /// the window ends), at most [`BYE_TIMEOUT`], or the drain window plus
    /// [`BYE_TIMEOUT`] after a `moved` with `drain_ms`. The node's routes and
    /// role follow those messages, as with [`Client::recv`].
    pub async fn bye(&mut self) -> Result<Vec<Received>, ClientError> {
        self.send_bye().await?;
        let mut received = Vec::new();
        let mut deadline = tokio::time::Instant::now() + BYE_TIMEOUT;
        loop {
            match tokio::time::timeout_at(deadline, self.recv()).await {
                Ok(Ok(message)) => {
                    if let Some(drain) = drain_of(&message.message) {
                        deadline = deadline.max(tokio::time::Instant::now() + drain + BYE_TIMEOUT);
                    }
                    received.push(message);
                }
                Ok(Err(ClientError::Closed)) | Err(_) => return Ok(received),
                Ok(Err(err)) => return Err(err),
            }
        }
    }

    /// Sends `bye` only; read the answer with [`Client::recv`] until
    /// [`ClientError::Closed`] (what [`Client::bye`] does).
    pub async fn send_bye(&mut self) -> Result<(), ClientError> {
        let (done, sent) = oneshot::channel();
        if self
            .outgoing
            .send((NodeMessage::Bye {}, done))
            .await
            .is_err()
        {
            return Err(ClientError::Closed);
        }
        sent.await
            .map_err(|_| ClientError::Closed)?
            .map_err(LineError::Io)?;
        Ok(())
    }

    pub fn role(&self) -> Role {
        self.role
    }

    pub fn heartbeat_ms(&self) -> u64 {
        self.heartbeat_ms
    }

    /// The protocol version the gateway took (1 after a fallback).
    pub fn version(&self) -> u32 {
        self.version
    }

    /// Where the heartbeats go as UDP datagrams; `None`: TCP `hb` lines.
    pub fn udp_heartbeats(&self) -> Option<SocketAddr> {
        self.udp_target
    }

    /// Routes this node serves now with their ports, ascending by route.
    pub fn route_ports(&self) -> &BTreeMap<Route, Vec<u16>> {
        &self.routes
    }

    /// Routes this node serves now, ascending.
    pub fn routes(&self) -> Vec<Route> {
        self.routes.keys().copied().collect()
    }

    /// Ports this node serves now (every port of every route), ascending.
    pub fn ports(&self) -> Vec<u16> {
        let mut ports: Vec<u16> = self.routes.values().flatten().copied().collect();
        ports.sort_unstable();
        ports
    }
}

/// A socket for `welcome`'s `hb_udp`: from the node's address (`source`,
/// which the gateway checks) to the heartbeat port of the gateway address
/// the TCP connection reached, and the datagram to send. `None` (the node
/// heartbeats over TCP) when no such socket can be made.
async fn udp_heartbeats(
    hb_udp: HbUdp,
    source: IpAddr,
    gateway: IpAddr,
) -> Option<(UdpSocket, [u8; heartbeat::PAYLOAD_LEN])> {
    let made = async {
        let socket = UdpSocket::bind(SocketAddr::new(source, 0)).await?;
        socket
            .connect(SocketAddr::new(gateway, hb_udp.port))
            .await?;
        std::io::Result::Ok(socket)
    };
    match made.await {
        Ok(socket) => Some((
            socket,
            heartbeat::encode(Heartbeat {
                id: hb_udp.id,
                key: hb_udp.key.0,
            }),
        )),
        Err(error) => {
            tracing::warn!(%source, %gateway, port = hb_udp.port, %error,
                "cannot send UDP heartbeats from the node's address; heartbeating over TCP");
            None
        }
    }
}

/// Writes a heartbeat every `interval` (a datagram on `udp`, else an `hb`
/// line), and whatever `queue` asks for.
async fn send_heartbeats(
    mut writer: OwnedWriteHalf,
    udp: Option<(UdpSocket, [u8; heartbeat::PAYLOAD_LEN])>,
    interval: Duration,
    mut queue: mpsc::Receiver<(NodeMessage, oneshot::Sender<std::io::Result<()>>)>,
) {
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let heartbeat = NodeMessage::Hb {}.encode();
    loop {
        tokio::select! {
            _ = ticks.tick() => match &udp {
                // A lost datagram is a missed heartbeat, not a lost gateway
                // (an ICMP error of an earlier one is reported here too).
                Some((socket, datagram)) => {
                    let _ = socket.send(datagram).await;
                }
                None => {
                    if writer.write_all(heartbeat.as_bytes()).await.is_err() {
                        return;
                    }
                }
            },
            request = queue.recv() => match request {
                Some((message, done)) => {
                    let _ = done.send(writer.write_all(message.encode().as_bytes()).await);
                }
                None => return,
            },
        }
    }
}
