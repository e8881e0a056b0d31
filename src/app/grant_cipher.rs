//! Encryption at rest for durable grant stores: [`GrantKey`] (a user's 32-byte key and its
//! id) and the crate's `GrantCipher`, which seals a [`StoredGrant`] for one connection and
//! opens it again, refusing anything it did not seal for that connection.
//!
//! A sealed grant is `FORMAT (1 byte) | nonce (12) | ChaCha20-Poly1305(JSON plaintext) and
//! its 16-byte tag`. The plaintext holds the refresh token, company, scopes, `refreshed_at`
//! and state; the associated data binds the format tag, the key id and the connection's key,
//! so a row copied under another connection, or relabelled with another key id, is refused.

use std::borrow::Cow;
use std::fmt;
use std::time::{Duration, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use chacha20poly1305::aead::{Aead, Generate, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Nonce};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;
use zeroize::Zeroizing;

use super::company::Company;
use super::grant_store_error::GrantStoreError;
use super::refresh_token::RefreshToken;
use super::stored_grant::{GrantState, StoredAccessToken, StoredGrant};
use crate::Error;

/// The sealed format's version, its first byte and part of the associated data.
const FORMAT: u8 = 1;
const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;
/// What the associated data starts with: the format's name.
const AAD_TAG: &[u8] = b"understory-auth grant v1";
/// The largest sealed grant opened (a refresh token of a few hundred bytes, a company, its
/// scopes: well under a kilobyte in practice). A longer one is refused before decrypting,
/// and a grant that would seal longer is not saved.
pub(crate) const MAX_SEALED_BYTES: usize = 16 * 1024;
/// The longest key id, in characters of `[A-Za-z0-9_-]`.
const MAX_KEY_ID_LEN: usize = 32;
/// At most one warning about refused grants is logged per interval and store; the others go
/// to debug level.
const REFUSAL_WARNING_INTERVAL: Duration = Duration::from_secs(60);

/// A key that encrypts the refresh tokens a durable grant store keeps (ChaCha20-Poly1305),
/// with an id stored beside every sealed grant so keys can be rotated: a store opens grants
/// sealed under its current key or any previous one, and seals new ones under the current.
///
/// The id is 1 to 32 characters of `A-Z a-z 0-9 _ -` (say `2026-01`). The key is 32 random
/// bytes, kept outside the database (a secret manager, an environment variable): whoever
/// has it and the database has every company's refresh token. Its `Debug` shows the id
/// only, and the key bytes are zeroed when it is dropped.
///
/// ```
/// use understory_auth::GrantKey;
///
/// // 32 random bytes, base64: `openssl rand -base64 32`.
/// let key = GrantKey::from_base64("2026-01", "q83vEjRWeJCrze8SNFZ4kKvN7xI0VniQq83vEjRWeJA=")?;
/// assert_eq!(key.id(), "2026-01");
/// assert_eq!(format!("{key:?}"), r#"GrantKey { id: "2026-01", .. }"#);
/// assert!(GrantKey::new("no spaces", [7; 32]).is_err());
/// # Ok::<(), understory_auth::Error>(())
/// ```
#[derive(Clone)]
pub struct GrantKey {
    id: String,
    bytes: Zeroizing<[u8; 32]>,
}

impl GrantKey {
    /// The key `bytes` under `id`. Fails if `id` is empty, longer than 32 characters or has
    /// a character outside `A-Z a-z 0-9 _ -`.
    ///
    /// ```
    /// let key = understory_auth::GrantKey::new("k1", [0x42; 32])?; // use random bytes
    /// assert_eq!(key.id(), "k1");
    /// # Ok::<(), understory_auth::Error>(())
    /// ```
    pub fn new(id: impl Into<String>, bytes: [u8; 32]) -> Result<Self, Error> {
        let bytes = Zeroizing::new(bytes);
        let id = id.into();
        let valid = (1..=MAX_KEY_ID_LEN).contains(&id.len())
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if !valid {
            return Err(Error::config(
                "a grant key id is 1 to 32 characters of A-Z, a-z, 0-9, '_' and '-'",
            ));
        }
        Ok(GrantKey { id, bytes })
    }

    /// The key in `base64` (standard alphabet, padded or not; surrounding whitespace is
    /// ignored), which must decode to exactly 32 bytes, under `id`.
    ///
    /// ```
    /// use understory_auth::GrantKey;
    /// let key = GrantKey::from_base64("k1", "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=")?;
    /// # let _ = key;
    /// assert!(GrantKey::from_base64("k1", "dG9vIHNob3J0").is_err()); // 9 bytes
    /// # Ok::<(), understory_auth::Error>(())
    /// ```
    pub fn from_base64(id: impl Into<String>, base64: &str) -> Result<Self, Error> {
        let decoded = Zeroizing::new(
            base64::engine::general_purpose::STANDARD_NO_PAD
                .decode(base64.trim().trim_end_matches('='))
                .or_else(|_| STANDARD.decode(base64.trim()))
                .map_err(|_| {
                    Error::config("a grant key is 32 bytes in base64; this is not base64")
                })?,
        );
        let mut bytes = [0u8; 32];
        if decoded.len() != bytes.len() {
            return Err(Error::config(format!(
                "a grant key is 32 bytes in base64; this decodes to {} bytes",
                decoded.len()
            )));
        }
        bytes.copy_from_slice(&decoded);
        GrantKey::new(id, bytes)
    }

    /// The key's id, as stored beside each grant sealed under it.
    ///
    /// ```
    /// assert_eq!(understory_auth::GrantKey::new("k1", [1; 32])?.id(), "k1");
    /// # Ok::<(), understory_auth::Error>(())
    /// ```
    pub fn id(&self) -> &str {
        &self.id
    }
}

impl fmt::Debug for GrantKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GrantKey")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

/// A grant sealed for one connection, and the id of the key that sealed it.
pub(crate) struct Sealed {
    pub(crate) key_id: String,
    pub(crate) bytes: Vec<u8>,
}

/// Why a stored grant was not opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// Longer than [`MAX_SEALED_BYTES`]: not decrypted.
    Oversized,
    /// Sealed under a key id the store was not given (a key retired too early, or another
    /// app's row): not decrypted.
    UnknownKey,
    /// Fails authentication (tampered with, truncated, copied from another connection) or
    /// is not in this crate's format.
    Invalid,
}

