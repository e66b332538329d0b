//! Entry points for the fuzz targets (`fuzz/`): each takes bytes from outside the
//! process and must never panic, whatever they are. Not an API.

use prost::Message;
use tierkv_proto::v1::{FetchRequest, LookupRequest, PublishChunk, StatsRequest, WatchRequest};

use crate::service::request::{check_namespace, parse_hash};

/// A store configuration file (TOML), parsed and validated as `tierkv` does.
pub fn store_config_toml(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(config) = crate::StoreConfig::from_toml(text) {
        let _ = config.validate();
        // What parses prints back to TOML that parses to the same configuration.
        if let Ok(again) = toml::to_string(&config) {
            let back = crate::StoreConfig::from_toml(&again);
            assert!(back.is_ok(), "{again}");
        }
    }
}

/// One gRPC message body of the block service, as the server decodes and checks it;
/// the first byte picks the message type.
pub fn block_service_message(data: &[u8]) {
    let Some((&kind, body)) = data.split_first() else {
        return;
    };
    let check_ids = |ns: &str, hashes: &[bytes::Bytes]| {
        if check_namespace(ns).is_ok() {
            for h in hashes {
                let _ = parse_hash(h);
            }
        }
    };
    match kind % 5 {
        0 => {
            if let Ok(c) = PublishChunk::decode(body)
                && let Some(id) = &c.id
            {
                check_ids(&id.namespace, std::slice::from_ref(&id.hash));
                let _ = c.offset.checked_add(c.data.len() as u64);
            }
        }
        1 => {
            if let Ok(r) = FetchRequest::decode(body) {
                check_ids(&r.namespace, &r.hashes);
            }
        }
        2 => {
            if let Ok(r) = LookupRequest::decode(body) {
                check_ids(&r.namespace, &r.hashes);
            }
        }
        3 => {
            if let Ok(r) = WatchRequest::decode(body) {
                for ns in &r.namespaces {
                    let _ = check_namespace(ns);
                }
            }
        }
        _ => {
            let _ = StatsRequest::decode(body);
        }
    }
}
