//! A hospital's node configured with another site's data refuses to start, naming both sites
//! (the roster's and the config's), before it trains on anything.

use std::path::Path;

use medmesh_node::config::{DataConfig, NodeConfig};
use medmesh_node::{keys, node};
use medmesh_protocol::roster::{Role, Roster};
use medmesh_testkit::{key, member, signed_by};

#[tokio::test]
async fn a_hospital_configured_with_another_sites_data_refuses_to_start() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut hospital = member(1, Role::Hospital);
    hospital.site = "cleveland".into();
    let roster = Roster::genesis("sites", 1, vec![hospital, member(2, Role::Hospital)])?;
    node::write_roster(&dir.path().join("roster.json"), &signed_by(roster, &[1, 2]))?;
    keys::write(&dir.path().join("key.pem"), &key(1))?;
    let schema = Path::new(env!("CARGO_MANIFEST_DIR")).join("../data/heart-disease/schema.toml");
    let config = |site: &str| NodeConfig {
        key: dir.path().join("key.pem"),
        store: dir.path().join("store.redb"),
        genesis: dir.path().join("roster.json"),
        data: DataConfig {
            schema: schema.clone(),
            site: site.into(),
            shard: None,
        },
        ..NodeConfig::default()
    };
    let error = node::run(config("hungarian"), std::future::pending())
        .await
        .expect_err("started on another site's data");
    let message = format!("{error:#}");
    assert!(
        message.contains("\"cleveland\"") && message.contains("\"hungarian\""),
        "{message}"
    );
    Ok(())
}
