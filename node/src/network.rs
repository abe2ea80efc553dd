//! The libp2p layer: one [`Behaviour`] for the whole peer, the [`PayloadCodec`] that moves model
//! payloads, and the mapping between member ids and libp2p peer ids.
//!
//! Gossip small, transfer big: gossipsub carries the small signed announcements, validation
//! reports and roster updates (its own signing is off — every message is already signed by its
//! author at the application level, and libp2p's signing is 7× slower, see LIMITS.md);
//! request-response pulls payloads by content id, and a second request-response protocol syncs
//! the roster chain with every member on connection (so a member that was offline while an
//! update spread, or a newly admitted hospital, learns it). Identify, Kademlia and mDNS find members;
//! relay client, DCUtR and AutoNAT let a hospital behind NAT join through a member that runs the
//! relay server. Only peers whose key is on the current roster may hold a connection
//! ([`allow_members`]); everything else is refused before any protocol runs.
//!
//! This module builds the swarm and decodes bytes off the wire; it never decides what a message
//! means. The node's event loop hands gossip to the protocol's `Peer`, reports the verdict back
//! with [`acceptance`], and answers payload requests from the `Peer`. Nothing here trusts a length
//! a peer sends: every frame is capped before anything is allocated for it.

use std::collections::HashSet;
use std::convert::Infallible;
use std::io;
use std::num::NonZeroU32;
use std::time::Duration;

use bytes::Bytes;
use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, StreamExt};
use libp2p::core::transport::TransportError;
use libp2p::multiaddr::Protocol;
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{
    Multiaddr, PeerId, StreamProtocol, Swarm, SwarmBuilder, allow_block_list, autonat,
    connection_limits, dcutr, gossipsub, identify, kad, mdns, noise, ping, relay, request_response,
    tcp, yamux,
};
use medmesh_protocol::identity::{ContentId, Digest, Keypair, MemberId};
use medmesh_protocol::peer::Verdict;
use medmesh_protocol::roster::{Role, Roster, SignedRoster};
use medmesh_protocol::wire::{self, Message};
use prometheus_client::metrics::gauge::Gauge;
use serde::{Deserialize, Serialize};

/// Protocol of payload pulls (request-response).
pub const PAYLOAD_PROTOCOL: StreamProtocol = StreamProtocol::new("/medmesh/payload/1.0.0");
/// Protocol of roster chain sync (request-response, JSON).
pub const ROSTER_PROTOCOL: StreamProtocol = StreamProtocol::new("/medmesh/roster/1.0.0");
/// Most roster versions sent in one sync response; a peer further behind asks again.
pub const ROSTER_BATCH: usize = 64;
/// Protocol of the mesh's own Kademlia DHT (kept apart from the public IPFS DHT).
pub const KAD_PROTOCOL: StreamProtocol = StreamProtocol::new("/medmesh/kad/1.0.0");
/// Protocol version announced by identify.
pub const IDENTIFY_PROTOCOL: &str = "/medmesh/1.0.0";

/// Largest roster sync request (a version number in JSON).
const MAX_ROSTER_REQUEST_BYTES: u64 = 1024;
/// Largest roster sync response: [`ROSTER_BATCH`] versions of rosters that each fit in a gossip
/// message.
const MAX_ROSTER_RESPONSE_BYTES: u64 = 64 * 1024 * 1024;
/// Largest payload request on the wire: a length prefix and a `wire::Message::Request` are about
/// 45 bytes.
const MAX_REQUEST_BYTES: usize = 1024;
/// Room for gossipsub's protobuf framing (topic, flags) around the application bytes, so a
/// message of exactly `max_gossip_bytes` still fits in one frame.
const GOSSIP_FRAME_OVERHEAD: usize = 1024;
/// Most that is reserved up front for a payload before its bytes arrive: a claimed length is
/// only believed as far as the data actually delivered.
const PREALLOCATE: usize = 16 * 1024 * 1024;
/// How far ahead of the delivered bytes the read buffer is zero-filled.
const READ_CHUNK: usize = 1024 * 1024;
/// BLAKE3 context of gossip message ids.
const MESSAGE_ID_CONTEXT: &str = "medmesh 2026-11 gossip message id v1";
/// Tags of a payload response.
const NOT_FOUND: u8 = 0;
const FOUND: u8 = 1;

/// What went wrong building or driving the network layer.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The member key could not be turned into a libp2p identity.
    #[error("member key is not a usable libp2p ed25519 key: {0}")]
    Key(#[from] libp2p::identity::DecodingError),
    /// A member id is not an ed25519 public key, so it has no peer id.
    #[error("member id {0} is not an ed25519 public key")]
    Member(MemberId),
    /// The Noise handshake configuration could not be made.
    #[error("noise: {0}")]
    Noise(#[from] noise::Error),
    /// Gossipsub refused its configuration, scoring parameters or subscription.
    #[error("gossipsub: {0}")]
    Gossipsub(String),
    /// mDNS could not start (no multicast socket).
    #[error("mDNS: {0}")]
    Mdns(#[source] io::Error),
    /// A listen address could not be used.
    #[error("cannot listen on {address}: {source}")]
    Listen {
        /// The address from the config.
        address: Multiaddr,
        /// Why the transport refused it.
        source: TransportError<io::Error>,
    },
    /// A listen port is taken by another process. libp2p listens with `SO_REUSEPORT` (outgoing
    /// connections leave from the listening port, which hole punching needs), so without this
    /// check a second node on the same port would start and silently share the incoming
    /// connections.
    #[error(
        "cannot listen on {address}: TCP port {port} is already in use by another process \
         (another medmesh node?); choose another port in `[network] listen`"
    )]
    PortInUse {
        /// The address from the config.
        address: Multiaddr,
        /// The port.
        port: u16,
    },
    /// A bootstrap address does not end in `/p2p/<peer id>`.
    #[error("bootstrap address {0} must end with /p2p/<peer id>")]
    BootstrapPeerId(Multiaddr),
    /// The config breaks a rule.
    #[error("invalid network config: {0}")]
    Config(&'static str),
    /// The config asks for QUIC but this binary was built without the `quic` feature.
    #[error("QUIC is enabled in the config but medmesh-node was built without the `quic` feature")]
    QuicUnavailable,
}

/// The TCP port a node listens on unless its config says otherwise.
pub const DEFAULT_PORT: u16 = 4001;

/// How the peer joins the network. One section of the node's TOML config.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NetworkConfig {
    /// Addresses to listen on (`/ip4/0.0.0.0/tcp/4001`, `/ip4/0.0.0.0/udp/4001/quic-v1`). The
    /// default is TCP port 4001 on every interface: a fixed port, so the roster can name it.
    pub listen: Vec<Multiaddr>,
    /// Members to dial at start, each ending in `/p2p/<peer id>`; also seeded into Kademlia.
    pub bootstrap: Vec<Multiaddr>,
    /// Find members on the local network with mDNS (a laptop demo). Off by default: it
    /// announces the node to everyone on the LAN.
    pub mdns: bool,
    /// Offer relay to members behind NAT (needs a publicly reachable address). A member whose
    /// roster role is `relay` always does.
    pub relay_server: bool,
    /// As a relay: bytes one relayed connection may carry before the relay resets it; 0 for no
    /// limit (the default: relays serve members only, and a limit would cut payloads off
    /// mid-transfer when two members cannot connect directly).
    pub relay_max_circuit_bytes: u64,
    /// As a relay: seconds one relayed connection may last before the relay resets it (the
    /// members then reconnect); at least 1.
    pub relay_max_circuit_seconds: u64,
    /// Enable the QUIC transport (the binary needs the `quic` cargo feature).
    pub quic: bool,
    /// A connection no protocol uses is closed after this long (`idle_connection_timeout_ms`
    /// in TOML; the older `idle_connection_timeout` is read too).
    #[serde(
        with = "millis",
        rename = "idle_connection_timeout_ms",
        alias = "idle_connection_timeout"
    )]
    pub idle_connection_timeout: Duration,
    /// Most connections held with one peer (a relayed one and a direct one, a dial race).
    pub max_connections_per_peer: u32,
    /// Most connections held in total, and most pending in each direction.
    pub max_connections: u32,
    /// Largest gossip message (gossipsub's `max_transmit_size` adds framing room to it).
    pub max_gossip_bytes: usize,
    /// Largest payload response read from a peer.
    pub max_payload_bytes: usize,
    /// A payload request with no complete response by then fails (`request_timeout_ms` in
    /// TOML; the older `request_timeout` is read too).
    #[serde(
        with = "millis",
        rename = "request_timeout_ms",
        alias = "request_timeout"
    )]
    pub request_timeout: Duration,
    /// Payload requests one member may make at once before the rate below holds it back (a
    /// token bucket per member). An honest member asks for one version of this node per
    /// round, a validator for each final version, a restarted one for the few it missed.
    pub payload_request_burst: u32,
    /// Payload requests per second one member is allowed on average (its bucket refills at this
    /// rate). A request beyond its allowance is answered "not found" without reading the store
    /// and counted as `rate_limited` (`medmesh_rejections_total`). The default, 32 a second
    /// after a burst of 64, is far above one pull per round even with rounds of 50 ms.
    pub payload_requests_per_second: u32,
}

