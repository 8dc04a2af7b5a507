//! Ingest: where WebM bytes come from. A file looped and paced in real time, or a live byte
//! stream on stdin. Each source runs the bytes through our [`StreamReader`] and hands the events
//! on, in order; a malformed source ends with a typed error and never takes the server down.

mod pace;

use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::broadcast::Hub;
use crate::webm::{StreamReader, WebmError};

pub use pace::Pacer;

/// How much a source reads per call; also bounds what the reader buffers beyond one element.
const READ_CHUNK: usize = 64 * 1024;

/// Why a source stopped.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("reading {source_name}: {error}")]
    Io {
        source_name: String,
        #[source]
        error: std::io::Error,
    },
    #[error("{source_name} is not valid live WebM: {error}")]
    Webm {
        source_name: String,
        #[source]
        error: WebmError,
    },
    #[error("{0} holds no media blocks, so there is nothing to loop")]
    Empty(String),
}

/// Where the broadcast's bytes come from.
#[derive(Debug, Clone)]
pub enum Input {
    /// A WebM file, looped forever and paced by its own timestamps.
    File(PathBuf),
    /// A WebM file held in memory (the built-in demo), looped and paced like a file.
    Memory { name: String, bytes: Bytes },
    /// A live WebM byte stream on standard input, forwarded as fast as it arrives.
    Stdin,
}

impl Input {
    /// A name for logs and `/api/status`.
    pub fn name(&self) -> String {
        match self {
            Input::File(path) => format!("file:{}", path.display()),
            Input::Memory { name, .. } => name.clone(),
            Input::Stdin => "stdin".to_string(),
        }
    }
}

/// Runs `input` into the hub. A looped file runs until the task is cancelled; stdin runs until
/// it ends, after which the hub keeps its viewers waiting for the next source.
pub async fn run(input: Input, hub: Hub) -> Result<(), IngestError> {
    let name = input.name();
    hub.source_started(&name);
    let result = match &input {
        Input::File(path) => {
            loop_source(&name, &hub, || async {
                let file = tokio::fs::File::open(path)
                    .await
                    .map_err(|error| IngestError::Io {
                        source_name: name.clone(),
                        error,
                    })?;
                Ok(tokio::io::BufReader::new(file))
            })
            .await
        }
        Input::Memory { bytes, .. } => {
            loop_source(&name, &hub, || async {
                Ok(std::io::Cursor::new(bytes.clone()))
            })
            .await
        }
        Input::Stdin => read_stream(&name, tokio::io::stdin(), None, &hub).await,
    };
    match &result {
        Ok(()) => hub.source_ended("end of stream"),
        Err(error) => {
            tracing::error!(%error, "source failed");
            hub.source_ended(&error.to_string());
        }
    }
    result
}

/// Plays a source again and again, on one continuous real-time clock.
async fn loop_source<R, F, Fut>(name: &str, hub: &Hub, open: F) -> Result<(), IngestError>
where
    R: AsyncRead + Unpin,
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<R, IngestError>>,
{
    let mut pacer = Pacer::new();
    loop {
        let reader = open().await?;
        let before = pacer.blocks();
        read_stream(name, reader, Some(&mut pacer), hub).await?;
        if pacer.blocks() == before {
            return Err(IngestError::Empty(name.to_string()));
        }
        tracing::debug!(source = name, "looping");
        pacer.next_loop();
        // Yield so a tight loop over a tiny file cannot starve the runtime.
        tokio::time::sleep(Duration::ZERO).await;
    }
}

/// Reads one WebM byte stream to its end into the hub (pacing blocks, when a pacer is given).
/// Returns when the stream ends or is found malformed.
pub async fn read_stream<R>(
    name: &str,
    mut input: R,
    mut pacer: Option<&mut Pacer>,
    hub: &Hub,
) -> Result<(), IngestError>
where
    R: AsyncRead + Unpin,
{
    let mut reader = StreamReader::new();
    let mut buf = vec![0u8; READ_CHUNK];
    loop {
        let n = input
            .read(&mut buf)
            .await
            .map_err(|error| IngestError::Io {
                source_name: name.to_string(),
                error,
            })?;
        if n == 0 {
            return Ok(());
        }
        hub.count_input(n);
        reader.push(&buf[..n]);
        loop {
            let event = reader.next_event().map_err(|error| IngestError::Webm {
                source_name: name.to_string(),
                error,
            })?;
            let Some(event) = event else { break };
            if let Some(pacer) = pacer.as_deref_mut() {
                pacer.wait_for(&event).await;
            }
            hub.push(event);
        }
    }
}
