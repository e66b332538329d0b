//! The TOML configuration of a [`crate::TieredStore`]: every knob, with its default.
//!
//! ```toml
//! data_dir = "./tierkv-data"   # base of relative tier paths
//! slot_bytes = "2MiB"          # largest block payload
//! promote_on_hit = true        # copy lower-tier hits into the top tier
//! event_buffer = 4096          # events a subscriber may fall behind by
//!
//! [[tier]]
//! kind = "host"
//! capacity = "512MiB"
//!
//! [[tier]]
//! kind = "disk"
//! path = "disk"                # relative to data_dir
//! capacity = "4GiB"
//!
//! [[tier]]
//! kind = "object"
//! local_dir = "object"         # or an [tier.s3] table
//! capacity = "16GiB"
//! ```

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use tierkv_tiers::{DiskTierConfig, HostTierConfig, ObjectBackend, ObjectTierConfig};

use crate::{KvStoreError, Result};

/// A byte count written as an integer or a string with a unit: `"512MiB"`, `"8GiB"`,
/// `"1.5GB"` (KiB/MiB/GiB/TiB are powers of 1024, KB/MB/GB/TB of 1000).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteSize(pub u64);

impl ByteSize {
    pub fn parse(s: &str) -> std::result::Result<ByteSize, String> {
        let s = s.trim();
        let split = s
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(s.len());
        let (num, unit) = s.split_at(split);
        let num: f64 = num
            .parse()
            .map_err(|_| format!("`{s}` is not a size (examples: 4096, \"512MiB\", \"8GiB\")"))?;
        let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
            "" | "b" => 1,
            "k" | "kib" => 1 << 10,
            "m" | "mib" => 1 << 20,
            "g" | "gib" => 1 << 30,
            "t" | "tib" => 1 << 40,
            "kb" => 1_000,
            "mb" => 1_000_000,
            "gb" => 1_000_000_000,
            "tb" => 1_000_000_000_000,
            other => return Err(format!("unknown size unit `{other}` in `{s}`")),
        };
        let bytes = num * mult as f64;
        if !bytes.is_finite() || bytes < 0.0 || bytes > u64::MAX as f64 {
            return Err(format!("size `{s}` is out of range"));
        }
        Ok(ByteSize(bytes as u64))
    }
}

impl std::fmt::Display for ByteSize {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let b = self.0;
        for (unit, size) in [
            ("TiB", 1u64 << 40),
            ("GiB", 1 << 30),
            ("MiB", 1 << 20),
            ("KiB", 1 << 10),
        ] {
            if b >= size && b.is_multiple_of(size) {
                return write!(f, "{}{unit}", b / size);
            }
        }
        write!(f, "{b}")
    }
}

impl std::str::FromStr for ByteSize {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        ByteSize::parse(s)
    }
}

impl Serialize for ByteSize {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Int(u64),
            Str(String),
        }
        match Raw::deserialize(d)? {
            Raw::Int(n) => Ok(ByteSize(n)),
            Raw::Str(s) => ByteSize::parse(&s).map_err(serde::de::Error::custom),
        }
    }
}

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
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct S3Config {
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

fn default_region() -> String {
    "us-east-1".into()
}

fn yes() -> bool {
    true
}

/// One `[[tier]]` section, by `kind`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum TierConfig {
    Host(HostSection),
    Disk(DiskSection),
    Object(ObjectSection),
    Remote(RemoteSection),
}

/// Policy knobs every tier section has.
pub trait TierSection {
    fn name(&self) -> &str;
    fn capacity(&self) -> ByteSize;
    fn write_through(&self) -> bool;
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
}

impl HostSection {
    fn default_name() -> String {
        "host".into()
    }
}
tier_section!(HostSection);

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
        32
    }
    fn default_io_threads() -> usize {
        1
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
        "tierkv".into()
    }
    fn default_concurrency() -> usize {
        32
    }
    fn default_retries() -> usize {
        3
    }
    fn default_timeout_ms() -> u64 {
        30_000
    }
}
tier_section!(ObjectSection);