impl Default for NetworkConfig {
    fn default() -> Self {
        Self {
            listen: vec![
                Multiaddr::empty()
                    .with(Protocol::Ip4(std::net::Ipv4Addr::UNSPECIFIED))
                    .with(Protocol::Tcp(DEFAULT_PORT)),
            ],
            bootstrap: Vec::new(),
            mdns: false,
            relay_server: false,
            relay_max_circuit_bytes: 0,
            relay_max_circuit_seconds: 24 * 3600,
            quic: false,
            idle_connection_timeout: Duration::from_secs(60),
            max_connections_per_peer: 4,
            max_connections: 256,
            max_gossip_bytes: wire::MAX_GOSSIP,
            max_payload_bytes: wire::MAX_PAYLOAD,
            request_timeout: Duration::from_secs(60),
            payload_request_burst: 64,
            payload_requests_per_second: 32,
        }
    }
}

impl NetworkConfig {
    /// Checks the rules that span fields or the build: sizes within the wire limits, non-zero
    /// limits and timeouts, bootstrap addresses that name their peer, QUIC only when built in.
    pub fn check(&self) -> Result<(), Error> {
        if !(1024..=wire::MAX_GOSSIP).contains(&self.max_gossip_bytes) {
            return Err(Error::Config(
                "max_gossip_bytes must be between 1 KiB and the wire limit (256 KiB)",
            ));
        }
        if !(1..=wire::MAX_PAYLOAD).contains(&self.max_payload_bytes) {
            return Err(Error::Config(
                "max_payload_bytes must be between 1 and the wire limit (512 MiB)",
            ));
        }
        if self.max_connections == 0 || self.max_connections_per_peer == 0 {
            return Err(Error::Config("connection limits must be at least 1"));
        }
        if !(1..=u64::from(u32::MAX)).contains(&self.relay_max_circuit_seconds) {
            return Err(Error::Config(
                "relay_max_circuit_seconds must be between 1 and 4294967295",
            ));
        }
        if self.idle_connection_timeout.is_zero() || self.request_timeout.is_zero() {
            return Err(Error::Config("timeouts must be longer than zero"));
        }
        if self.payload_request_burst == 0 || self.payload_requests_per_second == 0 {
            return Err(Error::Config(
                "payload_request_burst and payload_requests_per_second must be at least 1",
            ));
        }
        if let Some(address) = self
            .bootstrap
            .iter()
            .find(|a| !matches!(a.iter().last(), Some(Protocol::P2p(_))))
        {
            return Err(Error::BootstrapPeerId(address.clone()));
        }
        if self.quic && !cfg!(feature = "quic") {
            return Err(Error::QuicUnavailable);
        }
        Ok(())
    }
}

/// Durations as whole milliseconds, as in the protocol's config.
mod millis {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub(super) fn serialize<S: Serializer>(value: &Duration, s: S) -> Result<S::Ok, S::Error> {
        u64::try_from(value.as_millis())
            .unwrap_or(u64::MAX)
            .serialize(s)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_millis)
    }
}

/// Everything the peer speaks, as one libp2p behaviour. The allow list and the connection limits
/// come first so a refused connection is turned away before any other behaviour sets up state.
#[derive(NetworkBehaviour)]
#[behaviour(to_swarm = "Event")]
pub struct Behaviour {
    /// Only roster members may connect; see [`allow_members`].
    pub allowed: allow_block_list::Behaviour<allow_block_list::AllowedPeers>,
    /// Caps on established and pending connections.
    pub limits: connection_limits::Behaviour,
    /// Small signed messages (announcements, reports, roster updates), validated by the app.
    pub gossipsub: gossipsub::Behaviour,
    /// Payload pulls by content id.
    pub payload: request_response::Behaviour<PayloadCodec>,
    /// Roster chain sync with each member on connection.
    pub roster: request_response::json::Behaviour<RosterRequest, RosterResponse>,
    /// Exchanges listen addresses and protocols with every connected member.
    pub identify: identify::Behaviour,
    /// The mesh's DHT, for finding members' addresses.
    pub kademlia: kad::Behaviour<kad::store::MemoryStore>,
    /// Local-network discovery, when the config enables it.
    pub mdns: Toggle<mdns::tokio::Behaviour>,
    /// Reaching and being reached through a relaying member.
    pub relay_client: relay::client::Behaviour,
    /// Relaying for members behind NAT, when the config enables it.
    pub relay_server: Toggle<relay::Behaviour>,
    /// Upgrades relayed connections to direct ones by hole punching.
    pub dcutr: dcutr::Behaviour,
    /// Learns whether this peer is reachable from outside (AutoNAT v1).
    pub autonat: autonat::Behaviour,
    /// Measures each connection's round-trip time (every 15 s), for the dashboard.
    pub ping: ping::Behaviour,
}

/// A payload pull as request-response sees it.
pub type PayloadEvent = request_response::Event<ContentId, Response>;
/// A roster sync as request-response sees it.
pub type RosterEvent = request_response::Event<RosterRequest, RosterResponse>;

/// "Send me the roster versions after this one."
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RosterRequest {
    /// The mesh the requester follows (a member of another mesh gets nothing).
    pub mesh: String,
    /// The requester's current roster version.
    pub after: u64,
}

/// The roster versions after the requested one, oldest first, at most [`ROSTER_BATCH`]. The
/// requester checks every signature itself; nothing here is trusted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RosterResponse {
    /// Signed roster versions, consecutive, oldest first.
    pub updates: Vec<SignedRoster>,
}

impl RosterResponse {
    /// The answer from a chain's `history` to `request`.
    pub fn answer(mesh: &str, history: &[SignedRoster], request: &RosterRequest) -> Self {
        let updates = if request.mesh == mesh {
            history
                .iter()
                .filter(|r| r.roster().version > request.after)
                .take(ROSTER_BATCH)
                .cloned()
                .collect()
        } else {
            Vec::new()
        };
        Self { updates }
    }
}

/// What the [`Behaviour`] reports to the event loop, one variant per protocol.
#[derive(Debug)]
pub enum Event {
    /// A gossip message to validate, or a subscription change.
    Gossip(gossipsub::Event),
    /// An inbound payload request, a response, or a failure.
    Payload(PayloadEvent),
    /// An inbound roster sync request, a response, or a failure.
    Roster(RosterEvent),
    /// A member told us its addresses and protocols.
    Identify(Box<identify::Event>),
    /// A DHT event (routing updates, query results).
    Kademlia(kad::Event),
    /// Peers found or expired on the local network.
    Mdns(mdns::Event),
    /// Relay reservations and circuits as a client.
    RelayClient(relay::client::Event),
    /// Relay reservations and circuits as a server.
    RelayServer(relay::Event),
    /// Hole punching results.
    Dcutr(dcutr::Event),
    /// NAT status changes and probes.
    Autonat(autonat::Event),
    /// A round-trip time measured, or a ping that failed.
    Ping(ping::Event),
}

macro_rules! event_from {
    ($($variant:ident($event:ty)),* $(,)?) => {
        $(impl From<$event> for Event {
            fn from(event: $event) -> Self {
                Event::$variant(event)
            }
        })*
    };
}

event_from!(
    Gossip(gossipsub::Event),
    Payload(PayloadEvent),
    Roster(RosterEvent),
    Kademlia(kad::Event),
    Mdns(mdns::Event),
    RelayClient(relay::client::Event),
    RelayServer(relay::Event),
    Dcutr(dcutr::Event),
    Autonat(autonat::Event),
    Ping(ping::Event),
);

impl From<identify::Event> for Event {
    fn from(event: identify::Event) -> Self {
        Event::Identify(Box::new(event))
    }
}

/// The allow list and the connection limits never report anything.
impl From<Infallible> for Event {
    fn from(never: Infallible) -> Self {
        match never {}
    }
}

/// The answer to a payload request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Response {
    /// The raw payload bytes (checked by the `Peer` against the announced digest).
    Payload(Bytes),
    /// The peer does not hold that payload.
    NotFound,
}

/// Why bytes on a payload stream were refused. Carried inside the `io::Error` the codec returns
/// (kind `InvalidData`), so request-response reports it as an I/O failure of that request.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum CodecError {
    /// The length prefix claims more than the limit; nothing was allocated for it.
    #[error("frame of {claimed} bytes exceeds the limit of {limit} bytes")]
    TooLarge {
        /// Length the peer claimed.
        claimed: u64,
        /// Limit that applies.
        limit: usize,
    },
    /// The request is not a `wire::Message::Request`.
    #[error("not a payload request: {0}")]
    Request(String),
    /// A response tag other than found / not found.
    #[error("unknown response tag {0}")]
    Tag(u8),
}

