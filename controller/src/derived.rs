//! Files bssctl derives from secret values and writes beside them (0600, in the secrets
//! directory): Redis' ACL include (a SHA-256 hash per user), redis_exporter's password map, and
//! the exporter-toolkit web configs of Alertmanager and the postgres exporters (bcrypt hashes).
//!
//! Pure: the same values give the same bytes. The bcrypt salt is derived from the environment,
//! the secret's name and its value, so every runtime (local files, Docker secret directories,
//! the Kubernetes Secret) writes them idempotently and a rotated secret changes its file.
//! Owns the file formats; not where they are written, nor the secret values.

use sha2::{Digest, Sha256};

use crate::topology::model::{ValidatedTopology, WebAuthModel};

#[derive(Debug, thiserror::Error)]
pub enum DeriveError {
    #[error("failed to derive {file}: secret `{secret}` has no value yet")]
    Missing { file: String, secret: String },
    #[error("failed to hash secret `{secret}` for {file}: {detail}")]
    Hash {
        file: String,
        secret: String,
        detail: String,
    },
}

/// One derived file: its name inside the secrets directory, its path, its content.
#[derive(Debug, Clone, PartialEq)]
pub struct DerivedFile {
    pub name: String,
    pub path: String,
    pub content: String,
}

/// bcrypt cost of the web configs (exporter-toolkit's recommended 10).
const BCRYPT_COST: u32 = 10;

fn name_of(path: &str) -> String {
    std::path::Path::new(path)
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// The derived files of `t` (name, path), without computing them: for runtimes that decide who
/// mounts what.
pub fn paths(t: &ValidatedTopology) -> Vec<(String, String)> {
    let mut out = Vec::new();
    if let Some(acl) = t.redis.as_ref().and_then(|r| r.acl.as_ref()) {
        out.push(acl.file.clone());
        if t.exporters.redis.is_some() {
            out.push(acl.exporter_password_map.clone());
        }
    }
    for w in web_auths(t) {
        out.push(w.web_config.clone());
    }
    out.into_iter().map(|p| (name_of(&p), p)).collect()
}

fn web_auths(t: &ValidatedTopology) -> Vec<&WebAuthModel> {
    t.alertmanager
        .iter()
        .filter_map(|a| a.web_auth.as_ref())
        .chain(t.exporters.postgres_web_auth.as_ref())
        .collect()
}

/// Every derived file of `t`, from the secret values `value(name)`.
pub fn files(
    t: &ValidatedTopology,
    value: &dyn Fn(&str) -> Option<String>,
) -> Result<Vec<DerivedFile>, DeriveError> {
    files_reusing(t, value, &|_| None)
}

/// The same bytes as `files`, but a web config whose current text (`current(path)`) holds the
/// bcrypt hash of the same password keeps it instead of computing it again: a bcrypt of cost 10
/// takes ~50 ms, and every apply (a no-op too) derives the files. The salt is a function of the
/// password (see `bcrypt_hash`), so an equal salt and cost identify the same password.
pub fn files_reusing(
    t: &ValidatedTopology,
    value: &dyn Fn(&str) -> Option<String>,
    current: &dyn Fn(&str) -> Option<String>,
) -> Result<Vec<DerivedFile>, DeriveError> {
    let get = |file: &str, secret: &str| {
        value(secret).ok_or_else(|| DeriveError::Missing {
            file: name_of(file),
            secret: secret.into(),
        })
    };
    let mut out = Vec::new();
    let mut push = |path: &str, content: String| {
        out.push(DerivedFile {
            name: name_of(path),
            path: path.to_string(),
            content,
        })
    };
    if let Some(r) = &t.redis {
        if let Some(acl) = &r.acl {
            let mut text = String::from(
                "# Rendered by bssctl: Redis ACL users, one per client (SHA-256 of each password).\n\
                 user default reset off\n",
            );
            for u in &acl.users {
                let pw = get(&acl.file, &u.password_secret)?;
                let hash = hex::encode(Sha256::digest(pw.as_bytes()));
                text.push_str(&format!("user {} reset on #{hash} {}\n", u.name, u.rules));
            }
            push(&acl.file, text);
            if t.exporters.redis.is_some() {
                let u = acl
                    .user(crate::topology::model::REDIS_EXPORTER_USER)
                    .map(|u| u.password_secret.clone())
                    .unwrap_or_default();
                let pw = get(&acl.exporter_password_map, &u)?;
                // The key is the exporter's REDIS_ADDR exactly (templates/exporters).
                let addr = format!("redis://{}:{}", r.endpoint.host, r.endpoint.port);
                let map = serde_json::json!({ addr: pw });
                push(&acl.exporter_password_map, format!("{map}\n"));
            }
        }
    }
    for w in web_auths(t) {
        let pw = get(&w.web_config, &w.password_secret)?;
        let salt = salt_of(&t.name, &w.password_secret, &pw);
        let kept = current(&w.web_config).and_then(|text| hash_in(&text, salt));
        let hash = match kept {
            Some(h) => h,
            None => bcrypt_with_salt(&pw, salt).map_err(|detail| DeriveError::Hash {
                file: name_of(&w.web_config),
                secret: w.password_secret.clone(),
                detail,
            })?,
        };
        push(
            &w.web_config,
            format!(
                "# Rendered by bssctl: basic auth (bcrypt) of the whole HTTP interface.\n\
                 basic_auth_users:\n  {}: {}\n",
                crate::render::escape::yaml_str(&w.user),
                crate::render::escape::yaml_str(&hash)
            ),
        );
    }
    Ok(out)
}

/// The bcrypt salt of a web config: derived from where the password is used and from the
/// password itself (see the module header).
fn salt_of(env: &str, secret: &str, password: &str) -> [u8; 16] {
    let mut h = Sha256::new();
    for part in ["bssctl web auth", env, secret, password] {
        h.update(part.as_bytes());
        h.update([0]);
    }
    let d = h.finalize();
    let mut salt = [0u8; 16];
    salt.copy_from_slice(&d[..16]);
    salt
}

/// The bcrypt hash in a web config's `text`, if it was made with `salt` and this cost.
fn hash_in(text: &str, salt: [u8; 16]) -> Option<String> {
    let start = text.find("$2b$")?;
    let hash: String = text[start..]
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '/' | '$'))
        .collect();
    let parts: bcrypt::HashParts = hash.parse().ok()?;
    (parts.get_salt_raw() == salt && parts.get_cost() == BCRYPT_COST).then_some(hash)
}

