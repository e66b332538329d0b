use std::sync::Arc;

use crate::{KvLayout, Result};

/// A secret shared by the workers of one cluster that keys the digests of salted
/// namespaces (HMAC-SHA256). Without it, a salt's digest in a namespace name lets
/// anyone who sees the name (a watcher of events) test guesses of the salt offline;
/// with it, nobody without the key can link a name to a salt, and the hash chain of a
/// salted namespace is seeded by the salt itself either way, so a name alone never
/// gives the block hashes of a guessed prompt.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct NamespaceKey(Arc<[u8]>);

impl NamespaceKey {
    /// A key of at least 16 bytes.
    pub fn new(secret: &[u8]) -> Result<NamespaceKey> {
        if secret.len() < 16 {
            return Err(crate::KvStoreError::Config(format!(
                "a namespace key needs at least 16 bytes, got {}",
                secret.len()
            )));
        }
        Ok(NamespaceKey(Arc::from(secret)))
    }

    fn mac(&self, parts: &[&[u8]]) -> [u8; 32] {
        use aws_lc_rs::hmac;
        let key = hmac::Key::new(hmac::HMAC_SHA256, &self.0);
        let mut ctx = hmac::Context::with_key(&key);
        for p in parts {
            ctx.update(&(p.len() as u64).to_le_bytes());
            ctx.update(p);
        }
        let mut out = [0u8; 32];
        out.copy_from_slice(ctx.sign().as_ref());
        out
    }
}

impl std::fmt::Debug for NamespaceKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NamespaceKey(<redacted>)")
    }
}

/// The 64-bit digest of a namespace name: the namespace part of a [`crate::BlockKey`].
/// The block service maps the namespace strings on the wire through this.
pub fn namespace_id(name: &str) -> u64 {
    xxhash_rust::xxh3::xxh3_64(name.as_bytes())
}

/// What makes two KV payloads incompatible or private: the model, the KV layout, the
/// tensor-parallel rank and an optional per-tenant cache salt. It seeds the hash chain
/// (so equal tokens under different namespaces never share blocks) and scopes access in
/// the block service.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Namespace {
    model_id: String,
    layout: KvLayout,
    tp_rank: u32,
    tp_size: u32,
    cache_salt: Option<String>,
    /// For an outside engine: its attention backend and in-block packing (e.g.
    /// `CPU_ATTN/vec`), since its block bytes are opaque to tierkv.
    engine_layout: Option<String>,
    /// Keys the salt's digest and the chain seed of salted namespaces.
    key: Option<NamespaceKey>,
    name: String,
    id: u64,
    seed: u128,
}

impl Namespace {
    /// A namespace for `model_id` with `layout` on rank 0 of 1, without salt.
    pub fn new(model_id: impl Into<String>, layout: KvLayout) -> Result<Namespace> {
        Self::with_parts(model_id, layout, 0, 1, None)
    }

    /// The namespace of one tensor-parallel rank of `model_id`, salted per tenant by
    /// `cache_salt` (vLLM's `cache_salt`). Fails on an invalid layout or rank.
    pub fn with_parts(
        model_id: impl Into<String>,
        layout: KvLayout,
        tp_rank: u32,
        tp_size: u32,
        cache_salt: Option<String>,
    ) -> Result<Namespace> {
        Self::build(
            model_id.into(),
            layout,
            tp_rank,
            tp_size,
            None,
            cache_salt,
            None,
        )
    }

    fn build(
        model_id: String,
        layout: KvLayout,
        tp_rank: u32,
        tp_size: u32,
        engine_layout: Option<String>,
        cache_salt: Option<String>,
        key: Option<NamespaceKey>,
    ) -> Result<Namespace> {
        layout.validate()?;
        if tp_size == 0 || tp_rank >= tp_size {
            return Err(crate::KvStoreError::Layout(format!(
                "tensor-parallel rank {tp_rank} of {tp_size}"
            )));
        }
        let mut name = format!("{model_id}@{layout}@tp{tp_rank}of{tp_size}");
        if let Some(engine) = &engine_layout {
            if engine.is_empty() || engine.contains('@') {
                return Err(crate::KvStoreError::Layout(format!(
                    "engine layout {engine:?} must be non-empty and without '@'"
                )));
            }
            name.push('@');
            name.push_str(engine);
        }
        let seed = match &cache_salt {
            None => xxhash_rust::xxh3::xxh3_128(name.as_bytes()),
            Some(salt) => {
                // The salt itself stays private: only a digest of it (keyed, when the
                // cluster has a key) appears in the name, and the chain is seeded by
                // the salt, not by the name.
                let (tag, seed) = match &key {
                    Some(k) => {
                        let tag = k.mac(&[b"tierkv-salt-tag", salt.as_bytes()]);
                        let seed = k.mac(&[b"tierkv-salt-seed", name.as_bytes(), salt.as_bytes()]);
                        (
                            u64::from_le_bytes(tag[..8].try_into().unwrap_or_default()),
                            u128::from_le_bytes(seed[..16].try_into().unwrap_or_default()),
                        )
                    }
                    None => {
                        let mut seeded = name.clone().into_bytes();
                        seeded.push(0);
                        seeded.extend_from_slice(salt.as_bytes());
                        (
                            xxhash_rust::xxh3::xxh3_64(salt.as_bytes()),
                            xxhash_rust::xxh3::xxh3_128(&seeded),
                        )
                    }
                };
                name.push_str(&format!("@salt{tag:016x}"));
                seed
            }
        };
        let id = namespace_id(&name);
        Ok(Namespace {
            model_id,
            layout,
            tp_rank,
            tp_size,
            cache_salt,
            engine_layout,
            key,
            name,
            id,
            seed,
        })
    }

