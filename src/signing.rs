//! Ed25519 signatures over a bundle's manifest: `stove keygen` makes the key pair, `stove pack --sign KEY`
//! signs, `stove verify --key PUB` and `--require-signature PUB` check. The manifest holds the SHA-256 of
//! every other part, so one signature over its exact bytes covers the engine, the model, the default
//! arguments and the page.
//!
//! Keys are standard PEM files (PKCS#8 private, SPKI public), so `openssl pkey` reads them and
//! `openssl genpkey -algorithm ed25519` makes keys stove accepts. The cryptography is ed25519-dalek's.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};
use base64::Engine as _;
use ed25519_dalek::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey};
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// `stove/signature.json`.
#[derive(Debug, Serialize, Deserialize)]
struct SignatureEntry {
    algorithm: String,
    /// The signer's public key, so that a bundle says who signed it even without `--key`.
    public_key: String,
    /// Ed25519 over the bytes of `stove/manifest.json`.
    signature: String,
}

const ALGORITHM: &str = "ed25519";

/// What a bundle's signature says.
#[derive(Debug, Clone, PartialEq)]
pub enum SignatureStatus {
    Unsigned,
    /// Valid, made by the key with this fingerprint.
    Valid {
        fingerprint: String,
    },
    /// Valid, but by another key than the one required.
    OtherKey {
        fingerprint: String,
    },
    /// Does not match the manifest (tampered), or cannot be read.
    Invalid {
        reason: String,
    },
}

/// `SHA256:` and the base64 of the public key's SHA-256, as OpenSSH shows key fingerprints.
pub fn fingerprint(key: &VerifyingKey) -> String {
    format!("SHA256:{}", STANDARD_NO_PAD.encode(Sha256::digest(key.as_bytes())))
}

/// `stove keygen -o PREFIX`: makes the pair and says what each file is for.
pub fn run(args: &crate::cli::KeygenArgs) -> Result<()> {
    let (secret, public) = keygen(&args.output)?;
    println!("private key {} (keep it secret; sign with `stove pack --sign`)", secret.display());
    println!("public key  {} (check with `stove verify --key` or `--require-signature`)", public.display());
    Ok(())
}

/// Writes `PREFIX.key` (private, readable by its owner only) and `PREFIX.pub`.
pub fn keygen(prefix: &Path) -> Result<(PathBuf, PathBuf)> {
    let secret_path = with_suffix(prefix, "key");
    let public_path = with_suffix(prefix, "pub");
    for path in [&secret_path, &public_path] {
        if path.exists() {
            bail!("{} already exists; keys are never overwritten. Choose another name", path.display());
        }
    }
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|e| anyhow::anyhow!("the system gave no random bytes for the key: {e}"))?;
    let key = SigningKey::from_bytes(&seed);
    // PKCS#8 v1 (the seed alone): what OpenSSL and other tools read too (OpenSSL 3.0 refuses the v2 form with
    // the public key inside), so the release script signs SHA256SUMS with the same key. stove reads both.
    let secret = ed25519_dalek::pkcs8::KeypairBytes { secret_key: key.to_bytes(), public_key: None }
        .to_pkcs8_pem(Default::default())
        .context("while encoding the private key")?;
    let public = key.verifying_key().to_public_key_pem(Default::default()).context("while encoding the public key")?;
    write_new(&secret_path, secret.as_bytes(), 0o600)?;
    write_new(&public_path, public.as_bytes(), 0o644)?;
    Ok((secret_path, public_path))
}

fn with_suffix(prefix: &Path, suffix: &str) -> PathBuf {
    let mut name = prefix.as_os_str().to_owned();
    name.push(".");
    name.push(suffix);
    PathBuf::from(name)
}

/// Creates `path` (never replacing a file) with `mode` from the start, so a private key is never readable
/// by others even for a moment.
fn write_new(path: &Path, data: &[u8], mode: u32) -> Result<()> {
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, mode);
    #[cfg(not(unix))]
    let _ = mode;
    let mut file = options.open(path).with_context(|| format!("while creating {}", path.display()))?;
    file.write_all(data).and_then(|()| file.sync_all()).with_context(|| format!("while writing {}", path.display()))
}

pub fn load_signing_key(path: &Path) -> Result<SigningKey> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read the private key {}", path.display()))?;
    SigningKey::from_pkcs8_pem(&text).map_err(|e| {
        anyhow::anyhow!(
            "{} is not an Ed25519 private key in PEM (PKCS#8) form ({e}); make one with `stove keygen`",
            path.display()
        )
    })
}

