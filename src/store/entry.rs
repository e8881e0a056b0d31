//! A shared entry's store keys, and its value, sealed under a key derived from the secret.
//!
//! Keys: `SHARED_KEY_PREFIX`, the hex SHA-256 of what changes the token, `:` and the hex key
//! id (16 bytes from HKDF), so that each secret of a rotation has its own entry, lock and
//! counter. Value: `VERSION (1 byte) | key id (16) | nonce (12) | ChaCha20-Poly1305(JSON
//! plaintext, with the generation) and its 16-byte tag`, the store key as associated data.

use std::borrow::Cow;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use chacha20poly1305::aead::{Aead, Generate, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Nonce};
use hkdf::Hkdf;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use super::SHARED_KEY_PREFIX;
use crate::Error;
use crate::token::GrantedToken;

/// The value format's version, its first byte; an entry of another version is passed over.
const VERSION: u8 = 2;
const KEY_ID_LEN: usize = 16;
const NONCE_LEN: usize = 12;
const HKDF_SALT: &[u8] = b"understory-auth shared token cache";
const HKDF_INFO_ENCRYPTION: &[u8] = b"v1 entry encryption key, ChaCha20-Poly1305";
const HKDF_INFO_KEY_ID: &[u8] = b"v1 store key id";
/// The largest value an entry may have (a token is at most 64 KiB; sealing adds JSON, scopes
/// and 45 bytes). A longer value is neither read whole nor decrypted.
pub(crate) const MAX_ENTRY_BYTES: usize = 96 * 1024;

/// Everything that changes the token an entry holds (not the secret: it does not).
pub(crate) struct SharedKey<'a> {
    pub(crate) token_url: &'a str,
    pub(crate) client_id: &'a str,
    pub(crate) audience: &'a str,
    pub(crate) scopes: &'a [String],
}

impl SharedKey<'_> {
    /// `SHARED_KEY_PREFIX` and the hex SHA-256 of the fields, unambiguously encoded (JSON),
    /// with the scopes sorted and deduplicated.
    fn store_key(&self) -> String {
        let mut scopes: Vec<&str> = self.scopes.iter().map(String::as_str).collect();
        scopes.sort_unstable();
        scopes.dedup();
        let fields =
            serde_json::json!([self.token_url, self.client_id, self.audience, scopes]).to_string();
        format!(
            "{SHARED_KEY_PREFIX}{}",
            hex(&Sha256::digest(fields.as_bytes()))
        )
    }
}

/// Seals and opens the entry of one store key.
pub(crate) struct EntryCodec {
    key: String,
    lock_key: String,
    generation_key: String,
    key_id: [u8; KEY_ID_LEN],
    cipher: ChaCha20Poly1305,
}

/// Why a value was not opened.
#[derive(Debug, PartialEq)]
pub(crate) enum Refusal {
    /// Longer than [`MAX_ENTRY_BYTES`]: not decrypted (and not read whole).
    Oversized,
    /// Sealed under another client secret or in another format version: not ours to judge.
    Foreign,
    /// Claims to be ours but fails authentication: tampered with or corrupt.
    Invalid,
}

/// The plaintext, as JSON.
#[derive(Serialize, Deserialize)]
struct Plain<'a> {
    #[serde(borrow)]
    token: Cow<'a, str>,
    scopes: Vec<String>,
    lifetime_ms: u64,
    expires_at_unix_ms: u64,
    generation: u64,
}

/// An authentic entry. No `Debug`: it holds the token.
pub(crate) struct Opened {
    pub(crate) token: String,
    pub(crate) scopes: Vec<String>,
    /// The lifetime the auth server granted.
    pub(crate) lifetime: Duration,
    pub(crate) expires_at: SystemTime,
    /// Its place in the fleet's sequence of entries: a newer entry has a larger one.
    pub(crate) generation: u64,
}

