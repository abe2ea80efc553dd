//! Export of a stored model version: `model.safetensors` (tensors named and shaped by the
//! model's layout) plus its signed metadata, around which [`crate::bundle`] writes the lineage,
//! reports, roster chain and manifest (`medmesh export`). It reads the store and writes files,
//! and needs the store to itself (redb allows one process), so it runs while the node is
//! stopped. It never starts a training worker: the caller hands it the layout.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use medmesh_learning::learner::ModelSpec;
use medmesh_protocol::identity::{ContentId, MemberId};
use medmesh_protocol::update::{self, Encoding};
use medmesh_protocol::wire;

use crate::bundle::{self, VersionRecord};
use crate::store::{self, Selection, Store};

/// What can go wrong exporting a model version.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The store file does not exist (export never creates one).
    #[error("store {0} does not exist")]
    NoStore(PathBuf),
    /// The store cannot be read (the error names the file).
    #[error(transparent)]
    Store(#[from] store::Error),
    /// No version with this id in the store.
    #[error("store {store} holds no model version {id}")]
    NotFound {
        /// The store file.
        store: PathBuf,
        /// The id asked for.
        id: ContentId,
    },
    /// `latest` found no version (by this author, when one is given).
    #[error("store {store} holds no model version{}", author.map(|a| format!(" by {a}")).unwrap_or_default())]
    NoVersions {
        /// The store file.
        store: PathBuf,
        /// The author looked for.
        author: Option<MemberId>,
    },
    /// The version is stored but its payload is not (pruned by retention).
    #[error("store {store} holds model version {id} but not its parameters (pruned by retention?)")]
    NoPayload {
        /// The store file.
        store: PathBuf,
        /// The version.
        id: ContentId,
    },
    /// The payload is not usable (an encoding this build does not know, non-finite
    /// values).
    #[error("store {store}: the parameters of model version {id} cannot be decoded: {reason}")]
    Payload {
        /// The store file.
        store: PathBuf,
        /// The version.
        id: ContentId,
        /// Why.
        reason: String,
    },
    /// The model spec lays out another number of parameters than the version holds.
    #[error(
        "store {store}: model version {id} has {found} parameters, the model spec lays out {expected}"
    )]
    Layout {
        /// The store file.
        store: PathBuf,
        /// The version.
        id: ContentId,
        /// Parameters in the layout.
        expected: usize,
        /// Parameters in the version.
        found: usize,
    },
    /// A file cannot be written.
    #[error("cannot write {path}: {source}")]
    Write {
        /// The file or folder.
        path: PathBuf,
        /// What failed.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The bundle around the weights (lineage, reports, roster, manifest) cannot be
    /// written.
    #[error(transparent)]
    Bundle(#[from] bundle::Error),
}

/// What [`export`] wrote.
#[derive(Debug, Clone, PartialEq)]
pub struct Exported {
    /// The version's fields.
    pub version: VersionRecord,
    /// Tensors in `model.safetensors`.
    pub tensors: usize,
    /// The files written.
    pub files: Vec<PathBuf>,
    /// What the bundle around the weights holds.
    pub bundle: bundle::Written,
}

impl Exported {
    /// One line per file, for `medmesh export`.
    pub fn to_text(&self) -> String {
        let v = &self.version.version;
        let mut out = format!(
            "model version {} (round {}, author {}, {} parameters)\n",
            self.version.id,
            v.round,
            v.author.short(),
            v.payload.params
        );
        for file in &self.files {
            let _ = writeln!(out, "wrote {}", file.display());
        }
        let b = &self.bundle;
        let _ = writeln!(
            out,
            "lineage: {} versions ({} ancestors not stored), {} reports, roster version {}",
            b.versions,
            b.missing,
            b.reports,
            b.roster.map_or("none".to_owned(), |v| v.to_string())
        );
        if b.roster.is_none() {
            out.push_str(
                "warning: the store holds no roster, so `medmesh verify` cannot check who trained \
                 and validated: it will refuse this bundle\n",
            );
        }
        out
    }
}

/// Writes the selected version of the store at `store_path` into `out` (created if missing) as a
/// [`bundle`]: `model.safetensors` (tensors named and shaped by `layout`, or one flat `params`
/// tensor when there is none), `version.json` ([`VersionRecord`]) and `version.bin` (the signed
/// envelope as stored: `wire::encode` of a `Signed<Version>`), then `model.json` (with `spec`
/// when known), the signed lineage, reports and roster chain, and `MANIFEST.json`. `Latest`
/// picks the highest round by `author` (by anyone when `None`). Everything read is verified
/// again: signature, content id, payload digest, finite values.
pub fn export(
    store_path: &Path,
    selection: Selection,
    author: Option<MemberId>,
    spec: Option<&ModelSpec>,
    layout: Option<&[(String, Vec<i64>)]>,
    out: &Path,
) -> Result<Exported, Error> {
    if !store_path.is_file() {
        return Err(Error::NoStore(store_path.to_owned()));
    }
    let store = Store::open(store_path)?;
    let where_ = || store_path.to_owned();
    let version = selection
        .find(&store, author)?
        .ok_or_else(|| match selection {
            Selection::Id(id) => Error::NotFound {
                store: where_(),
                id,
            },
            Selection::Latest => Error::NoVersions {
                store: where_(),
                author,
            },
        })?;
    let id = version.id();
    let payload = store.payload(&id)?.ok_or_else(|| Error::NoPayload {
        store: where_(),
        id,
    })?;
    let bad = |reason: String| Error::Payload {
        store: where_(),
        id,
        reason,
    };
    match version.payload.encoding {
        Encoding::F32Le => {}
        other => return Err(bad(format!("unknown encoding {other:?}"))),
    }
    // Checks length, digest and that every value is finite.
    let mut params = Vec::new();
    update::decode_payload(&version.payload, &payload, &mut params)
        .map_err(|e| bad(e.to_string()))?;

    let flat = [("params".to_owned(), vec![params.len() as i64])];
    let (shapes, expected) = shapes(layout.unwrap_or(&flat)).map_err(bad)?;
    if expected != params.len() {
        return Err(Error::Layout {
            store: where_(),
            id,
            expected,
            found: params.len(),
        });
    }
    let model_file = bundle::ModelFile::new(&version, spec, &shapes);

    std::fs::create_dir_all(out).map_err(|e| Error::Write {
        path: out.to_owned(),
        source: e.into(),
    })?;
    let record = VersionRecord {
        id,
        version: version.value().clone(),
    };
    let info = bundle::tensor_metadata(id, &record.version);
    let tensors = shapes.len();
    let model = out.join("model.safetensors");
    // The payload is little-endian f32, as safetensors stores F32: the tensors are slices of it.
    write_tensors(&model, &payload, shapes, info).map_err(|e| match e {
        TensorError::Shape(reason) => bad(reason),
        TensorError::Write(e) => e,
    })?;
    let json = out.join("version.json");
    let text = serde_json::to_string_pretty(&record).map_err(|e| Error::Write {
        path: json.clone(),
        source: e.into(),
    })?;
    write(&json, (text + "\n").as_bytes())?;
    let bin = out.join("version.bin");
    write(&bin, &wire::encode(version.signed()))?;
    let bundle = bundle::write(&store, &version, &model_file, out)?;
    let mut files = vec![model, json, bin];
    files.extend(bundle.files.iter().cloned());
    Ok(Exported {
        version: record,
        tensors,
        files,
        bundle,
    })
}

/// Tensors by name with their dimensions.
type Shapes<'a> = Vec<(&'a str, Vec<usize>)>;

