//! Reaching members behind NAT: relays from the roster, reservations, circuit addresses, and
//! upgrading relayed connections to direct ones.
//!
//! A relay is a roster member with the [`Role::Relay`] role and at least one address (its public
//! one). Every other member:
//! - reserves a slot on each relay once it is connected to it and has been identified by it (so
//!   that it knows the address the relay sees it at, which hole punching needs), and listens on
//!   the relay's `/p2p-circuit` address; a reservation that ends (the relay went away, a refused
//!   renewal) is asked for again when the relay is back;
//! - knows every other member at `RELAY/p2p-circuit/p2p/MEMBER` for each relay, so the regular
//!   redial loop reaches members that list no address of their own;
//! - on learning a member's own listen addresses (identify, over whatever connection), tries them
//!   directly once: members of one hospital LAN connect on the LAN this way;
//! - lets DCUtR hole-punch a direct connection over each relayed one (libp2p starts it on the
//!   side that accepted the relayed connection);
//! - closes a member's relayed connections once it holds a direct one, so that gossip and
//!   payload pulls go direct (request-response spreads requests over every connection to a peer).
//!
//! With only relayed connections (NATs that defeat hole punching), everything runs through the
//! relay: gossip and payloads alike. A members-only relay therefore lifts libp2p's default
//! per-circuit limits (128 KiB, 2 minutes), which would cut a payload off mid-transfer; see
//! [`NetworkConfig::relay_max_circuit_bytes`](crate::network::NetworkConfig).

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use libp2p::core::ConnectedPoint;
use libp2p::multiaddr::Protocol;
use libp2p::swarm::ConnectionId;
use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use libp2p::{Multiaddr, PeerId, Swarm, autonat, core::transport::ListenerId, dcutr, identify};
use medmesh_protocol::roster::{Role, Roster};
use serde::{Deserialize, Serialize};

use crate::network::{self, Behaviour};

/// First wait before asking a relay for a reservation again; doubles up to [`RESERVE_MAX`].
const RESERVE_FIRST: Duration = Duration::from_secs(1);
/// Longest wait between reservation attempts on one relay.
const RESERVE_MAX: Duration = Duration::from_secs(30);
/// How long a member's relayed connection stays open after a direct one is up. Closing it at
/// once lost messages: gossipsub hands each message to whichever connection to a peer asks
/// first, and sends its subscriptions only on the first connection, so a subscription still
/// queued on the relayed one went with it and the peer never learned it.
const RELAYED_GRACE: Duration = Duration::from_secs(5);
/// New hole punches after a failed one, per member.
const HOLE_PUNCH_RETRIES: u32 = 3;
/// How long a node waits for a relay to identify it before dialing members anyway (members it
/// reaches through a relay are dialed once a relay knows it; see [`Nat::settled`]).
const RELAY_WAIT: Duration = Duration::from_secs(10);
/// How long after a failed hole punch its relayed connection is closed for another try.
const RETRY_AFTER: Duration = Duration::from_secs(2);

/// One relay of the roster, as this node sees it.
#[derive(Debug)]
struct Relay {
    peer: PeerId,
    /// Its address without `/p2p/…`.
    address: Multiaddr,
    /// It identified this node on the current connection (this node knows its observed address).
    identified: bool,
    /// The `/p2p-circuit` listener on it, while asked for or held.
    listener: Option<ListenerId>,
    /// The reservation was accepted (and not lost since).
    reserved: bool,
    /// No new attempt before this.
    next_try: Instant,
    wait: Duration,
}

/// How this node reaches and is reached, for status and metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reachability {
    /// Open direct connections.
    pub direct: usize,
    /// Open connections through a relay.
    pub relayed: usize,
    /// Relays holding a reservation for this node (their peer ids).
    pub reservations: Vec<String>,
    /// What AutoNAT concluded: `public`, `private` or `unknown`.
    pub nat: String,
    /// Hole punches tried (DCUtR upgrades of a relayed connection, each up to 3 dials).
    pub hole_punch_attempts: u64,
    /// Hole punches that gave a direct connection.
    pub hole_punch_successes: u64,
}