impl Refusal {
    /// What is wrong, for a log line or an error.
    pub(crate) fn describe(self) -> &'static str {
        match self {
            Refusal::Oversized => "it is larger than any grant this crate seals",
            Refusal::UnknownKey => {
                "it is sealed under a key id the store was not given (add the key to the previous keys)"
            }
            Refusal::Invalid => {
                "it fails authentication: tampered with, truncated or copied from another connection"
            }
        }
    }
}

/// The plaintext, as JSON.
#[derive(Serialize, Deserialize)]
struct Plain<'a> {
    #[serde(borrow)]
    refresh_token: Cow<'a, str>,
    company: Cow<'a, Company>,
    scopes: Cow<'a, [String]>,
    refreshed_at_unix_ms: u64,
    state: GrantState,
    /// The last refresh's access token, for the fleet to share (absent in older rows).
    #[serde(default, borrow)]
    access_token: Option<PlainAccess<'a>>,
}

/// [`StoredAccessToken`] in the plaintext.
#[derive(Serialize, Deserialize)]
struct PlainAccess<'a> {
    #[serde(borrow)]
    token: Cow<'a, str>,
    obtained_at_unix_ms: u64,
    lifetime_ms: u64,
}

fn unix_ms(at: std::time::SystemTime) -> u64 {
    let since = at.duration_since(UNIX_EPOCH).unwrap_or_default();
    u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
}

struct KeyCipher {
    id: String,
    cipher: ChaCha20Poly1305,
}

/// Seals grants under the current key; opens them under the current or a previous key.
pub(crate) struct GrantCipher {
    /// The current key itself, to build a cipher with other previous keys.
    current_key: GrantKey,
    current: KeyCipher,
    previous: Vec<KeyCipher>,
    /// When a warning about a refused grant was logged last.
    last_warning: Mutex<Option<Instant>>,
}

impl GrantCipher {
    /// Fails if two keys share an id.
    pub(crate) fn new(current: &GrantKey, previous: &[GrantKey]) -> Result<Self, Error> {
        let cipher = |key: &GrantKey| {
            let cipher = ChaCha20Poly1305::new_from_slice(key.bytes.as_slice())
                .map_err(|_| Error::config("a grant key is 32 bytes"))?;
            Ok::<_, Error>(KeyCipher {
                id: key.id.clone(),
                cipher,
            })
        };
        let mut ids: Vec<&str> = std::iter::once(current)
            .chain(previous)
            .map(GrantKey::id)
            .collect();
        ids.sort_unstable();
        if ids.windows(2).any(|pair| pair[0] == pair[1]) {
            return Err(Error::config(
                "two grant keys share an id: give every key its own",
            ));
        }
        Ok(GrantCipher {
            current_key: current.clone(),
            current: cipher(current)?,
            previous: previous.iter().map(cipher).collect::<Result<_, _>>()?,
            last_warning: Mutex::new(None),
        })
    }

