//! Secrets on disk: a hospital's ed25519 member key, and the admin endpoint's credential
//! ([`AdminToken`]) next to it.
//!
//! A key file is a PKCS#8 PEM private key (the format `openssl genpkey -algorithm ed25519`
//! writes), readable only by its owner. Writing is atomic — a temporary file in the same folder,
//! synced, then linked into place without replacing anything — so a crash never leaves a
//! half-written key and an existing key is never overwritten. Loading refuses files that group or
//! others can read, says which file is wrong and why, and never prints key material.

use std::fs;
use std::io::{Read, Write};
#[cfg(unix)]
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use medmesh_protocol::identity::{self, Keypair};

/// Largest key file read (a PEM ed25519 key is about 120 bytes).
const MAX_KEY_FILE: u64 = 16 * 1024;

/// What went wrong with a key file.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The file could not be read or written.
    #[error("secret file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A key file already exists where a new one was to be written.
    #[error("{0} already exists; refusing to overwrite a secret")]
    Exists(PathBuf),
    /// Group or others may read the file.
    #[error(
        "{path} has permissions {mode:o}: a secret must be readable by its owner only (chmod 600 {path})"
    )]
    Permissions {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The file is not a valid key.
    #[error("key file {path} is not an ed25519 PKCS#8 PEM private key: {source}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// The parse error.
        source: identity::Error,
    },
    /// The admin token file does not hold a token.
    #[error(
        "admin token file {0} does not hold a token (64 hex digits); delete it to make a new one"
    )]
    Token(PathBuf),
    /// The operating system's random number generator failed.
    #[error("no randomness from the operating system: {0}")]
    Random(String),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_owned(),
        source,
    }
}

/// Draws a new key from the operating system's random number generator.
pub fn generate() -> Result<Keypair, Error> {
    let mut seed = zeroize::Zeroizing::new([0u8; 32]);
    getrandom::fill(seed.as_mut_slice()).map_err(|e| Error::Random(e.to_string()))?;
    Ok(Keypair::from_seed(*seed))
}

/// Writes `key` to `path` with owner-only permissions, atomically, never replacing a file.
pub fn write(path: &Path, key: &Keypair) -> Result<(), Error> {
    let pem = key.to_pem().map_err(|source| Error::Corrupt {
        path: path.to_owned(),
        source,
    })?;
    write_secret(path, pem.as_bytes())
}

/// Writes `bytes` to `path` with owner-only permissions, atomically (a synced temporary file
/// linked into place), never replacing a file.
fn write_secret(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    if path.exists() {
        return Err(Error::Exists(path.to_owned()));
    }
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    fs::create_dir_all(dir).map_err(io(dir))?;
    // tempfile creates the file with mode 0600 on Unix.
    let mut tmp = tempfile::Builder::new()
        .prefix(".key-")
        .tempfile_in(dir)
        .map_err(io(dir))?;
    tmp.write_all(bytes).map_err(io(path))?;
    tmp.as_file().sync_all().map_err(io(path))?;
    tmp.persist_noclobber(path).map_err(|e| {
        if e.error.kind() == std::io::ErrorKind::AlreadyExists {
            Error::Exists(path.to_owned())
        } else {
            Error::Io {
                path: path.to_owned(),
                source: e.error,
            }
        }
    })?;
    // Make the new directory entry durable too.
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io(dir))?;
    Ok(())
}

/// Loads a key file, refusing one that group or others can read.
pub fn load(path: &Path) -> Result<Keypair, Error> {
    let text = read_secret(path)?;
    Keypair::from_pem(&text).map_err(|source| Error::Corrupt {
        path: path.to_owned(),
        source,
    })
}

/// Reads a secret file, refusing one that group or others can read or that is too large.
fn read_secret(path: &Path) -> Result<zeroize::Zeroizing<String>, Error> {
    let file = fs::File::open(path).map_err(io(path))?;
    let meta = file.metadata().map_err(io(path))?;
    #[cfg(unix)]
    {
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(Error::Permissions {
                path: path.to_owned(),
                mode,
            });
        }
    }
    let corrupt = |source| Error::Corrupt {
        path: path.to_owned(),
        source,
    };
    if meta.len() > MAX_KEY_FILE {
        return Err(corrupt(identity::Error::KeyFormat(format!(
            "{} bytes is too large for a key file",
            meta.len()
        ))));
    }
    let mut text = zeroize::Zeroizing::new(String::new());
    file.take(MAX_KEY_FILE)
        .read_to_string(&mut text)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::InvalidData => {
                corrupt(identity::Error::KeyFormat("not UTF-8 text".into()))
            }
            _ => Error::Io {
                path: path.to_owned(),
                source: e,
            },
        })?;
    Ok(text)
}

/// Loads the key at `path`, or generates and writes one if there is no file there.
pub fn load_or_generate(path: &Path) -> Result<Keypair, Error> {
    if path.exists() {
        load(path)
    } else {
        let key = generate()?;
        write(path, &key)?;
        Ok(key)
    }
}

/// The admin endpoint's credential: 32 random bytes from the operating system, kept as hex in an
/// owner-only file next to the member key ([`token_path`]), sent by the CLI as
/// `Authorization: Bearer <hex>`. Anyone who can read the file may administer the node; nobody
/// else can.
#[derive(Clone, PartialEq, Eq)]
pub struct AdminToken(zeroize::Zeroizing<String>);

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminToken(…)")
    }
}

