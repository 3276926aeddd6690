//! Container images of the Docker runtime, built on this machine without a registry: a Debian
//! root filesystem from `debootstrap --variant=minbase` imported into the engine, a shared base
//! image on top of it, then one image per component kind (Debian packages, or a binary copied from
//! the host: Envoy and tansu from the tools dir, `bss-backend` and `bssctl` (the kafka store) from
//! the workspace build).
//!
//! Every tag is a hash of the image's inputs (recipe text, host apt sources, copied binaries, the
//! parent tag), so an image is rebuilt only when one of them changed; the engine is the cache.
//! `spec.images` overrides any component's image (a user with a registry points at their own).
//! Owns: the recipes (`images/*.Dockerfile`, embedded), input hashing, building and checking
//! presence. Does not own containers (see `client`) or when to build (the CLI and `apply`).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Instant;

use futures_util::StreamExt;
use sha2::{Digest, Sha256};

use crate::render::Kind;
use crate::topology::model::ValidatedTopology;

/// Debian release of every image (the host's too: `bss-backend` is built there).
pub const SUITE: &str = "bookworm";
/// Repository prefix of every image bssctl builds.
pub const REPO: &str = "bssctl";
/// Bumped when the way an image is made changes outside its recipe text.
const RECIPE_VERSION: &str = "1";

const ENTRY: &str = include_str!("../../../images/entry.sh");

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("failed to read the host's apt sources ({path}): {source}")]
    AptSources {
        path: String,
        source: std::io::Error,
    },
    #[error("failed to find a Debian {SUITE} mirror in the host's apt sources (/etc/apt/sources.list*); the images are built from the machine's own Debian mirror")]
    NoMirror,
    #[error("failed to find `{tool}` for image {image}: {hint}")]
    Binary {
        image: String,
        tool: String,
        hint: String,
    },
    #[error("failed to read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("failed to run debootstrap: {detail}; install it with `bash dev/setup.sh`")]
    Debootstrap { detail: String },
    #[error("failed to pack the build context of {image}: {source}")]
    Pack {
        image: String,
        source: std::io::Error,
    },
    #[error("failed to import the Debian root filesystem as {tag}: {detail}")]
    Import { tag: String, detail: String },
    #[error("failed to build image {tag}: {detail}")]
    Build { tag: String, detail: String },
    #[error("failed to ask the Docker engine about image {tag}: {source}")]
    Inspect {
        tag: String,
        source: bollard::errors::Error,
    },
    #[error("unknown image `{name}` (known: {})", names().join(", "))]
    Unknown { name: String },
}

/// Where the bytes of a build-context file come from.
#[derive(Debug, Clone, PartialEq)]
enum Source {
    /// A binary the setup installs in the tools dir (a symlink: its target is copied).
    Tool(&'static str),
    /// `bss-backend` from the workspace build.
    Backend,
    /// The `bssctl` binary itself (the running one, else the workspace build).
    Bssctl,
}

/// One image bssctl builds.
#[derive(Debug, Clone, PartialEq)]
pub struct Recipe {
    pub name: &'static str,
    dockerfile: &'static str,
    /// File in the context -> where it comes from.
    binary: Option<(&'static str, Source)>,
}

/// Every image, base first.
pub fn recipes() -> Vec<Recipe> {
    let pkg = |name, dockerfile| Recipe {
        name,
        dockerfile,
        binary: None,
    };
    vec![
        pkg("base", include_str!("../../../images/base.Dockerfile")),
        pkg(
            "postgres",
            include_str!("../../../images/postgres.Dockerfile"),
        ),
        pkg(
            "haproxy",
            include_str!("../../../images/haproxy.Dockerfile"),
        ),
        pkg("redis", include_str!("../../../images/redis.Dockerfile")),
        pkg(
            "prometheus",
            include_str!("../../../images/prometheus.Dockerfile"),
        ),
        pkg(
            "alertmanager",
            include_str!("../../../images/alertmanager.Dockerfile"),
        ),
        pkg(
            "exporters",
            include_str!("../../../images/exporters.Dockerfile"),
        ),
        Recipe {
            name: "envoy",
            dockerfile: include_str!("../../../images/envoy.Dockerfile"),
            binary: Some(("envoy", Source::Tool("envoy"))),
        },
        Recipe {
            name: "tansu",
            dockerfile: include_str!("../../../images/tansu.Dockerfile"),
            binary: Some(("tansu", Source::Tool("tansu"))),
        },
        Recipe {
            name: "backend",
            dockerfile: include_str!("../../../images/bss-backend.Dockerfile"),
            binary: Some(("bss-backend", Source::Backend)),
        },
        Recipe {
            name: "kafka-store",
            dockerfile: include_str!("../../../images/kafka-store.Dockerfile"),
            binary: Some(("bssctl", Source::Bssctl)),
        },
    ]
}

pub fn names() -> Vec<&'static str> {
    recipes().iter().map(|r| r.name).collect()
}

/// The image a component kind runs.
pub fn image_of(kind: Kind) -> &'static str {
    match kind {
        Kind::Postgres => "postgres",
        Kind::Redis => "redis",
        Kind::Kafka => "tansu",
        // `bssctl kafka-store` (the brokers' S3 store): the bssctl binary in an image of its own.
        Kind::KafkaStore => "kafka-store",
        Kind::Haproxy => "haproxy",
        Kind::Backend | Kind::StreamProcessor => "backend",
        Kind::Envoy => "envoy",
        Kind::NodeExporter | Kind::PostgresExporter | Kind::RedisExporter => "exporters",
        Kind::Prometheus => "prometheus",
        Kind::Alertmanager => "alertmanager",
    }
}

