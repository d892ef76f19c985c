//! Target `utf8_assembler`: bytes cut into pieces at fuzzer-chosen places.
//! What comes out, piece by piece and at the end, is exactly the lossy
//! decoding of all the bytes at once (so valid UTF-8 comes out unchanged),
//! and never runs ahead of it.

use sluice_engine::Utf8Assembler;

/// Input: the number of piece lengths (mod 16), the lengths (mod 8 each,
/// used in turn; 0 pushes an empty piece), then the bytes.
pub fn run(data: &[u8]) {
    let Some((&count, rest)) = data.split_first() else {
        return;
    };
    let (lengths, bytes) = rest.split_at(usize::from(count % 16).min(rest.len()));
    let expected = String::from_utf8_lossy(bytes);
    let mut assembler = Utf8Assembler::default();
    let mut out = String::new();
    let mut remaining = bytes;
    for &length in lengths.iter().cycle() {
        if remaining.is_empty() {
            break;
        }
        // A zero length pushes nothing this turn; the next takes a byte.
        let (piece, tail) = remaining.split_at(usize::from(length % 8).min(remaining.len()));
        out.push_str(&assembler.push(piece));
        assert!(
            expected.starts_with(&out),
            "{out:?} is not a prefix of {expected:?}"
        );
        let (next, tail) = tail.split_at(usize::from(piece.is_empty()).min(tail.len()));
        out.push_str(&assembler.push(next));
        remaining = tail;
    }
    out.push_str(&assembler.push(remaining));
    out.push_str(&assembler.finish());
    assert_eq!(out, expected);
    assert_eq!(assembler.finish(), "", "finish twice");
}