/// Where the admin token of the node whose member key is at `key` lives: `admin.token` beside it.
pub fn token_path(key: &Path) -> PathBuf {
    key.with_file_name("admin.token")
}

impl AdminToken {
    /// A new token from the operating system's random number generator.
    pub fn generate() -> Result<Self, Error> {
        let mut bytes = zeroize::Zeroizing::new([0u8; 32]);
        getrandom::fill(bytes.as_mut_slice()).map_err(|e| Error::Random(e.to_string()))?;
        Ok(Self(zeroize::Zeroizing::new(hex::encode(*bytes))))
    }

    /// Loads the token at `path`, refusing a file that group or others can read.
    pub fn load(path: &Path) -> Result<Self, Error> {
        let text = read_secret(path)?;
        let token = text.trim();
        if token.len() != 64 || !token.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(Error::Token(path.to_owned()));
        }
        Ok(Self(zeroize::Zeroizing::new(token.to_ascii_lowercase())))
    }

    /// Loads the token at `path`, or makes one there (owner-only) if there is no file.
    pub fn load_or_create(path: &Path) -> Result<Self, Error> {
        if path.exists() {
            return Self::load(path);
        }
        let token = Self::generate()?;
        match write_secret(path, format!("{}\n", token.0.as_str()).as_bytes()) {
            // Another process made it first: use theirs.
            Err(Error::Exists(_)) => Self::load(path),
            other => other.map(|()| token),
        }
    }

    /// The value of the `Authorization` header that carries it.
    pub fn bearer(&self) -> String {
        format!("Bearer {}", self.0.as_str())
    }

    /// Whether an `Authorization` header carries this token; compares in constant time.
    pub fn admits(&self, header: &[u8]) -> bool {
        let Some(presented) = header.strip_prefix(b"Bearer ") else {
            return false;
        };
        let expected = self.0.as_bytes();
        presented.len() == expected.len()
            && presented
                .iter()
                .zip(expected)
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_then_load_round_trips_with_owner_only_permissions() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("keys/hospital.pem");
        let key = generate().expect("random");
        write(&path, &key).expect("written");
        let mode = fs::metadata(&path).expect("exists").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(load(&path).expect("loads").id(), key.id());
        assert_ne!(generate().expect("random").id(), key.id());
    }

    #[test]
    fn never_overwrites_a_key() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("k.pem");
        let first = load_or_generate(&path).expect("created");
        assert!(matches!(
            write(&path, &generate().expect("random")),
            Err(Error::Exists(_))
        ));
        assert_eq!(load_or_generate(&path).expect("loaded").id(), first.id());
    }

    #[test]
    fn readable_by_others_is_refused_with_the_fix() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("k.pem");
        write(&path, &generate().expect("random")).expect("written");
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).expect("chmod");
        let err = load(&path).expect_err("refused");
        assert!(matches!(err, Error::Permissions { mode: 0o644, .. }));
        assert!(err.to_string().contains("chmod 600"), "{err}");
    }

    #[test]
    fn corrupt_files_name_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        for (name, bytes) in [
            ("empty.pem", &b""[..]),
            (
                "garbage.pem",
                &b"-----BEGIN PRIVATE KEY-----\nnot base64\n-----END PRIVATE KEY-----\n"[..],
            ),
            ("binary.pem", &[0xff, 0xfe, 0x00, 0x80][..]),
        ] {
            let path = dir.path().join(name);
            fs::write(&path, bytes).expect("write");
            fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).expect("chmod");
            let err = load(&path).expect_err("refused");
            assert!(matches!(err, Error::Corrupt { .. }), "{name}: {err}");
            assert!(err.to_string().contains(name), "{err}");
        }
        let missing = load(&dir.path().join("missing.pem")).expect_err("refused");
        assert!(matches!(missing, Error::Io { .. }));
    }

    #[test]
    fn the_admin_token_is_made_once_owner_only_and_checked_exactly() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = token_path(&dir.path().join("key.pem"));
        assert_eq!(path, dir.path().join("admin.token"));
        let token = AdminToken::load_or_create(&path).expect("made");
        let mode = fs::metadata(&path).expect("exists").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(AdminToken::load_or_create(&path).expect("loaded"), token);
        assert_ne!(AdminToken::generate().expect("random"), token);
        assert!(token.admits(token.bearer().as_bytes()));
        let mut wrong = token.bearer().into_bytes();
        let last = wrong.len() - 1;
        wrong[last] = if wrong[last] == b'0' { b'1' } else { b'0' };
        assert!(!token.admits(&wrong));
        assert!(!token.admits(b"Bearer "));
        assert!(!token.admits(&token.bearer().as_bytes()[7..]));
        assert_eq!(format!("{token:?}"), "AdminToken(…)");

        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).expect("chmod");
        assert!(matches!(
            AdminToken::load(&path),
            Err(Error::Permissions { .. })
        ));
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).expect("chmod");
        fs::write(&path, "not a token").expect("overwrite");
        assert!(matches!(AdminToken::load(&path), Err(Error::Token(_))));
    }
}
