//! The upstream's response body, decoded as RFC 9112 §6.3 frames it (length, chunked, or up
//! to the close), streamed without copies; the connection goes back to its pool at the end.

use super::exchange::{Head, SendError, Writer};
use super::{Conn, Pool};
use bytes::{Buf, Bytes};
use http::header::{CONTENT_LENGTH, TRANSFER_ENCODING};
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use http_body::{Body, Frame, SizeHint};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

/// Longest chunk-size line (with extensions) accepted.
const MAX_CHUNK_LINE: usize = 4 << 10;
/// Largest trailer section accepted.
const MAX_TRAILERS: usize = 64 << 10;
const MAX_TRAILER_FIELDS: usize = 64;

/// How the body of a response is delimited.
pub enum Framing {
    /// No body: HEAD, 204, 304 (RFC 9112 §6.3 rule 1).
    Empty,
    /// `Content-Length`: this many bytes are left.
    Length(u64),
    Chunked(Chunk),
    /// No length: the body runs until the upstream closes the connection.
    Close,
    Done,
}

/// Where the chunked decoder stands.
pub enum Chunk {
    Size,
    Data(u64),
    DataEnd,
    Trailers,
}

impl Framing {
    pub fn of(head: &Head, head_request: bool) -> Result<Framing, SendError> {
        if head_request
            || head.status == StatusCode::NO_CONTENT
            || head.status == StatusCode::NOT_MODIFIED
        {
            return Ok(Framing::Empty);
        }
        let headers = &head.headers;
        if headers.contains_key(TRANSFER_ENCODING) {
            // Chunked only when it is the final coding; otherwise the close ends the body.
            let last = headers
                .get_all(TRANSFER_ENCODING)
                .iter()
                .flat_map(|v| v.as_bytes().split(|b| *b == b','))
                .map(<[u8]>::trim_ascii)
                .rfind(|t| !t.is_empty());
            let chunked = last.is_some_and(|t| t.eq_ignore_ascii_case(b"chunked"));
            return Ok(if chunked {
                Framing::Chunked(Chunk::Size)
            } else {
                Framing::Close
            });
        }
        match content_length(headers)? {
            Some(0) => Ok(Framing::Empty),
            Some(length) => Ok(Framing::Length(length)),
            None => Ok(Framing::Close),
        }
    }

    /// A body ended by the close leaves nothing to reuse.
    pub fn allows_reuse(&self) -> bool {
        !matches!(self, Framing::Close)
    }

    fn is_over(&self) -> bool {
        matches!(self, Framing::Empty | Framing::Done | Framing::Length(0))
    }
}

/// RFC 9110 §8.6: several equal values are one length; differing or malformed ones make the
/// response invalid.
fn content_length(headers: &HeaderMap) -> Result<Option<u64>, SendError> {
    let mut length = None;
    for value in headers.get_all(CONTENT_LENGTH) {
        for item in value.as_bytes().split(|b| *b == b',') {
            let item = item.trim_ascii();
            let parsed = std::str::from_utf8(item)
                .ok()
                .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|s| s.parse::<u64>().ok())
                .ok_or(SendError::Invalid("malformed Content-Length"))?;
            if length.is_some_and(|l| l != parsed) {
                return Err(SendError::Invalid("conflicting Content-Length values"));
            }
            length = Some(parsed);
        }
    }
    Ok(length)
}

/// The upstream's body failed after its head was relayed.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("upstream connection failed during the body: {0}")]
    Io(#[from] std::io::Error),
    #[error("upstream closed the connection before the end of the body")]
    Incomplete,
    #[error("upstream body has invalid chunked framing")]
    Invalid,
}

/// A response body read from an upstream connection.
pub struct UpstreamBody {
    live: Option<Box<Live>>,
}

struct Live {
    conn: Conn,
    /// The rest of the request, still sent while the response arrives.
    writer: Writer,
    framing: Framing,
    keep_alive: bool,
    pool: Arc<Pool>,
}

