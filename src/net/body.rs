//! Reading one HTTP message body as a stream of decoded bytes, whatever its framing.

use std::io::{self, Read};

use crate::net::conn::Input;
use crate::wire::http::{BodyLength, ChunkedDecoder};

enum State {
    Length(u64),
    Chunked { decoder: ChunkedDecoder, pending: Vec<u8> },
    UntilClose,
    Done,
}

/// The decoded bytes of one body; reads past its end return 0 and leave the next
/// message's bytes in the [`Input`].
pub struct BodyReader<'a> {
    input: &'a mut Input,
    state: State,
}

impl<'a> BodyReader<'a> {
    pub fn new(input: &'a mut Input, framing: BodyLength) -> Self {
        let state = match framing {
            BodyLength::Empty | BodyLength::Length(0) => State::Done,
            BodyLength::Length(n) => State::Length(n),
            BodyLength::Chunked => State::Chunked { decoder: ChunkedDecoder::default(), pending: Vec::new() },
            BodyLength::UntilClose => State::UntilClose,
        };
        BodyReader { input, state }
    }

    /// Whether the whole body has been read (a `Length` body is done as soon as its
    /// last byte is; a chunked one once its last chunk is seen).
    pub fn is_done(&self) -> bool {
        match &self.state {
            State::Done => true,
            State::Length(0) => true,
            State::Chunked { decoder, pending } => decoder.is_done() && pending.is_empty(),
            _ => false,
        }
    }

    /// Body bytes that can be read now without waiting on the socket.
    pub fn available(&self) -> usize {
        match &self.state {
            State::Done => 0,
            State::Length(left) => self.input.buffered().len().min(usize::try_from(*left).unwrap_or(usize::MAX)),
            State::Chunked { pending, .. } => pending.len() + self.input.buffered().len(),
            State::UntilClose => self.input.buffered().len(),
        }
    }
}

fn truncated() -> io::Error {
    io::Error::new(io::ErrorKind::UnexpectedEof, "connection closed before the end of the body")
}

impl Read for BodyReader<'_> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        loop {
            match &mut self.state {
                State::Done => return Ok(0),
                State::Length(left) => {
                    let want = out.len().min(usize::try_from(*left).unwrap_or(usize::MAX));
                    let n = self.input.read(&mut out[..want])?;
                    if n == 0 && want > 0 {
                        return Err(truncated());
                    }
                    *left -= n as u64;
                    if *left == 0 {
                        self.state = State::Done;
                    }
                    return Ok(n);
                }
                State::UntilClose => {
                    let n = self.input.read(out)?;
                    if n == 0 {
                        self.state = State::Done;
                    }
                    return Ok(n);
                }
                State::Chunked { decoder, pending } => {
                    if !pending.is_empty() {
                        let n = out.len().min(pending.len());
                        out[..n].copy_from_slice(&pending[..n]);
                        pending.drain(..n);
                        return Ok(n);
                    }
                    if decoder.is_done() {
                        self.state = State::Done;
                        continue;
                    }
                    if self.input.buffered().is_empty() && self.input.fill()? == 0 {
                        return Err(truncated());
                    }
                    let used = decoder.decode(self.input.buffered(), pending).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
                    self.input.consume(used);
                }
            }
        }
    }
}

/// Reads a whole body into memory, refusing one longer than `max`.
pub fn read_to_vec(input: &mut Input, framing: BodyLength, max: usize) -> io::Result<Vec<u8>> {
    let mut out = Vec::new();
    let mut body = BodyReader::new(input, framing);
    let mut chunk = [0u8; 16 * 1024];
    loop {
        let n = body.read(&mut chunk)?;
        if n == 0 {
            return Ok(out);
        }
        if out.len() + n > max {
            return Err(io::Error::new(io::ErrorKind::InvalidData, format!("body exceeds {max} bytes")));
        }
        out.extend_from_slice(&chunk[..n]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::testutil::{cut, input_fed};

    const NEXT: &[u8] = b"GET /next HTTP/1.1\r\n\r\n";

    /// Reads the body in small reads, as the proxy's copy loop may.
    fn read_all(body: &mut BodyReader<'_>) -> io::Result<Vec<u8>> {
        let (mut out, mut chunk) = (Vec::new(), [0u8; 3]);
        loop {
            match body.read(&mut chunk)? {
                0 => return Ok(out),
                n => out.extend_from_slice(&chunk[..n]),
            }
        }
    }

    #[test]
    fn bodies_split_at_every_byte_boundary_decode_the_same_and_leave_the_next_message() {
        let cases: [(BodyLength, &[u8], &[u8]); 4] = [
            (BodyLength::Length(11), b"hello world", b"hello world"),
            (BodyLength::Chunked, b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nTrailer: x\r\n\r\n", b"hello world"),
            (BodyLength::Empty, b"", b""),
            (BodyLength::Length(0), b"", b""),
        ];
        for (framing, wire, want) in cases {
            let stream = [wire, NEXT].concat();
            for at in 0..=stream.len() {
                let mut input = input_fed(cut(&stream, at, at + 5));
                let mut body = BodyReader::new(&mut input, framing);
                assert_eq!(read_all(&mut body).unwrap(), want, "{framing:?} cut at {at}");
                assert!(body.is_done(), "{framing:?} cut at {at}");
                let mut rest = Vec::new();
                input.read_to_end(&mut rest).unwrap();
                assert_eq!(rest, NEXT, "{framing:?} cut at {at}: the next message is untouched");
            }
        }
    }

    #[test]
    fn a_body_read_until_close_ends_with_the_stream() {
        let mut input = input_fed(vec![b"streamed ".to_vec(), b"to the end".to_vec()]);
        assert_eq!(read_all(&mut BodyReader::new(&mut input, BodyLength::UntilClose)).unwrap(), b"streamed to the end");
    }

    #[test]
    fn short_and_malformed_bodies_are_errors() {
        let cases: [(BodyLength, &[u8], io::ErrorKind); 4] = [
            (BodyLength::Length(10), b"short", io::ErrorKind::UnexpectedEof),
            (BodyLength::Chunked, b"5\r\nhel", io::ErrorKind::UnexpectedEof),
            (BodyLength::Chunked, b"zz\r\nhello\r\n", io::ErrorKind::InvalidData),
            (BodyLength::Chunked, b"5\r\nhelloXX0\r\n\r\n", io::ErrorKind::InvalidData),
        ];
        for (framing, wire, kind) in cases {
            let mut input = input_fed(vec![wire.to_vec()]);
            let got = read_all(&mut BodyReader::new(&mut input, framing));
            assert_eq!(got.map_err(|e| e.kind()), Err(kind), "{framing:?} {:?}", String::from_utf8_lossy(wire));
        }
        let mut input = input_fed(vec![b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n".to_vec()]);
        assert_eq!(read_to_vec(&mut input, BodyLength::Chunked, 10).unwrap_err().to_string(), "body exceeds 10 bytes");
    }
}