/// The tensors of `layout` with their dimensions, and how many values they hold; an error
/// names a tensor with a negative dimension.
fn shapes(layout: &[(String, Vec<i64>)]) -> Result<(Shapes<'_>, usize), String> {
    let mut shapes = Vec::with_capacity(layout.len());
    for (name, shape) in layout {
        let dims: Vec<usize> = shape
            .iter()
            .map(|&d| usize::try_from(d))
            .collect::<Result<_, _>>()
            .map_err(|_| format!("tensor {name} has a negative dimension"))?;
        shapes.push((name.as_str(), dims));
    }
    let values = shapes
        .iter()
        .map(|(_, d)| d.iter().product::<usize>())
        .sum();
    Ok((shapes, values))
}

/// Why [`write_tensors`] failed.
enum TensorError {
    /// A shape does not fit the bytes.
    Shape(String),
    /// The file cannot be written.
    Write(Error),
}

/// Writes `bytes` (little-endian f32, one tensor after the other) to the safetensors file at
/// `path`, as the tensors `shapes` with `info` as the header's metadata.
fn write_tensors(
    path: &Path,
    bytes: &[u8],
    shapes: Shapes<'_>,
    info: std::collections::HashMap<String, String>,
) -> Result<(), TensorError> {
    let mut views = Vec::with_capacity(shapes.len());
    let mut offset = 0;
    for (name, dims) in shapes {
        let len = dims.iter().product::<usize>() * 4;
        let part = bytes
            .get(offset..offset + len)
            .ok_or_else(|| TensorError::Shape(format!("tensor {name} runs past the parameters")))?;
        let view = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, dims, part)
            .map_err(|e| TensorError::Shape(e.to_string()))?;
        views.push((name, view));
        offset += len;
    }
    safetensors::serialize_to_file(views, Some(info), path).map_err(|e| {
        TensorError::Write(Error::Write {
            path: path.to_owned(),
            source: e.into(),
        })
    })
}

