//! Where an interrupted export goes on from: the keyset position, the encoder's state, the
//! upload's durable state and the SHA-256 state of the bytes uploaded so far.
//!
//! A checkpoint is only ever taken at a segment boundary (see [`crate::encode`]): every byte
//! before it is in the upload and durable, nothing after it is, and (with gzip) the last gzip
//! member is closed. Segment boundaries depend only on the data, so an attempt that resumes from
//! a checkpoint writes exactly the bytes an uninterrupted attempt would have written.

use serde::{Deserialize, Serialize};
use sha2::block_api::compress256;

use crate::ids::{ObjectKey, UserId};

/// Layout version of [`Checkpoint`]; a checkpoint of another version is not resumed from.
pub const CHECKPOINT_VERSION: u32 = 1;

/// Everything an attempt needs to go on where an earlier one stopped.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    pub version: u32,
    /// Keyset position: the last user written (users stream in ascending ID order).
    pub after: UserId,
    /// Users written before the checkpoint.
    pub rows: u64,
    /// Uncompressed bytes after which a segment (and a gzip member) ends; kept from the first
    /// attempt so every attempt cuts the file at the same places.
    pub segment_bytes: u64,
    pub encoder: EncoderState,
    pub upload: UploadCheckpoint,
}

impl Checkpoint {
    /// Whether an attempt may go on from this checkpoint.
    pub fn is_resumable(&self) -> bool {
        self.version == CHECKPOINT_VERSION && self.segment_bytes > 0 && self.upload.sha256.is_valid()
    }
}

/// What the encoder had written at a segment boundary (its output buffer is empty there).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EncoderState {
    /// The CSV header row or the JSON `[` is in the file.
    pub preamble_written: bool,
    /// Users written; JSON puts a separator before every element but the first.
    pub rows_written: u64,
}

/// The durable state of an unfinished upload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UploadCheckpoint {
    /// The object the upload becomes when finished (the key of the attempt that began it).
    pub key: ObjectKey,
    /// Bytes durably stored so far.
    pub bytes: u64,
    /// SHA-256 of those bytes, as a resumable state.
    pub sha256: Sha256State,
    pub location: UploadLocation,
}

/// Where the stored bytes of an unfinished upload are.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum UploadLocation {
    /// A staging file (local storage) whose first [`UploadCheckpoint::bytes`] are fsynced;
    /// anything after them is discarded on resume. The name is relative to the storage root.
    Staging { file: String },
    /// A multipart upload (S3, in-memory) and the IDs (S3: ETags) of its parts, in order.
    Multipart { upload_id: String, parts: Vec<String> },
}

/// The serialisable state of a SHA-256 computation: the chaining value after every complete
/// 64-byte block, the byte count, and the bytes of the incomplete block. SHA-256 is a
/// Merkle-Damgard hash, so this is exactly what it needs to go on; a digest per part could not
/// be combined into the file's digest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sha256State {
    pub chaining: [u32; 8],
    pub len: u64,
    /// Lowercase hex of the `len % 64` bytes not yet compressed.
    pub tail: String,
}

impl Sha256State {
    fn is_valid(&self) -> bool {
        hex::decode(&self.tail).is_ok_and(|t| t.len() as u64 == self.len % 64)
    }
}

const SHA256_IV: [u32; 8] =
    [0x6a09_e667, 0xbb67_ae85, 0x3c6e_f372, 0xa54f_f53a, 0x510e_527f, 0x9b05_688c, 0x1f83_d9ab, 0x5be0_cd19];

/// SHA-256 whose state can be saved in a checkpoint and restored by a later attempt. The
/// compression function is sha2's (hardware-accelerated where the CPU has it).
#[derive(Clone)]
pub struct ResumableSha256 {
    chaining: [u32; 8],
    len: u64,
    block: [u8; 64],
    filled: usize,
}

impl std::fmt::Debug for ResumableSha256 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResumableSha256").field("len", &self.len).finish_non_exhaustive()
    }
}

impl Default for ResumableSha256 {
    fn default() -> Self {
        Self { chaining: SHA256_IV, len: 0, block: [0; 64], filled: 0 }
    }
}

impl ResumableSha256 {
    pub fn new() -> Self {
        Self::default()
    }

    /// Goes on from a saved state; `None` when the state is malformed.
    pub fn restore(state: &Sha256State) -> Option<Self> {
        let tail = hex::decode(&state.tail).ok()?;
        if tail.len() as u64 != state.len % 64 {
            return None;
        }
        let mut block = [0; 64];
        block[..tail.len()].copy_from_slice(&tail);
        Some(Self { chaining: state.chaining, len: state.len, block, filled: tail.len() })
    }

    pub fn state(&self) -> Sha256State {
        Sha256State { chaining: self.chaining, len: self.len, tail: hex::encode(&self.block[..self.filled]) }
    }

    /// Bytes hashed so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn update(&mut self, mut data: &[u8]) {
        self.len += data.len() as u64;
        if self.filled > 0 {
            let take = (64 - self.filled).min(data.len());
            self.block[self.filled..self.filled + take].copy_from_slice(&data[..take]);
            self.filled += take;
            data = &data[take..];
            if self.filled < 64 {
                return;
            }
            compress256(&mut self.chaining, std::slice::from_ref(&self.block));
            self.filled = 0;
        }
        let (blocks, rest) = data.as_chunks::<64>();
        compress256(&mut self.chaining, blocks);
        self.block[..rest.len()].copy_from_slice(rest);
        self.filled = rest.len();
    }

    /// Lowercase hex of the digest.
    pub fn finalize_hex(mut self) -> String {
        let bit_len = self.len.wrapping_mul(8);
        let mut padding = [0u8; 72];
        padding[0] = 0x80;
        // Pad to 56 mod 64, then the 64-bit big-endian bit length.
        let pad_len = if self.filled < 56 { 56 - self.filled } else { 120 - self.filled };
        padding[pad_len..pad_len + 8].copy_from_slice(&bit_len.to_be_bytes());
        self.update(&padding[..pad_len + 8]);
        debug_assert_eq!(self.filled, 0);
        self.chaining.iter().map(|w| format!("{w:08x}")).collect()
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use sha2::{Digest, Sha256};

    use super::*;

    proptest! {
        #[test]
        fn matches_sha2_across_any_split_and_any_save_and_restore(
            data in proptest::collection::vec(any::<u8>(), 0..600),
            cuts in proptest::collection::vec(0usize..600, 0..5),
        ) {
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(data.len())).collect();
            cuts.sort_unstable();
            let mut hasher = ResumableSha256::new();
            let mut at = 0;
            for cut in cuts {
                hasher.update(&data[at..cut]);
                at = cut;
                let json = serde_json::to_string(&hasher.state()).unwrap();
                hasher = ResumableSha256::restore(&serde_json::from_str(&json).unwrap()).unwrap();
            }
            hasher.update(&data[at..]);
            prop_assert_eq!(hasher.finalize_hex(), hex::encode(Sha256::digest(&data)));
        }
    }

    #[test]
    fn the_empty_input_has_the_well_known_digest() {
        assert_eq!(
            ResumableSha256::new().finalize_hex(),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn a_state_whose_tail_disagrees_with_its_length_is_refused() {
        let mut state = ResumableSha256::new().state();
        state.len = 3;
        assert!(ResumableSha256::restore(&state).is_none());
        state.tail = "zz".into();
        assert!(ResumableSha256::restore(&state).is_none());
    }
}