/// `kind = "remote"`: a peer's block service (`tierkv serve` or an engine), asked on a
/// local miss. Not indexed locally; never the top tier.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
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
    /// Also publish every put to the peer (needs `read_only = false`). Default false.
    #[serde(default)]
    pub write_through: bool,
    /// Default `demote`.
    #[serde(default)]
    pub on_evict: EvictPolicy,
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
    pub fn section(&self) -> &dyn TierSection {
        match self {
            TierConfig::Host(s) => s,
            TierConfig::Disk(s) => s,
            TierConfig::Object(s) => s,
            TierConfig::Remote(s) => s,
        }
    }

    pub fn kind_name(&self) -> &'static str {
        match self {
            TierConfig::Host(_) => "host",
            TierConfig::Disk(_) => "disk",
            TierConfig::Object(_) => "object",
            TierConfig::Remote(_) => "remote",
        }
    }
}

/// The whole store configuration (one TOML file).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// Base directory of relative tier paths. Default `"tierkv-data"`.
    #[serde(default = "StoreConfig::default_data_dir")]
    pub data_dir: PathBuf,
    /// Largest block payload: the slot size of host and disk tiers. Default 2 MiB
    /// (a 16-token block of a 7-8B model; use 16 MiB for Qwen3-32B at 128 tokens, TP 2).
    #[serde(default = "StoreConfig::default_slot_bytes")]
    pub slot_bytes: ByteSize,
    /// Copy a lower-tier hit into the top tier. Default true.
    #[serde(default = "yes")]
    pub promote_on_hit: bool,
    /// Events a subscriber may fall behind by before it sees a gap. Default 4096.
    #[serde(default = "StoreConfig::default_event_buffer")]
    pub event_buffer: usize,
    /// Tiers from the top (fastest) down. Default: host 512 MiB, disk 4 GiB, object
    /// (local directory) 16 GiB.
    #[serde(default = "StoreConfig::default_tiers", rename = "tier")]
    pub tiers: Vec<TierConfig>,
    /// The block service (`tierkv serve`, and every engine's peer service).
    #[serde(default)]
    pub service: crate::service::ServiceConfig,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            data_dir: Self::default_data_dir(),
            slot_bytes: Self::default_slot_bytes(),
            promote_on_hit: true,
            event_buffer: Self::default_event_buffer(),
            tiers: Self::default_tiers(),
            service: Default::default(),
        }
    }
}

impl StoreConfig {
    fn default_data_dir() -> PathBuf {
        "tierkv-data".into()
    }
    fn default_slot_bytes() -> ByteSize {
        ByteSize(2 << 20)
    }
    fn default_event_buffer() -> usize {
        4096
    }
    fn default_tiers() -> Vec<TierConfig> {
        vec![
            TierConfig::Host(HostSection {
                name: "host".into(),
                capacity: ByteSize(512 << 20),
                write_through: false,
                on_evict: EvictPolicy::Demote,
                prefault: true,
            }),
            TierConfig::Disk(DiskSection {
                name: "disk".into(),
                capacity: ByteSize(4 << 30),
                write_through: false,
                on_evict: EvictPolicy::Demote,
                path: "disk".into(),
                queue_depth: 32,
                io_threads: 1,
                direct_io: true,
                sync_writes: false,
            }),
            TierConfig::Object(ObjectSection {
                name: "object".into(),
                capacity: ByteSize(16 << 30),
                write_through: false,
                on_evict: EvictPolicy::Demote,
                local_dir: Some("object".into()),
                s3: None,
                prefix: "tierkv".into(),
                max_concurrency: 32,
                max_retries: 3,
                request_timeout_ms: 30_000,
            }),
        ]
    }

    /// Parses and validates TOML text.
    pub fn from_toml(text: &str) -> Result<StoreConfig> {
        let config: StoreConfig =
            toml::from_str(text).map_err(|e| KvStoreError::Config(e.to_string()))?;
        config.validate()?;
        Ok(config)
    }

    /// Reads, parses and validates a TOML file.
    pub fn from_file(path: &Path) -> Result<StoreConfig> {
        let text = std::fs::read_to_string(path).map_err(|e| KvStoreError::ConfigFile {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        Self::from_toml(&text).map_err(|e| KvStoreError::ConfigFile {
            path: path.to_path_buf(),
            reason: match e {
                KvStoreError::Config(reason) => reason,
                other => other.to_string(),
            },
        })
    }

    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("# cannot render config: {e}\n"))
    }

