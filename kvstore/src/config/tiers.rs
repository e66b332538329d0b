//! The `[[tier]]` sections, one struct per kind, each with its defaults.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use tierkv_tiers::defaults;

use super::ByteSize;

/// What happens to a block evicted from a tier.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EvictPolicy {
    /// Write-back: move it to the next tier down (the bottom tier drops). The default.
    #[default]
    Demote,
    /// Drop it.
    Drop,
}

/// S3 or an S3-compatible service (OSS, MinIO, Ceph RGW).
#[derive(Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct S3Config {
    /// The bucket. Required.
    pub bucket: String,
    /// Default `"us-east-1"`.
    #[serde(default = "default_region")]
    pub region: String,
    /// `http(s)://host:port` of an S3-compatible service; unset for AWS.
    #[serde(default)]
    pub endpoint: Option<String>,
    /// Unset: the `tierkv` binaries read `AWS_ACCESS_KEY_ID`; if that is unset too,
    /// requests are unsigned.
    #[serde(default)]
    pub access_key_id: Option<String>,
    /// Unset: the binaries read `AWS_SECRET_ACCESS_KEY`.
    #[serde(default)]
    pub secret_access_key: Option<String>,
    /// Allow an `http://` endpoint. Default false.
    #[serde(default)]
    pub allow_http: bool,
    /// `bucket.host` addressing (needed by OSS). Default false.
    #[serde(default)]
    pub virtual_hosted_style: bool,
}

impl std::fmt::Debug for S3Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Config")
            .field("bucket", &self.bucket)
            .field("region", &self.region)
            .field("endpoint", &self.endpoint)
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &redacted(&self.secret_access_key))
            .field("allow_http", &self.allow_http)
            .field("virtual_hosted_style", &self.virtual_hosted_style)
            .finish()
    }
}

/// What `Debug` shows of a secret: that there is one, never its value.
pub(crate) fn redacted(secret: &Option<String>) -> Option<&'static str> {
    secret.as_ref().map(|_| "<redacted>")
}

fn default_region() -> String {
    "us-east-1".into()
}

pub(super) fn yes() -> bool {
    true
}

/// One `[[tier]]` section, by `kind`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum TierConfig {
    /// `kind = "host"`.
    Host(HostSection),
    /// `kind = "disk"`.
    Disk(DiskSection),
    /// `kind = "object"`.
    Object(ObjectSection),
    /// `kind = "remote"`.
    Remote(RemoteSection),
    /// `kind = "gpu"` (builds with the `cuda` feature; others refuse it when opening).
    Gpu(GpuSection),
}

/// Policy knobs every tier section has.
pub trait TierSection {
    /// The tier's name, unique in the store.
    fn name(&self) -> &str;
    /// How many bytes of blocks it holds (for `remote`: none of its own).
    fn capacity(&self) -> ByteSize;
    /// Whether every put into the tier above is also written here at once.
    fn write_through(&self) -> bool;
    /// What happens to a block evicted from this tier.
    fn on_evict(&self) -> EvictPolicy;
}

macro_rules! tier_section {
    ($section:ident) => {
        impl TierSection for $section {
            fn name(&self) -> &str {
                &self.name
            }
            fn capacity(&self) -> ByteSize {
                self.capacity
            }
            fn write_through(&self) -> bool {
                self.write_through
            }
            fn on_evict(&self) -> EvictPolicy {
                self.on_evict
            }
        }
    };
}

/// `kind = "host"`: pinned (with the GPU feature) host memory.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct HostSection {
    /// Default `"host"`.
    #[serde(default = "HostSection::default_name")]
    pub name: String,
    /// Required.
    pub capacity: ByteSize,
    /// Also write every put here (for a lower tier). Default false.
    #[serde(default)]
    pub write_through: bool,
    /// Default `demote`.
    #[serde(default)]
    pub on_evict: EvictPolicy,
    /// Fault in all pages at start-up. Default true.
    #[serde(default = "yes")]
    pub prefault: bool,
    /// Back the tier with a memfd that same-host clients of the block service map
    /// (`[service] local_socket`). Default false (`tierkv serve` turns it on for its
    /// top host tier unless `--no-local`).
    #[serde(default)]
    pub shared: bool,
}

