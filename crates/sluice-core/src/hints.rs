//! Request hints: a stable hash of the model and a prompt's leading token
//! blocks, computed when a request arrives. Requests that share a system
//! prompt share the hint, so a router in front of several workers can send
//! them to the worker whose prefix cache holds it. (On one worker the
//! engine compares tokens directly and needs no hint.)

/// Tokens per block, as the engine's cache would share them.
pub const HINT_BLOCK_TOKENS: usize = 16;
/// Leading blocks hashed: long enough to tell system prompts apart, short
/// enough that user turns after them do not change the hint.
pub const HINT_BLOCKS: usize = 4;

/// FNV-1a over the model name and the prompt's complete leading blocks
/// (stable across runs and builds, unlike the standard library's hasher).
pub fn prefix_hint(model: &str, prompt: &[i32]) -> u64 {
    let blocks = (prompt.len() / HINT_BLOCK_TOKENS).min(HINT_BLOCKS);
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut feed = |byte: u8| {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    };
    model.bytes().for_each(&mut feed);
    feed(0);
    for token in &prompt[..blocks * HINT_BLOCK_TOKENS] {
        token.to_le_bytes().into_iter().for_each(&mut feed);
    }
    hash
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prompt(shared: i32, tail: i32, len: usize) -> Vec<i32> {
        (0..len)
            .map(|i| {
                if i < HINT_BLOCKS * HINT_BLOCK_TOKENS {
                    shared + i as i32
                } else {
                    tail
                }
            })
            .collect()
    }

    #[test]
    fn prompts_sharing_the_leading_blocks_share_the_hint() {
        let a = prefix_hint("m", &prompt(100, 1, 120));
        let b = prefix_hint("m", &prompt(100, 2, 90));
        assert_eq!(a, b, "tails after the hashed blocks do not matter");
        assert_ne!(a, prefix_hint("m", &prompt(200, 1, 120)));
        assert_ne!(a, prefix_hint("other", &prompt(100, 1, 120)));
    }

    #[test]
    fn only_complete_blocks_count() {
        let base = prompt(100, 1, 40);
        let mut longer_partial = base.clone();
        longer_partial.push(7);
        assert_eq!(prefix_hint("m", &base), prefix_hint("m", &longer_partial));
        assert_eq!(prefix_hint("m", &[]), prefix_hint("m", &[1, 2, 3]));
    }
}