/// bcrypt of `password` with a salt derived from where it is used (see the module header).
pub fn bcrypt_hash(env: &str, secret: &str, password: &str) -> Result<String, String> {
    bcrypt_with_salt(password, salt_of(env, secret, password))
}

/// bcrypt, remembered for the life of the process by salt (a function of the password): the
/// Docker runtime derives the files once per component of an apply, the agent on every pass.
fn bcrypt_with_salt(password: &str, salt: [u8; 16]) -> Result<String, String> {
    static DONE: std::sync::OnceLock<
        std::sync::Mutex<std::collections::HashMap<[u8; 16], String>>,
    > = std::sync::OnceLock::new();
    let done = DONE.get_or_init(Default::default);
    if let Some(h) = done.lock().ok().and_then(|m| m.get(&salt).cloned()) {
        return Ok(h);
    }
    let h = bcrypt::hash_with_salt(password, BCRYPT_COST, salt)
        .map(|p| p.format_for_version(bcrypt::Version::TwoB))
        .map_err(|e| e.to_string())?;
    if let Ok(mut m) = done.lock() {
        m.insert(salt, h.clone());
    }
    Ok(h)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    #[test]
    fn bcrypt_is_deterministic_and_verifies() {
        let a = super::bcrypt_hash("env", "alertmanager-web-password", "pw").unwrap();
        let b = super::bcrypt_hash("env", "alertmanager-web-password", "pw").unwrap();
        assert_eq!(a, b);
        assert!(a.starts_with("$2b$10$"));
        assert!(bcrypt::verify("pw", &a).unwrap());
        assert!(!bcrypt::verify("other", &a).unwrap());
        assert_ne!(
            a,
            super::bcrypt_hash("env2", "alertmanager-web-password", "pw").unwrap()
        );
    }

    #[test]
    fn a_web_config_keeps_its_hash_only_for_the_same_password() {
        let h = super::bcrypt_hash("env", "alertmanager-web-password", "pw").unwrap();
        let text = format!("# header\nbasic_auth_users:\n  admin: \"{h}\"\n");
        let salt = |pw: &str| super::salt_of("env", "alertmanager-web-password", pw);
        assert_eq!(super::hash_in(&text, salt("pw")), Some(h.clone()));
        // A rotated password has another salt: the hash is computed again.
        assert_eq!(super::hash_in(&text, salt("rotated")), None);
        // Another cost (an older file) is not taken either.
        let other_cost = bcrypt::hash_with_salt("pw", 4, salt("pw"))
            .unwrap()
            .format_for_version(bcrypt::Version::TwoB);
        assert_eq!(super::hash_in(&other_cost, salt("pw")), None);
        assert_eq!(super::hash_in("basic_auth_users: {}\n", salt("pw")), None);
    }
}