/// The `spec.images` key that overrides a component kind's image.
pub fn override_key(kind: Kind) -> &'static str {
    match kind {
        Kind::Postgres => "postgres",
        Kind::Redis => "redis",
        Kind::Kafka => "kafka",
        Kind::KafkaStore => "kafka-store",
        Kind::Haproxy => "haproxy",
        Kind::Backend | Kind::StreamProcessor => "backend",
        Kind::Envoy => "envoy",
        Kind::NodeExporter => "node-exporter",
        Kind::PostgresExporter => "postgres-exporter",
        Kind::RedisExporter => "redis-exporter",
        Kind::Prometheus => "prometheus",
        Kind::Alertmanager => "alertmanager",
    }
}

/// What the images are made from on this machine: the host's apt sources and the Debian mirror
/// they name (read at build time, never written into the repository).
#[derive(Debug, Clone, PartialEq)]
pub struct HostInputs {
    /// Relative path under `/etc/apt/` -> content.
    pub apt: BTreeMap<String, String>,
    pub mirror: String,
}

impl HostInputs {
    pub fn read() -> Result<HostInputs, ImageError> {
        Self::read_from(Path::new("/etc/apt"))
    }

    pub fn read_from(etc_apt: &Path) -> Result<HostInputs, ImageError> {
        let mut apt = BTreeMap::new();
        let list = etc_apt.join("sources.list");
        if list.is_file() {
            apt.insert("sources.list".into(), read(&list)?);
        }
        let dir = etc_apt.join("sources.list.d");
        if dir.is_dir() {
            let rd = std::fs::read_dir(&dir).map_err(|source| ImageError::AptSources {
                path: dir.display().to_string(),
                source,
            })?;
            for e in rd.flatten() {
                let n = e.file_name().to_string_lossy().into_owned();
                // apt itself reads only these two suffixes.
                if n.ends_with(".list") || n.ends_with(".sources") {
                    apt.insert(format!("sources.list.d/{n}"), read(&e.path())?);
                }
            }
        }
        let mirror = mirror(&apt).ok_or(ImageError::NoMirror)?;
        Ok(HostInputs { apt, mirror })
    }
}

fn read(p: &Path) -> Result<String, ImageError> {
    std::fs::read_to_string(p).map_err(|source| ImageError::Read {
        path: p.display().to_string(),
        source,
    })
}

