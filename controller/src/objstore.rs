//! `bssctl kafka-store`: the S3 object store the tansu brokers keep their log and consumer-group
//! offsets in (`kafka.storage: s3`). A small subset of the S3 REST API on a directory, path-style,
//! unsigned requests: GET / HEAD (with byte ranges), PUT with `If-None-Match: *` and
//! `If-Match: <etag>`, DELETE, and ListObjectsV2.
//!
//! Why not an existing server: tansu allocates offsets with conditional writes, so the store must
//! decide "does this object exist / still have this ETag" and the write as one step. s3s-fs 0.14.1
//! checks and then writes without a lock: 8 concurrent `If-None-Match: *` PUTs of one key succeeded
//! 2-3 times out of 8, and tansu on it lost acknowledged records under concurrent producers
//! (`docs/events.md`). Here every conditional decision and its rename happen under one lock, and
//! every object is written to a temporary file, synced and renamed, so a `kill -9` of the store
//! leaves each object either old or new, never torn.
//!
//! Owns the objects under `<root>/<bucket>/<key>`; it knows nothing of Kafka. Runtime wiring (when
//! it runs, its port, its health probe) is the engine's.

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File};
use std::io::{Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use sha2::{Digest, Sha256};

/// Keys per ListObjectsV2 page when the client asks for none or more.
const MAX_KEYS: usize = 1000;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("failed to prepare the store directory {dir}: {source}")]
    Prepare { dir: String, source: std::io::Error },
    #[error("failed to listen on {addr}: {detail}")]
    Listen { addr: String, detail: String },
    #[error("failed to {action} object {key}: {source}")]
    Io {
        action: &'static str,
        key: String,
        source: std::io::Error,
    },
    #[error("failed: `{0}` is not a valid object key")]
    BadKey(String),
    #[error("failed: bucket `{0}` does not exist")]
    NoSuchBucket(String),
    #[error("failed: object `{0}` does not exist")]
    NoSuchKey(String),
    #[error("failed: precondition on `{0}` does not hold")]
    Precondition(String),
    #[error("failed: `{0}` is both an object and a prefix of other objects")]
    Conflict(String),
}

impl StoreError {
    /// HTTP status and S3 error code of the failure.
    fn s3(&self) -> (u16, &'static str) {
        match self {
            StoreError::BadKey(_) => (400, "InvalidArgument"),
            StoreError::NoSuchBucket(_) => (404, "NoSuchBucket"),
            StoreError::NoSuchKey(_) => (404, "NoSuchKey"),
            StoreError::Precondition(_) => (412, "PreconditionFailed"),
            StoreError::Conflict(_) => (409, "OperationAborted"),
            _ => (500, "InternalError"),
        }
    }
}

/// What a PUT requires of the object it replaces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Condition {
    None,
    /// `If-None-Match: *`: the object must not exist.
    Absent,
    /// `If-Match: <etag>` (or `*`: it must exist).
    Matches(String),
}

/// An object's metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Meta {
    pub etag: String,
    pub size: u64,
    /// Seconds since the epoch.
    pub modified: u64,
}

/// The objects of a store directory. Cheap to share between the server's threads.
pub struct Store {
    root: PathBuf,
    /// Held across every check-and-replace, so conditional writes are atomic.
    write_lock: Mutex<()>,
    tmp_seq: AtomicU64,
    /// ETags of the files already hashed, by path and the identity of the file they were
    /// computed from (see [`FileId`]).
    etags: Mutex<HashMap<PathBuf, (FileId, String)>>,
    /// Held (by key hash) from staging an object's new bytes until they are in place, so two
    /// writes of one key never share its shadow file. Taken before `write_lock`.
    stripes: Vec<Mutex<()>>,
}

/// Stripes of [`Store::stripes`].
const STRIPES: usize = 64;

/// The hidden file beside an object that its next version is staged in (names starting with
/// `.tmp` are neither valid keys nor listed).
fn shadow_of(p: &Path) -> Option<PathBuf> {
    let name = p.file_name()?.to_string_lossy();
    Some(p.with_file_name(format!(".tmp.{name}")))
}

/// Which version of an object a file holds. Every PUT renames a new file into place, so a
/// replaced object has a new inode; size and modification time catch a file changed in place by
/// hand. An ETag cached for one identity is valid as long as the path still has that identity.
///
/// Why: tansu lists a partition's whole `records/` prefix on every fetch, and a listing carries
/// each object's ETag. Hashing every object again for every listing made the store read
/// thousands of files a second under load (issue 14: 5.7 % of the machine at 1,200 req/s).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileId {
    dev: u64,
    ino: u64,
    size: u64,
    mtime_ns: i128,
}