    /// Checks everything that can be checked without touching a medium.
    pub fn validate(&self) -> Result<()> {
        let err = |m: String| Err(KvStoreError::Config(m));
        if self.tiers.is_empty() {
            return err("at least one [[tier]] is needed".into());
        }
        if self.tiers.len() > 8 {
            return err(format!(
                "{} tiers configured; at most 8 are supported",
                self.tiers.len()
            ));
        }
        if self.slot_bytes.0 == 0 || self.slot_bytes.0 > 1 << 32 {
            return err(format!(
                "slot_bytes = {} must be in 1..=4GiB",
                self.slot_bytes
            ));
        }
        if self.event_buffer == 0 {
            return err("event_buffer must be > 0".into());
        }
        self.service.validate().map_err(KvStoreError::Config)?;
        let mut names = std::collections::HashSet::new();
        for (i, tier) in self.tiers.iter().enumerate() {
            let s = tier.section();
            if !names.insert(s.name().to_string()) {
                return err(format!(
                    "two tiers are named `{}`; names must be unique",
                    s.name()
                ));
            }
            if s.capacity().0 < self.slot_bytes.0 {
                return err(format!(
                    "tier `{}`: capacity {} holds no block of slot_bytes = {}",
                    s.name(),
                    s.capacity(),
                    self.slot_bytes
                ));
            }
            if i == 0 && matches!(tier, TierConfig::Remote(_)) {
                return err(format!(
                    "tier `{}`: a remote tier cannot be the top tier; put a host tier above it",
                    s.name()
                ));
            }
            if let TierConfig::Remote(r) = tier
                && r.write_through
                && r.read_only
            {
                return err(format!(
                    "tier `{}`: write_through needs read_only = false",
                    r.name
                ));
            }
            if i == 0 && s.write_through() {
                return err(format!(
                    "tier `{}` is the top tier, where every put lands; write_through applies to lower tiers",
                    s.name()
                ));
            }
            match tier {
                TierConfig::Disk(d) if d.queue_depth == 0 || d.queue_depth > 4096 => {
                    return err(format!(
                        "tier `{}`: queue_depth must be in 1..=4096",
                        d.name
                    ));
                }
                TierConfig::Disk(d) if d.io_threads == 0 => {
                    return err(format!("tier `{}`: io_threads must be > 0", d.name));
                }
                TierConfig::Object(o) => match (&o.local_dir, &o.s3) {
                    (Some(_), Some(_)) | (None, None) => {
                        return err(format!(
                            "tier `{}`: set exactly one of local_dir and [tier.s3]",
                            o.name
                        ));
                    }
                    _ if o.max_concurrency == 0 => {
                        return err(format!("tier `{}`: max_concurrency must be > 0", o.name));
                    }
                    _ => {}
                },
                _ => {}
            }
        }
        Ok(())
    }

