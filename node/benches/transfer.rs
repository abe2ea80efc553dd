//! Pulling one model payload over 127.0.0.1 three ways in the same run (issues 4 and 7): the
//! time from sending a request to holding the whole response.
//!
//! - `libp2p/medmesh`: two swarms from [`network::build_swarm`] (every behaviour the node runs,
//!   both keys on the roster); the requester asks `behaviour.payload` for a content id and the
//!   responder answers `Response::Payload`, as the node's event loop does.
//! - `libp2p/bare_libp2p`: the same transport (TCP with nodelay, Noise, yamux) and nothing but a
//!   request-response behaviour with a plain length-prefixed codec. Baseline of `medmesh`: the
//!   goal is at least 0.85× its throughput (a time ratio of at most 1.18×).
//! - `raw_tcp`: a tokio TCP stream, a length prefix and the payload, read fully into a fresh
//!   buffer. Baseline of `bare_libp2p`: what encryption, multiplexing and libp2p add.
//!
//! Connections are made, and have settled, before anything is measured; every pull receives
//! the payload into a newly allocated buffer, as a node does. Groups `transfer_4MB` and
//! `transfer_40MB` move the bytes of 1M and 10M `f32` parameters.
//!
//! Criterion measures the three one after another, so on a shared machine a change of load
//! between them shows up in their ratios. `TRANSFER_PAIRED=<rounds>` adds a paired check after
//! the groups: the three ways alternate, round by round, and their medians are printed as a
//! markdown table (`TRANSFER_PAIRED=20` takes about 20 s).

#![allow(missing_docs)] // criterion_group! generates undocumented items

use std::io;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group};
use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, StreamExt};
use libp2p::swarm::SwarmEvent;
use libp2p::{Multiaddr, PeerId, StreamProtocol, Swarm, SwarmBuilder, noise, request_response};
use libp2p::{tcp, yamux};
use medmesh_node::network::{self, Behaviour, Event, NetworkConfig, Response};
use medmesh_protocol::identity::ContentId;
use medmesh_protocol::roster::{Role, Roster};
use medmesh_testkit::{key, member};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Runtime;

/// The content id the requester asks for.
const ID: ContentId = ContentId([7; 32]);
/// Largest response the baselines accept (the node's own cap is `wire::MAX_PAYLOAD`).
const MAX_BYTES: usize = 64 << 20;
const BARE_PROTOCOL: StreamProtocol = StreamProtocol::new("/bench/pull/1.0.0");
/// Idle connections are kept open this long, as the node's default config does.
const IDLE: Duration = Duration::from_secs(60);

fn payload(len: usize) -> Bytes {
    (0..len)
        .map(|i| (i * 7 % 251) as u8)
        .collect::<Vec<_>>()
        .into()
}

fn loopback() -> Multiaddr {
    "/ip4/127.0.0.1/tcp/0".parse().expect("address")
}

/// The first listen address of `swarm`, with its peer id.
async fn listening<B: libp2p::swarm::NetworkBehaviour>(swarm: &mut Swarm<B>) -> Multiaddr {
    loop {
        if let SwarmEvent::NewListenAddr { address, .. } = swarm.select_next_some().await {
            return address
                .with_p2p(*swarm.local_peer_id())
                .expect("no /p2p yet");
        }
    }
}

// --- (a) the node's own networking ------------------------------------------------------------

/// The roster of mesh `bench` whose hospitals hold [`key`]`(n)` for each `n` of `members`.
fn roster(members: &[u8]) -> Roster {
    let members = members.iter().map(|&n| member(n, Role::Hospital)).collect();
    Roster::genesis("bench", 1, members).expect("valid roster")
}

fn node_config(bootstrap: Vec<Multiaddr>) -> NetworkConfig {
    NetworkConfig {
        listen: vec![loopback()],
        bootstrap,
        mdns: false,
        ..NetworkConfig::default()
    }
}

/// Two member swarms on loopback; the responder answers on a runtime task from then on.
/// Returns the requester and the responder's peer id once each sees the other subscribed to the
/// mesh topic (connection, identify and gossipsub set-up done).
fn medmesh_pair(rt: &Runtime, payload: Bytes) -> (Swarm<Behaviour>, PeerId) {
    rt.block_on(async {
        let (ka, kb) = (key(1), key(2));
        let roster = roster(&[1, 2]);
        let mut responder =
            network::build_swarm(&ka, &node_config(Vec::new()), &roster).expect("responder");
        let address = listening(&mut responder).await;
        let mut requester =
            network::build_swarm(&kb, &node_config(vec![address]), &roster).expect("requester");
        let (a, b) = (*responder.local_peer_id(), *requester.local_peer_id());
        let (mut a_sees_b, mut b_sees_a) = (false, false);
        while !(a_sees_b && b_sees_a) {
            tokio::select! {
                event = responder.select_next_some() => a_sees_b |= subscribed(&event, b),
                event = requester.select_next_some() => b_sees_a |= subscribed(&event, a),
            }
        }
        tokio::spawn(serve_medmesh(responder, payload));
        (requester, a)
    })
}