impl From<CodecError> for io::Error {
    fn from(error: CodecError) -> Self {
        io::Error::new(io::ErrorKind::InvalidData, error)
    }
}

/// Frames payload requests and responses.
///
/// A request is a length-prefixed `wire::Message::Request(id)`; a response is one tag byte —
/// not found, or found followed by a length-prefixed payload. Prefixes are little-endian `u64`.
/// A read checks the prefix against its cap before reserving anything, reserves at most
/// 16 MiB up front, grows the one buffer only as bytes arrive, and hands it out as [`Bytes`]
/// without a copy.
///
/// While a payload arrives, its bytes read so far are added to the codec's `receiving` gauge,
/// and taken off again when the frame is complete, refused or dropped: what is in flight now.
#[derive(Debug, Clone)]
pub struct PayloadCodec {
    max_payload_bytes: usize,
    receiving: Gauge,
}

impl PayloadCodec {
    /// A codec that refuses responses larger than `max_payload_bytes`.
    pub fn new(max_payload_bytes: usize) -> Self {
        Self::counting(max_payload_bytes, Gauge::default())
    }

    /// The same, counting the bytes of payloads still arriving into `receiving`.
    pub fn counting(max_payload_bytes: usize, receiving: Gauge) -> Self {
        Self {
            max_payload_bytes,
            receiving,
        }
    }
}

/// Takes what it added to a gauge off again when dropped.
struct Arriving<'a> {
    gauge: &'a Gauge,
    added: i64,
}

impl Arriving<'_> {
    fn add(&mut self, n: usize) {
        let n = i64::try_from(n).unwrap_or(i64::MAX);
        self.gauge.inc_by(n);
        self.added = self.added.saturating_add(n);
    }
}

impl Drop for Arriving<'_> {
    fn drop(&mut self) {
        self.gauge.dec_by(self.added);
    }
}

impl Default for PayloadCodec {
    fn default() -> Self {
        Self::new(wire::MAX_PAYLOAD)
    }
}

impl request_response::Codec for PayloadCodec {
    type Protocol = StreamProtocol;
    type Request = ContentId;
    type Response = Response;

    async fn read_request<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<ContentId>
    where
        T: AsyncRead + Unpin + Send,
    {
        let frame = read_frame(io, MAX_REQUEST_BYTES, None).await?;
        match Message::from_bytes(&frame, MAX_REQUEST_BYTES) {
            Ok(Message::Request(id)) => Ok(id),
            Ok(other) => Err(CodecError::Request(format!("a {} message", other.kind())).into()),
            Err(e) => Err(CodecError::Request(e.to_string()).into()),
        }
    }

    async fn read_response<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Response>
    where
        T: AsyncRead + Unpin + Send,
    {
        let mut tag = [0u8; 1];
        io.read_exact(&mut tag).await?;
        match tag[0] {
            NOT_FOUND => Ok(Response::NotFound),
            FOUND => Ok(Response::Payload(Bytes::from(
                read_frame(io, self.max_payload_bytes, Some(&self.receiving)).await?,
            ))),
            other => Err(CodecError::Tag(other).into()),
        }
    }

    async fn write_request<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        id: ContentId,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        write_frame(io, &Message::Request(id).to_bytes()).await
    }

    async fn write_response<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        response: Response,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        match response {
            Response::NotFound => io.write_all(&[NOT_FOUND]).await,
            Response::Payload(bytes) => {
                // The requester would refuse it anyway; fail here, where the cause is clear.
                if bytes.len() > self.max_payload_bytes {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidInput,
                        CodecError::TooLarge {
                            claimed: bytes.len() as u64,
                            limit: self.max_payload_bytes,
                        },
                    ));
                }
                io.write_all(&[FOUND]).await?;
                write_frame(io, &bytes).await
            }
        }
    }
}

async fn write_frame<T: AsyncWrite + Unpin + Send>(io: &mut T, bytes: &[u8]) -> io::Result<()> {
    io.write_all(&(bytes.len() as u64).to_le_bytes()).await?;
    io.write_all(bytes).await
}

/// Reads one length-prefixed frame of at most `limit` bytes into a single buffer, counting the
/// bytes read into `arriving` until the frame is complete.
async fn read_frame<T: AsyncRead + Unpin + Send>(
    io: &mut T,
    limit: usize,
    arriving: Option<&Gauge>,
) -> io::Result<Vec<u8>> {
    let mut prefix = [0u8; 8];
    io.read_exact(&mut prefix).await?;
    let claimed = u64::from_le_bytes(prefix);
    let len = usize::try_from(claimed)
        .ok()
        .filter(|&len| len <= limit)
        .ok_or(CodecError::TooLarge { claimed, limit })?;
    let mut buf = Vec::with_capacity(len.min(PREALLOCATE));
    let mut progress = arriving.map(|gauge| Arriving { gauge, added: 0 });
    let mut filled = 0;
    while filled < len {
        if filled == buf.len() {
            // Zero-fill only a chunk ahead of the data (safe code cannot read into spare
            // capacity); past the reservation the vector grows by doubling, as bytes arrive.
            buf.resize(len.min(filled.saturating_add(READ_CHUNK)), 0);
        }
        let n = io.read(&mut buf[filled..]).await?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        filled += n;
        if let Some(p) = &mut progress {
            p.add(n);
        }
    }
    Ok(buf)
}

/// The gossipsub topic of a mesh: `medmesh/<mesh>/1`.
pub fn topic(mesh: &str) -> gossipsub::IdentTopic {
    gossipsub::IdentTopic::new(format!("medmesh/{mesh}/1"))
}

/// The gossipsub topic of one roster group of a mesh, `medmesh/<mesh>/group/<group>/1`: under
/// two-level averaging, the announcements of rounds that stay inside the group travel there.
pub fn group_topic(mesh: &str, group: &str) -> gossipsub::IdentTopic {
    gossipsub::IdentTopic::new(format!("medmesh/{mesh}/group/{group}/1"))
}

/// Subscribes to a group's topic (scored like the mesh topic), or unsubscribes from the old
/// one when the roster moved this member to another group. Returns the topic now followed.
pub fn follow_group(
    gossipsub: &mut gossipsub::Behaviour,
    old: Option<gossipsub::IdentTopic>,
    new: Option<gossipsub::IdentTopic>,
) -> Option<gossipsub::IdentTopic> {
    if old.as_ref().map(gossipsub::IdentTopic::hash)
        == new.as_ref().map(gossipsub::IdentTopic::hash)
    {
        return new;
    }
    if let Some(old) = &old {
        gossipsub.unsubscribe(old);
    }
    if let Some(topic) = &new {
        // Both fail only without peer scoring, which build_gossipsub always sets up, or for a
        // topic too long for a message, which a checked roster's group name cannot make.
        if let Err(e) = gossipsub.set_topic_params(topic.clone(), topic_score()) {
            tracing::warn!(error = e, topic = %topic, "cannot score the group topic");
        }
        if let Err(e) = gossipsub.subscribe(topic) {
            tracing::warn!(error = %e, topic = %topic, "cannot subscribe to the group topic");
            return None;
        }
    }
    new
}

/// The libp2p peer id of a member (its ed25519 key as an identity multihash).
pub fn peer_id(member: &MemberId) -> Result<PeerId, Error> {
    let key = libp2p::identity::ed25519::PublicKey::try_from_bytes(member.as_bytes())
        .map_err(|_| Error::Member(*member))?;
    Ok(libp2p::identity::PublicKey::from(key).to_peer_id())
}

/// The member id behind a peer id; `None` when the peer id does not embed an ed25519 key.
pub fn member_id(peer: &PeerId) -> Option<MemberId> {
    let multihash = peer.as_ref();
    // 0x00 is the identity multihash: the digest is the protobuf-encoded public key itself.
    if multihash.code() != 0x00 {
        return None;
    }
    let key = libp2p::identity::PublicKey::try_decode_protobuf(multihash.digest()).ok()?;
    Some(MemberId(key.try_into_ed25519().ok()?.to_bytes()))
}

/// The gossipsub validation result for the protocol's verdict: accepted messages are
/// forwarded, ignored ones dropped quietly, rejected ones dropped and counted against the peer
/// that sent them.
pub fn acceptance(verdict: &Verdict) -> gossipsub::MessageAcceptance {
    match verdict {
        Verdict::Accept => gossipsub::MessageAcceptance::Accept,
        Verdict::Ignore(_) => gossipsub::MessageAcceptance::Ignore,
        Verdict::Reject(_) => gossipsub::MessageAcceptance::Reject,
    }
}