    /// The same namespace with the cluster's [`NamespaceKey`], which keys every salted
    /// namespace derived from it (see [`Namespace::salted`]).
    pub fn with_key(&self, key: NamespaceKey) -> Result<Namespace> {
        Self::build(
            self.model_id.clone(),
            self.layout,
            self.tp_rank,
            self.tp_size,
            self.engine_layout.clone(),
            self.cache_salt.clone(),
            Some(key),
        )
    }

    /// The namespace whose canonical [`Namespace::name`] is `name`, as an outside
    /// engine reports it (`model@L..xB..@tpRofS[@engine-layout]`). A salted name is
    /// refused: its salt is only a digest there; salt the parsed namespace instead.
    pub fn from_name(name: &str) -> Result<Namespace> {
        let bad = |why: &str| crate::KvStoreError::Layout(format!("namespace {name:?}: {why}"));
        let parts: Vec<&str> = name.split('@').collect();
        // The model id may itself hold '@': the layout is the first part that parses
        // as one and is followed by the rank.
        let at = (1..parts.len().saturating_sub(1))
            .find(|&i| parts[i].parse::<KvLayout>().is_ok() && parts[i + 1].starts_with("tp"))
            .ok_or_else(|| bad("no KV layout and rank in it"))?;
        let layout: KvLayout = parts[at].parse()?;
        let (rank, size) = parts[at + 1]
            .strip_prefix("tp")
            .and_then(|r| r.split_once("of"))
            .and_then(|(r, s)| Some((r.parse().ok()?, s.parse().ok()?)))
            .ok_or_else(|| bad("its rank is not tpRofS"))?;
        let rest = &parts[at + 2..];
        if rest.iter().any(|p| p.starts_with("salt")) {
            return Err(bad("salted names cannot be parsed back"));
        }
        let engine_layout = match rest {
            [] => None,
            [engine] => Some(engine.to_string()),
            _ => return Err(bad("too many parts")),
        };
        let ns = Self::build(
            parts[..at].join("@"),
            layout,
            rank,
            size,
            engine_layout,
            None,
            None,
        )?;
        if ns.name != name {
            return Err(bad("not in canonical form"));
        }
        Ok(ns)
    }

    /// The same namespace with a tenant salt.
    pub fn salted(&self, salt: impl Into<String>) -> Result<Namespace> {
        Self::build(
            self.model_id.clone(),
            self.layout,
            self.tp_rank,
            self.tp_size,
            self.engine_layout.clone(),
            Some(salt.into()),
            self.key.clone(),
        )
    }

    /// The same namespace for an outside engine whose blocks are packed as
    /// `engine_layout` says (attention backend and in-block packing, e.g. `CPU_ATTN/vec`):
    /// two packings never share a block.
    pub fn with_engine_layout(&self, engine_layout: impl Into<String>) -> Result<Namespace> {
        Self::build(
            self.model_id.clone(),
            self.layout,
            self.tp_rank,
            self.tp_size,
            Some(engine_layout.into()),
            self.cache_salt.clone(),
            self.key.clone(),
        )
    }

    /// The outside engine's block packing, if any.
    pub fn engine_layout(&self) -> Option<&str> {
        self.engine_layout.as_deref()
    }