    fn resolve(&self, p: &Path) -> PathBuf {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.data_dir.join(p)
        }
    }

    pub fn host_config(&self, s: &HostSection) -> HostTierConfig {
        HostTierConfig {
            name: s.name.clone(),
            capacity_bytes: s.capacity.0,
            slot_bytes: self.slot_bytes.0 as usize,
            prefault: s.prefault,
        }
    }

    pub fn disk_config(&self, s: &DiskSection) -> DiskTierConfig {
        DiskTierConfig {
            name: s.name.clone(),
            path: self.resolve(&s.path),
            capacity_bytes: s.capacity.0,
            slot_bytes: self.slot_bytes.0 as usize,
            queue_depth: s.queue_depth,
            io_threads: s.io_threads,
            direct_io: s.direct_io,
            sync_writes: s.sync_writes,
        }
    }

    pub fn remote_config(&self, s: &RemoteSection) -> crate::RemoteTierConfig {
        let mut client = crate::service::BlockClientConfig::new(s.addr.clone());
        client.token = s.token.clone();
        client.timeout = Duration::from_millis(s.timeout_ms);
        client.retries = s.retries;
        client.tls_ca = s.tls_ca.clone();
        crate::RemoteTierConfig {
            name: s.name.clone(),
            client,
            read_only: s.read_only,
            namespaces: s.namespaces.clone(),
            slot_bytes: self.slot_bytes.0 as usize,
        }
    }

    pub fn object_config(&self, s: &ObjectSection) -> ObjectTierConfig {
        let backend = match (&s.s3, &s.local_dir) {
            (Some(s3), _) => ObjectBackend::S3 {
                bucket: s3.bucket.clone(),
                region: s3.region.clone(),
                endpoint: s3.endpoint.clone(),
                access_key_id: s3.access_key_id.clone(),
                secret_access_key: s3.secret_access_key.clone(),
                allow_http: s3.allow_http,
                virtual_hosted_style: s3.virtual_hosted_style,
            },
            (None, dir) => {
                ObjectBackend::LocalDir(self.resolve(dir.as_deref().unwrap_or(Path::new("object"))))
            }
        };
        ObjectTierConfig {
            name: s.name.clone(),
            backend,
            prefix: s.prefix.clone(),
            capacity_bytes: s.capacity.0,
            slot_bytes: self.slot_bytes.0 as usize,
            max_concurrency: s.max_concurrency,
            max_retries: s.max_retries,
            request_timeout: Duration::from_millis(s.request_timeout_ms),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_units() {
        assert_eq!(ByteSize::parse("4096"), Ok(ByteSize(4096)));
        assert_eq!(ByteSize::parse("512MiB"), Ok(ByteSize(512 << 20)));
        assert_eq!(ByteSize::parse("1.5GB"), Ok(ByteSize(1_500_000_000)));
        assert_eq!(ByteSize::parse(" 2 gib "), Ok(ByteSize(2 << 30)));
        assert!(ByteSize::parse("12 parsecs").is_err());
        assert!(ByteSize::parse("lots").is_err());
        assert_eq!(ByteSize(16 << 20).to_string(), "16MiB");
    }

    #[test]
    fn default_config_round_trips_through_toml() {
        let config = StoreConfig::default();
        config.validate().unwrap();
        let text = config.to_toml();
        assert_eq!(StoreConfig::from_toml(&text).unwrap(), config);
        // An empty file is the default.
        assert_eq!(StoreConfig::from_toml("").unwrap(), config);
    }

    #[test]
    fn the_shipped_example_is_the_default() {
        let example = include_str!("../../deploy/tierkv.example.toml");
        assert_eq!(
            StoreConfig::from_toml(example).unwrap(),
            StoreConfig::default()
        );
    }

    #[test]
    fn full_example_parses() {
        let c = StoreConfig::from_toml(
            r#"
            data_dir = "/var/lib/tierkv"
            slot_bytes = "16MiB"
            promote_on_hit = false
            [[tier]]
            kind = "host"
            capacity = "64GiB"
            on_evict = "demote"
            [[tier]]
            kind = "disk"
            path = "/nvme0/tierkv"
            capacity = "1TiB"
            queue_depth = 128
            write_through = true
            [[tier]]
            kind = "object"
            name = "s3"
            capacity = "10TiB"
            [tier.s3]
            bucket = "kv"
            endpoint = "http://127.0.0.1:9000"
            allow_http = true
            "#,
        )
        .unwrap();
        assert_eq!(c.tiers.len(), 3);
        let TierConfig::Disk(d) = &c.tiers[1] else {
            panic!("disk")
        };
        assert!(d.write_through);
        assert_eq!(c.disk_config(d).path, PathBuf::from("/nvme0/tierkv"));
        assert_eq!(c.tiers[2].section().name(), "s3");
    }

    #[test]
    fn bad_configs_get_clear_errors() {
        let cases = [
            (
                "[[tier]]\nkind = \"host\"\ncapacity = \"1GiB\"\ncolour = \"red\"",
                "colour",
            ),
            ("frobnicate = 1", "frobnicate"),
            ("[[tier]]\nkind = \"tape\"\ncapacity = 1", "tape"),
            (
                "[[tier]]\nkind = \"host\"\ncapacity = \"1KiB\"",
                "holds no block",
            ),
            (
                "[[tier]]\nkind = \"host\"\ncapacity = \"1 furlong\"",
                "furlong",
            ),
            ("[[tier]]\nkind = \"host\"", "capacity"),
            ("tier = []", "at least one"),
            (
                "[[tier]]\nkind = \"host\"\ncapacity = \"1GiB\"\n[[tier]]\nkind = \"host\"\ncapacity = \"1GiB\"",
                "unique",
            ),
            (
                "[[tier]]\nkind = \"object\"\ncapacity = \"1GiB\"",
                "exactly one of local_dir",
            ),
            (
                "[[tier]]\nkind = \"host\"\ncapacity = \"1GiB\"\nwrite_through = true",
                "top tier",
            ),
            (
                "[[tier]]\nkind = \"disk\"\ncapacity = \"1GiB\"\nqueue_depth = 0",
                "queue_depth",
            ),
        ];
        for (text, needle) in cases {
            let err = StoreConfig::from_toml(text).expect_err(text).to_string();
            assert!(
                err.contains(needle),
                "`{text}` gave `{err}`, expected `{needle}`"
            );
        }
    }
}