/// Builds the swarm of a member: its libp2p identity is its ed25519 member key; TCP with Noise
/// and yamux (and QUIC when built in and enabled), plus the relay client transport. Allows the
/// roster's members, subscribes to the mesh's topic, listens on the configured addresses, seeds
/// Kademlia with the bootstrap addresses and dials them.
///
/// The roster is needed here because only allowed peers can be dialed: a dial to a peer not on
/// the allow list is refused on the spot.
pub fn build_swarm(
    key: &Keypair,
    config: &NetworkConfig,
    roster: &Roster,
) -> Result<Swarm<Behaviour>, Error> {
    let mut swarm = build_swarm_counting(key, config, roster, Gauge::default())?;
    dial_bootstrap(&mut swarm, config);
    Ok(swarm)
}

/// [`build_swarm`] without dialing the bootstrap members yet, counting the bytes of payloads
/// still arriving into `receiving` (the node's `medmesh_payload_bytes_receiving`). Dial with
/// [`dial_bootstrap`] once [`listening`] returns: a connection dialed before the listeners are
/// up leaves from a random port instead of the listening one, and the address peers then see
/// for this node is one that hole punching cannot use.
pub fn build_swarm_counting(
    key: &Keypair,
    config: &NetworkConfig,
    roster: &Roster,
    receiving: Gauge,
) -> Result<Swarm<Behaviour>, Error> {
    config.check()?;
    let identity = libp2p::identity::Keypair::ed25519_from_bytes(key.secret_bytes())?;
    let own = roster.member(&key.id());
    let is_relay = own.is_some_and(|m| m.role == Role::Relay);
    let parts = Parts::new(
        &identity,
        config,
        &roster.mesh,
        receiving,
        config.relay_server || is_relay,
    )?;
    let idle = config.idle_connection_timeout;
    let builder = SwarmBuilder::with_existing_identity(identity).with_tokio();
    let mut swarm = if config.quic {
        #[cfg(feature = "quic")]
        {
            let Ok(builder) = builder
                .with_tcp(tcp_config(), noise::Config::new, yamux::Config::default)?
                .with_quic()
                .with_relay_client(noise::Config::new, yamux::Config::default)?
                .with_behaviour(|_, relay_client| parts.finish(relay_client));
            builder
                .with_swarm_config(|c| c.with_idle_connection_timeout(idle))
                .build()
        }
        #[cfg(not(feature = "quic"))]
        return Err(Error::QuicUnavailable);
    } else {
        let Ok(builder) = builder
            .with_tcp(tcp_config(), noise::Config::new, yamux::Config::default)?
            .with_relay_client(noise::Config::new, yamux::Config::default)?
            .with_behaviour(|_, relay_client| parts.finish(relay_client));
        builder
            .with_swarm_config(|c| c.with_idle_connection_timeout(idle))
            .build()
    };

    allow_members(&mut swarm, roster, &HashSet::new());
    // A relay offers its reservations at the public addresses the roster lists for it (libp2p's
    // relay serves only once it has a confirmed external address).
    if is_relay {
        for text in own.map(|m| m.addresses.as_slice()).unwrap_or_default() {
            if let Ok(mut address) = text.parse::<Multiaddr>() {
                if matches!(address.iter().last(), Some(Protocol::P2p(_))) {
                    address.pop();
                }
                swarm.add_external_address(address);
            }
        }
    }
    for address in &config.listen {
        check_port_free(address)?;
        swarm
            .listen_on(address.clone())
            .map_err(|source| Error::Listen {
                address: address.clone(),
                source,
            })?;
    }
    let local = *swarm.local_peer_id();
    for address in &config.bootstrap {
        let mut dialable = address.clone();
        let Some(Protocol::P2p(peer)) = dialable.pop() else {
            continue; // refused by `check`
        };
        if peer != local {
            swarm.behaviour_mut().kademlia.add_address(&peer, dialable);
        }
    }
    Ok(swarm)
}

/// Dials the bootstrap members of `config` (other than this node). Best effort: a non-member is
/// refused by the allow list, an unreachable member shows up as a connection error, and the
/// node's redial loop tries again later.
pub fn dial_bootstrap(swarm: &mut Swarm<Behaviour>, config: &NetworkConfig) {
    let local = *swarm.local_peer_id();
    for address in &config.bootstrap {
        if matches!(address.iter().last(), Some(Protocol::P2p(peer)) if peer != local) {
            let _ = swarm.dial(address.clone());
        }
    }
}

/// Drives the swarm until every listener of `config` reported an address, or `limit` passed
/// (events in between are dropped: nothing else is connected yet).
pub async fn listening(swarm: &mut Swarm<Behaviour>, config: &NetworkConfig, limit: Duration) {
    let mut reported = HashSet::new();
    let _ = tokio::time::timeout(limit, async {
        while reported.len() < config.listen.len() {
            if let SwarmEvent::NewListenAddr {
                listener_id,
                address,
            } = swarm.select_next_some().await
            {
                tracing::info!(%address, "listening");
                reported.insert(listener_id);
            }
        }
    })
    .await;
}

/// Fails with [`Error::PortInUse`] when the fixed TCP port of `address` is bound by anyone: a
/// plain bind (without `SO_REUSEPORT`) refuses a port that any socket holds.
fn check_port_free(address: &Multiaddr) -> Result<(), Error> {
    let mut ip = None;
    let mut port = None;
    for protocol in address {
        match protocol {
            Protocol::Ip4(v4) => ip = Some(std::net::IpAddr::V4(v4)),
            Protocol::Ip6(v6) => ip = Some(std::net::IpAddr::V6(v6)),
            Protocol::Tcp(p) => port = Some(p),
            _ => {}
        }
    }
    let (Some(ip), Some(port)) = (ip, port) else {
        return Ok(());
    };
    if port == 0 {
        return Ok(());
    }
    match std::net::TcpListener::bind((ip, port)) {
        Err(e) if e.kind() == io::ErrorKind::AddrInUse => Err(Error::PortInUse {
            address: address.clone(),
            port,
        }),
        // Anything else (an address not on this host) is libp2p's to report.
        _ => Ok(()),
    }
}

fn tcp_config() -> tcp::Config {
    tcp::Config::default().nodelay(true)
}

/// The behaviours that do not depend on the transport, made before the swarm so that
/// every failure is a typed error and the builder's closure cannot fail.
struct Parts {
    limits: connection_limits::Behaviour,
    gossipsub: gossipsub::Behaviour,
    payload: request_response::Behaviour<PayloadCodec>,
    roster: request_response::json::Behaviour<RosterRequest, RosterResponse>,
    identify: identify::Behaviour,
    kademlia: kad::Behaviour<kad::store::MemoryStore>,
    mdns: Toggle<mdns::tokio::Behaviour>,
    relay_server: Toggle<relay::Behaviour>,
    dcutr: dcutr::Behaviour,
    autonat: autonat::Behaviour,
}

impl Parts {
    fn new(
        identity: &libp2p::identity::Keypair,
        config: &NetworkConfig,
        mesh: &str,
        receiving: Gauge,
        serve_relay: bool,
    ) -> Result<Self, Error> {
        let local = identity.public().to_peer_id();
        let limits = connection_limits::ConnectionLimits::default()
            .with_max_established(Some(config.max_connections))
            .with_max_established_per_peer(Some(config.max_connections_per_peer))
            .with_max_pending_incoming(Some(config.max_connections))
            .with_max_pending_outgoing(Some(config.max_connections));

        let mut kademlia_config = kad::Config::new(KAD_PROTOCOL);
        // Records are not used: inbound puts become events the node ignores, never storage.
        kademlia_config.set_record_filtering(kad::StoreInserts::FilterBoth);
        let mut kademlia = kad::Behaviour::with_config(
            local,
            kad::store::MemoryStore::new(local),
            kademlia_config,
        );
        // Members reach each other on private addresses that AutoNAT never confirms; without
        // server mode no member would answer another's DHT queries.
        kademlia.set_mode(Some(kad::Mode::Server));

        let mdns = if config.mdns {
            Some(mdns::tokio::Behaviour::new(mdns::Config::default(), local).map_err(Error::Mdns)?)
        } else {
            None
        };
        let relay_server = serve_relay.then(|| {
            relay::Behaviour::new(
                local,
                relay::Config {
                    max_circuit_bytes: config.relay_max_circuit_bytes,
                    max_circuit_duration: Duration::from_secs(config.relay_max_circuit_seconds),
                    // Members only (the allow list): room for a national mesh and a few
                    // circuits per member pair. Rate limits per peer only: the hospitals of a
                    // centre share one public address, and libp2p's default per-address limit
                    // (60 circuits a minute) refused a 16-hospital mesh forming.
                    max_reservations: 1024,
                    max_circuits: 1024,
                    max_circuits_per_peer: 64,
                    reservation_rate_limiters: Vec::new(),
                    circuit_src_rate_limiters: Vec::new(),
                    ..relay::Config::default()
                }
                .reservation_rate_per_peer(RELAY_RESERVATIONS_PER_PEER, Duration::from_secs(10))
                .circuit_src_per_peer(RELAY_CIRCUITS_PER_PEER, Duration::from_secs(1)),
            )
        });
        // The relays are the AutoNAT servers (seeded by the node from the roster): a member
        // behind NAT never learns anything from its LAN neighbours. Explicit servers may sit
        // at private addresses (a test network, a VPN).
        let autonat_config = autonat::Config {
            use_connected: false,
            only_global_ips: false,
            boot_delay: Duration::from_secs(5),
            ..autonat::Config::default()
        };

        Ok(Self {
            limits: connection_limits::Behaviour::new(limits),
            gossipsub: gossip(config, mesh)?,
            payload: request_response::Behaviour::with_codec(
                PayloadCodec::counting(config.max_payload_bytes, receiving),
                [(PAYLOAD_PROTOCOL, request_response::ProtocolSupport::Full)],
                request_response::Config::default().with_request_timeout(config.request_timeout),
            ),
            roster: request_response::Behaviour::with_codec(
                request_response::json::codec::Codec::default()
                    .set_request_size_maximum(MAX_ROSTER_REQUEST_BYTES)
                    .set_response_size_maximum(MAX_ROSTER_RESPONSE_BYTES),
                [(ROSTER_PROTOCOL, request_response::ProtocolSupport::Full)],
                request_response::Config::default().with_request_timeout(config.request_timeout),
            ),
            identify: identify::Behaviour::new(
                identify::Config::new(IDENTIFY_PROTOCOL.to_owned(), identity.public())
                    .with_agent_version(format!("medmesh/{}", env!("CARGO_PKG_VERSION")))
                    // A new relay reservation (circuit address) reaches connected members now,
                    // not at the next periodic identify.
                    .with_push_listen_addr_updates(true),
            ),
            kademlia,
            mdns: Toggle::from(mdns),
            relay_server: Toggle::from(relay_server),
            dcutr: dcutr::Behaviour::new(local),
            autonat: autonat::Behaviour::new(local, autonat_config),
        })
    }

