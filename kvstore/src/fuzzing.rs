//! Entry points for the fuzz targets (`fuzz/`): each takes bytes from outside the
//! process and must never panic, whatever they are, and says whether the decoder
//! accepted it. Not an API.

use prost::Message;
use tierkv_proto::v1::{FetchRequest, LookupRequest, PublishChunk, StatsRequest, WatchRequest};

use crate::service::request::{check_namespace, parse_hash};

/// A store configuration file (TOML), parsed and validated as `tierkv` does.
pub fn store_config_toml(data: &[u8]) -> bool {
    let Ok(text) = std::str::from_utf8(data) else {
        return false;
    };
    let parsed = crate::StoreConfig::from_toml(text);
    let accepted = parsed.is_ok();
    if let Ok(config) = parsed {
        let _ = config.validate();
        // What parses prints back to TOML that parses to the same configuration.
        if let Ok(again) = toml::to_string(&config) {
            let back = crate::StoreConfig::from_toml(&again);
            assert!(back.is_ok(), "{again}");
        }
    }
    accepted
}

/// One gRPC message body of the block service, as the server decodes and checks it;
/// the first byte picks the message type.
pub fn block_service_message(data: &[u8]) -> bool {
    let Some((&kind, body)) = data.split_first() else {
        return false;
    };
    let check_ids = |ns: &str, hashes: &[bytes::Bytes]| {
        if check_namespace(ns).is_ok() {
            for h in hashes {
                let _ = parse_hash(h);
            }
        }
    };
    match kind % 5 {
        0 => PublishChunk::decode(body).is_ok_and(|c| {
            if let Some(id) = &c.id {
                check_ids(&id.namespace, std::slice::from_ref(&id.hash));
            }
            c.offset.checked_add(c.data.len() as u64).is_some()
        }),
        1 => FetchRequest::decode(body).is_ok_and(|r| {
            check_ids(&r.namespace, &r.hashes);
            true
        }),
        2 => LookupRequest::decode(body).is_ok_and(|r| {
            check_ids(&r.namespace, &r.hashes);
            true
        }),
        3 => WatchRequest::decode(body)
            .is_ok_and(|r| r.namespaces.iter().all(|ns| check_namespace(ns).is_ok())),
        _ => StatsRequest::decode(body).is_ok(),
    }
}
