//! API keys and roles. Keys are kept only as SHA-256 digests and compared in constant time; a
//! request's key is resolved once, by the authentication layer (`http::layers::Authenticate`),
//! into a [`Principal`] extension.

use std::{io::Write as _, path::Path, sync::Arc};

use axum::http::HeaderMap;
use plugin_api::Role;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::{config::KeyConfig, http::error::ApiError};

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// Shared with the key ring: resolving a request's key allocates nothing.
    pub name: Arc<str>,
    pub role: Role,
}

/// The configured keys.
#[derive(Debug, Clone)]
pub struct KeyRing {
    keys: Vec<(Arc<str>, Role, [u8; 32])>,
}

impl KeyRing {
    /// Builds the ring from config entries whose hashes were validated at load.
    pub fn from_config(keys: &[KeyConfig]) -> Result<KeyRing, String> {
        let mut ring = Vec::with_capacity(keys.len());
        for (index, key) in keys.iter().enumerate() {
            let mut digest = [0u8; 32];
            hex::decode_to_slice(&key.sha256, &mut digest).map_err(|_| {
                format!("auth.keys[{index}].sha256: expected 64 hexadecimal characters")
            })?;
            ring.push((Arc::from(key.name.as_str()), Role::from(key.role), digest));
        }
        Ok(KeyRing { keys: ring })
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    pub fn add(&mut self, name: &str, role: Role, key: &str) {
        self.keys.push((Arc::from(name), role, sha256(key)));
    }

    /// The caller a request's headers name: none without a key (routes decide whether that
    /// is enough); a key that matches nothing is refused.
    pub fn resolve(&self, headers: &HeaderMap) -> Result<Option<Principal>, ApiError> {
        match presented_key(headers) {
            None => Ok(None),
            Some(key) => self
                .verify(key)
                .map(Some)
                .ok_or_else(|| ApiError::unauthorized("the API key is not valid")),
        }
    }

    /// The caller owning `key`. Every entry is compared, in constant time, so timing tells
    /// nothing about which (if any) matched.
    pub fn verify(&self, key: &str) -> Option<Principal> {
        let digest = sha256(key);
        let mut found = None;
        for (name, role, expected) in &self.keys {
            if bool::from(digest.ct_eq(expected)) && found.is_none() {
                found = Some(Principal {
                    name: Arc::clone(name),
                    role: *role,
                });
            }
        }
        found
    }
}

pub fn sha256(text: &str) -> [u8; 32] {
    Sha256::digest(text.as_bytes()).into()
}

/// A new random key: `pa_` and 32 random bytes in hex.
pub fn generate_key() -> Result<String, String> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|error| format!("no system randomness: {error}"))?;
    Ok(format!("pa_{}", hex::encode(bytes)))
}

/// With no keys configured, the host uses an admin key kept in `<data_dir>/admin.key` (mode
/// 0600), creating it on first start. Returns the key and whether it was just created.
pub fn bootstrap_admin_key(data_dir: &Path) -> Result<(String, bool), String> {
    let path = data_dir.join("admin.key");
    match std::fs::read_to_string(&path) {
        Ok(text) if !text.trim().is_empty() => return Ok((text.trim().to_owned(), false)),
        Ok(_) => {}
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(error) => return Err(format!("cannot read {}: {error}", path.display())),
    }
    let key = generate_key()?;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options
        .open(&path)
        .map_err(|error| format!("cannot create {}: {error}", path.display()))?;
    file.write_all(format!("{key}\n").as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|error| format!("cannot write {}: {error}", path.display()))?;
    Ok((key, true))
}

/// The key a request carries, from `X-API-Key` or `Authorization: Bearer`.
fn presented_key(headers: &HeaderMap) -> Option<&str> {
    if let Some(value) = headers.get("x-api-key") {
        return value.to_str().ok().map(str::trim);
    }
    let value = headers
        .get(axum::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// Checks that the caller holds at least `role`.
pub fn require(principal: Option<&Principal>, role: Role) -> Result<&Principal, ApiError> {
    match principal {
        None => Err(ApiError::unauthorized(
            "send an API key in X-API-Key or Authorization: Bearer",
        )),
        Some(principal) if principal.role < role => Err(ApiError::forbidden(format!(
            "this endpoint needs the {} role; your key has {}",
            role.as_str(),
            principal.role.as_str()
        ))),
        Some(principal) => Ok(principal),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verify_matches_only_the_right_key() {
        let mut ring = KeyRing { keys: Vec::new() };
        ring.add("ops", Role::Admin, "k1");
        ring.add("dev", Role::Developer, "k2");
        assert_eq!(ring.verify("k2").map(|p| p.role), Some(Role::Developer));
        assert_eq!(ring.verify("k3"), None);
    }

    #[test]
    fn generated_keys_differ() {
        let (a, b) = (
            generate_key().unwrap_or_default(),
            generate_key().unwrap_or_default(),
        );
        assert!(a.starts_with("pa_") && a.len() == 67 && a != b);
    }

    #[test]
    fn admin_key_file_is_private_and_stable() {
        let dir = std::env::temp_dir().join(format!("pa-auth-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let (first, created) = bootstrap_admin_key(&dir).unwrap_or_default();
        let (second, created_again) = bootstrap_admin_key(&dir).unwrap_or_default();
        assert!(created && !created_again && first == second && !first.is_empty());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.join("admin.key")).map(|m| m.permissions().mode());
            assert_eq!(mode.map(|m| m & 0o777).ok(), Some(0o600));
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