impl FileId {
    fn of(m: &fs::Metadata) -> FileId {
        FileId {
            dev: m.dev(),
            ino: m.ino(),
            size: m.size(),
            mtime_ns: i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec()),
        }
    }
}

/// Cached ETags kept at most; past it the cache starts over (it is only a shortcut).
const ETAG_CACHE_MAX: usize = 200_000;

impl Store {
    /// Opens `root`, creating it and `buckets` when missing; removes temporaries a killed
    /// predecessor left.
    pub fn open(root: &Path, buckets: &[String]) -> Result<Store, StoreError> {
        let prep = |dir: &Path, r: std::io::Result<()>| {
            r.map_err(|source| StoreError::Prepare {
                dir: dir.display().to_string(),
                source,
            })
        };
        let tmp = root.join(".tmp");
        if tmp.exists() {
            prep(&tmp, fs::remove_dir_all(&tmp))?;
        }
        prep(&tmp, fs::create_dir_all(&tmp))?;
        for b in buckets {
            if !valid_bucket(b) {
                return Err(StoreError::NoSuchBucket(b.clone()));
            }
            let d = root.join(b);
            prep(&d, fs::create_dir_all(&d))?;
        }
        Ok(Store {
            root: root.to_path_buf(),
            write_lock: Mutex::new(()),
            tmp_seq: AtomicU64::new(0),
            etags: Mutex::new(HashMap::new()),
            stripes: (0..STRIPES).map(|_| Mutex::new(())).collect(),
        })
    }

    fn stripe(&self, key: &str) -> std::sync::MutexGuard<'_, ()> {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        key.hash(&mut h);
        self.stripes[(h.finish() as usize) % STRIPES]
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    fn cached_etag(&self, p: &Path, id: FileId) -> Option<String> {
        let etags = self.etags.lock().unwrap_or_else(|e| e.into_inner());
        etags
            .get(p)
            .filter(|(have, _)| *have == id)
            .map(|(_, etag)| etag.clone())
    }

    fn remember_etag(&self, p: &Path, id: FileId, etag: &str) {
        let mut etags = self.etags.lock().unwrap_or_else(|e| e.into_inner());
        if etags.len() >= ETAG_CACHE_MAX {
            etags.clear();
        }
        etags.insert(p.to_path_buf(), (id, etag.to_string()));
    }

    /// The ETag of `bytes`, read from the file with identity `id` at `p`: cached, or hashed and
    /// remembered.
    fn etag_of_file(&self, p: &Path, id: FileId, bytes: &[u8]) -> String {
        self.cached_etag(p, id).unwrap_or_else(|| {
            let etag = etag_of(bytes);
            self.remember_etag(p, id, &etag);
            etag
        })
    }

    fn forget_etag(&self, p: &Path) {
        let mut etags = self.etags.lock().unwrap_or_else(|e| e.into_inner());
        etags.remove(p);
    }

    /// Metadata of the object at `p`: one `stat` when its ETag is cached for the file now there;
    /// otherwise the file is read and hashed (identity and bytes taken from one open file).
    fn meta_of(&self, p: &Path, key: &str) -> Result<Meta, StoreError> {
        let io = |action, source| StoreError::Io {
            action,
            key: key.into(),
            source,
        };
        let not_found = |e: &std::io::Error| {
            e.kind() == std::io::ErrorKind::NotFound
                || e.kind() == std::io::ErrorKind::NotADirectory
        };
        let md = match fs::metadata(p) {
            Ok(md) if md.is_file() => md,
            Ok(_) => return Err(StoreError::NoSuchKey(key.into())),
            Err(e) if not_found(&e) => return Err(StoreError::NoSuchKey(key.into())),
            Err(e) => return Err(io("stat", e)),
        };
        let id = FileId::of(&md);
        let modified = md.modified().map(epoch_secs).unwrap_or(0);
        if let Some(etag) = self.cached_etag(p, id) {
            return Ok(Meta {
                etag,
                size: id.size,
                modified,
            });
        }
        let mut f = match File::open(p) {
            Ok(f) => f,
            Err(e) if not_found(&e) => return Err(StoreError::NoSuchKey(key.into())),
            Err(e) => return Err(io("open", e)),
        };
        let md = f.metadata().map_err(|e| io("stat", e))?;
        let mut all = Vec::with_capacity(md.len() as usize);
        f.read_to_end(&mut all).map_err(|e| io("read", e))?;
        let etag = self.etag_of_file(p, FileId::of(&md), &all);
        Ok(Meta {
            etag,
            size: all.len() as u64,
            modified: md.modified().map(epoch_secs).unwrap_or(0),
        })
    }

    fn bucket_dir(&self, bucket: &str) -> Result<PathBuf, StoreError> {
        let d = self.root.join(bucket);
        if valid_bucket(bucket) && d.is_dir() {
            Ok(d)
        } else {
            Err(StoreError::NoSuchBucket(bucket.into()))
        }
    }