/// The NAT traversal state of a node; see the module docs.
#[derive(Debug)]
pub struct Nat {
    local: PeerId,
    relays: Vec<Relay>,
    /// Open connections: peer and whether relayed.
    connections: HashMap<ConnectionId, (PeerId, bool)>,
    /// Members whose listen addresses were already tried directly.
    tried_direct: HashSet<PeerId>,
    /// Relayed connections to close once their grace is over (the member is reached directly,
    /// or a failed hole punch is to be tried again).
    closing: Vec<(Instant, ConnectionId)>,
    /// Hole punches tried again, per member.
    retries: HashMap<PeerId, u32>,
    nat: autonat::NatStatus,
    created: Instant,
    hole_punch_attempts: u64,
    hole_punch_successes: u64,
}

impl Nat {
    /// The relays `roster` names (other than this node).
    pub fn new(local: PeerId, roster: &Roster) -> Self {
        let mut nat = Self {
            local,
            relays: Vec::new(),
            connections: HashMap::new(),
            tried_direct: HashSet::new(),
            closing: Vec::new(),
            retries: HashMap::new(),
            nat: autonat::NatStatus::Unknown,
            created: Instant::now(),
            hole_punch_attempts: 0,
            hole_punch_successes: 0,
        };
        nat.update_roster(roster);
        nat
    }

    /// The relays of `roster` with their first address; keeps the state of relays that stay.
    pub fn update_roster(&mut self, roster: &Roster) {
        let now = Instant::now();
        let mut relays = Vec::new();
        for (peer, address) in relays_of(roster) {
            if peer == self.local {
                continue;
            }
            let kept = self
                .relays
                .iter()
                .position(|r| r.peer == peer && r.address == address);
            relays.push(match kept {
                Some(i) => self.relays.swap_remove(i),
                None => Relay {
                    peer,
                    address,
                    identified: false,
                    listener: None,
                    reserved: false,
                    next_try: now,
                    wait: RESERVE_FIRST,
                },
            });
        }
        self.relays = relays;
    }

    /// Seeds Kademlia and AutoNAT with the relays: every member of `roster` with a larger peer
    /// id than this node's is known at its circuit address on each relay, and the relays are
    /// this node's AutoNAT servers. Only the smaller id of a pair dials the other through a
    /// relay: with a relayed connection each way, both ends ran a hole punch on the same ports
    /// at once, and about one pair in eight failed.
    pub fn seed(&self, swarm: &mut Swarm<Behaviour>, roster: &Roster) {
        for relay in &self.relays {
            let via = relay
                .address
                .clone()
                .with(Protocol::P2p(relay.peer))
                .with(Protocol::P2pCircuit);
            for member in &roster.members {
                let Ok(peer) = network::peer_id(&member.id) else {
                    continue;
                };
                if peer <= self.local || peer == relay.peer || member.role == Role::Relay {
                    continue;
                }
                swarm
                    .behaviour_mut()
                    .kademlia
                    .add_address(&peer, via.clone());
            }
            swarm
                .behaviour_mut()
                .autonat
                .add_server(relay.peer, Some(relay.address.clone()));
        }
    }

    /// Whether members may be dialed: there is no relay, or one has identified this node, or
    /// [`RELAY_WAIT`] has passed since start. Dials through a relay made while this node was
    /// still connecting to it were cancelled, and each failure made the next try wait longer.
    pub fn settled(&self) -> bool {
        self.relays.is_empty()
            || self.relays.iter().any(|r| r.identified)
            || self.created.elapsed() >= RELAY_WAIT
    }

    /// Whether `peer` is one of the roster's relays.
    pub fn is_relay(&self, peer: &PeerId) -> bool {
        self.relays.iter().any(|r| r.peer == *peer)
    }

