//! A node whose key is not on the roster it knows waits here to be admitted: it keeps dialing
//! the bootstrap members (who refuse it until they follow a roster that admits it), asks each
//! member it reaches for the roster versions after its own, and takes updates its operator
//! posts to the admin endpoint. It never trains, gossips or answers payload requests while it
//! waits; every roster update it adopts is verified against its chain and stored.

use std::collections::HashSet;

use futures::StreamExt;
use libp2p::multiaddr::Protocol;
use libp2p::request_response;
use libp2p::swarm::SwarmEvent;
use libp2p::{PeerId, Swarm, gossipsub};
use medmesh_protocol::identity::MemberId;
use medmesh_protocol::peer::Item;
use medmesh_protocol::roster::{self, Chain, Roster, SignedRoster};
use tokio::sync::mpsc;

use super::members;
use crate::admin;
use crate::config::NodeConfig;
use crate::network::{self, RosterRequest, RosterResponse};
use crate::storage::Storage;

/// A node waiting for admission dials the bootstrap members again this often.
const REDIAL: std::time::Duration = std::time::Duration::from_secs(2);

/// What waiting for admission works with.
pub(super) struct Admission<'a> {
    pub(super) swarm: &'a mut Swarm<network::Behaviour>,
    pub(super) chain: &'a mut Chain,
    pub(super) storage: &'a mut Storage,
    pub(super) config: &'a NodeConfig,
    pub(super) commands: &'a mut mpsc::Receiver<admin::Command>,
    pub(super) subscribed: &'a mut HashSet<PeerId>,
    pub(super) blocked: &'a mut HashSet<PeerId>,
    pub(super) redial: &'a mut network::Redial,
    pub(super) me: MemberId,
}

impl Admission<'_> {
    /// Waits until a roster version admits this key (`true`) or `shutdown` (`false`).
    pub(super) async fn run(
        mut self,
        mut shutdown: std::pin::Pin<&mut impl std::future::Future<Output = ()>>,
    ) -> anyhow::Result<bool> {
        tracing::warn!(
            member = %self.me,
            version = self.chain.current().version,
            mesh = %self.chain.current().mesh,
            "this key is not on the roster; waiting to be admitted: a member proposes it \
             (`medmesh roster propose --add`), a threshold of members sign, and \
             `medmesh roster publish` hands the update to a running member"
        );
        let mut redial = tokio::time::interval(REDIAL);
        redial.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            if self.chain.current().contains(&self.me) {
                tracing::info!(
                    version = self.chain.current().version,
                    "admitted: this key is on the roster"
                );
                return Ok(true);
            }
            tokio::select! {
                event = self.swarm.select_next_some() => self.handle_swarm_event(event).await?,
                _ = redial.tick() => self.dial_bootstrap(),
                Some(command) = self.commands.recv() => self.handle_command(command).await?,
                () = shutdown.as_mut() => {
                    tracing::info!("shutting down before admission");
                    return Ok(false);
                }
            }
        }
    }

    async fn handle_swarm_event(
        &mut self,
        event: SwarmEvent<network::Event>,
    ) -> anyhow::Result<()> {
        match event {
            SwarmEvent::ConnectionEstablished {
                peer_id,
                num_established,
                ..
            } if num_established.get() == 1 => {
                request_roster(self.swarm, peer_id, self.chain.current());
            }
            SwarmEvent::Behaviour(network::Event::Roster(request_response::Event::Message {
                peer: from,
                message,
                ..
            })) => match message {
                request_response::Message::Request {
                    request, channel, ..
                } => answer_roster(self.swarm, self.chain, &request, channel),
                request_response::Message::Response { response, .. } => {
                    let mut advanced = false;
                    for update in response.updates {
                        match adopt(self.chain, self.storage, update).await? {
                            Ok(changed) => advanced |= changed,
                            Err(error) => {
                                tracing::warn!(peer = %from, %error, "roster update refused");
                                break;
                            }
                        }
                    }
                    if advanced {
                        network::allow_members(self.swarm, self.chain.current(), self.blocked);
                        request_roster(self.swarm, from, self.chain.current());
                    }
                }
            },
            SwarmEvent::Behaviour(network::Event::Gossip(gossipsub::Event::Subscribed {
                peer_id,
                ..
            })) => {
                self.subscribed.insert(peer_id);
            }
            SwarmEvent::Behaviour(network::Event::Gossip(gossipsub::Event::Unsubscribed {
                peer_id,
                ..
            })) => {
                self.subscribed.remove(&peer_id);
            }
            SwarmEvent::OutgoingConnectionError { peer_id, error, .. } => {
                tracing::debug!(?peer_id, %error, "member not reachable (or not admitting us yet)");
            }
            _ => {}
        }
        Ok(())
    }

    fn dial_bootstrap(&mut self) {
        let local = *self.swarm.local_peer_id();
        for address in &self.config.network.bootstrap {
            if let Some(Protocol::P2p(peer)) = address.iter().last()
                && peer != local
                && !self.swarm.is_connected(&peer)
            {
                let _ = self.swarm.dial(address.clone());
            }
        }
    }

    async fn handle_command(&mut self, command: admin::Command) -> anyhow::Result<()> {
        match command {
            admin::Command::Validate { reply, .. } => {
                let _ = reply.send(Err("this node is not admitted to the roster yet".into()));
            }
            admin::Command::Block {
                members,
                block,
                reply,
            } => {
                let answer = members::block(
                    self.swarm,
                    self.chain.current(),
                    &self.me,
                    self.blocked,
                    self.redial,
                    &members,
                    block,
                );
                let _ = reply.send(answer);
            }
            admin::Command::Roster { update, reply } => {
                let answer = match adopt(self.chain, self.storage, update).await? {
                    Ok(_) => {
                        network::allow_members(self.swarm, self.chain.current(), self.blocked);
                        Ok(self.chain.current().version)
                    }
                    Err(e) => Err(e.to_string()),
                };
                let _ = reply.send(answer);
            }
        }
        Ok(())
    }
}

/// Offers a roster update to the chain and queues it for the store if it advanced the chain:
/// `Ok(Ok(true))` advanced, `Ok(Ok(false))` a duplicate, `Ok(Err(_))` refused; `Err` only when
/// the store's writer stopped.
async fn adopt(
    chain: &mut Chain,
    storage: &mut Storage,
    update: SignedRoster,
) -> anyhow::Result<Result<bool, roster::Error>> {
    match chain.apply(update) {
        Ok(roster::Outcome::Advanced { version }) => {
            storage
                .put(vec![Item::Roster(chain.current_signed().clone())])
                .await?;
            tracing::info!(version, "roster update accepted");
            Ok(Ok(true))
        }
        Ok(roster::Outcome::Duplicate) => Ok(Ok(false)),
        Err(e) => Ok(Err(e)),
    }
}

/// Answers a member's roster sync request from `chain`: the versions after the one it has.
pub(super) fn answer_roster(
    swarm: &mut Swarm<network::Behaviour>,
    chain: &Chain,
    request: &RosterRequest,
    channel: request_response::ResponseChannel<RosterResponse>,
) {
    let answer = RosterResponse::answer(&chain.current().mesh, chain.history(), request);
    let _ = swarm.behaviour_mut().roster.send_response(channel, answer);
}

/// Asks `peer` for the roster versions after `roster`'s.
pub(super) fn request_roster(swarm: &mut Swarm<network::Behaviour>, peer: PeerId, roster: &Roster) {
    swarm.behaviour_mut().roster.send_request(
        &peer,
        RosterRequest {
            mesh: roster.mesh.clone(),
            after: roster.version,
        },
    );
}