/// The first mirror serving `SUITE` (not its -updates/-security siblings) in one-line or deb822
/// sources.
pub fn mirror(apt: &BTreeMap<String, String>) -> Option<String> {
    for (name, text) in apt {
        if name.ends_with(".sources") {
            for para in text.split("\n\n") {
                let field = |k: &str| {
                    para.lines()
                        .find_map(|l| l.strip_prefix(k).map(|v| v.trim().to_string()))
                };
                let types = field("Types:").unwrap_or_default();
                let suites = field("Suites:").unwrap_or_default();
                let enabled = field("Enabled:").is_none_or(|v| v != "no");
                if enabled
                    && types.split_whitespace().any(|t| t == "deb")
                    && suites.split_whitespace().any(|s| s == SUITE)
                {
                    if let Some(u) =
                        field("URIs:").and_then(|u| u.split_whitespace().next().map(str::to_string))
                    {
                        return Some(u);
                    }
                }
            }
        } else {
            for l in text.lines() {
                let w: Vec<&str> = l
                    .split_whitespace()
                    .filter(|w| !w.starts_with('['))
                    .collect();
                if w.len() >= 3 && w[0] == "deb" && w[2] == SUITE {
                    return Some(w[1].to_string());
                }
            }
        }
    }
    None
}

/// One image to build: its tag (the hash of its inputs) and the files of its build context.
#[derive(Debug, Clone)]
pub struct Planned {
    pub name: &'static str,
    pub tag: String,
    pub parent: String,
    dockerfile: &'static str,
    /// Context path -> host file copied in (binaries).
    copies: Vec<(String, PathBuf)>,
}

/// The imported root filesystem's tag: a hash of the suite, variant and host apt sources.
pub fn rootfs_tag(host: &HostInputs) -> String {
    let mut h = Sha256::new();
    for part in [RECIPE_VERSION, SUITE, "minbase", host.mirror.as_str()] {
        h.update(part.as_bytes());
        h.update([0]);
    }
    format!("{REPO}/rootfs:{}", short(h))
}

fn short(h: Sha256) -> String {
    hex::encode(h.finalize())[..16].to_string()
}

/// Tags and contexts of every image, computed from the inputs (hashes the copied binaries, found
/// where bssctl finds its tools).
pub fn plan(host: &HostInputs) -> Result<Vec<Planned>, ImageError> {
    plan_with(host, &|tool| crate::tools::find(tool).map_err(|e| e.hint))
}

/// `plan` with the binaries found by `find` (tool name -> path, or the install hint).
pub fn plan_with(
    host: &HostInputs,
    find: &dyn Fn(&str) -> Result<PathBuf, String>,
) -> Result<Vec<Planned>, ImageError> {
    let mut out: Vec<Planned> = Vec::new();
    let rootfs = rootfs_tag(host);
    let mut base_tag = String::new();
    for r in recipes() {
        let parent = if r.name == "base" {
            rootfs.clone()
        } else {
            base_tag.clone()
        };
        let mut h = Sha256::new();
        for part in [RECIPE_VERSION, r.name, r.dockerfile, parent.as_str()] {
            h.update(part.as_bytes());
            h.update([0]);
        }
        let mut copies = Vec::new();
        if r.name == "base" {
            h.update(ENTRY.as_bytes());
            for (p, c) in &host.apt {
                h.update(p.as_bytes());
                h.update([0]);
                h.update(c.as_bytes());
                h.update([0]);
            }
        }
        if let Some((ctx, src)) = &r.binary {
            let tool = match src {
                Source::Tool(t) => *t,
                Source::Backend => "bss-backend",
                Source::Bssctl => "bssctl",
            };
            let found = find(tool).map_err(|hint| ImageError::Binary {
                image: r.name.into(),
                tool: tool.into(),
                hint,
            })?;
            // The tools dir holds symlinks: copy (and hash) what they point at.
            let path = std::fs::canonicalize(&found).unwrap_or(found);
            hash_file(&mut h, &path)?;
            copies.push((ctx.to_string(), path));
        }
        let tag = format!("{REPO}/{}:{}", r.name, short(h));
        if r.name == "base" {
            base_tag = tag.clone();
        }
        out.push(Planned {
            name: r.name,
            tag,
            parent,
            dockerfile: r.dockerfile,
            copies,
        });
    }
    Ok(out)
}

fn hash_file(h: &mut Sha256, p: &Path) -> Result<(), ImageError> {
    use std::io::Read;
    let mut f = std::fs::File::open(p).map_err(|source| ImageError::Read {
        path: p.display().to_string(),
        source,
    })?;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(|source| ImageError::Read {
            path: p.display().to_string(),
            source,
        })?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(())
}