    /// Closes the relayed connections whose grace is over, and asks every connected, identified
    /// relay without a reservation for one, when due. Call it every few hundred milliseconds.
    pub fn tick(&mut self, swarm: &mut Swarm<Behaviour>) {
        let now = Instant::now();
        // A relayed connection to a member also reached directly (a hole punch that libp2p
        // reported failed although the other side's dial got through, a late relayed dial).
        let direct: HashSet<PeerId> = self
            .connections
            .values()
            .filter(|(_, relayed)| !relayed)
            .map(|(peer, _)| *peer)
            .collect();
        for (id, (peer, relayed)) in &self.connections {
            if *relayed && direct.contains(peer) && !self.closing.iter().any(|(_, c)| c == id) {
                self.closing.push((now + RELAYED_GRACE, *id));
            }
        }
        let (due, later): (Vec<_>, Vec<_>) = self.closing.drain(..).partition(|(at, _)| *at <= now);
        self.closing = later;
        for (_, connection) in due {
            if self.connections.contains_key(&connection) {
                swarm.close_connection(connection);
            }
        }
        self.reserve(swarm);
    }

    /// Asks every connected, identified relay without a reservation for one, and dials a relay
    /// it is not connected to, when due.
    fn reserve(&mut self, swarm: &mut Swarm<Behaviour>) {
        let now = Instant::now();
        for relay in &mut self.relays {
            if relay.listener.is_some() || now < relay.next_try {
                continue;
            }
            if !swarm.is_connected(&relay.peer) {
                relay.next_try = now + relay.wait;
                relay.wait = (relay.wait * 2).min(RESERVE_MAX);
                let opts = DialOpts::peer_id(relay.peer)
                    .addresses(vec![relay.address.clone()])
                    .condition(PeerCondition::DisconnectedAndNotDialing)
                    .build();
                if let Err(error) = swarm.dial(opts) {
                    tracing::debug!(relay = %relay.peer, %error, "cannot dial the relay");
                }
                continue;
            }
            if !relay.identified {
                continue;
            }
            relay.next_try = now + relay.wait;
            relay.wait = (relay.wait * 2).min(RESERVE_MAX);
            let circuit = relay
                .address
                .clone()
                .with(Protocol::P2p(relay.peer))
                .with(Protocol::P2pCircuit);
            match swarm.listen_on(circuit.clone()) {
                Ok(id) => {
                    tracing::debug!(relay = %relay.peer, "asking the relay for a reservation");
                    relay.listener = Some(id);
                }
                Err(error) => tracing::warn!(%circuit, %error, "cannot listen through the relay"),
            }
        }
    }

    /// A relay accepted (or renewed) this node's reservation.
    pub fn reserved(&mut self, relay_peer: PeerId) {
        if let Some(relay) = self.relays.iter_mut().find(|r| r.peer == relay_peer) {
            if !relay.reserved {
                tracing::info!(relay = %relay_peer, "reservation on the relay accepted");
            }
            relay.reserved = true;
            relay.wait = RESERVE_FIRST;
            relay.next_try = Instant::now();
        }
    }

    /// A listener closed: if it was a relay's circuit listener, the reservation is gone.
    pub fn listener_closed(&mut self, listener: ListenerId) {
        if let Some(relay) = self
            .relays
            .iter_mut()
            .find(|r| r.listener == Some(listener))
        {
            if relay.reserved {
                tracing::warn!(relay = %relay.peer, "reservation on the relay lost");
            }
            relay.listener = None;
            relay.reserved = false;
        }
    }

    /// Identify told us about `peer`: a relay has now seen this node's address (reserve on it);
    /// another member's own listen addresses are tried directly, once per member, if it is
    /// reached only through a relay so far.
    pub fn identified(
        &mut self,
        swarm: &mut Swarm<Behaviour>,
        peer: PeerId,
        info: &identify::Info,
    ) {
        if let Some(relay) = self.relays.iter_mut().find(|r| r.peer == peer) {
            if !relay.identified {
                relay.identified = true;
                relay.next_try = Instant::now();
                relay.wait = RESERVE_FIRST;
            }
            self.reserve(swarm);
            return;
        }
        let direct: Vec<Multiaddr> = info
            .listen_addrs
            .iter()
            .filter(|a| is_direct(a) && !is_unspecified(a))
            .cloned()
            .collect();
        // Tried once, not kept for redials: another LAN's private address only times out, and
        // a pending dial holds back the redial of a member that lost its connection.
        if !direct.is_empty() && !self.has_direct(&peer) && self.tried_direct.insert(peer) {
            let opts = DialOpts::peer_id(peer)
                .addresses(direct)
                .condition(PeerCondition::Always)
                .build();
            if let Err(error) = swarm.dial(opts) {
                tracing::debug!(%peer, %error, "cannot dial the member's own addresses");
            }
        }
    }