    fn object_path(&self, bucket: &str, key: &str) -> Result<PathBuf, StoreError> {
        let dir = self.bucket_dir(bucket)?;
        let rel = Path::new(key);
        let ok = !key.is_empty()
            && !key.ends_with('/')
            && rel.components().all(
                |c| matches!(c, Component::Normal(s) if !s.to_string_lossy().starts_with(".tmp")),
            )
            && !key.contains("//");
        if !ok {
            return Err(StoreError::BadKey(key.into()));
        }
        Ok(dir.join(rel))
    }

    /// Metadata of an object.
    pub fn head(&self, bucket: &str, key: &str) -> Result<Meta, StoreError> {
        let p = self.object_path(bucket, key)?;
        self.meta_of(&p, key)
    }

    /// The object's bytes (`range`: inclusive first and last byte) and its metadata.
    pub fn get(
        &self,
        bucket: &str,
        key: &str,
        range: Option<(u64, Option<u64>)>,
    ) -> Result<(Vec<u8>, Meta), StoreError> {
        let p = self.object_path(bucket, key)?;
        let io = |action, source| StoreError::Io {
            action,
            key: key.into(),
            source,
        };
        // One open file: the bytes and the ETag describe the same version even if a PUT renames
        // a new one into place meanwhile.
        let mut f = match File::open(&p) {
            Ok(f) if p.is_file() => f,
            Ok(_) => return Err(StoreError::NoSuchKey(key.into())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(StoreError::NoSuchKey(key.into()))
            }
            Err(e) => return Err(io("open", e)),
        };
        let md = f.metadata().map_err(|e| io("stat", e))?;
        let mut all = Vec::with_capacity(md.len() as usize);
        f.read_to_end(&mut all).map_err(|e| io("read", e))?;
        let modified = md.modified().map(epoch_secs).unwrap_or(0);
        let etag = self.etag_of_file(&p, FileId::of(&md), &all);
        let meta = Meta {
            etag,
            size: all.len() as u64,
            modified,
        };
        let body = match range {
            None => all,
            Some((first, last)) => {
                let end = last
                    .map(|l| l.saturating_add(1))
                    .unwrap_or(meta.size)
                    .min(meta.size);
                if first >= end {
                    Vec::new()
                } else {
                    all[first as usize..end as usize].to_vec()
                }
            }
        };
        Ok((body, meta))
    }

    /// Writes an object if `cond` holds, atomically with respect to every other write.
    pub fn put(
        &self,
        bucket: &str,
        key: &str,
        body: &[u8],
        cond: &Condition,
    ) -> Result<Meta, StoreError> {
        let p = self.object_path(bucket, key)?;
        let io = |action, source| StoreError::Io {
            action,
            key: key.into(),
            source,
        };
        // A new object is staged in `.tmp` and renamed into place. An object that exists is
        // replaced by exchanging it with its shadow file, which then holds the old bytes and is
        // reused next time: no inode is allocated or freed per replacement. (On ext4 without a
        // journal, as here, allocating an inode skips every inode freed in the last 30 s, reading
        // each one's table block: with tansu replacing a watermark per produced batch, that was
        // most of the store's CPU under load, issue 14.)
        let _stripe = self.stripe(key);
        let shadow = shadow_of(&p).filter(|_| p.is_file());
        let staged = match &shadow {
            Some(s) => s.clone(),
            None => {
                let n = self.tmp_seq.fetch_add(1, Ordering::SeqCst);
                self.root
                    .join(".tmp")
                    .join(format!("{}-{n}", std::process::id()))
            }
        };
        let written = (|| {
            let mut f = File::create(&staged)?;
            f.write_all(body)?;
            f.sync_data()?;
            // The identity the object will have once in place (renames keep it).
            f.metadata().map(|m| FileId::of(&m))
        })();
        let id = match written {
            Ok(id) => id,
            Err(e) => {
                let _ = fs::remove_file(&staged);
                return Err(io("write", e));
            }
        };
        let etag = etag_of(body);
        let result = {
            let _g = self.write_lock.lock().unwrap_or_else(|e| e.into_inner());
            self.check(&p, key, cond).and_then(|()| {
                if p.is_dir() {
                    return Err(StoreError::Conflict(key.into()));
                }
                if let Some(parent) = p.parent() {
                    fs::create_dir_all(parent).map_err(|e| {
                        if e.kind() == std::io::ErrorKind::AlreadyExists
                            || e.kind() == std::io::ErrorKind::NotADirectory
                        {
                            StoreError::Conflict(key.into())
                        } else {
                            io("create the directory of", e)
                        }
                    })?;
                }
                if shadow.is_some() && p.is_file() {
                    rustix::fs::renameat_with(
                        rustix::fs::CWD,
                        &staged,
                        rustix::fs::CWD,
                        &p,
                        rustix::fs::RenameFlags::EXCHANGE,
                    )
                    .map_err(|e| io("exchange", e.into()))?;
                } else {
                    fs::rename(&staged, &p).map_err(|e| io("rename", e))?;
                }
                self.remember_etag(&p, id, &etag);
                if let Some(parent) = p.parent() {
                    // The rename itself survives a machine crash only once the directory is synced.
                    let _ = File::open(parent).and_then(|d| d.sync_all());
                }
                Ok(())
            })
        };
        if result.is_err() && shadow.is_none() {
            let _ = fs::remove_file(&staged);
        }
        result?;
        Ok(Meta {
            etag,
            size: body.len() as u64,
            modified: epoch_secs(SystemTime::now()),
        })
    }