fn subscribed(event: &SwarmEvent<Event>, who: PeerId) -> bool {
    matches!(
        event,
        SwarmEvent::Behaviour(Event::Gossip(libp2p::gossipsub::Event::Subscribed { peer_id, .. }))
            if *peer_id == who
    )
}

/// Answers payload requests as the node does: the payload it holds under that id, or not found.
async fn serve_medmesh(mut swarm: Swarm<Behaviour>, payload: Bytes) {
    loop {
        if let SwarmEvent::Behaviour(Event::Payload(request_response::Event::Message {
            message:
                request_response::Message::Request {
                    request, channel, ..
                },
            ..
        })) = swarm.select_next_some().await
        {
            let response = if request == ID {
                Response::Payload(payload.clone())
            } else {
                Response::NotFound
            };
            // The requester gave up only if the bench is already failing.
            let _ = swarm
                .behaviour_mut()
                .payload
                .send_response(channel, response);
        }
    }
}

async fn pull_medmesh(swarm: &mut Swarm<Behaviour>, from: PeerId) -> Bytes {
    let sent = swarm.behaviour_mut().payload.send_request(&from, ID);
    loop {
        match swarm.select_next_some().await {
            SwarmEvent::Behaviour(Event::Payload(request_response::Event::Message {
                message:
                    request_response::Message::Response {
                        request_id,
                        response,
                    },
                ..
            })) if request_id == sent => match response {
                Response::Payload(bytes) => return bytes,
                Response::NotFound => panic!("the responder does not hold the payload"),
            },
            SwarmEvent::Behaviour(Event::Payload(request_response::Event::OutboundFailure {
                error,
                ..
            })) => panic!("pull failed: {error}"),
            _ => {}
        }
    }
}

// --- (b) bare libp2p request-response -----------------------------------------------------------

/// Requests and responses as one length-prefixed frame each (little-endian `u64` prefix); a
/// response is read into a buffer of its announced length in one `read_exact`.
#[derive(Debug, Clone, Default)]
struct FrameCodec;

async fn read_frame<T: AsyncRead + Unpin + Send>(io: &mut T, limit: usize) -> io::Result<Vec<u8>> {
    let mut prefix = [0u8; 8];
    io.read_exact(&mut prefix).await?;
    let len = usize::try_from(u64::from_le_bytes(prefix))
        .ok()
        .filter(|&len| len <= limit)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "frame too large"))?;
    let mut buf = vec![0u8; len];
    io.read_exact(&mut buf).await?;
    Ok(buf)
}

async fn write_frame<T: AsyncWrite + Unpin + Send>(io: &mut T, bytes: &[u8]) -> io::Result<()> {
    io.write_all(&(bytes.len() as u64).to_le_bytes()).await?;
    io.write_all(bytes).await
}

impl request_response::Codec for FrameCodec {
    type Protocol = StreamProtocol;
    type Request = Vec<u8>;
    type Response = Bytes;

    async fn read_request<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Vec<u8>>
    where
        T: AsyncRead + Unpin + Send,
    {
        read_frame(io, 1024).await
    }

    async fn read_response<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Bytes>
    where
        T: AsyncRead + Unpin + Send,
    {
        Ok(read_frame(io, MAX_BYTES).await?.into())
    }

    async fn write_request<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        request: Vec<u8>,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        write_frame(io, &request).await
    }

    async fn write_response<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        response: Bytes,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        write_frame(io, &response).await
    }
}

type Bare = request_response::Behaviour<FrameCodec>;

fn bare_swarm() -> Swarm<Bare> {
    let Ok(builder) = SwarmBuilder::with_new_identity()
        .with_tokio()
        .with_tcp(
            tcp::Config::default().nodelay(true),
            noise::Config::new,
            yamux::Config::default,
        )
        .expect("tcp + noise + yamux")
        .with_behaviour(|_| {
            Bare::new(
                [(BARE_PROTOCOL, request_response::ProtocolSupport::Full)],
                request_response::Config::default().with_request_timeout(IDLE),
            )
        });
    builder
        .with_swarm_config(|c| c.with_idle_connection_timeout(IDLE))
        .build()
}

