//! A stranger: a fresh key that is on no roster, dialing a member through a relay. The netlab
//! runs it inside a hospital LAN's namespace (`medmesh-lab stranger`) and expects it refused.

use std::time::Duration;

use futures::StreamExt;
use libp2p::multiaddr::Protocol;
use libp2p::swarm::SwarmEvent;
use libp2p::{Multiaddr, PeerId};
use medmesh_node::keys;
use medmesh_node::network::{self, NetworkConfig};
use medmesh_protocol::roster::{Member, Role, Roster};

/// Dials `target` through `relay` (ending in `/p2p/RELAY`) with a fresh key; whether a
/// connection to the target was established within `timeout`.
pub fn attempt(relay: &Multiaddr, target: PeerId, timeout: Duration) -> anyhow::Result<bool> {
    let Some(Protocol::P2p(relay_peer)) = relay.iter().last() else {
        anyhow::bail!("the relay address {relay} must end with /p2p/<peer id>");
    };
    let key = keys::generate()?;
    // The stranger's own allow list lets it dial the two; theirs do not list it.
    let member = |peer: &PeerId, name: &str| -> anyhow::Result<Member> {
        Ok(Member {
            id: network::member_id(peer)
                .ok_or_else(|| anyhow::anyhow!("{peer} is not an ed25519 peer id"))?,
            name: name.into(),
            site: name.into(),
            country: "US".into(),
            group: String::new(),
            role: Role::Observer,
            addresses: Vec::new(),
        })
    };
    let roster = Roster::genesis(
        "stranger",
        1,
        vec![member(&relay_peer, "relay")?, member(&target, "target")?],
    )?;
    let config = NetworkConfig {
        listen: Vec::new(),
        mdns: false,
        ..NetworkConfig::default()
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let mut swarm = network::build_swarm(&key, &config, &roster)?;
        let circuit = relay
            .clone()
            .with(Protocol::P2pCircuit)
            .with(Protocol::P2p(target));
        swarm.dial(circuit)?;
        let outcome = tokio::time::timeout(timeout, async {
            loop {
                match swarm.select_next_some().await {
                    SwarmEvent::ConnectionEstablished { peer_id, .. } if peer_id == target => {
                        return true;
                    }
                    SwarmEvent::OutgoingConnectionError {
                        peer_id: Some(peer),
                        ..
                    } if peer == target => return false,
                    _ => {}
                }
            }
        })
        .await;
        Ok(outcome.unwrap_or(false))
    })
}