/// Writes a model derived locally from an exported version (a hospital's personalized model)
/// as `file` in `out`, laid out as `layout` (one flat `params` tensor when `None`), with
/// `metadata` in the safetensors header; the number of tensors.
pub fn write_derived(
    out: &Path,
    file: &str,
    params: &[f32],
    layout: Option<&[(String, Vec<i64>)]>,
    metadata: std::collections::HashMap<String, String>,
) -> Result<usize, Error> {
    let path = out.join(file);
    let bad = |reason: String| Error::Write {
        path: path.clone(),
        source: reason.into(),
    };
    let flat = [("params".to_owned(), vec![params.len() as i64])];
    let (shapes, expected) = shapes(layout.unwrap_or(&flat)).map_err(bad)?;
    if expected != params.len() {
        return Err(bad(format!(
            "{} parameters, the model spec lays out {expected}",
            params.len()
        )));
    }
    let bytes: Vec<u8> = params.iter().flat_map(|p| p.to_le_bytes()).collect();
    let tensors = shapes.len();
    write_tensors(&path, &bytes, shapes, metadata).map_err(|e| match e {
        TensorError::Shape(reason) => bad(reason),
        TensorError::Write(e) => e,
    })?;
    Ok(tensors)
}

fn write(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    std::fs::write(path, bytes).map_err(|e| Error::Write {
        path: path.to_owned(),
        source: e.into(),
    })
}

#[cfg(test)]
mod tests {
    use medmesh_learning::learner::Layout;
    use medmesh_protocol::identity::{Keypair, Signed, Verified};
    use medmesh_protocol::update::Version;

    use super::*;
    use crate::testkit::{key, put};

    /// A fixture version with no parents (those are not what export is about).
    fn version(author: &Keypair, round: u64, params: &[f32]) -> (Verified<Version>, bytes::Bytes) {
        crate::testkit::version(author, round, Vec::new(), params)
    }

    #[test]
    fn export_writes_safetensors_and_the_signed_version() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("store.redb");
        let params: Vec<f32> = (0..14).map(|i| i as f32 * 0.5 - 3.0).collect();
        let (mine, mine_bytes) = version(&key(1), 3, &params);
        let (old, old_bytes) = version(&key(1), 2, &[1.0; 14]);
        let (theirs, theirs_bytes) = version(&key(2), 9, &[2.0; 14]);
        {
            let store = Store::open(&path).expect("opens");
            put(&store, &mine, &mine_bytes);
            put(&store, &old, &old_bytes);
            put(&store, &theirs, &theirs_bytes);
        }

        // `latest` for member 1, laid out as a logistic regression over 13 inputs.
        let layout: Layout = vec![
            ("layer0.bias".into(), vec![1]),
            ("layer0.weight".into(), vec![1, 13]),
        ];
        let out = dir.path().join("export");
        let exported = export(
            &path,
            Selection::Latest,
            Some(key(1).id()),
            None,
            Some(&layout),
            &out,
        )
        .expect("exports");
        assert_eq!(exported.version.id, mine.id());
        assert_eq!(exported.tensors, 2);
        assert!(exported.to_text().contains(&mine.id().to_string()));

