//! Writes the seed corpus of every fuzz target: valid encodings of what each decoder sees (signed
//! versions and reports, roster updates in bincode and JSON, payloads, payload streams, node
//! configs, schemas with a few CSV lines of the shipped data sets), so the fuzzers start from
//! inputs that reach deep into the code rather than from nothing.
//!
//! ```text
//! cargo run --manifest-path fuzz/Cargo.toml --no-default-features --example seeds
//! ```
//!
//! Writes `fuzz/corpus/<target>/seed-<name>`, or under the folder given as the only argument.
//! The output is the same on every run and machine (see `medmesh_fuzz`).

use std::error::Error;
use std::fs;
use std::path::{Path, PathBuf};

use medmesh_fuzz::{chain, genesis, key, next, report, version};
use medmesh_protocol::identity::ContentId;
use medmesh_protocol::update;
use medmesh_protocol::wire::{self, Message};

const HEART_SCHEMA: &str = include_str!("../../data/heart-disease/schema.toml");
const HEART_SPLIT: &str = include_str!("../../data/heart-disease/flamby_split.csv");
const CLEVELAND: &str = include_str!("../../data/heart-disease/processed.cleveland.data");
const HUNGARIAN: &str = include_str!("../../data/heart-disease/processed.hungarian.data");
const BRCA_SCHEMA: &str = include_str!("../../data/tcga-brca/schema.toml");
const BRCA: &str = include_str!("../../data/tcga-brca/brca.csv");
const BRCA_SPLIT: &str = include_str!("../../data/tcga-brca/train_test_split.csv");

/// Collects the seeds of one target.
struct Corpus {
    dir: PathBuf,
    written: usize,
}

impl Corpus {
    fn new(root: &Path, target: &str) -> Result<Corpus, Box<dyn Error>> {
        let dir = root.join(target);
        fs::create_dir_all(&dir)?;
        Ok(Corpus { dir, written: 0 })
    }

    fn seed(&mut self, name: &str, bytes: impl AsRef<[u8]>) -> Result<(), Box<dyn Error>> {
        fs::write(self.dir.join(format!("seed-{name}")), bytes)?;
        self.written += 1;
        Ok(())
    }

    /// A seed whose first byte selects the target's mode.
    fn mode(&mut self, name: &str, mode: u8, rest: &[u8]) -> Result<(), Box<dyn Error>> {
        let mut bytes = vec![mode];
        bytes.extend_from_slice(rest);
        self.seed(name, bytes)
    }
}

fn f32_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

