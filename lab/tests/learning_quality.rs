//! What README's learning-quality tables state, on the real four-process mesh over seeds 42–46
//! (`medmesh-lab mesh --seeds 42,43,44,45,46`) with FLamby's budget and the node's defaults:
//! the shared model's mean accuracy reaches 0.74 and beats every hospital's model trained alone
//! on how it does across all hospitals; each hospital's personalized model does at least as well
//! as training alone on its own patients (within a point, mean over the seeds), and better than
//! the shared model where the hospital's patients differ; the simulator (`heart-disease-node.toml`) reproduces every seed's mean
//! within a point. And Fed-TCGA-BRCA's six regions reach a mean C-index of 0.80.

use std::path::Path;
use std::process::Command;

mod common;

fn run_mesh(schema: &str, dir: &Path) -> serde_json::Value {
    common::exe();
    let json = dir.join("report.json");
    let output = Command::new(env!("CARGO_BIN_EXE_medmesh-lab"))
        .args(["mesh", "--seeds", "42,43,44,45,46", "--no-validator"])
        .arg("--data")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join(schema))
        .arg("--dir")
        .arg(dir.join("mesh"))
        .arg("--json")
        .arg(&json)
        .output()
        .expect("medmesh-lab runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "mesh failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    eprintln!("{stdout}");
    serde_json::from_str(&std::fs::read_to_string(&json).expect("report written")).expect("json")
}

fn mean(stat: &serde_json::Value) -> f64 {
    stat["mean"]
        .as_f64()
        .unwrap_or_else(|| panic!("no mean in {stat}"))
}

#[test]
fn heart_disease_shared_personalized_and_simulated() {
    let dir = tempfile::tempdir().expect("tempdir");
    let report = run_mesh("../data/heart-disease/schema.toml", dir.path());
    assert_eq!(report["metric"], "accuracy");
    let shared = mean(&report["shared"]);
    assert!(shared >= 0.74, "mean accuracy over seeds 42-46 {shared}");

    let hospitals = report["hospitals"].as_array().expect("hospitals");
    assert_eq!(hospitals.len(), 4);
    let mut gained = 0;
    for h in hospitals {
        let site = h["site"].as_str().expect("site");
        let rows = h["test_rows"].as_f64().expect("rows");
        let (alone, personalized) = (mean(&h["alone"]), mean(&h["personalized"]));
        let everywhere = mean(&h["alone_everywhere"]);
        // The shared model beats each model trained alone on all hospitals' splits.
        assert!(
            shared > everywhere,
            "{site}: shared {shared}, alone everywhere {everywhere}"
        );
        // Personalized at least as good as training alone on the hospital's own split, within
        // a point (mean over the seeds).
        assert!(
            personalized >= alone - 0.01,
            "{site}: personalized {personalized}, alone {alone} on {rows} patients"
        );
        if personalized > mean(&h["shared"]) + 0.05 {
            gained += 1;
        }
    }
    // Where a hospital's patients differ most (Switzerland: 15 of 16 ill), its own model gains
    // on the shared one.
    assert!(
        gained >= 1,
        "no hospital's personalized model gained on the shared one"
    );
    let (alone, personalized) = (mean(&report["alone"]), mean(&report["personalized"]));
    assert!(
        personalized >= alone - 0.01,
        "personalized {personalized} against alone {alone}, mean over hospitals"
    );

    // Every run reports each hospital's bootstrap interval around its figure; Switzerland's 16
    // patients make it wide.
    for run in report["runs"].as_array().expect("runs") {
        for h in run["hospitals"].as_array().expect("hospitals") {
            let interval = h["interval"].as_array().expect("interval");
            let (low, high) = (
                interval[0].as_f64().expect("low"),
                interval[1].as_f64().expect("high"),
            );
            let value = h["accuracy"].as_f64().expect("accuracy");
            assert!(low <= value && value <= high, "{h}");
            if h["site"] == "switzerland" {
                assert!(high - low > 0.2, "{h}");
            }
        }
    }

    // The simulator, with the node's learner and defaults, reproduces each seed.
    let sim = medmesh_lab::programs::simulator().expect("medmesh-sim");
    let out = dir.path().join("sim");
    let status = Command::new(sim)
        .arg("run")
        .arg(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../simulations/scenarios/heart-disease-node.toml"),
        )
        .arg("--out")
        .arg(&out)
        .status()
        .expect("medmesh-sim runs");
    assert!(status.success());
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).expect("summary"))
            .expect("json");
    let simulated = summary["final_accuracy"].as_array().expect("per seed");
    let runs = report["runs"].as_array().expect("runs");
    assert_eq!(simulated.len(), runs.len());
    for (seed, (sim, run)) in report["seeds"]
        .as_array()
        .expect("seeds")
        .iter()
        .zip(simulated.iter().zip(runs))
    {
        let (sim, mesh) = (
            sim.as_f64().expect("simulated accuracy"),
            run["mean_accuracy"].as_f64().expect("mesh accuracy"),
        );
        assert!(
            (sim - mesh).abs() <= 0.01,
            "seed {seed}: simulated {sim}, mesh {mesh}"
        );
    }
}

#[test]
fn tcga_brca_reaches_a_mean_c_index_of_080() {
    let dir = tempfile::tempdir().expect("tempdir");
    let report = run_mesh("../data/tcga-brca/schema.toml", dir.path());
    assert_eq!(report["metric"], "c_index");
    let shared = mean(&report["shared"]);
    assert!(shared >= 0.80, "mean C-index over seeds 42-46 {shared}");
    let (alone, personalized) = (mean(&report["alone"]), mean(&report["personalized"]));
    assert!(shared > alone, "shared {shared}, alone {alone}");
    assert!(
        personalized > alone,
        "personalized {personalized}, alone {alone}"
    );
}