impl EntryCodec {
    pub(crate) fn new(key: &SharedKey<'_>, client_secret: &str) -> Result<Self, Error> {
        let derivation_failed = |_| Error::config("cannot derive the shared cache's keys");
        let hkdf = Hkdf::<Sha256>::new(Some(HKDF_SALT), client_secret.as_bytes());
        let mut okm = Zeroizing::new([0u8; 32]);
        hkdf.expand(HKDF_INFO_ENCRYPTION, okm.as_mut_slice())
            .map_err(derivation_failed)?;
        let cipher = ChaCha20Poly1305::new_from_slice(okm.as_slice())
            .map_err(|_| Error::config("cannot derive the shared cache's keys"))?;
        let mut key_id = [0u8; KEY_ID_LEN];
        hkdf.expand(HKDF_INFO_KEY_ID, &mut key_id)
            .map_err(derivation_failed)?;
        let key = format!("{}:{}", key.store_key(), hex(&key_id));
        Ok(EntryCodec {
            lock_key: format!("{key}:lock"),
            generation_key: format!("{key}:generation"),
            key,
            key_id,
            cipher,
        })
    }

    pub(crate) fn key(&self) -> &str {
        &self.key
    }

    pub(crate) fn lock_key(&self) -> &str {
        &self.lock_key
    }

    pub(crate) fn generation_key(&self) -> &str {
        &self.generation_key
    }

    /// The value for `token`, expiring at `expires_at`, as entry number `generation`, under
    /// a fresh random nonce. `None` only if the system's random generator fails.
    pub(crate) fn seal(
        &self,
        token: &GrantedToken,
        expires_at: SystemTime,
        generation: u64,
    ) -> Option<Vec<u8>> {
        let plain = Plain {
            token: Cow::Borrowed(token.secret()),
            scopes: token.scopes().to_vec(),
            lifetime_ms: millis(token.lifetime()),
            expires_at_unix_ms: millis(expires_at.duration_since(UNIX_EPOCH).ok()?),
            generation,
        };
        let plain = serde_json::to_vec(&plain).ok()?;
        let nonce = Nonce::try_generate().ok()?;
        let payload = Payload {
            msg: &plain,
            aad: self.key.as_bytes(),
        };
        let sealed = self.cipher.encrypt(&nonce, payload).ok()?;
        Some([&[VERSION][..], &self.key_id, &nonce, &sealed].concat())
    }

    /// The entry in `value`, if it is authentic: sealed by a holder of the secret, for this
    /// key, and unchanged since. One over [`MAX_ENTRY_BYTES`] or sealed under another secret
    /// is not decrypted.
    pub(crate) fn open(&self, value: &[u8]) -> Result<Opened, Refusal> {
        if value.len() > MAX_ENTRY_BYTES {
            return Err(Refusal::Oversized);
        }
        let (&version, rest) = value.split_first().ok_or(Refusal::Invalid)?;
        let (key_id, rest) = rest.split_at_checked(KEY_ID_LEN).ok_or(Refusal::Invalid)?;
        if version != VERSION || key_id != self.key_id {
            return Err(Refusal::Foreign);
        }
        let (nonce, sealed) = rest.split_at_checked(NONCE_LEN).ok_or(Refusal::Invalid)?;
        let nonce = Nonce::try_from(nonce).map_err(|_| Refusal::Invalid)?;
        let payload = Payload {
            msg: sealed,
            aad: self.key.as_bytes(),
        };
        let plain = self
            .cipher
            .decrypt(&nonce, payload)
            .map_err(|_| Refusal::Invalid)?;
        let plain: Plain<'_> = serde_json::from_slice(&plain).map_err(|_| Refusal::Invalid)?;
        Ok(Opened {
            token: plain.token.into_owned(),
            scopes: plain.scopes,
            lifetime: Duration::from_millis(plain.lifetime_ms),
            expires_at: UNIX_EPOCH
                .checked_add(Duration::from_millis(plain.expires_at_unix_ms))
                .ok_or(Refusal::Invalid)?,
            generation: plain.generation,
        })
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}
