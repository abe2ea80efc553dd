//! Four real `medmesh` processes on 127.0.0.1 — the four Fed-Heart-Disease hospitals, each with
//! its own key, store, config and data — form the mesh from a genesis roster and train with
//! FLamby's budget (15 rounds × 100 local steps) with no coordinator.

use std::path::Path;
use std::process::Command;

mod common;

fn medmesh(args: &[&str]) -> std::process::Output {
    Command::new(common::exe())
        .args(args)
        .output()
        .expect("medmesh runs")
}

#[test]
fn four_hospital_processes_train_heart_disease_serverlessly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let json = dir.path().join("mesh.json");
    let schema = Path::new(env!("CARGO_MANIFEST_DIR")).join("../data/heart-disease/schema.toml");
    // The lab starts the `medmesh` beside it, with its worker: both built and fresh.
    common::exe();
    let output = Command::new(env!("CARGO_BIN_EXE_medmesh-lab"))
        .args([
            "mesh",
            "--rounds",
            "15",
            "--steps",
            "100",
            "--timeout",
            "300",
        ])
        .arg("--data")
        .arg(&schema)
        .arg("--dir")
        .arg(dir.path().join("mesh"))
        .arg("--json")
        .arg(&json)
        .output()
        .expect("medmesh runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "mesh failed: {stderr}");
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).expect("report written"))
            .expect("json");
    let hospitals = report["hospitals"].as_array().expect("hospitals");
    assert_eq!(hospitals.len(), 4);
    let mean = report["mean_accuracy"].as_f64().expect("mean");
    assert!(mean >= 0.70, "mean per-center test accuracy {mean}");
    let distance = report["max_relative_distance"].as_f64().expect("distance");
    assert!(distance <= 1e-3, "hospitals disagree: {distance}");
    // Collaboration beats training alone on how models generalize across hospitals.
    let alone = report["mean_local_generalization"].as_f64().expect("alone");
    assert!(mean > alone, "mesh {mean} vs alone {alone}");
    // The validator abroad validated every hospital's final version on its own patients, and
    // every node, judging the signed reports it holds, reached the same verdict: certified.
    assert_eq!(report["validator"]["validated"], 4, "{report}");
    assert_eq!(report["verdicts_agree"], true, "{report}");
    for h in hospitals {
        assert_eq!(h["certified"], true, "{h}");
    }
    // Every node kept its signed items: each store holds the roster and versions.
    for site in [
        "cleveland",
        "hungarian",
        "switzerland",
        "va",
        "validator-abroad",
    ] {
        let store = dir.path().join("mesh").join(site).join("store.redb");
        assert!(
            store.metadata().map(|m| m.len() > 0).unwrap_or(false),
            "{site} store"
        );
    }

    // Lineage: Cleveland's final model was averaged from all four hospitals' work, and the
    // validator's report on it is part of its history.
    let final_id = hospitals[0]["final_version"]
        .as_str()
        .expect("final version id")
        .to_owned();
    let store = dir.path().join("mesh/cleveland/store.redb");
    let store = store.to_string_lossy();
    let lineage = medmesh(&["lineage", &final_id, "--store", &store, "--format", "json"]);
    assert!(
        lineage.status.success(),
        "{}",
        String::from_utf8_lossy(&lineage.stderr)
    );
    let lineage: serde_json::Value = serde_json::from_slice(&lineage.stdout).expect("json");
    let mut sites: Vec<&str> = lineage["contributors"]
        .as_array()
        .expect("contributors")
        .iter()
        .filter_map(|p| p["site"].as_str())
        .collect();
    sites.sort_unstable();
    assert_eq!(sites, ["cleveland", "hungarian", "switzerland", "va"]);
    assert_eq!(lineage["validators"].as_array().map(Vec::len), Some(1));

    // Export it as a bundle and verify it offline; a flipped byte is caught and named.
    let bundle = dir.path().join("bundle");
    let config = dir.path().join("mesh/cleveland/node.toml");
    let export = medmesh(&[
        "export",
        "--config",
        &config.to_string_lossy(),
        "--model",
        &final_id,
        "--out",
        &bundle.to_string_lossy(),
    ]);
    assert!(
        export.status.success(),
        "{}",
        String::from_utf8_lossy(&export.stderr)
    );
    // `medmesh` copied alone into an empty folder, with no `medmesh-train` and no libtorch
    // anywhere it could look (an empty environment), checks the bundle: verification never
    // starts a worker, and the binary does not link libtorch.
    let alone = dir.path().join("alone");
    std::fs::create_dir(&alone).expect("empty folder");
    let copy = alone.join("medmesh");
    std::fs::copy(common::exe(), &copy).expect("copies medmesh");
    let verify = Command::new(&copy)
        .arg("verify")
        .arg(&bundle)
        .env_clear()
        .current_dir(&alone)
        .output()
        .expect("the copy runs");
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stderr)
    );
    assert_eq!(
        std::fs::read_dir(&alone).expect("lists").count(),
        1,
        "verify wrote nothing beside the binary"
    );
    let said = String::from_utf8_lossy(&verify.stdout);
    assert!(
        said.contains("lays out these tensors"),
        "the tensor layout was checked against the model spec: {said}"
    );

    // Each hospital derived its personalized model; Switzerland's exports beside the shared
    // version it came from, which the bundle holds and verifies.
    let swiss = &hospitals[2];
    assert_eq!(swiss["site"], "switzerland");
    let personalized = swiss["personalized_accuracy"]
        .as_f64()
        .expect("personalized");
    assert!(
        personalized >= swiss["accuracy"].as_f64().expect("shared"),
        "{swiss}"
    );
    let own = dir.path().join("own");
    let swiss_config = dir.path().join("mesh/switzerland/node.toml");
    let export = medmesh(&[
        "export",
        "--personalized",
        "--config",
        &swiss_config.to_string_lossy(),
        "--out",
        &own.to_string_lossy(),
    ]);
    assert!(
        export.status.success(),
        "{}",
        String::from_utf8_lossy(&export.stderr)
    );
    let manifest: serde_json::Value = serde_json::from_slice(
        &std::fs::read(own.join("personalized.json")).expect("personalized.json"),
    )
    .expect("json");
    assert_eq!(
        manifest["personalized_from"], swiss["final_version"],
        "{manifest}"
    );
    assert_eq!(
        manifest["local_test"]["accuracy"].as_f64(),
        Some(personalized),
        "{manifest}"
    );
    assert!(own.join("personalized.safetensors").is_file());
    let verify = medmesh(&["verify", &own.to_string_lossy()]);
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stderr)
    );
    // Asked without a config it says what it needs.
    let refused = medmesh(&["export", "--personalized", "--out", &own.to_string_lossy()]);
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("--config"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );

    let weights = bundle.join("model.safetensors");
    let mut bytes = std::fs::read(&weights).expect("weights");
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&weights, bytes).expect("tamper");
    let verify = medmesh(&["verify", &bundle.to_string_lossy()]);
    assert!(!verify.status.success());
    let why = String::from_utf8_lossy(&verify.stderr);
    assert!(why.contains("model.safetensors"), "{why}");
}