fn main() -> Result<(), Box<dyn Error>> {
    let root = match std::env::args_os().nth(1) {
        Some(dir) => PathBuf::from(dir),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus"),
    };
    let params = [0.5, -0.25, 1.0, 2.0, 0.0, -3.5];
    let (announced, payload) = version(&key(1), 1, &params);
    let (initial, _) = {
        let (v, bytes) = version(&key(2), 0, &[0.0; 3]);
        let mut value = v.value().clone();
        value.parents.clear();
        value.metrics.clear();
        (key(2).sign(value), bytes)
    };
    let validated = report(&key(3), announced.id());
    let chain = chain();
    let genesis = genesis();
    let admission = next(&chain, &[1, 2, 3, 4], 3, &[1, 2]);
    let removal = next(&chain, &[1, 3], 1, &[2, 3]);
    let mut advanced = chain.clone();
    advanced.apply(admission.clone())?;
    let after = next(&advanced, &[1, 2, 3, 4], 2, &[1, 2, 4]);
    let mut count = Vec::new();

    // --- wire_message: whole gossip messages, and the request-response kinds.
    let mut c = Corpus::new(&root, "wire_message")?;
    c.seed(
        "announce",
        Message::Announce(announced.signed().clone()).to_bytes(),
    )?;
    c.seed(
        "announce-initial",
        Message::Announce(initial.signed().clone()).to_bytes(),
    )?;
    c.seed(
        "report",
        Message::Report(validated.signed().clone()).to_bytes(),
    )?;
    c.seed("roster-next", Message::Roster(admission.clone()).to_bytes())?;
    c.seed(
        "roster-genesis",
        Message::Roster(genesis.clone()).to_bytes(),
    )?;
    c.seed("request", Message::Request(announced.id()).to_bytes())?;
    let found = Message::Payload {
        id: announced.id(),
        data: Some(payload.clone().into()),
    };
    c.seed("payload", found.to_bytes())?;
    let missing = Message::Payload {
        id: ContentId([9; 32]),
        data: None,
    };
    c.seed("payload-missing", missing.to_bytes())?;
    count.push(("wire_message", c.written));

    // --- signed_envelope: envelopes as received (0, 1) and bodies to sign (2, 3).
    let mut c = Corpus::new(&root, "signed_envelope")?;
    c.mode("version", 0, &wire::encode(announced.signed()))?;
    c.mode("version-initial", 0, &wire::encode(initial.signed()))?;
    c.mode("report", 1, &wire::encode(validated.signed()))?;
    c.mode("version-body", 2, &wire::encode(announced.value()))?;
    c.mode("version-initial-body", 2, &wire::encode(initial.value()))?;
    c.mode("report-body", 3, &wire::encode(validated.value()))?;
    count.push(("signed_envelope", c.written));

    // --- roster_update: bincode (0), JSON (1), a sync response (2), bodies to sign (3).
    let mut c = Corpus::new(&root, "roster_update")?;
    c.mode("next", 0, &wire::encode(&admission))?;
    c.mode("genesis", 0, &wire::encode(&genesis))?;
    c.mode("removal", 0, &wire::encode(&removal))?;
    c.mode("next-json", 1, &serde_json::to_vec(&admission)?)?;
    // The genesis file as `medmesh` writes it (pretty JSON).
    c.mode("genesis-json", 1, &serde_json::to_vec_pretty(&genesis)?)?;
    let sync = serde_json::json!({ "updates": [admission, after] });
    c.mode("sync", 2, &serde_json::to_vec(&sync)?)?;
    c.mode("sync-empty", 2, br#"{"updates":[]}"#)?;
    c.mode("next-body", 3, &wire::encode(admission.roster()))?;
    c.mode("removal-body", 3, &wire::encode(removal.roster()))?;
    c.mode("gap-body", 3, &wire::encode(after.roster()))?;
    count.push(("roster_update", c.written));

    // --- payload: honest descriptors (even) and descriptors given in the input (odd).
    let mut c = Corpus::new(&root, "payload")?;
    c.mode("honest", 0, &payload)?;
    c.mode("honest-nan", 0, &f32_bytes(&[1.0, f32::NAN, f32::INFINITY]))?;
    c.mode("honest-ragged", 0, &payload[..payload.len() - 1])?;
    let descriptor = announced.value().payload;
    let mut given = Vec::new();
    given.extend_from_slice(&descriptor.params.to_le_bytes());
    given.extend_from_slice(&descriptor.len.to_le_bytes());
    given.extend_from_slice(descriptor.digest.as_bytes());
    let mut matching = given.clone();
    matching.extend_from_slice(&payload);
    c.mode("given", 1, &matching)?;
    let mut tampered = matching;
    if let Some(last) = tampered.last_mut() {
        *last ^= 1;
    }
    c.mode("given-tampered", 1, &tampered)?;
    let mut empty = Vec::new();
    let d = update::encode_f32(&[], &mut empty);
    let mut none = Vec::new();
    none.extend_from_slice(&d.params.to_le_bytes());
    none.extend_from_slice(&d.len.to_le_bytes());
    none.extend_from_slice(d.digest.as_bytes());
    c.mode("given-empty", 1, &none)?;
    count.push(("payload", c.written));

    // --- payload_codec: responses (even first byte) and requests (odd), limit 64 × (byte >> 1).
    let mut c = Corpus::new(&root, "payload_codec")?;
    let limit_byte = |even: u8| (((payload.len() / 64) as u8 + 1) << 1) | even;
    let mut frame = vec![1u8];
    frame.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    frame.extend_from_slice(&payload);
    c.mode("response-found", limit_byte(0), &frame)?;
    c.mode("response-not-found", limit_byte(0), &[0])?;
    c.mode("response-too-large", 2, &frame)?;
    let request = Message::Request(announced.id()).to_bytes();
    let mut framed = (request.len() as u64).to_le_bytes().to_vec();
    framed.extend_from_slice(&request);
    c.mode("request", limit_byte(1), &framed)?;
    count.push(("payload_codec", c.written));

    // --- node_config: TOML as hospitals write it.
    let mut c = Corpus::new(&root, "node_config")?;
    let fill = |text: &str| {
        text.replace("PEER_2", &peer_id(2))
            .replace("MEMBER_2", &key(2).id().to_string())
    };
    c.seed("defaults", "")?;
    c.seed("documented", fill(DOCUMENTED_CONFIG))?;
    c.seed("everything", fill(FULL_CONFIG))?;
    c.seed("torchscript", TORCHSCRIPT_CONFIG)?;
    count.push(("node_config", c.written));

    // --- dataset: schema, a.csv, b.csv, split.csv, separated by NUL bytes.
    let mut c = Corpus::new(&root, "dataset")?;
    c.seed("heart-disease", heart_disease())?;
    c.seed("tcga-brca", tcga_brca())?;
    c.seed("fraction", dataset(FRACTION_SCHEMA, FRACTION_ROWS, "", ""))?;
    c.seed(
        "header-keyed",
        dataset(KEYED_SCHEMA, KEYED_A, KEYED_B, KEYED_SPLIT),
    )?;
    count.push(("dataset", c.written));

    for (target, written) in count {
        println!("{target}: {written} seeds");
    }
    println!("written under {}", root.display());
    Ok(())
}

/// The libp2p peer id of member `n`, as bootstrap addresses end: base58 of the identity
/// multihash of its protobuf-encoded ed25519 public key.
fn peer_id(n: u8) -> String {
    let mut bytes = vec![0x00, 0x24, 0x08, 0x01, 0x12, 0x20];
    bytes.extend_from_slice(key(n).id().as_bytes());
    let id = base58(&bytes);
    assert!(id.starts_with("12D3KooW"), "not an ed25519 peer id: {id}");
    id
}

/// Base58 (Bitcoin alphabet), as libp2p prints peer ids.
fn base58(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 58] = b"123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz";
    // Base-58 digits, least significant first.
    let mut digits: Vec<u8> = Vec::new();
    for &byte in bytes {
        let mut carry = u32::from(byte);
        for digit in &mut digits {
            carry += u32::from(*digit) << 8;
            *digit = (carry % 58) as u8;
            carry /= 58;
        }
        while carry > 0 {
            digits.push((carry % 58) as u8);
            carry /= 58;
        }
    }
    let zeros = bytes.iter().take_while(|&&b| b == 0).count();
    std::iter::repeat_n('1', zeros)
        .chain(
            digits
                .iter()
                .rev()
                .map(|&d| char::from(ALPHABET[usize::from(d)])),
        )
        .collect()
}

