//! The operator's commands as a hospital's IT runs them: keys and ids, a genesis roster with
//! groups signed in turn (`roster show` says who is missing), a proposal naming members by
//! short id and name, and `config init`.

use std::path::Path;
use std::process::{Command, Output};

fn medmesh(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_medmesh"))
        .current_dir(dir)
        .args(args)
        .output()
        .expect("medmesh runs")
}

fn ok(dir: &Path, args: &[&str]) -> String {
    let out = medmesh(dir, args);
    assert!(
        out.status.success(),
        "medmesh {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8")
}

fn fails(dir: &Path, args: &[&str]) -> String {
    let out = medmesh(dir, args);
    assert!(!out.status.success(), "medmesh {args:?} succeeded");
    String::from_utf8(out.stderr).expect("utf-8")
}

#[test]
fn keys_rosters_and_configs_from_the_command_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let dir = dir.path();
    let mut ids = Vec::new();
    for name in ["a", "b", "c"] {
        let id = ok(dir, &["init", "--key", &format!("{name}.pem")]);
        ids.push(id.trim().to_owned());
    }
    // `id` prints both ids; `--peer` the peer id alone, the one addresses end with.
    let id = ok(dir, &["id", "--key", "a.pem"]);
    let peer = ok(dir, &["id", "--key", "a.pem", "--peer"]);
    assert!(id.contains(&format!("member id {}", ids[0])), "{id}");
    assert!(peer.trim().starts_with("12D3KooW"), "{peer}");
    assert!(id.contains(&format!("peer id   {}", peer.trim())), "{id}");

    let members: Vec<String> = ["Cleveland main", "Cleveland east", "Basel"]
        .iter()
        .zip(&ids)
        .zip(["centre-a", "centre-a", "centre-b"])
        .map(|((name, id), group)| format!("{id},{name},site,US,hospital,group={group}"))
        .collect();
    let mut args = vec![
        "roster",
        "genesis",
        "--mesh",
        "national",
        "--threshold",
        "2",
    ];
    for m in &members {
        args.extend(["--member", m.as_str()]);
    }
    ok(dir, &args);
    let show = ok(dir, &["roster", "show", "roster.json"]);
    assert!(show.contains("genesis digest "), "{show}");
    assert!(show.contains("group centre-b"), "{show}");
    assert!(show.contains("signed by 0 member(s)"), "{show}");
    ok(dir, &["roster", "sign", "roster.json", "--key", "a.pem"]);
    ok(dir, &["roster", "sign", "roster.json", "--key", "b.pem"]);
    let show = ok(dir, &["roster", "show", "roster.json"]);
    assert!(show.contains("signed by 2 member(s)"), "{show}");
    assert!(
        show.contains(&format!(
            "missing (a genesis needs every founder): Basel ({})",
            &ids[2][..8]
        )),
        "{show}"
    );
    ok(dir, &["roster", "sign", "roster.json", "--key", "c.pem"]);
    assert!(ok(dir, &["roster", "show", "roster.json"]).contains("complete: every founder signed"));

    // A proposal names members by short id and by name.
    ok(
        dir,
        &[
            "roster",
            "propose",
            "--current",
            "roster.json",
            "--remove",
            &ids[2][..8],
            "--group",
            "Cleveland east=centre-c",
            "--out",
            "next.json",
        ],
    );
    let next = ok(dir, &["roster", "show", "next.json"]);
    assert!(!next.contains("Basel"), "removed by its short id: {next}");
    assert!(next.contains("version 1"), "{next}");
    assert!(
        next.contains("Cleveland east (site, US, group centre-c)"),
        "{next}"
    );
    let unknown = fails(
        dir,
        &[
            "roster",
            "propose",
            "--current",
            "roster.json",
            "--remove",
            "nobody",
        ],
    );
    assert!(unknown.contains("no member has the id"), "{unknown}");

    // A config for each role; an existing file is never overwritten.
    ok(
        dir,
        &["config", "init", "--role", "hospital", "--site", "va"],
    );
    let text = std::fs::read_to_string(dir.join("medmesh.toml")).expect("written");
    assert!(text.contains("site = \"va\""), "{text}");
    let again = fails(dir, &["config", "init", "--role", "relay"]);
    assert!(again.contains("never overwritten"), "{again}");
    // A survival schema gets the Cox model on its features, with FLamby's Fed-TCGA-BRCA budget.
    let tcga = Path::new(env!("CARGO_MANIFEST_DIR")).join("../data/tcga-brca/schema.toml");
    ok(
        dir,
        &[
            "config",
            "init",
            "--role",
            "hospital",
            "--site",
            "northeast",
            "--schema",
            &tcga.to_string_lossy(),
            "--out",
            "tcga.toml",
        ],
    );
    let text = std::fs::read_to_string(dir.join("tcga.toml")).expect("written");
    for line in [
        "kind = \"cox\"",
        "inputs = 39",
        "lr = 0.1",
        "batch_size = 8",
        "max_rounds = 5",
        "outer = { optimizer = \"adam\", lr = 0.4,",
    ] {
        assert!(text.contains(line), "{line} in {text}");
    }
}
