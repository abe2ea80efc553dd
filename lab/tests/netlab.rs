//! The national pilot over a real network: `medmesh-lab netlab` builds 16 hospitals in four
//! centres behind masquerading NAT routers, a partner abroad behind its own NAT on a shaped
//! uplink and one relay, in network namespaces; runs 15 rounds with a cut branch link and a
//! killed relay. Needs root (network namespaces, nftables, tc): without them it fails saying
//! what is missing, never skips.

use std::process::Command;

use serde_json::Value;

#[test]
fn sixteen_hospitals_behind_nat_and_a_partner_abroad_train_through_one_relay() {
    let exe = medmesh_lab::programs::built().expect("the peer's programs");
    let tmp = tempfile::tempdir().expect("tempdir");
    let json = tmp.path().join("netlab.json");
    let schema =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../data/heart-disease/schema.toml");
    let output = Command::new(env!("CARGO_BIN_EXE_medmesh-lab"))
        .env("MEDMESH", exe)
        .arg("netlab")
        .arg("--data")
        .arg(&schema)
        .arg("--dir")
        .arg(tmp.path().join("run"))
        .arg("--json")
        .arg(&json)
        .output()
        .expect("run medmesh-lab netlab");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    eprintln!("{stderr}\n{stdout}");
    assert!(
        output.status.success(),
        "the network lab failed:\n{stderr}\n{stdout}"
    );
    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(&json).expect("the JSON report"))
            .expect("JSON");

    // 16 of 16 hospitals and the partner finish, within 1e-3, mean accuracy >= 0.70.
    let peers = report["peers"].as_array().expect("peers");
    let hospitals: Vec<&Value> = peers.iter().filter(|p| p["role"] == "hospital").collect();
    assert_eq!(hospitals.len(), 16);
    assert!(hospitals.iter().all(|p| p["finished"] == true), "{peers:?}");
    let partner = peers
        .iter()
        .find(|p| p["role"] == "validator")
        .expect("partner");
    assert_eq!(partner["finished"], true);
    assert_eq!(partner["validated"], 16);
    let distance = report["max_relative_distance"].as_f64().expect("distance");
    assert!(distance <= 1e-3, "final models {distance} apart");
    let accuracy = report["mean_accuracy"].as_f64().expect("accuracy");
    assert!(accuracy >= 0.70, "mean accuracy {accuracy}");
    // At least one direct connection by hole punching through the masquerading routers.
    assert!(
        report["hole_punch"]["successes"]
            .as_u64()
            .expect("successes")
            >= 1
    );
    assert!(
        report["hole_punch"]["attempts"].as_u64().expect("attempts")
            >= report["hole_punch"]["successes"]
                .as_u64()
                .expect("successes")
    );
    // Both faults passed.
    let faults = report["faults"].as_array().expect("faults");
    let kinds: Vec<&str> = faults.iter().filter_map(|f| f["kind"].as_str()).collect();
    assert_eq!(kinds, ["link_cut", "relay_killed"]);
    assert!(faults.iter().all(|f| f["passed"] == true), "{faults:?}");
    // Bytes through every router and the relay were counted.
    let wan = report["wan_bytes"].as_object().expect("wan_bytes");
    for router in ["r1", "r2", "r3", "r4", "rp", "relay"] {
        assert!(
            wan.get(router)
                .and_then(Value::as_u64)
                .is_some_and(|b| b > 0),
            "no bytes through {router}: {wan:?}"
        );
    }
    // Every check, the stranger's and the configs' included.
    let checks = report["checks"].as_array().expect("checks");
    assert!(checks.len() >= 8, "{checks:?}");
    assert!(checks.iter().all(|c| c["passed"] == true), "{checks:?}");
}