    /// A connection opened. Once a member is reached directly its relayed connections are
    /// closed (the new one, if it is the relayed one), after [`RELAYED_GRACE`].
    pub fn connection_established(
        &mut self,
        peer: PeerId,
        connection: ConnectionId,
        endpoint: &ConnectedPoint,
    ) {
        let relayed = endpoint.is_relayed();
        self.connections.insert(connection, (peer, relayed));
        if self.has_direct(&peer) {
            let at = Instant::now() + RELAYED_GRACE;
            for (id, (p, r)) in &self.connections {
                if *p == peer && *r && !self.closing.iter().any(|(_, c)| c == id) {
                    self.closing.push((at, *id));
                }
            }
        }
    }

    /// A connection closed. A relay's last connection also ends what it knew of this node.
    pub fn connection_closed(&mut self, peer: PeerId, connection: ConnectionId, remaining: u32) {
        self.connections.remove(&connection);
        self.closing.retain(|(_, c)| *c != connection);
        if remaining == 0 {
            if let Some(relay) = self.relays.iter_mut().find(|r| r.peer == peer) {
                relay.identified = false;
            }
            // Its addresses may change by the next time (a restart, another LAN).
            self.tried_direct.remove(&peer);
        }
    }

    /// A hole punch ended. After a failure the relayed connection is closed (up to
    /// [`HOLE_PUNCH_RETRIES`] times per member) so that the member with the smaller id dials
    /// it again and the new relayed connection brings a new attempt.
    pub fn hole_punched(&mut self, event: &dcutr::Event) {
        self.hole_punch_attempts += 1;
        let peer = event.remote_peer_id;
        match &event.result {
            Ok(_) => {
                self.hole_punch_successes += 1;
                tracing::info!(%peer, "hole punched: direct connection");
            }
            Err(error) => {
                let direct = self.has_direct(&peer);
                let retries = self.retries.entry(peer).or_default();
                if *retries < HOLE_PUNCH_RETRIES && !direct {
                    *retries += 1;
                    let retry = *retries;
                    tracing::info!(%peer, %error, retry, "hole punch failed; trying again over a new relayed connection");
                    let at = Instant::now() + RETRY_AFTER;
                    for (id, (p, relayed)) in &self.connections {
                        if *p == peer && *relayed && !self.closing.iter().any(|(_, c)| c == id) {
                            self.closing.push((at, *id));
                        }
                    }
                } else {
                    tracing::info!(%peer, %error, "hole punch failed; staying relayed");
                }
            }
        }
    }

    /// AutoNAT's conclusion changed.
    pub fn nat_status(&mut self, status: autonat::NatStatus) {
        tracing::info!(?status, "NAT status");
        self.nat = status;
    }

    /// `direct` when this node holds a direct connection to `peer`, else `relayed` when it holds
    /// a relayed one; none when not connected.
    pub fn connection_kind(&self, peer: &PeerId) -> Option<&'static str> {
        if self.has_direct(peer) {
            Some("direct")
        } else if self.connections.values().any(|(p, _)| p == peer) {
            Some("relayed")
        } else {
            None
        }
    }

    fn has_direct(&self, peer: &PeerId) -> bool {
        self.connections.values().any(|(p, r)| p == peer && !r)
    }

    /// What to show in status and metrics.
    pub fn reachability(&self) -> Reachability {
        let relayed = self.connections.values().filter(|(_, r)| *r).count();
        Reachability {
            direct: self.connections.len() - relayed,
            relayed,
            reservations: self
                .relays
                .iter()
                .filter(|r| r.reserved)
                .map(|r| r.peer.to_string())
                .collect(),
            nat: match self.nat {
                autonat::NatStatus::Public(_) => "public",
                autonat::NatStatus::Private => "private",
                autonat::NatStatus::Unknown => "unknown",
            }
            .to_owned(),
            hole_punch_attempts: self.hole_punch_attempts,
            hole_punch_successes: self.hole_punch_successes,
        }
    }
}