/// The image reference of every component of a topology: its `spec.images` override, else the
/// tag bssctl builds.
pub fn resolve(
    t: &ValidatedTopology,
    kinds: impl IntoIterator<Item = Kind>,
    planned: &[Planned],
) -> BTreeMap<Kind, String> {
    let mut m = BTreeMap::new();
    for k in kinds {
        let r = t.images.get(override_key(k)).cloned().or_else(|| {
            planned
                .iter()
                .find(|p| p.name == image_of(k))
                .map(|p| p.tag.clone())
        });
        if let Some(r) = r {
            m.insert(k, r);
        }
    }
    m
}

/// The image names (recipes) a set of components needs that no override replaces, base first.
pub fn needed(t: &ValidatedTopology, kinds: impl IntoIterator<Item = Kind>) -> Vec<&'static str> {
    let mut want: Vec<&'static str> = kinds
        .into_iter()
        .filter(|k| !t.images.contains_key(override_key(*k)))
        .map(image_of)
        .collect();
    if !want.is_empty() {
        want.push("base");
    }
    let order = names();
    want.sort_by_key(|n| order.iter().position(|o| o == n));
    want.dedup();
    want
}

/// Progress of an image build: one line per step, or per finished image.
pub trait Progress {
    fn line(&mut self, image: &str, text: &str);
}

/// How one image came to be there.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Outcome {
    pub name: String,
    pub tag: String,
    pub built: bool,
    pub millis: u128,
}

/// Builds what is missing among `wanted` (names; empty = all), parents first. Present images
/// (same tag = same inputs) are left as they are.
pub async fn ensure(
    docker: &bollard::Docker,
    host: &HostInputs,
    wanted: &[&str],
    progress: &mut dyn Progress,
) -> Result<Vec<Outcome>, ImageError> {
    let planned = plan(host)?;
    for w in wanted {
        if !planned.iter().any(|p| p.name == *w) {
            return Err(ImageError::Unknown {
                name: w.to_string(),
            });
        }
    }
    let mut out = Vec::new();
    let rootfs = rootfs_tag(host);
    for p in &planned {
        if !wanted.is_empty() && !wanted.contains(&p.name) && p.name != "base" {
            continue;
        }
        let start = Instant::now();
        if exists(docker, &p.tag).await? {
            out.push(Outcome {
                name: p.name.into(),
                tag: p.tag.clone(),
                built: false,
                millis: start.elapsed().as_millis(),
            });
            continue;
        }
        if p.name == "base" && !exists(docker, &rootfs).await? {
            import_rootfs(docker, host, &rootfs, progress).await?;
        }
        build(docker, host, p, progress).await?;
        progress.line(
            p.name,
            &format!("built {} in {:.1}s", p.tag, start.elapsed().as_secs_f64()),
        );
        out.push(Outcome {
            name: p.name.into(),
            tag: p.tag.clone(),
            built: true,
            millis: start.elapsed().as_millis(),
        });
    }
    Ok(out)
}

/// Whether the engine has an image with this tag.
pub async fn exists(docker: &bollard::Docker, tag: &str) -> Result<bool, ImageError> {
    match docker.inspect_image(tag).await {
        Ok(_) => Ok(true),
        Err(bollard::errors::Error::DockerResponseServerError {
            status_code: 404, ..
        }) => Ok(false),
        Err(source) => Err(ImageError::Inspect {
            tag: tag.into(),
            source,
        }),
    }
}

fn cache_dir() -> PathBuf {
    let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
    PathBuf::from(home).join(".cache/bssctl/docker")
}