    /// The key new grants are sealed under.
    pub(crate) fn current_key(&self) -> &GrantKey {
        &self.current_key
    }

    /// `grant` sealed for the connection `connection_key` under the current key, with a
    /// fresh random nonce. Fails (permanently) if the system's random generator fails or the
    /// grant would seal larger than [`MAX_SEALED_BYTES`].
    pub(crate) fn seal(
        &self,
        connection_key: &str,
        grant: &StoredGrant,
    ) -> Result<Sealed, GrantStoreError> {
        self.seal_plain(connection_key, grant).map_err(|reason| {
            GrantStoreError::permanent(format!(
                "cannot seal the grant of {connection_key:?}: {reason}"
            ))
        })
    }

    fn seal_plain(&self, connection_key: &str, grant: &StoredGrant) -> Result<Sealed, String> {
        let plain = Plain {
            refresh_token: Cow::Borrowed(grant.refresh_token.expose_secret()),
            company: Cow::Borrowed(&grant.company),
            scopes: Cow::Borrowed(&grant.scopes),
            refreshed_at_unix_ms: unix_ms(grant.refreshed_at),
            state: grant.state,
            access_token: grant.access_token.as_ref().map(|access| PlainAccess {
                token: Cow::Borrowed(access.expose_secret()),
                obtained_at_unix_ms: unix_ms(access.obtained_at),
                lifetime_ms: u64::try_from(access.lifetime.as_millis()).unwrap_or(u64::MAX),
            }),
        };
        let plain = Zeroizing::new(
            serde_json::to_vec(&plain).map_err(|_| "cannot encode the grant".to_owned())?,
        );
        if 1 + NONCE_LEN + plain.len() + TAG_LEN > MAX_SEALED_BYTES {
            return Err(format!(
                "the grant is too large to store (over {MAX_SEALED_BYTES} bytes sealed)"
            ));
        }
        let nonce =
            Nonce::try_generate().map_err(|_| "the system's random generator failed".to_owned())?;
        let aad = associated_data(&self.current.id, connection_key);
        let payload = Payload {
            msg: plain.as_slice(),
            aad: &aad,
        };
        let sealed = self
            .current
            .cipher
            .encrypt(&nonce, payload)
            .map_err(|_| "cannot encrypt the grant".to_owned())?;
        let mut bytes = Vec::with_capacity(1 + NONCE_LEN + sealed.len());
        bytes.push(FORMAT);
        bytes.extend_from_slice(&nonce);
        bytes.extend_from_slice(&sealed);
        Ok(Sealed {
            key_id: self.current.id.clone(),
            bytes,
        })
    }

    /// The grant in `bytes`, sealed under `key_id` for `connection_key`, stored at
    /// `version`, if it is authentic.
    pub(crate) fn open(
        &self,
        connection_key: &str,
        key_id: &str,
        bytes: &[u8],
        version: u64,
    ) -> Result<StoredGrant, Refusal> {
        if bytes.len() > MAX_SEALED_BYTES {
            return Err(Refusal::Oversized);
        }
        let key = std::iter::once(&self.current)
            .chain(&self.previous)
            .find(|key| key.id == key_id)
            .ok_or(Refusal::UnknownKey)?;
        let (&format, rest) = bytes.split_first().ok_or(Refusal::Invalid)?;
        if format != FORMAT {
            return Err(Refusal::Invalid);
        }
        let (nonce, sealed) = rest.split_at_checked(NONCE_LEN).ok_or(Refusal::Invalid)?;
        let nonce = Nonce::try_from(nonce).map_err(|_| Refusal::Invalid)?;
        let aad = associated_data(key_id, connection_key);
        let payload = Payload {
            msg: sealed,
            aad: &aad,
        };
        let plain = Zeroizing::new(
            key.cipher
                .decrypt(&nonce, payload)
                .map_err(|_| Refusal::Invalid)?,
        );
        let plain: Plain<'_> = serde_json::from_slice(&plain).map_err(|_| Refusal::Invalid)?;
        let refreshed_at = UNIX_EPOCH
            .checked_add(Duration::from_millis(plain.refreshed_at_unix_ms))
            .ok_or(Refusal::Invalid)?;
        let mut grant = StoredGrant::new(
            RefreshToken::new(plain.refresh_token.into_owned()),
            plain.company.into_owned(),
            plain.scopes.into_owned(),
            refreshed_at,
        );
        grant.state = plain.state;
        grant.version = version;
        grant.access_token = plain.access_token.and_then(|access| {
            let obtained_at =
                UNIX_EPOCH.checked_add(Duration::from_millis(access.obtained_at_unix_ms))?;
            let lifetime = Duration::from_millis(access.lifetime_ms);
            Some(StoredAccessToken::new(
                access.token.into_owned(),
                obtained_at,
                lifetime,
            ))
        });
        Ok(grant)
    }