fn dataset(schema: &str, a: &str, b: &str, split: &str) -> Vec<u8> {
    [schema, a, b, split].join("\0").into_bytes()
}

/// A schema with only its first two `[[sites]]` tables.
fn first_two_sites(schema: &str) -> String {
    let mut tables = schema.split("[[sites]]");
    let head = tables.next().unwrap_or_default();
    let sites: String = tables.take(2).map(|t| format!("[[sites]]{t}")).collect();
    format!("{head}{sites}")
}

/// The shipped Fed-Heart-Disease schema reduced to two sites, with the first lines of their
/// files and the split file's entries for those lines.
fn heart_disease() -> Vec<u8> {
    const LINES: usize = 8;
    let schema = HEART_SCHEMA
        .replace("processed.cleveland.data", "a.csv")
        .replace("processed.hungarian.data", "b.csv")
        .replace("flamby_split.csv", "split.csv");
    let schema = first_two_sites(&schema);
    let first =
        |text: &str| -> String { text.lines().take(LINES).map(|l| format!("{l}\n")).collect() };
    let mut split = String::new();
    for (i, line) in HEART_SPLIT.lines().enumerate() {
        let fields: Vec<&str> = line.split(',').collect();
        let keep = matches!(fields.first(), Some(&("cleveland" | "hungarian")))
            && fields
                .get(2)
                .and_then(|l| l.parse::<usize>().ok())
                .is_some_and(|l| l <= LINES);
        if i == 0 || keep {
            split.push_str(line);
            split.push('\n');
        }
    }
    dataset(&schema, &first(CLEVELAND), &first(HUNGARIAN), &split)
}

/// The shipped TCGA-BRCA schema reduced to two sites, with a few patients of each.
fn tcga_brca() -> Vec<u8> {
    const PARTS: [&str; 4] = ["train_0", "test_0", "train_1", "test_1"];
    let schema = BRCA_SCHEMA
        .replace("brca.csv", "a.csv")
        .replace("train_test_split.csv", "split.csv");
    let schema = first_two_sites(&schema);

    let mut split_lines = BRCA_SPLIT.lines();
    let mut split = format!("{}\n", split_lines.next().unwrap_or_default());
    let mut pids = Vec::new();
    for part in PARTS {
        let wanted = if part.starts_with("train") { 3 } else { 1 };
        for line in split_lines
            .clone()
            .filter(|l| l.ends_with(&format!(",{part}")))
            .take(wanted)
        {
            split.push_str(line);
            split.push('\n');
            pids.push(line.split(',').next().unwrap_or_default().to_owned());
        }
    }
    let mut rows = BRCA.lines();
    let mut data = format!("{}\n", rows.next().unwrap_or_default());
    for row in rows {
        if pids.iter().any(|p| row.starts_with(&format!("{p},"))) {
            data.push_str(row);
            data.push('\n');
        }
    }
    dataset(&schema, &data, "", &split)
}

/// A headered file, a text label, a categorical column with text levels, missing values
/// imputed, pooled normalization and a stratified fraction split.
const FRACTION_SCHEMA: &str = r#"name = "toy"
delimiter = ";"
drop = ["note"]
normalization = "pooled"