/// Two bare swarms, connected; the responder answers on a runtime task from then on.
fn bare_pair(rt: &Runtime, payload: Bytes) -> (Swarm<Bare>, PeerId) {
    rt.block_on(async {
        let mut responder = bare_swarm();
        responder.listen_on(loopback()).expect("listens");
        let address = listening(&mut responder).await;
        let mut requester = bare_swarm();
        requester.dial(address).expect("dials");
        let (mut a_connected, mut b_connected) = (false, false);
        while !(a_connected && b_connected) {
            tokio::select! {
                event = responder.select_next_some() => {
                    a_connected |= matches!(event, SwarmEvent::ConnectionEstablished { .. });
                }
                event = requester.select_next_some() => {
                    b_connected |= matches!(event, SwarmEvent::ConnectionEstablished { .. });
                }
            }
        }
        let id = *responder.local_peer_id();
        tokio::spawn(serve_bare(responder, payload));
        (requester, id)
    })
}

async fn serve_bare(mut swarm: Swarm<Bare>, payload: Bytes) {
    loop {
        if let SwarmEvent::Behaviour(request_response::Event::Message {
            message: request_response::Message::Request { channel, .. },
            ..
        }) = swarm.select_next_some().await
        {
            let _ = swarm
                .behaviour_mut()
                .send_response(channel, payload.clone());
        }
    }
}

async fn pull_bare(swarm: &mut Swarm<Bare>, from: PeerId) -> Bytes {
    let sent = swarm.behaviour_mut().send_request(&from, ID.0.to_vec());
    loop {
        match swarm.select_next_some().await {
            SwarmEvent::Behaviour(request_response::Event::Message {
                message:
                    request_response::Message::Response {
                        request_id,
                        response,
                    },
                ..
            }) if request_id == sent => return response,
            SwarmEvent::Behaviour(request_response::Event::OutboundFailure { error, .. }) => {
                panic!("pull failed: {error}")
            }
            _ => {}
        }
    }
}

// --- (c) raw loopback TCP ----------------------------------------------------------------------

/// A connected TCP stream to a task that answers every 32-byte request with a length prefix
/// and the payload.
fn tcp_pair(rt: &Runtime, payload: Bytes) -> TcpStream {
    rt.block_on(async {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("binds");
        let address = listener.local_addr().expect("address");
        tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.expect("accepts");
            stream.set_nodelay(true).expect("nodelay");
            let mut request = [0u8; 32];
            while stream.read_exact(&mut request).await.is_ok() {
                stream
                    .write_all(&(payload.len() as u64).to_le_bytes())
                    .await
                    .expect("writes");
                stream.write_all(&payload).await.expect("writes");
            }
        });
        let stream = TcpStream::connect(address).await.expect("connects");
        stream.set_nodelay(true).expect("nodelay");
        stream
    })
}

async fn pull_tcp(stream: &mut TcpStream) -> Vec<u8> {
    stream.write_all(&ID.0).await.expect("writes");
    let mut prefix = [0u8; 8];
    stream.read_exact(&mut prefix).await.expect("reads");
    let len = usize::try_from(u64::from_le_bytes(prefix)).expect("length");
    assert!(len <= MAX_BYTES, "frame too large");
    let mut buf = vec![0u8; len];
    stream.read_exact(&mut buf).await.expect("reads");
    buf
}

// --- the three ways, side by side -------------------------------------------------------------

/// One way to pull; `id` is its criterion function id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Way {
    RawTcp,
    Bare,
    Medmesh,
}

impl Way {
    const ALL: [Way; 3] = [Way::RawTcp, Way::Bare, Way::Medmesh];

    fn id(self) -> &'static str {
        match self {
            Way::RawTcp => "raw_tcp",
            Way::Bare => "libp2p/bare_libp2p",
            Way::Medmesh => "libp2p/medmesh",
        }
    }

    /// The way it is compared with (as `scripts/bench-report` pairs them).
    fn baseline(self) -> Option<Way> {
        match self {
            Way::RawTcp => None,
            Way::Bare => Some(Way::RawTcp),
            Way::Medmesh => Some(Way::Bare),
        }
    }
}

/// The three ways, connected and settled, on one runtime with two workers (as `medmesh run`
/// has); requesters run on the calling thread, responders on the workers.
struct Links {
    rt: Runtime,
    len: usize,
    tcp: TcpStream,
    bare: (Swarm<Bare>, PeerId),
    medmesh: (Swarm<Behaviour>, PeerId),
}

impl Links {
    fn new(len: usize) -> Self {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let payload = payload(len);
        let tcp = tcp_pair(&rt, payload.clone());
        let bare = bare_pair(&rt, payload.clone());
        let medmesh = medmesh_pair(&rt, payload);
        Self {
            rt,
            len,
            tcp,
            bare,
            medmesh,
        }
    }

