//! Incremental detokenizing: byte-level BPE pieces may split a multi-byte
//! character across tokens, so bytes are held until they form whole
//! characters.

#[derive(Debug, Default)]
pub struct Utf8Assembler {
    pending: Vec<u8>,
}

/// Longest incomplete UTF-8 sequence that may still become valid.
const MAX_INCOMPLETE: usize = 3;

impl Utf8Assembler {
    /// Appends `bytes` and returns the text that is now complete. Bytes that
    /// can never be valid UTF-8 come out as U+FFFD so a stream never stalls.
    pub fn push(&mut self, bytes: &[u8]) -> String {
        self.pending.extend_from_slice(bytes);
        let mut out = String::new();
        loop {
            match std::str::from_utf8(&self.pending) {
                Ok(text) => {
                    out.push_str(text);
                    self.pending.clear();
                    return out;
                }
                Err(err) => {
                    let valid = err.valid_up_to();
                    // Valid up to `valid`, so nothing is replaced here.
                    out.push_str(&String::from_utf8_lossy(&self.pending[..valid]));
                    match err.error_len() {
                        Some(bad) => {
                            out.push(char::REPLACEMENT_CHARACTER);
                            self.pending.drain(..valid + bad);
                        }
                        None => {
                            self.pending.drain(..valid);
                            debug_assert!(self.pending.len() <= MAX_INCOMPLETE);
                            return out;
                        }
                    }
                }
            }
        }
    }

    /// Ends the stream: an unfinished character becomes U+FFFD.
    pub fn finish(&mut self) -> String {
        if self.pending.is_empty() {
            String::new()
        } else {
            self.pending.clear();
            char::REPLACEMENT_CHARACTER.to_string()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multibyte_character_split_across_pieces_is_held_until_whole() {
        let mut assembler = Utf8Assembler::default();
        let euro = "€".as_bytes();
        assert_eq!(assembler.push(&euro[..1]), "");
        assert_eq!(assembler.push(&euro[1..2]), "");
        assert_eq!(assembler.push(&euro[2..]), "€");
    }

    #[test]
    fn text_before_an_incomplete_character_is_released() {
        let mut assembler = Utf8Assembler::default();
        let mut bytes = b"ok ".to_vec();
        bytes.extend_from_slice(&"😀".as_bytes()[..2]);
        assert_eq!(assembler.push(&bytes), "ok ");
        assert_eq!(assembler.push(&"😀".as_bytes()[2..]), "😀");
    }

    #[test]
    fn invalid_bytes_become_replacement_characters() {
        let mut assembler = Utf8Assembler::default();
        assert_eq!(assembler.push(&[b'a', 0xff, b'b']), "a\u{fffd}b");
    }

    #[test]
    fn unfinished_character_at_end_is_replaced() {
        let mut assembler = Utf8Assembler::default();
        assert_eq!(assembler.push(&"é".as_bytes()[..1]), "");
        assert_eq!(assembler.finish(), "\u{fffd}");
        assert_eq!(assembler.finish(), "");
    }
}