    fn finish(self, relay_client: relay::client::Behaviour) -> Behaviour {
        Behaviour {
            allowed: allow_block_list::Behaviour::default(),
            limits: self.limits,
            gossipsub: self.gossipsub,
            payload: self.payload,
            roster: self.roster,
            identify: self.identify,
            kademlia: self.kademlia,
            mdns: self.mdns,
            relay_client,
            relay_server: self.relay_server,
            dcutr: self.dcutr,
            autonat: self.autonat,
            ping: ping::Behaviour::default(),
        }
    }
}

/// Gossipsub for a small mesh of known members: no libp2p signing (messages are signed by their
/// authors), content-hash ids so copies of one message dedupe, the application validates every
/// message, and a rejected message costs its sender score.
fn gossip(config: &NetworkConfig, mesh: &str) -> Result<gossipsub::Behaviour, Error> {
    let gossip_config = gossipsub::ConfigBuilder::default()
        .max_transmit_size(config.max_gossip_bytes + GOSSIP_FRAME_OVERHEAD)
        .validation_mode(gossipsub::ValidationMode::Anonymous)
        .validate_messages()
        .message_id_fn(|message: &gossipsub::Message| {
            gossipsub::MessageId::new(Digest::of(MESSAGE_ID_CONTEXT, &message.data).as_bytes())
        })
        // A mesh of a few to a few hundred hospitals: form it quickly, keep it small.
        .heartbeat_initial_delay(Duration::from_millis(500))
        .heartbeat_interval(Duration::from_secs(1))
        .mesh_n(6)
        .mesh_n_low(4)
        .mesh_n_high(12)
        .mesh_outbound_min(2)
        // Rounds last minutes: remember seen ids long enough that a late copy is not new again.
        .duplicate_cache_time(Duration::from_secs(300))
        .build()
        .map_err(|e| Error::Gossipsub(e.to_string()))?;
    let mut gossipsub =
        gossipsub::Behaviour::new(gossipsub::MessageAuthenticity::Anonymous, gossip_config)
            .map_err(|e| Error::Gossipsub(e.to_owned()))?;

    let topic = topic(mesh);
    // Scoring only for what the application judges: invalid messages (P4) cost their sender,
    // squared, so a few rejections graylist it; first deliveries earn a little back. Mesh
    // delivery rates (P3) are off — hospitals publish rarely and quiet is not misbehaviour —
    // and so is IP colocation, since members may share a NAT or a relay.
    let mut score = gossipsub::PeerScoreParams {
        ip_colocation_factor_weight: 0.0,
        ..Default::default()
    };
    score.topics.insert(topic.hash(), topic_score());
    gossipsub
        .with_peer_score(score, gossipsub::PeerScoreThresholds::default())
        .map_err(Error::Gossipsub)?;
    gossipsub
        .subscribe(&topic)
        .map_err(|e| Error::Gossipsub(e.to_string()))?;
    Ok(gossipsub)
}

/// How a mesh or group topic scores its peers.
fn topic_score() -> gossipsub::TopicScoreParams {
    gossipsub::TopicScoreParams {
        topic_weight: 1.0,
        time_in_mesh_weight: 0.0,
        first_message_deliveries_weight: 1.0,
        first_message_deliveries_decay: 0.5,
        first_message_deliveries_cap: 10.0,
        mesh_message_deliveries_weight: 0.0,
        mesh_failure_penalty_weight: 0.0,
        invalid_message_deliveries_weight: -10.0,
        invalid_message_deliveries_decay: 0.95,
        ..Default::default()
    }
}

/// Allows exactly the roster's members to connect: members are allowed and the addresses the
/// roster lists for them seeded into Kademlia; peers no longer on it are disallowed, which
/// closes their connections, and forgotten by Kademlia. Call it with every new roster version.
/// Members in `blocked` (an operator's local block, [`block`]) stay disallowed.
pub fn allow_members(swarm: &mut Swarm<Behaviour>, roster: &Roster, blocked: &HashSet<PeerId>) {
    let local = *swarm.local_peer_id();
    let members: Vec<(PeerId, &[String])> = roster
        .members
        .iter()
        .filter_map(|m| Some((peer_id(&m.id).ok()?, m.addresses.as_slice())))
        .collect();
    let wanted: HashSet<PeerId> = members.iter().map(|(peer, _)| *peer).collect();
    let behaviour = swarm.behaviour_mut();
    let removed: Vec<PeerId> = behaviour
        .allowed
        .allowed_peers()
        .iter()
        .filter(|peer| !wanted.contains(peer))
        .copied()
        .collect();
    for peer in removed {
        behaviour.allowed.disallow_peer(peer);
        behaviour.kademlia.remove_peer(&peer);
    }
    for (peer, addresses) in members {
        if peer == local {
            continue;
        }
        // Known members too: a roster version may change their addresses.
        if blocked.contains(&peer) {
            behaviour.allowed.disallow_peer(peer);
        } else {
            behaviour.allowed.allow_peer(peer);
        }
        for text in addresses {
            let Ok(mut address) = text.parse::<Multiaddr>() else {
                continue;
            };
            match address.iter().last() {
                Some(Protocol::P2p(named)) if named != peer => continue,
                Some(Protocol::P2p(_)) => {
                    address.pop();
                }
                _ => {}
            }
            behaviour.kademlia.add_address(&peer, address);
        }
    }
}

/// Blocks (`block` true) or unblocks a member locally: a blocked member's connections are
/// closed and it can neither dial in nor be dialed, whatever the roster says, until unblocked.
/// An operator's tool (quarantine a member while the vote to remove it gathers signatures,
/// cut a link in a drill); nothing else changes, and a roster update keeps the block.
pub fn block(swarm: &mut Swarm<Behaviour>, roster: &Roster, peer: PeerId, block: bool) {
    let allowed = &mut swarm.behaviour_mut().allowed;
    if block {
        allowed.disallow_peer(peer);
    } else if roster
        .members
        .iter()
        .any(|m| peer_id(&m.id).ok() == Some(peer))
    {
        allowed.allow_peer(peer);
    }
}

/// As a relay: reservations one member may make in a burst (one more every 10 s).
const RELAY_RESERVATIONS_PER_PEER: NonZeroU32 = NonZeroU32::new(30).unwrap();
/// As a relay: circuits one member may open in a burst (one more every second).
const RELAY_CIRCUITS_PER_PEER: NonZeroU32 = NonZeroU32::new(256).unwrap();

/// First wait before dialing a member again after a failed dial or a lost connection.
pub const REDIAL_FIRST: Duration = Duration::from_secs(1);
/// Tries [`REDIAL_FIRST`] apart before the wait starts doubling.
pub const REDIAL_QUICK: u32 = 5;
/// Longest wait between dials of a member that stays unreachable.
pub const REDIAL_MAX: Duration = Duration::from_secs(30);

/// A connection that lasted this long resets its member's redial wait.
pub const REDIAL_STABLE: Duration = Duration::from_secs(10);

