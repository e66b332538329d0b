//! `Lookup`: how many leading blocks of a chain the store holds, and in which tiers;
//! answered from the store's index in memory, without I/O.

use tierkv_proto::v1::{LookupReply, LookupRequest};
use tonic::{Request, Status};

use crate::service::state::BlockServer;

pub(crate) fn lookup(
    server: &BlockServer,
    request: Request<LookupRequest>,
) -> Result<LookupReply, Status> {
    let start = std::time::Instant::now();
    let result = (|| {
        let access = server.auth.caller(request.metadata())?;
        let req = request.get_ref();
        let (ns_id, hashes) = server.parse_request(&access, &req.namespace, &req.hashes)?;
        let tiers = server.store.locate_prefix_keys(ns_id, &hashes);
        Ok(LookupReply {
            prefix_hits: tiers.len() as u32,
            tiers: tiers
                .iter()
                .map(|&t| server.tier_names[t].clone())
                .collect(),
        })
    })();
    server.finish("lookup", start, result)
}
