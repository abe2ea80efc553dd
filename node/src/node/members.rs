//! Operator blocks (`medmesh block` / `unblock`): picking members out of the roster by name,
//! site or id, and the list of who is blocked. It only changes which connections the swarm
//! allows; it never touches the roster, which only the members' signatures change.

use std::collections::HashSet;

use libp2p::{PeerId, Swarm};
use medmesh_protocol::identity::MemberId;
use medmesh_protocol::roster::Roster;

use crate::network;

/// Blocks or unblocks members named by roster name, site or member id (full hex, or the
/// 8-digit short form), each of which must pick out one member; the names of every member
/// blocked afterwards.
pub(super) fn block(
    swarm: &mut Swarm<network::Behaviour>,
    roster: &Roster,
    me: &MemberId,
    blocked: &mut HashSet<PeerId>,
    redial: &mut network::Redial,
    names: &[String],
    block: bool,
) -> Result<Vec<String>, String> {
    let mut peers = Vec::new();
    for name in names {
        let member = pick(roster, name.trim())?;
        if member.0 == *me {
            return Err(format!("{:?} is this node", name.trim()));
        }
        let peer = network::peer_id(&member.0).map_err(|e| e.to_string())?;
        peers.push((peer, member.1));
    }
    for (peer, name) in peers {
        network::block(swarm, roster, peer, block);
        if block {
            blocked.insert(peer);
            tracing::warn!(member = %name, "blocked by the operator: connections closed and refused");
        } else if blocked.remove(&peer) {
            redial.reset(&peer);
            tracing::warn!(member = %name, "unblocked by the operator");
        }
    }
    Ok(names_of(roster, blocked))
}

/// The one member `name` picks out: its id and roster name.
fn pick(roster: &Roster, name: &str) -> Result<(MemberId, String), String> {
    let found: Vec<_> = roster
        .members
        .iter()
        .filter(|m| {
            m.name == name || m.site == name || m.id.to_string() == name || m.id.short() == name
        })
        .collect();
    match found.as_slice() {
        [member] => Ok((member.id, member.name.clone())),
        [] => Err(format!(
            "{name:?} is not a member on roster version {}",
            roster.version
        )),
        _ => Err(format!(
            "{name:?} names {} members; give a member id",
            found.len()
        )),
    }
}

/// The roster names of the blocked members, sorted.
pub(super) fn names_of(roster: &Roster, blocked: &HashSet<PeerId>) -> Vec<String> {
    let mut names: Vec<String> = roster
        .members
        .iter()
        .filter(|m| network::peer_id(&m.id).is_ok_and(|p| blocked.contains(&p)))
        .map(|m| m.name.clone())
        .collect();
    names.sort();
    names
}