/// When to dial each unreachable member again: at once the first time it is found
/// disconnected, then every [`REDIAL_FIRST`] for [`REDIAL_QUICK`] tries (a member behind NAT
/// is reachable only once it holds a relay reservation, a second or two after it starts), then
/// doubling up to [`REDIAL_MAX`]; a connection that
/// lasted [`REDIAL_STABLE`] resets its wait. Gossipsub and request-response only reach connected
/// peers, so without this a member whose link dropped (a restart, a partition that heals) would
/// stay cut off until it dialed back itself. Short-lived connections do not reset the wait: a
/// member that blocks this node completes the handshake and then closes the connection, and must
/// not be dialed again every tick.
#[derive(Debug, Default)]
pub struct Redial {
    next: std::collections::HashMap<PeerId, (std::time::Instant, Duration, u32)>,
    up_since: std::collections::HashMap<PeerId, std::time::Instant>,
}

impl Redial {
    /// Whether to dial `peer`, found disconnected at `now`, and if so when the next try is due.
    pub fn due(&mut self, peer: PeerId, now: std::time::Instant) -> bool {
        match self.next.get_mut(&peer) {
            None => {
                self.next
                    .insert(peer, (now + REDIAL_FIRST, REDIAL_FIRST, 1));
                true
            }
            Some((at, wait, tries)) if now >= *at => {
                *tries += 1;
                if *tries > REDIAL_QUICK {
                    *wait = (*wait * 2).min(REDIAL_MAX);
                }
                *at = now + *wait;
                true
            }
            Some(_) => false,
        }
    }

    /// `peer` connected at `now`.
    pub fn connected(&mut self, peer: PeerId, now: std::time::Instant) {
        self.up_since.entry(peer).or_insert(now);
    }

    /// `peer`'s last connection closed at `now`: if it had lasted [`REDIAL_STABLE`], the loss is
    /// redialed at once; otherwise the wait keeps growing.
    pub fn disconnected(&mut self, peer: PeerId, now: std::time::Instant) {
        if let Some(since) = self.up_since.remove(&peer)
            && now.saturating_duration_since(since) >= REDIAL_STABLE
        {
            self.next.remove(&peer);
        }
    }

    /// Forgets `peer`'s wait (an operator unblocked it): dial it at once.
    pub fn reset(&mut self, peer: &PeerId) {
        self.next.remove(peer);
        self.up_since.remove(peer);
    }
}

/// Most dials [`redial_members`] starts at once. A relay client runs at most 10 circuit requests
/// over one relay connection and drops the rest: a member behind NAT that dialed all its peers
/// through the relay at once lost some of those dials, and backed off from them.
pub const REDIAL_BATCH: usize = 6;

/// Dials the members of `roster` that are not connected, not blocked and due by `redial`
/// (addresses from Kademlia, seeded with the roster's), at most [`REDIAL_BATCH`] per call (the
/// others on the next). Returns how many dials started.
pub fn redial_members(
    swarm: &mut Swarm<Behaviour>,
    roster: &Roster,
    blocked: &HashSet<PeerId>,
    redial: &mut Redial,
    now: std::time::Instant,
) -> usize {
    use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
    let local = *swarm.local_peer_id();
    let mut started = 0;
    for member in &roster.members {
        let Ok(peer) = peer_id(&member.id) else {
            continue;
        };
        if peer == local || blocked.contains(&peer) || swarm.is_connected(&peer) {
            continue;
        }
        if started >= REDIAL_BATCH {
            break;
        }
        if redial.due(peer, now) {
            let opts = DialOpts::peer_id(peer)
                .condition(PeerCondition::DisconnectedAndNotDialing)
                .build();
            match swarm.dial(opts) {
                Ok(()) => {
                    tracing::debug!(%peer, "dialing a disconnected member");
                    started += 1;
                }
                Err(error) => tracing::debug!(%peer, %error, "cannot dial a disconnected member"),
            }
        }
    }
    started
}

#[cfg(test)]
mod tests {
    use futures::StreamExt;
    use futures::io::Cursor;
    use libp2p::swarm::SwarmEvent;
    use medmesh_protocol::roster::Role;
    use medmesh_testkit::{key, member};
    use request_response::Codec;
    use tokio::time::timeout;

    use super::*;

    const LIMIT: Duration = Duration::from_secs(20);

    /// The roster of mesh `test` (topic `medmesh/test/1`) whose hospitals hold [`key`]`(n)` for
    /// each `n` of `members`.
    fn roster(members: &[u8]) -> Roster {
        let members = members.iter().map(|&n| member(n, Role::Hospital)).collect();
        Roster::genesis("test", 1, members).expect("valid roster")
    }

    fn loopback(bootstrap: Vec<Multiaddr>) -> NetworkConfig {
        NetworkConfig {
            listen: vec!["/ip4/127.0.0.1/tcp/0".parse().expect("address")],
            bootstrap,
            mdns: false,
            ..NetworkConfig::default()
        }
    }

    async fn listening(swarm: &mut Swarm<Behaviour>) -> Multiaddr {
        loop {
            if let SwarmEvent::NewListenAddr { address, .. } = swarm.select_next_some().await {
                return address
                    .with_p2p(*swarm.local_peer_id())
                    .expect("no /p2p yet");
            }
        }
    }

    /// Builds `a` listening on loopback and `b` bootstrapping from it, and drives both until
    /// each has seen the other subscribe to the mesh topic.
    async fn pair(
        ka: &Keypair,
        kb: &Keypair,
        roster: &Roster,
    ) -> (Swarm<Behaviour>, Swarm<Behaviour>, Multiaddr) {
        let mut a = build_swarm(ka, &loopback(Vec::new()), roster).expect("swarm a");
        let address = listening(&mut a).await;
        let mut b = build_swarm(kb, &loopback(vec![address.clone()]), roster).expect("swarm b");
        let (a_id, b_id) = (*a.local_peer_id(), *b.local_peer_id());
        let (mut a_sees_b, mut b_sees_a) = (false, false);
        while !(a_sees_b && b_sees_a) {
            tokio::select! {
                event = a.select_next_some() => a_sees_b |= subscribed(&event, b_id),
                event = b.select_next_some() => b_sees_a |= subscribed(&event, a_id),
            }
        }
        (a, b, address)
    }

    fn subscribed(event: &SwarmEvent<Event>, who: PeerId) -> bool {
        matches!(
            event,
            SwarmEvent::Behaviour(Event::Gossip(gossipsub::Event::Subscribed { peer_id, .. }))
                if *peer_id == who
        )
    }

    #[test]
    fn peer_ids_and_member_ids_round_trip() {
        let member = key(1).id();
        let peer = peer_id(&member).expect("ed25519 key");
        assert_eq!(member_id(&peer), Some(member));
        let identity =
            libp2p::identity::Keypair::ed25519_from_bytes(key(1).secret_bytes()).expect("key");
        assert_eq!(
            identity.public().to_peer_id(),
            peer,
            "same key, same peer id"
        );
        // A random peer id embeds no ed25519 key.
        assert_eq!(member_id(&PeerId::random()), None);
        // Not a curve point: y = 2 has no x on ed25519.
        let mut bad = [0u8; 32];
        bad[0] = 2;
        assert!(matches!(peer_id(&MemberId(bad)), Err(Error::Member(_))));
    }

    #[test]
    fn topic_names_the_mesh() {
        assert_eq!(topic("heart").to_string(), "medmesh/heart/1");
    }

    #[test]
    fn config_defaults_parse_and_check() {
        let config: NetworkConfig = toml::from_str(
            "bootstrap = [\"/ip4/10.0.0.1/tcp/4001/p2p/12D3KooWD3eckifWpRn9wQpMG9R9hX3sD158z7EqHWmweQAJU5SA\"]\nrequest_timeout_ms = 1500\n",
        )
        .expect("parses");
        assert_eq!(config.request_timeout, Duration::from_millis(1500));
        assert!(!config.mdns, "mDNS only when asked for");
        assert_eq!(config.max_gossip_bytes, wire::MAX_GOSSIP);
        config.check().expect("valid");
        assert!(toml::from_str::<NetworkConfig>("mdsn = false").is_err());

        let no_peer = NetworkConfig {
            bootstrap: vec!["/ip4/10.0.0.1/tcp/4001".parse().expect("address")],
            ..NetworkConfig::default()
        };
        assert!(matches!(no_peer.check(), Err(Error::BootstrapPeerId(_))));
        let too_big = NetworkConfig {
            max_payload_bytes: wire::MAX_PAYLOAD + 1,
            ..NetworkConfig::default()
        };
        assert!(matches!(too_big.check(), Err(Error::Config(_))));
        let unlimited = NetworkConfig {
            payload_requests_per_second: 0,
            ..NetworkConfig::default()
        };
        assert!(matches!(unlimited.check(), Err(Error::Config(_))));
        let quic = NetworkConfig {
            quic: true,
            ..NetworkConfig::default()
        };
        assert_eq!(quic.check().is_ok(), cfg!(feature = "quic"));
    }

