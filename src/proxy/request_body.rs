//! The body of a client's request as the proxy reads it: nothing, bytes that came with the head, an
//! HTTP/1.1 body still on the client connection, or an HTTP/2 stream's (hyper's `Incoming`).
//!
//! An HTTP/1.1 body that did not come whole with its head holds the client connection while it is
//! read (the connection's task is waiting for the request's answer meanwhile, so nothing else uses
//! it) and hands the connection back when it ends, fails or is dropped, with the bytes read past its
//! end. It sends `100 Continue` the first time it is polled, if the client asked for it: a request
//! answered without reading its body never invites it.

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::sync::oneshot;

use super::downstream::Parked;
use super::framing::BodyFault;
use super::h1::{Decoded, Decoder};

/// Room made in the read buffer at a time while a body streams in.
const BODY_READ: usize = 16 * 1024;
const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// A client's request body.
#[derive(Debug)]
pub enum RequestBody {
    Empty,
    /// The whole body, read with the head.
    Full(Option<Bytes>),
    Streaming(Box<Streaming>),
    H2(Incoming),
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BodyFault;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BodyFault>>> {
        match self.get_mut() {
            RequestBody::Empty => Poll::Ready(None),
            RequestBody::Full(b) => Poll::Ready(b.take().map(|d| Ok(Frame::data(d)))),
            RequestBody::Streaming(s) => s.poll_data(cx).map(|d| d.map(|d| d.map(Frame::data))),
            RequestBody::H2(b) => Pin::new(b).poll_frame(cx).map_err(|e| BodyFault::of(&e)),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            RequestBody::Empty => true,
            RequestBody::Full(b) => b.is_none(),
            RequestBody::Streaming(s) => s.decoder.is_done(),
            RequestBody::H2(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            RequestBody::Empty | RequestBody::Full(None) => SizeHint::with_exact(0),
            RequestBody::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            RequestBody::Streaming(s) => s.decoder.size_hint(),
            RequestBody::H2(b) => b.size_hint(),
        }
    }
}

/// An HTTP/1.1 request body read from the client connection it holds.
#[derive(Debug)]
pub struct Streaming {
    /// The connection, until the body hands it back.
    conn: Option<Parked>,
    decoder: Decoder,
    /// What is left to write of `100 Continue`.
    interim: &'static [u8],
    back: Option<oneshot::Sender<Parked>>,
}

impl Streaming {
    /// A body framed by `decoder` whose first bytes, if any, are in `conn.read`. The connection goes
    /// back through `back`.
    pub fn new(conn: Parked, decoder: Decoder, expects_continue: bool, back: oneshot::Sender<Parked>) -> Streaming {
        let interim = if expects_continue { CONTINUE } else { b"" };
        Streaming { conn: Some(conn), decoder, interim, back: Some(back) }
    }

    fn poll_data(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes, BodyFault>>> {
        let Some(conn) = self.conn.as_mut() else { return Poll::Ready(None) };
        while !self.interim.is_empty() {
            match ready!(Pin::new(&mut *conn.io).poll_write(cx, self.interim)) {
                Ok(n) if n > 0 => self.interim = self.interim.get(n..).unwrap_or_default(),
                _ => return Poll::Ready(Some(Err(self.fail(BodyFault::ClientLeft)))),
            }
            if self.interim.is_empty() && ready!(Pin::new(&mut *conn.io).poll_flush(cx)).is_err() {
                return Poll::Ready(Some(Err(self.fail(BodyFault::ClientLeft))));
            }
        }
        loop {
            match self.decoder.decode(&mut conn.read) {
                Ok(Decoded::Data(data)) => {
                    // The end of the body may be in the buffer already: then the connection goes back
                    // with this last piece.
                    if self.decoder.skip_framing(&mut conn.read).is_err() {
                        return Poll::Ready(Some(Err(self.fail(BodyFault::Framing))));
                    }
                    if self.decoder.is_done() {
                        self.hand_back(true);
                    }
                    return Poll::Ready(Some(Ok(data)));
                }
                Ok(Decoded::End) => {
                    self.hand_back(true);
                    return Poll::Ready(None);
                }
                Ok(Decoded::More) => {}
                Err(_) => return Poll::Ready(Some(Err(self.fail(BodyFault::Framing)))),
            }
            if conn.read.capacity() - conn.read.len() < BODY_READ / 4 {
                conn.read.reserve(BODY_READ);
            }
            match ready!(tokio_util::io::poll_read_buf(Pin::new(&mut *conn.io), cx, &mut conn.read)) {
                Ok(n) if n > 0 => {}
                _ => return Poll::Ready(Some(Err(self.fail(BodyFault::ClientLeft)))),
            }
        }
    }

    fn fail(&mut self, fault: BodyFault) -> BodyFault {
        self.hand_back(false);
        fault
    }

    /// Gives the connection back, with whether the body was read to its end (if not, the connection
    /// cannot carry another request).
    fn hand_back(&mut self, done: bool) {
        if let (Some(mut conn), Some(back)) = (self.conn.take(), self.back.take()) {
            conn.done = done;
            let _ = back.send(conn);
        }
    }
}

impl Drop for Streaming {
    fn drop(&mut self) {
        let done = self.decoder.is_done();
        self.hand_back(done);
    }
}
