//! Reads structured values off the fuzzer's bytes; past the end every read
//! yields zero or empty, so any input decodes.

pub struct Input<'a> {
    data: &'a [u8],
}

impl<'a> Input<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        Self { data }
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    pub fn byte(&mut self) -> u8 {
        let (&first, rest) = self.data.split_first().unwrap_or((&0, &[]));
        self.data = rest;
        first
    }

    pub fn bytes(&mut self, len: usize) -> &'a [u8] {
        let (head, rest) = self.data.split_at(len.min(self.data.len()));
        self.data = rest;
        head
    }

    pub fn u32(&mut self) -> u32 {
        let mut word = [0; 4];
        let head = self.bytes(4);
        word[..head.len()].copy_from_slice(head);
        u32::from_le_bytes(word)
    }

    pub fn u64(&mut self) -> u64 {
        u64::from(self.u32()) | (u64::from(self.u32()) << 32)
    }

    /// A string of at most `max_bytes` input bytes, length first; invalid
    /// UTF-8 becomes U+FFFD.
    pub fn string(&mut self, max_bytes: u8) -> String {
        let len = self.byte() % max_bytes.saturating_add(1);
        String::from_utf8_lossy(self.bytes(usize::from(len))).into_owned()
    }
}