    #[test]
    fn verdicts_map_to_acceptance() {
        use medmesh_protocol::peer::Reason;
        assert_eq!(
            acceptance(&Verdict::Accept),
            gossipsub::MessageAcceptance::Accept
        );
        assert_eq!(
            acceptance(&Verdict::Reject(Reason::NotMember(key(1).id()))),
            gossipsub::MessageAcceptance::Reject
        );
        assert_eq!(
            acceptance(&Verdict::Ignore(Reason::Duplicate)),
            gossipsub::MessageAcceptance::Ignore
        );
    }

    #[tokio::test]
    async fn a_second_node_on_a_taken_port_refuses_to_start_naming_the_port() {
        let roster = roster(&[1, 2]);
        let port = medmesh_free_port();
        let config = NetworkConfig {
            listen: vec![format!("/ip4/127.0.0.1/tcp/{port}").parse().expect("addr")],
            ..loopback(Vec::new())
        };
        // A node listening there (libp2p binds with SO_REUSEPORT, which alone would let a
        // second one bind too).
        let mut first = build_swarm(&key(1), &config, &roster).expect("first node");
        let _ = timeout(Duration::from_secs(5), listening(&mut first)).await;
        match build_swarm(&key(2), &config, &roster) {
            Err(error @ Error::PortInUse { .. }) => {
                assert!(error.to_string().contains(&port.to_string()), "{error}");
            }
            Err(other) => panic!("unexpected error {other}"),
            Ok(_) => panic!("a second node started on port {port}"),
        }
        // Any other process holding the port counts too.
        drop(first);
        let holder = std::net::TcpListener::bind(("127.0.0.1", 0)).expect("bind");
        let held = holder.local_addr().expect("addr").port();
        let config = NetworkConfig {
            listen: vec![format!("/ip4/127.0.0.1/tcp/{held}").parse().expect("addr")],
            ..loopback(Vec::new())
        };
        assert!(matches!(
            build_swarm(&key(2), &config, &roster),
            Err(Error::PortInUse { port, .. }) if port == held
        ));
    }

    /// A port free now on 127.0.0.1.
    fn medmesh_free_port() -> u16 {
        std::net::TcpListener::bind(("127.0.0.1", 0))
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free port")
    }

    #[tokio::test]
    async fn codec_round_trips() {
        let mut codec = PayloadCodec::new(1024);
        let mut wire = Vec::new();
        codec
            .write_request(&PAYLOAD_PROTOCOL, &mut wire, ContentId([3; 32]))
            .await
            .expect("writes");
        let id = codec
            .read_request(&PAYLOAD_PROTOCOL, &mut Cursor::new(wire))
            .await
            .expect("reads");
        assert_eq!(id, ContentId([3; 32]));

        for response in [
            Response::NotFound,
            Response::Payload(Bytes::from(vec![9u8; 1000])),
        ] {
            let mut wire = Vec::new();
            codec
                .write_response(&PAYLOAD_PROTOCOL, &mut wire, response.clone())
                .await
                .expect("writes");
            let back = codec
                .read_response(&PAYLOAD_PROTOCOL, &mut Cursor::new(wire))
                .await
                .expect("reads");
            assert_eq!(back, response);
        }
        let mut wire = Vec::new();
        let too_big = Response::Payload(Bytes::from(vec![0u8; 1025]));
        assert!(
            codec
                .write_response(&PAYLOAD_PROTOCOL, &mut wire, too_big)
                .await
                .is_err()
        );
    }

    #[tokio::test]
    async fn bytes_of_a_payload_count_as_arriving_until_it_is_complete_or_cut_off() {
        use futures::TryStreamExt;

        let gauge = Gauge::default();
        let mut codec = PayloadCodec::counting(1 << 20, gauge.clone());
        let mut wire = Vec::new();
        let payload = Response::Payload(Bytes::from(vec![5u8; 100_000]));
        codec
            .write_response(&PAYLOAD_PROTOCOL, &mut wire, payload.clone())
            .await
            .expect("writes");
        for complete in [true, false] {
            let (tx, rx) = futures::channel::mpsc::unbounded::<io::Result<Vec<u8>>>();
            let mut reader = rx.into_async_read();
            let mut codec = codec.clone();
            let read =
                tokio::spawn(
                    async move { codec.read_response(&PAYLOAD_PROTOCOL, &mut reader).await },
                );
            // The tag, the length prefix and 40,000 bytes of the payload.
            tx.unbounded_send(Ok(wire[..40_009].to_vec()))
                .expect("send");
            let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
            while gauge.get() != 40_000 {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "gauge {}",
                    gauge.get()
                );
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            if complete {
                tx.unbounded_send(Ok(wire[40_009..].to_vec()))
                    .expect("send");
                assert_eq!(read.await.expect("task").expect("reads"), payload);
            } else {
                drop(tx);
                let error = read.await.expect("task").expect_err("cut off");
                assert_eq!(error.kind(), io::ErrorKind::UnexpectedEof);
            }
            assert_eq!(gauge.get(), 0, "complete: {complete}");
        }
    }

    fn codec_error(error: &io::Error) -> Option<&CodecError> {
        error.get_ref()?.downcast_ref::<CodecError>()
    }