#[test]
fn medmesh_baseline_runs_the_training_workers_baseline() {
    let help = medmesh(&["baseline", "--help"]);
    let text = String::from_utf8_lossy(&help.stdout);
    assert!(help.status.success(), "{text}");
    assert!(
        text.contains("--epochs") && text.contains("--seeds"),
        "{text}"
    );

    let dir = tempfile::tempdir().expect("tempdir");
    let json = dir.path().join("baseline.json");
    let schema = Path::new(env!("CARGO_MANIFEST_DIR")).join("../data/heart-disease/schema.toml");
    let run = medmesh(&[
        "baseline",
        "--data",
        &schema.to_string_lossy(),
        "--seeds",
        "42",
        "--epochs",
        "3",
        "--json",
        &json.to_string_lossy(),
    ]);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "{stderr}");
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&json).expect("json written")).expect("json");
    let rows = report["rows"].as_array().expect("rows");
    assert_eq!(
        rows.len(),
        6,
        "pooled, pooled with consistent normalization, 4 centers alone"
    );
    let pooled = rows[0]["mean"].as_f64().expect("a mean");
    assert!(pooled > 0.6, "pooled accuracy after 3 epochs {pooled}");

    let bad = medmesh(&["baseline", "--epochs", "many"]);
    assert_eq!(
        bad.status.code(),
        Some(2),
        "clap's usage error, passed through"
    );
}
