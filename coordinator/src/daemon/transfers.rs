//! A transfer of a run's tests to an agent, on a stream the agent opened beside its session (the exchange
//! is described in `polarizer_shared::shipping`): the request checked against the store, the offer, the
//! chunks from where the agent resumes, each checked against its digest as read, paced to the rate limit.
//! The files come from [`crate::daemon::shipping::Shipping`].

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use polarizer_shared::frame::MAX_FRAME_BYTES;
use polarizer_shared::shipping::{
    is_full_commit_id, AgentShipFrame, CoordinatorShipFrame, ShipRequest, CHUNK_BYTES, MAX_HAVES,
    MAX_REQUEST_BYTES,
};
use polarizer_transport::FramedStream;
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tracing::{info, warn};

use crate::daemon::context::Context;
use crate::daemon::shipping::Artifact;

/// How long an agent has to say what it wants, and where to start, once it opened a stream.
const REQUEST_DEADLINE: Duration = Duration::from_secs(30);

/// Serves one stream an agent opened for tests: the request, the offer, the chunks. Whatever goes wrong
/// ends this stream only; the agent asks again.
pub async fn serve(
    context: Context,
    agent: String,
    send: quinn::SendStream,
    recv: quinn::RecvStream,
) {
    let mut stream = FramedStream::new(send, recv);
    stream.set_frame_limit(MAX_REQUEST_BYTES);
    let request =
        match tokio::time::timeout(REQUEST_DEADLINE, stream.expect::<AgentShipFrame>()).await {
            Ok(Ok(AgentShipFrame::Request(request))) => request,
            Ok(Ok(_)) => return warn!(agent, "a test transfer must start with a request"),
            Ok(Err(err)) => return warn!(agent, error = %err, "bad test transfer request"),
            Err(_) => {
                return warn!(
                    agent,
                    "no test transfer request within {REQUEST_DEADLINE:?}"
                )
            }
        };
    let suite = request.suite;
    let artifact = match prepare(&context, &agent, request).await {
        Ok(artifact) => artifact,
        Err(reason) => {
            warn!(agent, %suite, reason, "refused to ship tests");
            let _ = stream.send(&CoordinatorShipFrame::Refused { reason }).await;
            stream.finish().await;
            return;
        }
    };
    if stream
        .send(&CoordinatorShipFrame::Offer(artifact.offer.clone()))
        .await
        .is_err()
    {
        return;
    }
    let offset =
        match tokio::time::timeout(REQUEST_DEADLINE, stream.expect::<AgentShipFrame>()).await {
            Ok(Ok(AgentShipFrame::From { offset })) => offset,
            _ => return,
        };
    let chunk = u64::from(artifact.offer.chunk_bytes);
    if offset % chunk != 0 || offset > artifact.offer.size {
        return warn!(
            agent,
            offset, "a test transfer asked to start mid-chunk or past the end"
        );
    }
    context.metrics.transfers.fetch_add(1, Ordering::Relaxed);
    if offset > 0 {
        info!(agent, %suite, offset, size = artifact.offer.size, "resuming a test transfer");
    }
    match send_chunks(&context, &mut stream, &artifact, offset).await {
        Err(Sending::Damaged(index)) => {
            warn!(agent, %suite, chunk = index, file = %artifact.path.display(), "the tests' file is damaged on disk; building it again");
            context.shipping.forget(&artifact);
        }
        Ok(()) => stream.finish().await,
        Err(Sending::Failed(err)) => {
            info!(agent, %suite, error = %err, "test transfer ended early")
        }
    }
}

/// Checks the request against the store (the suite must be this agent's, running) and finds its file.
async fn prepare(
    context: &Context,
    agent: &str,
    request: ShipRequest,
) -> Result<Arc<Artifact>, String> {
    if request.haves.len() > MAX_HAVES || !request.haves.iter().all(|have| is_full_commit_id(have))
    {
        return Err(format!(
            "at most {MAX_HAVES} full commit ids may be named as held"
        ));
    }
    let suite = request.suite;
    let owner = agent.to_string();
    let source = context
        .store
        .read(move |reader| reader.shipment(suite, &owner))
        .await
        .map_err(|err| err.to_string())?;
    let Some((repo, commit)) = source else {
        return Err(format!("{suite} is not running on {agent}"));
    };
    context
        .shipping
        .artifact(&repo, &commit, request.format, request.haves)
        .await
}

enum Sending {
    Failed(String),
    /// A chunk read from the file does not match the digest it was offered with.
    Damaged(usize),
}

/// Sends the file's chunks from `offset` on, each checked against its digest as read (a file damaged on
/// the coordinator's disk is never sent), paced to the rate limit.
async fn send_chunks(
    context: &Context,
    stream: &mut FramedStream,
    artifact: &Artifact,
    offset: u64,
) -> Result<(), Sending> {
    let failed = |err: std::io::Error| Sending::Failed(err.to_string());
    let mut file = tokio::fs::File::open(&artifact.path)
        .await
        .map_err(failed)?;
    file.seek(std::io::SeekFrom::Start(offset))
        .await
        .map_err(failed)?;
    let offer = &artifact.offer;
    let first = (offset / u64::from(offer.chunk_bytes)) as usize;
    let rate = context.shipping.rate_bytes_per_s();
    let started = Instant::now();
    let mut sent: u64 = 0;
    for index in first..offer.chunk_digests.len() {
        let mut bytes = vec![0; offer.chunk_len(index) as usize];
        file.read_exact(&mut bytes).await.map_err(failed)?;
        if ring::digest::digest(&ring::digest::SHA256, &bytes).as_ref()
            != offer.chunk_digests[index]
        {
            return Err(Sending::Damaged(index));
        }
        let len = bytes.len() as u64;
        let frame = CoordinatorShipFrame::Chunk {
            index: index as u32,
            bytes,
        };
        stream
            .send(&frame)
            .await
            .map_err(|err| Sending::Failed(err.to_string()))?;
        sent += len;
        context
            .metrics
            .shipped_bytes
            .fetch_add(len, Ordering::Relaxed);
        if rate > 0 {
            // Paced: never ahead of `rate` bytes per second since this transfer started.
            let due = Duration::from_secs_f64(sent as f64 / rate as f64);
            if let Some(ahead) = due.checked_sub(started.elapsed()) {
                tokio::time::sleep(ahead).await;
            }
        }
    }
    const _: () = assert!((CHUNK_BYTES as usize) < MAX_FRAME_BYTES / 2);
    Ok(())
}