async fn import_rootfs(
    docker: &bollard::Docker,
    host: &HostInputs,
    tag: &str,
    progress: &mut dyn Progress,
) -> Result<(), ImageError> {
    let debs = cache_dir().join("debs");
    std::fs::create_dir_all(&debs).map_err(|source| ImageError::Read {
        path: debs.display().to_string(),
        source,
    })?;
    let work = tempfile::Builder::new()
        .prefix("bssctl-rootfs-")
        .tempdir()
        .map_err(|source| ImageError::Read {
            path: std::env::temp_dir().display().to_string(),
            source,
        })?;
    let root = work.path().join("root");
    progress.line(
        "base",
        &format!("debootstrap --variant=minbase {SUITE} from {}", host.mirror),
    );
    let started = Instant::now();
    let out = std::process::Command::new("debootstrap")
        .arg("--variant=minbase")
        .arg(format!("--cache-dir={}", debs.display()))
        .arg(SUITE)
        .arg(&root)
        .arg(&host.mirror)
        .output()
        .map_err(|e| ImageError::Debootstrap {
            detail: format!("cannot run debootstrap: {e}"),
        })?;
    if !out.status.success() {
        let tail: String = String::from_utf8_lossy(&out.stdout)
            .lines()
            .chain(String::from_utf8_lossy(&out.stderr).lines())
            .rev()
            .take(8)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<Vec<_>>()
            .join("\n");
        return Err(ImageError::Debootstrap {
            detail: format!("exit {}: {tail}", out.status),
        });
    }
    // apt's downloaded package lists and caches are not part of an image.
    let _ = std::fs::remove_dir_all(root.join("var/cache/apt/archives"));
    let _ = std::fs::create_dir_all(root.join("var/cache/apt/archives/partial"));
    progress.line(
        "base",
        &format!(
            "debootstrap done in {:.1}s; importing",
            started.elapsed().as_secs_f64()
        ),
    );
    let tar = pack_dir(&root).map_err(|source| ImageError::Pack {
        image: "rootfs".into(),
        source,
    })?;
    let (repo, version) = split_tag(tag);
    let opts = bollard::image::CreateImageOptions {
        from_src: "-".to_string(),
        repo: repo.to_string(),
        tag: version.to_string(),
        ..Default::default()
    };
    let mut s = docker.create_image(Some(opts), Some(bytes::Bytes::from(tar)), None);
    while let Some(item) = s.next().await {
        match item {
            Ok(info) => {
                if let Some(e) = info.error {
                    return Err(ImageError::Import {
                        tag: tag.into(),
                        detail: e,
                    });
                }
            }
            Err(e) => {
                return Err(ImageError::Import {
                    tag: tag.into(),
                    detail: e.to_string(),
                })
            }
        }
    }
    Ok(())
}

fn split_tag(tag: &str) -> (&str, &str) {
    tag.rsplit_once(':').unwrap_or((tag, "latest"))
}

/// A tar of a directory tree with owners, modes, symlinks and device files kept (a root fs).
fn pack_dir(root: &Path) -> std::io::Result<Vec<u8>> {
    let mut b = tar::Builder::new(Vec::new());
    // The engine's tar reader knows no GNU sparse entries.
    b.sparse(false);
    b.follow_symlinks(false);
    b.mode(tar::HeaderMode::Complete);
    b.append_dir_all(".", root)?;
    b.into_inner()
}

/// The build context of one image: Dockerfile, the host apt sources and entrypoint (base), binaries.
fn context(host: &HostInputs, p: &Planned) -> std::io::Result<Vec<u8>> {
    let mut b = tar::Builder::new(Vec::new());
    b.sparse(false);
    let add = |b: &mut tar::Builder<Vec<u8>>, path: &str, data: &[u8], mode: u32| {
        let mut hd = tar::Header::new_gnu();
        hd.set_size(data.len() as u64);
        hd.set_mode(mode);
        hd.set_mtime(0);
        hd.set_cksum();
        b.append_data(&mut hd, path, data)
    };
    add(&mut b, "Dockerfile", p.dockerfile.as_bytes(), 0o644)?;
    if p.name == "base" {
        add(&mut b, "entry.sh", ENTRY.as_bytes(), 0o755)?;
        for (rel, c) in &host.apt {
            add(&mut b, &format!("apt/{rel}"), c.as_bytes(), 0o644)?;
        }
    }
    for (ctx, path) in &p.copies {
        let mut f = std::fs::File::open(path)?;
        b.append_file(ctx, &mut f)?;
    }
    b.into_inner()
}

