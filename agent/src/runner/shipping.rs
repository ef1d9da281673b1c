//! Receiving a run's tests from the coordinator over the agent's connection (the exchange is described in
//! `polarizer_shared::shipping`): into `<repo cache>/incoming/<id>.part`, each chunk checked against its
//! digest as it arrives. A transfer cut by a reconnect resumes from the chunks already held (each checked
//! again, since a crash may have torn or a disk damaged them); a chunk that does not match is refused and
//! asked for again.

use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use polarizer_shared::shipping::{AgentShipFrame, CoordinatorShipFrame, ShipOffer, ShipRequest};
use polarizer_transport::FramedStream;
use tokio::io::AsyncWriteExt;
use tokio::sync::watch;
use tracing::{info, warn};

/// Refused chunks in a row (no progress between them) before the transfer gives up.
const MAX_REFUSED_CHUNKS: u32 = 5;
const RETRY_MAX: Duration = Duration::from_secs(5);

/// The agent's live connection to the coordinator, as the session last made it (`None` between
/// connections): what the runner asks for tests over.
#[derive(Clone, Debug)]
pub struct Courier {
    link: watch::Receiver<Option<quinn::Connection>>,
}

impl Courier {
    pub fn new(link: watch::Receiver<Option<quinn::Connection>>) -> Courier {
        Courier { link }
    }
}

/// Why one try at a transfer ended without the file.
#[derive(Debug)]
pub(super) enum Failure {
    /// The coordinator said no, or said something unusable: the suite ends with this.
    Refused(String),
    /// This host cannot keep the file (disk full, permissions): the suite ends with this.
    Local(String),
    /// A chunk did not match its digest; it was not kept.
    BadChunk(usize),
    /// The stream or connection broke: try again, from what is held.
    Lost(String),
}

/// Receives the file the coordinator offers for `request` and returns its path and the offer. Waits for a
/// connection while there is none; ends only with the file or with a reason the suite ends with.
pub(super) async fn receive(
    courier: &Courier,
    request: &ShipRequest,
    incoming: &Path,
) -> Result<(PathBuf, ShipOffer), String> {
    tokio::fs::create_dir_all(incoming)
        .await
        .map_err(|err| format!("cannot create {}: {err}", incoming.display()))?;
    let mut link = courier.link.clone();
    let mut refused = 0;
    let mut retry = Duration::from_millis(100);
    loop {
        let connection = link
            .wait_for(Option::is_some)
            .await
            .map_err(|_| "the agent is stopping".to_string())?
            .clone()
            .ok_or("no connection")?;
        match transfer(&connection, request, incoming).await {
            Ok(received) => return Ok(received),
            Err(Failure::Refused(reason) | Failure::Local(reason)) => return Err(reason),
            Err(Failure::BadChunk(index)) => {
                refused += 1;
                warn!(
                    chunk = index,
                    "refused a chunk of tests that does not match its digest; asking again"
                );
                if refused >= MAX_REFUSED_CHUNKS {
                    return Err(format!(
                        "chunk {index} of the tests arrived damaged {MAX_REFUSED_CHUNKS} times in a row"
                    ));
                }
            }
            Err(Failure::Lost(reason)) => {
                info!(reason, "test transfer interrupted; resuming once connected");
                // A new connection, or a pause before trying this one again.
                let _ = tokio::time::timeout(retry, link.changed()).await;
                retry = (retry * 2).min(RETRY_MAX);
            }
        }
    }
}