    /// One pull, from the request to the whole payload in hand (the buffer is dropped here).
    fn pull(&mut self, way: Way) {
        let got = match way {
            Way::RawTcp => self.rt.block_on(pull_tcp(&mut self.tcp)).len(),
            Way::Bare => {
                let (swarm, from) = &mut self.bare;
                self.rt.block_on(pull_bare(swarm, *from)).len()
            }
            Way::Medmesh => {
                let (swarm, from) = &mut self.medmesh;
                self.rt.block_on(pull_medmesh(swarm, *from)).len()
            }
        };
        assert_eq!(got, self.len);
    }

    fn close(self) {
        // The responders' tasks end with the runtime.
        self.rt.shutdown_timeout(Duration::from_secs(1));
    }
}

// --- the groups ---------------------------------------------------------------------------------

const SIZES: [(&str, usize); 2] = [("transfer_4MB", 4_000_000), ("transfer_40MB", 40_000_000)];

fn transfer(c: &mut Criterion) {
    for (name, len) in SIZES {
        let mut links = Links::new(len);
        let mut group = c.benchmark_group(name);
        group.throughput(Throughput::Bytes(len as u64));
        if len > 10_000_000 {
            group.sample_size(10);
        }
        for way in Way::ALL {
            group.bench_function(way.id(), |b| b.iter(|| links.pull(way)));
        }
        group.finish();
        links.close();
    }
}

// --- the paired check ---------------------------------------------------------------------------

/// Environment variable that asks for the paired check, and its number of rounds.
const PAIRED: &str = "TRANSFER_PAIRED";

/// This process's CPU time (all threads: requesters and responders) in clock ticks, where
/// /proc has it.
fn cpu_ticks() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let fields: Vec<&str> = stat.rsplit_once(") ")?.1.split(' ').collect();
    Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
}

/// A figure to three significant digits, as `scripts/bench-report` prints them.
fn three_digits(x: f64) -> String {
    let decimals = if x >= 100.0 {
        0
    } else if x >= 10.0 {
        1
    } else {
        2
    };
    format!("{x:.decimals$}")
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// Criterion measures the ways one after another, so on a shared machine a change of load
/// between them lands in their ratio. This check alternates them instead: in every round each
/// way pulls about 40 MB (the order rotating from round to round), and the medians over rounds
/// are compared. Prints a markdown table; CPU time is that of both ends together.
fn paired_check(rounds: usize) {
    println!("\nPaired check, {rounds} rounds:\n");
    println!(
        "| group | benchmark | median | throughput | CPU per pull | vs baseline (throughput) |"
    );
    println!("|---|---|---:|---:|---:|---|");
    for (name, len) in SIZES {
        let mut links = Links::new(len);
        let per_round = (40_000_000 / len).clamp(1, 10);
        let mut times: [Vec<f64>; 3] = Default::default();
        let mut ticks = [Some(0u64); 3];
        for way in Way::ALL {
            links.pull(way); // warm-up
        }
        for round in 0..rounds {
            for k in 0..Way::ALL.len() {
                let i = (round + k) % Way::ALL.len();
                let before = cpu_ticks();
                let start = Instant::now();
                for _ in 0..per_round {
                    links.pull(Way::ALL[i]);
                }
                times[i].push(start.elapsed().as_secs_f64() / per_round as f64);
                ticks[i] = ticks[i]
                    .zip(before.zip(cpu_ticks()))
                    .map(|(t, (b, a))| t + a - b);
            }
        }
        links.close();
        let medians: Vec<f64> = times.into_iter().map(median).collect();
        for (i, way) in Way::ALL.into_iter().enumerate() {
            let cpu = ticks[i].map_or_else(String::new, |t| {
                let per_pull = t as f64 / CLOCK_TICKS_PER_SECOND / (rounds * per_round) as f64;
                format!("{} ms", three_digits(per_pull * 1e3))
            });
            let against = way.baseline().map_or_else(String::new, |base| {
                let b = Way::ALL.iter().position(|w| *w == base).expect("listed");
                format!("`{}` {:.3}×", base.id(), medians[b] / medians[i])
            });
            println!(
                "| `{name}` | `{}` | {} ms | {} MB/s | {cpu} | {against} |",
                way.id(),
                three_digits(medians[i] * 1e3),
                three_digits(len as f64 / medians[i] / 1e6),
            );
        }
    }
}

/// Linux's USER_HZ, the unit of utime and stime in /proc (100 on every mainstream build).
const CLOCK_TICKS_PER_SECOND: f64 = 100.0;

criterion_group!(benches, transfer);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
    if let Some(rounds) = std::env::var(PAIRED).ok().and_then(|v| v.parse().ok()) {
        paired_check(rounds);
    }
}
