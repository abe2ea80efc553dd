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

/// A config mistake is named, with what would be valid, before the store file exists.
#[tokio::test]
async fn config_mistakes_are_named_before_anything_is_written() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut hospital = member(1, Role::Hospital);
    hospital.site = "clevland".into();
    let genesis = Roster::genesis("sites", 1, vec![hospital, member(2, Role::Hospital)])?;
    node::write_roster(
        &dir.path().join("roster.json"),
        &signed_by(genesis.clone(), &[1, 2]),
    )?;
    let next = genesis.next(genesis.members.clone(), 1)?;
    node::write_roster(&dir.path().join("next.json"), &signed_by(next, &[1]))?;
    keys::write(&dir.path().join("key.pem"), &key(1))?;
    let schema = Path::new(env!("CARGO_MANIFEST_DIR")).join("../data/heart-disease/schema.toml");
    let store = dir.path().join("store.redb");
    let config = |schema: &Path, site: &str, genesis: &str| NodeConfig {
        key: dir.path().join("key.pem"),
        store: store.clone(),
        genesis: dir.path().join(genesis),
        data: DataConfig {
            schema: schema.to_owned(),
            site: site.into(),
            shard: None,
        },
        ..NodeConfig::default()
    };
    let cases = [
        (
            config(
                &dir.path().join("missing/schema.toml"),
                "clevland",
                "roster.json",
            ),
            vec!["`[data] schema`", "missing/schema.toml"],
        ),
        (
            config(&schema, "clevland", "roster.json"),
            vec![
                "`[data] site` = \"clevland\"",
                "cleveland, hungarian, switzerland, va",
            ],
        ),
        (
            config(&schema, "clevland", "next.json"),
            vec!["roster version 1", "genesis (version 0)", "roster publish"],
        ),
    ];
    for (config, expected) in cases {
        let error = node::run(config, std::future::pending())
            .await
            .expect_err("a broken config starts");
        let message = format!("{error:#}");
        for part in expected {
            assert!(message.contains(part), "{part:?} not in: {message}");
        }
        assert!(!store.exists(), "the store was created before: {message}");
    }
    Ok(())
}