async fn transfer(
    connection: &quinn::Connection,
    request: &ShipRequest,
    incoming: &Path,
) -> Result<(PathBuf, ShipOffer), Failure> {
    let lost = |err: polarizer_transport::StreamError| Failure::Lost(err.to_string());
    let mut stream = FramedStream::open(connection).await.map_err(lost)?;
    stream
        .send(&AgentShipFrame::Request(request.clone()))
        .await
        .map_err(lost)?;
    let offer = match stream
        .expect::<CoordinatorShipFrame>()
        .await
        .map_err(lost)?
    {
        CoordinatorShipFrame::Offer(offer) => offer,
        CoordinatorShipFrame::Refused { reason } => return Err(Failure::Refused(reason)),
        CoordinatorShipFrame::Chunk { .. } => {
            return Err(Failure::Lost("a chunk came before the offer".into()))
        }
    };
    offer
        .check()
        .map_err(|err| Failure::Refused(format!("the coordinator's offer is unusable: {err}")))?;
    if offer.format != request.format {
        return Err(Failure::Refused(format!(
            "asked for a {}, offered a {}",
            request.format.name(),
            offer.format.name()
        )));
    }
    let part = incoming.join(format!("{}.part", offer.id));
    let held = {
        let part = part.clone();
        let offer = offer.clone();
        tokio::task::spawn_blocking(move || held_chunks(&part, &offer))
            .await
            .map_err(|err| Failure::Local(err.to_string()))?
            .map_err(Failure::Local)?
    };
    let offset = held as u64 * u64::from(offer.chunk_bytes);
    if held > 0 {
        info!(
            held_bytes = offset,
            size = offer.size,
            "resuming a test transfer"
        );
    }
    stream
        .send(&AgentShipFrame::From { offset })
        .await
        .map_err(lost)?;
    let local = |err: std::io::Error| Failure::Local(format!("{}: {err}", part.display()));
    let mut file = tokio::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&part)
        .await
        .map_err(local)?;
    for next in held..offer.chunk_digests.len() {
        match stream
            .expect::<CoordinatorShipFrame>()
            .await
            .map_err(lost)?
        {
            CoordinatorShipFrame::Chunk { index, bytes } if index as usize == next => {
                accept_chunk(&offer, next, &bytes)?;
                file.write_all(&bytes).await.map_err(local)?;
            }
            _ => return Err(Failure::Lost(format!("expected chunk {next}"))),
        }
    }
    file.sync_all().await.map_err(local)?;
    drop(file);
    let complete = incoming.join(format!("{}.{}", offer.id, offer.format.name()));
    tokio::fs::rename(&part, &complete).await.map_err(local)?;
    Ok((complete, offer))
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    let digest = ring::digest::digest(&ring::digest::SHA256, bytes);
    let mut out = [0; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

/// Whether chunk `index` as received is the one offered.
pub(super) fn accept_chunk(offer: &ShipOffer, index: usize, bytes: &[u8]) -> Result<(), Failure> {
    let fits = bytes.len() as u64 == offer.chunk_len(index);
    let matches = offer
        .chunk_digests
        .get(index)
        .is_some_and(|digest| *digest == sha256(bytes));
    if fits && matches {
        Ok(())
    } else {
        Err(Failure::BadChunk(index))
    }
}

/// How many leading chunks of `part` (from an interrupted try) match the offer; the file is cut after them.
pub(super) fn held_chunks(part: &Path, offer: &ShipOffer) -> Result<usize, String> {
    let mut file = match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(part)
    {
        Ok(file) => file,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(err) => return Err(format!("{}: {err}", part.display())),
    };
    let mut held = 0;
    let mut buffer = Vec::new();
    while held < offer.chunk_digests.len() {
        buffer.resize(offer.chunk_len(held) as usize, 0);
        if file.read_exact(&mut buffer).is_err() || accept_chunk(offer, held, &buffer).is_err() {
            break;
        }
        held += 1;
    }
    let keep = held as u64 * u64::from(offer.chunk_bytes);
    let keep = keep.min(offer.size);
    file.set_len(keep)
        .and_then(|()| file.seek(std::io::SeekFrom::End(0)).map(|_| ()))
        .and_then(|()| file.flush())
        .map_err(|err| format!("{}: {err}", part.display()))?;
    Ok(held)
}

#[cfg(test)]
mod tests {
    use super::*;
    use polarizer_shared::shipping::ShipFormat;

    fn offer_of(content: &[u8], chunk_bytes: u32) -> ShipOffer {
        ShipOffer {
            id: "0".repeat(64),
            commit: "1".repeat(40),
            format: ShipFormat::Bundle,
            size: content.len() as u64,
            chunk_bytes,
            chunk_digests: content.chunks(chunk_bytes as usize).map(sha256).collect(),
            thin_against: Vec::new(),
        }
    }

    /// A chunk damaged on the way (a flipped bit, a short chunk) is refused; the right one is taken.
    #[test]
    fn a_damaged_or_short_chunk_is_refused() {
        let content: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let offer = offer_of(&content, 65_536);
        let second = &content[65_536..131_072];
        assert!(accept_chunk(&offer, 1, second).is_ok());
        let mut flipped = second.to_vec();
        flipped[1000] ^= 0x10;
        assert!(matches!(
            accept_chunk(&offer, 1, &flipped),
            Err(Failure::BadChunk(1))
        ));
        assert!(accept_chunk(&offer, 1, &second[1..]).is_err());
        assert!(accept_chunk(&offer, 3, &content[196_608..]).is_ok());
        assert!(accept_chunk(&offer, 4, &[]).is_err());
    }

    /// What an interrupted try left is kept up to its first damaged (or torn) chunk, and cut there.
    #[test]
    fn a_partial_file_is_kept_up_to_its_first_bad_chunk() {
        let dir = tempfile::tempdir().unwrap();
        let part = dir.path().join("x.part");
        let content: Vec<u8> = (0..200_000u32).map(|i| (i * 7 % 253) as u8).collect();
        let offer = offer_of(&content, 65_536);

        assert_eq!(held_chunks(&part, &offer).unwrap(), 0, "nothing held");
        std::fs::write(&part, &content[..150_000]).unwrap();
        assert_eq!(held_chunks(&part, &offer).unwrap(), 2, "torn third chunk");
        assert_eq!(std::fs::metadata(&part).unwrap().len(), 131_072);

        let mut damaged = content.clone();
        damaged[70_000] ^= 1;
        std::fs::write(&part, &damaged).unwrap();
        assert_eq!(
            held_chunks(&part, &offer).unwrap(),
            1,
            "second chunk damaged"
        );
        assert_eq!(std::fs::metadata(&part).unwrap().len(), 65_536);

        std::fs::write(&part, &content).unwrap();
        assert_eq!(held_chunks(&part, &offer).unwrap(), 4, "all of it");
        assert_eq!(std::fs::metadata(&part).unwrap().len(), 200_000);
    }
}
