//! The TOML configuration of a [`crate::TieredStore`]: every knob, with its default.
//!
//! ```toml
//! data_dir = "./tierkv-data"   # base of relative tier paths
//! slot_bytes = "2MiB"          # largest block payload
//! promote_on_hit = true        # copy lower-tier hits into the top tier (background)
//! promote_queue = 64           # promotions waiting; more hits are not promoted
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

mod open;
mod size;
mod tiers;

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tierkv_tiers::{DiskTierConfig, HostTierConfig, ObjectBackend, ObjectTierConfig, defaults};

pub use size::ByteSize;
use tiers::yes;
pub use tiers::{
    DiskSection, EvictPolicy, GpuSection, HostSection, ObjectSection, RemoteSection, S3Config,
    TierConfig, TierSection,
};

use crate::{KvStoreError, Result};

/// The whole store configuration (one TOML file).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// Base directory of relative tier paths. Default `"tierkv-data"`.
    #[serde(default = "StoreConfig::default_data_dir")]
    pub data_dir: PathBuf,
    /// Largest block payload: the slot size of host and disk tiers. Default 2 MiB
    /// (a 16-token block of a 7-8B model; use 16 MiB for Qwen3-32B at 128 tokens, TP 2).
    #[serde(default = "StoreConfig::default_slot_bytes")]
    pub slot_bytes: ByteSize,
    /// Copy a lower-tier hit into the top tier, in the background (never on the
    /// reader's path). Default true.
    #[serde(default = "yes")]
    pub promote_on_hit: bool,
    /// Promotions queued for the background promoter; hits beyond it are not
    /// promoted (counted as `promotions_skipped`). Default 64.
    #[serde(default = "StoreConfig::default_promote_queue")]
    pub promote_queue: usize,
    /// Events a subscriber may fall behind by before it sees a gap. Default 4096.
    #[serde(default = "StoreConfig::default_event_buffer")]
    pub event_buffer: usize,
    /// Tenant protection: the share of a full tier that a namespace keeps when others
    /// need room, while some namespace holds more. 0 turns it off. Default 0.125.
    #[serde(default = "StoreConfig::default_namespace_min_share")]
    pub namespace_min_share: f64,
    /// Tenant cap: past this share of a full tier, a namespace makes room from its own
    /// blocks. 1 turns it off. Default 1.
    #[serde(default = "StoreConfig::default_namespace_max_share")]
    pub namespace_max_share: f64,
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
            promote_queue: Self::default_promote_queue(),
            event_buffer: Self::default_event_buffer(),
            namespace_min_share: Self::default_namespace_min_share(),
            namespace_max_share: Self::default_namespace_max_share(),
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
        ByteSize(defaults::SLOT_BYTES as u64)
    }
    fn default_event_buffer() -> usize {
        crate::StoreOptions::default().event_buffer
    }
    fn default_promote_queue() -> usize {
        crate::StoreOptions::default().promote_queue
    }
    fn default_namespace_min_share() -> f64 {
        crate::StoreOptions::default().namespace_min_share
    }
    fn default_namespace_max_share() -> f64 {
        crate::StoreOptions::default().namespace_max_share
    }

    /// The store options this configuration stands for.
    pub fn store_options(&self) -> crate::StoreOptions {
        crate::StoreOptions {
            promote_on_hit: self.promote_on_hit,
            event_buffer: self.event_buffer,
            promote_queue: self.promote_queue,
            namespace_min_share: self.namespace_min_share,
            namespace_max_share: self.namespace_max_share,
        }
    }
    fn default_tiers() -> Vec<TierConfig> {
        vec![
            TierConfig::Host(HostSection {
                name: "host".into(),
                capacity: ByteSize(defaults::HOST_CAPACITY),
                write_through: false,
                on_evict: EvictPolicy::Demote,
                prefault: defaults::HOST_PREFAULT,
                shared: false,
            }),
            TierConfig::Disk(DiskSection {
                name: "disk".into(),
                capacity: ByteSize(defaults::DISK_CAPACITY),
                write_through: false,
                on_evict: EvictPolicy::Demote,
                path: "disk".into(),
                queue_depth: defaults::DISK_QUEUE_DEPTH,
                io_threads: defaults::DISK_IO_THREADS,
                direct_io: defaults::DISK_DIRECT_IO,
                sync_writes: defaults::DISK_SYNC_WRITES,
            }),
            TierConfig::Object(ObjectSection {
                name: "object".into(),
                capacity: ByteSize(defaults::OBJECT_CAPACITY),
                write_through: false,
                on_evict: EvictPolicy::Demote,
                local_dir: Some("object".into()),
                s3: None,
                prefix: defaults::OBJECT_PREFIX.into(),
                max_concurrency: defaults::OBJECT_MAX_CONCURRENCY,
                max_retries: defaults::OBJECT_MAX_RETRIES,
                request_timeout_ms: defaults::OBJECT_REQUEST_TIMEOUT.as_millis() as u64,
            }),
        ]
    }

    /// Fills secrets the file left out from `lookup` (the binaries pass their
    /// environment): S3 `access_key_id` / `secret_access_key` from `AWS_ACCESS_KEY_ID` /
    /// `AWS_SECRET_ACCESS_KEY`, a remote tier's `token` from `TIERKV_TOKEN`. The library
    /// itself never reads the environment.
    pub fn fill_secrets(&mut self, lookup: impl Fn(&str) -> Option<String>) {
        for tier in &mut self.tiers {
            match tier {
                TierConfig::Object(o) => {
                    if let Some(s3) = &mut o.s3 {
                        if s3.access_key_id.is_none() {
                            s3.access_key_id = lookup("AWS_ACCESS_KEY_ID");
                        }
                        if s3.secret_access_key.is_none() {
                            s3.secret_access_key = lookup("AWS_SECRET_ACCESS_KEY");
                        }
                    }
                }
                TierConfig::Remote(r) if r.token.is_none() => {
                    r.token = lookup("TIERKV_TOKEN");
                }
                _ => {}
            }
        }
    }

    /// Parses and validates TOML text.
    pub fn from_toml(text: &str) -> Result<StoreConfig> {
        let config: StoreConfig = toml::from_str(text)?;
        config.validate()?;
        Ok(config)
    }

    /// Reads, parses and validates a TOML file.
    pub fn from_file(path: &Path) -> Result<StoreConfig> {
        let text = std::fs::read_to_string(path).map_err(|e| KvStoreError::ConfigFile {
            path: path.to_path_buf(),
            source: Box::new(e),
        })?;
        Self::from_toml(&text).map_err(|e| KvStoreError::ConfigFile {
            path: path.to_path_buf(),
            source: match e {
                KvStoreError::Toml(e) => Box::new(e),
                other => Box::new(other),
            },
        })
    }

    /// A copy with every secret (S3 keys, a remote tier's token, the block service's
    /// bearer tokens) replaced by `REDACTED`: what may be printed or logged.
    pub fn redacted(&self) -> StoreConfig {
        let mut c = self.clone();
        let hide = |s: &mut Option<String>| {
            if s.is_some() {
                *s = Some(REDACTED.to_string());
            }
        };
        for tier in &mut c.tiers {
            match tier {
                TierConfig::Object(o) => {
                    if let Some(s3) = &mut o.s3 {
                        hide(&mut s3.access_key_id);
                        hide(&mut s3.secret_access_key);
                    }
                }
                TierConfig::Remote(r) => hide(&mut r.token),
                _ => {}
            }
        }
        for t in &mut c.service.tokens {
            t.token = REDACTED.to_string();
        }
        c
    }

    /// The configuration as TOML (secrets included: print [`StoreConfig::redacted`]).
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
        if self.promote_queue == 0 {
            return err("promote_queue must be > 0".into());
        }
        if self.event_buffer == 0 {
            return err("event_buffer must be > 0".into());
        }
        self.store_options().shares()?;
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

    /// The [`HostTierConfig`] of a `host` section.
    pub fn host_config(&self, s: &HostSection) -> HostTierConfig {
        HostTierConfig {
            name: s.name.clone(),
            capacity_bytes: s.capacity.0,
            slot_bytes: self.slot_bytes.0 as usize,
            prefault: s.prefault,
            shared: s.shared,
            ..HostTierConfig::default()
        }
    }

    /// How many blocks a `gpu` section's tier holds: its slots are `slot_bytes` rounded
    /// up to 256 bytes (what `GpuTierConfig::capacity_blocks` says, without CUDA).
    pub fn gpu_capacity_blocks(&self, s: &GpuSection) -> u64 {
        s.capacity.0 / self.slot_bytes.0.div_ceil(256).max(1) / 256
    }

    /// The `GpuTierConfig` of a `gpu` section.
    #[cfg(feature = "cuda")]
    pub fn gpu_config(&self, s: &GpuSection) -> tierkv_tiers::GpuTierConfig {
        tierkv_tiers::GpuTierConfig {
            name: s.name.clone(),
            capacity_bytes: s.capacity.0,
            slot_bytes: self.slot_bytes.0 as usize,
            device: s.device,
        }
    }

    /// The [`DiskTierConfig`] of a `disk` section (its path under `data_dir`).
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

    /// The [`crate::RemoteTierConfig`] of a `remote` section.
    pub fn remote_config(&self, s: &RemoteSection) -> crate::RemoteTierConfig {
        let mut client = crate::service::BlockClientConfig::new(s.addr.clone());
        client.token = s.token.clone();
        client.timeout = Duration::from_millis(s.timeout_ms);
        client.retries = s.retries;
        client.tls_ca = s.tls_ca.clone();
        client.tls_cert = s.tls_cert.clone();
        client.tls_key = s.tls_key.clone();
        crate::RemoteTierConfig {
            name: s.name.clone(),
            client,
            read_only: s.read_only,
            namespaces: s.namespaces.clone(),
            slot_bytes: self.slot_bytes.0 as usize,
        }
    }

    /// The [`ObjectTierConfig`] of an `object` section (a `local_dir` under `data_dir`).
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