/// The relays of `roster`: members with the relay role, each at its first address that parses
/// (without a trailing `/p2p/…`).
pub fn relays_of(roster: &Roster) -> Vec<(PeerId, Multiaddr)> {
    roster
        .members
        .iter()
        .filter(|m| m.role == Role::Relay)
        .filter_map(|m| {
            let peer = network::peer_id(&m.id).ok()?;
            let mut address = m
                .addresses
                .iter()
                .find_map(|a| a.parse::<Multiaddr>().ok())?;
            if let Some(Protocol::P2p(named)) = address.iter().last() {
                if named != peer {
                    return None;
                }
                address.pop();
            }
            Some((peer, address))
        })
        .collect()
}

/// Whether an address reaches its peer without a relay.
fn is_direct(address: &Multiaddr) -> bool {
    !address.iter().any(|p| matches!(p, Protocol::P2pCircuit))
}

/// Whether an address is a wildcard or loopback one, useless to another machine.
fn is_unspecified(address: &Multiaddr) -> bool {
    address.iter().any(|p| match p {
        Protocol::Ip4(ip) => ip.is_unspecified() || ip.is_loopback(),
        Protocol::Ip6(ip) => ip.is_unspecified() || ip.is_loopback(),
        _ => false,
    })
}

#[cfg(test)]
mod tests {
    use medmesh_testkit::{key, member};

    use super::*;

    #[test]
    fn relays_are_the_members_with_the_relay_role_and_an_address() {
        let relay_peer = network::peer_id(&key(3).id()).expect("peer id");
        let mut relay = member(3, Role::Relay);
        relay.addresses = vec![format!("/ip4/10.200.0.2/tcp/4001/p2p/{relay_peer}")];
        let mut silent = member(4, Role::Relay);
        silent.addresses.clear();
        let mut impostor = member(5, Role::Relay);
        // An address naming another peer is not this member's.
        impostor.addresses = vec![format!("/ip4/10.200.0.9/tcp/4001/p2p/{relay_peer}")];
        let roster = Roster::genesis(
            "m",
            1,
            vec![member(1, Role::Hospital), relay, silent, impostor],
        )
        .expect("roster");
        let relays = relays_of(&roster);
        assert_eq!(
            relays,
            vec![(
                relay_peer,
                "/ip4/10.200.0.2/tcp/4001".parse().expect("addr")
            )]
        );
        // A relay does not reserve on itself.
        let nat = Nat::new(relay_peer, &roster);
        assert!(nat.relays.is_empty());
        let nat = Nat::new(network::peer_id(&key(1).id()).expect("peer"), &roster);
        assert!(nat.is_relay(&relay_peer));
    }

    #[test]
    fn wildcard_loopback_and_circuit_addresses_are_not_tried_directly() {
        let direct: Multiaddr = "/ip4/10.1.0.11/tcp/4001".parse().expect("addr");
        let wildcard: Multiaddr = "/ip4/0.0.0.0/tcp/4001".parse().expect("addr");
        let loopback: Multiaddr = "/ip4/127.0.0.1/tcp/4001".parse().expect("addr");
        let circuit: Multiaddr = format!(
            "/ip4/10.200.0.2/tcp/4001/p2p/{}/p2p-circuit",
            network::peer_id(&key(3).id()).expect("peer")
        )
        .parse()
        .expect("addr");
        assert!(is_direct(&direct) && !is_unspecified(&direct));
        assert!(is_unspecified(&wildcard) && is_unspecified(&loopback));
        assert!(!is_direct(&circuit));
    }
}
