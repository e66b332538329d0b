//! What the two byte channels of the block service (the TCP data channel and the
//! same-host channel) read the same way on the server: the hello with its token, a
//! request's head (namespace and block count) and how a request fails.

use tokio::io::{AsyncRead, AsyncReadExt};
use tonic::Status;

use super::auth::Access;
use super::data::MAX_TOKEN;
use super::request::check_namespace;
use super::state::BlockServer;

/// What ended a request badly: a status the client is told about, and whether the
/// connection is still in step (the whole request was read).
pub(crate) struct Failure {
    pub(crate) status: Status,
    pub(crate) in_step: bool,
}

impl From<std::io::Error> for Failure {
    fn from(e: std::io::Error) -> Failure {
        match e.kind() {
            std::io::ErrorKind::TimedOut => {
                broken(Status::deadline_exceeded(format!("block channel: {e}")))
            }
            _ => broken(Status::unavailable(format!("block channel: {e}"))),
        }
    }
}

/// A failure after which the connection is out of step and is closed.
pub(crate) fn broken(status: Status) -> Failure {
    Failure {
        status,
        in_step: false,
    }
}

/// A refusal of a request read whole: the connection goes on.
pub(crate) fn in_step(status: Status) -> Failure {
    Failure {
        status,
        in_step: true,
    }
}

/// Reads the hello (`magic`, version, token) and checks the token. The outer error
/// is the connection's; the inner one is told to the client before closing.
pub(crate) async fn hello<R: AsyncRead + Unpin>(
    server: &BlockServer,
    rd: &mut R,
    (magic, version, what): ([u8; 4], u16, &str),
) -> std::io::Result<Result<Access, Status>> {
    let mut got = [0u8; 4];
    rd.read_exact(&mut got).await?;
    let got_version = rd.read_u16_le().await?;
    let token_len = rd.read_u16_le().await? as usize;
    if got != magic || got_version != version {
        return Ok(Err(Status::failed_precondition(format!(
            "not a tierkv {what} client of version {version}"
        ))));
    }
    if token_len > MAX_TOKEN {
        return Ok(Err(Status::invalid_argument("token too long")));
    }
    let mut token = vec![0u8; token_len];
    rd.read_exact(&mut token).await?;
    let presented = match token_len {
        0 => None,
        _ => match std::str::from_utf8(&token) {
            Ok(t) => Some(t),
            Err(_) => return Ok(Err(Status::unauthenticated("token is not UTF-8"))),
        },
    };
    Ok(server.auth.token(presented))
}

/// Reads a request's namespace and block count; a count over the limit breaks the
/// connection (its body is not read).
pub(crate) async fn read_head<R: AsyncRead + Unpin>(
    server: &BlockServer,
    rd: &mut R,
) -> Result<(Vec<u8>, usize), Failure> {
    let len = rd.read_u16_le().await? as usize;
    let mut ns = vec![0u8; len];
    rd.read_exact(&mut ns).await?;
    let count = rd.read_u32_le().await? as usize;
    if count > server.limits.max_blocks {
        return Err(broken(Status::resource_exhausted(format!(
            "{count} blocks in one request; the limit is {}",
            server.limits.max_blocks
        ))));
    }
    Ok((ns, count))
}

/// Checks a request's namespace against the caller's token, once the whole request
/// was read (a refusal leaves the connection in step); its digest.
pub(crate) fn check_head(
    server: &BlockServer,
    access: &Access,
    ns: Vec<u8>,
) -> Result<u64, Failure> {
    let namespace = String::from_utf8(ns)
        .map_err(|_| in_step(Status::invalid_argument("namespace is not UTF-8")))?;
    check_namespace(&namespace).map_err(in_step)?;
    access.check(&namespace).map_err(in_step)?;
    Ok(server.remember(&namespace))
}