[missing]
markers = ["NA", ""]
policy = "impute_mean"

[label]
column = "outcome"
positive = ["sick", 1]
negative = ["well", 0]

[[categorical]]
column = "smoker"
levels = ["never", "former", "current"]

[split]
fraction = 0.66
seed = 43
stratify = true

[[sites]]
name = "a"
file = "a.csv"
"#;

const FRACTION_ROWS: &str = "\u{feff}age;chol;smoker;note;outcome\r\n\
    63;233;never;first;sick\r\n\
    67;NA;current;;well\r\n\
    \"41\";204;former;\"quoted; with delimiter\";1\r\n\
    \r\n\
    56;236;NA;x;0\r\n\
    57.5;354;never;y;sick\r\n\
    44;263;current;z;well\r\n";

/// Two sites with headers (columns in different orders), a split file keyed by a column with a
/// site column, a comparison label rule, `unlisted = "skip"` and per-site normalization.
const KEYED_SCHEMA: &str = r#"name = "keyed"
normalization = "per_site"

[label]
column = "num"
positive_if = ">= 1"

[split]
file = "split.csv"
key_column = "id"
site_column = "site"
split_column = "part"
unlisted = "skip"

[[sites]]
name = "north"
file = "a.csv"

[[sites]]
name = "south"
file = "b.csv"
train_value = "fit"
test_value = "hold"
"#;

const KEYED_A: &str = "id,age,chol,num\nn1,63,233,0\nn2,67,286,2\nn3,37,250,0\nn4,41,204,1\n";
const KEYED_B: &str = "chol,id,num,age\n229,s1,1,67\n187,s2,0,56\n199,s3,3,61\n250,s9,0,45\n";
const KEYED_SPLIT: &str = "site,id,part\nnorth,n1,train\nnorth,n2,train\nnorth,n3,test\n\
    north,n4,train\nsouth,s1,fit\nsouth,s2,fit\nsouth,s3,hold\nwest,w1,train\n";

/// The example in the node config module's documentation.
const DOCUMENTED_CONFIG: &str = r#"key = "key.pem"
store = "store.redb"
genesis = "roster.json"
init_seed = 42
linger_ms = 15000

[data]
schema = "../data/heart-disease/schema.toml"
site = "cleveland"

[model]
kind = "logistic"
inputs = 13

[training]
lr = 0.001
batch_size = 4
local_steps = 100

[experiment]
experiment = "heart-disease"
fanout = 3
max_rounds = 15

[network]
listen = ["/ip4/0.0.0.0/tcp/4001"]
bootstrap = ["/ip4/10.0.0.2/tcp/4001/p2p/PEER_2"]
"#;

/// Every section and most optional fields set.
const FULL_CONFIG: &str = r#"key = "keys/member.pem"
store = "state/store.redb"
genesis = "roster.json"
init_seed = 7
linger_ms = 30000
results = "results.json"
admin = "127.0.0.1:9100"
min_peers = 2
start_timeout_ms = 120000
validate_final = false

[data]
schema = "schema.toml"
site = "hungarian"
shard = { index = 1, count = 3 }

[model]
kind = "mlp"
inputs = 13
hidden = [32, 16]

[training]
optimizer = { name = "sgd", momentum = 0.9 }
lr = 0.01
batch_size = 8
local_steps = 50
seed = 3
threads = 2
dp = { noise_multiplier = 1.1, max_grad_norm = 1.0, delta = 1e-5 }

[experiment]
experiment = "heart-disease"
model = "0707070707070707070707070707070707070707070707070707070707070707"
fanout = 2
neighbours = ["MEMBER_2"]
round_timeout = 30000
fetch_timeout = 10000
max_rounds = 20
seed = 11

[experiment.rule]
rule = "clipped_gossip"
tau = { kind = "adaptive", byzantine_fraction = 0.2 }

[experiment.certification]
metric = "auc"
min = 0.8
min_samples = 100
validators = 2
countries = 2

[network]
listen = ["/ip4/0.0.0.0/tcp/4001", "/ip6/::/tcp/4001"]
bootstrap = ["/dns4/hospital-2.example/tcp/4001/p2p/PEER_2"]
mdns = false
relay_server = true
quic = false
idle_connection_timeout = 60000
max_connections_per_peer = 4
max_connections = 128
max_gossip_bytes = 262144
max_payload_bytes = 1048576
request_timeout = 60000
"#;

/// A TorchScript model with a survival task and a trimmed-mean rule.
const TORCHSCRIPT_CONFIG: &str = r#"[model]
kind = "torch_script"
path = "model.pt"
task = "survival"

[experiment]
experiment = "tcga-brca"
rule = { rule = "trimmed_mean", trim = 1 }
"#;