    /// Logs that the grant of `connection_key` was refused: a warning, or at debug level
    /// within [`REFUSAL_WARNING_INTERVAL`] of the last warning.
    pub(crate) fn warn_refused(&self, connection_key: &str, refusal: Refusal) {
        let now = Instant::now();
        let warn = {
            let mut last = self.last_warning.lock();
            let due = last.is_none_or(|at| now.duration_since(at) >= REFUSAL_WARNING_INTERVAL);
            if due {
                *last = Some(now);
            }
            due
        };
        let reason = refusal.describe();
        if warn {
            tracing::warn!(
                connection = connection_key,
                "a stored grant was refused and not used: {reason}"
            );
        } else {
            tracing::debug!(
                connection = connection_key,
                "a stored grant was refused and not used: {reason}"
            );
        }
    }
}

/// The format tag, the key id and the connection's key, each length-prefixed.
fn associated_data(key_id: &str, connection_key: &str) -> Vec<u8> {
    let mut aad = Vec::with_capacity(AAD_TAG.len() + 17 + key_id.len() + connection_key.len());
    aad.extend_from_slice(AAD_TAG);
    aad.push(FORMAT);
    for part in [key_id, connection_key] {
        aad.extend_from_slice(&(part.len() as u64).to_be_bytes());
        aad.extend_from_slice(part.as_bytes());
    }
    aad
}

