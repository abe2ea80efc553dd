//! The Grafana board in docs/ queries only metrics the node exports, each by the sample name
//! its type has in `/metrics` (a counter's `_total`, a histogram's `_sum`, `_count`, `_bucket`).

use std::collections::BTreeMap;

#[test]
fn every_metric_the_grafana_board_queries_exists_in_metrics() {
    let board: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../docs/grafana-medmesh.json"
        ))
        .expect("docs/grafana-medmesh.json"),
    )
    .expect("the board is JSON");
    let metrics = medmesh_node::admin::Metrics::new();
    // A labelled family shows in the exposition once it has a sample.
    metrics.reject("bad_signature");
    let exposition = metrics.encode();
    // Metric family -> its type, from the `# TYPE` lines.
    let types: BTreeMap<&str, &str> = exposition
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_once(' '))
        .collect();
    assert!(types.len() > 20, "{exposition}");
    let mut queried = Vec::new();
    for panel in board["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().expect("targets") {
            let expr = target["expr"].as_str().expect("an expr");
            let mut rest = expr;
            while let Some(at) = rest.find("medmesh_") {
                let name: String = rest[at..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                rest = &rest[at + name.len()..];
                queried.push(name);
            }
        }
    }
    assert!(queried.len() >= 12, "{queried:?}");
    for name in &queried {
        let ok = match types.get(name.as_str()) {
            Some(kind) => *kind == "gauge",
            None => [
                ("_total", "counter"),
                ("_sum", "histogram"),
                ("_count", "histogram"),
                ("_bucket", "histogram"),
            ]
            .iter()
            .any(|(suffix, kind)| {
                name.strip_suffix(suffix)
                    .is_some_and(|base| types.get(base) == Some(kind))
            }),
        };
        assert!(
            ok,
            "the board queries {name}, which /metrics does not have as such ({types:?})"
        );
    }
}
