//! A QUIC bidirectional stream carrying length-prefixed frames (see `polarizer_shared::frame`).

use polarizer_shared::frame::{self, FrameDecoder, FrameError};
use serde::de::DeserializeOwned;
use serde::Serialize;

#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error(transparent)]
    Frame(#[from] FrameError),
    #[error("connection lost: {0}")]
    Connection(#[from] quinn::ConnectionError),
    #[error("write failed: {0}")]
    Write(#[from] quinn::WriteError),
    #[error("read failed: {0}")]
    Read(#[from] quinn::ReadError),
    #[error("peer closed the stream")]
    Closed,
}

pub struct FramedStream {
    send: quinn::SendStream,
    recv: quinn::RecvStream,
    decoder: FrameDecoder,
    write_buffer: Vec<u8>,
    /// The body size of the last frame received.
    last_frame_bytes: usize,
}

impl FramedStream {
    pub fn new(send: quinn::SendStream, recv: quinn::RecvStream) -> Self {
        FramedStream {
            send,
            recv,
            decoder: FrameDecoder::new(),
            write_buffer: Vec::new(),
            last_frame_bytes: 0,
        }
    }

    pub async fn open(connection: &quinn::Connection) -> Result<Self, StreamError> {
        let (send, recv) = connection.open_bi().await?;
        Ok(Self::new(send, recv))
    }

    pub async fn accept(connection: &quinn::Connection) -> Result<Self, StreamError> {
        let (send, recv) = connection.accept_bi().await?;
        Ok(Self::new(send, recv))
    }

    pub async fn send<T: Serialize>(&mut self, message: &T) -> Result<(), StreamError> {
        self.write_buffer.clear();
        frame::encode_into(message, &mut self.write_buffer)?;
        self.send.write_all(&self.write_buffer).await?;
        Ok(())
    }

    /// Sends already-encoded frames in one write (for batching).
    pub async fn send_encoded(&mut self, frames: &[u8]) -> Result<(), StreamError> {
        self.send.write_all(frames).await?;
        Ok(())
    }

    /// The largest frame accepted from now on (a hello is held to far less than later frames).
    pub fn set_frame_limit(&mut self, limit: usize) {
        self.decoder.set_limit(limit);
    }

    /// The next frame's raw body, or `None` when the peer finished the stream cleanly between frames.
    pub async fn recv_bytes(&mut self) -> Result<Option<Vec<u8>>, StreamError> {
        loop {
            if let Some(bytes) = self.decoder.next_frame_bytes()? {
                self.last_frame_bytes = bytes.len();
                return Ok(Some(bytes.to_vec()));
            }
            match self.recv.read_chunk(64 * 1024, true).await? {
                Some(chunk) => self.decoder.push(&chunk.bytes),
                None => {
                    self.decoder.finish()?;
                    return Ok(None);
                }
            }
        }
    }

    /// How many bytes the last frame received held (what its decoded message stands for in memory,
    /// roughly): for a reader that bounds what it holds in bytes.
    pub fn last_frame_bytes(&self) -> usize {
        self.last_frame_bytes
    }

    pub async fn recv<T: DeserializeOwned>(&mut self) -> Result<Option<T>, StreamError> {
        match self.recv_bytes().await? {
            Some(bytes) => Ok(Some(frame::decode(&bytes)?)),
            None => Ok(None),
        }
    }

    /// Like `recv`, but a clean end of stream is an error: for request/response exchanges.
    pub async fn expect<T: DeserializeOwned>(&mut self) -> Result<T, StreamError> {
        self.recv().await?.ok_or(StreamError::Closed)
    }

    /// Finishes the sending side and waits until the peer has received everything.
    pub async fn finish(mut self) {
        let _ = self.send.finish();
        let _ = self.send.stopped().await;
    }
}
