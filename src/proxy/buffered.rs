//! A write buffer under each accepted connection, as Pingora's own listeners have.
//!
//! Pingora's `Server` gives every accepted stream a write buffer of one segment
//! (`L4BufferSettings`, applied by a crate-private `set_buffer`). weir runs its own accept loops
//! (see `listeners`), and a stream made straight from a `TcpStream` has none: the response header
//! and body then leave in two `sendto` calls, a third of the proxy's system calls per request.
//! [`Buffered`] restores the buffer; Pingora flushes after each header and body write it means
//! to send, so nothing waits in it. It sits under TLS too, so a record is one segment, not
//! several.

use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use pingora::protocols::l4::stream::Stream as L4Stream;
use pingora::protocols::raw_connect::ProxyDigest;
use pingora::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl, TimingDigest, UniqueID,
    UniqueIDType,
};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, BufWriter, ReadBuf};

/// Pingora's default (`DEFAULT_L4_WRITE_BUFFER_SIZE`): one Ethernet-sized segment.
pub const WRITE_BUFFER: usize = 1460;

/// An accepted TCP stream with a write buffer in front of it.
pub struct Buffered(BufWriter<L4Stream>);

impl Buffered {
    pub fn new(stream: L4Stream) -> Self {
        Buffered(BufWriter::with_capacity(WRITE_BUFFER, stream))
    }
}

impl fmt::Debug for Buffered {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Buffered").field(self.0.get_ref()).finish()
    }
}

impl AsyncRead for Buffered {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for Buffered {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

#[async_trait]
impl Shutdown for Buffered {
    async fn shutdown(&mut self) {
        // flushes what is buffered, then shuts the socket down (as Pingora's stream does)
        if let Err(e) = AsyncWriteExt::shutdown(&mut self.0).await {
            tracing::debug!(error = %e, "failed to shut down a downstream connection");
        }
    }
}

impl UniqueID for Buffered {
    fn id(&self) -> UniqueIDType {
        self.0.get_ref().id()
    }
}

impl Ssl for Buffered {}

#[async_trait]
impl Peek for Buffered {
    async fn try_peek(&mut self, buf: &mut [u8]) -> std::io::Result<bool> {
        self.0.get_mut().try_peek(buf).await
    }
}

impl GetTimingDigest for Buffered {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        self.0.get_ref().get_timing_digest()
    }

    fn get_read_pending_time(&self) -> Duration {
        self.0.get_ref().get_read_pending_time()
    }

    fn get_write_pending_time(&self) -> Duration {
        self.0.get_ref().get_write_pending_time()
    }
}

impl GetProxyDigest for Buffered {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        self.0.get_ref().get_proxy_digest()
    }

    fn set_proxy_digest(&mut self, digest: ProxyDigest) {
        self.0.get_mut().set_proxy_digest(digest)
    }
}

impl GetSocketDigest for Buffered {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.0.get_ref().get_socket_digest()
    }

    fn set_socket_digest(&mut self, digest: SocketDigest) {
        self.0.get_mut().set_socket_digest(digest)
    }
}
