//! Kong's `request_buffering`: on a route that has it (the default), the request body is read before
//! anything goes upstream, so a body that is malformed or never finishes costs the upstream nothing,
//! and a body read whole can be sent again on a retry. Memory is bounded by [`REQUEST_BUFFER`]: past
//! it the rest of the body streams, as with buffering off (where nginx would spill to a temporary
//! file; the proxy stays off the disk). The same reader serves plugins that need the whole body.

use std::future::Future;
use std::pin::Pin;

use bytes::{Bytes, BytesMut};
use http_body::Body;
use http_body_util::BodyExt;

use super::framing::BodyFault;
use super::request_body::RequestBody;

/// How much of a request body request buffering holds in memory: 1 MiB, nginx's default
/// `client_max_body_size`, so any body nginx takes without configuration is read whole before the
/// upstream is contacted. A request holds at most this plus one read of its connection.
pub const REQUEST_BUFFER: usize = 1024 * 1024;

/// A request body read into memory.
#[derive(Debug)]
pub enum Read {
    Whole(Bytes),
    /// More than the limit: what was read, and the rest of the stream.
    Partial(Bytes, RequestBody),
}

/// Reads `body` until it ends or more than `limit` bytes are in memory. A body that comes in one
/// frame (a small one sent with its head) is kept as it came, without a copy. Trailers are
/// dropped (they are not sent upstream). Boxed: the reading state stays out of every request's
/// future, which requests without a body (most of them) would otherwise carry and copy.
pub fn read(body: RequestBody, limit: usize) -> Pin<Box<dyn Future<Output = Result<Read, BodyFault>> + Send>> {
    Box::pin(read_into_memory(body, limit))
}

async fn read_into_memory(mut body: RequestBody, limit: usize) -> Result<Read, BodyFault> {
    let mut single: Option<Bytes> = None;
    let mut joined: Option<BytesMut> = None;
    let mut total = 0usize;
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame?.into_data() else { continue };
        total += data.len();
        match (&mut joined, single.take()) {
            (Some(joined), _) => joined.extend_from_slice(&data),
            (None, None) => single = Some(data),
            (None, Some(first)) => {
                let expected = usize::try_from(body.size_hint().lower()).unwrap_or(usize::MAX);
                let mut buf = BytesMut::with_capacity(total.saturating_add(expected).min(limit));
                buf.extend_from_slice(&first);
                buf.extend_from_slice(&data);
                joined = Some(buf);
            }
        }
        if total > limit {
            return Ok(Read::Partial(taken(single, joined), body));
        }
    }
    Ok(Read::Whole(taken(single, joined)))
}

fn taken(single: Option<Bytes>, joined: Option<BytesMut>) -> Bytes {
    joined.map(BytesMut::freeze).or(single).unwrap_or_default()
}
