//! Operator blocks (`medmesh block` / `unblock`): picking members out of the roster by name,
//! site or id, and the list of who is blocked. It only changes which connections the swarm
//! allows; it never touches the roster, which only the members' signatures change.

use std::collections::HashSet;

use libp2p::{PeerId, Swarm};
use medmesh_protocol::identity::MemberId;
use medmesh_protocol::roster::{Member, Roster};

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
    find(roster, name).map(|m| (m.id, m.name.clone()))
}

/// The member of `roster` that `text` names: its roster name, its site, its full member id or
/// a prefix of it of at least 4 hex digits (the tools print 8). Anything that picks out no
/// member, or several, is an error saying so.
pub fn find<'a>(roster: &'a Roster, text: &str) -> Result<&'a Member, String> {
    let text = text.trim();
    let lower = text.to_ascii_lowercase();
    let prefix = lower.len() >= 4 && lower.bytes().all(|b| b.is_ascii_hexdigit());
    let found: Vec<&Member> = roster
        .members
        .iter()
        .filter(|m| {
            m.name == text || m.site == text || (prefix && m.id.to_string().starts_with(&lower))
        })
        .collect();
    match found.as_slice() {
        [member] => Ok(member),
        [] => Err(format!(
            "no member has the id, id prefix (at least 4 hex digits), name or site {text:?} on \
             roster version {}; `medmesh roster show` lists them",
            roster.version
        )),
        many => Err(format!(
            "{text:?} could be {}: give more of the id",
            many.iter()
                .map(|m| format!("{} ({})", m.id.short(), m.name))
                .collect::<Vec<_>>()
                .join(" or ")
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