impl fmt::Debug for GrantCipher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let previous: Vec<&str> = self.previous.iter().map(|key| key.id.as_str()).collect();
        f.debug_struct("GrantCipher")
            .field("current", &self.current.id)
            .field("previous", &previous)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant(token: &str) -> StoredGrant {
        let mut grant = StoredGrant::new(
            RefreshToken::new(token),
            Company::new("cmp_1", "Fjord Kayaks"),
            vec!["openid".to_owned(), "offline".to_owned()],
            UNIX_EPOCH + Duration::from_millis(1_767_225_600_123),
        );
        grant.state = GrantState::NeedsReauthorization;
        grant
    }

    fn key(id: &str, byte: u8) -> GrantKey {
        GrantKey::new(id, [byte; 32]).expect("a valid key")
    }

    fn cipher(current: &GrantKey, previous: &[GrantKey]) -> GrantCipher {
        GrantCipher::new(current, previous).expect("distinct ids")
    }

    #[test]
    fn a_sealed_grant_opens_whole_and_hides_the_token() {
        let cipher = cipher(&key("k1", 1), &[]);
        let sealed = cipher.seal("tenant-42", &grant("ory_rt_SECRET")).unwrap();
        assert_eq!(sealed.key_id, "k1");
        let hay = String::from_utf8_lossy(&sealed.bytes);
        assert!(!hay.contains("SECRET") && !hay.contains("Kayaks"), "{hay}");
        let opened = cipher.open("tenant-42", "k1", &sealed.bytes, 17).unwrap();
        assert_eq!(opened.refresh_token.expose_secret(), "ory_rt_SECRET");
        assert_eq!(opened.version, 17);
        assert_eq!(opened.state, GrantState::NeedsReauthorization);
        assert_eq!(opened.company, Company::new("cmp_1", "Fjord Kayaks"));
        assert_eq!(opened.scopes, ["openid", "offline"]);
        assert_eq!(opened.refreshed_at, grant("x").refreshed_at);
        assert!(opened.access_token.is_none());
        // A fresh nonce each time.
        let again = cipher.seal("tenant-42", &grant("ory_rt_SECRET")).unwrap();
        assert_ne!(again.bytes, sealed.bytes);
        // The fleet's shared access token is sealed too.
        let mut with_access = grant("ory_rt_SECRET");
        let obtained = with_access.refreshed_at;
        let lifetime = Duration::from_secs(3600);
        with_access.access_token =
            Some(StoredAccessToken::new("ory_at_SHARED", obtained, lifetime));
        let sealed = cipher.seal("tenant-42", &with_access).unwrap();
        assert!(!String::from_utf8_lossy(&sealed.bytes).contains("SHARED"));
        let opened = cipher.open("tenant-42", "k1", &sealed.bytes, 18).unwrap();
        let access = opened.access_token.expect("the access token");
        assert_eq!(access.expose_secret(), "ory_at_SHARED");
        assert_eq!((access.obtained_at, access.lifetime), (obtained, lifetime));
    }

    #[test]
    fn wrong_key_ids_tampering_and_foreign_connections_are_refused() {
        let cipher = cipher(&key("k1", 1), &[]);
        let sealed = cipher.seal("tenant-42", &grant("ory_rt_1")).unwrap();
        let open = |key_id: &str, bytes: &[u8], connection: &str| {
            cipher.open(connection, key_id, bytes, 1).map(|_| ())
        };
        assert_eq!(
            open("k2", &sealed.bytes, "tenant-42"),
            Err(Refusal::UnknownKey)
        );
        assert_eq!(
            open("k1", &sealed.bytes, "tenant-43"),
            Err(Refusal::Invalid)
        );
        for at in [0, 1, 12, 13, sealed.bytes.len() - 1] {
            let mut tampered = sealed.bytes.clone();
            tampered[at] ^= 0x01;
            assert_eq!(
                open("k1", &tampered, "tenant-42"),
                Err(Refusal::Invalid),
                "{at}"
            );
        }
        for len in [0, 1, 13, 29, sealed.bytes.len() - 1] {
            assert_eq!(
                open("k1", &sealed.bytes[..len], "tenant-42"),
                Err(Refusal::Invalid),
                "{len}"
            );
        }
        // Another key under the same id: not authentic.
        let impostor = self::cipher(&key("k1", 2), &[]);
        assert_eq!(
            impostor
                .open("tenant-42", "k1", &sealed.bytes, 1)
                .map(|_| ()),
            Err(Refusal::Invalid)
        );
    }

    #[test]
    fn oversized_grants_are_neither_opened_nor_sealed() {
        let cipher = cipher(&key("k1", 1), &[]);
        let huge = vec![FORMAT; MAX_SEALED_BYTES + 1];
        assert_eq!(
            cipher.open("tenant-42", "k1", &huge, 1).map(|_| ()),
            Err(Refusal::Oversized)
        );
        let error = cipher
            .seal("tenant-42", &grant(&"x".repeat(MAX_SEALED_BYTES)))
            .map(|_| ())
            .unwrap_err();
        let error = error.to_string();
        assert!(
            error.contains("too large") && !error.contains("xxx"),
            "{error}"
        );
    }

    #[test]
    fn rotation_opens_old_grants_and_seals_under_the_current_key() {
        let old = key("2025", 1);
        let new = key("2026", 2);
        let sealed_old = cipher(&old, &[]).seal("t", &grant("ory_rt_old")).unwrap();
        let rotated = cipher(&new, std::slice::from_ref(&old));
        let opened = rotated.open("t", "2025", &sealed_old.bytes, 3).unwrap();
        assert_eq!(opened.refresh_token.expose_secret(), "ory_rt_old");
        let resealed = rotated.seal("t", &opened).unwrap();
        assert_eq!(resealed.key_id, "2026");
        // Once the old key is retired, only the resealed grant opens.
        let retired = cipher(&new, &[]);
        assert!(retired.open("t", "2026", &resealed.bytes, 4).is_ok());
        assert_eq!(
            retired.open("t", "2025", &sealed_old.bytes, 3).map(|_| ()),
            Err(Refusal::UnknownKey)
        );
        assert!(GrantCipher::new(&new, &[old, key("2026", 3)]).is_err());
    }

    #[test]
    fn keys_are_checked_and_never_shown() {
        for id in ["", "with space", "ä", &"a".repeat(33), "a/b"] {
            assert!(GrantKey::new(id, [0; 32]).is_err(), "{id:?}");
        }
        for id in ["a", "2026-01_b", &"Z".repeat(32)] {
            assert!(GrantKey::new(id, [0; 32]).is_ok(), "{id:?}");
        }
        let b64 = STANDARD.encode([0xAB; 32]);
        let key = GrantKey::from_base64("k", &format!(" {b64}\n")).unwrap();
        assert_eq!(*key.bytes, [0xAB; 32]);
        let unpadded = GrantKey::from_base64("k", b64.trim_end_matches('=')).unwrap();
        assert_eq!(*unpadded.bytes, [0xAB; 32]);
        assert!(GrantKey::from_base64("k", &STANDARD.encode([1; 31])).is_err());
        assert!(GrantKey::from_base64("k", "not base64!").is_err());
        let shown = format!("{key:?} {:?}", self::cipher(&key, &[]));
        assert!(
            !shown.contains("171") && !shown.to_lowercase().contains("ab, "),
            "{shown}"
        );
        assert!(!shown.contains(&b64[..8]), "{shown}");
    }
}