impl HostSection {
    fn default_name() -> String {
        "host".into()
    }
}
tier_section!(HostSection);

/// `kind = "gpu"`: HBM that tierkv allocates on a local GPU (`GpuTier`), opened only by
/// builds with the `cuda` feature.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct GpuSection {
    /// Default `"gpu"`.
    #[serde(default = "GpuSection::default_name")]
    pub name: String,
    /// Required.
    pub capacity: ByteSize,
    /// Default false.
    #[serde(default)]
    pub write_through: bool,
    /// Default `demote`.
    #[serde(default)]
    pub on_evict: EvictPolicy,
    /// CUDA ordinal of the GPU. Default 0.
    #[serde(default)]
    pub device: usize,
}

impl GpuSection {
    fn default_name() -> String {
        "gpu".into()
    }
}
tier_section!(GpuSection);

/// `kind = "disk"`: a slot file on NVMe through io_uring + O_DIRECT.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct DiskSection {
    /// Default `"disk"`.
    #[serde(default = "DiskSection::default_name")]
    pub name: String,
    /// Required.
    pub capacity: ByteSize,
    /// Default false.
    #[serde(default)]
    pub write_through: bool,
    /// Default `demote`.
    #[serde(default)]
    pub on_evict: EvictPolicy,
    /// Directory of the slot file and its index; relative to `data_dir`. Default `"disk"`.
    #[serde(default = "DiskSection::default_name_path")]
    pub path: PathBuf,
    /// I/Os in flight per io_uring thread. Default 32.
    #[serde(default = "DiskSection::default_queue_depth")]
    pub queue_depth: u32,
    /// io_uring threads. Default 1.
    #[serde(default = "DiskSection::default_io_threads")]
    pub io_threads: usize,
    /// O_DIRECT; turn off only where unsupported (tmpfs). Default true.
    #[serde(default = "yes")]
    pub direct_io: bool,
    /// Durable against power loss (RWF_DSYNC + synced index). Default false.
    #[serde(default)]
    pub sync_writes: bool,
}

impl DiskSection {
    fn default_name() -> String {
        "disk".into()
    }
    fn default_name_path() -> PathBuf {
        "disk".into()
    }
    fn default_queue_depth() -> u32 {
        defaults::DISK_QUEUE_DEPTH
    }
    fn default_io_threads() -> usize {
        defaults::DISK_IO_THREADS
    }
}
tier_section!(DiskSection);

/// `kind = "object"`: `local_dir` or an `[tier.s3]` table.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ObjectSection {
    /// Default `"object"`.
    #[serde(default = "ObjectSection::default_name")]
    pub name: String,
    /// Required.
    pub capacity: ByteSize,
    /// Default false.
    #[serde(default)]
    pub write_through: bool,
    /// Default `demote` (the bottom tier drops).
    #[serde(default)]
    pub on_evict: EvictPolicy,
    /// A directory (relative to `data_dir`). Exactly one of `local_dir` and `s3`.
    #[serde(default)]
    pub local_dir: Option<PathBuf>,
    /// An S3 bucket. Exactly one of `local_dir` and `s3`.
    #[serde(default)]
    pub s3: Option<S3Config>,
    /// Key prefix. Default `"tierkv"`.
    #[serde(default = "ObjectSection::default_prefix")]
    pub prefix: String,
    /// Requests in flight. Default 32.
    #[serde(default = "ObjectSection::default_concurrency")]
    pub max_concurrency: usize,
    /// Retries of a failed request (S3). Default 3.
    #[serde(default = "ObjectSection::default_retries")]
    pub max_retries: usize,
    /// Timeout of one request in milliseconds (S3). Default 30000.
    #[serde(default = "ObjectSection::default_timeout_ms")]
    pub request_timeout_ms: u64,
}

