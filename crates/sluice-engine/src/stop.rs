//! Stop strings: text that could still turn into a stop string is held back,
//! so a partial stop string is never emitted.

#[derive(Debug, Default)]
pub struct StopMatcher {
    stops: Vec<String>,
    held: String,
}

#[derive(Debug, PartialEq, Eq)]
pub enum StopOutcome {
    /// Text safe to emit now (may be empty).
    Continue(String),
    /// A stop string matched: emit this text, then end the stream.
    Stopped(String),
}

impl StopMatcher {
    pub fn new(stops: Vec<String>) -> Self {
        Self {
            stops: stops.into_iter().filter(|stop| !stop.is_empty()).collect(),
            held: String::new(),
        }
    }

    pub fn push(&mut self, text: &str) -> StopOutcome {
        if self.stops.is_empty() {
            return StopOutcome::Continue(text.to_owned());
        }
        self.held.push_str(text);
        let first_match = self
            .stops
            .iter()
            .filter_map(|stop| self.held.find(stop.as_str()))
            .min();
        if let Some(at) = first_match {
            self.held.truncate(at);
            return StopOutcome::Stopped(std::mem::take(&mut self.held));
        }
        let keep = self.longest_suffix_that_starts_a_stop();
        let emit_len = self.held.len() - keep;
        let rest = self.held.split_off(emit_len);
        StopOutcome::Continue(std::mem::replace(&mut self.held, rest))
    }

    /// Text held back when the stream ends for another reason.
    pub fn finish(&mut self) -> String {
        std::mem::take(&mut self.held)
    }

    fn longest_suffix_that_starts_a_stop(&self) -> usize {
        let held = self.held.as_str();
        held.char_indices()
            .map(|(at, _)| &held[at..])
            .find(|suffix| self.stops.iter().any(|stop| stop.starts_with(suffix)))
            .map_or(0, str::len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matcher(stops: &[&str]) -> StopMatcher {
        StopMatcher::new(stops.iter().map(|s| (*s).to_owned()).collect())
    }

    #[test]
    fn without_stops_text_passes_through() {
        let mut m = matcher(&[]);
        assert_eq!(m.push("hello"), StopOutcome::Continue("hello".into()));
    }

    #[test]
    fn stop_split_across_pushes_is_never_emitted() {
        let mut m = matcher(&["END"]);
        assert_eq!(m.push("abc E"), StopOutcome::Continue("abc ".into()));
        assert_eq!(m.push("N"), StopOutcome::Continue(String::new()));
        assert_eq!(m.push("Dxyz"), StopOutcome::Stopped(String::new()));
    }

    #[test]
    fn held_text_is_released_when_it_stops_matching() {
        let mut m = matcher(&["END"]);
        assert_eq!(m.push("E"), StopOutcome::Continue(String::new()));
        assert_eq!(m.push("x"), StopOutcome::Continue("Ex".into()));
    }

    #[test]
    fn earliest_of_several_stops_wins() {
        let mut m = matcher(&["world", "lo"]);
        assert_eq!(m.push("hello world"), StopOutcome::Stopped("hel".into()));
    }

    #[test]
    fn finish_flushes_held_text() {
        let mut m = matcher(&["stop"]);
        assert_eq!(m.push("go st"), StopOutcome::Continue("go ".into()));
        assert_eq!(m.finish(), "st");
    }

    #[test]
    fn multibyte_text_is_split_on_character_boundaries() {
        let mut m = matcher(&["é!"]);
        assert_eq!(m.push("café"), StopOutcome::Continue("caf".into()));
        assert_eq!(m.push("!"), StopOutcome::Stopped(String::new()));
    }
}