    fn check(&self, p: &Path, key: &str, cond: &Condition) -> Result<(), StoreError> {
        let current = || match self.meta_of(p, key) {
            Ok(m) => Ok(Some(m.etag)),
            Err(StoreError::NoSuchKey(_)) => Ok(None),
            Err(e) => Err(e),
        };
        match cond {
            Condition::None => Ok(()),
            Condition::Absent => match current()? {
                None => Ok(()),
                Some(_) => Err(StoreError::Precondition(key.into())),
            },
            Condition::Matches(want) => match current()? {
                Some(have) if want == "*" || unquote(want) == unquote(&have) => Ok(()),
                _ => Err(StoreError::Precondition(key.into())),
            },
        }
    }

    /// Removes an object; removing a missing one succeeds (as S3 does).
    pub fn delete(&self, bucket: &str, key: &str) -> Result<(), StoreError> {
        let p = self.object_path(bucket, key)?;
        let _stripe = self.stripe(key);
        let _g = self.write_lock.lock().unwrap_or_else(|e| e.into_inner());
        self.forget_etag(&p);
        if let Some(shadow) = shadow_of(&p) {
            let _ = fs::remove_file(shadow);
        }
        match fs::remove_file(&p) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(StoreError::Io {
                action: "delete",
                key: key.into(),
                source,
            }),
        }
    }

    /// Keys under `prefix` in byte order, after `after`, at most `max`; with a delimiter, keys
    /// that continue past it are folded into common prefixes.
    pub fn list(&self, bucket: &str, q: &ListQuery) -> Result<Listing, StoreError> {
        let dir = self.bucket_dir(bucket)?;
        // Walk only the directory the prefix names; its last partial segment filters below.
        let base = match q.prefix.rfind('/') {
            Some(i) => &q.prefix[..=i],
            None => "",
        };
        let mut keys: BTreeMap<String, PathBuf> = BTreeMap::new();
        let start = dir.join(base);
        if start.is_dir() {
            walk(&start, base, &mut keys).map_err(|source| StoreError::Io {
                action: "list",
                key: q.prefix.clone(),
                source,
            })?;
        }
        let max = if q.max_keys == 0 || q.max_keys > MAX_KEYS {
            MAX_KEYS
        } else {
            q.max_keys
        };
        let mut out = Listing::default();
        let mut last_prefix: Option<String> = None;
        for (k, path) in keys {
            if !k.starts_with(&q.prefix) || q.after.as_deref().is_some_and(|a| k.as_str() <= a) {
                continue;
            }
            if let Some(d) = q.delimiter.as_deref().filter(|d| !d.is_empty()) {
                if let Some(i) = k[q.prefix.len()..].find(d) {
                    let cp = k[..q.prefix.len() + i + d.len()].to_string();
                    if last_prefix.as_deref() != Some(cp.as_str()) {
                        if out.count() == max {
                            out.truncated = true;
                            break;
                        }
                        last_prefix = Some(cp.clone());
                        out.last_key = Some(k.clone());
                        out.prefixes.push(cp);
                    } else {
                        out.last_key = Some(k.clone());
                    }
                    continue;
                }
            }
            if out.count() == max {
                out.truncated = true;
                break;
            }
            if let Ok(m) = self.meta_of(&path, &k) {
                out.last_key = Some(k.clone());
                out.objects.push((k, m));
            }
        }
        Ok(out)
    }
}

/// A ListObjectsV2 request.
#[derive(Debug, Clone, Default)]
pub struct ListQuery {
    pub prefix: String,
    pub delimiter: Option<String>,
    /// Keys at or before this one are skipped (start-after or the continuation token).
    pub after: Option<String>,
    pub max_keys: usize,
}

#[derive(Debug, Clone, Default)]
pub struct Listing {
    pub objects: Vec<(String, Meta)>,
    pub prefixes: Vec<String>,
    pub truncated: bool,
    /// The last key this page covered: the continuation token of the next page.
    pub last_key: Option<String>,
}