/// What [`StoreConfig::redacted`] puts in place of a secret.
pub(crate) const REDACTED: &str = "<redacted>";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_config_file_error_keeps_its_cause_as_the_source() {
        use std::error::Error as _;
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("none.toml");
        let e = StoreConfig::from_file(&missing).unwrap_err();
        let io = e.source().and_then(|s| s.downcast_ref::<std::io::Error>());
        assert_eq!(
            io.map(|e| e.kind()),
            Some(std::io::ErrorKind::NotFound),
            "{e}"
        );
        assert!(e.to_string().contains("none.toml"), "{e}");

        let bad = dir.path().join("bad.toml");
        std::fs::write(&bad, "[[tier]]\nkind = 3\n").unwrap();
        let e = StoreConfig::from_file(&bad).unwrap_err();
        let toml = e.source().and_then(|s| s.downcast_ref::<toml::de::Error>());
        assert!(toml.is_some(), "the TOML error is the source: {e:?}");
        assert!(
            e.to_string().contains("line 2"),
            "the message names the line: {e}"
        );
    }

    #[test]
    fn an_unreachable_peer_keeps_the_client_error_as_the_source() {
        use std::error::Error as _;
        let config = crate::service::BlockClientConfig::new("http://[not an address");
        let e = crate::service::BlockClient::new(config).unwrap_err();
        assert!(matches!(e, KvStoreError::Connect { .. }), "{e:?}");
        assert!(e.source().is_some(), "the transport error is kept: {e:?}");
    }

    #[test]
    fn a_gpu_section_parses_and_a_build_without_cuda_refuses_to_open_it() {
        let text = r#"
            slot_bytes = "1000B"
            [[tier]]
            kind = "gpu"
            capacity = "1MiB"
            [[tier]]
            kind = "host"
            capacity = "64MiB"
        "#;
        let c = StoreConfig::from_toml(text).unwrap();
        let TierConfig::Gpu(g) = &c.tiers[0] else {
            panic!("{:?}", c.tiers[0]);
        };
        assert_eq!(
            (g.name.as_str(), g.device, g.write_through),
            ("gpu", 0, false)
        );
        assert_eq!(c.tiers[0].kind_name(), "gpu");
        // Slots of 1000 bytes take 1024 (256-byte aligned): 1 MiB holds 1024 of them.
        assert_eq!(c.gpu_capacity_blocks(g), 1024);
        assert!(StoreConfig::from_toml(&text.replace("\"1MiB\"", "\"512B\"")).is_err());
        #[cfg(not(feature = "cuda"))]
        {
            let rt = tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap();
            let e = rt.block_on(crate::TieredStore::open(&c)).unwrap_err();
            let msg = e.to_string();
            assert!(msg.contains("`gpu`") && msg.contains("cuda"), "{msg}");
        }
    }

    #[test]
    fn redacted_hides_every_secret_and_keeps_the_rest() {
        let text = r#"
            [[tier]]
            kind = "host"
            capacity = "64MiB"
            [[tier]]
            kind = "object"
            capacity = "1GiB"
            [tier.s3]
            bucket = "b"
            access_key_id = "AKIAEXAMPLE"
            secret_access_key = "very-secret-key"
            [[service.token]]
            token = "bearer-secret-1"
            namespaces = ["*"]
        "#;
        let c = StoreConfig::from_toml(text).unwrap();
        let shown = c.redacted().to_toml();
        for secret in ["AKIAEXAMPLE", "very-secret-key", "bearer-secret-1"] {
            assert!(!shown.contains(secret), "{secret} printed:\n{shown}");
        }
        assert!(shown.contains(REDACTED) && shown.contains("bucket = \"b\""));
        // The original is untouched.
        assert!(c.to_toml().contains("very-secret-key"));
    }

    #[test]
    fn debug_of_a_config_never_shows_its_secrets() {
        let text = r#"
            [[tier]]
            kind = "host"
            capacity = "64MiB"
            [[tier]]
            kind = "object"
            capacity = "1GiB"
            [tier.s3]
            bucket = "b"
            secret_access_key = "very-secret-key"
            [[tier]]
            kind = "remote"
            addr = "127.0.0.1:7070"
            token = "remote-bearer-secret"
            [[service.token]]
            token = "bearer-secret-1"
            namespaces = ["*"]
        "#;
        let c = StoreConfig::from_toml(text).unwrap();
        let mut shown = format!("{c:?}");
        for tier in &c.tiers {
            match tier {
                TierConfig::Object(s) => {
                    shown += &format!("{:?}", c.object_config(s));
                }
                TierConfig::Remote(s) => shown += &format!("{:?}", c.remote_config(s)),
                _ => {}
            }
        }
        for secret in ["very-secret-key", "remote-bearer-secret", "bearer-secret-1"] {
            assert!(!shown.contains(secret), "{secret} in Debug:\n{shown}");
        }
        assert!(shown.contains("<redacted>") && shown.contains("127.0.0.1:7070"));
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
    fn an_empty_file_gives_the_tier_configs_own_defaults() {
        let c = StoreConfig::from_toml("").unwrap();
        assert_eq!(c, StoreConfig::default());
        let [
            TierConfig::Host(h),
            TierConfig::Disk(d),
            TierConfig::Object(o),
        ] = &c.tiers[..]
        else {
            panic!("default tiers: {:?}", c.tiers);
        };
        let (host, want) = (c.host_config(h), HostTierConfig::default());
        assert_eq!(
            (host.capacity_bytes, host.slot_bytes, host.prefault),
            (want.capacity_bytes, want.slot_bytes, want.prefault)
        );
        let (disk, want) = (c.disk_config(d), DiskTierConfig::default());
        assert_eq!(
            (
                disk.capacity_bytes,
                disk.slot_bytes,
                disk.queue_depth,
                disk.io_threads,
                disk.direct_io,
                disk.sync_writes
            ),
            (
                want.capacity_bytes,
                want.slot_bytes,
                want.queue_depth,
                want.io_threads,
                want.direct_io,
                want.sync_writes
            )
        );
        let (object, want) = (c.object_config(o), ObjectTierConfig::default());
        assert_eq!(
            (
                object.capacity_bytes,
                object.slot_bytes,
                object.prefix,
                object.max_concurrency,
                object.max_retries,
                object.request_timeout
            ),
            (
                want.capacity_bytes,
                want.slot_bytes,
                want.prefix,
                want.max_concurrency,
                want.max_retries,
                want.request_timeout
            )
        );
        let options = crate::StoreOptions::default();
        assert_eq!(
            (c.promote_on_hit, c.event_buffer, c.promote_queue),
            (
                options.promote_on_hit,
                options.event_buffer,
                options.promote_queue
            )
        );
        assert_eq!(
            (c.namespace_min_share, c.namespace_max_share),
            (options.namespace_min_share, options.namespace_max_share)
        );
    }

    #[test]
    fn the_shipped_example_is_the_default() {
        let example = include_str!("../../../deploy/tierkv.example.toml");
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
