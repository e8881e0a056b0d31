//! A shared entry: its store key, and its value, sealed under a key derived from the client
//! secret so that the store holds only ciphertext nobody else can read or forge.
//!
//! Value layout: `VERSION (1 byte) | nonce (12 bytes) | ChaCha20-Poly1305(plaintext) with
//! its 16-byte tag`, the store key as associated data; the plaintext is JSON.

use std::borrow::Cow;
use std::fmt::Write as _;
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

/// The value format's version, its first byte; any other is rejected.
const VERSION: u8 = 1;
const NONCE_LEN: usize = 12;
const HKDF_SALT: &[u8] = b"understory-auth shared token cache";
const HKDF_INFO: &[u8] = b"v1 entry encryption key, ChaCha20-Poly1305";

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
        let mut key = SHARED_KEY_PREFIX.to_owned();
        for byte in Sha256::digest(fields.as_bytes()) {
            let _ = write!(key, "{byte:02x}");
        }
        key
    }
}

/// Seals and opens the entry of one store key.
pub(crate) struct EntryCodec {
    key: String,
    lock_key: String,
    cipher: ChaCha20Poly1305,
}

/// The plaintext, as JSON.
#[derive(Serialize, Deserialize)]
struct Plain<'a> {
    #[serde(borrow)]
    token: Cow<'a, str>,
    scopes: Vec<String>,
    lifetime_ms: u64,
    expires_at_unix_ms: u64,
}

/// An authentic entry. No `Debug`: it holds the token.
pub(crate) struct Opened {
    pub(crate) token: String,
    pub(crate) scopes: Vec<String>,
    /// The lifetime the auth server granted.
    pub(crate) lifetime: Duration,
    pub(crate) expires_at: SystemTime,
}

impl EntryCodec {
    pub(crate) fn new(key: &SharedKey<'_>, client_secret: &str) -> Result<Self, Error> {
        let mut okm = Zeroizing::new([0u8; 32]);
        Hkdf::<Sha256>::new(Some(HKDF_SALT), client_secret.as_bytes())
            .expand(HKDF_INFO, okm.as_mut_slice())
            .map_err(|_| Error::config("cannot derive the shared cache's encryption key"))?;
        let cipher = ChaCha20Poly1305::new_from_slice(okm.as_slice())
            .map_err(|_| Error::config("cannot derive the shared cache's encryption key"))?;
        let key = key.store_key();
        Ok(EntryCodec {
            lock_key: format!("{key}:lock"),
            key,
            cipher,
        })
    }

    /// The entry's store key.
    pub(crate) fn key(&self) -> &str {
        &self.key
    }

    /// The store key of the lock its fetcher holds.
    pub(crate) fn lock_key(&self) -> &str {
        &self.lock_key
    }

    /// The value for `token`, expiring at `expires_at`, under a fresh random nonce. `None`
    /// only if the system's random generator fails.
    pub(crate) fn seal(&self, token: &GrantedToken, expires_at: SystemTime) -> Option<Vec<u8>> {
        let plain = Plain {
            token: Cow::Borrowed(token.secret()),
            scopes: token.scopes().to_vec(),
            lifetime_ms: millis(token.lifetime()),
            expires_at_unix_ms: millis(expires_at.duration_since(UNIX_EPOCH).ok()?),
        };
        let plain = serde_json::to_vec(&plain).ok()?;
        let nonce = Nonce::try_generate().ok()?;
        let payload = Payload {
            msg: &plain,
            aad: self.key.as_bytes(),
        };
        let sealed = self.cipher.encrypt(&nonce, payload).ok()?;
        let mut value = Vec::with_capacity(1 + NONCE_LEN + sealed.len());
        value.push(VERSION);
        value.extend_from_slice(&nonce);
        value.extend_from_slice(&sealed);
        Some(value)
    }

    /// The entry in `value`, if it is authentic: sealed by a holder of the secret, for this
    /// key, and unchanged since. `None` for anything else.
    pub(crate) fn open(&self, value: &[u8]) -> Option<Opened> {
        let (&version, rest) = value.split_first()?;
        if version != VERSION {
            return None;
        }
        let (nonce, sealed) = rest.split_at_checked(NONCE_LEN)?;
        let payload = Payload {
            msg: sealed,
            aad: self.key.as_bytes(),
        };
        let plain = self
            .cipher
            .decrypt(&Nonce::try_from(nonce).ok()?, payload)
            .ok()?;
        let plain: Plain<'_> = serde_json::from_slice(&plain).ok()?;
        Some(Opened {
            token: plain.token.into_owned(),
            scopes: plain.scopes,
            lifetime: Duration::from_millis(plain.lifetime_ms),
            expires_at: UNIX_EPOCH.checked_add(Duration::from_millis(plain.expires_at_unix_ms))?,
        })
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}