impl Listing {
    fn count(&self) -> usize {
        self.objects.len() + self.prefixes.len()
    }
}

fn walk(dir: &Path, rel: &str, out: &mut BTreeMap<String, PathBuf>) -> std::io::Result<()> {
    for e in fs::read_dir(dir)? {
        let e = e?;
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with(".tmp") {
            continue;
        }
        let key = format!("{rel}{name}");
        let ft = e.file_type()?;
        if ft.is_dir() {
            walk(&e.path(), &format!("{key}/"), out)?;
        } else if ft.is_file() {
            out.insert(key, e.path());
        }
    }
    Ok(())
}

/// S3 bucket naming: 3-63 of `a-z 0-9 - .`, starting and ending with a letter or digit.
pub fn valid_bucket(b: &str) -> bool {
    let s = b.as_bytes();
    (3..=63).contains(&s.len())
        && s.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-' || *c == b'.')
        && s.first().is_some_and(u8::is_ascii_alphanumeric)
        && s.last().is_some_and(u8::is_ascii_alphanumeric)
        && !b.contains("..")
}

/// Quoted ETag of a content: the first 128 bits of its SHA-256, so it is the same after a restart.
fn etag_of(b: &[u8]) -> String {
    let h = Sha256::digest(b);
    format!("\"{}\"", hex::encode(&h[..16]))
}

fn unquote(s: &str) -> &str {
    let s = s.trim();
    let s = s.strip_prefix("W/").unwrap_or(s);
    s.trim_matches('"')
}

fn epoch_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// (year, month, day, hour, minute, second, weekday 0 = Sunday) of a Unix time, UTC.
fn civil(secs: u64) -> (i64, u32, u32, u32, u32, u32, u32) {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Days to civil date (proleptic Gregorian), after H. Hinnant's `civil_from_days`.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    let wd = ((days + 4).rem_euclid(7)) as u32;
    (
        y,
        m,
        d,
        (rem / 3600) as u32,
        (rem / 60 % 60) as u32,
        (rem % 60) as u32,
        wd,
    )
}

/// `Tue, 01 Dec 2026 21:42:04 GMT` (HTTP-date).
pub fn http_date(secs: u64) -> String {
    const DAYS: [&str; 7] = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let (y, mo, d, h, mi, s, wd) = civil(secs);
    format!(
        "{}, {d:02} {} {y} {h:02}:{mi:02}:{s:02} GMT",
        DAYS[wd as usize],
        MONTHS[(mo - 1) as usize]
    )
}

/// `2026-12-01T21:42:04.000Z` (ISO 8601, as S3 listings carry it).
pub fn iso_date(secs: u64) -> String {
    let (y, mo, d, h, mi, s, _) = civil(secs);
    format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}.000Z")
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&apos;")
}

fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let h = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(h, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

fn percent_encode(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.bytes() {
        if c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.' | b'~' | b'/') {
            o.push(c as char);
        } else {
            o.push_str(&format!("%{c:02X}"));
        }
    }
    o
}

/// `bytes=first-last` or `bytes=first-` (suffix ranges are not used by the brokers).
fn parse_range(h: &str) -> Option<(u64, Option<u64>)> {
    let r = h.trim().strip_prefix("bytes=")?;
    let (a, b) = r.split_once('-')?;
    let first = a.trim().parse().ok()?;
    let last = if b.trim().is_empty() {
        None
    } else {
        Some(b.trim().parse().ok()?)
    };
    Some((first, last))
}

type Resp = tiny_http::Response<std::io::Cursor<Vec<u8>>>;

fn header(name: &str, value: &str) -> Option<tiny_http::Header> {
    tiny_http::Header::from_bytes(name.as_bytes(), value.as_bytes()).ok()
}

fn respond(status: u16, body: Vec<u8>, headers: &[(&str, String)]) -> Resp {
    // S3 clients need Content-Length on every object response: never chunked.
    let mut r = tiny_http::Response::from_data(body)
        .with_status_code(status)
        .with_chunked_threshold(usize::MAX);
    for (k, v) in headers {
        if let Some(h) = header(k, v) {
            r.add_header(h);
        }
    }
    r
}

fn error_response(e: &StoreError, resource: &str) -> Resp {
    let (status, code) = e.s3();
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{code}</Code><Message>{}</Message><Resource>{}</Resource></Error>",
        xml_escape(&e.to_string()),
        xml_escape(resource)
    );
    respond(
        status,
        body.into_bytes(),
        &[("Content-Type", "application/xml".into())],
    )
}

fn meta_headers(m: &Meta) -> Vec<(&'static str, String)> {
    vec![
        ("ETag", m.etag.clone()),
        ("Last-Modified", http_date(m.modified)),
        ("Accept-Ranges", "bytes".into()),
    ]
}