    /// The model's id, as given.
    pub fn model_id(&self) -> &str {
        &self.model_id
    }
    /// The KV layout of one block.
    pub fn layout(&self) -> &KvLayout {
        &self.layout
    }
    /// This rank, in `0..tp_size`.
    pub fn tp_rank(&self) -> u32 {
        self.tp_rank
    }
    /// The tensor-parallel size.
    pub fn tp_size(&self) -> u32 {
        self.tp_size
    }
    /// Canonical printable name, e.g. `smollm2-135m@L30xH3xD64xf16xB16@tp0of1`.
    pub fn name(&self) -> &str {
        &self.name
    }
    /// 64-bit digest of the name: the namespace part of every [`crate::BlockKey`].
    pub fn id(&self) -> u64 {
        self.id
    }
    /// Seed of the hash chain.
    pub fn seed(&self) -> u128 {
        self.seed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::DType;

    #[test]
    fn every_part_changes_the_identity() {
        let l = KvLayout::new(30, 3, 64, DType::F16, 16).unwrap();
        let base = Namespace::new("m", l).unwrap();
        let others = [
            Namespace::new("m2", l).unwrap(),
            Namespace::new(
                "m",
                KvLayout {
                    block_size: 32,
                    ..l
                },
            )
            .unwrap(),
            Namespace::with_parts("m", l, 1, 2, None).unwrap(),
            base.salted("tenant-a").unwrap(),
            base.with_engine_layout("CPU_ATTN/vec").unwrap(),
            base.with_engine_layout("CPU_ATTN/amx").unwrap(),
        ];
        for o in &others {
            assert_ne!(o.id(), base.id(), "{}", o.name());
            assert_ne!(o.seed(), base.seed());
        }
        assert!(!others[3].name().contains("tenant-a"), "salt is not leaked");
        assert_ne!(others[4].id(), others[5].id(), "packings never share");
        let salted = others[4].salted("t").unwrap();
        assert_eq!(salted.engine_layout(), Some("CPU_ATTN/vec"));
        assert!(base.with_engine_layout("a@b").is_err());
        assert!(Namespace::with_parts("m", l, 2, 2, None).is_err());
    }

    #[test]
    fn a_salted_name_does_not_give_its_salt_or_its_chain_without_the_key() {
        let l = KvLayout::new(30, 3, 64, DType::F16, 16).unwrap();
        let base = Namespace::new("m", l).unwrap();
        let key = NamespaceKey::new(b"0123456789abcdef-cluster").unwrap();
        let keyed = base.with_key(key.clone()).unwrap();
        assert_eq!(keyed.id(), base.id(), "unsalted namespaces do not change");
        let (plain, secret) = (
            base.salted("tenant-42").unwrap(),
            keyed.salted("tenant-42").unwrap(),
        );
        // Unkeyed, the tag is a plain digest of the salt: a guess can be checked
        // offline. Keyed, it is not.
        let tag = format!("@salt{:016x}", xxhash_rust::xxh3::xxh3_64(b"tenant-42"));
        assert!(plain.name().ends_with(&tag));
        assert!(!secret.name().ends_with(&tag));
        assert_ne!(secret.id(), plain.id());
        // Either way the chain is not seeded by the (public) name alone.
        for ns in [&plain, &secret] {
            assert_ne!(ns.seed(), xxhash_rust::xxh3::xxh3_128(ns.name().as_bytes()));
        }
        // Every worker with the key derives the same namespace.
        let again = Namespace::new("m", l)
            .unwrap()
            .with_key(NamespaceKey::new(b"0123456789abcdef-cluster").unwrap())
            .unwrap()
            .salted("tenant-42")
            .unwrap();
        assert_eq!((again.name(), again.seed()), (secret.name(), secret.seed()));
        let other = base
            .with_key(NamespaceKey::new(b"another-cluster-key!").unwrap())
            .unwrap()
            .salted("tenant-42")
            .unwrap();
        assert_ne!(other.id(), secret.id());
        assert!(NamespaceKey::new(b"short").is_err());
        assert!(
            !format!("{key:?}").contains("0123"),
            "the key is never printed"
        );
    }

    #[test]
    fn a_name_parses_back_to_the_same_namespace() {
        let l = KvLayout::new(30, 3, 64, DType::Bf16, 128).unwrap();
        for ns in [
            Namespace::new("/models/smollm2@main", l).unwrap(),
            Namespace::with_parts("m", l, 1, 2, None)
                .unwrap()
                .with_engine_layout("CPU_ATTN/vec/abc")
                .unwrap(),
        ] {
            let back = Namespace::from_name(ns.name()).unwrap();
            assert_eq!(back, ns);
            assert_eq!(back.seed(), ns.seed());
        }
        let salted = Namespace::new("m", l).unwrap().salted("t").unwrap();
        for bad in [
            salted.name(),
            "m",
            "m@L30xH3xD64xbf16xB128",
            "m@L30xH3xD64xq4xB128@tp0of1",
            "m@L30xH3xD64xbf16xB128@tp1of1",
            "m@L30xH3xD64xbf16xB128@tp0of1@a@b",
        ] {
            assert!(Namespace::from_name(bad).is_err(), "{bad}");
        }
    }
}
