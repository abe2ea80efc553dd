//! A member that asks for payloads faster than its allowance is answered "not found" and
//! counted as `rate_limited` on `/metrics`. One node (an observer: no training worker) runs in
//! this process; a second member, a bare swarm, floods it with payload requests over libp2p.

use std::net::{SocketAddr, TcpListener};
use std::time::Duration;

use anyhow::Context;
use futures::StreamExt;
use libp2p::request_response::{self, Message};
use libp2p::swarm::SwarmEvent;
use medmesh_node::config::{DataConfig, NodeConfig};
use medmesh_node::network::{self, NetworkConfig, Response};
use medmesh_node::{admin, keys, node};
use medmesh_protocol::identity::ContentId;
use medmesh_protocol::roster::{Role, Roster};
use medmesh_testkit::{key, member, signed_by};

/// Requests the flooder sends at once.
const REQUESTS: u64 = 40;
/// The node's allowance per member: a burst of 4, then one a second.
const BURST: u32 = 4;

#[tokio::test]
async fn payload_requests_beyond_a_members_allowance_are_refused_and_counted() -> anyhow::Result<()>
{
    let dir = tempfile::tempdir()?;
    let (server, flooder) = (key(1), key(2));
    let roster = Roster::genesis(
        "limits",
        1,
        vec![member(1, Role::Observer), member(2, Role::Hospital)],
    )?;
    node::write_roster(
        &dir.path().join("roster.json"),
        &signed_by(roster.clone(), &[1, 2]),
    )?;
    keys::write(&dir.path().join("key.pem"), &server)?;

    // The flooder listens and the node dials it, so only the admin endpoint needs a free port.
    let loopback = || -> anyhow::Result<_> { Ok(vec!["/ip4/127.0.0.1/tcp/0".parse()?]) };
    let mut swarm = network::build_swarm(
        &flooder,
        &NetworkConfig {
            listen: loopback()?,
            mdns: false,
            ..NetworkConfig::default()
        },
        &roster,
    )?;
    let address = loop {
        if let SwarmEvent::NewListenAddr { address, .. } = swarm.select_next_some().await {
            break address
                .with_p2p(*swarm.local_peer_id())
                .map_err(|a| anyhow::anyhow!("{a} has a peer id already"))?;
        }
    };
    let admin_addr: SocketAddr = TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let config = NodeConfig {
        key: dir.path().join("key.pem"),
        store: dir.path().join("store.redb"),
        genesis: dir.path().join("roster.json"),
        admin: Some(admin_addr),
        data: DataConfig {
            schema: concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../data/heart-disease/schema.toml"
            )
            .into(),
            site: "cleveland".into(),
            shard: None,
        },
        network: NetworkConfig {
            listen: loopback()?,
            bootstrap: vec![address],
            mdns: false,
            payload_request_burst: BURST,
            payload_requests_per_second: 1,
            ..NetworkConfig::default()
        },
        ..NodeConfig::default()
    };
    let token = config.admin_token_path();

    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = node::run(config, async {
        let _ = stopped.await;
    });
    let flood = async {
        let result = tokio::time::timeout(Duration::from_secs(60), async {
            let target = network::peer_id(&server.id())?;
            while !swarm.is_connected(&target) {
                swarm.select_next_some().await;
            }
            for n in 0..REQUESTS {
                let id = ContentId([u8::try_from(n)?; 32]);
                swarm.behaviour_mut().payload.send_request(&target, id);
            }
            let mut not_found = 0;
            while not_found < REQUESTS {
                let SwarmEvent::Behaviour(network::Event::Payload(event)) =
                    swarm.select_next_some().await
                else {
                    continue;
                };
                match event {
                    request_response::Event::Message {
                        message: Message::Response { response, .. },
                        ..
                    } => {
                        anyhow::ensure!(matches!(response, Response::NotFound), "a payload?");
                        not_found += 1;
                    }
                    request_response::Event::OutboundFailure { error, .. } => {
                        anyhow::bail!("a request failed instead of being answered: {error}")
                    }
                    _ => {}
                }
            }
            let endpoint = admin::Endpoint::new(admin_addr, &token)?;
            let metrics = admin::get(&endpoint, "/metrics").await?;
            let text = String::from_utf8_lossy(&metrics).into_owned();
            let limited = text
                .lines()
                .find_map(|l| l.strip_prefix("medmesh_rejections_total{reason=\"rate_limited\"} "))
                .and_then(|v| v.trim().parse::<u64>().ok())
                .with_context(|| format!("no rate_limited count on /metrics:\n{text}"))?;
            Ok::<_, anyhow::Error>(limited)
        })
        .await;
        let _ = stop.send(());
        result.context("the flood took over a minute")?
    };
    let (outcome, limited) = tokio::join!(running, flood);
    outcome?;
    let limited = limited?;
    eprintln!("{limited} of {REQUESTS} payload requests rate-limited");
    // All at once: the burst is answered, the rest refused (one more for each second the
    // flood took to arrive, at most a few).
    let burst = u64::from(BURST);
    assert!(
        (REQUESTS - burst - 5..=REQUESTS - burst).contains(&limited),
        "{limited} of {REQUESTS} requests rate-limited with a burst of {burst}"
    );
    Ok(())
}