impl UpstreamBody {
    pub(super) fn new(
        conn: Conn,
        writer: Writer,
        framing: Framing,
        keep_alive: bool,
        pool: Arc<Pool>,
    ) -> Self {
        let mut body = UpstreamBody {
            live: Some(Box::new(Live {
                conn,
                writer,
                framing,
                keep_alive,
                pool,
            })),
        };
        if body.live.as_ref().is_some_and(|l| l.framing.is_over()) {
            body.finish();
        }
        body
    }

    /// The body is read to its end: the connection goes back to the pool if it can carry
    /// another request, and is closed otherwise.
    fn finish(&mut self) {
        let Some(live) = self.live.take() else {
            return;
        };
        let Live {
            conn,
            writer,
            keep_alive,
            pool,
            ..
        } = *live;
        // Bytes past the end of the body are not a response anyone asked for.
        if keep_alive && writer.finished() && conn.buf.is_empty() {
            pool.put(conn);
        }
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.get_mut();
        let Some(live) = this.live.as_mut() else {
            return Poll::Ready(None);
        };
        // The upstream may want the whole request body before it finishes its answer.
        if live.writer.drive(&mut live.conn.io, cx).is_err() {
            live.writer.abandon();
        }
        let polled = live.poll_data(cx);
        match &polled {
            Poll::Ready(Some(Ok(_))) if live.framing.is_over() => this.finish(),
            Poll::Ready(None) => this.finish(),
            Poll::Ready(Some(Err(_))) => this.live = None,
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.live.as_ref().is_none_or(|l| l.framing.is_over())
    }

    fn size_hint(&self) -> SizeHint {
        match self.live.as_ref().map(|l| &l.framing) {
            None | Some(Framing::Empty | Framing::Done) => SizeHint::with_exact(0),
            Some(Framing::Length(left)) => SizeHint::with_exact(*left),
            Some(_) => SizeHint::default(),
        }
    }
}

type Polled = Poll<Option<Result<Frame<Bytes>, BodyError>>>;

impl Live {
    fn poll_data(&mut self, cx: &mut Context<'_>) -> Polled {
        loop {
            match &mut self.framing {
                Framing::Empty | Framing::Done | Framing::Length(0) => return Poll::Ready(None),
                Framing::Length(left) => {
                    if self.conn.buf.is_empty() {
                        ready!(fill(&mut self.conn, cx, false))?;
                    }
                    return Poll::Ready(Some(Ok(Frame::data(take(&mut self.conn, left)))));
                }
                Framing::Close => {
                    if self.conn.buf.is_empty() && ready!(fill(&mut self.conn, cx, true))? == 0 {
                        self.framing = Framing::Done;
                        return Poll::Ready(None);
                    }
                    let all = self.conn.buf.split().freeze();
                    return Poll::Ready(Some(Ok(Frame::data(all))));
                }
                Framing::Chunked(_) => {
                    if let Some(frame) = ready!(self.poll_chunked(cx)) {
                        return Poll::Ready(Some(frame));
                    }
                }
            }
        }
    }

    /// One step of the chunked decoder (RFC 9112 §7.1): `Ready(None)` means "state changed,
    /// go on"; the end of the body sets `Framing::Done`.
    fn poll_chunked(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let Framing::Chunked(state) = &mut self.framing else {
            return Poll::Ready(None);
        };
        let buf = &mut self.conn.buf;
        match state {
            Chunk::Size => match size_line(buf)? {
                Some((used, size)) => {
                    buf.advance(used);
                    *state = if size == 0 {
                        Chunk::Trailers
                    } else {
                        Chunk::Data(size)
                    };
                }
                None if buf.len() > MAX_CHUNK_LINE => {
                    return Poll::Ready(Some(Err(BodyError::Invalid)))
                }
                None => {
                    ready!(fill(&mut self.conn, cx, false))?;
                }
            },
            Chunk::Data(left) => {
                if buf.is_empty() {
                    ready!(fill(&mut self.conn, cx, false))?;
                    return Poll::Ready(None);
                }
                let data = take(&mut self.conn, left);
                if *left == 0 {
                    *state = Chunk::DataEnd;
                }
                return Poll::Ready(Some(Ok(Frame::data(data))));
            }
            Chunk::DataEnd => {
                if buf.len() < 2 {
                    ready!(fill(&mut self.conn, cx, false))?;
                } else if &buf[..2] == b"\r\n" {
                    buf.advance(2);
                    *state = Chunk::Size;
                } else {
                    return Poll::Ready(Some(Err(BodyError::Invalid)));
                }
            }
            Chunk::Trailers => return self.poll_trailers(cx),
        }
        Poll::Ready(None)
    }