fn list_xml(bucket: &str, q: &ListQuery, l: &Listing) -> String {
    let mut x = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<ListBucketResult xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\">");
    x.push_str(&format!(
        "<Name>{}</Name><Prefix>{}</Prefix><KeyCount>{}</KeyCount><MaxKeys>{}</MaxKeys><IsTruncated>{}</IsTruncated>",
        xml_escape(bucket),
        xml_escape(&q.prefix),
        l.count(),
        if q.max_keys == 0 { MAX_KEYS } else { q.max_keys.min(MAX_KEYS) },
        l.truncated
    ));
    if let Some(d) = &q.delimiter {
        x.push_str(&format!("<Delimiter>{}</Delimiter>", xml_escape(d)));
    }
    for (k, m) in &l.objects {
        x.push_str(&format!(
            "<Contents><Key>{}</Key><LastModified>{}</LastModified><ETag>{}</ETag><Size>{}</Size><StorageClass>STANDARD</StorageClass></Contents>",
            xml_escape(k),
            iso_date(m.modified),
            xml_escape(&m.etag),
            m.size
        ));
    }
    for p in &l.prefixes {
        x.push_str(&format!(
            "<CommonPrefixes><Prefix>{}</Prefix></CommonPrefixes>",
            xml_escape(p)
        ));
    }
    if l.truncated {
        if let Some(k) = &l.last_key {
            x.push_str(&format!(
                "<NextContinuationToken>{}</NextContinuationToken>",
                xml_escape(&percent_encode(k))
            ));
        }
    }
    x.push_str("</ListBucketResult>");
    x
}

/// Extra text endpoints under `/-/` (no bucket name can start with '-'): `/-/metrics` gets the
/// store root and returns Prometheus text.
pub type MetricsFn = fn(&Path) -> String;

/// Answers one request.
pub fn handle(store: &Store, metrics: MetricsFn, req: &mut tiny_http::Request) -> Resp {
    let url = req.url().to_string();
    let (path, query) = url.split_once('?').unwrap_or((url.as_str(), ""));
    match path {
        "/-/metrics" => {
            return respond(
                200,
                metrics(&store.root).into_bytes(),
                &[("Content-Type", "text/plain; version=0.0.4".into())],
            )
        }
        "/-/healthy" => return respond(200, b"ok\n".to_vec(), &[]),
        _ => {}
    }
    let params: BTreeMap<String, String> = query
        .split('&')
        .filter(|s| !s.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (
                percent_decode(k).unwrap_or_default(),
                percent_decode(v).unwrap_or_default(),
            )
        })
        .collect();
    let Some(path) = percent_decode(path.trim_start_matches('/')) else {
        return error_response(&StoreError::BadKey(path.into()), path);
    };
    let (bucket, key) = path.split_once('/').unwrap_or((path.as_str(), ""));
    let hdr = |name: &str| {
        req.headers()
            .iter()
            .find(|h| h.field.as_str().as_str().eq_ignore_ascii_case(name))
            .map(|h| h.value.as_str().to_string())
    };
    let method = req.method().clone();
    use tiny_http::Method as M;
    let result: Result<Resp, StoreError> = match (&method, key.is_empty()) {
        (M::Get, true) => {
            let q = ListQuery {
                prefix: params.get("prefix").cloned().unwrap_or_default(),
                delimiter: params.get("delimiter").cloned(),
                after: params
                    .get("continuation-token")
                    .or_else(|| params.get("start-after"))
                    .and_then(|t| percent_decode(t)),
                max_keys: params
                    .get("max-keys")
                    .and_then(|m| m.parse().ok())
                    .unwrap_or(MAX_KEYS),
            };
            store.list(bucket, &q).map(|l| {
                respond(
                    200,
                    list_xml(bucket, &q, &l).into_bytes(),
                    &[("Content-Type", "application/xml".into())],
                )
            })
        }
        (M::Head, true) => store
            .bucket_dir(bucket)
            .map(|_| respond(200, Vec::new(), &[])),
        (M::Get, false) => {
            let range = hdr("Range").and_then(|r| parse_range(&r));
            store.get(bucket, key, range).map(|(body, m)| {
                let mut h = meta_headers(&m);
                h.push(("Content-Type", "application/octet-stream".into()));
                match range {
                    Some((first, _)) => {
                        let last = first + body.len() as u64;
                        h.push((
                            "Content-Range",
                            format!("bytes {first}-{}/{}", last.saturating_sub(1), m.size),
                        ));
                        respond(206, body, &h)
                    }
                    None => respond(200, body, &h),
                }
            })
        }
        (M::Head, false) => store.head(bucket, key).map(|m| {
            // No body, but the object's length: tiny_http sends `data_length` as Content-Length
            // and skips the body of a HEAD.
            let headers = meta_headers(&m)
                .iter()
                .filter_map(|(k, v)| header(k, v))
                .collect();
            tiny_http::Response::new(
                tiny_http::StatusCode(200),
                headers,
                std::io::Cursor::new(Vec::new()),
                Some(m.size as usize),
                None,
            )
            .with_chunked_threshold(usize::MAX)
        }),
        (M::Put, false) => {
            let cond = match (hdr("If-None-Match"), hdr("If-Match")) {
                (Some(n), _) if n.trim() == "*" => Condition::Absent,
                (_, Some(m)) => Condition::Matches(m),
                _ => Condition::None,
            };
            let mut body = Vec::new();
            match req.as_reader().read_to_end(&mut body) {
                Ok(_) => store
                    .put(bucket, key, &body, &cond)
                    .map(|m| respond(200, Vec::new(), &[("ETag", m.etag)])),
                Err(source) => Err(StoreError::Io {
                    action: "receive",
                    key: key.into(),
                    source,
                }),
            }
        }
        (M::Delete, false) => store
            .delete(bucket, key)
            .map(|()| respond(204, Vec::new(), &[])),
        _ => {
            return respond(
                501,
                b"<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>NotImplemented</Code><Message>not supported by bssctl kafka-store</Message></Error>".to_vec(),
                &[("Content-Type", "application/xml".into())],
            )
        }
    };
    match result {
        Ok(r) => r,
        Err(e) => {
            if e.s3().0 >= 500 {
                tracing::warn!(error = %e, %method, path = %path, "request failed");
            }
            error_response(&e, &path)
        }
    }
}