pub fn load_verifying_key(path: &Path) -> Result<VerifyingKey> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read the public key {}", path.display()))?;
    VerifyingKey::from_public_key_pem(&text).map_err(|e| {
        anyhow::anyhow!(
            "{} is not an Ed25519 public key in PEM form ({e}); use the .pub file `stove keygen` wrote",
            path.display()
        )
    })
}

/// The signature entry for a manifest's exact bytes.
pub fn sign(manifest: &[u8], key: &SigningKey) -> Vec<u8> {
    let entry = SignatureEntry {
        algorithm: ALGORITHM.into(),
        public_key: STANDARD.encode(key.verifying_key().as_bytes()),
        signature: STANDARD.encode(key.sign(manifest).to_bytes()),
    };
    serde_json::to_vec_pretty(&entry).expect("a signature serializes")
}

/// Checks a bundle's signature entry (if any) against its manifest bytes, and against `required` if given.
pub fn check(manifest: &[u8], entry: Option<&[u8]>, required: Option<&VerifyingKey>) -> SignatureStatus {
    let Some(entry) = entry else { return SignatureStatus::Unsigned };
    let invalid = |reason: &str| SignatureStatus::Invalid { reason: reason.to_string() };
    let Ok(entry) = serde_json::from_slice::<SignatureEntry>(entry) else {
        return invalid("the signature entry is not readable");
    };
    if entry.algorithm != ALGORITHM {
        return invalid(&format!("unknown signature algorithm {:?}", entry.algorithm));
    }
    let key = STANDARD
        .decode(&entry.public_key)
        .ok()
        .and_then(|bytes| <[u8; 32]>::try_from(bytes).ok())
        .and_then(|bytes| VerifyingKey::from_bytes(&bytes).ok());
    let signature = STANDARD
        .decode(&entry.signature)
        .ok()
        .and_then(|bytes| <[u8; 64]>::try_from(bytes).ok())
        .map(|bytes| Signature::from_bytes(&bytes));
    let (Some(key), Some(signature)) = (key, signature) else {
        return invalid("the signature entry holds no valid key or signature");
    };
    // verify_strict also refuses weak keys and malleable signatures, which plain verify lets through.
    if key.verify_strict(manifest, &signature).is_err() {
        return invalid("the manifest does not match its signature: the bundle was changed after signing");
    }
    let fingerprint = fingerprint(&key);
    match required {
        Some(required) if *required != key => SignatureStatus::OtherKey { fingerprint },
        _ => SignatureStatus::Valid { fingerprint },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }

    #[test]
    fn a_signed_manifest_checks_and_a_changed_one_does_not() {
        let manifest = br#"{"model":{"sha256":"abc"}}"#;
        let entry = sign(manifest, &key(1));
        let public = key(1).verifying_key();
        assert_eq!(
            check(manifest, Some(&entry), Some(&public)),
            SignatureStatus::Valid { fingerprint: fingerprint(&public) }
        );
        assert!(matches!(
            check(b"{\"model\":{\"sha256\":\"abd\"}}", Some(&entry), None),
            SignatureStatus::Invalid { .. }
        ));
        assert!(matches!(
            check(manifest, Some(&entry), Some(&key(2).verifying_key())),
            SignatureStatus::OtherKey { .. }
        ));
        assert_eq!(check(manifest, None, Some(&public)), SignatureStatus::Unsigned);
        assert!(matches!(check(manifest, Some(b"{not json"), None), SignatureStatus::Invalid { .. }));
    }

    #[test]
    fn keys_round_trip_through_pem_files() {
        let dir = tempfile::tempdir().unwrap();
        let (secret, public) = keygen(&dir.path().join("kitchen")).unwrap();
        let signing = load_signing_key(&secret).unwrap();
        assert_eq!(load_verifying_key(&public).unwrap(), signing.verifying_key());
        // PKCS#8 v1, which OpenSSL reads too: 48 bytes of DER (v2 adds the public key: 83).
        let pem = std::fs::read_to_string(&secret).unwrap();
        let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
        use base64::Engine;
        assert_eq!(base64::engine::general_purpose::STANDARD.decode(body).unwrap().len(), 48);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(std::fs::metadata(&secret).unwrap().permissions().mode() & 0o777, 0o600);
        }
        assert!(keygen(&dir.path().join("kitchen")).unwrap_err().to_string().contains("never overwritten"));
        assert!(load_verifying_key(&secret).is_err(), "a private key is not a public one");
    }
}
