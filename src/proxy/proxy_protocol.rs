//! The PROXY protocol (v1 text and v2 binary, parsed by `ppp`) at the start of a connection on a
//! `proxy_protocol` listener, and the stream that hands on what was read past the header. As with
//! nginx's `real_ip_header proxy_protocol`, the address in the header becomes the client's only when
//! the connecting peer is in `trusted_ips`.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use ppp::{HeaderResult, PartialResult};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};

/// The largest header accepted: v1 is at most 107 bytes; v2 carries TLVs, kept small.
const MAX_HEADER: usize = 4096;

/// Why a connection's PROXY header was refused.
#[derive(Debug, thiserror::Error)]
pub enum HeaderError {
    #[error("connection closed before its PROXY protocol header was complete")]
    Closed,
    #[error("invalid PROXY protocol header")]
    Invalid,
    #[error("PROXY protocol header over {MAX_HEADER} bytes")]
    TooLong,
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// Reads the header; returns the source address it names (`None` for `UNKNOWN`/`LOCAL`) and the
/// bytes read past it.
pub async fn read_header<S: AsyncRead + Unpin>(stream: &mut S) -> Result<(Option<SocketAddr>, Bytes), HeaderError> {
    let mut buf = BytesMut::with_capacity(256);
    loop {
        if stream.read_buf(&mut buf).await? == 0 {
            return Err(HeaderError::Closed);
        }
        let (source, len) = match HeaderResult::parse(&buf) {
            r if r.is_incomplete() => {
                if buf.len() >= MAX_HEADER {
                    return Err(HeaderError::TooLong);
                }
                continue;
            }
            HeaderResult::V1(Ok(h)) => {
                let source = match h.addresses {
                    ppp::v1::Addresses::Tcp4(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
                    ppp::v1::Addresses::Tcp6(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
                    ppp::v1::Addresses::Unknown => None,
                };
                (source, h.header.len())
            }
            HeaderResult::V2(Ok(h)) => {
                let source = match (&h.command, &h.addresses) {
                    (ppp::v2::Command::Local, _) => None,
                    (_, ppp::v2::Addresses::IPv4(a)) => Some(SocketAddr::from((a.source_address, a.source_port))),
                    (_, ppp::v2::Addresses::IPv6(a)) => Some(SocketAddr::from((a.source_address, a.source_port))),
                    _ => None,
                };
                (source, h.len())
            }
            _ => return Err(HeaderError::Invalid),
        };
        let len = len.min(buf.len());
        buf.advance(len);
        return Ok((source, buf.freeze()));
    }
}

pin_project_lite::pin_project! {
    /// A stream that first yields bytes already read from it.
    #[derive(Debug)]
    pub struct Rewind<S> {
        pre: Bytes,
        #[pin]
        inner: S,
    }
}

impl<S> Rewind<S> {
    pub fn new(pre: Bytes, inner: S) -> Rewind<S> {
        Rewind { pre, inner }
    }

    /// Some of the bytes read ahead are still to be read.
    pub fn has_buffered(&self) -> bool {
        !self.pre.is_empty()
    }
}

impl<S: Unpin> Rewind<S> {
    pub fn inner_mut(&mut self) -> &mut S {
        &mut self.inner
    }
}

impl<S: AsyncRead> AsyncRead for Rewind<S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, out: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.project();
        if !this.pre.is_empty() {
            let n = this.pre.len().min(out.remaining());
            out.put_slice(&this.pre[..n]);
            this.pre.advance(n);
            return Poll::Ready(Ok(()));
        }
        this.inner.poll_read(cx, out)
    }
}

impl<S: AsyncWrite> AsyncWrite for Rewind<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.project().inner.poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.project().inner.poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn parse(input: &[u8]) -> Result<(Option<SocketAddr>, Bytes), HeaderError> {
        let mut input = input;
        read_header(&mut input).await
    }

    #[tokio::test]
    async fn v1_and_v2_headers_name_the_client_and_keep_what_follows() {
        let (src, rest) = parse(b"PROXY TCP4 203.0.113.7 10.0.0.1 51000 8000\r\nGET / HTTP/1.1\r\n").await.expect("v1");
        assert_eq!(src, Some("203.0.113.7:51000".parse().expect("addr")));
        assert_eq!(&rest[..], b"GET / HTTP/1.1\r\n");
        let (src, _) = parse(b"PROXY UNKNOWN\r\n").await.expect("unknown");
        assert_eq!(src, None);
        let mut v2 = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
        v2.extend_from_slice(&[0x21, 0x11, 0, 12, 198, 51, 100, 9, 10, 0, 0, 1, 0x1f, 0x90, 0x1f, 0x40]);
        v2.extend_from_slice(b"hello");
        let (src, rest) = parse(&v2).await.expect("v2");
        assert_eq!(src, Some("198.51.100.9:8080".parse().expect("addr")));
        assert_eq!(&rest[..], b"hello");
    }

    #[tokio::test]
    async fn garbage_and_truncation_are_refused() {
        assert!(matches!(parse(b"GET / HTTP/1.1\r\n\r\n").await, Err(HeaderError::Invalid)));
        assert!(matches!(parse(b"PROXY TCP4 1.2.3.4").await, Err(HeaderError::Closed)));
        assert!(parse(&[b'P'; 5000]).await.is_err());
    }

    #[tokio::test]
    async fn rewind_replays_then_reads_on() {
        let mut s = Rewind::new(Bytes::from_static(b"ab"), &b"cd"[..]);
        let mut out = String::new();
        s.read_to_string(&mut out).await.expect("read");
        assert_eq!(out, "abcd");
    }
}
