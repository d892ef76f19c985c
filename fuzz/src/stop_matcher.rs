//! Target `stop_matcher`: stop strings and generated text pushed piece by
//! piece. Checked against a plain model: while the text so far holds no
//! stop string, what was emitted is the text minus a held-back tail shorter
//! than the longest stop string; at the first stop string the output is the
//! text before it, exactly; at the end `finish` returns the tail.

use sluice_engine::{StopMatcher, StopOutcome};

/// Characters of 1 to 4 bytes from a small set, so stop strings do occur.
const ALPHABET: [&str; 8] = ["a", "b", "c", "é", "€", "😀", "\n", " "];

fn decode(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|&b| ALPHABET[usize::from(b) % ALPHABET.len()])
        .collect()
}

/// Input: the number of stop strings, then strings separated by 0xff bytes:
/// the stop strings, then the pieces of text.
pub fn run(data: &[u8]) {
    let Some((&count, rest)) = data.split_first() else {
        return;
    };
    let mut strings = rest.split(|&b| b == 0xff).map(decode);
    let stops: Vec<String> = strings.by_ref().take(usize::from(count % 5)).collect();
    let longest = stops.iter().map(String::len).max().unwrap_or(0);
    let first_stop = |text: &str| {
        stops
            .iter()
            .filter(|stop| !stop.is_empty())
            .filter_map(|stop| text.find(stop.as_str()))
            .min()
    };
    let mut matcher = StopMatcher::new(stops.clone());
    let mut text = String::new();
    let mut emitted = String::new();
    for piece in strings {
        text.push_str(&piece);
        match matcher.push(&piece) {
            StopOutcome::Continue(out) => {
                emitted.push_str(&out);
                assert_eq!(first_stop(&text), None, "missed a stop string in {text:?}");
                assert!(
                    text.starts_with(&emitted),
                    "emitted {emitted:?} of {text:?}"
                );
                let held = text.len() - emitted.len();
                assert!(
                    held == 0 || held < longest,
                    "{held} bytes held back, longest stop string {longest}"
                );
            }
            StopOutcome::Stopped(out) => {
                emitted.push_str(&out);
                let at = first_stop(&text).expect("stopped without a stop string");
                assert_eq!(emitted, text[..at], "output at the stop string");
                return;
            }
        }
    }
    emitted.push_str(&matcher.finish());
    assert_eq!(emitted, text, "text lost or added by the end");
}