    #[tokio::test]
    async fn oversized_claims_are_refused_before_allocating() {
        let mut codec = PayloadCodec::new(wire::MAX_PAYLOAD);
        for claimed in [wire::MAX_PAYLOAD as u64 + 1, u64::MAX] {
            // Only the header: a reader that tried to fill the claim would hit end of stream.
            let mut bytes = vec![FOUND];
            bytes.extend_from_slice(&claimed.to_le_bytes());
            let error = codec
                .read_response(&PAYLOAD_PROTOCOL, &mut Cursor::new(bytes))
                .await
                .expect_err("refused");
            assert_eq!(error.kind(), io::ErrorKind::InvalidData);
            assert_eq!(
                codec_error(&error),
                Some(&CodecError::TooLarge {
                    claimed,
                    limit: wire::MAX_PAYLOAD
                })
            );
        }
        // A claim within the cap that the data does not back ends at end of stream.
        let mut bytes = vec![FOUND];
        bytes.extend_from_slice(&(400u64 << 20).to_le_bytes());
        bytes.extend_from_slice(&[1; 10]);
        let error = codec
            .read_response(&PAYLOAD_PROTOCOL, &mut Cursor::new(bytes))
            .await
            .expect_err("truncated");
        assert_eq!(error.kind(), io::ErrorKind::UnexpectedEof);
        // Requests have their own small cap, and must be requests.
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&(MAX_REQUEST_BYTES as u64 + 1).to_le_bytes());
        let error = codec
            .read_request(&PAYLOAD_PROTOCOL, &mut Cursor::new(bytes))
            .await
            .expect_err("refused");
        assert!(matches!(
            codec_error(&error),
            Some(CodecError::TooLarge { .. })
        ));
        let mut bytes = Vec::new();
        write_frame(&mut bytes, &[wire::VERSION, 200, 1])
            .await
            .expect("writes");
        let error = codec
            .read_request(&PAYLOAD_PROTOCOL, &mut Cursor::new(bytes))
            .await
            .expect_err("garbage");
        assert!(matches!(codec_error(&error), Some(CodecError::Request(_))));
        let error = codec
            .read_response(&PAYLOAD_PROTOCOL, &mut Cursor::new(vec![7u8]))
            .await
            .expect_err("bad tag");
        assert_eq!(codec_error(&error), Some(&CodecError::Tag(7)));
    }

    #[tokio::test]
    async fn gossip_reaches_a_member_and_is_validated() {
        let (ka, kb) = (key(1), key(2));
        let roster = roster(&[1, 2]);
        timeout(LIMIT, async {
            let (mut a, mut b, _) = pair(&ka, &kb, &roster).await;
            let a_id = *a.local_peer_id();
            let data = b"an announcement".to_vec();
            let sent = a
                .behaviour_mut()
                .gossipsub
                .publish(topic("test"), data.clone())
                .expect("published");
            loop {
                tokio::select! {
                    _ = a.select_next_some() => {}
                    event = b.select_next_some() => {
                        if let SwarmEvent::Behaviour(Event::Gossip(gossipsub::Event::Message {
                            propagation_source,
                            message_id,
                            message,
                        })) = event
                        {
                            assert_eq!(message.data, data);
                            assert_eq!(message_id, sent, "content-hash ids agree");
                            assert_eq!(message.source, None, "anonymous");
                            assert_eq!(member_id(&propagation_source), Some(ka.id()));
                            assert_eq!(propagation_source, a_id);
                            let reported = b.behaviour_mut().gossipsub.report_message_validation_result(
                                &message_id,
                                &propagation_source,
                                acceptance(&Verdict::Accept),
                            );
                            assert!(reported, "message was waiting for validation");
                            break;
                        }
                    }
                }
            }
        })
        .await
        .expect("within the time limit");
    }

    #[tokio::test]
    async fn payload_of_4_mib_is_pulled_by_id() {
        let (ka, kb) = (key(3), key(4));
        let roster = roster(&[3, 4]);
        timeout(LIMIT, async {
            let (mut a, mut b, _) = pair(&ka, &kb, &roster).await;
            let payload: Bytes = (0..4u32 << 20).map(|i| (i * 7 % 251) as u8).collect::<Vec<_>>().into();
            let (known, unknown) = (ContentId([1; 32]), ContentId([2; 32]));
            let a_id = peer_id(&ka.id()).expect("peer id");
            let want = b.behaviour_mut().payload.send_request(&a_id, known);
            let missing = b.behaviour_mut().payload.send_request(&a_id, unknown);
            let (mut got, mut not_found) = (false, false);
            while !(got && not_found) {
                tokio::select! {
                    event = a.select_next_some() => {
                        if let SwarmEvent::Behaviour(Event::Payload(request_response::Event::Message {
                            message: request_response::Message::Request { request, channel, .. },
                            ..
                        })) = event
                        {
                            let response = if request == known {
                                Response::Payload(payload.clone())
                            } else {
                                Response::NotFound
                            };
                            a.behaviour_mut()
                                .payload
                                .send_response(channel, response)
                                .expect("channel open");
                        }
                    }
                    event = b.select_next_some() => match event {
                        SwarmEvent::Behaviour(Event::Payload(request_response::Event::Message {
                            message: request_response::Message::Response { request_id, response },
                            ..
                        })) => {
                            if request_id == want {
                                assert_eq!(response, Response::Payload(payload.clone()));
                                got = true;
                            } else {
                                assert_eq!(request_id, missing);
                                assert_eq!(response, Response::NotFound);
                                not_found = true;
                            }
                        }
                        SwarmEvent::Behaviour(Event::Payload(request_response::Event::OutboundFailure {
                            error, ..
                        })) => panic!("request failed: {error}"),
                        _ => {}
                    },
                }
            }
        })
        .await
        .expect("within the time limit");
    }

    #[tokio::test]
    async fn a_key_not_on_the_roster_cannot_connect_or_hear_gossip() {
        let (ka, kb, kc) = (key(5), key(6), key(7));
        let members = roster(&[5, 6]);
        timeout(LIMIT, async {
            let (mut a, mut b, address) = pair(&ka, &kb, &members).await;
            // The outsider believes everyone is allowed; the members do not allow it.
            let mut c = build_swarm(&kc, &loopback(vec![address]), &roster(&[5, 6, 7]))
                .expect("swarm c");
            let c_id = *c.local_peer_id();
            let mut refused = false;
            let mut denied = false;
            let mut published = false;
            let mut delivered = false;
            let mut quiet = Box::pin(tokio::time::sleep(Duration::from_secs(3600)));
            loop {
                tokio::select! {
                    event = a.select_next_some() => match event {
                        SwarmEvent::ConnectionEstablished { peer_id, .. } => {
                            assert_ne!(peer_id, c_id, "a member accepted an outsider");
                        }
                        SwarmEvent::IncomingConnectionError {
                            error: libp2p::swarm::ListenError::Denied { cause },
                            peer_id,
                            ..
                        } => {
                            assert_eq!(peer_id, Some(c_id));
                            assert!(cause.downcast_ref::<allow_block_list::NotAllowed>().is_some());
                            denied = true;
                        }
                        _ => {}
                    },
                    event = b.select_next_some() => {
                        if let SwarmEvent::Behaviour(Event::Gossip(gossipsub::Event::Message { .. })) = event {
                            delivered = true;
                            // Give the outsider time it would need to receive the same message.
                            quiet.as_mut().reset(tokio::time::Instant::now() + Duration::from_secs(1));
                        }
                    }
                    event = c.select_next_some() => match event {
                        SwarmEvent::OutgoingConnectionError { .. } | SwarmEvent::ConnectionClosed { .. } => {
                            refused = true;
                        }
                        SwarmEvent::Behaviour(Event::Gossip(gossipsub::Event::Message { .. })) => {
                            panic!("an outsider received gossip");
                        }
                        _ => {}
                    },
                    () = &mut quiet => break,
                }
                if refused && !published {
                    a.behaviour_mut()
                        .gossipsub
                        .publish(topic("test"), b"members only".to_vec())
                        .expect("published");
                    published = true;
                }
            }
            assert!(refused && denied && delivered);
        })
        .await
        .expect("within the time limit");
    }

    #[test]
    fn redials_every_second_then_back_off_to_thirty_and_reset_after_a_lasting_connection() {
        let start = std::time::Instant::now();
        let peer = PeerId::random();
        let mut redial = Redial::default();
        let at = |s: f64| start + Duration::from_secs_f64(s);
        assert!(
            redial.due(peer, at(0.0)),
            "found disconnected: dial at once"
        );
        assert!(!redial.due(peer, at(0.5)));
        let mut t = 0.0;
        let mut waits = Vec::new();
        for _ in 0..11 {
            let next = (1..=400)
                .map(|k| t + f64::from(k) * 0.1)
                .find(|&s| redial.due(peer, at(s)))
                .expect("due within 40 s");
            waits.push((next - t).round());
            t = next;
        }
        // Every second for the first tries (a member behind NAT is reachable once it holds a
        // relay reservation), then doubling up to 30 s.
        assert_eq!(
            waits,
            [1.0, 1.0, 1.0, 1.0, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]
        );
        // A connection that is closed right away (a member that blocks us) keeps the wait.
        redial.connected(peer, at(t));
        redial.disconnected(peer, at(t + 0.5));
        assert!(
            !redial.due(peer, at(t + 1.0)),
            "a refused connection is no reset"
        );
        // One that lasted resets it: the next loss is dialed at once.
        redial.connected(peer, at(t + 1.0));
        redial.disconnected(peer, at(t + 1.0 + REDIAL_STABLE.as_secs_f64()));
        assert!(
            redial.due(peer, at(t + 11.5)),
            "a new loss is dialed at once"
        );
        assert!(redial.due(PeerId::random(), at(t)), "peers are independent");
        redial.reset(&peer);
        assert!(
            redial.due(peer, at(t + 11.6)),
            "an operator's reset is dialed at once"
        );
    }

    #[tokio::test]
    async fn a_blocked_member_is_cut_off_and_dialed_again_once_unblocked() {
        let (ka, kb) = (key(10), key(11));
        let members = roster(&[10, 11]);
        timeout(LIMIT, async {
            let (mut a, mut b, _) = pair(&ka, &kb, &members).await;
            let a_id = *a.local_peer_id();
            let mut blocked = HashSet::from([a_id]);
            block(&mut b, &members, a_id, true);
            loop {
                tokio::select! {
                    event = b.select_next_some() => {
                        if let SwarmEvent::ConnectionClosed { peer_id, num_established: 0, .. } = event {
                            assert_eq!(peer_id, a_id);
                            break;
                        }
                    }
                    _ = a.select_next_some() => {}
                }
            }
            let mut redial = Redial::default();
            let now = std::time::Instant::now();
            assert_eq!(redial_members(&mut b, &members, &blocked, &mut redial, now), 0);
            // A roster update keeps the block.
            allow_members(&mut b, &members, &blocked);
            assert!(!b.behaviour().allowed.allowed_peers().contains(&a_id));

            block(&mut b, &members, a_id, false);
            blocked.clear();
            assert_eq!(redial_members(&mut b, &members, &blocked, &mut redial, now), 1);
            // Not again within its wait.
            assert_eq!(redial_members(&mut b, &members, &blocked, &mut redial, now), 0);
            loop {
                tokio::select! {
                    event = b.select_next_some() => {
                        if let SwarmEvent::ConnectionEstablished { peer_id, .. } = event {
                            assert_eq!(peer_id, a_id);
                            break;
                        }
                    }
                    _ = a.select_next_some() => {}
                }
            }
            assert!(b.is_connected(&a_id));
        })
        .await
        .expect("within the time limit");
    }

    #[tokio::test]
    async fn removing_a_member_closes_its_connections() {
        let (ka, kb) = (key(8), key(9));
        timeout(LIMIT, async {
            let (mut a, mut b, _) = pair(&ka, &kb, &roster(&[8, 9])).await;
            let b_id = *b.local_peer_id();
            allow_members(&mut a, &roster(&[8]), &HashSet::new());
            assert!(!a.behaviour().allowed.allowed_peers().contains(&b_id));
            loop {
                tokio::select! {
                    event = a.select_next_some() => {
                        if let SwarmEvent::ConnectionClosed { peer_id, num_established: 0, .. } = event {
                            assert_eq!(peer_id, b_id);
                            break;
                        }
                    }
                    _ = b.select_next_some() => {}
                }
            }
            assert!(!a.is_connected(&b_id));
        })
        .await
        .expect("within the time limit");
    }
}