impl ObjectSection {
    fn default_name() -> String {
        "object".into()
    }
    fn default_prefix() -> String {
        defaults::OBJECT_PREFIX.into()
    }
    fn default_concurrency() -> usize {
        defaults::OBJECT_MAX_CONCURRENCY
    }
    fn default_retries() -> usize {
        defaults::OBJECT_MAX_RETRIES
    }
    fn default_timeout_ms() -> u64 {
        defaults::OBJECT_REQUEST_TIMEOUT.as_millis() as u64
    }
}
tier_section!(ObjectSection);

/// `kind = "remote"`: a peer's block service (`tierkv serve` or an engine), asked on a
/// local miss. Not indexed locally; never the top tier.
#[derive(Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RemoteSection {
    /// Default `"remote"`.
    #[serde(default = "RemoteSection::default_name")]
    pub name: String,
    /// `host:port` or `http(s)://host:port` of the peer. Required.
    pub addr: String,
    /// Bearer token. Unset: the binaries read `TIERKV_TOKEN`.
    #[serde(default)]
    pub token: Option<String>,
    /// Refuse puts and demotions. Default true.
    #[serde(default = "yes")]
    pub read_only: bool,
    /// Namespaces served through this tier. Default none (engines register theirs).
    #[serde(default)]
    pub namespaces: Vec<String>,
    /// Per call. Default 10000 ms.
    #[serde(default = "RemoteSection::default_timeout_ms")]
    pub timeout_ms: u64,
    /// Retries with backoff. Default 2.
    #[serde(default = "RemoteSection::default_retries")]
    pub retries: u32,
    /// PEM CA certificate for an `https://` peer. Default none.
    #[serde(default)]
    pub tls_ca: Option<PathBuf>,
    /// PEM certificate and key presented to a peer that asks for one (mutual TLS).
    /// Default none.
    #[serde(default)]
    pub tls_cert: Option<PathBuf>,
    /// The private key of `tls_cert`.
    #[serde(default)]
    pub tls_key: Option<PathBuf>,
    /// Also publish every put to the peer (needs `read_only = false`). Default false.
    #[serde(default)]
    pub write_through: bool,
    /// Default `demote`.
    #[serde(default)]
    pub on_evict: EvictPolicy,
}

impl std::fmt::Debug for RemoteSection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteSection")
            .field("name", &self.name)
            .field("addr", &self.addr)
            .field("token", &redacted(&self.token))
            .field("read_only", &self.read_only)
            .field("namespaces", &self.namespaces)
            .field("timeout_ms", &self.timeout_ms)
            .field("retries", &self.retries)
            .field("tls_ca", &self.tls_ca)
            .field("tls_cert", &self.tls_cert)
            .field("tls_key", &self.tls_key)
            .field("write_through", &self.write_through)
            .field("on_evict", &self.on_evict)
            .finish()
    }
}

impl RemoteSection {
    fn default_name() -> String {
        "remote".into()
    }
    fn default_timeout_ms() -> u64 {
        10_000
    }
    fn default_retries() -> u32 {
        2
    }
}

impl TierSection for RemoteSection {
    fn name(&self) -> &str {
        &self.name
    }
    fn capacity(&self) -> ByteSize {
        ByteSize(u64::MAX)
    }
    fn write_through(&self) -> bool {
        self.write_through
    }
    fn on_evict(&self) -> EvictPolicy {
        self.on_evict
    }
}

impl TierConfig {
    /// The section's common knobs.
    pub fn section(&self) -> &dyn TierSection {
        match self {
            TierConfig::Host(s) => s,
            TierConfig::Disk(s) => s,
            TierConfig::Object(s) => s,
            TierConfig::Remote(s) => s,
            TierConfig::Gpu(s) => s,
        }
    }

    /// The `kind` it was written with: `host`, `disk`, `object`, `remote` or `gpu`.
    pub fn kind_name(&self) -> &'static str {
        match self {
            TierConfig::Host(_) => "host",
            TierConfig::Disk(_) => "disk",
            TierConfig::Object(_) => "object",
            TierConfig::Remote(_) => "remote",
            TierConfig::Gpu(_) => "gpu",
        }
    }
}