    fn poll_trailers(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let buf = &mut self.conn.buf;
        if buf.len() >= 2 && buf.starts_with(b"\r\n") {
            buf.advance(2);
            self.framing = Framing::Done;
            return Poll::Ready(None);
        }
        let mut slots = [httparse::EMPTY_HEADER; MAX_TRAILER_FIELDS];
        match httparse::parse_headers(buf, &mut slots) {
            Ok(httparse::Status::Complete((used, fields))) => {
                let trailers = trailer_map(fields);
                buf.advance(used);
                self.framing = Framing::Done;
                Poll::Ready(Some(Ok(Frame::trailers(trailers))))
            }
            Ok(httparse::Status::Partial) if buf.len() <= MAX_TRAILERS => {
                ready!(fill(&mut self.conn, cx, false))?;
                Poll::Ready(None)
            }
            _ => Poll::Ready(Some(Err(BodyError::Invalid))),
        }
    }
}

fn trailer_map(fields: &[httparse::Header<'_>]) -> HeaderMap {
    let mut map = HeaderMap::with_capacity(fields.len());
    for field in fields {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(field.name.as_bytes()),
            HeaderValue::from_bytes(field.value),
        ) {
            map.append(name, value);
        }
    }
    map
}

/// Up to `left` buffered bytes, counted off.
fn take(conn: &mut Conn, left: &mut u64) -> Bytes {
    let n = (*left).min(conn.buf.len() as u64) as usize;
    *left -= n as u64;
    conn.buf.split_to(n).freeze()
}

/// Reads more; the end of the stream is an error unless `eof_ends` (a close-delimited body).
fn fill(conn: &mut Conn, cx: &mut Context<'_>, eof_ends: bool) -> Poll<Result<usize, BodyError>> {
    match ready!(conn.poll_fill(cx)) {
        Ok(0) if !eof_ends => Poll::Ready(Err(BodyError::Incomplete)),
        Ok(n) => Poll::Ready(Ok(n)),
        Err(err) => Poll::Ready(Err(BodyError::Io(err))),
    }
}

/// A whole chunk-size line at the start of `buf`: its length with CRLF, and the size.
/// Extensions after `;` are ignored (RFC 9112 §7.1.1); a bare LF is refused.
fn size_line(buf: &[u8]) -> Result<Option<(usize, u64)>, BodyError> {
    let Some(end) = buf.iter().position(|b| *b == b'\n') else {
        return Ok(None);
    };
    let line = buf[..end].strip_suffix(b"\r").ok_or(BodyError::Invalid)?;
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 || digits > 15 {
        return Err(BodyError::Invalid);
    }
    let rest = line[digits..].trim_ascii_start();
    if !(rest.is_empty() || rest.starts_with(b";")) {
        return Err(BodyError::Invalid);
    }
    let text = std::str::from_utf8(&line[..digits]).map_err(|_| BodyError::Invalid)?;
    let size = u64::from_str_radix(text, 16).map_err(|_| BodyError::Invalid)?;
    Ok(Some((end + 1, size)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_size_lines() {
        assert_eq!(size_line(b"1a\r\nrest").ok().flatten(), Some((4, 26)));
        assert_eq!(size_line(b"0;ext=1\r\n").ok().flatten(), Some((9, 0)));
        assert_eq!(size_line(b"5 ;x\r\n").ok().flatten(), Some((6, 5)));
        assert!(size_line(b"5").is_ok_and(|r| r.is_none()));
        assert!(size_line(b"5\n").is_err(), "bare LF");
        assert!(size_line(b"\r\n").is_err(), "no digits");
        assert!(size_line(b"-5\r\n").is_err());
        assert!(size_line(b"5x\r\n").is_err());
        assert!(size_line(b"1000000000000000\r\n").is_err(), "overflow");
    }
}