/// Serves `store` on `addr` with `threads` workers until the process ends.
pub fn serve(
    store: Store,
    addr: &str,
    threads: usize,
    metrics: MetricsFn,
) -> Result<(), StoreError> {
    let server = tiny_http::Server::http(addr).map_err(|e| StoreError::Listen {
        addr: addr.into(),
        detail: e.to_string(),
    })?;
    let server = Arc::new(server);
    let store = Arc::new(store);
    tracing::info!(%addr, root = %store.root.display(), "kafka store serving");
    let workers: Vec<_> = (0..threads.max(1))
        .map(|_| {
            let (server, store) = (server.clone(), store.clone());
            std::thread::spawn(move || {
                for mut req in server.incoming_requests() {
                    let resp = handle(&store, metrics, &mut req);
                    let _ = req.respond(resp);
                }
            })
        })
        .collect();
    for w in workers {
        let _ = w.join();
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn store() -> (tempfile::TempDir, Store) {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(d.path(), &["tansu".into()]).unwrap();
        (d, s)
    }

    #[test]
    fn conditional_create_admits_exactly_one_writer() {
        let (_d, s) = store();
        let s = Arc::new(s);
        let wins: usize = (0..8)
            .map(|i| {
                let s = s.clone();
                std::thread::spawn(move || {
                    s.put(
                        "tansu",
                        "a/k",
                        format!("v{i}").as_bytes(),
                        &Condition::Absent,
                    )
                    .is_ok()
                })
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|h| usize::from(h.join().unwrap()))
            .sum();
        assert_eq!(wins, 1);
    }

    #[test]
    fn if_match_compares_the_current_etag() {
        let (_d, s) = store();
        let m1 = s.put("tansu", "w.json", b"1", &Condition::None).unwrap();
        let m2 = s
            .put(
                "tansu",
                "w.json",
                b"2",
                &Condition::Matches(m1.etag.clone()),
            )
            .unwrap();
        assert_ne!(m1.etag, m2.etag);
        let stale = s.put("tansu", "w.json", b"3", &Condition::Matches(m1.etag));
        assert!(matches!(stale, Err(StoreError::Precondition(_))));
        assert_eq!(s.get("tansu", "w.json", None).unwrap().0, b"2");
        assert_eq!(s.head("tansu", "w.json").unwrap().etag, m2.etag);
    }

    #[test]
    fn cached_etags_follow_the_file_at_the_path() {
        let (d, s) = store();
        let put = s.put("tansu", "p/o", b"first", &Condition::None).unwrap();
        // Listing, HEAD and GET answer the ETag of the content, cached or not.
        let want = etag_of(b"first");
        assert_eq!(put.etag, want);
        assert_eq!(s.head("tansu", "p/o").unwrap().etag, want);
        let listed = s.list("tansu", &ListQuery::default()).unwrap();
        assert_eq!(listed.objects[0].1.etag, want);
        // Replaced behind the store's back (another file renamed over it, then rewritten in
        // place with another length): the cached ETag must not be served for the new content.
        let path = d.path().join("tansu/p/o");
        let other = d.path().join("other");
        fs::write(&other, b"second").unwrap();
        fs::rename(&other, &path).unwrap();
        assert_eq!(s.head("tansu", "p/o").unwrap().etag, etag_of(b"second"));
        fs::write(&path, b"third, longer").unwrap();
        assert_eq!(
            s.get("tansu", "p/o", None).unwrap().1.etag,
            etag_of(b"third, longer")
        );
        let listed = s.list("tansu", &ListQuery::default()).unwrap();
        assert_eq!(listed.objects[0].1.etag, etag_of(b"third, longer"));
        // A conditional write compares against the current content, not a stale cache entry.
        let stale = s.put("tansu", "p/o", b"x", &Condition::Matches(want));
        assert!(matches!(stale, Err(StoreError::Precondition(_))));
        s.delete("tansu", "p/o").unwrap();
        assert!(matches!(
            s.head("tansu", "p/o"),
            Err(StoreError::NoSuchKey(_))
        ));
    }

    #[test]
    fn replacing_an_object_reuses_its_shadow_and_lists_once() {
        use std::os::unix::fs::MetadataExt;
        let (d, s) = store();
        let path = d.path().join("tansu/w/watermark.json");
        let mut inodes = std::collections::BTreeSet::new();
        let mut last = s
            .put("tansu", "w/watermark.json", b"0", &Condition::Absent)
            .unwrap();
        for i in 1..6 {
            let body = format!("{{\"offset\": {i}}}");
            last = s
                .put(
                    "tansu",
                    "w/watermark.json",
                    body.as_bytes(),
                    &Condition::Matches(last.etag.clone()),
                )
                .unwrap();
            inodes.insert(fs::metadata(&path).unwrap().ino());
            assert_eq!(
                s.get("tansu", "w/watermark.json", None).unwrap().0,
                body.as_bytes()
            );
        }
        // Two files take turns: the object and its shadow (no inode per replacement).
        assert_eq!(inodes.len(), 2, "{inodes:?}");
        let listed = s.list("tansu", &ListQuery::default()).unwrap();
        let keys: Vec<&str> = listed.objects.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["w/watermark.json"]);
        assert_eq!(listed.objects[0].1.etag, last.etag);
        s.delete("tansu", "w/watermark.json").unwrap();
        let left: Vec<_> = fs::read_dir(d.path().join("tansu/w")).unwrap().collect();
        assert!(left.is_empty(), "the shadow went with the object: {left:?}");
    }
    #[test]
    fn list_pages_in_key_order_with_prefixes() {
        let (_d, s) = store();
        for k in [
            "p/r/3.batch",
            "p/r/1.batch",
            "p/r/2.batch",
            "p/w.json",
            "q/x",
        ] {
            s.put("tansu", k, k.as_bytes(), &Condition::None).unwrap();
        }
        let q = ListQuery {
            prefix: "p/r/".into(),
            max_keys: 2,
            ..Default::default()
        };
        let l = s.list("tansu", &q).unwrap();
        let keys: Vec<_> = l.objects.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["p/r/1.batch", "p/r/2.batch"]);
        assert!(l.truncated);
        let next = s
            .list(
                "tansu",
                &ListQuery {
                    after: l.last_key.clone(),
                    ..q
                },
            )
            .unwrap();
        assert_eq!(next.objects[0].0, "p/r/3.batch");
        assert!(!next.truncated);
        let top = s
            .list(
                "tansu",
                &ListQuery {
                    prefix: "p/".into(),
                    delimiter: Some("/".into()),
                    ..Default::default()
                },
            )
            .unwrap();
        assert_eq!(top.prefixes, ["p/r/"]);
        assert_eq!(top.objects[0].0, "p/w.json");
    }

    #[test]
    fn keys_cannot_leave_the_bucket() {
        let (_d, s) = store();
        for k in ["../x", "a/../../x", "/abs", "a//b", ".tmp/x", "dir/"] {
            assert!(
                matches!(
                    s.put("tansu", k, b"x", &Condition::None),
                    Err(StoreError::BadKey(_))
                ),
                "{k}"
            );
        }
        assert!(matches!(
            s.get("other", "k", None),
            Err(StoreError::NoSuchBucket(_))
        ));
    }

    #[test]
    fn dates_are_formatted_as_s3_clients_parse_them() {
        // 2026-12-01 21:42:04 UTC was a Tuesday.
        let t = 1_796_161_324;
        assert_eq!(http_date(t), "Tue, 01 Dec 2026 21:42:04 GMT");
        assert_eq!(iso_date(t), "2026-12-01T21:42:04.000Z");
        assert_eq!(iso_date(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(http_date(951_782_400), "Tue, 29 Feb 2000 00:00:00 GMT");
    }
}
