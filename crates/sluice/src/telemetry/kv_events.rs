//! KV-cache events out of the server (`engine.kv_events`), beside the
//! metrics an inference gateway scrapes: the engine's block changes
//! (`sluice_engine::kv_events`) published on a ZMQ PUB socket in vLLM's
//! wire format, which the llm-d endpoint picker's KV-event subscriber
//! decodes. Each message has three frames: the topic `kv@<pod>@<model>`, a
//! sequence number (u64, big-endian, from 0), and a msgpack batch
//! `[timestamp, [event, ...]]`, each event a tagged array:
//! `["BlockStored", hashes, parent hash or nil, token ids, block size]` or
//! `["BlockRemoved", hashes]`.

use std::io;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use rmp::encode::{ValueWriteError, write_array_len, write_f64, write_nil, write_str, write_uint};
use sluice_core::config::KvEventsConfig;
use sluice_engine::kv_events::{KV_EVENT_BLOCK_TOKENS, KvBlockEvent, KvEventSender};
use zeromq::{PubSocket, Socket, SocketSend, ZmqMessage};

/// Binds the PUB socket and starts publishing what the engine sends on the
/// returned sender, in order, until every sender is dropped.
pub async fn start_kv_event_publisher(
    config: &KvEventsConfig,
    model: &str,
) -> io::Result<KvEventSender> {
    let mut socket = PubSocket::new();
    socket.bind(&config.endpoint).await.map_err(|err| {
        io::Error::new(
            io::ErrorKind::AddrNotAvailable,
            format!("engine.kv_events.endpoint {}: {err}", config.endpoint),
        )
    })?;
    let pod = config
        .pod
        .clone()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "sluice".to_owned());
    let topic = Bytes::from(format!("kv@{pod}@{model}"));
    tracing::info!(endpoint = %config.endpoint, topic = %String::from_utf8_lossy(&topic), "publishing KV-cache events");
    let (sender, mut batches) = tokio::sync::mpsc::unbounded_channel::<Vec<KvBlockEvent>>();
    tokio::spawn(async move {
        let mut sequence: u64 = 0;
        while let Some(events) = batches.recv().await {
            let timestamp = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0.0, |since| since.as_secs_f64());
            let payload = match encode_batch(&events, timestamp) {
                Ok(payload) => payload,
                Err(err) => {
                    tracing::warn!(%err, "KV-cache event batch not encoded");
                    continue;
                }
            };
            let mut message = ZmqMessage::from(topic.clone());
            message.push_back(Bytes::copy_from_slice(&sequence.to_be_bytes()));
            message.push_back(Bytes::from(payload));
            sequence += 1;
            // PUB drops for subscribers that do not keep up; an error here
            // is the socket's own and the next batch tries again.
            if let Err(err) = socket.send(message).await {
                tracing::warn!(%err, "KV-cache event batch not sent");
            }
        }
    });
    Ok(sender)
}

/// `[timestamp, [event, ...]]`, events as vLLM's tagged arrays.
fn encode_batch(events: &[KvBlockEvent], timestamp: f64) -> Result<Vec<u8>, ValueWriteError> {
    let mut out = Vec::new();
    write_array_len(&mut out, 2)?;
    write_f64(&mut out, timestamp)?;
    write_array_len(&mut out, events.len() as u32)?;
    for event in events {
        match event {
            KvBlockEvent::Stored {
                block_hashes,
                parent,
                token_ids,
            } => {
                write_array_len(&mut out, 5)?;
                write_str(&mut out, "BlockStored")?;
                write_hashes(&mut out, block_hashes)?;
                match parent {
                    Some(parent) => {
                        write_uint(&mut out, *parent)?;
                    }
                    None => write_nil(&mut out).map_err(ValueWriteError::InvalidMarkerWrite)?,
                }
                write_array_len(&mut out, token_ids.len() as u32)?;
                for &token in token_ids {
                    // Token ids are never negative; llama.cpp's type is signed.
                    write_uint(&mut out, u64::try_from(token).unwrap_or(0))?;
                }
                write_uint(&mut out, KV_EVENT_BLOCK_TOKENS as u64)?;
            }
            KvBlockEvent::Removed { block_hashes } => {
                write_array_len(&mut out, 2)?;
                write_str(&mut out, "BlockRemoved")?;
                write_hashes(&mut out, block_hashes)?;
            }
        }
    }
    Ok(out)
}

fn write_hashes(out: &mut Vec<u8>, hashes: &[u64]) -> Result<(), ValueWriteError> {
    write_array_len(out, hashes.len() as u32)?;
    for &hash in hashes {
        write_uint(out, hash)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_are_encoded_as_vllm_tagged_arrays() {
        let events = [
            KvBlockEvent::Stored {
                block_hashes: vec![7],
                parent: None,
                token_ids: vec![1, 300],
            },
            KvBlockEvent::Removed {
                block_hashes: vec![u64::MAX],
            },
        ];
        let bytes = encode_batch(&events, 0.5).unwrap();
        let mut expected = vec![0x92, 0xcb];
        expected.extend_from_slice(&0.5f64.to_be_bytes());
        expected.push(0x92); // two events
        expected.extend_from_slice(&[0x95, 0xab]);
        expected.extend_from_slice(b"BlockStored");
        // [7], nil, [1, 300], 16
        expected.extend_from_slice(&[0x91, 0x07, 0xc0, 0x92, 0x01, 0xcd, 0x01, 0x2c, 0x10]);
        expected.extend_from_slice(&[0x92, 0xac]);
        expected.extend_from_slice(b"BlockRemoved");
        expected.extend_from_slice(&[0x91, 0xcf]);
        expected.extend_from_slice(&u64::MAX.to_be_bytes());
        assert_eq!(bytes, expected);
    }
}