        let file = std::fs::read(out.join("model.safetensors")).expect("written");
        let tensors = safetensors::SafeTensors::deserialize(&file).expect("safetensors");
        let values = |name: &str| -> (Vec<usize>, Vec<f32>) {
            let t = tensors.tensor(name).expect("tensor");
            assert_eq!(t.dtype(), safetensors::Dtype::F32);
            let v = t
                .data()
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            (t.shape().to_vec(), v)
        };
        assert_eq!(values("layer0.bias"), (vec![1], params[..1].to_vec()));
        assert_eq!(values("layer0.weight"), (vec![1, 13], params[1..].to_vec()));
        let (_, header) = safetensors::SafeTensors::read_metadata(&file).expect("header");
        let info = header.metadata().clone().expect("metadata");
        assert_eq!(info["medmesh.version"], mine.id().to_string());

        let record: VersionRecord = serde_json::from_str(
            &std::fs::read_to_string(out.join("version.json")).expect("written"),
        )
        .expect("json");
        assert_eq!(record.id, mine.id());
        assert_eq!(&record.version, mine.value());
        assert_eq!(
            record.version.payload.digest,
            update::payload_digest(&mine_bytes)
        );
        let envelope: Signed<Version> =
            wire::decode(&std::fs::read(out.join("version.bin")).expect("written"))
                .expect("decodes");
        let verified = envelope.verify().expect("still verifies");
        assert_eq!(verified.id(), mine.id());

        // By id, without a layout: one flat tensor. `latest` with no author: the highest round.
        let flat = dir.path().join("flat");
        export(&path, Selection::Id(old.id()), None, None, None, &flat).expect("exports");
        let file = std::fs::read(flat.join("model.safetensors")).expect("written");
        let tensors = safetensors::SafeTensors::deserialize(&file).expect("safetensors");
        let t = tensors.tensor("params").expect("params");
        assert_eq!(t.shape(), &[14]);
        assert!(t.data().chunks_exact(4).all(|c| c == 1.0f32.to_le_bytes()));
        let any = export(
            &path,
            Selection::Latest,
            None,
            None,
            None,
            &dir.path().join("any"),
        )
        .expect("exports");
        assert_eq!(any.version.id, theirs.id());
    }

    #[test]
    fn export_errors_name_the_store_and_the_version() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("store.redb");
        let out = dir.path().join("out");
        let err = export(&path, Selection::Latest, None, None, None, &out).expect_err("no store");
        assert!(matches!(err, Error::NoStore(_)));
        assert!(!path.exists(), "export never creates a store");

        let (v, bytes) = version(&key(1), 1, &[0.5; 4]);
        {
            let store = Store::open(&path).expect("opens");
            put(&store, &v, &bytes);
        }
        let missing = ContentId([5; 32]);
        let err =
            export(&path, Selection::Id(missing), None, None, None, &out).expect_err("missing");
        let text = err.to_string();
        assert!(
            text.contains(&path.display().to_string()) && text.contains(&missing.to_string()),
            "{text}"
        );
        let err = export(
            &path,
            Selection::Latest,
            Some(key(2).id()),
            None,
            None,
            &out,
        )
        .expect_err("nothing by member 2");
        assert!(matches!(err, Error::NoVersions { .. }), "{err}");
        let layout: Layout = vec![("w".into(), vec![3])];
        let err = export(
            &path,
            Selection::Id(v.id()),
            None,
            None,
            Some(&layout),
            &out,
        )
        .expect_err("wrong layout");
        assert!(
            matches!(
                err,
                Error::Layout {
                    expected: 3,
                    found: 4,
                    ..
                }
            ) && err.to_string().contains(&v.id().to_string()),
            "{err}"
        );
        assert!(!out.exists(), "nothing written on error");

        assert_eq!(
            "latest".parse::<Selection>().expect("parses"),
            Selection::Latest
        );
        assert_eq!(
            v.id().to_string().parse::<Selection>().expect("parses"),
            Selection::Id(v.id())
        );
        assert!("nope".parse::<Selection>().is_err());
    }
}