async fn build(
    docker: &bollard::Docker,
    host: &HostInputs,
    p: &Planned,
    progress: &mut dyn Progress,
) -> Result<(), ImageError> {
    let ctx = context(host, p).map_err(|source| ImageError::Pack {
        image: p.name.into(),
        source,
    })?;
    let arg = if p.name == "base" { "ROOTFS" } else { "BASE" };
    let mut labels = HashMap::new();
    labels.insert("io.bssctl.image".to_string(), p.name.to_string());
    labels.insert(
        "io.bssctl.version".to_string(),
        env!("CARGO_PKG_VERSION").to_string(),
    );
    let opts = bollard::image::BuildImageOptions {
        dockerfile: "Dockerfile".to_string(),
        t: p.tag.clone(),
        rm: true,
        forcerm: true,
        buildargs: HashMap::from([(arg.to_string(), p.parent.clone())]),
        labels,
        ..Default::default()
    };
    let mut s = docker.build_image(opts, None, Some(bytes::Bytes::from(ctx)));
    let mut tail: Vec<String> = Vec::new();
    while let Some(item) = s.next().await {
        let info = item.map_err(|e| ImageError::Build {
            tag: p.tag.clone(),
            detail: e.to_string(),
        })?;
        if let Some(e) = info.error {
            return Err(ImageError::Build {
                tag: p.tag.clone(),
                detail: format!("{e}\n{}", tail.join("\n")),
            });
        }
        if let Some(line) = info.stream {
            let line = line.trim_end();
            if line.is_empty() {
                continue;
            }
            if line.starts_with("Step ") {
                progress.line(p.name, line);
            }
            tail.push(line.to_string());
            if tail.len() > 12 {
                tail.remove(0);
            }
        }
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn host(text: &str, name: &str) -> HostInputs {
        let apt = BTreeMap::from([(name.to_string(), text.to_string())]);
        HostInputs {
            mirror: mirror(&apt).unwrap_or_default(),
            apt,
        }
    }

    #[test]
    fn mirror_from_deb822_and_one_line_sources() {
        let deb822 = "Types: deb\nURIs: http://m.example/debian\nSuites: bookworm bookworm-updates\nComponents: main\n\nTypes: deb\nURIs: http://s.example/debian-security\nSuites: bookworm-security\n";
        assert_eq!(
            host(deb822, "sources.list.d/debian.sources").mirror,
            "http://m.example/debian"
        );
        let one = "# comment\ndeb [arch=amd64] http://o.example/debian bookworm main\n";
        assert_eq!(host(one, "sources.list").mirror, "http://o.example/debian");
        let none = "deb http://x.example/debian bullseye main\n";
        assert_eq!(mirror(&host(none, "sources.list").apt), None);
    }

    #[test]
    fn every_kind_has_an_image_recipe() {
        let names = names();
        for k in [
            Kind::Postgres,
            Kind::Redis,
            Kind::Kafka,
            Kind::Haproxy,
            Kind::Backend,
            Kind::StreamProcessor,
            Kind::Envoy,
            Kind::NodeExporter,
            Kind::PostgresExporter,
            Kind::RedisExporter,
            Kind::Prometheus,
            Kind::Alertmanager,
        ] {
            assert!(names.contains(&image_of(k)), "{k:?}");
            assert!(
                crate::topology::validate::IMAGE_COMPONENTS.contains(&override_key(k)),
                "{k:?}"
            );
        }
    }

    #[test]
    fn tags_change_only_with_their_inputs() {
        let a = host(
            "deb http://a.example/debian bookworm main\n",
            "sources.list",
        );
        let b = host(
            "deb http://b.example/debian bookworm main\n",
            "sources.list",
        );
        let dir = tempfile::tempdir().expect("tempdir");
        for t in ["envoy", "tansu", "bss-backend", "bssctl"] {
            std::fs::write(dir.path().join(t), t).expect("write binary");
        }
        let find = |t: &str| -> Result<PathBuf, String> { Ok(dir.path().join(t)) };
        let pa = plan_with(&a, &find).expect("plan a");
        let pa2 = plan_with(&a, &find).expect("plan a again");
        let pb = plan_with(&b, &find).expect("plan b");
        std::fs::write(dir.path().join("envoy"), "envoy 2").expect("write binary");
        let pc = plan_with(&a, &find).expect("plan a, new envoy");
        for (x, y) in pa.iter().zip(&pc) {
            assert_eq!(
                x.tag == y.tag,
                x.name != "envoy",
                "{}: only envoy's binary changed",
                x.name
            );
        }
        let tags = |p: &[Planned]| p.iter().map(|x| x.tag.clone()).collect::<Vec<_>>();
        assert_eq!(tags(&pa), tags(&pa2), "same inputs, same tags");
        for (x, y) in pa.iter().zip(&pb) {
            assert_ne!(x.tag, y.tag, "{}: the mirror feeds every tag", x.name);
        }
        assert!(pa
            .iter()
            .all(|p| p.tag.starts_with(&format!("{REPO}/{}:", p.name))));
    }
}
