//! Four real `medmesh` processes on 127.0.0.1 — the four Fed-Heart-Disease hospitals, each with
//! its own key, store, config and data — form the mesh from a genesis roster and train with
//! FLamby's budget (15 rounds × 100 local steps) with no coordinator.

use std::path::Path;
use std::process::Command;

#[test]
fn four_hospital_processes_train_heart_disease_serverlessly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let json = dir.path().join("mesh.json");
    let schema = Path::new(env!("CARGO_MANIFEST_DIR")).join("../data/heart-disease/schema.toml");
    let output = Command::new(env!("CARGO_BIN_EXE_medmesh"))
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
    // Every node kept its signed items: each store holds the roster and versions.
    for site in ["cleveland", "hungarian", "switzerland", "va"] {
        let store = dir.path().join("mesh").join(site).join("store.redb");
        assert!(
            store.metadata().map(|m| m.len() > 0).unwrap_or(false),
            "{site} store"
        );
    }
}
