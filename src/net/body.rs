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
